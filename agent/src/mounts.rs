//! Mounted filesystems: which ones are real disks worth reporting, and how full they are. Shared
//! by the facts collector (what disks exist) and the metrics sampler (how full they are).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// One line of `/proc/mounts`, with the kernel's octal escapes decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub device: String,
    pub mount_point: String,
    pub fstype: String,
}

/// Filesystem types that hold no user data: kernel interfaces, memory-backed scratch space,
/// container image layers and read-only package images. Their sizes say nothing about a disk.
const PSEUDO_FSTYPES: &[&str] = &[
    "aufs",
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fuse.gvfsd-fuse",
    "fuse.lxcfs",
    "fuse.portal",
    "fuse.snapfuse",
    "fusectl",
    "hugetlbfs",
    "mqueue",
    "nfsd",
    "nsfs",
    "overlay",
    "proc",
    "pstore",
    "ramfs",
    "rootfs",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "sysfs",
    "tmpfs",
    "tracefs",
];

/// Which mounts count as disks. The default keeps every filesystem type that is not in the
/// built-in pseudo list; the fields adjust that per host.
#[derive(Debug, Clone, Default)]
pub struct MountFilter {
    /// Accepted even when in the built-in pseudo list (e.g. `tmpfs` for a RAM disk that matters).
    pub include_fstypes: Vec<String>,
    /// Rejected in addition to the built-in pseudo list.
    pub exclude_fstypes: Vec<String>,
    /// Mount points equal to or below any of these are rejected (`/mnt/backup` rejects
    /// `/mnt/backup` and `/mnt/backup/x`, not `/mnt/backups`).
    pub exclude_mount_prefixes: Vec<String>,
}

impl MountFilter {
    /// Whether `m` counts as a disk. An fstype in `include_fstypes` is accepted even when it is
    /// pseudo or in `exclude_fstypes`; an excluded mount prefix still rejects it, since it names
    /// one place, which is more specific than a type.
    pub fn accepts(&self, m: &Mount) -> bool {
        if self.exclude_mount_prefixes.iter().any(|prefix| is_at_or_below(&m.mount_point, prefix)) {
            return false;
        }
        if self.include_fstypes.contains(&m.fstype) {
            return true;
        }
        !PSEUDO_FSTYPES.contains(&m.fstype.as_str()) && !self.exclude_fstypes.contains(&m.fstype)
    }

    /// The accepted mounts, one per mount point, ordered by mount point. When several mounts
    /// share a mount point the last one listed is the one visible there (mounts stack), so the
    /// filter judges that one: an overlay stacked on an ext4 directory hides the ext4.
    pub fn select(&self, mounts: Vec<Mount>) -> Vec<Mount> {
        let visible: BTreeMap<String, Mount> =
            mounts.into_iter().map(|m| (m.mount_point.clone(), m)).collect();
        visible.into_values().filter(|m| self.accepts(m)).collect()
    }
}

fn is_at_or_below(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        // "/" (or "") is above everything.
        return true;
    }
    path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The mounts listed in a `/proc/mounts`-format file; empty if it cannot be read.
pub async fn read_mounts(path: &Path) -> Vec<Mount> {
    match tokio::fs::read(path).await {
        Ok(bytes) => parse_mounts(&bytes),
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "cannot read the mount table");
            Vec::new()
        }
    }
}

/// Parses `/proc/mounts` text. Bytes rather than `str`: mount points are whatever bytes the
/// kernel was given, and one non-UTF-8 path must not hide every other mount.
pub fn parse_mounts(text: &[u8]) -> Vec<Mount> {
    text.split(|&b| b == b'\n')
        .filter_map(|line| {
            let mut fields = line.split(|&b| b == b' ' || b == b'\t').filter(|f| !f.is_empty());
            let device = fields.next()?;
            let mount_point = fields.next()?;
            let fstype = fields.next()?;
            Some(Mount {
                device: unescape(device),
                mount_point: unescape(mount_point),
                fstype: unescape(fstype),
            })
        })
        .collect()
}

/// Decodes the kernel's `\ooo` escapes (it writes space, tab, newline and backslash that way,
/// since the fields are space-separated); anything else is kept as it is.
fn unescape(field: &[u8]) -> String {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\'
            && let Some(digits) = field.get(i + 1..i + 4)
            && let Some(byte) = octal_byte(digits)
        {
            out.push(byte);
            i += 4;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn octal_byte(digits: &[u8]) -> Option<u8> {
    digits.iter().try_fold(0u8, |acc, &d| {
        let value = (d as char).to_digit(8)?;
        acc.checked_mul(8)?.checked_add(u8::try_from(value).ok()?)
    })
}

/// Space on one filesystem, in bytes, counted the way `df` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub total_bytes: u64,
    /// Blocks in use, including those reserved for root: `(blocks - free) * fragment size`.
    pub used_bytes: u64,
    /// What an unprivileged user can still write (excludes the root reserve).
    pub available_bytes: u64,
}

/// The usage of the filesystem mounted at `mount_point`, or `None` if it cannot be queried
/// within `timeout`.
///
/// `statvfs` blocks in the kernel, indefinitely on a dead NFS server, so it runs on the blocking
/// pool. On timeout the thread stays stuck there until the kernel lets go; the caller just stops
/// waiting for it.
pub async fn usage(mount_point: &str, timeout: Duration) -> Option<Usage> {
    let path = mount_point.to_owned();
    let query = tokio::task::spawn_blocking(move || nix::sys::statvfs::statvfs(path.as_str()));
    match tokio::time::timeout(timeout, query).await {
        Ok(Ok(Ok(stat))) => {
            // A no-op on 64-bit targets; `c_ulong` and `fsblkcnt_t` are 32 bits on 32-bit ARM.
            #[allow(clippy::useless_conversion)]
            let (fragment, blocks, free, available) = (
                u64::from(stat.fragment_size()),
                u64::from(stat.blocks()),
                u64::from(stat.blocks_free()),
                u64::from(stat.blocks_available()),
            );
            Some(Usage {
                total_bytes: blocks.saturating_mul(fragment),
                used_bytes: blocks.saturating_sub(free).saturating_mul(fragment),
                available_bytes: available.saturating_mul(fragment),
            })
        }
        Ok(Ok(Err(e))) => {
            tracing::debug!(mount_point, error = %e, "statvfs failed");
            None
        }
        Ok(Err(e)) => {
            tracing::warn!(mount_point, error = %e, "statvfs task failed");
            None
        }
        Err(_) => {
            tracing::warn!(mount_point, ?timeout, "statvfs did not answer in time (dead network mount?)");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from a Debian 12 host running Docker (one container), trimmed, with a space
    /// in a USB label added the way the kernel writes it.
    const PROC_MOUNTS: &str = "\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
udev /dev devtmpfs rw,nosuid,relatime,size=8119892k,nr_inodes=2029973,mode=755,inode64 0 0
devpts /dev/pts devpts rw,nosuid,noexec,relatime,gid=5,mode=620,ptmxmode=000 0 0
tmpfs /run tmpfs rw,nosuid,nodev,noexec,relatime,size=1630244k,mode=755,inode64 0 0
/dev/nvme0n1p2 / ext4 rw,relatime,errors=remount-ro 0 0
securityfs /sys/kernel/security securityfs rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /dev/shm tmpfs rw,nosuid,nodev,inode64 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate,memory_recursiveprot 0 0
bpf /sys/fs/bpf bpf rw,nosuid,nodev,noexec,relatime,mode=700 0 0
systemd-1 /proc/sys/fs/binfmt_misc autofs rw,relatime,fd=30,pgrp=1,timeout=0,minproto=5,maxproto=5,direct 0 0
mqueue /dev/mqueue mqueue rw,nosuid,nodev,noexec,relatime 0 0
/dev/nvme0n1p1 /boot/efi vfat rw,relatime,fmask=0077,dmask=0077,codepage=437,iocharset=ascii 0 0
/dev/sda1 /srv/data xfs rw,relatime,attr2,inode64,logbufs=8,logbsize=32k,noquota 0 0
/dev/sdb1 /media/USB\\040Stick vfat rw,nosuid,nodev,relatime,uid=1000 0 0
overlay /var/lib/docker/overlay2/3f0c9e5b/merged overlay rw,relatime,lowerdir=/var/lib/docker/overlay2/l/ABC:/var/lib/docker/overlay2/l/DEF,upperdir=/var/lib/docker/overlay2/3f0c9e5b/diff,workdir=/var/lib/docker/overlay2/3f0c9e5b/work 0 0
nsfs /run/docker/netns/5f1e2a3b nsfs rw 0 0
tmpfs /run/user/1000 tmpfs rw,nosuid,nodev,relatime,size=1630240k,nr_inodes=407560,mode=700,uid=1000,gid=1000,inode64 0 0
/dev/loop0 /snap/core22/1380 squashfs ro,nodev,relatime,errors=continue 0 0
";

    fn points(mounts: &[Mount]) -> Vec<&str> {
        mounts.iter().map(|m| m.mount_point.as_str()).collect()
    }

    #[test]
    fn decodes_octal_escapes() {
        assert_eq!(unescape(br"/media/USB\040Stick"), "/media/USB Stick");
        assert_eq!(unescape(br"/a\011b\012c\134d"), "/a\tb\nc\\d");
        // Not an escape: fewer than three octal digits, or not octal at all, stays as written.
        assert_eq!(unescape(br"/x\04"), r"/x\04");
        assert_eq!(unescape(br"/x\089"), r"/x\089");
        // Bytes that are not UTF-8 do not lose the rest of the path.
        assert_eq!(unescape(br"/data\377x"), "/data\u{fffd}x");
    }

    #[test]
    fn default_filter_keeps_real_filesystems_only() {
        let mounts = parse_mounts(PROC_MOUNTS.as_bytes());
        assert_eq!(mounts.len(), 19);
        let usb = mounts.iter().find(|m| m.device == "/dev/sdb1").expect("usb line parsed");
        assert_eq!(usb.mount_point, "/media/USB Stick");
        assert_eq!(usb.fstype, "vfat");

        let selected = MountFilter::default().select(mounts);
        assert_eq!(points(&selected), ["/", "/boot/efi", "/media/USB Stick", "/srv/data"]);
        assert_eq!(
            selected[0],
            Mount { device: "/dev/nvme0n1p2".into(), mount_point: "/".into(), fstype: "ext4".into() }
        );
    }

    #[test]
    fn include_overrides_the_pseudo_list_and_excludes_add_to_it() {
        let filter = MountFilter {
            include_fstypes: vec!["tmpfs".into()],
            exclude_fstypes: vec!["vfat".into()],
            exclude_mount_prefixes: vec!["/run/user/".into()],
        };
        let selected = filter.select(parse_mounts(PROC_MOUNTS.as_bytes()));
        assert_eq!(points(&selected), ["/", "/dev/shm", "/run", "/srv/data"]);
    }

    #[test]
    fn mount_prefixes_match_whole_path_components() {
        let filter = MountFilter {
            exclude_mount_prefixes: vec!["/srv/da".into(), "/boot".into()],
            ..Default::default()
        };
        let selected = filter.select(parse_mounts(PROC_MOUNTS.as_bytes()));
        assert_eq!(points(&selected), ["/", "/media/USB Stick", "/srv/data"]);
    }

    #[test]
    fn the_last_mount_on_a_mount_point_is_the_visible_one() {
        let text = "\
/dev/sda1 /data ext4 rw 0 0
/dev/sdb1 /data xfs rw 0 0
/dev/sdc1 /web ext4 rw 0 0
overlay /web overlay rw 0 0
";
        let selected = MountFilter::default().select(parse_mounts(text.as_bytes()));
        assert_eq!(
            selected,
            [Mount { device: "/dev/sdb1".into(), mount_point: "/data".into(), fstype: "xfs".into() }]
        );
    }

    #[tokio::test]
    async fn read_mounts_of_a_missing_file_is_empty() {
        assert!(read_mounts(Path::new("/nonexistent/tailops/mounts")).await.is_empty());
        assert!(!read_mounts(Path::new("/proc/mounts")).await.is_empty());
    }

    #[tokio::test]
    async fn usage_of_the_root_filesystem() {
        let root = usage("/", Duration::from_secs(10)).await.expect("statvfs(/) answers");
        assert!(root.total_bytes > 0);
        assert!(root.used_bytes <= root.total_bytes);
        assert!(root.available_bytes <= root.total_bytes);
        assert!(usage("/nonexistent/tailops", Duration::from_secs(10)).await.is_none());
    }
}
