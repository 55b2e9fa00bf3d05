//! Host facts (inventory): a flat map of dotted keys to strings, so that a change is one key's
//! old and new value. The agent collects them at connect and periodically, and sends diffs.
//!
//! Each source lives in its own module and returns the keys it could establish. Anything that
//! cannot be read, is not installed or does not answer in time is simply absent: one source
//! never stops another, and nothing blocks the runtime (files through `tokio::fs`, commands
//! through [`command`] with a timeout, `statvfs` on the blocking pool).
//!
//! Values are plain strings: numbers in decimal, lists comma-separated and sorted, so the same
//! state always reads the same and a diff shows only real changes.

mod apps;
mod command;

pub(crate) use command::find_program;
mod cpu;
mod disks;
mod docker;
mod memory;
pub(crate) mod net;
mod os;
mod systemd;
mod tailscale;
#[cfg(test)]
mod testutil;
mod virt;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::mounts::MountFilter;

/// Dotted key → value, ordered so that the same facts always serialize the same way.
pub type Facts = BTreeMap<String, String>;

/// Where facts come from. The defaults describe the host the agent runs on.
#[derive(Debug, Clone)]
pub struct FactsConfig {
    /// How long one external command or one filesystem query may take.
    pub command_timeout: Duration,
    /// A program name (looked up in `PATH`) or a path.
    pub tailscale_bin: PathBuf,
    pub systemctl_bin: PathBuf,
    pub docker_bin: PathBuf,
    /// Which mounts are reported as disks.
    pub mounts: MountFilter,
    /// Where the host's `/proc`, `/sys`, `/etc` and `/run` are found: `/` on the host, a
    /// fixture tree in tests. Commands and `getifaddrs` always describe the running system.
    pub root: PathBuf,
}

impl Default for FactsConfig {
    fn default() -> Self {
        Self {
            command_timeout: Duration::from_secs(5),
            tailscale_bin: PathBuf::from("tailscale"),
            systemctl_bin: PathBuf::from("systemctl"),
            docker_bin: PathBuf::from("docker"),
            mounts: MountFilter::default(),
            root: PathBuf::from("/"),
        }
    }
}

/// Collects every fact it can; never fails. The sources run concurrently; application
/// detection runs last because it reads the units and containers the others found.
pub async fn collect(config: &FactsConfig) -> Facts {
    let root = config.root.as_path();
    let timeout = config.command_timeout;
    let (os, cpu, memory, disks, net, virt, tailscale, systemd, docker) = tokio::join!(
        os::collect(root),
        cpu::collect(root),
        memory::collect(root),
        disks::collect(root, &config.mounts, timeout),
        net::collect(root),
        virt::collect(root),
        tailscale::collect(&config.tailscale_bin, timeout),
        systemd::collect(root, &config.systemctl_bin, timeout),
        docker::collect(&config.docker_bin, timeout),
    );
    let mut facts = Facts::new();
    for part in [os, cpu, memory, disks, net, virt, tailscale, systemd, docker] {
        facts.extend(part);
    }
    let apps = apps::collect(root, &facts).await;
    facts.extend(apps);
    facts
}

/// What changed between two collections: keys to (re)set with their new values, and keys gone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FactsDiff {
    pub set: BTreeMap<String, String>,
    /// Sorted.
    pub removed: Vec<String>,
}

impl FactsDiff {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.removed.is_empty()
    }
}

/// The changes that turn `old` into `new`.
pub fn diff(old: &Facts, new: &Facts) -> FactsDiff {
    let set = new
        .iter()
        .filter(|(key, value)| old.get(*key) != Some(*value))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    let removed = old.keys().filter(|key| !new.contains_key(*key)).cloned().collect();
    FactsDiff { set, removed }
}

/// `path` (absolute, as on a live host) inside `root`. `Path::join` would replace the root
/// with an absolute path, hence the stripped `/`.
fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// The text of `path` under `root`, or `None` when it cannot be read: a missing or unreadable
/// file is an absent fact, not an error.
async fn read_text(root: &Path, path: &str) -> Option<String> {
    let path = under(root, path);
    match tokio::fs::read(&path).await {
        Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e) => {
            tracing::trace!(path = %path.display(), error = %e, "fact source unreadable");
            None
        }
    }
}

/// The trimmed first line of `path` under `root`, if not empty (sysfs and procfs attributes).
async fn read_value(root: &Path, path: &str) -> Option<String> {
    let text = read_text(root, path).await?;
    let value = text.lines().next().unwrap_or_default().trim();
    (!value.is_empty()).then(|| value.to_owned())
}

async fn exists(root: &Path, path: &str) -> bool {
    tokio::fs::try_exists(under(root, path)).await.unwrap_or(false)
}

/// Inserts `value` under `key` unless it is empty (an empty value says nothing).
fn insert(facts: &mut Facts, key: impl Into<String>, value: impl Into<String>) {
    let value = value.into();
    if !value.is_empty() {
        facts.insert(key.into(), value);
    }
}

/// The canonical form of a list value: sorted as strings, duplicates dropped, comma-separated.
fn list<I, S>(items: I) -> String
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut items: Vec<String> = items.into_iter().map(Into::into).filter(|s| !s.is_empty()).collect();
    items.sort();
    items.dedup();
    items.join(",")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::mounts;

    fn facts(pairs: &[(&str, &str)]) -> Facts {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn diff_reports_added_changed_and_removed_keys() {
        let old = facts(&[("a", "1"), ("b", "2"), ("c", "3")]);
        let new = facts(&[("a", "1"), ("b", "20"), ("d", "4")]);
        let d = diff(&old, &new);
        assert_eq!(d.set, facts(&[("b", "20"), ("d", "4")]));
        assert_eq!(d.removed, ["c"]);
        assert!(!d.is_empty());

        assert!(diff(&new, &new).is_empty());
        let from_nothing = diff(&Facts::new(), &new);
        assert_eq!(from_nothing.set, new);
        assert!(from_nothing.removed.is_empty());
        let to_nothing = diff(&new, &Facts::new());
        assert_eq!(to_nothing.removed, ["a", "b", "d"]);
        assert!(to_nothing.set.is_empty());
    }

    #[test]
    fn list_values_are_canonical() {
        assert_eq!(list(["b", "a", "", "b"]), "a,b");
        assert_eq!(list(Vec::<String>::new()), "");
    }

    #[test]
    fn paths_are_resolved_under_the_root() {
        assert_eq!(under(Path::new("/"), "/proc/meminfo"), Path::new("/proc/meminfo"));
        assert_eq!(under(Path::new("/tmp/x"), "/proc/meminfo"), Path::new("/tmp/x/proc/meminfo"));
    }

    async fn first_number(path: &str, key: &str) -> u64 {
        let text = tokio::fs::read_to_string(path).await.expect("readable");
        let line = text.lines().find(|l| l.starts_with(key)).expect("key present");
        line.split_whitespace().nth(1).expect("value").parse().expect("number")
    }

    /// Collects on this machine and checks the results against the kernel's own files.
    #[tokio::test]
    async fn collect_describes_this_machine() {
        let facts = collect(&FactsConfig::default()).await;

        let mem_kib = first_number("/proc/meminfo", "MemTotal:").await;
        assert_eq!(facts.get("memory.total_bytes"), Some(&(mem_kib * 1024).to_string()));

        let kernel = tokio::fs::read_to_string("/proc/sys/kernel/osrelease").await.expect("osrelease");
        assert_eq!(facts.get("kernel").map(String::as_str), Some(kernel.trim()));
        assert_eq!(facts.get("hostname"), Some(&crate::host::hostname()));
        assert_eq!(facts.get("arch").map(String::as_str), Some(std::env::consts::ARCH));
        assert_eq!(facts.get("agent.version").map(String::as_str), Some(env!("CARGO_PKG_VERSION")));

        let cpuinfo = tokio::fs::read_to_string("/proc/cpuinfo").await.expect("cpuinfo");
        let processors =
            cpuinfo.lines().filter(|l| l.split(':').next().map(str::trim) == Some("processor")).count();
        assert_eq!(facts.get("cpu.cores"), Some(&processors.to_string()));

        let expected_disks: BTreeSet<String> = MountFilter::default()
            .select(mounts::read_mounts(Path::new("/proc/mounts")).await)
            .into_iter()
            .map(|m| m.mount_point)
            .collect();
        let reported_disks: BTreeSet<String> = facts
            .keys()
            .filter_map(|k| k.strip_prefix("disk.")?.strip_suffix(".fstype"))
            .map(str::to_owned)
            .collect();
        assert_eq!(reported_disks, expected_disks);
        if expected_disks.contains("/") {
            let total: u64 = facts["disk./.total_bytes"].parse().expect("a number");
            assert!(total > 0);
        }

        let mut expected_ifaces = BTreeSet::new();
        let mut dir = tokio::fs::read_dir("/sys/class/net").await.expect("/sys/class/net");
        while let Some(entry) = dir.next_entry().await.expect("readable") {
            let name = entry.file_name().to_string_lossy().into_owned();
            // Container veths come and go with other tests running in parallel.
            if name != "lo" && !name.starts_with("veth") {
                expected_ifaces.insert(name);
            }
        }
        let reported_ifaces: BTreeSet<String> = facts
            .keys()
            .filter_map(|k| k.strip_prefix("net.")?.strip_suffix(".mtu"))
            .filter(|name| !name.starts_with("veth"))
            .map(str::to_owned)
            .collect();
        assert_eq!(reported_ifaces, expected_ifaces);
        assert!(facts.keys().all(|k| !k.starts_with("net.lo.")));
        for iface in &expected_ifaces {
            let mtu = tokio::fs::read_to_string(format!("/sys/class/net/{iface}/mtu")).await.expect("mtu");
            assert_eq!(facts[&format!("net.{iface}.mtu")], mtu.trim());
        }

        assert!(matches!(
            facts.get("virt.kind").map(String::as_str),
            Some("bare-metal" | "vm" | "container")
        ));
        if tokio::fs::try_exists("/.dockerenv").await.unwrap_or(false) {
            assert_eq!(facts.get("virt.kind").map(String::as_str), Some("container"));
        }
    }

    /// Runs the real collector against the real Docker engine when there is one.
    #[tokio::test]
    async fn docker_is_reported_when_the_engine_answers() {
        let info = tokio::process::Command::new("docker")
            .arg("info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .status();
        let engine =
            matches!(tokio::time::timeout(Duration::from_secs(30), info).await, Ok(Ok(s)) if s.success());
        if !engine {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but `docker info` fails");
            println!("skipped: no Docker engine answers `docker info` here");
            return;
        }
        let config = FactsConfig { command_timeout: Duration::from_secs(30), ..FactsConfig::default() };
        let facts = collect(&config).await;
        assert_eq!(facts.get("capability.docker").map(String::as_str), Some("yes"));
    }

    #[tokio::test]
    async fn missing_programs_leave_their_keys_absent() {
        let config = FactsConfig {
            tailscale_bin: PathBuf::from("tailops-test-no-such-program"),
            systemctl_bin: PathBuf::from("/nonexistent/systemctl"),
            docker_bin: PathBuf::from("/nonexistent/docker"),
            ..FactsConfig::default()
        };
        let facts = collect(&config).await;
        let from_commands = ["tailscale.", "unit.", "container.", "capability."];
        let leaked: Vec<&String> =
            facts.keys().filter(|k| from_commands.iter().any(|p| k.starts_with(p))).collect();
        assert!(leaked.is_empty(), "{leaked:?}");
        // The file-based sources are unaffected.
        assert!(facts.contains_key("memory.total_bytes"));
        assert!(facts.contains_key("kernel"));
    }
}
