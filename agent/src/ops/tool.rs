//! Finding and running the external programs operations use: argv only (never a shell), stdin
//! closed, killed when the deadline passes or the job is dropped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::OpError;

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

/// Runs `program args...` to completion within `timeout`, capturing its output (the tools run
/// this way print little; streaming ones do not use this).
pub async fn run(program: &Path, args: &[&str], timeout: Duration) -> Result<Ran, OpError> {
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("LC_ALL", "C")
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(timeout, child).await {
        Ok(Ok(output)) => {
            let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
            Ok(Ran {
                status: output.status.code(),
                stdout: text(&output.stdout),
                stderr: text(&output.stderr),
            })
        }
        Ok(Err(e)) => Err(OpError::Failed(format!("cannot run {}: {e}", program.display()))),
        Err(_) => Err(OpError::Failed(format!(
            "{} did not finish within {}",
            program.display(),
            humantime::format_duration(timeout)
        ))),
    }
}
