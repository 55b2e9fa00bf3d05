//! A host's health: a score out of 100 from resource pressure, failed units and staleness, with
//! one reason per deduction so an operator sees why, not just a number.

use tailops_proto::time::format_ms;
use tailops_proto::v1;

use crate::config::HealthThresholds;

/// Everything the score is computed from.
#[derive(Debug, Clone, Copy)]
pub struct HealthInput<'a> {
    pub online: bool,
    pub last_seen_ms: i64,
    pub latest: Option<&'a v1::MetricSample>,
    pub failed_units: &'a [String],
    pub cores: Option<u32>,
    /// Controller minus host clock, when measured.
    pub clock_offset_ms: Option<i64>,
    pub now_ms: i64,
    pub stale_after_ms: i64,
}

/// Healthy from this score up, degraded from `DEGRADED_FROM`, unhealthy below.
const HEALTHY_FROM: u32 = 80;
const DEGRADED_FROM: u32 = 50;
/// Failed units cost this much each, up to `MAX_UNIT_PENALTY`.
const UNIT_PENALTY: u32 = 20;
const MAX_UNIT_PENALTY: u32 = 60;
/// A clock a minute or more off: samples are re-timed, but logs, certificates and schedules on
/// the host are not; worth a look, not an alarm.
const CLOCK_PENALTY: u32 = 10;
/// Failed units named in the reasons; the rest are counted.
const NAMED_UNITS: usize = 5;

pub fn assess(input: &HealthInput<'_>, limits: &HealthThresholds) -> v1::Health {
    let mut reasons = Vec::new();
    if !input.online {
        let since = if input.last_seen_ms > 0 {
            format!("; last seen {}", format_ms(input.last_seen_ms))
        } else {
            "; never connected".to_owned()
        };
        reasons.push(format!("offline{since}"));
        return unknown(reasons, input.latest.is_some_and(|s| is_stale(s, input)));
    }
    let Some(sample) = input.latest else {
        reasons.push("no metrics received yet".to_owned());
        return unknown(reasons, false);
    };
    if is_stale(sample, input) {
        reasons.push(format!(
            "stale: newest sample is {} s old (taken {})",
            (input.now_ms - sample.at_ms) / 1000,
            format_ms(sample.at_ms)
        ));
        return unknown(reasons, true);
    }

    let mut penalty = 0u32;
    let mut check = |value: f64, warn: f64, crit: f64, what: &str| {
        if value >= crit {
            penalty += 50;
            reasons.push(format!("{what} at {value:.0}% (critical from {crit:.0}%)"));
        } else if value >= warn {
            penalty += 20;
            reasons.push(format!("{what} at {value:.0}% (warning from {warn:.0}%)"));
        }
    };
    check(sample.cpu_percent, limits.cpu_warn, limits.cpu_crit, "CPU");
    check(sample.memory_percent(), limits.memory_warn, limits.memory_crit, "memory");
    if let Some(disk) = sample.fullest_disk() {
        check(disk.1, limits.disk_warn, limits.disk_crit, &format!("disk {}", disk.0));
    }
    let swap = sample.swap_percent();
    if swap >= limits.swap_warn {
        penalty += 10;
        reasons.push(format!("swap at {swap:.0}% (warning from {:.0}%)", limits.swap_warn));
    }
    if let Some(cores) = input.cores.filter(|c| *c > 0) {
        let per_core = sample.load1 / f64::from(cores);
        if per_core >= limits.load_per_core_warn {
            penalty += 15;
            reasons.push(format!(
                "load {:.2} on {cores} cores ({per_core:.1} per core, warning from {:.1})",
                sample.load1, limits.load_per_core_warn
            ));
        }
    }
    if let Some(reason) = input.clock_offset_ms.and_then(super::clock::reason) {
        penalty += CLOCK_PENALTY;
        reasons.push(reason);
    }
    if !input.failed_units.is_empty() {
        let n = u32::try_from(input.failed_units.len()).unwrap_or(u32::MAX);
        penalty += n.saturating_mul(UNIT_PENALTY).min(MAX_UNIT_PENALTY);
        let mut named = input.failed_units.iter().take(NAMED_UNITS).cloned().collect::<Vec<_>>().join(", ");
        if input.failed_units.len() > NAMED_UNITS {
            named.push_str(&format!(" and {} more", input.failed_units.len() - NAMED_UNITS));
        }
        reasons.push(format!("{n} failed unit(s): {named}"));
    }

    let score = 100u32.saturating_sub(penalty);
    let status = if score >= HEALTHY_FROM {
        v1::HealthStatus::Healthy
    } else if score >= DEGRADED_FROM {
        v1::HealthStatus::Degraded
    } else {
        v1::HealthStatus::Unhealthy
    };
    v1::Health { score, status: status as i32, reasons, stale: false }
}

fn unknown(reasons: Vec<String>, stale: bool) -> v1::Health {
    v1::Health { score: 0, status: v1::HealthStatus::Unknown as i32, reasons, stale }
}

fn is_stale(sample: &v1::MetricSample, input: &HealthInput<'_>) -> bool {
    input.now_ms - sample.at_ms > input.stale_after_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const NOW: i64 = 1_800_000_000_000;

    fn sample(cpu: f64, mem_used: u64, disk_used: u64) -> v1::MetricSample {
        v1::MetricSample {
            at_ms: NOW - 5_000,
            cpu_percent: cpu,
            load1: 0.5,
            mem_total_bytes: 16 * GIB,
            mem_used_bytes: mem_used,
            disks: vec![
                v1::DiskUsage {
                    mount: "/".into(),
                    filesystem: "ext4".into(),
                    used_bytes: 10 * GIB,
                    total_bytes: 100 * GIB,
                },
                v1::DiskUsage {
                    mount: "/srv".into(),
                    filesystem: "xfs".into(),
                    used_bytes: disk_used,
                    total_bytes: 100 * GIB,
                },
            ],
            ..Default::default()
        }
    }

    fn input<'a>(latest: Option<&'a v1::MetricSample>, failed: &'a [String]) -> HealthInput<'a> {
        HealthInput {
            online: true,
            last_seen_ms: NOW,
            latest,
            failed_units: failed,
            cores: Some(4),
            clock_offset_ms: Some(30),
            now_ms: NOW,
            stale_after_ms: 60_000,
        }
    }

    #[test]
    fn a_quiet_host_is_healthy_with_no_reasons() {
        let s = sample(12.0, 4 * GIB, 20 * GIB);
        let h = assess(&input(Some(&s), &[]), &HealthThresholds::default());
        assert_eq!((h.score, h.status(), h.reasons.len()), (100, v1::HealthStatus::Healthy, 0));
    }

    #[test]
    fn every_deduction_names_its_cause() {
        let s = sample(99.0, 15 * GIB, 96 * GIB);
        let failed = vec!["nginx.service".to_owned()];
        let h = assess(&input(Some(&s), &failed), &HealthThresholds::default());
        assert_eq!(h.status(), v1::HealthStatus::Unhealthy);
        assert_eq!(h.score, 0);
        let all = h.reasons.join("\n");
        assert!(all.contains("CPU at 99%"), "{all}");
        assert!(all.contains("memory at 94%"), "{all}");
        assert!(all.contains("disk /srv at 96%"), "{all}");
        assert!(all.contains("1 failed unit(s): nginx.service"), "{all}");
    }

    #[test]
    fn a_wrong_clock_is_a_reason_not_an_alarm() {
        let s = sample(5.0, 4 * GIB, 20 * GIB);
        let skewed = HealthInput { clock_offset_ms: Some(-600_000), ..input(Some(&s), &[]) };
        let h = assess(&skewed, &HealthThresholds::default());
        assert_eq!((h.score, h.status()), (90, v1::HealthStatus::Healthy));
        assert!(h.reasons[0].starts_with("clock 10m 0s ahead of the controller's"), "{:?}", h.reasons);
    }

    #[test]
    fn one_warning_degrades_only_a_little() {
        let s = sample(90.0, 4 * GIB, 20 * GIB);
        let h = assess(&input(Some(&s), &[]), &HealthThresholds::default());
        assert_eq!((h.score, h.status()), (80, v1::HealthStatus::Healthy));
        let failed: Vec<String> = (0..7).map(|i| format!("u{i}.service")).collect();
        let h = assess(&input(Some(&s), &failed), &HealthThresholds::default());
        assert_eq!((h.score, h.status()), (20, v1::HealthStatus::Unhealthy));
        assert!(h.reasons[1].ends_with("and 2 more"), "{:?}", h.reasons);
    }

    #[test]
    fn stale_and_offline_hosts_are_unknown() {
        let mut s = sample(1.0, GIB, GIB);
        s.at_ms = NOW - 120_000;
        let h = assess(&input(Some(&s), &[]), &HealthThresholds::default());
        assert_eq!(h.status(), v1::HealthStatus::Unknown);
        assert!(h.stale);
        assert!(h.reasons[0].starts_with("stale: newest sample is 120 s old"), "{:?}", h.reasons);

        let mut offline = input(Some(&s), &[]);
        offline.online = false;
        let h = assess(&offline, &HealthThresholds::default());
        assert_eq!(h.status(), v1::HealthStatus::Unknown);
        assert!(h.reasons[0].starts_with("offline; last seen"), "{:?}", h.reasons);

        let h = assess(&input(None, &[]), &HealthThresholds::default());
        assert_eq!(h.reasons, vec!["no metrics received yet".to_owned()]);
    }

    #[test]
    fn load_is_judged_per_core() {
        let mut s = sample(10.0, GIB, GIB);
        s.load1 = 9.0;
        let h = assess(&input(Some(&s), &[]), &HealthThresholds::default());
        assert_eq!(h.score, 85);
        assert!(h.reasons[0].contains("2.2 per core"), "{:?}", h.reasons);
    }
}
