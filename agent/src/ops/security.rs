//! Security checks, all read-only.
//!
//! - `security.checks`: CIS-style basics read from the host's own files under
//!   [`OpsConfig::security_root`] (the agent's own reads, not file operations, so the deny list
//!   that keeps `/etc/ssh` from `file.read` does not apply), plus the firewall front end's view.
//! - `security.secrets`: a bounded scan of files under a path the [`FilePolicy`] allows, walked
//!   through directory descriptors like `file.search` (no symlink is followed, not even one
//!   swapped in mid-scan). Files on the deny list (`*.pem`, `.ssh/`...) are reported as present
//!   but never read. Findings name the file, line and kind; no character of a secret's value is
//!   shown (a token's fixed type prefix, such as `ghp_`, is not secret).
//! - `security.vulnscan`: Trivy or Grype, whichever is installed, summarised.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde_json::Value;
use tailops_ops::Validated;
use tailops_proto::v1;

use super::files::{self, Allowed, Kind, Node, Step, Want, glob_match};
use super::output::{Cell, Table};
use super::{FilePolicy, OpError, OpsConfig, Reach, tool};

pub async fn run(
    op: &Validated,
    config: &OpsConfig,
    reach: Reach,
    timeout: Duration,
) -> Result<v1::OperationOutput, OpError> {
    match op.spec.name {
        "security.checks" => checks(config, timeout).await,
        "security.secrets" => secrets(&config.files, reach, op.text("path").unwrap_or_default()).await,
        "security.vulnscan" => vulnscan(op, config, reach, timeout).await,
        other => Err(OpError::NotAvailable(format!("{other} is not implemented by this agent"))),
    }
}

// ---------------------------------------------------------------------------------------------
// security.checks

#[derive(Debug, Clone, PartialEq, Eq)]
struct Check {
    name: &'static str,
    status: &'static str,
    detail: String,
}

fn check(name: &'static str, status: &'static str, detail: impl Into<String>) -> Check {
    Check { name, status, detail: detail.into() }
}

/// `/x/y` under `root`.
fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

async fn checks(config: &OpsConfig, timeout: Duration) -> Result<v1::OperationOutput, OpError> {
    let root = &config.security_root;
    let mut found = ssh_checks(root).await;
    found.push(uid0_check(root).await);
    found.push(ip_forward_check(root).await);
    found.push(world_writable_check(root).await);
    found.push(firewall_check(config, timeout.min(Duration::from_secs(30))).await);
    found.push(listeners_check(root).await);
    let mut table = Table::new(&["check", "status", "detail"]);
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &found {
        *counts.entry(c.status).or_default() += 1;
        table.row([Cell::from(c.name), Cell::from(c.status), Cell::from(c.detail.clone())]);
    }
    let tally: Vec<String> = ["fail", "warn", "pass", "unknown"]
        .iter()
        .filter_map(|s| counts.get(s).map(|n| format!("{n} {s}")))
        .collect();
    table.summary(format!("{} check(s): {}", found.len(), tally.join(", ")));
    Ok(table.finish())
}

/// The effective sshd settings: the first value of each keyword wins (as in sshd), `Include`
/// is followed where it appears, and `Match` blocks (conditional) end the global section.
async fn sshd_settings(root: &Path) -> Option<BTreeMap<String, String>> {
    let main = under(root, "/etc/ssh/sshd_config");
    let text = tokio::fs::read_to_string(&main).await.ok()?;
    let mut settings = BTreeMap::new();
    let mut pending: Vec<String> = text.lines().rev().map(str::to_owned).collect();
    let mut includes = 0;
    while let Some(line) = pending.pop() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line.split_once(|c: char| c.is_whitespace() || c == '=').unwrap_or((line, ""));
        let key = key.to_ascii_lowercase();
        let value = value.trim_start_matches(|c: char| c.is_whitespace() || c == '=').trim();
        if key == "match" {
            break;
        }
        if key == "include" && includes < 64 {
            includes += 1;
            let mut lines = Vec::new();
            for pattern in value.split_whitespace() {
                let pattern =
                    if pattern.starts_with('/') { pattern.to_owned() } else { format!("/etc/ssh/{pattern}") };
                for file in expand(root, &pattern).await {
                    if let Ok(t) = tokio::fs::read_to_string(&file).await {
                        lines.extend(t.lines().map(str::to_owned));
                    }
                }
            }
            pending.extend(lines.into_iter().rev());
            continue;
        }
        settings.entry(key).or_insert_with(|| value.to_ascii_lowercase());
    }
    Some(settings)
}

/// Files matching `pattern` (a glob in the last component only), sorted as sshd's glob does.
async fn expand(root: &Path, pattern: &str) -> Vec<PathBuf> {
    let full = under(root, pattern);
    let (Some(dir), Some(name)) = (full.parent(), full.file_name()) else { return Vec::new() };
    let name = name.to_string_lossy();
    if !name.contains(['*', '?', '[']) {
        return vec![full.clone()];
    }
    let mut found = Vec::new();
    if let Ok(mut entries) = tokio::fs::read_dir(dir).await {
        while let Ok(Some(e)) = entries.next_entry().await {
            if glob_match(&name, &e.file_name().to_string_lossy()) {
                found.push(e.path());
            }
        }
    }
    found.sort();
    found
}

async fn ssh_checks(root: &Path) -> Vec<Check> {
    let Some(settings) = sshd_settings(root).await else {
        let why = "no /etc/ssh/sshd_config (OpenSSH server not installed?)";
        return vec![check("ssh_root_login", "unknown", why), check("ssh_password_auth", "unknown", why)];
    };
    let root_login = settings.get("permitrootlogin").map_or("prohibit-password (default)", String::as_str);
    let root_check = match root_login.split_whitespace().next().unwrap_or("") {
        "yes" => check(
            "ssh_root_login",
            "fail",
            format!("PermitRootLogin {root_login}: root may log in with a password"),
        ),
        "no" => check("ssh_root_login", "pass", "PermitRootLogin no"),
        _ => check("ssh_root_login", "pass", format!("PermitRootLogin {root_login}: root only with keys")),
    };
    let password = settings.get("passwordauthentication").map_or("yes (default)", String::as_str);
    let password_check = if password.starts_with("no") {
        check("ssh_password_auth", "pass", "PasswordAuthentication no")
    } else {
        check(
            "ssh_password_auth",
            "warn",
            format!("PasswordAuthentication {password}: passwords can be guessed"),
        )
    };
    vec![root_check, password_check]
}

async fn uid0_check(root: &Path) -> Check {
    let Ok(passwd) = tokio::fs::read_to_string(under(root, "/etc/passwd")).await else {
        return check("uid0_accounts", "unknown", "cannot read /etc/passwd");
    };
    let extra: Vec<&str> = passwd
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            (f.nth(1)? == "0" && name != "root").then_some(name)
        })
        .collect();
    if extra.is_empty() {
        check("uid0_accounts", "pass", "only root has uid 0")
    } else {
        check("uid0_accounts", "fail", format!("accounts besides root with uid 0: {}", extra.join(", ")))
    }
}

async fn ip_forward_check(root: &Path) -> Check {
    match tokio::fs::read_to_string(under(root, "/proc/sys/net/ipv4/ip_forward")).await {
        Ok(v) if v.trim() == "0" => check("ip_forwarding", "pass", "net.ipv4.ip_forward = 0"),
        Ok(v) if v.trim() == "1" => check(
            "ip_forwarding",
            "warn",
            "net.ipv4.ip_forward = 1: the host routes packets (expected on routers and container hosts)",
        ),
        Ok(v) => check("ip_forwarding", "unknown", format!("net.ipv4.ip_forward = {}", v.trim())),
        Err(e) => check("ip_forwarding", "unknown", format!("cannot read ip_forward: {e}")),
    }
}

/// Entries the world-writable check looks at, at most.
const MAX_WRITABLE_SCAN: usize = 20_000;

/// World-writable entries directly in the system directories (and one level below `/etc`);
/// symlinks are always 0777 and are skipped, sticky directories (like `/tmp`) are fine.
async fn world_writable_check(root: &Path) -> Check {
    let mut dirs: Vec<PathBuf> =
        ["/etc", "/usr/bin", "/usr/sbin", "/usr/local/bin"].iter().map(|d| under(root, d)).collect();
    let etc = dirs[0].clone();
    let mut seen = 0usize;
    let mut writable = Vec::new();
    let mut i = 0;
    while i < dirs.len() && seen < MAX_WRITABLE_SCAN {
        let dir = dirs[i].clone();
        i += 1;
        let Ok(mut entries) = tokio::fs::read_dir(&dir).await else { continue };
        while let Ok(Some(e)) = entries.next_entry().await {
            seen += 1;
            if seen >= MAX_WRITABLE_SCAN {
                break;
            }
            let Ok(meta) = tokio::fs::symlink_metadata(e.path()).await else { continue };
            if meta.file_type().is_symlink() {
                continue;
            }
            let mode = meta.mode();
            if mode & 0o002 != 0 && !(meta.is_dir() && mode & 0o1000 != 0) {
                writable.push(
                    Path::new("/")
                        .join(e.path().strip_prefix(root).unwrap_or(&e.path()))
                        .display()
                        .to_string(),
                );
            }
            if meta.is_dir() && dir == etc {
                dirs.push(e.path());
            }
        }
    }
    let bounded = if seen >= MAX_WRITABLE_SCAN {
        format!(" (stopped after {MAX_WRITABLE_SCAN} entries)")
    } else {
        String::new()
    };
    if writable.is_empty() {
        check("world_writable", "pass", format!("none in /etc, /usr/bin, /usr/sbin, /usr/local/bin{bounded}"))
    } else {
        writable.sort();
        let shown: Vec<&str> = writable.iter().take(10).map(String::as_str).collect();
        let more =
            if writable.len() > 10 { format!(" and {} more", writable.len() - 10) } else { String::new() };
        check("world_writable", "fail", format!("{}{more}{bounded}", shown.join(", ")))
    }
}

async fn firewall_check(config: &OpsConfig, timeout: Duration) -> Check {
    const NAME: &str = "firewall";
    if let Ok(ufw) = tool::locate(&config.ufw, "ufw").await
        && let Ok(ran) = tool::run(&ufw, &["status"], timeout).await
        && ran.success()
    {
        return if ran.stdout.contains("Status: active") {
            check(NAME, "pass", "ufw is active")
        } else {
            check(NAME, "fail", "ufw is installed but inactive")
        };
    }
    let mut empty_nft = false;
    if let Ok(nft) = tool::locate(&config.nft, "nft").await
        && let Ok(ran) = tool::run(&nft, &["list", "ruleset"], timeout).await
        && ran.success()
    {
        if let Some(pass) = judge_nft(&ran.stdout) {
            return pass;
        }
        empty_nft = true;
    }
    if let Ok(iptables) = tool::locate(&config.iptables, "iptables").await
        && let Ok(ran) = tool::run(&iptables, &["-S"], timeout).await
        && ran.success()
    {
        return judge_iptables(&ran.stdout);
    }
    if empty_nft {
        return check(NAME, "warn", "nftables ruleset is empty");
    }
    check(NAME, "unknown", "no ufw, nft or iptables answered")
}

/// `nft list ruleset`: a pass when it holds rules or a dropping policy; `None` when empty.
fn judge_nft(ruleset: &str) -> Option<Check> {
    let chains = ruleset.lines().filter(|l| l.trim_start().starts_with("chain ")).count();
    let rules = ruleset
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with("table ")
                && !l.starts_with("chain ")
                && !l.starts_with("type ")
                && !l.starts_with("policy ")
                && *l != "}"
        })
        .count();
    (rules > 0 || ruleset.contains("policy drop"))
        .then(|| check("firewall", "pass", format!("nftables: {chains} chain(s), {rules} rule(s)")))
}

/// `iptables -S`: a pass when INPUT does not accept everything or has rules of its own.
fn judge_iptables(rules: &str) -> Check {
    let input_policy =
        rules.lines().find_map(|l| l.strip_prefix("-P INPUT ")).unwrap_or("ACCEPT").trim().to_owned();
    let input_rules = rules.lines().filter(|l| l.starts_with("-A INPUT")).count();
    if input_policy != "ACCEPT" || input_rules > 0 {
        check(
            "firewall",
            "pass",
            format!("iptables: INPUT policy {input_policy}, {input_rules} INPUT rule(s)"),
        )
    } else {
        check("firewall", "warn", "iptables: INPUT accepts everything and has no rules")
    }
}

/// Listening TCP sockets not bound to loopback, from `/proc/net/tcp{,6}`.
async fn listeners_check(root: &Path) -> Check {
    let mut exposed = Vec::new();
    let mut read_any = false;
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(text) = tokio::fs::read_to_string(under(root, file)).await else { continue };
        read_any = true;
        for (ip, port) in parse_listening(&text, v6) {
            let loopback = match ip {
                IpAddr::V4(a) => a.is_loopback(),
                IpAddr::V6(a) => a.is_loopback() || a.to_ipv4_mapped().is_some_and(|m| m.is_loopback()),
            };
            if !loopback {
                let shown = match ip {
                    IpAddr::V4(a) => format!("{a}:{port}"),
                    IpAddr::V6(a) => format!("[{a}]:{port}"),
                };
                if !exposed.contains(&shown) {
                    exposed.push(shown);
                }
            }
        }
    }
    if !read_any {
        return check("exposed_listeners", "unknown", "cannot read /proc/net/tcp");
    }
    if exposed.is_empty() {
        check("exposed_listeners", "pass", "no TCP listener outside loopback")
    } else {
        check(
            "exposed_listeners",
            "warn",
            format!("listening beyond loopback (review): {}", exposed.join(", ")),
        )
    }
}

/// `(address, port)` of sockets in state LISTEN (`0A`). Addresses are the kernel's in-memory
/// words printed as hex, so each 32-bit word is converted back with the host's byte order.
fn parse_listening(text: &str, v6: bool) -> Vec<(IpAddr, u16)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let local = f.nth(1)?;
            let state = f.nth(1)?;
            if state != "0A" {
                return None;
            }
            let (addr, port) = local.split_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            let word =
                |i: usize| u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok().map(u32::to_ne_bytes);
            let ip = if v6 {
                if addr.len() != 32 {
                    return None;
                }
                let mut bytes = [0u8; 16];
                for i in 0..4 {
                    bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
                }
                IpAddr::V6(Ipv6Addr::from(bytes))
            } else {
                if addr.len() != 8 {
                    return None;
                }
                IpAddr::V4(Ipv4Addr::from(word(0)?))
            };
            Some((ip, port))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// security.secrets

const MAX_SCAN_FILE: u64 = 1024 * 1024;
const MAX_SCAN_FILES: usize = 5_000;
const MAX_SCAN_DEPTH: usize = 32;
const MAX_FINDINGS: usize = 10_000;

#[derive(Debug, Default)]
struct ScanStats {
    files: usize,
    binary: usize,
    large: usize,
    symlinks: usize,
    denied: usize,
    unreadable: usize,
    truncated: bool,
}

async fn secrets(policy: &FilePolicy, reach: Reach, requested: &str) -> Result<v1::OperationOutput, OpError> {
    let start = policy.allow(requested, reach)?;
    let policy = policy.clone();
    files::blocking(move |stop| scan(&policy, &start, stop)).await
}

type Row = (String, Option<u64>, &'static str, String);

/// Scans the file or tree at `start` (blocking).
fn scan(policy: &FilePolicy, start: &Allowed, stop: &AtomicBool) -> Result<v1::OperationOutput, OpError> {
    let mut stats = ScanStats::default();
    let mut rows: Vec<Row> = Vec::new();
    let (_, meta) = start.open(Want::Entry)?;
    if meta.kind == Kind::Dir {
        let (dir, _) = start.open(Want::Dir)?;
        let walked = files::walk(dir, &start.path, MAX_SCAN_DEPTH, stop, |node| {
            visit(policy, node, &mut stats, &mut rows)
        })?;
        stats.unreadable += walked.unreadable;
        stats.truncated |= walked.capped;
    } else {
        // A single file: refused as a symlink or a non-regular file like any other read.
        let (fd, meta) = start.open(Want::File)?;
        stats.files += 1;
        scan_file(fd, meta.size, &start.path, &mut stats, &mut rows);
    }
    let mut table = Table::new(&["file", "line", "kind", "excerpt"]);
    let findings = rows.iter().filter(|r| r.1.is_some()).count();
    for (file, line, kind, excerpt) in rows {
        table.row([Cell::from(file), Cell::from(line), Cell::from(kind), Cell::from(excerpt)]);
    }
    let stop = if stats.truncated { format!(", stopped at {MAX_SCAN_FILES} files") } else { String::new() };
    table.summary(format!(
        "{findings} finding(s) in {} file(s) under {}; {} denied by policy (listed, not read), skipped: {} binary, {} over 1 MiB, {} symlink(s) not followed, {} unreadable{stop}",
        stats.files,
        start.path.display(),
        stats.denied,
        stats.binary,
        stats.large,
        stats.symlinks,
        stats.unreadable,
    ));
    Ok(table.finish())
}

fn visit(policy: &FilePolicy, node: &Node<'_>, stats: &mut ScanStats, rows: &mut Vec<Row>) -> Step {
    let shown = || node.path.display().to_string();
    if node.meta.kind == Kind::Symlink {
        // Never followed: where it leads may be outside the allowed directories.
        stats.symlinks += 1;
        return Step::Skip;
    }
    if policy.is_denied(node.path) {
        stats.denied += 1;
        let kind = if node.meta.kind == Kind::Dir {
            "denied directory (not read)"
        } else {
            "denied file (not read)"
        };
        rows.push((shown(), None, kind, String::new()));
        return Step::Skip;
    }
    match node.meta.kind {
        Kind::Dir => Step::Descend,
        Kind::File => {
            if stats.files == MAX_SCAN_FILES {
                stats.truncated = true;
                return Step::Stop;
            }
            stats.files += 1;
            if node.meta.size > MAX_SCAN_FILE {
                stats.large += 1;
                return Step::Skip;
            }
            match files::open::open_entry(node.dir, node.name, Want::File) {
                Ok((fd, meta)) => scan_file(fd, meta.size, node.path, stats, rows),
                Err(_) => stats.unreadable += 1,
            }
            Step::Skip
        }
        Kind::Symlink | Kind::Other => Step::Skip,
    }
}

/// Looks for secrets in the open regular file `fd` (at `path`), reading at most
/// [`MAX_SCAN_FILE`] bytes.
fn scan_file(fd: std::os::fd::OwnedFd, size: u64, path: &Path, stats: &mut ScanStats, rows: &mut Vec<Row>) {
    if size > MAX_SCAN_FILE {
        stats.large += 1;
        return;
    }
    let mut bytes = Vec::new();
    if std::fs::File::from(fd).take(MAX_SCAN_FILE).read_to_end(&mut bytes).is_err() {
        stats.unreadable += 1;
        return;
    }
    if bytes[..bytes.len().min(8192)].contains(&0) {
        stats.binary += 1;
        return;
    }
    let text = String::from_utf8_lossy(&bytes);
    for (n, line) in text.lines().enumerate() {
        for (kind, excerpt) in find_secrets(line) {
            if rows.len() < MAX_FINDINGS {
                rows.push((path.display().to_string(), Some(n as u64 + 1), kind, excerpt));
            }
        }
    }
}

/// A secret shown without any of its value: its fixed type prefix (if it has one), then `…`.
fn redact(prefix: &str) -> String {
    format!("{prefix}…")
}

/// The run of bytes at the start of `s` that satisfy `ok`.
fn run_of(s: &str, ok: impl Fn(u8) -> bool) -> &str {
    let end = s.bytes().position(|b| !ok(b)).unwrap_or(s.len());
    &s[..end]
}

/// Secrets on one line: `(kind, redacted excerpt)`.
fn find_secrets(line: &str) -> Vec<(&'static str, String)> {
    let mut found = Vec::new();
    let upper_or_digit = |b: u8| b.is_ascii_uppercase() || b.is_ascii_digit();
    for (i, _) in line.match_indices("AKIA") {
        let before_ok = i == 0 || !line.as_bytes()[i - 1].is_ascii_alphanumeric();
        if before_ok && run_of(&line[i + 4..], upper_or_digit).len() >= 16 {
            found.push(("aws access key", redact("AKIA")));
        }
    }
    if line.contains("-----BEGIN ") && line.contains("PRIVATE KEY-----") {
        // The header names the key type and holds nothing secret; the key lines are not shown.
        let start = line.find("-----BEGIN ").unwrap_or(0);
        let header = &line[start..];
        let end = header.find("KEY-----").map_or(header.len(), |e| e + "KEY-----".len());
        found.push(("private key", header[..end].to_owned()));
    }
    for prefix in ["ghp_", "gho_", "ghu_", "ghs_", "ghr_"] {
        for (i, _) in line.match_indices(prefix) {
            if run_of(&line[i + 4..], |b| b.is_ascii_alphanumeric()).len() >= 36 {
                found.push(("github token", redact(prefix)));
            }
        }
    }
    for (i, _) in line.match_indices("github_pat_") {
        if run_of(&line[i + 11..], |b| b.is_ascii_alphanumeric() || b == b'_').len() >= 22 {
            found.push(("github token", redact("github_pat_")));
        }
    }
    for prefix in ["xoxb-", "xoxa-", "xoxp-", "xoxr-", "xoxs-"] {
        for (i, _) in line.match_indices(prefix) {
            if run_of(&line[i + 5..], |b| b.is_ascii_alphanumeric() || b == b'-').len() >= 10 {
                found.push(("slack token", redact(prefix)));
            }
        }
    }
    if let Some(excerpt) = assignment(line) {
        found.push(("password assignment", excerpt));
    }
    found
}

/// `password=...`, `DB_PASSWORD: ...`, `client_secret = "..."`: a key naming a password or
/// secret, assigned a literal value (not a `$VAR`, `{{ template }}` or placeholder).
fn assignment(line: &str) -> Option<String> {
    for (i, sep) in line.char_indices().filter(|(_, c)| *c == '=' || *c == ':') {
        let key_part = line[..i].trim_end_matches(|c: char| c.is_whitespace() || c == '"' || c == '\'');
        let key_start = key_part
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.'))
            .map_or(0, |p| p + 1);
        let key = &key_part[key_start..];
        let lower = key.to_ascii_lowercase();
        if key.is_empty() || !["password", "passwd", "secret"].iter().any(|k| lower.contains(k)) {
            continue;
        }
        let rest = line[i + sep.len_utf8()..].trim_start();
        let rest = rest.strip_prefix(['"', '\'']).unwrap_or(rest);
        let value = rest.split(|c: char| c.is_whitespace() || "\"',;".contains(c)).next().unwrap_or("");
        let placeholder = ["null", "none", "true", "false", "changeme", "example", "xxxx", "****"]
            .iter()
            .any(|p| value.eq_ignore_ascii_case(p));
        if value.len() >= 4 && !value.starts_with(['$', '{', '<', '%', '*']) && !placeholder {
            return Some(format!("{key}{sep}{}", redact("")));
        }
        return None;
    }
    None
}

// ---------------------------------------------------------------------------------------------
// security.vulnscan

const SEVERITIES: &[&str] = &["CRITICAL", "HIGH", "MEDIUM", "LOW", "NEGLIGIBLE", "UNKNOWN"];

#[derive(Debug, Clone, PartialEq, Eq)]
struct Finding {
    id: String,
    severity: String,
    package: String,
    installed: String,
    fixed: String,
    target: String,
}

fn rank(severity: &str) -> usize {
    SEVERITIES.iter().position(|s| *s == severity).unwrap_or(SEVERITIES.len())
}

async fn vulnscan(
    op: &Validated,
    config: &OpsConfig,
    reach: Reach,
    timeout: Duration,
) -> Result<v1::OperationOutput, OpError> {
    let target = match (op.text("path"), op.text("image")) {
        (Some(path), None) => Target::Path(config.files.check(path, reach).await?),
        (None, Some(image)) => Target::Image(image.to_owned()),
        _ => {
            return Err(OpError::Failed(
                "security.vulnscan needs exactly one of path=... or image=...".into(),
            ));
        }
    };
    let limit = usize::try_from(op.int("limit").unwrap_or(20)).unwrap_or(20);
    let (scanner, program) = if let Ok(p) = tool::locate(&config.trivy, "trivy").await {
        ("trivy", p)
    } else if let Ok(p) = tool::locate(&config.grype, "grype").await {
        ("grype", p)
    } else {
        return Err(OpError::NotAvailable(format!(
            "no vulnerability scanner: neither trivy ({}) nor grype ({}) is installed",
            config.trivy.display(),
            config.grype.display()
        )));
    };
    let args: Vec<String> = match (scanner, &target) {
        ("trivy", Target::Path(p)) => vec![
            "fs".into(),
            "--quiet".into(),
            "--format".into(),
            "json".into(),
            "--".into(),
            p.display().to_string(),
        ],
        ("trivy", Target::Image(i)) => {
            vec!["image".into(), "--quiet".into(), "--format".into(), "json".into(), "--".into(), i.clone()]
        }
        (_, Target::Path(p)) => vec!["-o".into(), "json".into(), "--".into(), format!("dir:{}", p.display())],
        (_, Target::Image(i)) => vec!["-o".into(), "json".into(), "--".into(), i.clone()],
    };
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let ran = tool::run(&program, &argv, timeout).await?;
    if !ran.success() {
        return Err(OpError::Failed(format!("{scanner}: {}", ran.complaint())));
    }
    let json: Value = serde_json::from_str(&ran.stdout)
        .map_err(|e| OpError::Failed(format!("{scanner} printed something other than JSON: {e}")))?;
    let mut findings = if scanner == "trivy" { parse_trivy(&json) } else { parse_grype(&json) };
    findings.sort_by(|a, b| rank(&a.severity).cmp(&rank(&b.severity)).then_with(|| a.id.cmp(&b.id)));
    let mut counts: BTreeMap<usize, (String, usize)> = BTreeMap::new();
    for f in &findings {
        counts.entry(rank(&f.severity)).or_insert_with(|| (f.severity.clone(), 0)).1 += 1;
    }
    let mut table = Table::new(&["id", "severity", "package", "installed", "fixed", "target"]);
    for f in findings.iter().take(limit) {
        table.row([
            Cell::from(f.id.clone()),
            Cell::from(f.severity.clone()),
            Cell::from(f.package.clone()),
            Cell::from(f.installed.clone()),
            Cell::from(f.fixed.clone()),
            Cell::from(f.target.clone()),
        ]);
    }
    table.step(&std::iter::once(scanner.to_owned()).chain(args.iter().cloned()).collect::<Vec<_>>());
    let tally: Vec<String> = counts.values().map(|(s, n)| format!("{n} {s}")).collect();
    let what = match &target {
        Target::Path(p) => p.display().to_string(),
        Target::Image(i) => i.clone(),
    };
    table.summary(if findings.is_empty() {
        format!("{scanner}: no known vulnerabilities in {what}")
    } else {
        format!(
            "{scanner}: {} vulnerabilit(ies) in {what}: {}; {} worst listed",
            findings.len(),
            tally.join(", "),
            findings.len().min(limit)
        )
    });
    Ok(table.finish())
}

#[derive(Debug)]
enum Target {
    Path(PathBuf),
    Image(String),
}

fn s(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or_default().to_owned()
}

/// `trivy ... --format json`: `Results[].Vulnerabilities[]`.
fn parse_trivy(json: &Value) -> Vec<Finding> {
    let mut found = Vec::new();
    for result in json.get("Results").and_then(Value::as_array).into_iter().flatten() {
        let target = s(result, "Target");
        for v in result.get("Vulnerabilities").and_then(Value::as_array).into_iter().flatten() {
            found.push(Finding {
                id: s(v, "VulnerabilityID"),
                severity: s(v, "Severity").to_ascii_uppercase(),
                package: s(v, "PkgName"),
                installed: s(v, "InstalledVersion"),
                fixed: s(v, "FixedVersion"),
                target: target.clone(),
            });
        }
    }
    found
}

/// `grype ... -o json`: `matches[]` with `vulnerability` and `artifact`.
fn parse_grype(json: &Value) -> Vec<Finding> {
    json.get("matches")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|m| {
            let vuln = m.get("vulnerability").cloned().unwrap_or_default();
            let artifact = m.get("artifact").cloned().unwrap_or_default();
            let fixed = vuln
                .pointer("/fix/versions")
                .and_then(Value::as_array)
                .map(|v| v.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
                .unwrap_or_default();
            let target = artifact
                .get("locations")
                .and_then(Value::as_array)
                .and_then(|l| l.first())
                .map(|l| s(l, "path"))
                .unwrap_or_default();
            Finding {
                id: s(&vuln, "id"),
                severity: s(&vuln, "severity").to_ascii_uppercase(),
                package: s(&artifact, "name"),
                installed: s(&artifact, "version"),
                fixed,
                target,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimmed from `/proc/net/tcp` and `/proc/net/tcp6` on x86_64 (sshd on all addresses, a
    /// resolver on 127.0.0.53, an established connection, a v6 loopback listener).
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 20412 1 0000000000000000 100 0 0 10 0
   1: 3500007F:0035 00000000:0000 0A 00000000:00000000 00:00000000 00000000   101        0 18733 1 0000000000000000 100 0 0 10 5
   2: 0F02000A:0016 0202000A:C35A 01 00000000:00000000 02:0008F5C1 00000000     0        0 31337 4 0000000000000000 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 20414 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 40001 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn proc_net_tcp_listeners_are_parsed() {
        let v4 = parse_listening(TCP, false);
        assert_eq!(
            v4,
            vec![(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 22), (IpAddr::V4(Ipv4Addr::new(127, 0, 0, 53)), 53)]
        );
        let v6 = parse_listening(TCP6, true);
        assert_eq!(
            v6,
            vec![(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 22), (IpAddr::V6(Ipv6Addr::LOCALHOST), 8080)]
        );
    }

    #[test]
    fn secrets_are_found_and_redacted() {
        let aws = "AKIAIOSFODNN7EXAMPLE";
        let gh = format!("ghp_{}", "a1B2c3D4e5".repeat(4));
        let pat = format!("github_pat_11ABCDEFG0{}", "x_Y9".repeat(10));
        let slack = "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx";
        let cases: Vec<(String, &str, String)> = vec![
            (format!("aws_access_key_id = {aws}"), "aws access key", "AKIA…".into()),
            (format!("token: {gh}"), "github token", "ghp_…".into()),
            (format!("GH={pat}"), "github token", "github_pat_…".into()),
            (format!("SLACK={slack}"), "slack token", "xoxb-…".into()),
            (
                "-----BEGIN OPENSSH PRIVATE KEY-----".into(),
                "private key",
                "-----BEGIN OPENSSH PRIVATE KEY-----".into(),
            ),
            ("DB_PASSWORD=hunter2hunter2".into(), "password assignment", "DB_PASSWORD=…".into()),
            ("  client_secret: \"s3cr3tvalue\"".into(), "password assignment", "client_secret:…".into()),
        ];
        for (line, kind, excerpt) in &cases {
            let found = find_secrets(line);
            assert!(found.contains(&(*kind, excerpt.clone())), "{line}: {found:?}");
        }
        for clean in [
            "password=$DB_PASSWORD",
            "secret: {{ vault_secret }}",
            "password=",
            "AKIA too short",
            "ghp_short",
            "nothing here",
            "PasswordAuthentication no",
        ] {
            assert!(find_secrets(clean).is_empty(), "{clean}: {:?}", find_secrets(clean));
        }
    }

    #[test]
    fn firewall_rulesets_are_judged() {
        // `nft list ruleset` of a host with a drop-by-default input chain, and of a bare one.
        let nft = "table inet filter {\n\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n\t\tct state established,related accept\n\t\ttcp dport 22 accept\n\t}\n}\n";
        let pass = judge_nft(nft).expect("rules");
        assert_eq!(pass.detail, "nftables: 1 chain(s), 2 rule(s)");
        assert_eq!(judge_nft(""), None);
        assert_eq!(judge_nft("table ip nat {\n}\n"), None);
        // `iptables -S` as Docker leaves it (INPUT open) and as a hardened host has it.
        let open = "-P INPUT ACCEPT\n-P FORWARD DROP\n-P OUTPUT ACCEPT\n-N DOCKER\n-A FORWARD -j DOCKER\n";
        assert_eq!(judge_iptables(open).status, "warn");
        let closed = "-P INPUT DROP\n-P FORWARD DROP\n-P OUTPUT ACCEPT\n-A INPUT -i lo -j ACCEPT\n";
        let c = judge_iptables(closed);
        assert_eq!((c.status, c.detail.as_str()), ("pass", "iptables: INPUT policy DROP, 1 INPUT rule(s)"));
    }

    /// Trimmed from `trivy fs --quiet --format json` (Trivy 0.56) of a Python project.
    const TRIVY: &str = r#"{"SchemaVersion":2,"ArtifactName":"/srv/app","ArtifactType":"filesystem",
      "Results":[{"Target":"requirements.txt","Class":"lang-pkgs","Type":"pip","Vulnerabilities":[
        {"VulnerabilityID":"CVE-2023-32681","PkgName":"requests","InstalledVersion":"2.25.0","FixedVersion":"2.31.0","Severity":"MEDIUM","Title":"Unintended leak of Proxy-Authorization header"},
        {"VulnerabilityID":"CVE-2024-34064","PkgName":"jinja2","InstalledVersion":"2.11.2","FixedVersion":"3.1.4","Severity":"MEDIUM"},
        {"VulnerabilityID":"CVE-2019-10906","PkgName":"jinja2","InstalledVersion":"2.11.2","FixedVersion":"2.10.1","Severity":"HIGH"}]},
        {"Target":"package-lock.json","Class":"lang-pkgs","Type":"npm"}]}"#;

    /// Trimmed from `grype dir:/srv/app -o json` (Grype 0.82).
    const GRYPE: &str = r#"{"matches":[
      {"vulnerability":{"id":"GHSA-j8r2-6x86-q33q","dataSource":"https://github.com/advisories/GHSA-j8r2-6x86-q33q","severity":"Medium","fix":{"versions":["2.31.0"],"state":"fixed"}},
       "artifact":{"name":"requests","version":"2.25.0","type":"python","locations":[{"path":"/requirements.txt"}]}},
      {"vulnerability":{"id":"CVE-2022-40897","severity":"Critical","fix":{"versions":[],"state":"not-fixed"}},
       "artifact":{"name":"setuptools","version":"40.5.0","type":"python","locations":[{"path":"/requirements.txt"}]}}],
      "source":{"type":"directory","target":"/srv/app"}}"#;

    #[test]
    fn scanner_reports_are_parsed() {
        let t = parse_trivy(&serde_json::from_str(TRIVY).expect("json"));
        assert_eq!(t.len(), 3);
        assert_eq!(t[2].severity, "HIGH");
        assert_eq!((t[0].package.as_str(), t[0].fixed.as_str()), ("requests", "2.31.0"));
        assert_eq!(t[0].target, "requirements.txt");
        let g = parse_grype(&serde_json::from_str(GRYPE).expect("json"));
        assert_eq!(g.len(), 2);
        assert_eq!(g[1].severity, "CRITICAL");
        assert_eq!(g[0].fixed, "2.31.0");
        assert_eq!(g[0].target, "/requirements.txt");
        assert!(rank("CRITICAL") < rank("HIGH") && rank("LOW") < rank("bogus"));
    }

    #[tokio::test]
    async fn sshd_first_value_wins_includes_are_followed_and_match_ends_the_globals() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ssh = dir.path().join("etc/ssh");
        tokio::fs::create_dir_all(ssh.join("sshd_config.d")).await.expect("mkdir");
        tokio::fs::write(
            ssh.join("sshd_config"),
            "# comment\nInclude /etc/ssh/sshd_config.d/*.conf\nPermitRootLogin no\nPasswordAuthentication yes\nMatch User x\n  PermitRootLogin yes\n",
        )
        .await
        .expect("write");
        tokio::fs::write(ssh.join("sshd_config.d/50-cloud.conf"), "PasswordAuthentication no\n")
            .await
            .expect("write");
        tokio::fs::write(ssh.join("sshd_config.d/10-a.conf"), "passwordauthentication=no\n")
            .await
            .expect("write");
        tokio::fs::write(ssh.join("sshd_config.d/ignored.txt"), "PermitRootLogin yes\n")
            .await
            .expect("write");
        let s = sshd_settings(dir.path()).await.expect("settings");
        assert_eq!(s["permitrootlogin"], "no");
        assert_eq!(s["passwordauthentication"], "no");
        let checks = ssh_checks(dir.path()).await;
        assert_eq!(checks[0].status, "pass");
        assert_eq!(checks[1].status, "pass");
    }
}
