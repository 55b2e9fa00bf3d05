//! `AgentLink.Connect`: one bidirectional stream per agent.

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use tailops_pki::PrincipalKind;
use tailops_proto::v1::{self, agent_link_server::AgentLink, agent_message, controller_message};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use serde_json::json;

use crate::agents::{AgentConnection, ClonePolicy, Refused};
use crate::audit::AuditRecord;
use crate::auth::Principal;
use crate::jobs::AgentJobMessage;
use crate::monitoring::clock::ClockOffset;
use crate::monitoring::ingest::{MAX_HELLO_FIELD, clean_text};
use crate::rate_limit::{Bucket, MessagePacer};
use crate::revocation::Revoked;
use crate::store::CertStanding;
use crate::store::HostReport;
use crate::{AppState, now_ms};

/// The least time between two certificate renewals on one stream.
const MIN_RENEWAL_INTERVAL: Duration = Duration::from_secs(60);
/// An agent must say hello this soon after opening its stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(15);
/// Messages queued towards one agent before senders wait.
const OUTBOX_CAPACITY: usize = 256;
/// A stream that sent something within this many heartbeat intervals is alive: a stream for
/// the same identity from another address is then a second holder, not a reconnect.
const LIVE_WITHIN_HEARTBEATS: i64 = 2;
/// How long a refused second holder keeps renewal over the link on hold (ms). Longer than the
/// agents' largest reconnect backoff, so a copy that keeps trying keeps it on hold.
const CONTESTED_FOR_MS: i64 = 10 * 60_000;

#[derive(Debug, Clone)]
pub struct AgentLinkService {
    state: AppState,
}

impl AgentLinkService {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

type ControllerStream = Pin<Box<dyn Stream<Item = Result<v1::ControllerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentLink for AgentLinkService {
    type ConnectStream = ControllerStream;

    async fn connect(
        &self,
        request: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let principal = Principal::of(&request)?;
        // Listen for revocations before anything else, so one published while this stream is
        // being set up (the hello wait, the database calls) still closes it.
        let revoked =
            Box::pin(self.state.revocations.until_revoked(principal.uri(), principal.serial.clone()));
        if principal.id.kind != PrincipalKind::Agent {
            return Err(Status::permission_denied("only agents may use the agent link"));
        }
        // Each stream costs database writes and an audit row: a copied or broken agent in a
        // reconnect loop is refused (and backs off) instead of costing them without bound.
        if let Err(retry) = self.state.limiter.check(&principal.uri(), Bucket::AgentConnect) {
            return Err(retry.into_status(Bucket::AgentConnect));
        }
        let host_id = principal.id.name.clone();
        let remote = request.remote_addr().map(|a| a.ip());
        let mut inbound = request.into_inner();

        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(v1::AgentMessage { kind: Some(agent_message::Kind::Hello(hello)) }))) => hello,
            Ok(Ok(_)) => {
                return Err(Status::invalid_argument("the first message on the agent link must be hello"));
            }
            Ok(Err(status)) => return Err(status),
            Err(_) => return Err(Status::deadline_exceeded("no hello from the agent")),
        };
        let host = self
            .state
            .store
            .host(&host_id)
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .ok_or_else(|| Status::permission_denied("this host is not enrolled"))?;

        let now = now_ms();
        let (outbox, rx) = mpsc::channel(OUTBOX_CAPACITY);
        let welcome = v1::ControllerMessage {
            kind: Some(controller_message::Kind::Welcome(v1::Welcome {
                host_id: host_id.clone(),
                name: host.name.clone(),
                heartbeat_interval_ms: u64::try_from(self.state.config.heartbeat_interval().as_millis())
                    .unwrap_or(10_000),
            })),
        };
        outbox.try_send(Ok(welcome)).map_err(|_| Status::internal("agent outbox full at start"))?;

        // Before anything of this stream is stored: a second holder of the identity must
        // neither take over the live stream nor retire its certificate.
        let heartbeat_ms =
            i64::try_from(self.state.config.heartbeat_interval().as_millis()).unwrap_or(i64::MAX);
        let policy = ClonePolicy {
            live_within_ms: heartbeat_ms.saturating_mul(LIVE_WITHIN_HEARTBEATS),
            contested_for_ms: CONTESTED_FOR_MS,
        };
        let (conn, replaced) = match self.state.agents.register(
            &host_id,
            &host.name,
            &principal.serial,
            remote,
            outbox,
            now,
            policy,
        ) {
            Ok(registered) => registered,
            Err(Refused { live_serial, live_remote }) => {
                tracing::warn!(host = %host.name, ?remote, live_from = ?live_remote, "second stream for a live agent identity refused: identity may be copied");
                self.state
                    .audit
                    .record(AuditRecord::deny(
                        principal.uri(),
                        "identity.clone_suspected",
                        json!({"host": host.name, "serial": principal.serial, "from": remote.map(|a| a.to_string()),
                               "live_serial": live_serial, "live_from": live_remote.map(|a| a.to_string())}),
                        "refused: this host's identity is connected from another address",
                    ))
                    .await;
                return Err(Status::already_exists(
                    "this host's identity is already connected from another address; if this machine \
                     is the real host, the other copy of its identity must be stopped (an admin can \
                     revoke its certificates and enroll the host again)",
                ));
            }
        };

        let report = HostReport {
            agent_version: clean_text(&hello.agent_version, MAX_HELLO_FIELD),
            hostname: clean_text(&hello.hostname, MAX_HELLO_FIELD),
            os: clean_text(&hello.os, MAX_HELLO_FIELD),
            arch: clean_text(&hello.arch, MAX_HELLO_FIELD),
            kernel: clean_text(&hello.kernel, MAX_HELLO_FIELD),
        };
        if let Err(e) = self.state.store.mark_online(&host_id, &report, now).await {
            self.state.agents.unregister(&conn);
            return Err(Status::internal(e.to_string()));
        }
        // Using a newer certificate retires the older ones (see `supersede_older_certificates`).
        match self.state.store.supersede_older_certificates(&principal.uri(), &principal.serial, now).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(host = %host.name, superseded = n, "renewed certificate in use; older ones retired")
            }
            Err(e) => {
                tracing::error!(host = %host.name, error = %e, "could not retire superseded certificates")
            }
        }
        if let Some(replaced) = replaced {
            // Normal after a network blip (the old TCP session is not dead yet); with two
            // different certificates open at once it may also be a copied identity: flag it.
            let same_cert = replaced.serial == principal.serial;
            self.state
                .audit
                .record(AuditRecord::allow(
                    principal.uri(),
                    "agent.stream_replaced",
                    vec![host.name.clone()],
                    json!({"old_serial": replaced.serial, "new_serial": principal.serial, "same_certificate": same_cert}),
                    if same_cert { "reconnected" } else { "flagged: two certificates of one host connected at once" },
                ))
                .await;
        }
        // A revocation may have landed before the stream was registered (close_serial missed
        // it): check the certificate's standing once more now that it is.
        if !matches!(
            self.state.store.certificate_standing(&principal.serial, &principal.uri()).await,
            Ok(CertStanding::Usable)
        ) {
            self.state.agents.unregister(&conn);
            return Err(Status::unauthenticated("certificate is revoked or unknown to this controller"));
        }
        tracing::info!(host = %host.name, version = %report.agent_version, "agent connected");
        // Jobs keep running on an agent across reconnects; those this controller no longer
        // expects there (cancelled or written off while the host was away) are stopped.
        for job_id in self.state.jobs.unexpected_jobs(&host_id, &hello.running_jobs) {
            tracing::info!(host = %host.name, job = job_id, "agent runs a job that is over here; cancelling it");
            let cancel = controller_message::Kind::CancelJob(v1::CancelJob { job_id });
            let _ = conn.outbox.try_send(Ok(v1::ControllerMessage { kind: Some(cancel) }));
        }

        let mut clock = ClockOffset::default();
        clock.observe(hello.clock_ms, now);
        self.state.monitoring.observe_clock(&host_id, clock);

        let state = self.state.clone();
        tokio::spawn(async move { read_agent_stream(state, conn, principal, inbound, revoked, clock).await });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Reads everything the agent sends until the stream ends, is replaced, goes silent, or its
/// certificate is revoked or expires.
async fn read_agent_stream(
    state: AppState,
    conn: AgentConnection,
    principal: Principal,
    mut inbound: Streaming<v1::AgentMessage>,
    mut revoked: Pin<Box<dyn Future<Output = Revoked> + Send>>,
    mut clock: ClockOffset,
) {
    let mut last_renewal: Option<std::time::Instant> = None;
    // The handshake checked the certificate's period once; the stream may not outlive it. The
    // agent renews at 70% of the lifetime and uses the new certificate when it reconnects.
    let left = u64::try_from(principal.not_after_ms.saturating_sub(now_ms())).unwrap_or(0);
    let expires = tokio::time::Instant::now() + Duration::from_millis(left);
    let mut pacer = MessagePacer::new(state.config.rate_limits.agent_messages_per_second);
    loop {
        pacer.admit().await;
        let message = tokio::select! {
            () = conn.closed.cancelled() => break,
            _ = &mut revoked => {
                tracing::warn!(host = %conn.host_name, "agent credentials revoked; closing its stream");
                break;
            }
            () = tokio::time::sleep_until(expires) => {
                tracing::info!(host = %conn.host_name, "the stream's certificate expired; closing it");
                break;
            }
            message = inbound.message() => message,
        };
        let kind = match message {
            Ok(Some(v1::AgentMessage { kind: Some(kind) })) => kind,
            Ok(Some(_)) => continue,
            Ok(None) => break,
            Err(status) => {
                tracing::debug!(host = %conn.host_name, %status, "agent stream error");
                break;
            }
        };
        conn.touch(now_ms());
        match kind {
            agent_message::Kind::Heartbeat(beat) => {
                clock.observe(beat.sent_at_ms, now_ms());
                state.monitoring.observe_clock(&conn.host_id, clock);
            }
            agent_message::Kind::Metrics(batch) => {
                if let Err(e) = state.monitoring.ingest(&conn.host_id, batch, clock, now_ms()).await {
                    tracing::warn!(host = %conn.host_name, error = %e, "samples refused");
                }
            }
            agent_message::Kind::Facts(update) => {
                match state.monitoring.apply_facts(&conn.host_id, update, now_ms()).await {
                    Ok(applied) if applied.recorded > 0 => {
                        tracing::info!(host = %conn.host_name, changes = applied.recorded, "inventory changed");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(host = %conn.host_name, error = %e, "facts refused"),
                }
            }
            agent_message::Kind::Hello(_) => {
                tracing::debug!(host = %conn.host_name, "repeated hello ignored");
            }
            agent_message::Kind::JobStarted(m) => {
                state.jobs.on_agent_message(&conn.host_id, AgentJobMessage::Started(m)).await
            }
            agent_message::Kind::JobOutput(m) => {
                state.jobs.on_agent_message(&conn.host_id, AgentJobMessage::Output(m)).await
            }
            agent_message::Kind::JobFinished(m) => {
                state.jobs.on_agent_message(&conn.host_id, AgentJobMessage::Finished(m)).await;
            }
            agent_message::Kind::RenewCertificate(renew) => {
                // One renewal per stream and interval: a looping agent cannot make the CA sign
                // without bound.
                if last_renewal.is_some_and(|at| at.elapsed() < MIN_RENEWAL_INTERVAL) {
                    tracing::warn!(host = %conn.host_name, "renewal requested again too soon; ignored");
                    continue;
                }
                last_renewal = Some(std::time::Instant::now());
                renew_certificate(&state, &conn, &principal, &renew.csr_pem).await;
            }
        }
    }
    let last_seen = conn.last_seen_ms();
    if state.agents.unregister(&conn) {
        tracing::info!(host = %conn.host_name, "agent disconnected");
        if let Err(e) = state.store.mark_offline(&conn.host_id, last_seen).await {
            tracing::error!(host = %conn.host_name, error = %e, "could not record the host as offline");
        }
    }
}

/// Signs a fresh certificate for the same identity over the authenticated link.
async fn renew_certificate(state: &AppState, conn: &AgentConnection, principal: &Principal, csr_pem: &str) {
    // The stream's certificate must still be good: a revoked or expired identity must not mint
    // a new one.
    let now = now_ms();
    if now > principal.not_after_ms
        || !matches!(
            state.store.certificate_standing(&principal.serial, &principal.uri()).await,
            Ok(CertStanding::Usable)
        )
    {
        tracing::warn!(host = %conn.host_name, "renewal refused: the stream's certificate is no longer valid");
        conn.closed.cancel();
        return;
    }
    // A second holder of the identity tried to connect: renewing now could hand the identity
    // to a copy for good. The agent asks again on its next session.
    if state.agents.is_contested(&conn.host_id, now) {
        tracing::warn!(host = %conn.host_name, "renewal refused: another copy of this identity tried to connect");
        state
            .audit
            .record(AuditRecord::deny(
                principal.uri(),
                "identity.renew",
                json!({"host": conn.host_name, "serial": principal.serial, "over": "agent link"}),
                "refused: another connection claimed this host's identity recently",
            ))
            .await;
        return;
    }
    let lifetime = Duration::from_secs(state.config.timing.agent_cert_lifetime_secs);
    let cert = match state.ca.sign_csr(csr_pem, &principal.id, lifetime) {
        Ok(cert) => cert,
        Err(e) => {
            tracing::warn!(host = %conn.host_name, error = %e, "certificate renewal refused");
            return;
        }
    };
    if let Err(e) = state.store.record_renewal(&cert, &principal.id.uri(), &principal.serial, now_ms()).await
    {
        tracing::error!(host = %conn.host_name, error = %e, "could not record a renewed certificate");
        return;
    }
    let issued = v1::ControllerMessage {
        kind: Some(controller_message::Kind::CertificateIssued(v1::CertificateIssued {
            certificate_pem: cert.pem,
            expires_at_ms: cert.not_after_ms,
        })),
    };
    state
        .audit
        .record(AuditRecord::allow(
            principal.uri(),
            "identity.renew",
            vec![conn.host_name.clone()],
            json!({"serial": cert.serial, "renewed_from": principal.serial, "over": "agent link"}),
            "ok",
        ))
        .await;
    // Never wait on an agent that does not read its stream; it asks again on its next session.
    if conn.outbox.try_send(Ok(issued)).is_ok() {
        tracing::info!(host = %conn.host_name, "agent certificate renewed");
    }
}
