//! Read-only file access. A path is canonicalised (symlinks resolved) and then compared by
//! components with the allowed base directories (`/var/logX` is not under `/var/log`) and with
//! the always-deny list; a symlink that leads outside is refused like the path it leads to.
//! Everything is read with `tokio::fs`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use tailops_ops::Validated;
use tailops_proto::v1;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::output::{Cell, Table};
use super::{OpError, Reach};

/// Where file operations may look.
#[derive(Debug, Clone)]
pub struct FilePolicy {
    /// Canonical directories under which jobs of observe reach may read (narrow: logs).
    pub observe_roots: Vec<PathBuf>,
    /// Canonical directories under which jobs of control reach may read.
    pub base_dirs: Vec<PathBuf>,
    /// Extra denied paths (directories deny everything under them), on top of the built-in list.
    pub deny: Vec<PathBuf>,
}

impl Default for FilePolicy {
    fn default() -> Self {
        Self {
            observe_roots: vec![PathBuf::from("/var/log")],
            base_dirs: ["/var/log", "/etc", "/srv", "/opt", "/home"].map(PathBuf::from).into(),
            deny: Vec::new(),
        }
    }
}

/// Never readable, whatever the base directories say.
const DENIED_PATHS: &[&str] = &[
    "/etc/shadow",
    "/etc/gshadow",
    "/root",
    "/etc/ssh",
    "/etc/tailops",
    // WireGuard configurations hold private keys; TLS private keys live here too.
    "/etc/wireguard",
    "/etc/ssl/private",
    "/var/lib/tailops-agent",
];
/// File names (or name prefixes, ending in `*`) denied anywhere.
const DENIED_NAMES: &[&str] = &[
    "shadow",
    "gshadow",
    "sudoers*",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    "authorized_keys",
    ".netrc",
    ".pgpass",
    ".git-credentials",
];
/// Extensions of key material.
const DENIED_EXTENSIONS: &[&str] = &["pem", "key", "p12", "pfx", "kdbx"];
/// Directories holding credentials, denied wherever they are.
const DENIED_DIRS: &[&str] = &[".ssh", ".aws", ".gnupg", ".kube", ".docker", ".azure", "gcloud", "sudoers.d"];

const MAX_LIST: usize = 10_000;
const TAIL_CHUNK: u64 = 64 * 1024;
/// `file.tail` reads at most this much from the end of a file.
const MAX_TAIL_BYTES: u64 = 8 * 1024 * 1024;

impl FilePolicy {
    /// The roots a job of `reach` may read under.
    pub fn roots(&self, reach: Reach) -> &[PathBuf] {
        match reach {
            Reach::Observe => &self.observe_roots,
            Reach::Control => &self.base_dirs,
        }
    }

    /// The canonical path of `requested` if a job of `reach` may read it; otherwise why not.
    pub async fn check(&self, requested: &str, reach: Reach) -> Result<PathBuf, OpError> {
        let canonical = tokio::fs::canonicalize(requested)
            .await
            .map_err(|e| OpError::Failed(format!("{requested}: {e}")))?;
        self.check_canonical(&canonical, requested, reach)?;
        Ok(canonical)
    }

    fn check_canonical(&self, canonical: &Path, requested: &str, reach: Reach) -> Result<(), OpError> {
        let shown = if canonical == Path::new(requested) {
            requested.to_owned()
        } else {
            format!("{requested} (resolves to {})", canonical.display())
        };
        if let Some(reason) = denied(canonical, &self.deny) {
            return Err(OpError::Refused(format!("{shown} is on the deny list ({reason})")));
        }
        if !self.roots(reach).iter().any(|base| canonical.starts_with(base)) {
            let bases =
                self.roots(reach).iter().map(|b| b.display().to_string()).collect::<Vec<_>>().join(", ");
            return Err(OpError::Refused(format!("{shown} is outside the allowed directories ({bases})")));
        }
        Ok(())
    }
}

/// Why `path` is denied, if it is. `Path::starts_with` compares whole components.
fn denied(path: &Path, extra: &[PathBuf]) -> Option<String> {
    if let Some(p) = DENIED_PATHS
        .iter()
        .map(Path::new)
        .chain(extra.iter().map(PathBuf::as_path))
        .find(|d| path.starts_with(d))
    {
        return Some(format!("under {}", p.display()));
    }
    for component in path.components() {
        if let Component::Normal(name) = component {
            let name = name.to_string_lossy();
            if DENIED_DIRS.contains(&name.as_ref()) {
                return Some(format!("inside a {name} directory"));
            }
        }
    }
    let name = path.file_name()?.to_string_lossy();
    let matches = |pattern: &&&str| match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == **pattern,
    };
    if let Some(p) = DENIED_NAMES.iter().find(matches) {
        return Some(format!("{p} files hold secrets"));
    }
    let extension = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase());
    if let Some(ext) = extension.filter(|e| DENIED_EXTENSIONS.contains(&e.as_str())) {
        return Some(format!(".{ext} files hold key material"));
    }
    None
}

pub async fn run(op: &Validated, policy: &FilePolicy, reach: Reach) -> Result<v1::OperationOutput, OpError> {
    let requested = op.text("path").unwrap_or_default();
    let path = policy.check(requested, reach).await?;
    match op.spec.name {
        "file.list" => list(policy, &path, op.flag("hidden")).await,
        "file.stat" => stat(&path).await,
        "file.read" => {
            let offset = u64::try_from(op.int("offset").unwrap_or(0)).unwrap_or(0);
            let length = u64::try_from(op.int("length").unwrap_or(65_536)).unwrap_or(65_536);
            read(&path, offset, length).await
        }
        "file.tail" => tail(&path, usize::try_from(op.int("lines").unwrap_or(100)).unwrap_or(100)).await,
        "file.search" => {
            let pattern = op.text("pattern").unwrap_or("*");
            let depth = usize::try_from(op.int("max_depth").unwrap_or(8)).unwrap_or(8);
            let limit = usize::try_from(op.int("limit").unwrap_or(500)).unwrap_or(500);
            search(policy, &path, pattern, depth, limit).await
        }
        other => Err(OpError::NotAvailable(format!("{other} is not implemented by this agent"))),
    }
}

/// A file time (seconds since the epoch) as RFC 3339, for people and programs alike.
fn when(secs: i64) -> String {
    tailops_proto::time::format_ms(secs.saturating_mul(1000))
}

fn kind(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "dir"
    } else if t.is_symlink() {
        "symlink"
    } else if t.is_file() {
        "file"
    } else {
        "other"
    }
}

async fn list(policy: &FilePolicy, dir: &Path, hidden: bool) -> Result<v1::OperationOutput, OpError> {
    let mut entries =
        tokio::fs::read_dir(dir).await.map_err(|e| OpError::Failed(format!("{}: {e}", dir.display())))?;
    let mut rows = Vec::new();
    let mut truncated = false;
    while let Some(entry) = entries.next_entry().await.map_err(|e| OpError::Failed(e.to_string()))? {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !hidden && name.starts_with('.') {
            continue;
        }
        if rows.len() == MAX_LIST {
            truncated = true;
            break;
        }
        let Ok(meta) = tokio::fs::symlink_metadata(entry.path()).await else { continue };
        // Listed, but marked: a denied entry's name may show, never its content.
        let denied = denied(&entry.path(), &policy.deny).is_some();
        rows.push((name, kind(&meta), meta.len(), meta.mode() & 0o7777, meta.mtime(), denied));
    }
    rows.sort();
    let mut table = Table::new(&["name", "type", "size", "mode", "modified", "denied"]);
    for (name, kind, size, mode, mtime, denied) in &rows {
        table.row([
            Cell::from(name.clone()),
            Cell::from(*kind),
            Cell::from(*size),
            Cell::from(format!("{mode:04o}")),
            Cell::from(when(*mtime)),
            Cell::from(*denied),
        ]);
    }
    let more = if truncated { format!(" (first {MAX_LIST})") } else { String::new() };
    table.summary(format!("{} entries in {}{more}", rows.len(), dir.display()));
    Ok(table.finish())
}

async fn stat(path: &Path) -> Result<v1::OperationOutput, OpError> {
    let meta =
        tokio::fs::metadata(path).await.map_err(|e| OpError::Failed(format!("{}: {e}", path.display())))?;
    let mut table =
        Table::new(&["path", "type", "size", "mode", "uid", "gid", "modified", "accessed", "changed"]);
    table.row([
        Cell::from(path.display().to_string()),
        Cell::from(kind(&meta)),
        Cell::from(meta.len()),
        Cell::from(format!("{:04o}", meta.permissions().mode() & 0o7777)),
        Cell::from(meta.uid()),
        Cell::from(meta.gid()),
        Cell::from(when(meta.mtime())),
        Cell::from(when(meta.atime())),
        Cell::from(when(meta.ctime())),
    ]);
    table.summary(format!("{} {}, {} bytes", kind(&meta), path.display(), meta.len()));
    Ok(table.finish())
}

pub(crate) async fn open_file(path: &Path) -> Result<tokio::fs::File, OpError> {
    let meta =
        tokio::fs::metadata(path).await.map_err(|e| OpError::Failed(format!("{}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(OpError::Failed(format!("{} is not a regular file", path.display())));
    }
    tokio::fs::File::open(path).await.map_err(|e| OpError::Failed(format!("{}: {e}", path.display())))
}

async fn read(path: &Path, offset: u64, length: u64) -> Result<v1::OperationOutput, OpError> {
    let mut file = open_file(path).await?;
    let size = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    file.seek(std::io::SeekFrom::Start(offset)).await.map_err(|e| OpError::Failed(e.to_string()))?;
    let mut buf = Vec::with_capacity(usize::try_from(length.min(size.saturating_sub(offset))).unwrap_or(0));
    file.take(length).read_to_end(&mut buf).await.map_err(|e| OpError::Failed(e.to_string()))?;
    let end = offset + buf.len() as u64;
    let mut table = Table::new(&["offset", "bytes", "size", "content"]);
    table.row([
        Cell::from(offset),
        Cell::from(buf.len() as u64),
        Cell::from(size),
        Cell::from(String::from_utf8_lossy(&buf).into_owned()),
    ]);
    let rest =
        if end < size { format!("; {} more bytes from offset {end}", size - end) } else { String::new() };
    table.summary(format!("{} bytes of {} from offset {offset}{rest}", buf.len(), path.display()));
    Ok(table.finish())
}

/// The last `lines` lines of a regular file, as `file.tail` and `log.file` show them.
pub(crate) async fn tail(path: &Path, lines: usize) -> Result<v1::OperationOutput, OpError> {
    let mut file = open_file(path).await?;
    let size = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let shown = last_lines(&mut file, size, lines).await?;
    let mut table = Table::new(&["line"]);
    for line in &shown {
        table.row([Cell::from(line.as_str())]);
    }
    table.summary(format!("last {} line(s) of {}", shown.len(), path.display()));
    Ok(table.finish())
}

/// The last `lines` complete lines of `file` (whose size is `size`), reading backwards in
/// chunks until enough newlines (or the cap) are in hand.
pub(crate) async fn last_lines(
    file: &mut tokio::fs::File,
    size: u64,
    lines: usize,
) -> Result<Vec<String>, OpError> {
    let mut start = size;
    let mut data: Vec<u8> = Vec::new();
    while start > 0 && size - start < MAX_TAIL_BYTES && data.iter().filter(|b| **b == b'\n').count() <= lines
    {
        let chunk = TAIL_CHUNK.min(start);
        start -= chunk;
        file.seek(std::io::SeekFrom::Start(start)).await.map_err(|e| OpError::Failed(e.to_string()))?;
        let mut buf = vec![0; usize::try_from(chunk).unwrap_or(0)];
        file.read_exact(&mut buf).await.map_err(|e| OpError::Failed(e.to_string()))?;
        buf.extend_from_slice(&data);
        data = buf;
    }
    let text = String::from_utf8_lossy(&data);
    let all: Vec<&str> = text.lines().collect();
    // The first line may be partial when the file was not read from its start.
    let complete = if start > 0 { &all[1.min(all.len())..] } else { &all[..] };
    Ok(complete[complete.len().saturating_sub(lines)..].iter().map(|l| (*l).to_owned()).collect())
}

async fn search(
    policy: &FilePolicy,
    root: &Path,
    pattern: &str,
    max_depth: usize,
    limit: usize,
) -> Result<v1::OperationOutput, OpError> {
    let mut found = Vec::new();
    let mut pending = vec![(root.to_path_buf(), 0usize)];
    let mut truncated = false;
    while let Some((dir, depth)) = pending.pop() {
        let Ok(mut entries) = tokio::fs::read_dir(&dir).await else { continue };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let path = entry.path();
            // Symlinks are not followed: a link out of the base directories stays unvisited.
            let Ok(meta) = tokio::fs::symlink_metadata(&path).await else { continue };
            if denied(&path, &policy.deny).is_some() {
                continue;
            }
            if glob_match(pattern, &entry.file_name().to_string_lossy()) {
                if found.len() == limit {
                    truncated = true;
                    break;
                }
                found.push((path.display().to_string(), kind(&meta), meta.len(), meta.mtime()));
            }
            if meta.is_dir() && depth + 1 < max_depth {
                pending.push((path, depth + 1));
            }
        }
        if truncated {
            break;
        }
    }
    found.sort();
    let mut table = Table::new(&["path", "type", "size", "modified"]);
    for (path, kind, size, mtime) in &found {
        table.row([Cell::from(path.clone()), Cell::from(*kind), Cell::from(*size), Cell::from(when(*mtime))]);
    }
    let more = if truncated { format!(" (stopped at {limit})") } else { String::new() };
    table.summary(format!("{} match(es) for {pattern} under {}{more}", found.len(), root.display()));
    Ok(table.finish())
}

/// Shell-style matching of one file name: `*`, `?`, `[abc]`, `[a-z]`, `[!x]`.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn class(set: &[char], c: char) -> Option<(bool, usize)> {
        let negate = matches!(set.first(), Some('!' | '^'));
        let mut i = usize::from(negate);
        let mut hit = false;
        let mut first = true;
        while i < set.len() {
            if set[i] == ']' && !first {
                return Some((hit != negate, i + 1));
            }
            if i + 2 < set.len() && set[i + 1] == '-' && set[i + 2] != ']' {
                hit |= (set[i]..=set[i + 2]).contains(&c);
                i += 3;
            } else {
                hit |= set[i] == c;
                i += 1;
            }
            first = false;
        }
        None
    }
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).any(|i| go(&p[1..], &n[i..])),
            Some('?') => !n.is_empty() && go(&p[1..], &n[1..]),
            Some('[') => match (n.first(), class(&p[1..], *n.first().unwrap_or(&'\0'))) {
                (Some(_), Some((true, used))) => go(&p[1 + used..], &n[1..]),
                (Some(c), None) => *c == '[' && go(&p[1..], &n[1..]),
                _ => false,
            },
            Some(c) => n.first() == Some(c) && go(&p[1..], &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(base: &Path) -> FilePolicy {
        let base = base.canonicalize().expect("canonical");
        FilePolicy { observe_roots: vec![base.clone()], base_dirs: vec![base], deny: Vec::new() }
    }

    #[test]
    fn globs() {
        assert!(glob_match("*.log", "syslog.log"));
        assert!(!glob_match("*.log", "syslog.log.1"));
        assert!(glob_match("app-?.log", "app-1.log"));
        assert!(glob_match("[a-c]*", "beta"));
        assert!(!glob_match("[!a-c]*", "beta"));
        assert!(glob_match("*", ""));
    }

    #[test]
    fn the_deny_list_compares_components() {
        assert!(denied(Path::new("/etc/shadow"), &[]).is_some());
        assert!(denied(Path::new("/etc/shadow-"), &[]).is_none(), "only the exact name");
        assert!(denied(Path::new("/etc/sudoers.d/admins"), &[]).is_some());
        assert!(denied(Path::new("/root/notes.txt"), &[]).is_some());
        assert!(denied(Path::new("/rootfs/notes.txt"), &[]).is_none());
        assert!(denied(Path::new("/home/al/.ssh/config"), &[]).is_some());
        assert!(denied(Path::new("/srv/tls/server.KEY"), &[]).is_some());
        assert!(denied(Path::new("/home/al/.aws/credentials"), &[]).is_some());
        assert!(denied(Path::new("/var/log/syslog"), &[]).is_none());
        assert!(denied(Path::new("/etc/wireguard/wg0.conf"), &[]).is_some());
    }

    #[tokio::test]
    async fn base_directories_compare_components_and_symlinks_are_resolved() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().join("log");
        let sibling = dir.path().join("logX");
        tokio::fs::create_dir_all(&base).await.expect("mkdir");
        tokio::fs::create_dir_all(&sibling).await.expect("mkdir");
        tokio::fs::write(base.join("app.log"), "ok\n").await.expect("write");
        tokio::fs::write(sibling.join("secret.txt"), "no\n").await.expect("write");
        tokio::fs::symlink(sibling.join("secret.txt"), base.join("escape.log")).await.expect("symlink");
        let policy = policy(&base);

        assert!(policy.check(&base.join("app.log").display().to_string(), Reach::Observe).await.is_ok());
        let sibling_err = policy
            .check(&sibling.join("secret.txt").display().to_string(), Reach::Observe)
            .await
            .unwrap_err();
        assert!(matches!(sibling_err, OpError::Refused(ref m) if m.contains("outside")), "{sibling_err}");
        let escape =
            policy.check(&base.join("escape.log").display().to_string(), Reach::Observe).await.unwrap_err();
        assert!(matches!(escape, OpError::Refused(ref m) if m.contains("resolves to")), "{escape}");
        let dotdot = policy
            .check(&format!("{}/../logX/secret.txt", base.display()), Reach::Observe)
            .await
            .unwrap_err();
        assert!(matches!(dotdot, OpError::Refused(_)), "{dotdot}");
    }

    #[tokio::test]
    async fn tail_and_read_return_what_the_file_holds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("big.log");
        let text: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
        tokio::fs::write(&path, &text).await.expect("write");
        let out = tail(&path, 3).await.expect("tail");
        let lines: Vec<_> = out.records.iter().map(|r| r.fields["line"].clone()).collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(out.summary, format!("last 3 line(s) of {}", path.display()));
        let text_of = |s: &v1::Scalar| match &s.value {
            Some(v1::scalar::Value::Text(t)) => t.clone(),
            _ => String::new(),
        };
        assert_eq!(text_of(&lines[2]), "line 19999");
        let out = read(&path, 7, 6).await.expect("read");
        assert_eq!(text_of(&out.records[0].fields["content"]), "line 1");
    }
}
