//! `disk.<mount point>.{device,fstype,total_bytes}` for each mount the filter accepts.

use std::path::Path;
use std::time::Duration;

use super::{Facts, insert, under};
use crate::mounts::{self, MountFilter};

pub(super) async fn collect(root: &Path, filter: &MountFilter, timeout: Duration) -> Facts {
    let selected = filter.select(mounts::read_mounts(&under(root, "/proc/mounts")).await);
    // Every filesystem is queried at once, so one slow mount costs one timeout, not one each.
    let usages = futures::future::join_all(selected.iter().map(|m| {
        let path = under(root, &m.mount_point);
        async move {
            match path.to_str() {
                Some(path) => mounts::usage(path, timeout).await,
                None => None,
            }
        }
    }))
    .await;

    let mut facts = Facts::new();
    for (mount, usage) in selected.iter().zip(usages) {
        let prefix = format!("disk.{}", mount.mount_point);
        insert(&mut facts, format!("{prefix}.device"), mount.device.as_str());
        insert(&mut facts, format!("{prefix}.fstype"), mount.fstype.as_str());
        if let Some(usage) = usage {
            insert(&mut facts, format!("{prefix}.total_bytes"), usage.total_bytes.to_string());
        }
    }
    facts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::testutil::fixture_root;

    #[tokio::test]
    async fn accepted_mounts_with_sizes_where_they_answer() {
        let mounts = "\
proc /proc proc rw 0 0
/dev/sda1 / ext4 rw 0 0
tmpfs /run tmpfs rw 0 0
/dev/sdb1 /srv/media\\040library xfs rw 0 0
";
        // The fixture root is a real directory, so statvfs of "/" under it answers; the
        // media mount point does not exist there, so its size is absent.
        let root = fixture_root(&[("/proc/mounts", mounts)]).await;
        let facts = collect(root.path(), &MountFilter::default(), Duration::from_secs(10)).await;
        assert_eq!(facts["disk./.device"], "/dev/sda1");
        assert_eq!(facts["disk./.fstype"], "ext4");
        assert!(facts["disk./.total_bytes"].parse::<u64>().expect("number") > 0);
        assert_eq!(facts["disk./srv/media library.fstype"], "xfs");
        assert!(!facts.contains_key("disk./srv/media library.total_bytes"));
        assert!(facts.keys().all(|k| !k.starts_with("disk./run") && !k.starts_with("disk./proc")));
        assert_eq!(facts.len(), 5);
    }
}
