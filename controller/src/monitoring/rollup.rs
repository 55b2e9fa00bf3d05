//! Background rollups (raw → 1 minute → 1 hour) and retention. All aggregation runs inside
//! SQLite over bounded time slices, so memory stays flat whatever the fleet size and no single
//! transaction holds the write lock for long.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::MonitoringConfig;
use crate::store::{MetricTable, Store, StoreError};

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;
/// At most this much raw time is rolled up per transaction.
const MINUTE_SLICE: i64 = HOUR;
const HOUR_SLICE: i64 = DAY;
/// Old rows are deleted this much time at a time.
const PRUNE_SLICE: i64 = 10 * MINUTE;

/// Each pass also recomputes this much before the minute watermark, for samples committed while
/// the previous pass was computing.
const LOOKBACK: i64 = 2 * MINUTE;

const MINUTES: &str = "1m";
const HOURS: &str = "1h";

/// Where late samples start: samples older than the finished rollups lower it, and the next
/// rollup recomputes from there. `i64::MAX` means nothing is late.
#[derive(Debug, Clone)]
pub struct LateSamples {
    earliest: Arc<AtomicI64>,
    rolled_until: Arc<AtomicI64>,
}

impl Default for LateSamples {
    fn default() -> Self {
        Self {
            earliest: Arc::new(AtomicI64::new(i64::MAX)),
            rolled_until: Arc::new(AtomicI64::new(i64::MIN)),
        }
    }
}

impl LateSamples {
    /// Notes a sample taken at `at_ms` on its way into the store.
    pub fn saw(&self, at_ms: i64) {
        if at_ms < self.rolled_until.load(Ordering::Relaxed) {
            self.earliest.fetch_min(at_ms, Ordering::Relaxed);
        }
    }

    fn take(&self) -> Option<i64> {
        let earliest = self.earliest.swap(i64::MAX, Ordering::Relaxed);
        (earliest != i64::MAX).then_some(earliest)
    }

    fn set_rolled_until(&self, at_ms: i64) {
        self.rolled_until.store(at_ms, Ordering::Relaxed);
    }
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RollupReport {
    pub minute_rows: u64,
    pub hour_rows: u64,
    pub pruned_rows: u64,
}

/// Rolls up and prunes every `rollup_interval_secs` until `shutdown`.
pub async fn run(store: Store, config: MonitoringConfig, late: LateSamples, shutdown: CancellationToken) {
    if let Ok(Some(done)) = store.rollup_done_until(MINUTES).await {
        late.set_rolled_until(done);
    }
    let mut ticker = tokio::time::interval(Duration::from_secs(config.rollup_interval_secs.max(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match rollup_once(&store, &config, &late, tailops_proto::time::now_ms()).await {
            Ok(report) => tracing::debug!(?report, "metrics rolled up"),
            Err(e) => tracing::error!(error = %e, "metrics rollup failed; retrying next interval"),
        }
    }
}

/// One rollup and retention pass as of `now_ms`. Exposed so tests can drive simulated time.
pub async fn rollup_once(
    store: &Store,
    config: &MonitoringConfig,
    late: &LateSamples,
    now_ms: i64,
) -> Result<RollupReport, StoreError> {
    let mut report = RollupReport::default();
    let delay = i64::try_from(config.rollup_delay_secs).unwrap_or(0).saturating_mul(1000);
    let hours = |h: u64| i64::try_from(h).unwrap_or(i64::MAX / HOUR).saturating_mul(HOUR);
    // Retention deletes whole minutes (and hours) only, so buckets from these horizons on are
    // complete and may be recomputed; an older bucket is final even if a late sample lands in it.
    let raw_horizon = floor(now_ms - hours(config.raw_retention_hours), MINUTE);
    let minute_horizon = floor(now_ms - hours(config.minute_retention_days.saturating_mul(24)), HOUR);

    // Minutes, from raw samples.
    let late_from = late.take();
    let minute_end = floor(now_ms - delay, MINUTE);
    let done = match store.rollup_done_until(MINUTES).await? {
        Some(done) => Some(done),
        None => store.oldest_metric(MetricTable::Raw).await?.map(|t| floor(t, MINUTE)),
    };
    // Buckets before the watermark are recomputed (look-back, late samples) only from the raw
    // horizon on; buckets after it are rolled up for the first time whatever their age.
    let minute_start = match (done, late_from) {
        (Some(done), late) => {
            let revisit = late.map_or(done - LOOKBACK, |l| (done - LOOKBACK).min(floor(l, MINUTE)));
            Some(revisit.max(raw_horizon).min(done))
        }
        (None, late) => late.map(|t| floor(t, MINUTE)),
    };
    let mut recomputed_from = None;
    if let Some(mut from) = minute_start {
        recomputed_from = Some(from);
        while from < minute_end {
            let to = (from + MINUTE_SLICE).min(minute_end);
            report.minute_rows += store.rollup_minutes(from, to).await?;
            // Never move the watermark back: a late-sample recompute only revisits old buckets.
            let watermark = to.max(done.unwrap_or(i64::MIN));
            store.set_rollup_done_until(MINUTES, watermark).await?;
            late.set_rolled_until(watermark);
            from = to;
        }
    }

    // Hours, from minutes, for hours whose minutes are all rolled up.
    let minutes_done = store.rollup_done_until(MINUTES).await?;
    if let Some(minutes_done) = minutes_done {
        let hour_end = floor(minutes_done, HOUR);
        let done_h = match store.rollup_done_until(HOURS).await? {
            Some(done) => Some(done),
            None => store.oldest_metric(MetricTable::Minute).await?.map(|t| floor(t, HOUR)),
        };
        let start = match (done_h, recomputed_from) {
            (Some(d), Some(r)) => Some(floor(r, HOUR).max(minute_horizon).min(d)),
            (d, r) => d.or(r.map(|t| floor(t, HOUR))),
        };
        if let Some(mut from) = start {
            while from < hour_end {
                let to = (from + HOUR_SLICE).min(hour_end);
                report.hour_rows += store.rollup_hours(from, to).await?;
                store.set_rollup_done_until(HOURS, to.max(done_h.unwrap_or(i64::MIN))).await?;
                from = to;
            }
        }
    }

    // Retention: never delete data a coarser rollup has not consumed yet.
    let raw_cutoff = raw_horizon.min(minutes_done.unwrap_or(i64::MIN));
    report.pruned_rows += prune(store, MetricTable::Raw, raw_cutoff).await?;
    let hours_done = store.rollup_done_until(HOURS).await?.unwrap_or(i64::MIN);
    let minute_cutoff = minute_horizon.min(hours_done);
    report.pruned_rows += prune(store, MetricTable::Minute, minute_cutoff).await?;
    report.pruned_rows +=
        prune(store, MetricTable::Hour, now_ms - hours(config.hour_retention_days.saturating_mul(24)))
            .await?;
    report.pruned_rows +=
        store.prune_fact_changes(now_ms - hours(config.change_retention_days.saturating_mul(24))).await?;
    Ok(report)
}

async fn prune(store: &Store, table: MetricTable, before: i64) -> Result<u64, StoreError> {
    let Some(mut from) = store.oldest_metric(table).await? else { return Ok(0) };
    let mut deleted = 0;
    while from < before {
        let to = (from + PRUNE_SLICE).min(before);
        deleted += store.delete_metrics(table, from, to).await?;
        from = to;
    }
    Ok(deleted)
}

fn floor(t: i64, unit: i64) -> i64 {
    t - t.rem_euclid(unit)
}

#[cfg(test)]
mod tests {
    use tailops_proto::v1;

    use super::*;
    use crate::store::SampleRow;

    /// An hour boundary, so bucket arithmetic in the assertions stays readable.
    const T0: i64 = 1_800_000_000_000 - 1_800_000_000_000 % HOUR;

    async fn store_with_host() -> (tempfile::TempDir, Store, i64) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("t.db")).await.expect("open");
        sqlx::query("INSERT INTO hosts (id, name, enrolled_at) VALUES ('h1', 'web1', 0)")
            .execute(store.writer())
            .await
            .expect("host");
        let series = store.metric_series("h1").await.expect("series");
        (dir, store, series)
    }

    fn sample(at_ms: i64, cpu: f64) -> v1::MetricSample {
        v1::MetricSample {
            at_ms,
            cpu_percent: cpu,
            mem_total_bytes: 1000,
            mem_used_bytes: u64::try_from(at_ms - T0).unwrap_or(0) / 10_000,
            ..Default::default()
        }
    }

    async fn count(store: &Store, table: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(store.pool())
            .await
            .expect("count")
    }

    fn config() -> MonitoringConfig {
        MonitoringConfig { raw_retention_hours: 1, rollup_delay_secs: 90, ..MonitoringConfig::default() }
    }

    #[tokio::test]
    async fn rollups_and_retention_follow_simulated_time() {
        let (_dir, store, series) = store_with_host().await;
        // Three hours of samples every 10 s; within each minute, CPU climbs 0, 10, ..., 50.
        let rows: Vec<SampleRow> = (0..3 * 360)
            .map(|i| {
                let at = T0 + i * 10_000;
                #[allow(clippy::cast_precision_loss)]
                SampleRow { series, sample: sample(at, (i % 6) as f64 * 10.0) }
            })
            .collect();
        store.insert_samples(&rows, &[]).await.expect("insert");
        let late = LateSamples::default();

        let now = T0 + 3 * HOUR + 5 * MINUTE;
        let report = rollup_once(&store, &config(), &late, now).await.expect("rollup");
        assert_eq!(report.minute_rows, 180);
        assert_eq!(report.hour_rows, 3);
        let minute =
            store.metric_points("h1", MetricTable::Minute, T0, T0 + MINUTE, 10).await.expect("points");
        assert_eq!(minute.len(), 1);
        assert_eq!((minute[0].samples, minute[0].cpu_percent, minute[0].cpu_percent_max), (6, 25.0, 50.0));
        let hours = store.metric_points("h1", MetricTable::Hour, T0, now, 10).await.expect("points");
        assert_eq!(hours.iter().map(|p| p.samples).collect::<Vec<_>>(), vec![360, 360, 360]);
        assert!((hours[0].cpu_percent - 25.0).abs() < 1e-9, "{:?}", hours[0]);
        // Memory grows by one per sample: the first hour averages samples 0..359.
        assert!((hours[0].mem_used_bytes - 179.5).abs() < 1e-9, "{:?}", hours[0]);
        // Raw samples older than an hour are gone; rollups are kept.
        let oldest_raw = store.oldest_metric(MetricTable::Raw).await.expect("oldest").expect("some raw");
        assert!(oldest_raw >= now - HOUR, "raw kept from {oldest_raw}, cutoff {}", now - HOUR);
        assert_eq!(count(&store, "metrics_1m").await, 180);

        // A sample that arrives late (after its minute was rolled up) is rolled up again...
        let late_at = T0 + 2 * HOUR + 30 * MINUTE + 5_000;
        store
            .insert_samples(&[SampleRow { series, sample: sample(late_at, 100.0) }], &[])
            .await
            .expect("late");
        late.saw(late_at);
        // ...unless its minute's raw samples are already gone: then the rollup is final.
        let too_late = T0 + 2 * HOUR + 5_000;
        store
            .insert_samples(&[SampleRow { series, sample: sample(too_late, 100.0) }], &[])
            .await
            .expect("late");
        late.saw(too_late);
        rollup_once(&store, &config(), &late, now + MINUTE).await.expect("rollup");
        let at = |t: i64| store.metric_points("h1", MetricTable::Minute, t, t + 1, 10);
        let minute = at(late_at - 5_000).await.expect("points");
        assert_eq!((minute[0].samples, minute[0].cpu_percent_max), (7, 100.0));
        let minute = at(too_late - 5_000).await.expect("points");
        assert_eq!((minute[0].samples, minute[0].cpu_percent_max), (6, 50.0));
        let hour = store
            .metric_points("h1", MetricTable::Hour, T0 + 2 * HOUR, T0 + 2 * HOUR + 1, 10)
            .await
            .expect("points");
        assert_eq!(hour[0].samples, 361);

        // A month later the minutes are gone and the hours remain; a year later, nothing.
        rollup_once(&store, &config(), &late, T0 + 31 * DAY).await.expect("rollup");
        assert_eq!(count(&store, "metrics_raw").await, 0);
        assert_eq!(count(&store, "metrics_1m").await, 0);
        assert_eq!(count(&store, "metrics_1h").await, 3);
        rollup_once(&store, &config(), &late, T0 + 366 * DAY).await.expect("rollup");
        assert_eq!(count(&store, "metrics_1h").await, 0);
    }

    #[tokio::test]
    async fn raw_samples_are_not_pruned_before_they_are_rolled_up() {
        let (_dir, store, series) = store_with_host().await;
        store.insert_samples(&[SampleRow { series, sample: sample(T0, 10.0) }], &[]).await.expect("insert");
        // The rollup delay keeps the minute open, so even past raw retention the sample stays.
        let mut cfg = config();
        cfg.rollup_delay_secs = 10 * 3600;
        rollup_once(&store, &cfg, &LateSamples::default(), T0 + 2 * HOUR).await.expect("rollup");
        assert_eq!(count(&store, "metrics_raw").await, 1);
        assert_eq!(count(&store, "metrics_1m").await, 0);
    }

    #[tokio::test]
    async fn facts_record_changes_after_the_baseline() {
        let (_dir, store, _) = store_with_host().await;
        let full = |pairs: &[(&str, &str)]| v1::FactsUpdate {
            full: true,
            set: pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            removed: vec![],
        };
        let first = store
            .apply_facts("h1", &full(&[("kernel", "6.1"), ("unit.a", "loaded/active/running")]), 1)
            .await;
        assert_eq!(first.expect("apply"), crate::store::FactsApplied { changed: 2, recorded: 0 });
        let same = store
            .apply_facts("h1", &full(&[("kernel", "6.1"), ("unit.a", "loaded/active/running")]), 2)
            .await;
        assert_eq!(same.expect("apply").changed, 0);
        let next = store.apply_facts("h1", &full(&[("kernel", "6.8"), ("net.eth1.mtu", "1500")]), 3).await;
        assert_eq!(next.expect("apply").recorded, 3);
        // A volatile fact is kept current without filling the history.
        let peers = v1::FactsUpdate {
            full: false,
            set: [("tailscale.online_peers".to_owned(), "7".to_owned())].into(),
            removed: vec![],
        };
        let applied = store.apply_facts("h1", &peers, 3).await.expect("apply");
        assert_eq!((applied.changed, applied.recorded), (1, 0));
        let peers = v1::FactsUpdate {
            full: false,
            set: Default::default(),
            removed: vec!["tailscale.online_peers".into()],
        };
        store.apply_facts("h1", &peers, 3).await.expect("apply");
        let diff =
            v1::FactsUpdate { full: false, set: Default::default(), removed: vec!["net.eth1.mtu".into()] };
        assert_eq!(store.apply_facts("h1", &diff, 4).await.expect("apply").recorded, 1);

        let filter = crate::store::ChangeFilter { limit: 100, ..Default::default() };
        let changes = store.fact_changes(&filter).await.expect("changes");
        let seen: Vec<_> = changes
            .iter()
            .map(|c| (c.at_ms, c.key.as_str(), c.old_value.as_deref(), c.new_value.as_deref()))
            .collect();
        assert_eq!(
            seen,
            vec![
                (4, "net.eth1.mtu", Some("1500"), None),
                (3, "unit.a", Some("loaded/active/running"), None),
                (3, "net.eth1.mtu", None, Some("1500")),
                (3, "kernel", Some("6.1"), Some("6.8")),
            ]
        );
        let kernel_only =
            crate::store::ChangeFilter { key_prefix: "kern".into(), limit: 100, ..Default::default() };
        assert_eq!(store.fact_changes(&kernel_only).await.expect("changes").len(), 1);
        let facts = store.facts("h1").await.expect("facts");
        assert_eq!(facts.iter().map(|f| f.key.as_str()).collect::<Vec<_>>(), vec!["kernel"]);
    }
}
