//! Logs: the systemd journal through `journalctl`, and allowlisted log files opened through the
//! file policy ([`super::files`]: beneath an allowed root, no symlink followed). Both can follow: new lines stream through [`LiveOutput`] as the job's stdout
//! until shortly before the job's deadline (so the result still arrives and says how many
//! lines streamed), until nobody listens any more, or until the job is cancelled (the future is
//! dropped; `journalctl` runs with `kill_on_drop`, so it dies with it).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tailops_ops::Validated;
use tailops_proto::v1;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt, BufReader};
use tokio::time::Instant;

use super::files::{self, KeyRedactor, OpenError, Want};
use super::output::{Cell, Table};
use super::{FilePolicy, LiveOutput, OpError, OpsConfig, Reach, tool};

/// How often a followed file is looked at.
const POLL: Duration = Duration::from_millis(250);
/// A followed file is read in pieces of at most this much.
const READ_CHUNK: u64 = 1024 * 1024;
/// The non-following tail reads at most this much from the end of a file.
/// A line longer than this is cut (a binary file has no newlines).
const MAX_LINE: usize = 64 * 1024;

pub async fn run(
    op: &Validated,
    config: &OpsConfig,
    reach: Reach,
    timeout: Duration,
    live: &LiveOutput,
) -> Result<v1::OperationOutput, OpError> {
    match op.spec.name {
        "log.journal" => journal(op, config, timeout, live).await,
        "log.file" => {
            let path = op.text("path").unwrap_or_default();
            let lines = usize::try_from(op.int("lines").unwrap_or(100)).unwrap_or(100);
            if op.flag("follow") {
                follow_file(&config.files, reach, path, lines, follow_budget(timeout), live).await
            } else {
                let target = config.files.allow(path, reach)?;
                files::blocking(move |_| files::tail(&target, lines)).await
            }
        }
        other => Err(OpError::NotAvailable(format!("{other} is not implemented by this agent"))),
    }
}

/// How long to follow within a job of `timeout`: stop a little early so the result (how many
/// lines streamed) is delivered instead of a bare timeout.
pub(crate) fn follow_budget(timeout: Duration) -> Duration {
    let margin = (timeout / 10).clamp(Duration::from_millis(200), Duration::from_secs(2));
    timeout.saturating_sub(margin)
}

/// `journalctl`'s argv for `op`, with "ago" durations turned into absolute times from `now`
/// (seconds since the epoch).
pub fn journal_args(op: &Validated, now: u64) -> Vec<String> {
    let mut args = vec!["--no-pager".to_owned(), "--output=short-iso".to_owned()];
    if op.flag("follow") {
        args.push("--follow".into());
    }
    if let Some(unit) = op.text("unit") {
        args.push(format!("--unit={unit}"));
    }
    if let Some(since) = op.duration("since") {
        args.push(format!("--since=@{}", now.saturating_sub(since.as_secs())));
    }
    if let Some(until) = op.duration("until") {
        args.push(format!("--until=@{}", now.saturating_sub(until.as_secs())));
    }
    if let Some(priority) = op.text("priority") {
        args.push(format!("--priority={priority}"));
    }
    if let Some(grep) = op.text("grep") {
        args.push(format!("--grep={grep}"));
    }
    args.push(format!("--lines={}", op.int("lines").unwrap_or(200)));
    args
}

async fn journal(
    op: &Validated,
    config: &OpsConfig,
    timeout: Duration,
    live: &LiveOutput,
) -> Result<v1::OperationOutput, OpError> {
    let journalctl = tool::locate(&config.journalctl, "journalctl (the systemd journal)").await?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let args = journal_args(op, now);
    let argv: Vec<&str> = std::iter::once("journalctl").chain(args.iter().map(String::as_str)).collect();
    if op.flag("follow") {
        return follow_journal(&journalctl, &args, &argv, follow_budget(timeout), live).await;
    }
    let ran = tool::run(&journalctl, &args.iter().map(String::as_str).collect::<Vec<_>>(), timeout).await?;
    if ran.stderr.contains("No journal files were found") {
        return Err(OpError::NotAvailable(
            "no systemd journal on this host (journald is not running)".into(),
        ));
    }
    if !ran.success() {
        return Err(OpError::Failed(format!("journalctl: {}", ran.complaint())));
    }
    let mut table = Table::new(&["time", "host", "identifier", "pid", "message"]);
    for line in ran.stdout.lines().filter(|l| !l.trim().is_empty() && !l.starts_with("-- ")) {
        let entry = parse_short_iso(line);
        table.row([
            Cell::from(entry.time),
            Cell::from(entry.host),
            Cell::from(entry.identifier),
            Cell::from(entry.pid),
            Cell::from(entry.message),
        ]);
    }
    table.step(&argv);
    let n = table.len();
    let unit = op.text("unit").map(|u| format!(" of {u}")).unwrap_or_default();
    table.summary(format!("{n} journal entr{}{unit}", if n == 1 { "y" } else { "ies" }));
    Ok(table.finish())
}

/// One line of `journalctl --output=short-iso`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct JournalLine {
    pub time: Option<String>,
    pub host: Option<String>,
    pub identifier: Option<String>,
    pub pid: Option<i64>,
    pub message: String,
}

/// `2026-11-27T02:01:21+0000 web1 nginx[812]: message`; a line of another shape is kept whole
/// as the message.
pub fn parse_short_iso(line: &str) -> JournalLine {
    let parsed = (|| {
        let (time, rest) = line.split_once(' ')?;
        if !(time.len() >= 19 && time.as_bytes().get(4) == Some(&b'-') && time.contains('T')) {
            return None;
        }
        let (host, rest) = rest.split_once(' ')?;
        let (ident, message) = rest.split_once(": ").or_else(|| rest.strip_suffix(':').map(|i| (i, "")))?;
        let (identifier, pid) = match ident.strip_suffix(']').and_then(|i| i.rsplit_once('[')) {
            Some((name, pid)) => (name, pid.parse().ok()),
            None => (ident, None),
        };
        Some(JournalLine {
            time: Some(time.to_owned()),
            host: Some(host.to_owned()),
            identifier: Some(identifier.to_owned()),
            pid,
            message: message.to_owned(),
        })
    })();
    parsed.unwrap_or_else(|| JournalLine { message: line.to_owned(), ..JournalLine::default() })
}

/// Why following stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Deadline,
    NobodyListens,
    Exited,
}

impl Stop {
    fn says(self) -> &'static str {
        match self {
            Self::Deadline => "until the job's deadline",
            Self::NobodyListens => "until nobody listened any more",
            Self::Exited => "until journalctl exited",
        }
    }
}

async fn follow_journal(
    journalctl: &Path,
    args: &[String],
    argv: &[&str],
    budget: Duration,
    live: &LiveOutput,
) -> Result<v1::OperationOutput, OpError> {
    let deadline = Instant::now() + budget;
    let mut child = tokio::process::Command::new(journalctl)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("LC_ALL", "C")
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| OpError::Failed(format!("cannot run {}: {e}", journalctl.display())))?;
    let stdout = child.stdout.take().ok_or_else(|| OpError::Failed("journalctl: no stdout".into()))?;
    // Read stderr on the side so a chatty journalctl never blocks on it; it ends with the child.
    let stderr = child.stderr.take().map(|mut err| {
        tokio::spawn(async move {
            let mut kept = Vec::new();
            let _ = (&mut err).take(64 * 1024).read_to_end(&mut kept).await;
            let _ = tokio::io::copy(&mut err, &mut tokio::io::sink()).await;
            String::from_utf8_lossy(&kept).into_owned()
        })
    });
    let mut reader = BufReader::new(stdout);
    let mut streamed = 0u64;
    let mut buf = Vec::new();
    let stop = loop {
        buf.clear();
        match tokio::time::timeout_at(
            deadline,
            (&mut reader).take(MAX_LINE as u64).read_until(b'\n', &mut buf),
        )
        .await
        {
            Err(_) => break Stop::Deadline,
            Ok(Ok(0)) => break Stop::Exited,
            Ok(Ok(_)) => {
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end_matches(['\n', '\r']);
                if line.starts_with("-- ") {
                    continue;
                }
                streamed += 1;
                if !live.line(line).await {
                    break Stop::NobodyListens;
                }
            }
            Ok(Err(e)) => return Err(OpError::Failed(format!("reading journalctl's output: {e}"))),
        }
    };
    let _ = child.start_kill();
    let status = child.wait().await.ok();
    let complaint = match stderr {
        Some(task) => task.await.unwrap_or_default(),
        None => String::new(),
    };
    if stop == Stop::Exited {
        if complaint.contains("No journal files were found") {
            return Err(OpError::NotAvailable(
                "no systemd journal on this host (journald is not running)".into(),
            ));
        }
        if streamed == 0 && !status.is_some_and(|s| s.success()) {
            let ran =
                tool::Ran { status: status.and_then(|s| s.code()), stdout: String::new(), stderr: complaint };
            return Err(OpError::Failed(format!("journalctl: {}", ran.complaint())));
        }
    }
    let mut table = Table::new(&["streamed_lines", "stopped"]);
    table.row([Cell::from(streamed), Cell::from(stop.says())]);
    table.step(argv);
    table.summary(format!("followed the journal: {streamed} line(s) streamed {}", stop.says()));
    Ok(table.finish())
}

/// Streams the last `lines` lines of the file at `requested`, then every line appended to it,
/// looking every [`POLL`]. A file that shrinks (truncated) is read again from its start; one
/// replaced by another (rotated: a different file at the path) is finished and the new one read
/// from its start. Every look at the path and every re-open goes through the same checked open
/// as the first (beneath its root, no symlink followed, a regular file), and compares the
/// opened file's device and inode: it never opens a path other than the one it checked.
async fn follow_file(
    policy: &FilePolicy,
    reach: Reach,
    requested: &str,
    lines: usize,
    budget: Duration,
    live: &LiveOutput,
) -> Result<v1::OperationOutput, OpError> {
    let deadline = Instant::now() + budget;
    let target = policy.allow(requested, reach)?;
    let first = target.clone();
    let (file, mut current, initial) = files::blocking(move |_| {
        let (fd, meta) = first.open(Want::File)?;
        let mut file = std::fs::File::from(fd);
        let initial = files::checked_tail(&first, &mut file, meta.size, lines)?;
        Ok((file, meta, initial))
    })
    .await?;
    let mut file = tokio::fs::File::from_std(file);
    let mut offset = current.size;
    let mut streamed = 0u64;
    let mut reopened = 0u64;
    let mut listening = true;
    for line in &initial {
        streamed += 1;
        if !live.line(line).await {
            listening = false;
            break;
        }
    }
    let mut redactor = KeyRedactor::default();
    let mut partial: Vec<u8> = Vec::new();
    while listening && Instant::now() < deadline {
        tokio::time::sleep_until((Instant::now() + POLL).min(deadline)).await;
        let look = target.clone();
        // Gone for a moment (rotation in progress): look again next time.
        let Ok(now) = files::blocking(move |_| look.open(Want::Entry).map(|(_, meta)| meta)).await else {
            continue;
        };
        let mut end = now.size;
        if !now.same_file(&current) {
            // What was appended to the old file before it moved away still counts.
            let mut old = Drain { offset: &mut offset, partial: &mut partial, redactor: &mut redactor };
            listening = read_new(&mut file, u64::MAX, &mut old, &mut streamed, live).await?;
            if !listening {
                break;
            }
            let again = target.clone();
            match files::blocking(move |_| Ok(again.open_raw(Want::File))).await? {
                Ok((fd, meta)) => {
                    file = tokio::fs::File::from_std(std::fs::File::from(fd));
                    (current, offset, end) = (meta, 0, meta.size);
                }
                Err(OpenError::Missing) => continue,
                Err(e) => return Err(target.refuse(e, Want::File)),
            }
            partial.clear();
            redactor = KeyRedactor::default();
            reopened += 1;
        } else if now.size < offset {
            (offset, reopened) = (0, reopened + 1);
            partial.clear();
            redactor = KeyRedactor::default();
        }
        let mut new = Drain { offset: &mut offset, partial: &mut partial, redactor: &mut redactor };
        listening = read_new(&mut file, end, &mut new, &mut streamed, live).await?;
    }
    let stopped = if listening { "until the job's deadline" } else { "until nobody listened any more" };
    let path = target.path.display().to_string();
    let mut table = Table::new(&["path", "streamed_lines", "reopened", "stopped"]);
    table.row([Cell::from(path.clone()), Cell::from(streamed), Cell::from(reopened), Cell::from(stopped)]);
    table.summary(format!(
        "followed {path}: {streamed} line(s) streamed {stopped}{}",
        if reopened > 0 { format!(" (truncated or rotated {reopened} time(s))") } else { String::new() }
    ));
    Ok(table.finish())
}

/// Where reading a followed file stands: the next offset, an incomplete last line, and the
/// key redaction state (a key's body spans lines).
#[derive(Debug)]
struct Drain<'a> {
    offset: &'a mut u64,
    partial: &'a mut Vec<u8>,
    redactor: &'a mut KeyRedactor,
}

/// Reads `file` from the drain's offset up to `end` (or its end), streaming complete lines with
/// key material redacted; an incomplete last line waits in `partial` for the rest. `false` once
/// nobody listens.
async fn read_new(
    file: &mut tokio::fs::File,
    end: u64,
    at: &mut Drain<'_>,
    streamed: &mut u64,
    live: &LiveOutput,
) -> Result<bool, OpError> {
    file.seek(std::io::SeekFrom::Start(*at.offset)).await.map_err(|e| OpError::Failed(e.to_string()))?;
    while *at.offset < end {
        let mut buf = Vec::new();
        let n = (&mut *file)
            .take(READ_CHUNK.min(end - *at.offset))
            .read_to_end(&mut buf)
            .await
            .map_err(|e| OpError::Failed(e.to_string()))?;
        if n == 0 {
            break;
        }
        *at.offset += n as u64;
        at.partial.extend_from_slice(&buf);
        let mut start = 0;
        while let Some(pos) = at.partial[start..].iter().position(|b| *b == b'\n') {
            let line = String::from_utf8_lossy(&at.partial[start..start + pos]);
            *streamed += 1;
            if !live.line(&at.redactor.line(line.trim_end_matches('\r'))).await {
                return Ok(false);
            }
            start += pos + 1;
        }
        at.partial.drain(..start);
        if at.partial.len() > MAX_LINE {
            let line = String::from_utf8_lossy(at.partial.as_slice()).into_owned();
            at.partial.clear();
            *streamed += 1;
            if !live.line(&at.redactor.line(&line)).await {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn validated(name: &str, pairs: &[(&str, &str)]) -> Validated {
        let params: BTreeMap<String, String> =
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        tailops_ops::validate(name, &params, false).expect("valid")
    }

    #[test]
    fn journal_argv_is_exact_and_durations_become_absolute() {
        let op = validated(
            "log.journal",
            &[
                ("unit", "nginx.service"),
                ("since", "1h"),
                ("until", "10m"),
                ("priority", "err"),
                ("grep", "-x|y"),
            ],
        );
        assert_eq!(
            journal_args(&op, 1_000_000),
            vec![
                "--no-pager",
                "--output=short-iso",
                "--unit=nginx.service",
                "--since=@996400",
                "--until=@999400",
                "--priority=err",
                "--grep=-x|y",
                "--lines=200",
            ]
        );
        let op = validated("log.journal", &[("follow", "true"), ("lines", "5")]);
        assert_eq!(journal_args(&op, 0), vec!["--no-pager", "--output=short-iso", "--follow", "--lines=5"]);
    }

    #[test]
    fn short_iso_lines_parse() {
        let e = parse_short_iso("2026-11-27T01:58:03+0000 web1 nginx[812]: GET / 200");
        assert_eq!(e.time.as_deref(), Some("2026-11-27T01:58:03+0000"));
        assert_eq!(e.host.as_deref(), Some("web1"));
        assert_eq!(e.identifier.as_deref(), Some("nginx"));
        assert_eq!(e.pid, Some(812));
        assert_eq!(e.message, "GET / 200");
        let k = parse_short_iso("2026-11-27T01:58:03+0000 web1 kernel: eth0: link up");
        assert_eq!(
            (k.identifier.as_deref(), k.pid, k.message.as_str()),
            (Some("kernel"), None, "eth0: link up")
        );
        assert_eq!(parse_short_iso("odd line").message, "odd line");
    }

    #[test]
    fn following_stops_before_the_deadline() {
        assert_eq!(follow_budget(Duration::from_secs(3)), Duration::from_millis(2700));
        assert_eq!(follow_budget(Duration::from_secs(600)), Duration::from_secs(598));
        assert_eq!(follow_budget(Duration::from_millis(100)), Duration::ZERO);
    }

    #[tokio::test]
    async fn log_tails_return_the_last_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().canonicalize().expect("canonical");
        let text: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
        tokio::fs::write(root.join("app.log"), &text).await.expect("write");
        let policy = FilePolicy { observe_roots: vec![root.clone()], base_dirs: vec![], deny: vec![] };
        let target =
            policy.allow(&root.join("app.log").display().to_string(), Reach::Observe).expect("allowed");
        let out = files::blocking(move |_| files::tail(&target, 3)).await.expect("tail");
        let lines: Vec<String> = out
            .records
            .iter()
            .map(|r| match &r.fields["line"].value {
                Some(v1::scalar::Value::Text(t)) => t.clone(),
                _ => String::new(),
            })
            .collect();
        assert_eq!(lines, vec!["line 19997", "line 19998", "line 19999"]);
    }
}
