//! Jobs: resolve a selector, record one target per host, dispatch over the agents' live streams
//! with a concurrency limit and an absolute deadline, collect results, and replay every event to
//! any number of watchers.
//!
//! A running job lives in memory as a [`LiveJob`] (its event log and per-host state) and in
//! SQLite (the job, its targets and, when each host finishes, its result and capped output).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use tailops_proto::v1::{self, controller_message, job_event};
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::agents::AgentRegistry;
use crate::config::Limits;
use crate::now_ms;
use crate::store::{NewJob, Store, StoreError, TargetOutcome, summarize};

/// How long after the deadline the controller waits for an agent's own timeout report.
const REPORT_GRACE: Duration = Duration::from_secs(5);
/// How long a cancelled host has to confirm that it killed the process.
const CANCEL_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("no host matches the selector; check `tailopsctl hosts ls` for names and labels")]
    NoMatchingHosts,
    #[error("job {0} not found; list jobs with `tailopsctl jobs ls`")]
    NotFound(u64),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<JobError> for Status {
    fn from(e: JobError) -> Self {
        match e {
            JobError::InvalidArgument(m) => Status::invalid_argument(m),
            JobError::NoMatchingHosts => Status::not_found(e.to_string()),
            JobError::NotFound(_) => Status::not_found(e.to_string()),
            JobError::Store(e) => {
                tracing::error!(error = %e, "job store failure");
                Status::internal("the controller could not record the job; see its log")
            }
        }
    }
}

/// A validated request to run an action on a set of hosts.
#[derive(Debug, Clone)]
pub struct JobRequest {
    pub requested_by: String,
    pub selector: v1::HostSelector,
    pub action: v1::JobAction,
    pub timeout: Duration,
    pub concurrency: u32,
    pub output_cap: u64,
}

impl JobRequest {
    /// Checks a wire request against the limits and fills in defaults.
    pub fn from_wire(
        requested_by: String,
        req: v1::RunJobRequest,
        limits: &Limits,
    ) -> Result<Self, JobError> {
        let invalid = |m: String| JobError::InvalidArgument(m);
        let selector = req.selector.unwrap_or_default();
        if !selector.all && selector.labels.is_empty() && selector.hosts.is_empty() {
            return Err(invalid(
                "the selector is empty: name hosts, labels, or ask for all hosts explicitly".into(),
            ));
        }
        let action = req
            .action
            .ok_or_else(|| invalid("the job has no action".into()))?;
        match &action.kind {
            Some(v1::job_action::Kind::Exec(exec)) => {
                if exec.argv.is_empty() || exec.argv[0].is_empty() {
                    return Err(invalid(
                        "exec needs a command: tailopsctl exec --all -- COMMAND [ARGS...]".into(),
                    ));
                }
                let size: usize = exec.argv.iter().map(String::len).sum();
                if size > limits.max_argv_bytes {
                    return Err(invalid(format!(
                        "argv is {size} bytes; the limit is {}",
                        limits.max_argv_bytes
                    )));
                }
            }
            None => return Err(invalid("the job has no action".into())),
        }
        let timeout_secs_max = limits.max_job_timeout_secs;
        let timeout = match req.timeout_ms {
            0 => Duration::from_secs(limits.default_job_timeout_secs),
            ms => Duration::from_millis(ms),
        };
        if timeout > Duration::from_secs(timeout_secs_max) {
            return Err(invalid(format!(
                "timeout {timeout:?} exceeds the limit of {timeout_secs_max} s"
            )));
        }
        let output_cap = match req.output_cap_bytes {
            0 => limits.default_output_cap_bytes,
            n if n > limits.max_output_cap_bytes => {
                return Err(invalid(format!(
                    "output cap {n} exceeds the limit of {} bytes",
                    limits.max_output_cap_bytes
                )));
            }
            n => n,
        };
        Ok(Self {
            requested_by,
            selector,
            action,
            timeout,
            concurrency: req.concurrency,
            output_cap,
        })
    }
}

/// Whether `host` is addressed by `selector`.
pub fn selector_matches(selector: &v1::HostSelector, host: &v1::Host) -> bool {
    let labels_match = selector
        .labels
        .iter()
        .all(|(k, v)| host.labels.get(k) == Some(v));
    let named = selector.hosts.is_empty()
        || selector
            .hosts
            .iter()
            .any(|h| *h == host.name || *h == host.id);
    let explicit = selector.all || !selector.labels.is_empty() || !selector.hosts.is_empty();
    explicit && labels_match && named
}

#[derive(Debug)]
pub struct JobManager {
    store: Store,
    agents: Arc<AgentRegistry>,
    live: Mutex<HashMap<u64, Arc<LiveJob>>>,
}

impl JobManager {
    pub fn new(store: Store, agents: Arc<AgentRegistry>) -> Self {
        Self {
            store,
            agents,
            live: Mutex::default(),
        }
    }

    /// Records the job, starts dispatching it in the background and returns its live handle.
    pub async fn start(self: &Arc<Self>, req: JobRequest) -> Result<Arc<LiveJob>, JobError> {
        let hosts = self.store.list_hosts().await?;
        let targets: Vec<v1::JobTarget> = hosts
            .iter()
            .filter(|h| selector_matches(&req.selector, h))
            .map(|h| v1::JobTarget {
                host_id: h.id.clone(),
                host_name: h.name.clone(),
            })
            .collect();
        if targets.is_empty() {
            return Err(JobError::NoMatchingHosts);
        }
        let created_at_ms = now_ms();
        let timeout_ms = i64::try_from(req.timeout.as_millis()).unwrap_or(i64::MAX);
        let deadline_ms = created_at_ms.saturating_add(timeout_ms);
        let id = self
            .store
            .create_job(&NewJob {
                requested_by: req.requested_by.clone(),
                selector: req.selector.clone(),
                action: req.action.clone(),
                concurrency: req.concurrency,
                output_cap: req.output_cap,
                created_at_ms,
                deadline_ms,
                targets: targets.clone(),
            })
            .await?;
        tracing::info!(job = id, by = %req.requested_by, hosts = targets.len(), "job created");

        let job = Arc::new(LiveJob::new(
            id,
            &req,
            targets.clone(),
            Instant::now() + req.timeout,
        ));
        job.push(job_event::Kind::Accepted(v1::JobAccepted {
            targets,
            deadline_ms,
            action: Some(req.action.clone()),
        }));
        self.lock_live().insert(id, job.clone());
        let manager = self.clone();
        let running = job.clone();
        tokio::spawn(async move { manager.run(running, req.concurrency).await });
        Ok(job)
    }

    /// Every event of job `id` so far, then live ones until it completes.
    pub async fn watch(&self, id: u64) -> Result<JobEvents, JobError> {
        if let Some(job) = self.lock_live().get(&id).cloned() {
            return Ok(Box::pin(job.events()));
        }
        let (job, targets) = self.store.job(id).await?.ok_or(JobError::NotFound(id))?;
        Ok(Box::pin(futures::stream::iter(replay_finished(
            &job, &targets,
        ))))
    }

    /// Cancels a running job: pending hosts never start, running ones have their process group killed.
    pub async fn cancel(&self, id: u64) -> Result<v1::CancelJobResponse, JobError> {
        if let Some(job) = self.lock_live().get(&id).cloned() {
            let cancelled_targets = job.unfinished_count();
            job.cancel.cancel();
            tracing::info!(job = id, cancelled_targets, "job cancel requested");
            return Ok(v1::CancelJobResponse {
                cancelled_targets,
                already_finished: false,
            });
        }
        match self.store.job(id).await? {
            Some(_) => Ok(v1::CancelJobResponse {
                cancelled_targets: 0,
                already_finished: true,
            }),
            None => Err(JobError::NotFound(id)),
        }
    }

    /// Handles a job message from the agent of `host_id` (taken from its certificate). Messages
    /// about jobs this host was not given are dropped: an agent cannot report for another.
    pub fn on_agent_message(&self, host_id: &str, message: AgentJobMessage) {
        let job_id = message.job_id();
        let Some(job) = self.lock_live().get(&job_id).cloned() else {
            tracing::debug!(
                job = job_id,
                host = host_id,
                "message for a job that is not running; dropped"
            );
            return;
        };
        let accepted = match message {
            AgentJobMessage::Started(_) => job.mark_started(host_id),
            AgentJobMessage::Output(out) => job.append_output(host_id, out.stream(), out.data),
            AgentJobMessage::Finished(done) => {
                job.report_finished(host_id, done.result.unwrap_or_default())
            }
        };
        if !accepted {
            tracing::warn!(
                job = job_id,
                host = host_id,
                "agent sent a result for a job it was not running; dropped"
            );
        }
    }

    async fn run(self: Arc<Self>, job: Arc<LiveJob>, concurrency: u32) {
        let targets = job.targets();
        let permits = match concurrency {
            0 => targets.len().max(1),
            n => usize::try_from(n)
                .unwrap_or(usize::MAX)
                .min(Semaphore::MAX_PERMITS),
        };
        let semaphore = Arc::new(Semaphore::new(permits));
        let mut running = JoinSet::new();
        for target in targets {
            let permit = tokio::select! {
                permit = semaphore.clone().acquire_owned() => permit.ok(),
                () = job.cancel.cancelled() => None,
                () = tokio::time::sleep_until(job.deadline) => None,
            };
            let manager = self.clone();
            let job = job.clone();
            running.spawn(async move {
                let outcome = match permit {
                    Some(_permit) => manager.run_target(&job, &target).await,
                    None if job.cancel.is_cancelled() => {
                        Finish::cancelled("cancelled before it started")
                    }
                    None => Finish::timed_out("the deadline passed before this host's turn came"),
                };
                manager.finish_target(&job, &target, outcome).await;
            });
        }
        while running.join_next().await.is_some() {}
        self.complete(&job).await;
    }

    async fn run_target(&self, job: &LiveJob, target: &v1::JobTarget) -> Finish {
        if job.cancel.is_cancelled() {
            return Finish::cancelled("cancelled before it started");
        }
        let Some(agent) = self.agents.get(&target.host_id) else {
            return Finish::unreachable("host is offline");
        };
        let (report_tx, report_rx) = oneshot::channel();
        job.mark_dispatched(&target.host_id, report_tx);
        let remaining = job.deadline.saturating_duration_since(Instant::now());
        let run = v1::ControllerMessage {
            kind: Some(controller_message::Kind::RunJob(v1::RunJob {
                job_id: job.id,
                action: Some(job.action.clone()),
                timeout_ms: u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX),
                output_cap_bytes: job.output_cap,
            })),
        };
        if agent.outbox.send(Ok(run)).await.is_err() {
            return Finish::unreachable("agent disconnected before the job reached it");
        }
        let mut report_rx = report_rx;
        tokio::select! {
            report = &mut report_rx => return Finish::from_report(report.ok()),
            () = agent.closed.cancelled() => return Finish::unreachable("agent disconnected while the job ran"),
            () = tokio::time::sleep_until(job.deadline + REPORT_GRACE) => {
                return Finish::timed_out("the host did not report before the deadline");
            }
            () = job.cancel.cancelled() => {}
        }
        // Cancelled while running: ask the agent to kill the process group and wait briefly for
        // its confirmation, which carries whatever output was produced.
        let cancel = v1::ControllerMessage {
            kind: Some(controller_message::Kind::CancelJob(v1::CancelJob {
                job_id: job.id,
            })),
        };
        let _ = agent.outbox.try_send(Ok(cancel));
        tokio::select! {
            report = report_rx => Finish::from_report(report.ok()),
            () = agent.closed.cancelled() => Finish::cancelled("agent disconnected after the cancel"),
            () = tokio::time::sleep(CANCEL_GRACE) => Finish::cancelled("the host did not confirm the cancel"),
        }
    }

    async fn finish_target(&self, job: &LiveJob, target: &v1::JobTarget, finish: Finish) {
        let outcome = job.finish(&target.host_id, finish);
        if let Err(e) = self
            .store
            .finish_target(job.id, &target.host_id, &outcome)
            .await
        {
            tracing::error!(job = job.id, host = %target.host_name, error = %e, "could not persist a host result");
        }
    }

    async fn complete(&self, job: &LiveJob) {
        let (state, summary) = job.final_state();
        if let Err(e) = self.store.finish_job(job.id, state, now_ms()).await {
            tracing::error!(job = job.id, error = %e, "could not persist job completion");
        }
        job.push(job_event::Kind::Completed(v1::JobCompleted {
            state: state as i32,
            summary: Some(summary),
        }));
        self.lock_live().remove(&job.id);
        tracing::info!(job = job.id, state = ?state, "job completed");
    }

    fn lock_live(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<LiveJob>>> {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A stream of job events for one watcher.
pub type JobEvents = std::pin::Pin<Box<dyn Stream<Item = v1::JobEvent> + Send>>;

/// The job-related messages an agent sends.
#[derive(Debug)]
pub enum AgentJobMessage {
    Started(v1::JobStarted),
    Output(v1::JobOutput),
    Finished(v1::JobFinished),
}

impl AgentJobMessage {
    fn job_id(&self) -> u64 {
        match self {
            Self::Started(m) => m.job_id,
            Self::Output(m) => m.job_id,
            Self::Finished(m) => m.job_id,
        }
    }
}

/// How one host's part of a job ended, before it is recorded.
#[derive(Debug)]
struct Finish {
    state: v1::TargetState,
    result: v1::CommandResult,
}

impl Finish {
    fn with_error(state: v1::TargetState, error: &str) -> Self {
        Self {
            state,
            result: v1::CommandResult {
                error: error.to_owned(),
                ..Default::default()
            },
        }
    }
    fn unreachable(why: &str) -> Self {
        Self::with_error(v1::TargetState::Unreachable, why)
    }
    fn cancelled(why: &str) -> Self {
        let mut f = Self::with_error(v1::TargetState::Cancelled, why);
        f.result.cancelled = true;
        f
    }
    fn timed_out(why: &str) -> Self {
        let mut f = Self::with_error(v1::TargetState::TimedOut, why);
        f.result.timed_out = true;
        f
    }
    fn from_report(report: Option<v1::CommandResult>) -> Self {
        let Some(result) = report else {
            return Self::unreachable("the job's report channel closed");
        };
        let state = if result.cancelled {
            v1::TargetState::Cancelled
        } else if result.timed_out {
            v1::TargetState::TimedOut
        } else if result.error.is_empty() && result.exit_code == Some(0) {
            v1::TargetState::Succeeded
        } else {
            v1::TargetState::Failed
        };
        Self { state, result }
    }
}

/// A job while it runs: its event log, per-host state, and the signal watchers wait on.
#[derive(Debug)]
pub struct LiveJob {
    pub id: u64,
    action: v1::JobAction,
    output_cap: u64,
    deadline: Instant,
    cancel: CancellationToken,
    state: Mutex<LiveState>,
    changed: watch::Sender<u64>,
}

#[derive(Debug)]
struct LiveState {
    events: Vec<v1::JobEvent>,
    order: Vec<String>,
    targets: HashMap<String, TargetRun>,
    completed: bool,
}

#[derive(Debug)]
struct TargetRun {
    target: v1::JobTarget,
    state: v1::TargetState,
    report: Option<oneshot::Sender<v1::CommandResult>>,
    dispatched: bool,
    started_at_ms: i64,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

enum Next {
    Event(Box<v1::JobEvent>),
    Wait,
    End,
}

impl LiveJob {
    fn new(id: u64, req: &JobRequest, targets: Vec<v1::JobTarget>, deadline: Instant) -> Self {
        let order = targets.iter().map(|t| t.host_id.clone()).collect();
        let targets = targets
            .into_iter()
            .map(|target| {
                let run = TargetRun {
                    target: target.clone(),
                    state: v1::TargetState::Pending,
                    report: None,
                    dispatched: false,
                    started_at_ms: 0,
                    stdout: Vec::new(),
                    stderr: Vec::new(),
                };
                (target.host_id, run)
            })
            .collect();
        Self {
            id,
            action: req.action.clone(),
            output_cap: req.output_cap,
            deadline,
            cancel: CancellationToken::new(),
            state: Mutex::new(LiveState {
                events: Vec::new(),
                order,
                targets,
                completed: false,
            }),
            changed: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LiveState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn push(&self, kind: job_event::Kind) {
        let completed = matches!(kind, job_event::Kind::Completed(_));
        {
            let mut state = self.lock();
            state.events.push(v1::JobEvent {
                job_id: self.id,
                kind: Some(kind),
            });
            state.completed |= completed;
        }
        self.changed.send_modify(|version| *version += 1);
    }

    fn targets(&self) -> Vec<v1::JobTarget> {
        let state = self.lock();
        state
            .order
            .iter()
            .filter_map(|id| state.targets.get(id))
            .map(|t| t.target.clone())
            .collect()
    }

    fn unfinished_count(&self) -> u32 {
        let state = self.lock();
        let n = state
            .targets
            .values()
            .filter(|t| is_unfinished(t.state))
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    fn mark_dispatched(&self, host_id: &str, report: oneshot::Sender<v1::CommandResult>) {
        if let Some(t) = self.lock().targets.get_mut(host_id) {
            t.dispatched = true;
            t.report = Some(report);
        }
    }

    fn mark_started(&self, host_id: &str) -> bool {
        let target = {
            let mut state = self.lock();
            let Some(t) = state.targets.get_mut(host_id).filter(|t| t.dispatched) else {
                return false;
            };
            if t.state != v1::TargetState::Pending {
                return true; // a repeated start is harmless
            }
            t.state = v1::TargetState::Running;
            t.started_at_ms = now_ms();
            t.target.clone()
        };
        self.push(job_event::Kind::Started(v1::TargetStarted {
            target: Some(target),
        }));
        true
    }

    fn append_output(&self, host_id: &str, stream: v1::OutputStream, mut data: Vec<u8>) -> bool {
        let cap = usize::try_from(self.output_cap).unwrap_or(usize::MAX);
        let target = {
            let mut state = self.lock();
            let Some(t) = state
                .targets
                .get_mut(host_id)
                .filter(|t| t.dispatched && is_unfinished(t.state))
            else {
                return false;
            };
            let buffer = match stream {
                v1::OutputStream::Stderr => &mut t.stderr,
                _ => &mut t.stdout,
            };
            // The agent enforces the cap; this is the controller's own bound on what it keeps.
            data.truncate(cap.saturating_sub(buffer.len()));
            if data.is_empty() {
                return true;
            }
            buffer.extend_from_slice(&data);
            t.target.clone()
        };
        self.push(job_event::Kind::Output(v1::TargetOutput {
            target: Some(target),
            stream: stream as i32,
            data,
        }));
        true
    }

    fn report_finished(&self, host_id: &str, result: v1::CommandResult) -> bool {
        let mut state = self.lock();
        match state
            .targets
            .get_mut(host_id)
            .filter(|t| t.dispatched)
            .and_then(|t| t.report.take())
        {
            Some(report) => {
                let _ = report.send(result);
                true
            }
            None => false,
        }
    }

    /// Records the host's final state and emits its `finished` event.
    fn finish(&self, host_id: &str, finish: Finish) -> TargetOutcome {
        let (outcome, target) = {
            let mut state = self.lock();
            let Some(t) = state.targets.get_mut(host_id) else {
                return TargetOutcome {
                    state: finish.state,
                    result: finish.result,
                    stdout: Vec::new(),
                    stderr: Vec::new(),
                    started_at_ms: 0,
                    finished_at_ms: now_ms(),
                };
            };
            t.state = finish.state;
            t.report = None;
            let outcome = TargetOutcome {
                state: finish.state,
                result: finish.result,
                stdout: std::mem::take(&mut t.stdout),
                stderr: std::mem::take(&mut t.stderr),
                started_at_ms: t.started_at_ms,
                finished_at_ms: now_ms(),
            };
            (outcome, t.target.clone())
        };
        self.push(job_event::Kind::Finished(v1::TargetFinished {
            target: Some(target),
            state: finish.state as i32,
            result: Some(outcome.result.clone()),
        }));
        outcome
    }

    fn final_state(&self) -> (v1::JobState, v1::JobSummary) {
        let state = self.lock();
        let summary = summarize(state.targets.values().map(|t| t.state));
        let job_state = if summary.succeeded == summary.total {
            v1::JobState::Succeeded
        } else if self.cancel.is_cancelled() {
            v1::JobState::Cancelled
        } else {
            v1::JobState::Failed
        };
        (job_state, summary)
    }

    fn next_event(&self, index: usize) -> Next {
        let state = self.lock();
        match state.events.get(index) {
            Some(event) => Next::Event(Box::new(event.clone())),
            None if state.completed => Next::End,
            None => Next::Wait,
        }
    }

    /// Replays every event from the first, then follows live until the job completes.
    pub fn events(self: Arc<Self>) -> impl Stream<Item = v1::JobEvent> + Send + 'static {
        let changed = self.changed.subscribe();
        futures::stream::unfold(
            (self, 0usize, changed),
            |(job, index, mut changed)| async move {
                loop {
                    // Mark the current version seen *before* looking, so a push between the look and
                    // the wait still wakes us.
                    changed.borrow_and_update();
                    match job.next_event(index) {
                        Next::Event(event) => return Some((*event, (job, index + 1, changed))),
                        Next::End => return None,
                        Next::Wait => {
                            if changed.changed().await.is_err() {
                                return None;
                            }
                        }
                    }
                }
            },
        )
    }
}

fn is_unfinished(state: v1::TargetState) -> bool {
    matches!(state, v1::TargetState::Pending | v1::TargetState::Running)
}

/// The event sequence of a job that finished before this watcher arrived, rebuilt from SQLite.
fn replay_finished(job: &v1::Job, targets: &[v1::TargetDetail]) -> Vec<v1::JobEvent> {
    let event = |kind| v1::JobEvent {
        job_id: job.id,
        kind: Some(kind),
    };
    let mut events = vec![event(job_event::Kind::Accepted(v1::JobAccepted {
        targets: targets.iter().filter_map(|t| t.target.clone()).collect(),
        deadline_ms: job.deadline_ms,
        action: job.action.clone(),
    }))];
    for t in targets {
        for (stream, data) in [
            (v1::OutputStream::Stdout, &t.stdout),
            (v1::OutputStream::Stderr, &t.stderr),
        ] {
            if !data.is_empty() {
                events.push(event(job_event::Kind::Output(v1::TargetOutput {
                    target: t.target.clone(),
                    stream: stream as i32,
                    data: data.clone(),
                })));
            }
        }
        events.push(event(job_event::Kind::Finished(v1::TargetFinished {
            target: t.target.clone(),
            state: t.state,
            result: t.result.clone(),
        })));
    }
    events.push(event(job_event::Kind::Completed(v1::JobCompleted {
        state: job.state,
        summary: job.summary,
    })));
    events
}
