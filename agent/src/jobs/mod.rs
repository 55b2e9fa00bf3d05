//! Running jobs, exactly once per job id, across reconnects and restarts.
//!
//! A [`JobRunner`] outlives the agent's sessions with the controller: a job keeps running when
//! the link drops, and its result is kept on disk ([`held`]) until the controller confirms it
//! stored it, so a result that ends while the controller is away is delivered when it is back.
//! Before a job starts, its id is written to the [`journal`] and flushed, so a job delivered
//! again (after a reconnect, or a restart of either side) is answered, never run twice; after a
//! crash of the agent, the journal tells which jobs were cut short and which process groups
//! they left, which are killed and reported.
//!
//! Output streams to the controller while a session is up; output produced while the link is
//! down is not kept (the result's byte counts still cover it).

mod held;
mod journal;
mod workers;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tailops_proto::v1::{self, agent_message};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::AgentError;
use crate::executor::{ExecSpec, Executor, OutputChunk, Spawned};
use crate::monitor;
use crate::ops::{self, OpsConfig};
use held::HeldResults;
use journal::{Entry, Group, Journal};
use workers::{Ended, Workers};

/// Jobs still running after this long send a separate "started" message (see [`announced`]).
const START_NOTICE_AFTER: Duration = Duration::from_millis(20);
/// Typed actions running at once, counting abandoned ones still stopping (see [`Workers`]).
const MAX_WORKERS: usize = 16;
/// How long output an abandoned action streamed is still forwarded after its result is known.
const ABANDONED_OUTPUT_GRACE: Duration = Duration::from_millis(200);

/// Runs the jobs the controller sends, whichever session they come on.
#[derive(Debug)]
pub struct JobRunner {
    executor: Arc<dyn Executor>,
    ops: Arc<OpsConfig>,
    workers: Workers,
    dir: PathBuf,
    /// The journal and the held results change together, under one lock.
    book: tokio::sync::Mutex<Book>,
    /// Jobs running now (or being looked up), with their cancel tokens. A std mutex: held only
    /// for map operations, never across an await.
    running: Mutex<HashMap<u64, CancellationToken>>,
    uplink: Uplink,
    /// Set when the agent stops: jobs it cancels then say why.
    stopping: CancellationToken,
}

/// How long a stopping agent waits for its cancelled jobs to record their results.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// A result the controller has not confirmed storing after this long is written to disk.
const PERSIST_UNCONFIRMED_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Book {
    journal: Journal,
    held: HeldResults,
}

impl JobRunner {
    /// Opens the job state under `state_dir/jobs`, and settles what a previous run of the agent
    /// left: every job it started whose result was not stored is reported lost, after any process
    /// group it left behind is killed.
    pub async fn open(
        state_dir: &Path,
        executor: Arc<dyn Executor>,
        ops: Arc<OpsConfig>,
    ) -> Result<Arc<Self>, AgentError> {
        let dir = state_dir.join("jobs");
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| AgentError::Io { path, source }
        };
        tokio::fs::create_dir_all(&dir).await.map_err(io(&dir))?;
        set_private(&dir).await.map_err(io(&dir))?;
        let journal_path = dir.join("journal");
        let journal = Journal::open(&journal_path).await.map_err(io(&journal_path))?;
        let held_dir = dir.join("held");
        let held = HeldResults::open(&held_dir).await.map_err(io(&held_dir))?;
        let mut book = Book { journal, held };
        for (job_id, group) in book.journal.open_jobs() {
            if book.held.contains(job_id) {
                continue;
            }
            let what = kill_leftovers(group).await;
            tracing::warn!(job = job_id, "{what}");
            let lost = v1::CommandResult { lost: true, error: what, ..Default::default() };
            book.held.put(job_id, &lost).await.map_err(io(&held_dir))?;
        }
        let runner = Arc::new(Self {
            executor,
            ops,
            workers: Workers::new(MAX_WORKERS),
            dir,
            book: tokio::sync::Mutex::new(book),
            running: Mutex::default(),
            uplink: Uplink::default(),
            stopping: CancellationToken::new(),
        });
        tokio::spawn(persister(Arc::downgrade(&runner)));
        Ok(runner)
    }

    /// The jobs running now, for the hello of a new session.
    pub fn running_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.lock_running().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Sends job messages on this session's `outbox` from now on, starting with every result
    /// the controller has not confirmed.
    pub fn attach(self: &Arc<Self>, outbox: mpsc::Sender<v1::AgentMessage>) {
        self.uplink.set(Some(outbox));
        let runner = self.clone();
        tokio::spawn(async move { runner.resend_held().await });
    }

    /// The session ended: job messages wait for the next one (results, now kept on disk) or
    /// are dropped (output).
    pub fn detach(self: &Arc<Self>) {
        self.uplink.set(None);
        let runner = self.clone();
        tokio::spawn(async move { runner.persist(None).await });
    }

    /// Writes held results that are only in memory to disk (those kept before `kept_before`,
    /// or all), with the journal's pending records.
    async fn persist(&self, kept_before: Option<tokio::time::Instant>) {
        let mut book = self.book.lock().await;
        let persisted = match kept_before {
            Some(before) => book.held.persist_older(before).await,
            None => book.held.persist_all().await,
        };
        if let Err(e) = persisted {
            tracing::warn!(error = %e, "could not keep unconfirmed results on disk");
        }
        if let Err(e) = book.journal.write_done().await {
            tracing::warn!(error = %e, "could not write the job journal");
        }
    }

    /// Takes a job from the controller: runs it if this host never started it, and otherwise
    /// answers with what it knows (it runs, or here is its result).
    pub fn run(self: &Arc<Self>, job: v1::RunJob) {
        let job_id = job.job_id;
        let cancel = {
            let mut running = self.lock_running();
            if running.contains_key(&job_id) {
                drop(running);
                tracing::info!(job = job_id, "job delivered again while it runs; it goes on");
                let runner = self.clone();
                tokio::spawn(async move {
                    runner.uplink.send(agent_message::Kind::JobStarted(v1::JobStarted { job_id })).await;
                });
                return;
            }
            let cancel = CancellationToken::new();
            running.insert(job_id, cancel.clone());
            cancel
        };
        let runner = self.clone();
        tokio::spawn(async move {
            let result = runner.clone().deliver(job, cancel).await;
            runner.send_result(job_id, result).await;
            runner.lock_running().remove(&job_id);
        });
    }

    /// The agent stops: running jobs are cancelled (their process groups killed) and their
    /// results kept, saying so, to be reported when the agent is back.
    pub async fn stop(&self) {
        self.stopping.cancel();
        let tokens: Vec<CancellationToken> = self.lock_running().values().cloned().collect();
        if tokens.is_empty() {
            self.persist(None).await;
            return;
        }
        tracing::info!(jobs = tokens.len(), "stopping: cancelling the jobs that run");
        for token in &tokens {
            token.cancel();
        }
        let until = tokio::time::Instant::now() + STOP_GRACE;
        while !self.lock_running().is_empty() && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.persist(None).await;
    }

    pub fn cancel(&self, job_id: u64) {
        if let Some(token) = self.lock_running().get(&job_id) {
            tracing::info!(job = job_id, "cancelling job");
            token.cancel();
        }
    }

    /// The controller stored these jobs' results: forget them.
    pub async fn stored(&self, job_ids: &[u64]) {
        let mut book = self.book.lock().await;
        for &job_id in job_ids {
            book.held.remove(job_id).await;
            book.journal.done(job_id);
        }
    }

    /// The result of `job`: run now if this host never started it, else what is known of it.
    async fn deliver(self: Arc<Self>, job: v1::RunJob, cancel: CancellationToken) -> v1::CommandResult {
        let job_id = job.job_id;
        {
            let mut book = self.book.lock().await;
            match book.journal.get(job_id) {
                Some(Entry::Done) => {
                    tracing::info!(
                        job = job_id,
                        "job delivered again after its result was stored; not run again"
                    );
                    return refused(&format!(
                        "job {job_id} already ran on this host and its result was stored; a job runs at most once"
                    ));
                }
                Some(Entry::Open { .. }) => {
                    tracing::info!(
                        job = job_id,
                        "job delivered again after it ended; its result is sent again"
                    );
                    return book.held.get(job_id).await.unwrap_or_else(|| v1::CommandResult {
                        error: "the job ran on this host, but its result was dropped because too many \
                                results waited for the controller"
                            .into(),
                        ..Default::default()
                    });
                }
                None => {}
            }
            // Before anything runs: a job this host cannot record could run twice.
            if let Err(e) = book.journal.started(job_id).await {
                tracing::error!(job = job_id, error = %e, "cannot record the job in the journal; refused");
                return refused(&format!(
                    "the agent cannot record the job in its journal ({}: {e}); free space on the host's disk \
                     and run the job again",
                    self.dir.join("journal").display()
                ));
            }
        }
        // Boxed: the work of every action kind is one large future.
        let work = Box::pin(perform(self.clone(), job, cancel));
        let mut result = announced(&self.uplink, job_id, work).await;
        if result.cancelled && self.stopping.is_cancelled() && result.error.is_empty() {
            result.error = "the agent was stopped while the job ran".into();
        }
        let linked = self.uplink.is_up();
        let mut book = self.book.lock().await;
        if linked {
            // Most results are confirmed within milliseconds; the others go to disk (`persister`).
            book.held.keep(job_id, result.clone());
        } else if let Err(e) = book.held.put(job_id, &result).await {
            // It is still sent on the next connection, unless the agent stops first.
            tracing::warn!(job = job_id, error = %e, "could not keep the result on disk");
            book.held.keep(job_id, result.clone());
        }
        result
    }

    async fn send_result(&self, job_id: u64, result: v1::CommandResult) {
        let finished = v1::JobFinished { job_id, result: Some(result) };
        self.uplink.send(agent_message::Kind::JobFinished(finished)).await;
    }

    /// Sends every held result, oldest first.
    async fn resend_held(&self) {
        let held = {
            let book = self.book.lock().await;
            let mut held = Vec::new();
            for job_id in book.held.ids() {
                if let Some(result) = book.held.get(job_id).await {
                    held.push((job_id, result));
                }
            }
            held
        };
        if !held.is_empty() {
            tracing::info!(results = held.len(), "sending results the controller has not confirmed");
        }
        for (job_id, result) in held {
            self.send_result(job_id, result).await;
        }
    }

    /// Records the process group of `job_id`'s command once it is spawned.
    async fn journal_group(self: Arc<Self>, job_id: u64, spawned: oneshot::Receiver<Spawned>) {
        let Ok(Spawned { pgid }) = spawned.await else { return };
        let start_time = process_start_time(pgid).await.unwrap_or(0);
        let group = Group { pgid, start_time };
        if let Err(e) = self.book.lock().await.journal.group(job_id, group).await {
            tracing::warn!(job = job_id, error = %e, "could not record the job's process group");
        }
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<u64, CancellationToken>> {
        self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Once a second, writes to disk the results the controller has not confirmed within
/// [`PERSIST_UNCONFIRMED_AFTER`], and the journal's pending records; ends with the runner.
async fn persister(runner: std::sync::Weak<JobRunner>) {
    let mut tick = tokio::time::interval(PERSIST_UNCONFIRMED_AFTER);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(runner) = runner.upgrade() else { return };
        if let Some(before) = tokio::time::Instant::now().checked_sub(PERSIST_UNCONFIRMED_AFTER) {
            runner.persist(Some(before)).await;
        }
    }
}

/// The current session's outbox, if a session is up.
#[derive(Debug, Default)]
struct Uplink {
    current: Mutex<Option<mpsc::Sender<v1::AgentMessage>>>,
}

impl Uplink {
    fn set(&self, outbox: Option<mpsc::Sender<v1::AgentMessage>>) {
        *self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = outbox;
    }

    fn is_up(&self) -> bool {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .is_some_and(|o| !o.is_closed())
    }

    /// Sends on the current session; false when there is none or it ended meanwhile.
    async fn send(&self, kind: agent_message::Kind) -> bool {
        let outbox = self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        match outbox {
            Some(outbox) => outbox.send(v1::AgentMessage { kind: Some(kind) }).await.is_ok(),
            None => false,
        }
    }
}

async fn set_private(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).await
}

/// The start time of process `pid` (clock ticks after boot), from `/proc/PID/stat`.
async fn process_start_time(pid: i32) -> Option<u64> {
    let stat = tokio::fs::read_to_string(format!("/proc/{pid}/stat")).await.ok()?;
    // The command name (field 2) may hold spaces and parentheses; fields after it are plain.
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Field 22 is the 20th after the name (the state is field 3).
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Kills what a job cut short by a restart of the agent left behind, and says what was found.
async fn kill_leftovers(group: Option<Group>) -> String {
    const LOST: &str = "the agent restarted while this job ran, so its outcome is unknown";
    let Some(Group { pgid, start_time }) = group else {
        return format!("{LOST}; it had started no command");
    };
    // While any member of the group lives, its number cannot be reused; a leader alive under
    // that number with another start time means the group is long gone.
    if let Some(now) = process_start_time(pgid).await
        && start_time != 0
        && now != start_time
    {
        return format!("{LOST}; its processes (group {pgid}) had already exited");
    }
    match killpg(Pid::from_raw(pgid), Signal::SIGKILL) {
        Ok(()) => format!("{LOST}; its leftover processes (group {pgid}) were killed"),
        Err(nix::errno::Errno::ESRCH) => format!("{LOST}; its processes (group {pgid}) had already exited"),
        Err(e) => format!("{LOST}; its leftover processes (group {pgid}) could not be killed: {e}"),
    }
}

/// Runs one job's action and returns its result; output streams to the controller as it comes.
async fn perform(runner: Arc<JobRunner>, job: v1::RunJob, cancel: CancellationToken) -> v1::CommandResult {
    let job_id = job.job_id;
    let ops_config = runner.ops.clone();
    let workers = runner.workers.clone();
    let timeout = Duration::from_millis(job.timeout_ms);
    let reach = ops::Reach::of(&job);
    match job.action.and_then(|a| a.kind) {
        // Re-validated here: the agent does not trust that the controller checked.
        _ if job.timeout_ms == 0 => refused("zero timeout"),
        Some(v1::job_action::Kind::Exec(exec)) if !exec.argv.is_empty() => {
            tracing::debug!(job = job_id, program = %exec.argv[0], "running job");
            let spec = ExecSpec { argv: exec.argv, timeout, output_cap: job.output_cap_bytes };
            let (chunks_tx, chunks) = mpsc::channel(64);
            let forward = tokio::spawn(forward_output(job_id, chunks, runner.clone()));
            let (spawned_tx, spawned) = oneshot::channel();
            let journaled = tokio::spawn(runner.clone().journal_group(job_id, spawned));
            let result = runner.executor.execute(spec, cancel, chunks_tx, spawned_tx).await;
            let _ = forward.await;
            let _ = journaled.await;
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
                    let forward = tokio::spawn(forward_output(job_id, chunks, runner.clone()));
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

pub(crate) fn refused(why: &str) -> v1::CommandResult {
    v1::CommandResult { error: format!("refused: {why}"), ..Default::default() }
}

/// Runs a job's work, telling the controller it started only if it is still running after
/// [`START_NOTICE_AFTER`]: a quick command is reported by its result alone (the controller then
/// records the start itself), which halves the messages of a fan-out of quick commands.
async fn announced<T>(uplink: &Uplink, job_id: u64, work: impl std::future::Future<Output = T>) -> T {
    let mut work = std::pin::pin!(work);
    tokio::select! {
        biased;
        result = &mut work => result,
        () = tokio::time::sleep(START_NOTICE_AFTER) => {
            uplink.send(agent_message::Kind::JobStarted(v1::JobStarted { job_id })).await;
            work.await
        }
    }
}

async fn forward_output(job_id: u64, mut chunks: mpsc::Receiver<OutputChunk>, runner: Arc<JobRunner>) {
    while let Some(chunk) = chunks.recv().await {
        let output = v1::JobOutput { job_id, stream: chunk.stream as i32, seq: chunk.seq, data: chunk.data };
        // Without a session the chunk is dropped; the command is never blocked on its output.
        runner.uplink.send(agent_message::Kind::JobOutput(output)).await;
    }
}
