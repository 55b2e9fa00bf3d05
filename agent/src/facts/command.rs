//! Running the CLIs that some facts come from (`tailscale`, `systemctl`, `docker`). A program
//! that is not installed, fails, or does not answer in time yields `None`: its facts are absent.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// Where `program` would be executed from, the way `execvp` finds it: a name containing `/` is
/// used as it is, a bare name is searched in `PATH`. `None` if there is no executable file
/// there, which is how "not installed" is told apart from "installed but failing".
pub(crate) async fn find_program(program: &Path) -> Option<PathBuf> {
    if program.as_os_str().is_empty() {
        return None;
    }
    if program.as_os_str().as_bytes().contains(&b'/') {
        return is_executable(program).await.then(|| program.to_path_buf());
    }
    let search = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&search) {
        // An empty entry means the working directory; an agent running as root must not pick up
        // programs from wherever it happens to be started.
        if dir.as_os_str().is_empty() {
            continue;
        }
        let candidate = dir.join(program);
        if is_executable(&candidate).await {
            return Some(candidate);
        }
    }
    None
}

async fn is_executable(path: &Path) -> bool {
    tokio::fs::metadata(path).await.is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs `program` with `args` (no shell, stdin closed) and returns its standard output if it
/// exits successfully within `timeout`. On timeout the process is killed (`kill_on_drop`).
pub(super) async fn run(program: &Path, args: &[&str], timeout: Duration) -> Option<String> {
    let Some(path) = find_program(program).await else {
        tracing::debug!(program = %program.display(), "not installed; its facts are absent");
        return None;
    };
    let child = tokio::process::Command::new(&path)
        .args(args.iter().map(OsStr::new))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(timeout, child).await {
        Ok(Ok(output)) if output.status.success() => {
            Some(String::from_utf8_lossy(&output.stdout).into_owned())
        }
        Ok(Ok(output)) => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            tracing::debug!(program = %path.display(), status = %output.status, stderr = %stderr.trim(), "fact command failed");
            None
        }
        Ok(Err(e)) => {
            tracing::debug!(program = %path.display(), error = %e, "cannot run fact command");
            None
        }
        Err(_) => {
            tracing::warn!(program = %path.display(), ?timeout, "fact command did not finish in time; killed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::testutil::{fake_program, script};

    #[tokio::test]
    async fn finds_programs_by_name_and_by_path() {
        let sh = find_program(Path::new("sh")).await.expect("sh is in PATH");
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{}", sh.display());
        assert_eq!(find_program(&sh).await, Some(sh.clone()));
        assert_eq!(find_program(Path::new("tailops-test-no-such-program")).await, None);
        assert_eq!(find_program(Path::new("/nonexistent/sh")).await, None);
        assert_eq!(find_program(Path::new("")).await, None);
        // A directory or a file without an execute bit is not a program.
        assert_eq!(find_program(Path::new("/")).await, None);
        assert_eq!(find_program(Path::new("/proc/meminfo")).await, None);
    }

    #[tokio::test]
    async fn output_only_on_success_within_the_timeout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ok = fake_program(dir.path(), "ok", &["a b", "c"], "hello\n").await;
        assert_eq!(run(&ok, &["a b", "c"], Duration::from_secs(10)).await.as_deref(), Some("hello\n"));
        // Argv is passed as given: the same words split differently are other arguments.
        assert_eq!(run(&ok, &["a", "b", "c"], Duration::from_secs(10)).await, None);

        let slow = script(dir.path(), "slow", "exec sleep 30").await;
        let started = std::time::Instant::now();
        assert_eq!(run(&slow, &[], Duration::from_millis(300)).await, None);
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
