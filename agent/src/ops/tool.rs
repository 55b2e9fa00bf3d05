//! Finding and running the external programs operations use: argv only (never a shell), stdin
//! closed, in a process group of their own that is killed, grandchildren included, when the
//! program ends, the deadline passes or the job is dropped (cancelled or abandoned).

use std::path::{Path, PathBuf};
use std::pin::pin;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

use super::OpError;

/// Output kept per stream; the rest is read and dropped so the program never blocks on a full
/// pipe, and a program that prints without end cannot fill the agent's memory.
pub const MAX_CAPTURE: usize = 4 * 1024 * 1024;
/// How long output may keep arriving after the program exited and its group was killed (a
/// process that left the group, e.g. through `setsid`, may hold the pipes; it is not waited for).
const DRAIN_GRACE: Duration = Duration::from_secs(2);
const READ_CHUNK: usize = 16 * 1024;

/// What a program printed and how it ended.
#[derive(Debug, Clone)]
pub struct Ran {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    /// The most useful line to show when the program failed.
    pub fn complaint(&self) -> String {
        let text = if self.stderr.trim().is_empty() { &self.stdout } else { &self.stderr };
        let line = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
        match self.status {
            Some(code) if line.is_empty() => format!("exited with status {code}"),
            Some(code) => format!("{line} (exit status {code})"),
            None => format!("{line} (killed by a signal)"),
        }
    }
}

/// `program` resolved like `execvp` does, or "not available" naming the tool.
pub async fn locate(program: &Path, what: &str) -> Result<PathBuf, OpError> {
    crate::facts::find_program(program)
        .await
        .ok_or_else(|| OpError::NotAvailable(format!("{what} ({}) is not installed", program.display())))
}

/// Runs `program args...` to completion within `timeout`, capturing its output (the first
/// [`MAX_CAPTURE`] bytes of each stream; the tools run this way print little, streaming ones do
/// not use this).
pub async fn run(program: &Path, args: &[&str], timeout: Duration) -> Result<Ran, OpError> {
    run_with_env(program, args, &[], timeout).await
}

/// [`run`] with extra environment variables.
pub async fn run_with_env(
    program: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> Result<Ran, OpError> {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("LC_ALL", "C")
        .process_group(0)
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child =
        command.spawn().map_err(|e| OpError::Failed(format!("cannot run {}: {e}", program.display())))?;
    // Armed until the program has exited: a timeout, or the job dropping this future, kills the
    // whole group on the way out (`kill_on_drop` alone reaches only the direct child, L13).
    let mut group = ProcessGroup::of(&child);
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let exited = CancellationToken::new();
    let waited = async {
        let status = child.wait().await;
        // Whatever the program left running in its group goes with it, as for `exec` jobs.
        group.kill();
        exited.cancel();
        status
    };
    let all = async { tokio::join!(waited, capture(stdout, &exited), capture(stderr, &exited)) };
    match tokio::time::timeout(timeout, all).await {
        Ok((Ok(status), stdout, stderr)) => {
            let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
            Ok(Ran { status: status.code(), stdout: text(&stdout), stderr: text(&stderr) })
        }
        Ok((Err(e), ..)) => Err(OpError::Failed(format!("lost track of {}: {e}", program.display()))),
        Err(_) => Err(OpError::Failed(format!(
            "{} did not finish within {}",
            program.display(),
            humantime::format_duration(timeout)
        ))),
    }
}

/// Reads `pipe` to its end, keeping the first [`MAX_CAPTURE`] bytes; stops [`DRAIN_GRACE`] after
/// `exited` if the pipe is still open then.
async fn capture(pipe: Option<impl AsyncRead + Unpin>, exited: &CancellationToken) -> Vec<u8> {
    let Some(mut pipe) = pipe else { return Vec::new() };
    let mut kept = Vec::new();
    let mut buf = vec![0u8; READ_CHUNK];
    let mut drained = pin!(async {
        exited.cancelled().await;
        tokio::time::sleep(DRAIN_GRACE).await;
    });
    loop {
        let n = tokio::select! {
            read = pipe.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            () = &mut drained => break,
        };
        let room = MAX_CAPTURE - kept.len();
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    kept
}

/// A child's process group (the child leads it: `process_group(0)`), SIGKILLed on drop unless
/// it was killed already.
struct ProcessGroup(Option<Pid>);

impl ProcessGroup {
    fn of(child: &tokio::process::Child) -> Self {
        Self(child.id().and_then(|id| i32::try_from(id).ok()).map(Pid::from_raw))
    }

    fn kill(&mut self) {
        if let Some(group) = self.0.take()
            && let Err(e) = killpg(group, Signal::SIGKILL)
            // ESRCH: everything in it has exited already, the usual case.
            && e != nix::errno::Errno::ESRCH
        {
            tracing::warn!(pgid = group.as_raw(), error = %e, "could not kill a tool's process group");
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn script(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("tool");
        tokio::fs::write(&path, format!("#!/bin/sh\n{body}\n")).await.expect("write");
        let chmod =
            tokio::process::Command::new("chmod").arg("755").arg(&path).status().await.expect("chmod");
        assert!(chmod.success());
        path
    }

    async fn gone(pid_file: &Path) -> bool {
        let pid = tokio::fs::read_to_string(pid_file).await.expect("pid file");
        for _ in 0..50 {
            let stat = tokio::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).await;
            if stat.is_err()
                || stat.is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')))
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pid_file = dir.path().join("pid");
        let tool = script(
            dir.path(),
            &format!(
                "trap '' TERM\nsleep 300 &\necho $! > '{}'\nwhile :; do sleep 1; done",
                pid_file.display()
            ),
        )
        .await;
        let e = run(&tool, &[], Duration::from_millis(500)).await.expect_err("times out");
        assert!(e.to_string().contains("did not finish within 500ms"), "{e}");
        assert!(gone(&pid_file).await, "the tool's grandchild outlived the timeout");
    }

    #[tokio::test]
    async fn dropping_the_run_kills_the_whole_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pid_file = dir.path().join("pid");
        let tool =
            script(dir.path(), &format!("sleep 300 &\necho $! > '{}'\nwait", pid_file.display())).await;
        let running = run(&tool, &[], Duration::from_secs(300));
        // The job is cancelled while the tool runs: its future is dropped.
        let _ = tokio::time::timeout(Duration::from_millis(500), running).await;
        assert!(gone(&pid_file).await, "the tool's grandchild outlived the cancel");
    }

    #[tokio::test]
    async fn endless_output_is_capped_and_a_finished_tool_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pid_file = dir.path().join("pid");
        let tool = script(
            dir.path(),
            &format!(
                "sleep 300 &\necho $! > '{}'\nhead -c 20000000 /dev/zero\necho done >&2",
                pid_file.display()
            ),
        )
        .await;
        let ran = run(&tool, &[], Duration::from_secs(60)).await.expect("runs");
        assert!(ran.success());
        assert_eq!(ran.stdout.len(), MAX_CAPTURE);
        assert_eq!(ran.stderr, "done\n");
        assert!(gone(&pid_file).await, "a process the tool left behind survived it");
    }
}
