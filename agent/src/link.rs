//! The agent link: one outbound mutual-TLS bidirectional stream to the controller, held forever.
//!
//! Reconnects with exponential backoff and jitter; logs an error when it changes, not on every
//! attempt. Renews its certificate at about 70% of its lifetime over the authenticated stream.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tailops_pki::CertificateInfo;
use tailops_proto::time::{format_ms, now_ms};
use tailops_proto::v1::{self, agent_link_client::AgentLinkClient, agent_message, controller_message};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::executor::{Executor, ProcessExecutor};
use crate::facts::{self, Facts};
use crate::jobs::JobRunner;
use crate::monitor::{self, MonitorFeed, MonitorOptions, SampleBuffer};
use crate::ops::OpsConfig;
use crate::state::AgentState;
use tailops_pki::error_chain;

use crate::AgentError;

/// A session that lasted this long resets the reconnect backoff.
const STABLE_SESSION: Duration = Duration::from_secs(30);
const WELCOME_TIMEOUT: Duration = Duration::from_secs(15);
const OUTBOX_CAPACITY: usize = 1024;
/// Renew when this fraction of the certificate's lifetime has passed.
const RENEW_AT_FRACTION: f64 = 0.7;

#[derive(Debug, Clone)]
pub struct LinkOptions {
    pub state_dir: PathBuf,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub executor: Arc<dyn Executor>,
    /// Resource samples and facts; `None` sends neither (the benchmark's simulated agents).
    pub monitor: Option<MonitorOptions>,
    /// Tools and file policy of typed operations.
    pub ops: Arc<OpsConfig>,
}

impl LinkOptions {
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            executor: Arc::new(ProcessExecutor),
            monitor: Some(MonitorOptions::default()),
            ops: Arc::new(OpsConfig::default()),
        }
    }
}

/// Runs the agent until `shutdown` is cancelled. Fails only if the state directory is unusable.
pub async fn run(mut options: LinkOptions, shutdown: CancellationToken) -> Result<(), AgentError> {
    let state = AgentState::load(&options.state_dir).await?;
    // The agent's own key and certificate (and its job journal) are never readable through its
    // file operations.
    let mut ops = (*options.ops).clone();
    ops.files.deny_also(&state.dir).await;
    options.ops = Arc::new(ops);
    run_with_state(state, options, shutdown).await
}

/// Runs the link with an already loaded state until `shutdown` is cancelled. Fails only if the
/// job journal in the state directory is unusable.
pub async fn run_with_state(
    mut state: AgentState,
    options: LinkOptions,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    tracing::info!(name = %state.config.name, controller = %state.config.controller_url, "agent starting");
    let runner = JobRunner::open(&state.dir, options.executor.clone(), options.ops.clone()).await?;
    let mut backoff = options.min_backoff;
    let mut last_error: Option<String> = None;
    let feed =
        options.monitor.clone().map(|m| monitor::start(m, options.ops.clone(), shutdown.child_token()));
    loop {
        let started = Instant::now();
        let outcome = session(&mut state, &runner, feed.clone(), &shutdown, &mut last_error).await;
        runner.detach();
        if shutdown.is_cancelled() {
            runner.stop().await;
            tracing::info!("agent stopped");
            return Ok(());
        }
        let message = match outcome {
            Ok(()) => "the controller closed the stream".to_owned(),
            Err(e) => error_chain(&e),
        };
        if last_error.as_deref() != Some(message.as_str()) {
            tracing::warn!(error = %message, "link down; reconnecting with backoff");
            last_error = Some(message);
        } else {
            tracing::debug!(error = %message, "link still down");
        }
        if started.elapsed() >= STABLE_SESSION {
            backoff = options.min_backoff;
        }
        let delay = jittered(backoff);
        backoff = (backoff * 2).min(options.max_backoff);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => {
                runner.stop().await;
                return Ok(());
            }
        }
    }
}

/// Between half and all of `base`, so a fleet that lost its controller does not reconnect in step.
fn jittered(base: Duration) -> Duration {
    base.mul_f64(rand::random_range(0.5..=1.0))
}

fn endpoint(state: &AgentState) -> Result<Endpoint, AgentError> {
    let url = state.config.controller_url.clone();
    let err = |e: tonic::transport::Error| AgentError::Connect { url: url.clone(), detail: error_chain(&e) };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&state.ca_pem))
        .identity(Identity::from_pem(&state.cert_pem, &state.key_pem));
    Ok(Endpoint::from_shared(url.clone())
        .map_err(err)?
        .tls_config(tls)
        .map_err(err)?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true))
}

/// One connected session; returns when the stream ends.
async fn session(
    state: &mut AgentState,
    runner: &Arc<JobRunner>,
    mut feed: Option<MonitorFeed>,
    shutdown: &CancellationToken,
    last_error: &mut Option<String>,
) -> Result<(), AgentError> {
    let channel: Channel = endpoint(state)?.connect().await.map_err(|e| AgentError::Connect {
        url: state.config.controller_url.clone(),
        detail: error_chain(&e),
    })?;
    let (outbox, outbound) = mpsc::channel::<v1::AgentMessage>(OUTBOX_CAPACITY);
    let hello = agent_message::Kind::Hello(crate::host::hello(runner.running_ids()).await);
    outbox.try_send(v1::AgentMessage { kind: Some(hello) }).map_err(|_| AgentError::Connect {
        url: state.config.controller_url.clone(),
        detail: "outbox closed".into(),
    })?;
    let mut inbound = AgentLinkClient::new(channel)
        .connect(ReceiverStream::new(outbound))
        .await
        .map_err(AgentError::Refused)?
        .into_inner();
    let welcome = match tokio::time::timeout(WELCOME_TIMEOUT, inbound.message()).await {
        Ok(Ok(Some(v1::ControllerMessage { kind: Some(controller_message::Kind::Welcome(w)) }))) => w,
        Ok(Err(status)) => return Err(AgentError::Refused(status)),
        _ => {
            return Err(AgentError::Refused(tonic::Status::unavailable(
                "the controller did not welcome the agent",
            )));
        }
    };
    if last_error.take().is_some() {
        tracing::info!(name = %welcome.name, "link restored");
    } else {
        tracing::info!(name = %welcome.name, host_id = %welcome.host_id, "connected to the controller");
    }

    let mut heartbeat = tokio::time::interval(Duration::from_millis(welcome.heartbeat_interval_ms.max(100)));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.tick().await; // the first tick is immediate; the hello just said we are alive
    let mut renew_at = renewal_instant(&state.cert_pem);
    let mut pending_key: Option<String> = None;
    // Jobs keep running across sessions; their messages go out on this one from now on.
    runner.attach(outbox.clone());
    // The controller replaces its view with a full set on every connect, then gets diffs.
    let mut facts_sent: Option<Arc<Facts>> = None;
    let samples = feed.as_ref().map(|f| f.samples.clone());
    let mut facts_rx = feed.take().map(|f| f.facts);
    if let Some(rx) = facts_rx.as_mut() {
        let current = rx.borrow_and_update().clone();
        if let Some(current) = current {
            send_facts(&outbox, None, &current).await;
            facts_sent = Some(current);
        }
    }

    loop {
        tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            _ = heartbeat.tick() => {
                let beat = v1::Heartbeat { sent_at_ms: now_ms() };
                let _ = outbox.try_send(v1::AgentMessage { kind: Some(agent_message::Kind::Heartbeat(beat)) });
            }
            () = tokio::time::sleep_until(renew_at), if pending_key.is_none() => {
                match tailops_pki::csr::generate_key_and_csr(&state.config.name) {
                    Ok((key, csr_pem)) => {
                        tracing::info!("renewing the agent certificate");
                        pending_key = Some(key);
                        let renew = agent_message::Kind::RenewCertificate(v1::RenewCertificate { csr_pem });
                        let _ = outbox.send(v1::AgentMessage { kind: Some(renew) }).await;
                    }
                    Err(e) => tracing::error!(error = %e, "cannot generate a key for renewal"),
                }
            }
            () = samples_ready(samples.as_deref()) => {
                if let Some(samples) = samples.as_deref() {
                    send_samples(&outbox, samples.drain()).await;
                }
            }
            Some(current) = facts_changed(facts_rx.as_mut()) => {
                send_facts(&outbox, facts_sent.as_deref(), &current).await;
                facts_sent = Some(current);
            }
            message = inbound.message() => match message {
                Ok(Some(v1::ControllerMessage { kind: Some(kind) })) => match kind {
                    controller_message::Kind::RunJob(job) => runner.run(job),
                    controller_message::Kind::CancelJob(cancel) => runner.cancel(cancel.job_id),
                    controller_message::Kind::ResultsStored(stored) => {
                        let runner = runner.clone();
                        tokio::spawn(async move { runner.stored(&stored.job_ids).await });
                    }
                    controller_message::Kind::CertificateIssued(issued) => {
                        if let Some(key) = pending_key.take() {
                            store_renewed(state, key, issued.certificate_pem).await;
                            // The next renewal is due at 70% of the new certificate's lifetime.
                            renew_at = renewal_instant(&state.cert_pem);
                        }
                    }
                    controller_message::Kind::Welcome(_) => {}
                },
                Ok(Some(_)) => {}
                Ok(None) => break Ok(()),
                Err(status) => break Err(AgentError::Refused(status)),
            },
        }
    }
}

/// Samples per message; a long outage's backlog goes in several.
const SAMPLES_PER_BATCH: usize = 500;

async fn samples_ready(samples: Option<&SampleBuffer>) {
    match samples {
        Some(samples) => samples.ready().await,
        None => std::future::pending().await,
    }
}

/// The newest facts, when they changed; pending forever when monitoring is off or stopped.
async fn facts_changed(facts: Option<&mut watch::Receiver<Option<Arc<Facts>>>>) -> Option<Arc<Facts>> {
    let Some(facts) = facts else { return std::future::pending().await };
    match facts.changed().await {
        Ok(()) => facts.borrow_and_update().clone(),
        Err(_) => std::future::pending().await,
    }
}

async fn send_samples(outbox: &mpsc::Sender<v1::AgentMessage>, samples: Vec<v1::MetricSample>) {
    for chunk in samples.chunks(SAMPLES_PER_BATCH) {
        let batch = agent_message::Kind::Metrics(v1::MetricsBatch { samples: chunk.to_vec() });
        let _ = outbox.send(v1::AgentMessage { kind: Some(batch) }).await;
    }
}

/// Sends `current` in full (no previous set) or as a diff against `previous`, if it differs.
async fn send_facts(outbox: &mpsc::Sender<v1::AgentMessage>, previous: Option<&Facts>, current: &Facts) {
    let update = match previous {
        None => v1::FactsUpdate { full: true, set: current.clone(), removed: Vec::new() },
        Some(previous) => {
            let diff = facts::diff(previous, current);
            if diff.is_empty() {
                return;
            }
            v1::FactsUpdate { full: false, set: diff.set, removed: diff.removed }
        }
    };
    let _ = outbox.send(v1::AgentMessage { kind: Some(agent_message::Kind::Facts(update)) }).await;
}

async fn store_renewed(state: &mut AgentState, key_pem: String, cert_pem: String) {
    match CertificateInfo::from_pem(&cert_pem) {
        Ok(info) if info.principal.name == state.config.host_id => {
            match state.save_renewed(key_pem, cert_pem).await {
                Ok(()) => {
                    tracing::info!(expires = %format_ms(info.not_after_ms), "agent certificate renewed")
                }
                Err(e) => tracing::error!(error = %e, "could not store the renewed certificate"),
            }
        }
        Ok(info) => {
            tracing::error!(principal = %info.principal, "renewed certificate names another identity; ignored")
        }
        Err(e) => tracing::error!(error = %e, "renewed certificate is unreadable; ignored"),
    }
}

/// When to renew: 70% into the certificate's lifetime (now, if that has passed).
fn renewal_instant(cert_pem: &str) -> Instant {
    let Ok(info) = CertificateInfo::from_pem(cert_pem) else {
        return Instant::now();
    };
    let lifetime = info.not_after_ms.saturating_sub(info.not_before_ms).max(0);
    #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
    let renew_ms = info.not_before_ms + (lifetime as f64 * RENEW_AT_FRACTION) as i64;
    if info.not_after_ms <= now_ms() {
        tracing::error!(
            expired = %format_ms(info.not_after_ms),
            "the agent certificate has expired; the controller will refuse it. Enroll again with a new join token"
        );
    }
    let wait = u64::try_from(renew_ms.saturating_sub(now_ms())).unwrap_or(0);
    Instant::now() + Duration::from_millis(wait)
}
