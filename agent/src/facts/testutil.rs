//! Test fixtures: a fake root tree, and stand-in programs that print captured output.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;

/// A temporary root holding `files` (absolute paths as on a host, relative to the root).
/// A path ending in `/` creates an empty directory.
pub(crate) async fn fixture_root(files: &[(&str, &str)]) -> TempDir {
    let root = tempfile::tempdir().expect("tempdir");
    for (path, content) in files {
        let target = root.path().join(path.trim_start_matches('/'));
        if path.ends_with('/') {
            tokio::fs::create_dir_all(&target).await.expect("create fixture dir");
            continue;
        }
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent).await.expect("create fixture dir");
        }
        tokio::fs::write(&target, content).await.expect("write fixture file");
    }
    root
}

/// An executable `/bin/sh` script named `name` in `dir` running `body`.
pub(crate) async fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    // The probe below runs the script; this line makes that a no-op.
    let text = format!("#!/bin/sh\n[ -n \"$TAILOPS_PROBE\" ] && exit 0\n{body}\n");
    tokio::fs::write(&path, text).await.expect("write script");
    tokio::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).await.expect("chmod script");
    // Another test thread may fork while the script is open for writing here; the child holds
    // the descriptor until it execs, and executing the script meanwhile fails with ETXTBSY.
    // Wait for that to pass so the code under test never sees it.
    for _ in 0..200 {
        match tokio::process::Command::new(&path).env("TAILOPS_PROBE", "1").output().await {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            _ => break,
        }
    }
    path
}

/// A stand-in for a CLI: prints `stdout` and exits 0 when invoked with exactly `args`,
/// otherwise complains on stderr and exits 1 (so a wrong argv makes the facts disappear).
pub(crate) async fn fake_program(dir: &Path, name: &str, args: &[&str], stdout: &str) -> PathBuf {
    let mut checks = vec![format!("[ \"$#\" = {} ]", args.len())];
    for (i, arg) in args.iter().enumerate() {
        checks.push(format!("[ \"${{{}}}\" = {} ]", i + 1, shell_quote(arg)));
    }
    let body = format!(
        "if ! {{ {}; }}; then echo \"unexpected arguments: $*\" >&2; exit 1; fi\nprintf '%s' {}",
        checks.join(" && "),
        shell_quote(stdout)
    );
    script(dir, name, &body).await
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
