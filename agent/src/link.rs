//! The agent link: one outbound mutual-TLS bidirectional stream to the controller, held forever.
//!
//! Reconnects with exponential backoff and jitter; logs an error when it changes, not on every
//! attempt. Renews its certificate at about 70% of its lifetime over the authenticated stream.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tailops_pki::CertificateInfo;
use tailops_proto::time::{format_ms, now_ms};
use tailops_proto::v1::{self, agent_link_client::AgentLinkClient, agent_message, controller_message};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::executor::{ExecSpec, Executor, OutputChunk, ProcessExecutor};
use crate::facts::{self, Facts};
use crate::monitor::{self, MonitorFeed, MonitorOptions, SampleBuffer};
use crate::ops::{self, OpsConfig};
use crate::state::AgentState;
use tailops_pki::error_chain;

use crate::AgentError;

/// A session that lasted this long resets the reconnect backoff.
const STABLE_SESSION: Duration = Duration::from_secs(30);
const WELCOME_TIMEOUT: Duration = Duration::from_secs(15);
const OUTBOX_CAPACITY: usize = 1024;
/// Renew when this fraction of the certificate's lifetime has passed.
const RENEW_AT_FRACTION: f64 = 0.7;
/// Job ids remembered after they finish, so a redelivered job does not run twice.
const REMEMBERED_JOBS: usize = 4096;
/// Jobs still running after this long send a separate "started" message (see [`announced`]).
const START_NOTICE_AFTER: Duration = Duration::from_millis(20);
/// Typed actions running at once, counting abandoned ones still stopping (see [`Workers`]).
const MAX_WORKERS: usize = 16;
/// How long output an abandoned action streamed is still forwarded after its result is known.
const ABANDONED_OUTPUT_GRACE: Duration = Duration::from_millis(200);

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
    // The agent's own key and certificate are never readable through its file operations.
    let mut ops = (*options.ops).clone();
    ops.files.deny_also(&state.dir).await;
    options.ops = Arc::new(ops);
    run_with_state(state, options, shutdown).await;
    Ok(())
}

/// Runs the link with an already loaded state until `shutdown` is cancelled.
pub async fn run_with_state(mut state: AgentState, options: LinkOptions, shutdown: CancellationToken) {
    tracing::info!(name = %state.config.name, controller = %state.config.controller_url, "agent starting");
    let mut backoff = options.min_backoff;
    let mut last_error: Option<String> = None;
    let mut finished_jobs = RecentJobs::default();
    let workers = Workers::new(MAX_WORKERS);
    let feed =
        options.monitor.clone().map(|m| monitor::start(m, options.ops.clone(), shutdown.child_token()));
    loop {
        let started = Instant::now();
        let outcome = session(
            &mut state,
            &options,
            &workers,
            feed.clone(),
            &shutdown,
            &mut finished_jobs,
            &mut last_error,
        )
        .await;
        if shutdown.is_cancelled() {
            tracing::info!("agent stopped");
            return;
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
            () = shutdown.cancelled() => return,
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
    options: &LinkOptions,
    workers: &Workers,
    mut feed: Option<MonitorFeed>,
    shutdown: &CancellationToken,
    finished_jobs: &mut RecentJobs,
    last_error: &mut Option<String>,
) -> Result<(), AgentError> {
    let channel: Channel = endpoint(state)?.connect().await.map_err(|e| AgentError::Connect {
        url: state.config.controller_url.clone(),
        detail: error_chain(&e),
    })?;
    let (outbox, outbound) = mpsc::channel::<v1::AgentMessage>(OUTBOX_CAPACITY);
    let hello = agent_message::Kind::Hello(crate::host::hello().await);
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
    let mut running: HashMap<u64, CancellationToken> = HashMap::new();
    let (job_done_tx, mut job_done) = mpsc::unbounded_channel::<u64>();
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

    let result = loop {
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
            Some(job_id) = job_done.recv() => {
                running.remove(&job_id);
                finished_jobs.insert(job_id);
            }
            message = inbound.message() => match message {
                Ok(Some(v1::ControllerMessage { kind: Some(kind) })) => match kind {
                    controller_message::Kind::RunJob(job) => {
                        start_job(job, options, workers, &mut running, finished_jobs, &outbox, &job_done_tx);
                    }
                    controller_message::Kind::CancelJob(cancel) => {
                        if let Some(token) = running.get(&cancel.job_id) {
                            tracing::info!(job = cancel.job_id, "cancelling job");
                            token.cancel();
                        }
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
    };
    // Results of jobs still running could not be delivered on a new stream, and the controller
    // has already written them off as unreachable: stop them rather than leave them orphaned.
    for token in running.values() {
        token.cancel();
    }
    result
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

fn start_job(
    job: v1::RunJob,
    options: &LinkOptions,
    workers: &Workers,
    running: &mut HashMap<u64, CancellationToken>,
    finished_jobs: &RecentJobs,
    outbox: &mpsc::Sender<v1::AgentMessage>,
    done: &mpsc::UnboundedSender<u64>,
) {
    let job_id = job.job_id;
    if running.contains_key(&job_id) || finished_jobs.contains(job_id) {
        tracing::info!(job = job_id, "job already delivered; not running it again");
        return;
    }
    let outbox = outbox.clone();
    let done = done.clone();
    let executor = options.executor.clone();
    let ops_config = options.ops.clone();
    let workers = workers.clone();
    let cancel = CancellationToken::new();
    running.insert(job_id, cancel.clone());
    tokio::spawn(async move {
        let work = perform(job, executor, ops_config, workers, cancel, outbox.clone());
        // Boxed: the work of every action kind is one large future.
        let result = announced(&outbox, job_id, Box::pin(work)).await;
        let finished = agent_message::Kind::JobFinished(v1::JobFinished { job_id, result: Some(result) });
        let _ = outbox.send(v1::AgentMessage { kind: Some(finished) }).await;
        let _ = done.send(job_id);
    });
}

/// Runs one job's action and returns its result; output streams to `outbox` as it comes.
async fn perform(
    job: v1::RunJob,
    executor: Arc<dyn Executor>,
    ops_config: Arc<OpsConfig>,
    workers: Workers,
    cancel: CancellationToken,
    outbox: mpsc::Sender<v1::AgentMessage>,
) -> v1::CommandResult {
    let job_id = job.job_id;
    let timeout = Duration::from_millis(job.timeout_ms);
    let reach = ops::Reach::of(&job);
    match job.action.and_then(|a| a.kind) {
        // Re-validated here: the agent does not trust that the controller checked.
        _ if job.timeout_ms == 0 => refused("zero timeout"),
        Some(v1::job_action::Kind::Exec(exec)) if !exec.argv.is_empty() => {
            tracing::debug!(job = job_id, program = %exec.argv[0], "running job");
            let spec = ExecSpec { argv: exec.argv, timeout, output_cap: job.output_cap_bytes };
            let (chunks_tx, chunks) = mpsc::channel(64);
            let forward = tokio::spawn(forward_output(job_id, chunks, outbox.clone()));
            let result = executor.execute(spec, cancel, chunks_tx).await;
            let _ = forward.await;
            result
        }
        Some(v1::job_action::Kind::ProcessList(action)) => {
            let limit = ops::output::result_limit(job.output_cap_bytes);
            let work = async move {
                match monitor::process_list(&action, reach).await {
                    Ok(mut list) => v1::CommandResult {
                        exit_code: Some(0),
                        stdout_truncated: ops::output::fit_processes(&mut list, limit),
                        output: Some(v1::ActionOutput {
                            kind: Some(v1::action_output::Kind::ProcessList(list)),
                        }),
                        ..Default::default()
                    },
                    Err(error) => v1::CommandResult { error, ..Default::default() },
                }
            };
            workers.run(job_id, timeout, &cancel, work).await.0
        }
        Some(v1::job_action::Kind::Operation(action)) => {
            // Validated again here: the agent does not trust that the controller checked.
            match tailops_ops::validate(&action.name, &action.params, action.dry_run) {
                Err(e) => refused(&e.to_string()),
                Ok(op) => {
                    tracing::debug!(
                        job = job_id,
                        op = op.spec.name,
                        dry_run = op.dry_run,
                        "running operation"
                    );
                    let (chunks_tx, chunks) = mpsc::channel(64);
                    let forward = tokio::spawn(forward_output(job_id, chunks, outbox.clone()));
                    let live = ops::LiveOutput::new(chunks_tx, job.output_cap_bytes);
                    let streamed = live.clone();
                    let limit = ops::output::result_limit(job.output_cap_bytes);
                    let work = async move {
                        let outcome = ops::run(&op, &ops_config, reach, timeout, &live).await;
                        // The stream ends with the operation, before its result is sent.
                        drop(live);
                        ops::command_result(&op, outcome, limit)
                    };
                    let (mut result, ended) = workers.run(job_id, timeout, &cancel, work).await;
                    let (streamed_bytes, streamed_truncated) = streamed.totals();
                    result.stdout_bytes = streamed_bytes;
                    result.stdout_truncated |= streamed_truncated;
                    drop(streamed);
                    // Output goes before the result. An abandoned operation may still hold its
                    // end of the stream; what it sends late is not waited for.
                    let mut forward = forward;
                    match ended {
                        Ended::Finished => {
                            let _ = forward.await;
                        }
                        Ended::Abandoned => {
                            if tokio::time::timeout(ABANDONED_OUTPUT_GRACE, &mut forward).await.is_err() {
                                forward.abort();
                            }
                        }
                    }
                    result
                }
            }
        }
        Some(v1::job_action::Kind::Exec(_)) | None => refused("empty command"),
    }
}

fn refused(why: &str) -> v1::CommandResult {
    v1::CommandResult { error: format!("refused: {why}"), ..Default::default() }
}

/// Runs a job's work, telling the controller it started only if it is still running after
/// [`START_NOTICE_AFTER`]: a quick command is reported by its result alone (the controller then
/// records the start itself), which halves the messages of a fan-out of quick commands.
async fn announced<T>(
    outbox: &mpsc::Sender<v1::AgentMessage>,
    job_id: u64,
    work: impl std::future::Future<Output = T>,
) -> T {
    let mut work = std::pin::pin!(work);
    tokio::select! {
        biased;
        result = &mut work => result,
        () = tokio::time::sleep(START_NOTICE_AFTER) => {
            let started = agent_message::Kind::JobStarted(v1::JobStarted { job_id });
            let _ = outbox.send(v1::AgentMessage { kind: Some(started) }).await;
            work.await
        }
    }
}

/// How a typed action's wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The action returned its result.
    Finished,
    /// The deadline or a cancel came first (or the action could not start); the action, if it
    /// runs, was told to stop and is no longer waited for.
    Abandoned,
}

/// Where typed actions run: each on a thread of its own with its own current-thread runtime, so
/// that nothing an operation does (CPU-bound matching over many entries, a blocking call, a
/// future that never yields) can hold up the link's runtime, which carries heartbeats, cancels
/// and results (H3). The deadline and cancel are enforced on the link's runtime, so a job ends
/// on time whatever its action does. An action still running then is abandoned: it is told to
/// stop, and its future is dropped at its next await (which kills the tools it runs, process
/// groups included), ending its thread. Work that never awaits cannot be interrupted from
/// outside; it is bounded instead: threads are counted until they end, abandoned ones included,
/// and an action beyond [`MAX_WORKERS`] is refused, so such work costs at most that many
/// threads, never the link.
#[derive(Debug, Clone)]
struct Workers {
    busy: Arc<AtomicUsize>,
    max: usize,
}

impl Workers {
    fn new(max: usize) -> Self {
        Self { busy: Arc::default(), max }
    }

    /// Runs `work` on a thread of its own until it returns, `timeout` passes or `cancel` fires,
    /// whichever comes first; the result records how long that took.
    async fn run(
        &self,
        job_id: u64,
        timeout: Duration,
        cancel: &CancellationToken,
        work: impl std::future::Future<Output = v1::CommandResult> + Send + 'static,
    ) -> (v1::CommandResult, Ended) {
        let started = Instant::now();
        let Some(slot) = Slot::take(&self.busy, self.max) else {
            tracing::warn!(job = job_id, max = self.max, "operation refused: every worker is busy");
            let why = format!(
                "the agent is busy: {} operations are still running or stopping; try again when they have ended",
                self.max
            );
            return (refused(&why), Ended::Abandoned);
        };
        let (result_tx, result_rx) = oneshot::channel();
        let stop = CancellationToken::new();
        let stop_worker = stop.clone();
        let spawned = std::thread::Builder::new().name(format!("op-{job_id}")).spawn(move || {
            let _slot = slot;
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => {
                    let error = format!("cannot start a runtime for the operation: {e}");
                    let _ = result_tx.send(v1::CommandResult { error, ..Default::default() });
                    return;
                }
            };
            // Boxed: operation futures are large, and this thread's stack is the default 2 MiB.
            let work = Box::pin(work);
            runtime.block_on(async move {
                tokio::select! {
                    result = work => {
                        let _ = result_tx.send(result);
                    }
                    () = stop_worker.cancelled() => {}
                }
            });
            // Tasks and blocking calls the operation left behind are not waited for.
            runtime.shutdown_background();
        });
        if let Err(e) = spawned {
            let error = format!("cannot start a thread for the operation: {e}");
            return (v1::CommandResult { error, ..Default::default() }, Ended::Abandoned);
        }
        // However this wait ends, the worker is told to stop.
        let _stop = stop.drop_guard();
        let (mut result, ended) = tokio::select! {
            biased;
            result = result_rx => match result {
                Ok(result) => (result, Ended::Finished),
                Err(_) => {
                    let error = "the operation stopped without a result (the agent's log says why)".to_owned();
                    (v1::CommandResult { error, ..Default::default() }, Ended::Finished)
                }
            },
            () = tokio::time::sleep(timeout) => (v1::CommandResult { timed_out: true, ..Default::default() }, Ended::Abandoned),
            () = cancel.cancelled() => (v1::CommandResult { cancelled: true, ..Default::default() }, Ended::Abandoned),
        };
        if ended == Ended::Abandoned {
            tracing::debug!(
                job = job_id,
                "operation abandoned at its deadline or cancel; its worker was told to stop"
            );
        }
        result.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        (result, ended)
    }
}

/// One of [`Workers`]' places, held by a worker thread until it ends.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(busy: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        busy.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| Self(busy.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn forward_output(
    job_id: u64,
    mut chunks: mpsc::Receiver<OutputChunk>,
    outbox: mpsc::Sender<v1::AgentMessage>,
) {
    while let Some(chunk) = chunks.recv().await {
        let output = v1::JobOutput { job_id, stream: chunk.stream as i32, seq: chunk.seq, data: chunk.data };
        if outbox.send(v1::AgentMessage { kind: Some(agent_message::Kind::JobOutput(output)) }).await.is_err()
        {
            // The stream is gone; keep draining so the command is never blocked on its output.
            while chunks.recv().await.is_some() {}
            return;
        }
    }
}

/// A bounded memory of finished job ids.
#[derive(Debug, Default)]
struct RecentJobs {
    order: VecDeque<u64>,
    ids: HashSet<u64>,
}

impl RecentJobs {
    fn insert(&mut self, id: u64) {
        if self.ids.insert(id) {
            self.order.push_back(id);
            if self.order.len() > REMEMBERED_JOBS
                && let Some(old) = self.order.pop_front()
            {
                self.ids.remove(&old);
            }
        }
    }
    fn contains(&self, id: u64) -> bool {
        self.ids.contains(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Work that never reaches an await, as CPU-bound matching would not: it blocks its thread.
    async fn blocking_work(duration: Duration) -> v1::CommandResult {
        // Blocking on purpose: this stands for an operation that never yields.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(duration);
        v1::CommandResult { exit_code: Some(0), ..Default::default() }
    }

    /// Counts ticks of a 10 ms interval on the calling runtime, standing for the heartbeats.
    fn ticker() -> (Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
        let ticks = Arc::new(AtomicUsize::new(0));
        let counter = ticks.clone();
        let task = tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_millis(10));
            loop {
                interval.tick().await;
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        (ticks, task)
    }

    #[tokio::test]
    async fn the_deadline_ends_work_that_never_yields_and_this_runtime_keeps_running() {
        let workers = Workers::new(4);
        let (ticks, task) = ticker();
        let cancel = CancellationToken::new();
        let waited = Instant::now();
        let (result, ended) =
            workers.run(1, Duration::from_millis(300), &cancel, blocking_work(Duration::from_secs(10))).await;
        assert!(result.timed_out && !result.cancelled, "{result:?}");
        assert_eq!(ended, Ended::Abandoned);
        assert!(waited.elapsed() < Duration::from_secs(5), "the deadline waited for the work");
        // This (current-thread) runtime ran its other tasks all along.
        assert!(ticks.load(Ordering::Relaxed) >= 10, "{} ticks", ticks.load(Ordering::Relaxed));
        task.abort();
    }

    #[tokio::test]
    async fn a_cancel_ends_work_that_never_yields() {
        let workers = Workers::new(4);
        let cancel = CancellationToken::new();
        let canceller = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            canceller.cancel();
        });
        let waited = Instant::now();
        let (result, ended) =
            workers.run(2, Duration::from_secs(60), &cancel, blocking_work(Duration::from_secs(10))).await;
        assert!(result.cancelled && !result.timed_out, "{result:?}");
        assert_eq!(ended, Ended::Abandoned);
        assert!(waited.elapsed() < Duration::from_secs(5), "the cancel waited for the work");
    }

    #[tokio::test]
    async fn results_pass_through_and_a_panic_is_a_failure_not_a_lost_job() {
        let workers = Workers::new(4);
        let cancel = CancellationToken::new();
        let quick = async { v1::CommandResult { exit_code: Some(0), ..Default::default() } };
        let (result, ended) = workers.run(3, Duration::from_secs(60), &cancel, quick).await;
        assert_eq!((result.exit_code, ended), (Some(0), Ended::Finished));
        let panics = async {
            if Instant::now().elapsed() < Duration::from_secs(3600) {
                panic!("an operation's bug");
            }
            v1::CommandResult::default()
        };
        let (result, ended) = workers.run(4, Duration::from_secs(60), &cancel, panics).await;
        assert!(result.error.contains("stopped without a result"), "{result:?}");
        assert_eq!(ended, Ended::Finished);
    }

    #[tokio::test]
    async fn abandoned_work_holds_its_place_until_it_stops_and_more_is_refused() {
        let workers = Workers::new(2);
        let cancel = CancellationToken::new();
        for job in 0..2 {
            let (result, _) = workers
                .run(job, Duration::from_millis(50), &cancel, blocking_work(Duration::from_secs(1)))
                .await;
            assert!(result.timed_out);
        }
        let quick = async { v1::CommandResult { exit_code: Some(0), ..Default::default() } };
        let (result, ended) = workers.run(3, Duration::from_secs(60), &cancel, quick).await;
        assert!(result.error.starts_with("refused: the agent is busy: 2 operations"), "{}", result.error);
        assert_eq!(ended, Ended::Abandoned);
        // Once the abandoned work has stopped, its places are free again.
        for _ in 0..100 {
            if workers.busy.load(Ordering::Acquire) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let quick = async { v1::CommandResult { exit_code: Some(0), ..Default::default() } };
        let (result, ended) = workers.run(4, Duration::from_secs(60), &cancel, quick).await;
        assert_eq!((result.exit_code, ended), (Some(0), Ended::Finished), "{}", result.error);
    }
}
