//! Runs one command the way a job must run: argv without a shell, its own process group, stdin
//! closed, an absolute deadline, output streamed in sequence-numbered chunks and capped (with
//! the cap reported), and on timeout or cancel the whole group killed, grandchildren included.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tailops_proto::v1;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a group gets between SIGTERM and SIGKILL on timeout or cancel: short, because a
/// deadline or a cancel must end the job within a second of its time.
pub const TERM_GRACE: Duration = Duration::from_millis(750);
/// How long output may keep arriving after the process group is gone (pipes inherited by a
/// process that escaped the group, e.g. through `setsid`, are abandoned after this).
const DRAIN_GRACE: Duration = Duration::from_secs(2);
const READ_CHUNK: usize = 16 * 1024;

/// What to run.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    pub argv: Vec<String>,
    pub timeout: Duration,
    /// Per stream; bytes beyond it are read and counted but not forwarded.
    pub output_cap: u64,
}

/// A chunk of output, numbered per stream from 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputChunk {
    pub stream: v1::OutputStream,
    pub seq: u64,
    pub data: Vec<u8>,
}

/// Sent as soon as a command is spawned, so the agent can journal its process group.
#[derive(Debug, Clone, Copy)]
pub struct Spawned {
    pub pgid: i32,
}

/// Runs the commands of jobs. The agent uses [`ProcessExecutor`]; the benchmark harness swaps in
/// an instant one to measure everything else with the same link code.
pub trait Executor: Send + Sync + std::fmt::Debug + 'static {
    fn execute(
        &self,
        spec: ExecSpec,
        cancel: CancellationToken,
        output: mpsc::Sender<OutputChunk>,
        spawned: oneshot::Sender<Spawned>,
    ) -> BoxFuture<'static, v1::CommandResult>;
}

/// Runs real processes with [`execute`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessExecutor;

impl Executor for ProcessExecutor {
    fn execute(
        &self,
        spec: ExecSpec,
        cancel: CancellationToken,
        output: mpsc::Sender<OutputChunk>,
        spawned: oneshot::Sender<Spawned>,
    ) -> BoxFuture<'static, v1::CommandResult> {
        Box::pin(async move { execute_notifying(spec, cancel, output, Some(spawned)).await })
    }
}

/// Runs `spec` to completion, forwarding output to `output`; never fails, the result says how
/// it ended. Dropping `output`'s receiver does not stop the command (only `cancel` does).
pub async fn execute(
    spec: ExecSpec,
    cancel: CancellationToken,
    output: mpsc::Sender<OutputChunk>,
) -> v1::CommandResult {
    execute_notifying(spec, cancel, output, None).await
}

/// [`execute`], telling `spawned` the command's process group as soon as it exists.
async fn execute_notifying(
    spec: ExecSpec,
    cancel: CancellationToken,
    output: mpsc::Sender<OutputChunk>,
    spawned: Option<oneshot::Sender<Spawned>>,
) -> v1::CommandResult {
    let started = Instant::now();
    let deadline = started + spec.timeout;
    let Some((program, args)) = spec.argv.split_first() else {
        return failed("empty command", started);
    };
    let mut child = match tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => return failed(&format!("cannot start {program:?}: {e}"), started),
    };
    let Some(group) = child.id().and_then(|id| i32::try_from(id).ok()).map(Pid::from_raw) else {
        return failed("the process exited before it could be tracked", started);
    };
    if let Some(spawned) = spawned {
        let _ = spawned.send(Spawned { pgid: group.as_raw() });
    }

    let stdout = Pump::spawn(child.stdout.take(), v1::OutputStream::Stdout, spec.output_cap, output.clone());
    let stderr = Pump::spawn(child.stderr.take(), v1::OutputStream::Stderr, spec.output_cap, output);

    let mut timed_out = false;
    let mut cancelled = false;
    let status = tokio::select! {
        status = child.wait() => status,
        () = tokio::time::sleep_until(deadline) => {
            timed_out = true;
            terminate_group(group, &mut child).await
        }
        () = cancel.cancelled() => {
            cancelled = true;
            terminate_group(group, &mut child).await
        }
    };
    // The job is over once its main process is: whatever it left running in its group goes too,
    // so no process outlives its job and the output pipes close.
    signal_group(group, Signal::SIGKILL);

    let drain_until = Instant::now() + DRAIN_GRACE;
    let (stdout_bytes, stdout_truncated) = stdout.finish(drain_until).await;
    let (stderr_bytes, stderr_truncated) = stderr.finish(drain_until).await;

    let mut result = v1::CommandResult {
        timed_out,
        cancelled,
        duration_ms: elapsed_ms(started),
        stdout_truncated,
        stderr_truncated,
        stdout_bytes,
        stderr_bytes,
        ..Default::default()
    };
    match status {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt;
            result.exit_code = status.code();
            result.signal = status.signal();
        }
        Err(e) => result.error = format!("lost track of the process: {e}"),
    }
    result
}

/// SIGTERM to the group, then SIGKILL if the main process has not exited within [`TERM_GRACE`].
async fn terminate_group(
    group: Pid,
    child: &mut tokio::process::Child,
) -> std::io::Result<std::process::ExitStatus> {
    signal_group(group, Signal::SIGTERM);
    match tokio::time::timeout(TERM_GRACE, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            signal_group(group, Signal::SIGKILL);
            child.wait().await
        }
    }
}

fn signal_group(group: Pid, signal: Signal) {
    // ESRCH (group already empty) is the expected outcome once everything has exited.
    if let Err(e) = killpg(group, signal)
        && e != nix::errno::Errno::ESRCH
    {
        tracing::warn!(pgid = group.as_raw(), ?signal, error = %e, "could not signal process group");
    }
}

fn failed(error: &str, started: Instant) -> v1::CommandResult {
    v1::CommandResult { error: error.to_owned(), duration_ms: elapsed_ms(started), ..Default::default() }
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Copies one output pipe into chunks, enforcing the cap, counting everything.
struct Pump {
    task: tokio::task::JoinHandle<()>,
    total: Arc<AtomicU64>,
    truncated: Arc<AtomicBool>,
}

impl Pump {
    fn spawn(
        pipe: Option<impl AsyncRead + Unpin + Send + 'static>,
        stream: v1::OutputStream,
        cap: u64,
        output: mpsc::Sender<OutputChunk>,
    ) -> Self {
        let total = Arc::new(AtomicU64::new(0));
        let truncated = Arc::new(AtomicBool::new(false));
        let (total_w, truncated_w) = (total.clone(), truncated.clone());
        let task = tokio::spawn(async move {
            let Some(mut pipe) = pipe else { return };
            let mut buf = vec![0u8; READ_CHUNK];
            let mut forwarded = 0u64;
            let mut seq = 0u64;
            loop {
                let n = match pipe.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                total_w.fetch_add(n as u64, Ordering::Relaxed);
                let room = usize::try_from(cap.saturating_sub(forwarded)).unwrap_or(usize::MAX);
                let keep = n.min(room);
                if keep < n {
                    truncated_w.store(true, Ordering::Relaxed);
                }
                if keep > 0 {
                    forwarded += keep as u64;
                    let chunk = OutputChunk { stream, seq, data: buf[..keep].to_vec() };
                    seq += 1;
                    // A closed receiver means nobody listens any more; keep draining the pipe so
                    // the process never blocks on a full pipe.
                    let _ = output.send(chunk).await;
                }
            }
        });
        Self { task, total, truncated }
    }

    /// Waits for the pipe to close (or `until`), then returns (total bytes, truncated).
    async fn finish(self, until: Instant) -> (u64, bool) {
        let mut task = self.task;
        if tokio::time::timeout_at(until, &mut task).await.is_err() {
            task.abort();
        }
        (self.total.load(Ordering::Relaxed), self.truncated.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(argv: &[&str], timeout: Duration, cap: u64) -> (v1::CommandResult, Vec<OutputChunk>) {
        let (tx, mut rx) = mpsc::channel(1024);
        let spec =
            ExecSpec { argv: argv.iter().map(|s| (*s).to_owned()).collect(), timeout, output_cap: cap };
        let result = execute(spec, CancellationToken::new(), tx).await;
        let mut chunks = Vec::new();
        while let Some(c) = rx.recv().await {
            chunks.push(c);
        }
        (result, chunks)
    }

    fn collect(chunks: &[OutputChunk], stream: v1::OutputStream) -> String {
        let bytes: Vec<u8> =
            chunks.iter().filter(|c| c.stream == stream).flat_map(|c| c.data.clone()).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[tokio::test]
    async fn captures_both_streams_and_exit_code() {
        let (result, chunks) =
            run(&["sh", "-c", "echo out; echo err >&2; exit 3"], Duration::from_secs(10), 1024).await;
        assert_eq!(result.exit_code, Some(3));
        assert_eq!(collect(&chunks, v1::OutputStream::Stdout), "out\n");
        assert_eq!(collect(&chunks, v1::OutputStream::Stderr), "err\n");
        assert!(!result.timed_out && !result.stdout_truncated);
    }

    #[tokio::test]
    async fn argv_is_not_interpreted_by_a_shell() {
        let (result, chunks) = run(&["echo", "$HOME;", "`id`"], Duration::from_secs(10), 1024).await;
        assert_eq!(result.exit_code, Some(0));
        assert_eq!(collect(&chunks, v1::OutputStream::Stdout), "$HOME; `id`\n");
    }

    #[tokio::test]
    async fn reports_the_cap_instead_of_cutting_silently() {
        let (result, chunks) =
            run(&["sh", "-c", "head -c 10000 /dev/zero"], Duration::from_secs(10), 100).await;
        assert_eq!(result.exit_code, Some(0));
        assert!(result.stdout_truncated);
        assert_eq!(result.stdout_bytes, 10_000);
        let forwarded: usize = chunks.iter().map(|c| c.data.len()).sum();
        assert_eq!(forwarded, 100);
        let seqs: Vec<u64> = chunks.iter().map(|c| c.seq).collect();
        assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn missing_program_is_an_error_not_a_panic() {
        let (result, _) = run(&["/nonexistent/tailops-test"], Duration::from_secs(5), 10).await;
        assert!(result.error.contains("cannot start"), "{}", result.error);
        assert_eq!(result.exit_code, None);
    }
}
