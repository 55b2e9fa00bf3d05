//! A host's clock against the controller's. The agent stamps its hello and every heartbeat with
//! its wall clock; the difference to the controller's clock on arrival is the host's offset (plus
//! the one-way delay, milliseconds on a tailnet). Samples are stamped by the agent's clock, so a
//! host whose clock is off has them re-timed by this offset: charts, staleness and retention then
//! all run on the controller's clock, and a host ten minutes fast is not refused as "from the
//! future". Certificates need nothing from here: see `pki::ca` for their allowance.

use tailops_proto::v1;

/// Offsets smaller than this are transit and queueing delay, not a wrong clock: samples keep the
/// agent's times.
const RETIME_FROM_MS: i64 = 2_000;
/// From this offset on, the host's health says its clock is wrong.
pub const REPORT_FROM_MS: i64 = 60_000;

/// What one agent stream has measured of its host's clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClockOffset {
    /// Controller time minus agent time, in milliseconds: positive when the host is behind.
    /// `None` until the agent has said its time (agents before this field send 0).
    measured_ms: Option<i64>,
}

impl ClockOffset {
    /// Records the agent's stamped time `agent_ms` as received at the controller's `now_ms`.
    /// A stamp of 0 is "not said" and leaves the measurement as it was.
    pub fn observe(&mut self, agent_ms: i64, now_ms: i64) {
        if agent_ms != 0 {
            self.measured_ms = Some(now_ms.saturating_sub(agent_ms));
        }
    }

    /// The measured offset, if any.
    pub fn measured_ms(self) -> Option<i64> {
        self.measured_ms
    }

    /// What to add to the host's sample times to put them on the controller's clock.
    pub fn correction_ms(self) -> i64 {
        self.measured_ms.filter(|offset| offset.saturating_abs() >= RETIME_FROM_MS).unwrap_or(0)
    }
}

/// Puts a batch's sample times on the controller's clock (before they are validated).
pub fn retime(batch: &mut v1::MetricsBatch, clock: ClockOffset) {
    let correction = clock.correction_ms();
    if correction != 0 {
        for sample in &mut batch.samples {
            sample.at_ms = sample.at_ms.saturating_add(correction);
        }
    }
}

/// The health reason for a host whose clock is `offset_ms` off, when it is far enough off to say.
pub fn reason(offset_ms: i64) -> Option<String> {
    if offset_ms.saturating_abs() < REPORT_FROM_MS {
        return None;
    }
    let direction = if offset_ms > 0 { "behind" } else { "ahead of" };
    Some(format!(
        "clock {} {direction} the controller's (its samples are re-timed; fix the host's time sync, e.g. NTP)",
        span(offset_ms.unsigned_abs().saturating_add(500) / 1000)
    ))
}

/// `2d 3h`, `1h 5m`, `10m 0s`, `45s`: the two largest units.
fn span(secs: u64) -> String {
    let (days, hours, minutes, seconds) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {minutes}m")
    } else if minutes > 0 {
        format!("{minutes}m {seconds}s")
    } else {
        format!("{seconds}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn a_host_ten_minutes_behind_is_retimed_and_reported() {
        let mut clock = ClockOffset::default();
        clock.observe(NOW - 600_000 - 3, NOW);
        assert_eq!(clock.correction_ms(), 600_003);
        assert_eq!(
            reason(600_003).as_deref(),
            Some(
                "clock 10m 0s behind the controller's (its samples are re-timed; fix the host's time sync, e.g. NTP)"
            )
        );
        clock.observe(NOW + 600_000, NOW);
        assert_eq!(clock.correction_ms(), -600_000);
        assert!(reason(-600_000).expect("reported").starts_with("clock 10m 0s ahead of"));
    }

    #[test]
    fn retiming_moves_every_sample_and_saturates() {
        let mut clock = ClockOffset::default();
        clock.observe(NOW - 600_000, NOW);
        let sample = |at_ms| v1::MetricSample { at_ms, ..Default::default() };
        let mut batch = v1::MetricsBatch { samples: vec![sample(NOW - 600_000), sample(i64::MAX)] };
        retime(&mut batch, clock);
        assert_eq!(batch.samples.iter().map(|s| s.at_ms).collect::<Vec<_>>(), [NOW, i64::MAX]);
    }

    #[test]
    fn transit_delay_is_not_a_wrong_clock() {
        let mut clock = ClockOffset::default();
        clock.observe(NOW - 40, NOW);
        assert_eq!(clock.measured_ms(), Some(40));
        assert_eq!(clock.correction_ms(), 0);
        assert_eq!(reason(40), None);
        assert_eq!(reason(59_999), None);
    }

    #[test]
    fn an_unsaid_time_keeps_the_last_measurement_and_extremes_saturate() {
        let mut clock = ClockOffset::default();
        clock.observe(0, NOW);
        assert_eq!(clock.measured_ms(), None);
        assert_eq!(clock.correction_ms(), 0);
        clock.observe(NOW - 5_000, NOW);
        clock.observe(0, NOW);
        assert_eq!(clock.correction_ms(), 5_000);
        clock.observe(i64::MIN, NOW);
        assert_eq!(clock.correction_ms(), i64::MAX);
        assert!(reason(i64::MAX).expect("reported").starts_with("clock 106751991167d"));
        assert!(reason(i64::MIN).expect("reported").contains("ahead of"));
    }
}
