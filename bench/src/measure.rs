//! Measurements: runtime scheduling lag, CPU per runtime and RSS from /proc, percentiles.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// Percentiles of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(samples: &[Duration]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        let mut sorted: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        sorted.sort_by(f64::total_cmp);
        let at = |q: f64| {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
            let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
            sorted[i.min(sorted.len() - 1)]
        };
        Self { count: sorted.len(), p50_ms: at(0.5), p90_ms: at(0.9), p99_ms: at(0.99), max_ms: at(1.0) }
    }
}

/// How late the controller's runtime runs work that became ready, measured two ways.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Lag {
    /// How long a task woken from outside the runtime waits before it runs: a thread with a
    /// precise 1 ms clock sends each tick to a task on the runtime, which notes how late it got
    /// it. This is what a blocked or saturated runtime delays (I/O readiness, channel messages),
    /// with no timer resolution in it.
    pub wakeup: Percentiles,
    /// How late a tokio 1 ms interval tick fires. Tokio's timer has 1 ms resolution and rounds
    /// deadlines up, so an idle runtime already shows about 1 ms here.
    pub timer_tick: Percentiles,
}

impl std::fmt::Display for Lag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (w, t) = (&self.wakeup, &self.timer_tick);
        write!(
            f,
            "lag: wake-up p50 {:.2} p99 {:.2} max {:.2} ms, timer tick p50 {:.2} p99 {:.2} max {:.2} ms",
            w.p50_ms, w.p99_ms, w.max_ms, t.p50_ms, t.p99_ms, t.max_ms
        )
    }
}

/// Runs both [`Lag`] probes on a runtime until dropped.
#[derive(Debug, Clone)]
pub struct LagProbe {
    wakeups: Arc<Mutex<Vec<Duration>>>,
    ticks: Arc<Mutex<Vec<Duration>>>,
    stop: CancellationToken,
}

impl LagProbe {
    pub fn start(runtime: &Handle) -> Self {
        let wakeups = Arc::new(Mutex::new(Vec::with_capacity(100_000)));
        let ticks = Arc::new(Mutex::new(Vec::with_capacity(100_000)));
        let stop = CancellationToken::new();

        let (sink, until) = (ticks.clone(), stop.clone());
        runtime.spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_millis(1));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    () = until.cancelled() => return,
                    scheduled = ticker.tick() => {
                        let late = tokio::time::Instant::now().saturating_duration_since(scheduled);
                        lock(&sink).push(late);
                    }
                }
            }
        });

        let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel::<std::time::Instant>();
        let until = stop.clone();
        // A blocking-pool thread, so its clock does not depend on the runtime it measures.
        runtime.spawn_blocking(move || {
            while !until.is_cancelled() {
                #[allow(clippy::disallowed_methods)] // on a blocking-pool thread, by design
                std::thread::sleep(Duration::from_millis(1));
                if sent_tx.send(std::time::Instant::now()).is_err() {
                    return;
                }
            }
        });
        let (sink, until) = (wakeups.clone(), stop.clone());
        runtime.spawn(async move {
            loop {
                tokio::select! {
                    () = until.cancelled() => return,
                    sent = sent_rx.recv() => match sent {
                        Some(sent) => lock(&sink).push(sent.elapsed()),
                        None => return,
                    },
                }
            }
        });
        Self { wakeups, ticks, stop }
    }

    /// Forgets what was measured so far (to measure one phase).
    pub fn reset(&self) {
        lock(&self.wakeups).clear();
        lock(&self.ticks).clear();
    }

    pub fn lag(&self) -> Lag {
        Lag { wakeup: Percentiles::of(&lock(&self.wakeups)), timer_tick: Percentiles::of(&lock(&self.ticks)) }
    }
}

fn lock(samples: &Mutex<Vec<Duration>>) -> std::sync::MutexGuard<'_, Vec<Duration>> {
    samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Drop for LagProbe {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn clock_ticks_per_second() -> f64 {
    // Linux reports /proc CPU times in USER_HZ, which is 100 on every mainstream configuration.
    100.0
}

/// CPU seconds used so far, split between the controller and the load generator.
/// [`CpuTimes::now`] splits this process's threads by name; with the controller in its own
/// process, `Bench::cpu_times` takes each process whole.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuTimes {
    /// Controller runtime threads plus SQLite worker threads (or the controller's process).
    pub controller_s: f64,
    /// Everything else: simulated agents, the client, the harness.
    pub agents_s: f64,
    pub total_s: f64,
}

impl CpuTimes {
    pub async fn now() -> Self {
        let mut times = Self::default();
        let Ok(mut tasks) = tokio::fs::read_dir("/proc/self/task").await else { return times };
        while let Ok(Some(task)) = tasks.next_entry().await {
            let path = task.path();
            let name = tokio::fs::read_to_string(path.join("comm")).await.unwrap_or_default();
            let Ok(stat) = tokio::fs::read_to_string(path.join("stat")).await else { continue };
            // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
            let seconds = (ticks(11) + ticks(12)) / clock_ticks_per_second();
            let name = name.trim();
            if name.starts_with("ctl-rt") || name.starts_with("sqlx-sqlite") {
                times.controller_s += seconds;
            }
        }
        // Threads that exited (idle blocking-pool threads) leave /proc/self/task but stay in the
        // process total, so everything not attributed to the controller is the load generator's.
        times.total_s = process_cpu_seconds("self").await;
        times.agents_s = (times.total_s - times.controller_s).max(0.0);
        times
    }

    pub fn since(self, earlier: Self) -> Self {
        Self {
            controller_s: self.controller_s - earlier.controller_s,
            agents_s: self.agents_s - earlier.agents_s,
            total_s: self.total_s - earlier.total_s,
        }
    }
}

/// Resident set size of a process in bytes (`self` or a pid).
pub async fn rss_bytes(pid: &str) -> u64 {
    status_kib(pid, "VmRSS:").await
}

/// The anonymous part of the resident set (heap, stacks), in bytes: what a leak grows.
pub async fn rss_anon_bytes(pid: &str) -> u64 {
    status_kib(pid, "RssAnon:").await
}

/// The file-backed part of the resident set (the binary's pages, mapped files), in bytes.
pub async fn rss_file_bytes(pid: &str) -> u64 {
    status_kib(pid, "RssFile:").await
}

/// The most resident memory the process ever had, in bytes.
pub async fn peak_rss_bytes(pid: &str) -> u64 {
    status_kib(pid, "VmHWM:").await
}

async fn status_kib(pid: &str, field: &str) -> u64 {
    let status = tokio::fs::read_to_string(format!("/proc/{pid}/status")).await.unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// CPU seconds used by process `pid` (user + system).
pub async fn process_cpu_seconds(pid: &str) -> f64 {
    stat_seconds(pid, 11, 12).await
}

/// CPU seconds used by the commands `pid` ran and waited for (cutime + cstime).
pub async fn children_cpu_seconds(pid: &str) -> f64 {
    stat_seconds(pid, 13, 14).await
}

/// The sum of two clock-tick fields of `/proc/PID/stat` (counted after the command name), in seconds.
async fn stat_seconds(pid: &str, a: usize, b: usize) -> f64 {
    let stat = tokio::fs::read_to_string(format!("/proc/{pid}/stat")).await.unwrap_or_default();
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(a) + ticks(b)) / clock_ticks_per_second()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_samples() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p = Percentiles::of(&samples);
        assert_eq!(p.count, 100);
        assert!((p.p50_ms - 51.0).abs() < 1.01, "{p:?}");
        assert!((p.p99_ms - 99.0).abs() < 1.01, "{p:?}");
        assert!((p.max_ms - 100.0).abs() < f64::EPSILON);
    }
}
