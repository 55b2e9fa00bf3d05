//! Read-only file access, least privilege first.
//!
//! - [`policy`]: which paths a job may touch. Observe-reach jobs read only under the observe
//!   roots (default `/var/log`), control-reach jobs under the wider base directories; the deny
//!   list (credentials, keys, TailOps state) wins at every reach. Decided on the path as asked,
//!   so a refusal never tells whether the path exists or where a symlink leads.
//! - [`open`]: what was checked is what is read: the path is opened beneath its root without
//!   following any symlink, and judged by `fstat` on the descriptor.
//! - [`content`]: key material is refused (reads) or redacted (followed logs) by content too.
//! - [`glob`]: file-name patterns in linear time.
//!
//! The blocking work runs in `spawn_blocking` ([`blocking`]), never on the runtime thread.

mod content;
mod glob;
pub(crate) mod open;
mod policy;

use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tailops_ops::Validated;
use tailops_proto::v1;

pub(crate) use content::KeyRedactor;
pub use glob::glob_match;
pub(crate) use open::{Kind, Meta, OpenError, Want};

use super::output::{Cell, Table};
use super::{OpError, Reach};

/// Where file operations may look.
#[derive(Debug, Clone)]
pub struct FilePolicy {
    /// Canonical directories under which jobs of observe reach may read (narrow: logs).
    pub observe_roots: Vec<PathBuf>,
    /// Canonical directories under which jobs of control reach may read.
    pub base_dirs: Vec<PathBuf>,
    /// Extra denied paths (directories deny everything under them), on top of the built-in list:
    /// `--files-deny` and the agent's own state directory.
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

/// At most this many entries of one directory are read.
const MAX_DIR_NAMES: usize = 100_000;
const MAX_LIST: usize = 10_000;
/// A search or scan looks at no more entries than this in all.
const MAX_WALK: usize = 200_000;
const TAIL_CHUNK: u64 = 64 * 1024;
/// `file.tail` reads at most this much from the end of a file.
const MAX_TAIL_BYTES: u64 = 8 * 1024 * 1024;

/// A path the policy allowed for one job: as asked for, normalised, and the root it lies under.
#[derive(Debug, Clone)]
pub(crate) struct Allowed {
    /// The path as the request wrote it, for messages.
    pub(crate) shown: String,
    /// Normalised (`.` and `..` resolved by name); the path that is opened.
    pub(crate) path: PathBuf,
    root: PathBuf,
    rel: PathBuf,
}

impl FilePolicy {
    /// The roots a job of `reach` may read under.
    pub fn roots(&self, reach: Reach) -> &[PathBuf] {
        match reach {
            Reach::Observe => &self.observe_roots,
            Reach::Control => &self.base_dirs,
        }
    }

    /// Whether `path` (absolute, normalised) is on the deny list.
    pub fn is_denied(&self, path: &Path) -> bool {
        policy::denied(path, &self.deny).is_some()
    }

    /// Denies `dir` (such as the agent's state directory) too, under the name file operations
    /// would reach it by: its canonical path, as they never follow symlinks.
    pub async fn deny_also(&mut self, dir: &Path) {
        let canonical = tokio::fs::canonicalize(dir).await.unwrap_or_else(|_| dir.to_owned());
        if !self.deny.contains(&canonical) {
            self.deny.push(canonical);
        }
    }

    /// Whether a job of `reach` may touch `requested`, decided on the name alone: the answer
    /// (and its message) is the same whether or not the path exists.
    pub(crate) fn allow(&self, requested: &str, reach: Reach) -> Result<Allowed, OpError> {
        let Some(path) = policy::normalise(requested) else {
            return Err(OpError::Refused(format!("{requested} is not an absolute path")));
        };
        if let Some(what) = policy::denied(&path, &self.deny) {
            return Err(OpError::Refused(format!(
                "{requested} is on the deny list ({what}); file operations never read it, at any tier"
            )));
        }
        let root = self
            .roots(reach)
            .iter()
            .filter(|root| path.starts_with(root))
            .max_by_key(|root| root.components().count());
        let Some(root) = root else {
            let roots =
                self.roots(reach).iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ");
            return Err(OpError::Refused(match reach {
                Reach::Observe => format!(
                    "{requested} is outside the allowed directories at observe reach ({roots}); an operator \
                     can read it, or ask with --elevate (needs approval)"
                ),
                Reach::Control => format!(
                    "{requested} is outside the allowed directories on this host ({roots}); the agent's \
                     --files-base flags set them"
                ),
            }));
        };
        let rel = path.strip_prefix(root).unwrap_or(Path::new("")).to_owned();
        Ok(Allowed { shown: requested.to_owned(), root: root.clone(), rel, path })
    }

    /// The normalised path of `requested` if a job of `reach` may read it and it is no
    /// symlink (for tools that open it themselves, such as the vulnerability scanners).
    pub async fn check(&self, requested: &str, reach: Reach) -> Result<PathBuf, OpError> {
        let target = self.allow(requested, reach)?;
        let path = target.path.clone();
        blocking(move |_| match target.open(Want::Entry)? {
            (_, meta) if meta.kind == Kind::Symlink => Err(target.refuse(OpenError::Symlink, Want::Entry)),
            _ => Ok(()),
        })
        .await?;
        Ok(path)
    }
}

impl Allowed {
    /// Opens the path beneath its root (blocking), following no symlink.
    pub(crate) fn open(&self, want: Want) -> Result<(OwnedFd, Meta), OpError> {
        self.open_raw(want).map_err(|e| self.refuse(e, want))
    }

    /// Like [`Self::open`], keeping why it failed.
    pub(crate) fn open_raw(&self, want: Want) -> Result<(OwnedFd, Meta), OpenError> {
        open::open_beneath(&self.root, &self.rel, want, open::Walk::Auto)
    }

    /// What to tell the requester when opening failed with `e`. Inside an allowed root the
    /// path's existence is no secret; where a symlink leads is not said.
    pub(crate) fn refuse(&self, e: OpenError, want: Want) -> OpError {
        let shown = &self.shown;
        match e {
            OpenError::Symlink => OpError::Refused(format!(
                "{shown} is a symbolic link or passes through one; file operations do not follow links: \
                 ask for the path it leads to"
            )),
            OpenError::Missing => OpError::Failed(format!("{shown}: no such file or directory")),
            OpenError::WrongKind(kind) => OpError::Failed(match want {
                Want::Dir => format!("{shown} is not a directory (it is a {})", kind.as_str()),
                _ => format!(
                    "{shown} is not a regular file (it is a {}); only regular files are read",
                    kind.as_str()
                ),
            }),
            OpenError::Io(e) => OpError::Failed(format!("{shown}: {e}")),
        }
    }

    /// The refusal for content that holds key material; it does not echo the content.
    pub(crate) fn key_refusal(&self) -> OpError {
        OpError::Refused(format!(
            "{} holds private key material (a PEM, OpenSSH, PGP or PuTTY private key, or a TailOps profile's \
             key_pem) at or near the requested bytes; file operations never return it, at any tier",
            self.shown
        ))
    }
}

/// Runs blocking file work off the runtime thread. When the job's future is dropped (cancelled,
/// or past its deadline) `stop` is set, and walks end at their next entry instead of running on.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce(&AtomicBool) -> Result<T, OpError> + Send + 'static,
) -> Result<T, OpError> {
    #[derive(Debug)]
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let _guard = StopOnDrop(stop.clone());
    tokio::task::spawn_blocking(move || work(&stop))
        .await
        .map_err(|e| OpError::Failed(format!("the file operation ended abnormally: {e}")))?
}

pub async fn run(op: &Validated, policy: &FilePolicy, reach: Reach) -> Result<v1::OperationOutput, OpError> {
    let target = policy.allow(op.text("path").unwrap_or_default(), reach)?;
    let policy = policy.clone();
    match op.spec.name {
        "file.list" => {
            let hidden = op.flag("hidden");
            blocking(move |_| list(&policy, &target, hidden)).await
        }
        "file.stat" => blocking(move |_| stat(&target)).await,
        "file.read" => {
            let offset = u64::try_from(op.int("offset").unwrap_or(0)).unwrap_or(0);
            let length = u64::try_from(op.int("length").unwrap_or(65_536)).unwrap_or(65_536);
            blocking(move |_| read(&target, offset, length)).await
        }
        "file.tail" => {
            let lines = usize::try_from(op.int("lines").unwrap_or(100)).unwrap_or(100);
            blocking(move |_| tail(&target, lines)).await
        }
        "file.search" => {
            let pattern = op.text("pattern").unwrap_or("*").to_owned();
            let depth = usize::try_from(op.int("max_depth").unwrap_or(8)).unwrap_or(8);
            let limit = usize::try_from(op.int("limit").unwrap_or(500)).unwrap_or(500);
            blocking(move |stop| search(&policy, &target, &pattern, depth, limit, stop)).await
        }
        other => Err(OpError::NotAvailable(format!("{other} is not implemented by this agent"))),
    }
}

/// A file time (seconds since the epoch) as RFC 3339, for people and programs alike.
fn when(secs: i64) -> String {
    tailops_proto::time::format_ms(secs.saturating_mul(1000))
}

fn io_failed(target: &Allowed) -> impl Fn(std::io::Error) -> OpError + '_ {
    move |e| OpError::Failed(format!("{}: {e}", target.shown))
}

fn list(policy: &FilePolicy, dir: &Allowed, hidden: bool) -> Result<v1::OperationOutput, OpError> {
    let (fd, _) = dir.open(Want::Dir)?;
    let (names, mut truncated) = open::entries(&fd, MAX_DIR_NAMES).map_err(|e| dir.refuse(e, Want::Dir))?;
    let mut table = Table::new(&["name", "type", "size", "mode", "modified", "denied"]);
    let mut shown = 0;
    for (name, meta) in names {
        let text = name.to_string_lossy();
        if !hidden && text.starts_with('.') {
            continue;
        }
        // Vanished since the directory was read.
        let Some(meta) = meta else { continue };
        if shown == MAX_LIST {
            truncated = true;
            break;
        }
        shown += 1;
        // Listed, but marked: a denied entry's name may show, never its content.
        let denied = policy.is_denied(&dir.path.join(&name));
        table.row([
            Cell::from(text.into_owned()),
            Cell::from(meta.kind.as_str()),
            Cell::from(meta.size),
            Cell::from(format!("{:04o}", meta.mode)),
            Cell::from(when(meta.mtime)),
            Cell::from(denied),
        ]);
    }
    let more = if truncated { format!(" (first {shown})") } else { String::new() };
    table.summary(format!("{shown} entries in {}{more}", dir.path.display()));
    Ok(table.finish())
}

fn stat(target: &Allowed) -> Result<v1::OperationOutput, OpError> {
    // The entry itself: a symlink is described as one, never followed.
    let (_, meta) = target.open(Want::Entry)?;
    let mut table =
        Table::new(&["path", "type", "size", "mode", "uid", "gid", "modified", "accessed", "changed"]);
    let path = target.path.display().to_string();
    table.row([
        Cell::from(path.clone()),
        Cell::from(meta.kind.as_str()),
        Cell::from(meta.size),
        Cell::from(format!("{:04o}", meta.mode)),
        Cell::from(meta.uid),
        Cell::from(meta.gid),
        Cell::from(when(meta.mtime)),
        Cell::from(when(meta.atime)),
        Cell::from(when(meta.ctime)),
    ]);
    table.summary(format!("{} {path}, {} bytes", meta.kind.as_str(), meta.size));
    Ok(table.finish())
}

fn read(target: &Allowed, offset: u64, length: u64) -> Result<v1::OperationOutput, OpError> {
    let (fd, meta) = target.open(Want::File)?;
    let mut file = std::fs::File::from(fd);
    // Read a window beyond both ends, so that bytes taken from the middle of a key are refused
    // as surely as the key's first line.
    let low = offset.saturating_sub(content::WINDOW);
    let high = offset.saturating_add(length).saturating_add(content::WINDOW);
    file.seek(SeekFrom::Start(low)).map_err(io_failed(target))?;
    let mut window = Vec::new();
    (&mut file).take(high - low).read_to_end(&mut window).map_err(io_failed(target))?;
    if content::holds_key_material(&window) {
        return Err(target.key_refusal());
    }
    let start = usize::try_from(offset - low).unwrap_or(usize::MAX).min(window.len());
    let end = start.saturating_add(usize::try_from(length).unwrap_or(usize::MAX)).min(window.len());
    let buf = &window[start..end];
    let end = offset + buf.len() as u64;
    let size = meta.size;
    let mut table = Table::new(&["offset", "bytes", "size", "content"]);
    table.row([
        Cell::from(offset),
        Cell::from(buf.len() as u64),
        Cell::from(size),
        Cell::from(String::from_utf8_lossy(buf).into_owned()),
    ]);
    let rest =
        if end < size { format!("; {} more bytes from offset {end}", size - end) } else { String::new() };
    table.summary(format!("{} bytes of {} from offset {offset}{rest}", buf.len(), target.path.display()));
    Ok(table.finish())
}

/// The last `lines` lines of a regular file, as `file.tail` and `log.file` show them (blocking).
pub(crate) fn tail(target: &Allowed, lines: usize) -> Result<v1::OperationOutput, OpError> {
    let (fd, meta) = target.open(Want::File)?;
    let mut file = std::fs::File::from(fd);
    let shown = checked_tail(target, &mut file, meta.size, lines)?;
    let mut table = Table::new(&["line"]);
    for line in &shown {
        table.row([Cell::from(line.as_str())]);
    }
    table.summary(format!("last {} line(s) of {}", shown.len(), target.path.display()));
    Ok(table.finish())
}

/// The last `lines` complete lines of `file` (whose size is `size`), refused if they or the
/// bytes just before them hold key material (blocking).
pub(crate) fn checked_tail(
    target: &Allowed,
    file: &mut std::fs::File,
    size: u64,
    lines: usize,
) -> Result<Vec<String>, OpError> {
    let (start, data) = last_lines(file, size, lines).map_err(io_failed(target))?;
    let before = content::WINDOW.min(start);
    let mut head = vec![0; usize::try_from(before).unwrap_or(0)];
    file.seek(SeekFrom::Start(start - before)).map_err(io_failed(target))?;
    file.read_exact(&mut head).map_err(io_failed(target))?;
    if content::holds_key_material(&head) || content::holds_key_material(&data) {
        return Err(target.key_refusal());
    }
    let text = String::from_utf8_lossy(&data);
    let all: Vec<&str> = text.lines().collect();
    // The first line may be partial when the file was not read from its start.
    let complete = if start > 0 { &all[1.min(all.len())..] } else { &all[..] };
    Ok(complete[complete.len().saturating_sub(lines)..].iter().map(|l| (*l).to_owned()).collect())
}

/// Reads `file` (of `size` bytes) backwards in chunks until more than `lines` newlines (or the
/// cap) are in hand; returns where the bytes read start, and the bytes.
fn last_lines(file: &mut std::fs::File, size: u64, lines: usize) -> std::io::Result<(u64, Vec<u8>)> {
    // Chunks are read backwards and joined once at the end, and newlines are counted per chunk,
    // so a tail of the whole window costs linear time, not a recount and a copy per chunk.
    let mut start = size;
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut newlines = 0;
    while start > 0 && size - start < MAX_TAIL_BYTES && newlines <= lines {
        let chunk = TAIL_CHUNK.min(start);
        start -= chunk;
        file.seek(SeekFrom::Start(start))?;
        let mut buf = vec![0; usize::try_from(chunk).unwrap_or(0)];
        file.read_exact(&mut buf)?;
        newlines += buf.iter().filter(|b| **b == b'\n').count();
        chunks.push(buf);
    }
    Ok((start, chunks.into_iter().rev().flatten().collect()))
}

/// One entry met by [`walk`].
#[derive(Debug)]
pub(crate) struct Node<'a> {
    /// The directory holding the entry, to open it relative to.
    pub dir: std::os::fd::BorrowedFd<'a>,
    pub name: &'a std::ffi::OsStr,
    pub path: &'a Path,
    pub meta: Meta,
}

/// What [`walk`] does after visiting a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Go into it if it is a directory and not too deep.
    Descend,
    Skip,
    Stop,
}

/// How a walk went.
#[derive(Debug, Default)]
pub(crate) struct Walked {
    /// Directories that could not be opened or read.
    pub unreadable: usize,
    /// Stopped at [`MAX_WALK`] entries.
    pub capped: bool,
}

/// Visits the tree under the open directory `root` (at `root_path`) depth-first in name order,
/// down to `max_depth` levels. Subdirectories are opened relative to their parent with
/// `O_NOFOLLOW`, so a directory swapped for a symlink mid-walk is never entered, and only the
/// directories on the current path are held open.
pub(crate) fn walk(
    root: OwnedFd,
    root_path: &Path,
    max_depth: usize,
    stop: &AtomicBool,
    mut visit: impl FnMut(&Node<'_>) -> Step,
) -> Result<Walked, OpError> {
    type Pending = (Rc<OwnedFd>, std::ffi::OsString, PathBuf, Meta, usize);
    fn expand(dir: OwnedFd, path: &Path, depth: usize, pending: &mut Vec<Pending>, walked: &mut Walked) {
        let dir = Rc::new(dir);
        match open::entries(&dir, MAX_DIR_NAMES) {
            Ok((names, _)) => {
                for (name, meta) in names.into_iter().rev() {
                    if let Some(meta) = meta {
                        pending.push((dir.clone(), name.clone(), path.join(&name), meta, depth));
                    }
                }
            }
            Err(_) => walked.unreadable += 1,
        }
    }
    let mut walked = Walked::default();
    let mut pending = Vec::new();
    let mut seen = 0usize;
    expand(root, root_path, 1, &mut pending, &mut walked);
    while let Some((dir, name, path, meta, depth)) = pending.pop() {
        if stop.load(Ordering::Relaxed) {
            return Err(OpError::Failed("stopped: the job ended before the walk did".into()));
        }
        if seen == MAX_WALK {
            walked.capped = true;
            break;
        }
        seen += 1;
        let node = Node { dir: dir.as_fd(), name: &name, path: &path, meta };
        match visit(&node) {
            Step::Stop => break,
            Step::Skip => {}
            Step::Descend if meta.kind == Kind::Dir && depth < max_depth => {
                match open::open_entry(dir.as_fd(), &name, Want::Dir) {
                    Ok((sub, _)) => expand(sub, &path, depth + 1, &mut pending, &mut walked),
                    Err(_) => walked.unreadable += 1,
                }
            }
            Step::Descend => {}
        }
    }
    Ok(walked)
}

fn search(
    policy: &FilePolicy,
    root: &Allowed,
    pattern: &str,
    max_depth: usize,
    limit: usize,
    stop: &AtomicBool,
) -> Result<v1::OperationOutput, OpError> {
    let (dir, _) = root.open(Want::Dir)?;
    let mut found = Vec::new();
    let mut truncated = false;
    let walked = walk(dir, &root.path, max_depth, stop, |node| {
        // Denied entries are not even named, and not entered.
        if policy.is_denied(node.path) {
            return Step::Skip;
        }
        if glob_match(pattern, &node.name.to_string_lossy()) {
            if found.len() == limit {
                truncated = true;
                return Step::Stop;
            }
            found.push((node.path.display().to_string(), node.meta));
        }
        Step::Descend
    })?;
    found.sort_by(|a, b| a.0.cmp(&b.0));
    let mut table = Table::new(&["path", "type", "size", "modified"]);
    for (path, meta) in &found {
        table.row([
            Cell::from(path.clone()),
            Cell::from(meta.kind.as_str()),
            Cell::from(meta.size),
            Cell::from(when(meta.mtime)),
        ]);
    }
    let more = if truncated {
        format!(" (stopped at {limit})")
    } else if walked.capped {
        format!(" (stopped after looking at {MAX_WALK} entries)")
    } else {
        String::new()
    };
    table.summary(format!("{} match(es) for {pattern} under {}{more}", found.len(), root.path.display()));
    Ok(table.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(base: &Path) -> FilePolicy {
        let base = base.canonicalize().expect("canonical");
        FilePolicy { observe_roots: vec![base.clone()], base_dirs: vec![base], deny: Vec::new() }
    }

    fn refused(result: Result<Allowed, OpError>) -> String {
        match result {
            Err(OpError::Refused(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// L11: refusals are decided on the name, so they read the same for a path that exists
    /// and one that does not, and never say where a symlink leads.
    #[test]
    fn refusals_do_not_tell_whether_a_path_exists() {
        let policy = FilePolicy::default();
        let exists = refused(policy.allow("/etc/hostname", Reach::Observe));
        let missing = refused(policy.allow("/etc/no-such-file-here", Reach::Observe));
        assert_eq!(exists.replace("/etc/hostname", "X"), missing.replace("/etc/no-such-file-here", "X"));
        assert_eq!(
            exists,
            "/etc/hostname is outside the allowed directories at observe reach (/var/log); an operator can \
             read it, or ask with --elevate (needs approval)"
        );
        let shadow = refused(policy.allow("/etc/shadow-", Reach::Control));
        let nothing = refused(policy.allow("/etc/shadow.none", Reach::Control));
        assert_eq!(shadow.replace("/etc/shadow-", "X"), nothing.replace("/etc/shadow.none", "X"));
        assert!(shadow.contains("deny list"), "{shadow}");
        assert!(policy.allow("/etc/hostname", Reach::Control).is_ok());
        assert!(refused(policy.allow("/var/log/../../etc/hostname", Reach::Observe)).contains("outside"));
    }

    #[tokio::test]
    async fn reads_check_what_they_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().join("log");
        let sibling = dir.path().join("logX");
        tokio::fs::create_dir_all(&base).await.expect("mkdir");
        tokio::fs::create_dir_all(&sibling).await.expect("mkdir");
        tokio::fs::write(base.join("app.log"), "ok\n").await.expect("write");
        tokio::fs::write(sibling.join("secret.txt"), "no\n").await.expect("write");
        tokio::fs::symlink(sibling.join("secret.txt"), base.join("escape.log")).await.expect("symlink");
        let policy = policy(&base);
        let base = base.canonicalize().expect("canonical");
        let at = |p: &Path| p.display().to_string();

        assert!(policy.check(&at(&base.join("app.log")), Reach::Observe).await.is_ok());
        let err = policy.check(&at(&sibling.join("secret.txt")), Reach::Observe).await.unwrap_err();
        assert!(matches!(err, OpError::Refused(ref m) if m.contains("outside")), "{err}");
        let err = policy.check(&at(&base.join("escape.log")), Reach::Observe).await.unwrap_err();
        assert!(
            matches!(err, OpError::Refused(ref m) if m.contains("symbolic link") && !m.contains("logX")),
            "{err}"
        );
        let err = policy
            .check(&format!("{}/../logX/secret.txt", base.display()), Reach::Observe)
            .await
            .unwrap_err();
        assert!(matches!(err, OpError::Refused(_)), "{err}");
    }

    #[tokio::test]
    async fn tail_and_read_return_what_the_file_holds_and_never_a_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let policy = policy(dir.path());
        let root = dir.path().canonicalize().expect("canonical");
        let text: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
        tokio::fs::write(root.join("big.log"), &text).await.expect("write");
        let key = format!(
            "-----BEGIN OPENSSH PRIVATE KEY-----\n{}-----END OPENSSH PRIVATE KEY-----\n",
            "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n".repeat(40)
        );
        let keyed = format!("{}{key}{}", "before\n".repeat(5000), "after\n".repeat(20_000));
        tokio::fs::write(root.join("notes.txt"), &keyed).await.expect("write");
        let target = |name: &str| {
            policy.allow(&root.join(name).display().to_string(), Reach::Observe).expect("allowed")
        };

        let big = target("big.log");
        let out = tokio::task::spawn_blocking(move || (tail(&big, 3), read(&big, 7, 6))).await.expect("join");
        let text_of = |s: &v1::Scalar| match &s.value {
            Some(v1::scalar::Value::Text(t)) => t.clone(),
            _ => String::new(),
        };
        let tail_out = out.0.expect("tail");
        assert_eq!(tail_out.records.len(), 3);
        assert_eq!(text_of(&tail_out.records[2].fields["line"]), "line 19999");
        assert_eq!(text_of(&out.1.expect("read").records[0].fields["content"]), "line 1");

        // Inside the key's body, on either side of it, and from its end: all refused, and the
        // refusal holds none of it. Far from it, the same file reads.
        let key_at = keyed.find("b3Bl").expect("body") as u64;
        let notes = target("notes.txt");
        let results = tokio::task::spawn_blocking(move || {
            let before_key = key_at - 2000;
            vec![
                read(&notes, key_at + 200, 100),
                read(&notes, before_key, 100),
                read(&notes, key_at + key.len() as u64 + 100, 50),
                read(&notes, 0, 100),
                tail(&notes, 19_990),
                tail(&notes, 10),
            ]
        })
        .await
        .expect("join");
        for (i, r) in results[..3].iter().chain(&results[4..5]).enumerate() {
            let err = r.as_ref().expect_err("refused");
            assert!(
                matches!(err, OpError::Refused(m) if m.contains("private key material") && !m.contains("b3Bl")),
                "{i}: {err}"
            );
        }
        assert!(results[3].is_ok(), "far from the key the file reads");
        assert!(results[5].is_ok(), "the last lines are far from the key");
    }
}
