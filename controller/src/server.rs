//! Wires the services into one TLS-only gRPC server behind the authorization layer.

mod listener;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tailops_pki::CertificateAuthority;
use tailops_proto::v1::{
    agent_link_server::AgentLinkServer, audit_server::AuditServer, enrollment_server::EnrollmentServer,
    fleet_server::FleetServer, identity_server::IdentityServer, monitoring_server::MonitoringServer,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::agents::AgentRegistry;
use crate::audit::AuditLog;
use crate::auth::{AuthLayer, Authorizer};
use crate::config::ControllerConfig;
use crate::data_dir::{self, DataDir};
use crate::jobs::{DeliveryTiming, JobManager, JobSettings};
use crate::monitoring::Monitoring;
use crate::output_budget::OutputBudget;
use crate::rate_limit::RateLimiter;
use crate::revocation::Revocations;
use crate::services::audit::AuditService;
use crate::services::identity::IdentityService;
use crate::services::live_hosts;
use crate::services::monitoring::MonitoringService;
use crate::services::{agent_link::AgentLinkService, enrollment::EnrollmentService, fleet::FleetService};
use crate::store::Store;
use crate::telemetry::{self, FleetSnapshot, HostGauges, SnapshotSource, Telemetry};
use crate::{ControllerError, now_ms};
use listener::{AuthenticatedConnectionLayer, ConnectionGuard, GuardLimits};

/// Largest gRPC message accepted from any peer.
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// How long in-flight calls get to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// File descriptors kept out of the connection cap: the database, the metrics endpoint, logs.
const FD_RESERVE: u64 = 128;

/// Everything the services share, injected as one value.
#[derive(Debug, Clone)]
pub struct AppState {
    pub config: Arc<ControllerConfig>,
    pub store: Store,
    pub ca: Arc<CertificateAuthority>,
    pub agents: Arc<AgentRegistry>,
    pub jobs: Arc<JobManager>,
    pub audit: AuditLog,
    pub limiter: Arc<RateLimiter>,
    pub revocations: Revocations,
    pub monitoring: Arc<Monitoring>,
    pub telemetry: Telemetry,
    /// `https://HOST:PORT` that agents and profiles use to reach this controller.
    pub public_url: String,
}

/// A controller loaded from its data directory, ready to serve.
#[derive(Debug)]
pub struct Controller {
    config: ControllerConfig,
    store: Store,
    ca: CertificateAuthority,
    server_cert_pem: String,
    server_key_pem: String,
}

impl Controller {
    /// Loads configuration, CA and server identity, opens the database, and clears state that
    /// cannot have survived a restart (online flags). Jobs left running resume when it serves.
    pub async fn open(dir: &DataDir) -> Result<Self, ControllerError> {
        let config = dir.load_config().await?;
        let ca = dir.load_ca(&config.trust_domain).await?;
        let server_cert_pem = dir.read(data_dir::SERVER_CERT).await?;
        let server_key_pem = dir.read(data_dir::SERVER_KEY).await?;
        let store = Store::open(&dir.file(data_dir::DATABASE)).await?;
        store.mark_all_offline().await?;
        Ok(Self { config, store, ca, server_cert_pem, server_key_pem })
    }

    pub fn config(&self) -> &ControllerConfig {
        &self.config
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Binds `addr`, or the configured listen address.
    pub async fn bind(&self, addr: Option<SocketAddr>) -> Result<TcpListener, ControllerError> {
        let addr = addr.unwrap_or(self.config.listen);
        TcpListener::bind(addr)
            .await
            .map_err(|source| ControllerError::Listen { addr: addr.to_string(), source })
    }

    /// Serves on `listener` until `shutdown` is cancelled.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), ControllerError> {
        let local = listener
            .local_addr()
            .map_err(|source| ControllerError::Listen { addr: "listener".into(), source })?;
        self.config
            .network
            .validate()
            .map_err(|message| ControllerError::Config { path: "[network]".into(), message })?;
        let agents = Arc::new(AgentRegistry::default());
        let telemetry = Telemetry::new();
        let metrics_listener = telemetry::bind(&self.config.prometheus)
            .await
            .map_err(|e| ControllerError::Config { path: "[prometheus]".into(), message: e.to_string() })?;
        let audit = AuditLog::start(self.store.clone(), telemetry.clone()).await?;
        let approval_ttl = Duration::from_secs(self.config.timing.approval_ttl_secs);
        let delivery = DeliveryTiming {
            offline_after: self.config.offline_after(),
            recovery_window: Duration::from_secs(self.config.timing.recovery_window_secs),
        };
        let jobs = Arc::new(JobManager::new(
            self.store.clone(),
            agents.clone(),
            audit.clone(),
            JobSettings {
                approval_ttl,
                timing: delivery,
                output_budget: OutputBudget::new(self.config.limits.max_live_output_bytes),
            },
            telemetry.clone(),
            shutdown.clone(),
        ));
        let (pending, resumed) = jobs.resume().await.map_err(|e| ControllerError::Config {
            path: "unfinished jobs".into(),
            message: e.to_string(),
        })?;
        if pending > 0 {
            tracing::info!(jobs = pending, "jobs still waiting for approval");
        }
        if resumed > 0 {
            tracing::warn!(
                jobs = resumed,
                "jobs the previous run left running resume; their hosts report once they reconnect"
            );
        }
        let monitoring = Monitoring::start(
            self.store.clone(),
            self.config.monitoring.clone(),
            telemetry.clone(),
            shutdown.clone(),
        )
        .await?;
        let state = AppState {
            limiter: Arc::new(RateLimiter::new(self.config.rate_limits.clone())),
            revocations: Revocations::default(),
            monitoring,
            telemetry,
            audit,
            public_url: self.config.public_url(local.port()),
            config: Arc::new(self.config),
            jobs,
            store: self.store,
            ca: Arc::new(self.ca),
            agents,
        };

        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.server_cert_pem, &self.server_key_pem))
            .client_ca_root(Certificate::from_pem(state.ca.cert_pem()))
            // A client certificate is optional at the TLS layer only so that enrollment and health
            // checks work without one; the auth layer requires it for every other method.
            .client_auth_optional(true)
            .timeout(Duration::from_secs(state.config.network.tls_handshake_timeout_secs));

        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<FleetServer<FleetService>>().await;
        health.set_serving::<AgentLinkServer<AgentLinkService>>().await;
        health.set_serving::<EnrollmentServer<EnrollmentService>>().await;
        health.set_serving::<IdentityServer<IdentityService>>().await;
        health.set_serving::<AuditServer<AuditService>>().await;
        health.set_serving::<MonitoringServer<MonitoringService>>().await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tailops_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| ControllerError::Config { path: "reflection".into(), message: e.to_string() })?;
        let reflection_alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tailops_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|e| ControllerError::Config { path: "reflection".into(), message: e.to_string() })?;

        let sweeper = tokio::spawn(liveness_sweeper(state.clone(), shutdown.clone()));
        tokio::spawn(crate::retention::run(
            state.store.clone(),
            state.config.retention.clone(),
            shutdown.clone(),
        ));
        if let Some(listener) = metrics_listener {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "Prometheus metrics at http://{addr}/metrics");
            }
            let source = Arc::new(FleetView { state: state.clone() });
            tokio::spawn(telemetry::serve(listener, state.telemetry.clone(), source, shutdown.clone()));
        }

        let authorizer = Authorizer::new(&state);
        let network = &state.config.network;
        let guard = ConnectionGuard::new(guard_limits(&state.config));
        let max_age = max_connection_age(&state.config);
        let router = Server::builder()
            .tls_config(tls)?
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(network.http2_keepalive_interval_secs)))
            .http2_keepalive_timeout(Some(Duration::from_secs(network.http2_keepalive_timeout_secs)))
            .max_concurrent_streams(network.max_concurrent_streams)
            .max_connection_age(max_age)
            .max_connection_age_grace(Duration::from_secs(network.max_connection_age_grace_secs))
            // Outermost first: refused calls are counted too.
            .layer(state.telemetry.rpc_layer())
            .layer(AuthLayer::new(authorizer))
            .layer(AuthenticatedConnectionLayer::new(guard.clone()))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_alpha)
            .add_service(
                EnrollmentServer::new(EnrollmentService::new(state.clone()))
                    .max_decoding_message_size(64 * 1024),
            )
            .add_service(
                AgentLinkServer::new(AgentLinkService::new(state.clone()))
                    .max_decoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(
                FleetServer::new(FleetService::new(state.clone()))
                    .max_decoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(
                IdentityServer::new(IdentityService::new(state.clone())).max_decoding_message_size(64 * 1024),
            )
            .add_service(
                AuditServer::new(AuditService::new(state.clone())).max_decoding_message_size(64 * 1024),
            )
            .add_service(
                MonitoringServer::new(MonitoringService::new(state.clone()))
                    .max_decoding_message_size(64 * 1024)
                    // A year of hourly points for one host is ~9,000 rows; let them through.
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            );

        tracing::info!(listen = %local, url = %state.public_url, fingerprint = %state.ca.fingerprint(), "controller serving");
        let agents = state.agents.clone();
        let stop = shutdown.clone();
        // The builder's tcp_nodelay applies only to listeners tonic binds itself. Without it,
        // small writes wait for delayed ACKs: ~40 ms on every job round trip.
        let incoming = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(Duration::from_secs(60)));
        let incoming = listener::guarded_incoming(incoming, guard, shutdown.clone());
        let serve = router.serve_with_incoming_shutdown(incoming, async move {
            stop.cancelled().await;
            // Agent streams never end on their own; close them so the graceful shutdown can finish.
            for conn in agents.snapshot() {
                conn.closed.cancel();
            }
        });
        tokio::pin!(serve);
        let result = tokio::select! {
            result = &mut serve => result.map_err(ControllerError::from),
            () = async { shutdown.cancelled().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
                tracing::warn!("in-flight calls did not finish within the shutdown grace period");
                Ok(())
            }
        };
        sweeper.abort();
        result
    }
}

/// The listener's limits from `[network]`, kept below the process's file-descriptor limit so that
/// accepting never fails for lack of descriptors, with at most half of the connections
/// unauthenticated so that authenticated peers always find room.
fn guard_limits(config: &ControllerConfig) -> GuardLimits {
    let network = &config.network;
    let fd_limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _hard)| soft);
    let by_fds = usize::try_from(fd_limit.saturating_sub(FD_RESERVE).max(FD_RESERVE)).unwrap_or(usize::MAX);
    let max_connections = network.max_connections.min(by_fds);
    if max_connections < network.max_connections {
        tracing::warn!(
            configured = network.max_connections,
            effective = max_connections,
            fd_limit,
            "the file-descriptor limit caps the connection limit; raise LimitNOFILE to allow more"
        );
    }
    let limits = GuardLimits {
        max_connections,
        max_per_address: network.max_connections_per_address,
        max_unauthenticated: network.max_unauthenticated.min(max_connections / 2).max(1),
        max_unauthenticated_per_address: network.max_unauthenticated_per_address,
        unauthenticated_timeout: Duration::from_secs(network.unauthenticated_timeout_secs),
    };
    tracing::debug!(?limits, "connection limits");
    limits
}

/// `[network] max_connection_age_secs`, but never longer than the shortest client certificate
/// lifetime.
fn max_connection_age(config: &ControllerConfig) -> Duration {
    let timing = &config.timing;
    let shortest = [
        timing.agent_cert_lifetime_secs,
        timing.user_cert_lifetime_secs,
        timing.bridge_cert_lifetime_secs,
        timing.admin_cert_lifetime_secs,
    ]
    .into_iter()
    .min()
    .unwrap_or(u64::MAX);
    Duration::from_secs(config.network.max_connection_age_secs.min(shortest).max(1))
}

/// The fleet as a Prometheus scrape sees it: every host, unscoped (the endpoint is for the
/// operator's monitoring system), with live online state and the monitoring view.
#[derive(Debug)]
struct FleetView {
    state: AppState,
}

impl SnapshotSource for FleetView {
    fn snapshot(&self) -> futures::future::BoxFuture<'_, FleetSnapshot> {
        Box::pin(async move {
            let hosts = match live_hosts(&self.state).await {
                Ok(hosts) => hosts,
                Err(e) => {
                    tracing::error!(error = %e, "metrics scrape could not list hosts");
                    Vec::new()
                }
            };
            let jobs_by_state = self.state.store.job_counts().await.unwrap_or_else(|e| {
                tracing::error!(error = %e, "metrics scrape could not count jobs");
                Vec::new()
            });
            let health_scores =
                hosts.iter().filter_map(|h| h.health.as_ref().map(|x| (h.id.clone(), x.score))).collect();
            FleetSnapshot {
                connected_agents: self.state.agents.snapshot().len() as u64,
                jobs_by_state,
                health_scores,
                hosts: hosts
                    .into_iter()
                    .map(|h| HostGauges {
                        host_id: h.id,
                        name: h.name,
                        labels: h.labels,
                        online: h.online,
                        last_seen_ms: h.last_seen_ms,
                        latest: h.latest,
                    })
                    .collect(),
            }
        })
    }
}

/// Takes silent agents offline and records last-seen times, once per heartbeat interval, so no
/// request ever waits on a dead host.
async fn liveness_sweeper(state: AppState, shutdown: CancellationToken) {
    let interval = state.config.heartbeat_interval();
    let offline_after = i64::try_from(state.config.offline_after().as_millis()).unwrap_or(i64::MAX);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = now_ms();
        let mut seen = Vec::new();
        for conn in state.agents.snapshot() {
            let last_seen = conn.last_seen_ms();
            if now - last_seen > offline_after {
                tracing::warn!(host = %conn.host_name, silent_ms = now - last_seen, "agent went silent; marking it offline");
                conn.closed.cancel();
            } else {
                seen.push((conn.host_id.clone(), last_seen));
            }
        }
        if let Err(e) = state.store.record_last_seen(&seen).await {
            tracing::error!(error = %e, "could not record last-seen times");
        }
    }
}
