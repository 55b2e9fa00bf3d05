//! Resource sampling and facts, produced independently of the controller link so nothing is
//! missed while it is down: samples wait in a bounded buffer, facts in a watch channel that
//! each session diffs against what it last sent.
//!
//! One long-lived `sysinfo` handle is refreshed for exactly what a sample needs (CPU, memory,
//! network counters); processes are never refreshed on a tick, only for an on-demand process
//! list. `sysinfo` reads `/proc` synchronously, so every refresh runs on the blocking pool.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sysinfo::{
    CpuRefreshKind, MemoryRefreshKind, Networks, ProcessRefreshKind, RefreshKind, System, UpdateKind,
};
use tailops_proto::time::now_ms;
use tailops_proto::v1;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::facts::{self, Facts, FactsConfig};
use crate::mounts;
use crate::ops::OpsConfig;

/// How long one disk's `statvfs` may take before the mount is left out of a sample.
const STATFS_TIMEOUT: Duration = Duration::from_secs(2);
/// Interfaces that mirror traffic already counted on a physical one (container and VM
/// plumbing); they are listed per interface but left out of the host's total.
const VIRTUAL_PREFIXES: &[&str] =
    &["veth", "docker", "br-", "virbr", "cni", "flannel", "cali", "vxlan", "vnet"];
/// CPU usage of processes needs two readings this far apart.
const PROCESS_CPU_WINDOW: Duration = Duration::from_millis(500);
const DEFAULT_PROCESS_LIMIT: u32 = 20;
const MAX_PROCESS_LIMIT: u32 = 500;

#[derive(Debug, Clone)]
pub struct MonitorOptions {
    /// How often a sample is taken, aligned to the wall clock (default 10 s).
    pub sample_interval: Duration,
    /// How often facts are collected again to find changes (default 60 s).
    pub facts_interval: Duration,
    /// Samples kept while the controller is unreachable; the oldest go first (default 1 h).
    pub buffer: usize,
    pub facts: FactsConfig,
}

impl Default for MonitorOptions {
    fn default() -> Self {
        Self {
            sample_interval: Duration::from_secs(10),
            facts_interval: Duration::from_secs(60),
            buffer: 360,
            facts: FactsConfig::default(),
        }
    }
}

/// What link sessions consume: buffered samples and the newest facts.
#[derive(Debug, Clone)]
pub struct MonitorFeed {
    pub samples: Arc<SampleBuffer>,
    pub facts: watch::Receiver<Option<Arc<Facts>>>,
}

/// Starts sampling and fact collection until `shutdown`.
/// `ops` is where operation tools live: the facts say which operation families this host can run.
pub fn start(options: MonitorOptions, ops: Arc<OpsConfig>, shutdown: CancellationToken) -> MonitorFeed {
    let samples = Arc::new(SampleBuffer::new(options.buffer));
    let (facts_tx, facts) = watch::channel(None);
    tokio::spawn(sample_loop(options.clone(), samples.clone(), shutdown.clone()));
    tokio::spawn(facts_loop(options, ops, facts_tx, shutdown));
    MonitorFeed { samples, facts }
}

/// Samples waiting to be sent, oldest first, at most `capacity`.
#[derive(Debug)]
pub struct SampleBuffer {
    queue: Mutex<VecDeque<v1::MetricSample>>,
    capacity: usize,
    ready: Notify,
}

impl SampleBuffer {
    fn new(capacity: usize) -> Self {
        Self { queue: Mutex::new(VecDeque::new()), capacity: capacity.max(1), ready: Notify::new() }
    }

    fn push(&self, sample: v1::MetricSample) {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.len() == self.capacity {
            queue.pop_front();
        }
        queue.push_back(sample);
        drop(queue);
        // A stored permit wakes the next session even if none is waiting now.
        self.ready.notify_one();
    }

    /// Takes everything buffered.
    pub fn drain(&self) -> Vec<v1::MetricSample> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).drain(..).collect()
    }

    /// Resolves when samples may be waiting.
    pub async fn ready(&self) {
        self.ready.notified().await;
    }
}

async fn sample_loop(options: MonitorOptions, buffer: Arc<SampleBuffer>, shutdown: CancellationToken) {
    let interval_ms = u64::try_from(options.sample_interval.as_millis()).unwrap_or(u64::MAX).max(100);
    // Aligned to the wall clock so a fleet's samples line up, offset per agent by up to a tenth
    // of the interval (at most a second) so they do not all arrive in the same millisecond.
    let offset_ms = rand::random_range(0..(interval_ms / 10).clamp(1, 1000));
    let mut sampler = match tokio::task::spawn_blocking(Sampler::new).await {
        Ok(Ok(sampler)) => sampler,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot read this host's resources; no metrics will be sent");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot start the resource sampler; no metrics will be sent");
            return;
        }
    };
    loop {
        let wait = until_next_tick(now_ms(), interval_ms, offset_ms);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let (returned, sample) = take_sample(sampler, &options.facts.mounts).await;
        let Some(returned) = returned else {
            tracing::error!("the resource sampler panicked; no further metrics will be sent");
            return;
        };
        sampler = returned;
        buffer.push(sample);
    }
}

/// Time from `now_ms` to the next instant congruent to `offset_ms` modulo `interval_ms`.
fn until_next_tick(now_ms: i64, interval_ms: u64, offset_ms: u64) -> Duration {
    let interval = i64::try_from(interval_ms).unwrap_or(i64::MAX);
    let offset = i64::try_from(offset_ms).unwrap_or(0) % interval;
    let since = (now_ms - offset).rem_euclid(interval);
    Duration::from_millis(u64::try_from(interval - since).unwrap_or(interval_ms))
}

async fn facts_loop(
    options: MonitorOptions,
    ops: Arc<OpsConfig>,
    facts: watch::Sender<Option<Arc<Facts>>>,
    shutdown: CancellationToken,
) {
    loop {
        let (mut collected, families) =
            tokio::join!(facts::collect(&options.facts), crate::ops::families(&ops));
        collected.insert(crate::ops::FAMILIES_FACT.to_owned(), families.join(","));
        let collected = Arc::new(collected);
        facts.send_if_modified(|current| {
            if current.as_deref() == Some(&*collected) {
                return false;
            }
            *current = Some(collected);
            true
        });
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(options.facts_interval) => {}
        }
    }
}

/// The long-lived `sysinfo` state and what the previous refresh left behind.
#[derive(Debug)]
struct Sampler {
    system: System,
    networks: Networks,
    last_network_refresh: Instant,
}

impl Sampler {
    fn new() -> Result<Self, sysinfo::Error> {
        let mut system = System::new_with_specifics(RefreshKind::nothing())?;
        // CPU usage is a difference between two readings: take the first now.
        system.refresh_cpu_specifics(CpuRefreshKind::nothing().with_usage());
        let networks = Networks::new_with_refreshed_list()?;
        Ok(Self { system, networks, last_network_refresh: Instant::now() })
    }

    /// The part of a sample read through `sysinfo` (called on the blocking pool).
    fn read(&mut self) -> v1::MetricSample {
        self.system.refresh_cpu_specifics(CpuRefreshKind::nothing().with_usage());
        self.system.refresh_memory_specifics(MemoryRefreshKind::everything());
        let elapsed = self.last_network_refresh.elapsed().as_secs_f64().max(0.001);
        self.networks.refresh(true);
        self.last_network_refresh = Instant::now();
        let load = System::load_average().unwrap_or(sysinfo::LoadAvg { one: 0.0, five: 0.0, fifteen: 0.0 });

        let mut interfaces: Vec<v1::InterfaceRate> = self
            .networks
            .iter()
            .filter(|(name, _)| name.as_os_str() != "lo")
            .map(|(name, data)| v1::InterfaceRate {
                name: name.to_string_lossy().into_owned(),
                // Counters since the previous refresh, over the time since then.
                rx_bytes_per_sec: data.received() as f64 / elapsed,
                tx_bytes_per_sec: data.transmitted() as f64 / elapsed,
            })
            .collect();
        interfaces.sort_by(|a, b| a.name.cmp(&b.name));
        let physical = interfaces.iter().filter(|i| !VIRTUAL_PREFIXES.iter().any(|p| i.name.starts_with(p)));
        let (rx, tx) =
            physical.fold((0.0, 0.0), |(rx, tx), i| (rx + i.rx_bytes_per_sec, tx + i.tx_bytes_per_sec));

        let total = self.system.total_memory();
        let available = self.system.available_memory();
        v1::MetricSample {
            at_ms: now_ms(),
            cpu_percent: f64::from(self.system.global_cpu_usage()),
            load1: load.one,
            load5: load.five,
            load15: load.fifteen,
            mem_total_bytes: total,
            // MemAvailable already counts page cache and reclaimable slabs as free.
            mem_used_bytes: total.saturating_sub(available),
            mem_available_bytes: available,
            swap_total_bytes: self.system.total_swap(),
            swap_used_bytes: self.system.used_swap(),
            disks: Vec::new(),
            interfaces,
            net_rx_bytes_per_sec: rx,
            net_tx_bytes_per_sec: tx,
            uptime_secs: System::uptime().unwrap_or(0),
            process_count: process_count(),
        }
    }
}

/// Entries of `/proc` that are processes: a directory listing, far cheaper than reading each.
fn process_count() -> u32 {
    // Runs on the blocking pool with the rest of the sysinfo refresh.
    #[allow(clippy::disallowed_methods)]
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    let count = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
        .count();
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// One full sample: `sysinfo` on the blocking pool, then disk usage per selected mount. The
/// sampler comes back with the sample (`None` if the blocking task panicked).
async fn take_sample(
    mut sampler: Sampler,
    filter: &mounts::MountFilter,
) -> (Option<Sampler>, v1::MetricSample) {
    let read = tokio::task::spawn_blocking(move || {
        let sample = sampler.read();
        (sampler, sample)
    })
    .await;
    let (sampler, mut sample) = match read {
        Ok((sampler, sample)) => (Some(sampler), sample),
        Err(_) => (None, v1::MetricSample { at_ms: now_ms(), ..Default::default() }),
    };
    sample.disks = disk_usage(filter).await;
    (sampler, sample)
}

/// Used and total bytes of every mount the filter selects, as `df` counts them.
pub async fn disk_usage(filter: &mounts::MountFilter) -> Vec<v1::DiskUsage> {
    let selected = filter.select(mounts::read_mounts(std::path::Path::new("/proc/mounts")).await);
    let usages =
        futures::future::join_all(selected.iter().map(|m| mounts::usage(&m.mount_point, STATFS_TIMEOUT)))
            .await;
    selected
        .into_iter()
        .zip(usages)
        .filter_map(|(m, usage)| {
            usage.map(|u| v1::DiskUsage {
                mount: m.mount_point,
                filesystem: m.fstype,
                used_bytes: u.used_bytes,
                total_bytes: u.total_bytes,
            })
        })
        .collect()
}

/// A process's command line as `reach` may see it: whole for control, the program alone (and a
/// note that arguments were hidden) for observe.
fn command_line(cmd: &[std::ffi::OsString], reach: crate::ops::Reach) -> String {
    match (reach, cmd) {
        (crate::ops::Reach::Control, _) => {
            cmd.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
        }
        (crate::ops::Reach::Observe, [program]) => program.to_string_lossy().into_owned(),
        (crate::ops::Reach::Observe, [program, ..]) => {
            format!("{} [arguments hidden below control]", program.to_string_lossy())
        }
        (crate::ops::Reach::Observe, []) => String::new(),
    }
}

/// The top processes by CPU or memory. CPU needs two readings, `PROCESS_CPU_WINDOW` apart.
/// Command lines often carry secrets (passwords, tokens in arguments), so below control reach
/// only the program is shown.
pub async fn process_list(
    action: &v1::ProcessListAction,
    reach: crate::ops::Reach,
) -> Result<v1::ProcessList, String> {
    let limit = match action.limit {
        0 => DEFAULT_PROCESS_LIMIT,
        n if n > MAX_PROCESS_LIMIT => return Err(format!("at most {MAX_PROCESS_LIMIT} processes, not {n}")),
        n => n,
    } as usize;
    let by_memory = action.sort() == v1::ProcessSort::Memory;
    let refresh = ProcessRefreshKind::nothing()
        .with_cpu()
        .with_memory()
        .with_user(UpdateKind::OnlyIfNotSet)
        .with_cmd(UpdateKind::OnlyIfNotSet)
        .without_tasks();
    let first = tokio::task::spawn_blocking(move || {
        let mut system = System::new_with_specifics(RefreshKind::nothing()).map_err(|e| e.to_string())?;
        system.refresh_processes_specifics(sysinfo::ProcessesToUpdate::All, true, refresh);
        Ok::<_, String>(system)
    })
    .await
    .map_err(|e| e.to_string())??;
    tokio::time::sleep(PROCESS_CPU_WINDOW).await;
    tokio::task::spawn_blocking(move || {
        let mut system = first;
        system.refresh_processes_specifics(sysinfo::ProcessesToUpdate::All, true, refresh);
        let users = sysinfo::Users::new_with_refreshed_list().ok();
        let mut processes: Vec<v1::ProcessInfo> = system
            .processes()
            .values()
            .map(|p| v1::ProcessInfo {
                pid: p.pid().as_u32(),
                parent_pid: p.parent().map_or(0, |pp| pp.as_u32()),
                name: p.name().to_string_lossy().into_owned(),
                user: p
                    .user_id()
                    .and_then(|uid| users.as_ref().and_then(|u| u.get_user_by_id(uid)))
                    .map(|u| u.name().to_owned())
                    .or_else(|| p.user_id().map(|uid| uid.to_string()))
                    .unwrap_or_default(),
                cpu_percent: f64::from(p.cpu_usage()),
                memory_bytes: p.memory(),
                started_at_ms: i64::try_from(p.start_time()).unwrap_or(0) * 1000,
                command: command_line(p.cmd(), reach),
                state: p.status().to_string(),
            })
            .collect();
        let total = u32::try_from(processes.len()).unwrap_or(u32::MAX);
        if by_memory {
            processes.sort_by(|a, b| b.memory_bytes.cmp(&a.memory_bytes).then(a.pid.cmp(&b.pid)));
        } else {
            processes.sort_by(|a, b| b.cpu_percent.total_cmp(&a.cpu_percent).then(a.pid.cmp(&b.pid)));
        }
        processes.truncate(limit);
        Ok(v1::ProcessList { processes, total })
    })
    .await
    .map_err(|e| e.to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_align_to_the_wall_clock_plus_the_offset() {
        assert_eq!(until_next_tick(10_000, 10_000, 0), Duration::from_secs(10));
        assert_eq!(until_next_tick(12_500, 10_000, 0), Duration::from_millis(7_500));
        assert_eq!(until_next_tick(12_500, 10_000, 700), Duration::from_millis(8_200));
        assert_eq!(until_next_tick(10_699, 10_000, 700), Duration::from_millis(1));
    }

    #[test]
    fn the_buffer_keeps_the_newest_samples() {
        let buffer = SampleBuffer::new(3);
        for at_ms in 0..5 {
            buffer.push(v1::MetricSample { at_ms, ..Default::default() });
        }
        assert_eq!(buffer.drain().iter().map(|s| s.at_ms).collect::<Vec<_>>(), vec![2, 3, 4]);
        assert!(buffer.drain().is_empty());
    }

    #[tokio::test]
    async fn a_sample_agrees_with_the_kernel() {
        let sampler = Sampler::new().expect("sysinfo works here");
        let (sampler, sample) = take_sample(sampler, &mounts::MountFilter::default()).await;
        assert!(sampler.is_some());
        let meminfo = tokio::fs::read_to_string("/proc/meminfo").await.expect("meminfo");
        let kib = |key: &str| -> u64 {
            let line = meminfo.lines().find(|l| l.starts_with(key)).expect("meminfo key");
            line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("number")
        };
        assert_eq!(sample.mem_total_bytes, kib("MemTotal:") * 1024);
        // Used excludes page cache: it is total minus MemAvailable (read a moment later).
        let used = (kib("MemTotal:") - kib("MemAvailable:")) * 1024;
        let slack = sample.mem_total_bytes / 20;
        assert!(
            sample.mem_used_bytes.abs_diff(used) < slack,
            "used {} vs kernel {used}",
            sample.mem_used_bytes
        );
        assert_eq!(sample.swap_total_bytes, kib("SwapTotal:") * 1024);
        let filtered = mounts::MountFilter::default()
            .select(mounts::read_mounts(std::path::Path::new("/proc/mounts")).await)
            .into_iter()
            .map(|m| m.mount_point)
            .collect::<Vec<_>>();
        assert_eq!(sample.disks.iter().map(|d| d.mount.clone()).collect::<Vec<_>>(), filtered);
        assert!(sample.disks.iter().all(|d| d.total_bytes > 0 && d.used_bytes <= d.total_bytes));
        assert!(sample.process_count > 1);
        assert!(sample.uptime_secs > 0);
        // Container veths come and go with other tests running in parallel.
        let stable = |name: &String| !name.starts_with("veth");
        let names: std::collections::BTreeSet<String> =
            sample.interfaces.iter().map(|i| i.name.clone()).filter(stable).collect();
        let mut sys = tokio::fs::read_dir("/sys/class/net").await.expect("sys/class/net");
        let mut kernel = std::collections::BTreeSet::new();
        while let Some(entry) = sys.next_entry().await.expect("entry") {
            kernel.insert(entry.file_name().to_string_lossy().into_owned());
        }
        kernel.remove("lo");
        kernel.retain(stable);
        assert_eq!(names, kernel);
    }

    #[tokio::test]
    async fn a_process_list_is_sorted_and_capped() {
        use crate::ops::Reach;
        let list = process_list(
            &v1::ProcessListAction { sort: v1::ProcessSort::Memory as i32, limit: 3 },
            Reach::Observe,
        )
        .await
        .expect("list");
        assert_eq!(list.processes.len(), 3);
        assert!(list.total >= 3);
        assert!(list.processes.windows(2).all(|w| w[0].memory_bytes >= w[1].memory_bytes));
        let me = std::process::id();
        let all =
            process_list(&v1::ProcessListAction { sort: 0, limit: 500 }, Reach::Control).await.expect("list");
        assert!(all.processes.iter().any(|p| p.pid == me), "this test process is listed");
        let err =
            process_list(&v1::ProcessListAction { sort: 0, limit: 501 }, Reach::Control).await.unwrap_err();
        assert!(err.contains("at most 500"), "{err}");
    }

    #[test]
    fn command_lines_are_hidden_below_control() {
        use crate::ops::Reach;
        let cmd: Vec<std::ffi::OsString> = ["mysql", "-uroot", "-phunter2"].map(Into::into).into();
        assert_eq!(command_line(&cmd, Reach::Control), "mysql -uroot -phunter2");
        let observed = command_line(&cmd, Reach::Observe);
        assert!(!observed.contains("hunter2"), "{observed}");
        assert!(observed.starts_with("mysql "), "{observed}");
        assert_eq!(command_line(&cmd[..1], Reach::Observe), "mysql");
    }
}
