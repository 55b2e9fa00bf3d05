//! Opening what the policy allowed, and nothing else: a path is opened relative to a
//! descriptor of its allowed root with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS)`, so no symlink anywhere along it is followed and nothing swapped in
//! between a check and the open can lead elsewhere. Kernels without `openat2` (before 5.6, or
//! behind a seccomp filter that refuses it) get the same rule from a walk of `openat(O_NOFOLLOW)`
//! one component at a time. What was opened is then judged by `fstat` on the descriptor:
//! regular files for reads (a FIFO or device is never read, so it cannot block a thread),
//! directories for listings. Directories are read through their descriptors too, and entries
//! are opened relative to them with `O_NOFOLLOW`.
//!
//! Everything here blocks: callers run it in `spawn_blocking`.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;

/// What an open is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    /// A regular file, to read.
    File,
    /// A directory, to read its entries.
    Dir,
    /// Whatever is there (a symlink itself, not its target), to look at with `fstat`.
    Entry,
}

/// What a path is, without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Dir => "dir",
            Self::Symlink => "symlink",
            Self::Other => "other",
        }
    }
}

/// The parts of `stat` file operations show or compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub kind: Kind,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub atime: i64,
    pub ctime: i64,
    pub dev: u64,
    pub ino: u64,
}

impl Meta {
    #[allow(clippy::useless_conversion, clippy::unnecessary_cast)] // field widths differ by architecture
    fn of(stat: &Stat) -> Self {
        let kind = match FileType::from_raw_mode(stat.st_mode) {
            FileType::RegularFile => Kind::File,
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            _ => Kind::Other,
        };
        Self {
            kind,
            size: u64::try_from(stat.st_size).unwrap_or(0),
            mode: stat.st_mode as u32 & 0o7777,
            uid: stat.st_uid as u32,
            gid: stat.st_gid as u32,
            mtime: stat.st_mtime as i64,
            atime: stat.st_atime as i64,
            ctime: stat.st_ctime as i64,
            dev: stat.st_dev as u64,
            ino: stat.st_ino as u64,
        }
    }

    /// Whether `self` and `other` are the same file (same device and inode).
    pub(crate) fn same_file(&self, other: &Self) -> bool {
        (self.dev, self.ino) == (other.dev, other.ino)
    }
}

/// Why an open did not give what was wanted.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// The path is a symlink or passes through one (or would leave its root).
    Symlink,
    /// Nothing there (or a component is not a directory).
    Missing,
    /// There is something, but not of the wanted kind.
    WrongKind(Kind),
    Io(std::io::Error),
}

impl From<Errno> for OpenError {
    fn from(e: Errno) -> Self {
        match e {
            Errno::LOOP | Errno::XDEV => Self::Symlink,
            Errno::NOENT | Errno::NOTDIR => Self::Missing,
            other => Self::Io(other.into()),
        }
    }
}

fn flags(want: Want) -> OFlags {
    let common = OFlags::CLOEXEC | OFlags::NOFOLLOW;
    match want {
        // Non-blocking: were a FIFO swapped in after the type check, opening it returns at once.
        Want::File => common | OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY,
        Want::Dir => common | OFlags::RDONLY | OFlags::DIRECTORY,
        // openat2 refuses any other flag beside O_PATH (EINVAL).
        Want::Entry => common | OFlags::PATH,
    }
}

/// Which way to walk a path; tests pick the fallback to prove it holds the same line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Walk {
    /// `openat2`, falling back to [`Walk::Components`] where the kernel lacks it.
    Auto,
    /// Only tests pick it; elsewhere it is what `Auto` does where `openat2` is missing.
    #[cfg(test)]
    Components,
}

/// Opens `rel` (plain names only, as [`super::policy::normalise`] leaves them) beneath `root`,
/// following no symlink, and checks that it is what `want` asks for.
pub(crate) fn open_beneath(
    root: &Path,
    rel: &Path,
    want: Want,
    walk: Walk,
) -> Result<(OwnedFd, Meta), OpenError> {
    // The roots come from the agent's configuration (canonical at start-up); the user-controlled
    // part of the path is everything below them.
    let root = rustix::fs::open(root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    // Look before opening for reading: a symlink at the end is named as such, and a device node
    // is never opened (opening some has side effects). The descriptor opened next is judged
    // again, in case the path changed in between.
    let (probe, meta) = open_checked(root.as_fd(), rel, Want::Entry, walk)?;
    match (want, meta.kind) {
        (Want::Entry, _) => return Ok((probe, meta)),
        (_, Kind::Symlink) => return Err(OpenError::Symlink),
        (Want::File, Kind::File) | (Want::Dir, Kind::Dir) => {}
        (_, kind) => return Err(OpenError::WrongKind(kind)),
    }
    open_checked(root.as_fd(), rel, want, walk)
}

fn open_checked(
    root: BorrowedFd<'_>,
    rel: &Path,
    want: Want,
    walk: Walk,
) -> Result<(OwnedFd, Meta), OpenError> {
    let fd = open_path(root, rel, flags(want), walk)?;
    let meta = Meta::of(&rustix::fs::fstat(&fd)?);
    match (want, meta.kind) {
        (Want::File, Kind::File) | (Want::Dir, Kind::Dir) | (Want::Entry, _) => Ok((fd, meta)),
        (_, kind) => Err(OpenError::WrongKind(kind)),
    }
}

fn open_path(root: BorrowedFd<'_>, rel: &Path, flags: OFlags, walk: Walk) -> Result<OwnedFd, Errno> {
    let mut names = Vec::new();
    for component in rel.components() {
        match component {
            Component::Normal(name) => names.push(name),
            // Normalisation leaves none of these; refuse rather than guess.
            _ => return Err(Errno::XDEV),
        }
    }
    if walk == Walk::Auto {
        let target: &Path = if names.is_empty() { Path::new(".") } else { rel };
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        match rustix::fs::openat2(root, target, flags, Mode::empty(), resolve) {
            // No openat2 here (old kernel), or a seccomp filter refusing it: walk instead.
            Err(Errno::NOSYS | Errno::PERM) => {}
            other => return other,
        }
    }
    let Some((last, parents)) = names.split_last() else {
        return rustix::fs::openat(root, ".", flags, Mode::empty());
    };
    let mut dir: Option<OwnedFd> = None;
    for name in parents {
        let at = dir.as_ref().map_or(root, AsFd::as_fd);
        // O_PATH | O_NOFOLLOW opens a symlink itself instead of following it; fstat tells.
        let next =
            rustix::fs::openat(at, *name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?;
        match FileType::from_raw_mode(rustix::fs::fstat(&next)?.st_mode) {
            FileType::Directory => dir = Some(next),
            FileType::Symlink => return Err(Errno::LOOP),
            _ => return Err(Errno::NOTDIR),
        }
    }
    rustix::fs::openat(dir.as_ref().map_or(root, AsFd::as_fd), *last, flags, Mode::empty())
}

/// The entry `name` of the directory `dir`, opened without following it.
pub(crate) fn open_entry(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    want: Want,
) -> Result<(OwnedFd, Meta), OpenError> {
    let fd = rustix::fs::openat(dir, name, flags(want), Mode::empty())?;
    let meta = Meta::of(&rustix::fs::fstat(&fd)?);
    match (want, meta.kind) {
        (Want::File, Kind::File) | (Want::Dir, Kind::Dir) | (Want::Entry, _) => Ok((fd, meta)),
        (_, kind) => Err(OpenError::WrongKind(kind)),
    }
}

/// Names in a directory, each with what it is (`None`: it vanished meanwhile).
pub(crate) type Listing = Vec<(OsString, Option<Meta>)>;

/// The names in the directory `dir` (without `.` and `..`), sorted, each with what it is
/// (`None` if it vanished meanwhile), stopping after `max` names (the flag says so).
pub(crate) fn entries(dir: &OwnedFd, max: usize) -> Result<(Listing, bool), OpenError> {
    let mut reader = Dir::read_from(dir)?;
    let mut names = Vec::new();
    let mut truncated = false;
    while let Some(entry) = reader.read() {
        let entry = entry?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name == "." || name == ".." {
            continue;
        }
        if names.len() == max {
            truncated = true;
            break;
        }
        names.push(name.to_owned());
    }
    names.sort();
    let listed = names
        .into_iter()
        .map(|name| {
            let meta = rustix::fs::statat(dir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
                .ok()
                .map(|s| Meta::of(&s));
            (name, meta)
        })
        .collect();
    Ok((listed, truncated))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both walks refuse a symlink at the end and in the middle of a path, and an unreadable
    /// kind (a FIFO) without blocking.
    #[tokio::test]
    async fn symlinks_are_never_followed_by_either_walk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().canonicalize().expect("canonical");
        tokio::fs::create_dir_all(root.join("real")).await.expect("mkdir");
        tokio::fs::write(root.join("real/file.log"), "ok\n").await.expect("write");
        tokio::fs::symlink(root.join("real/file.log"), root.join("link.log")).await.expect("symlink");
        tokio::fs::symlink(root.join("real"), root.join("linkdir")).await.expect("symlink");
        let fifo =
            tokio::process::Command::new("mkfifo").arg(root.join("pipe")).status().await.expect("mkfifo");
        assert!(fifo.success());

        let root2 = root.clone();
        tokio::task::spawn_blocking(move || {
            let root = root2;
            for walk in [Walk::Auto, Walk::Components] {
                let (_, meta) =
                    open_beneath(&root, Path::new("real/file.log"), Want::File, walk).expect("a file");
                assert_eq!((meta.kind, meta.size), (Kind::File, 3));
                assert!(matches!(
                    open_beneath(&root, Path::new("link.log"), Want::File, walk),
                    Err(OpenError::Symlink)
                ));
                assert!(matches!(
                    open_beneath(&root, Path::new("linkdir/file.log"), Want::File, walk),
                    Err(OpenError::Symlink)
                ));
                let (_, link) =
                    open_beneath(&root, Path::new("link.log"), Want::Entry, walk).expect("the link");
                assert_eq!(link.kind, Kind::Symlink);
                assert!(matches!(
                    open_beneath(&root, Path::new("pipe"), Want::File, walk),
                    Err(OpenError::WrongKind(Kind::Other))
                ));
                assert!(matches!(
                    open_beneath(&root, Path::new("missing"), Want::File, walk),
                    Err(OpenError::Missing)
                ));
                let (dir, _) = open_beneath(&root, Path::new(""), Want::Dir, walk).expect("the root");
                let (names, truncated) = entries(&dir, 100).expect("entries");
                let names: Vec<_> = names
                    .iter()
                    .map(|(n, m)| (n.to_string_lossy().into_owned(), m.map(|m| m.kind)))
                    .collect();
                assert_eq!(
                    names,
                    [
                        ("link.log".to_owned(), Some(Kind::Symlink)),
                        ("linkdir".to_owned(), Some(Kind::Symlink)),
                        ("pipe".to_owned(), Some(Kind::Other)),
                        ("real".to_owned(), Some(Kind::Dir)),
                    ]
                );
                assert!(!truncated);
                assert!(open_entry(dir.as_fd(), OsStr::new("linkdir"), Want::Dir).is_err());
                assert!(open_entry(dir.as_fd(), OsStr::new("real"), Want::Dir).is_ok());
            }
        })
        .await
        .expect("blocking checks");
    }
}
