//! Monitoring and inventory on the controller: ingesting pushed samples and facts, the current
//! view of every host (newest sample, failed units, health) and the background rollups.
//!
//! - [`ingest`]: validation and the batched sample writer.
//! - [`rollup`]: raw → 1 minute → 1 hour, and retention.
//! - [`health`]: the health score and its reasons.
//! - [`clock`]: each host's clock offset, and re-timing its samples by it.

pub mod clock;
pub mod health;
pub mod ingest;
pub mod rollup;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use tailops_proto::v1;
use tokio_util::sync::CancellationToken;

use crate::config::MonitoringConfig;
use crate::store::{FactsApplied, Store, StoreError};
use crate::telemetry::Telemetry;
use clock::ClockOffset;
use health::HealthInput;
use ingest::{IngestError, SampleWriter};
use rollup::LateSamples;

/// Fact keys naming systemd units; their value is `load/active/sub`.
const UNIT_PREFIX: &str = "unit.";
const CORES_KEY: &str = "cpu.cores";

/// What the controller keeps in memory per host, so listing thousands of hosts with their
/// vitals never touches the database.
#[derive(Debug, Clone, Default)]
struct HostView {
    series: Option<i64>,
    latest: Option<v1::MetricSample>,
    failed_units: Vec<String>,
    cores: Option<u32>,
    /// Controller minus host clock, as last measured on the host's stream.
    clock_offset_ms: Option<i64>,
}

#[derive(Debug)]
pub struct Monitoring {
    store: Store,
    config: MonitoringConfig,
    writer: SampleWriter,
    // A std lock: it is never held across an await, and reads vastly outnumber writes.
    hosts: RwLock<HashMap<String, HostView>>,
}

impl Monitoring {
    /// Loads the newest samples and unit states, and starts the sample writer and the rollup
    /// task (stopped by `shutdown`).
    pub async fn start(
        store: Store,
        config: MonitoringConfig,
        telemetry: Telemetry,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, StoreError> {
        let mut hosts: HashMap<String, HostView> = HashMap::new();
        for (host_id, sample) in store.latest_samples().await? {
            hosts.entry(host_id).or_default().latest = Some(sample);
        }
        for (host_id, units) in store.facts_with_prefix(None, UNIT_PREFIX).await? {
            hosts.entry(host_id).or_default().failed_units = failed_units(&units);
        }
        for (host_id, facts) in store.facts_with_prefix(None, CORES_KEY).await? {
            hosts.entry(host_id).or_default().cores = facts.get(CORES_KEY).and_then(|v| v.parse().ok());
        }
        let late = LateSamples::default();
        let writer = SampleWriter::start(store.clone(), late.clone(), telemetry);
        tokio::spawn(rollup::run(store.clone(), config.clone(), late.clone(), shutdown));
        Ok(Arc::new(Self { store, config, writer, hosts: RwLock::new(hosts) }))
    }

    pub fn config(&self) -> &MonitoringConfig {
        &self.config
    }

    /// Validates a pushed batch and queues it for the store. Returns how many samples were
    /// accepted; invalid ones are dropped (and said so in the error when none is valid).
    pub async fn ingest(
        &self,
        host_id: &str,
        mut batch: v1::MetricsBatch,
        clock: ClockOffset,
        now_ms: i64,
    ) -> Result<usize, IngestError> {
        clock::retime(&mut batch, clock);
        let samples = ingest::validate(batch, now_ms, self.config.raw_retention_ms())?;
        let series = match self.view(host_id, |v| v.series) {
            Some(series) => series,
            None => {
                let series = self.store.metric_series(host_id).await?;
                self.update(host_id, |v| v.series = Some(series));
                series
            }
        };
        let newest = samples.iter().max_by_key(|s| s.at_ms).cloned();
        let accepted = samples.len();
        if let Some(newest) = newest {
            self.update(host_id, |v| {
                if v.latest.as_ref().is_none_or(|l| l.at_ms <= newest.at_ms) {
                    v.latest = Some(newest.clone());
                }
            });
            self.writer.write(host_id, series, samples, newest).await;
        }
        Ok(accepted)
    }

    /// Records what the host's stream measured of its clock (kept while it is offline).
    pub fn observe_clock(&self, host_id: &str, clock: ClockOffset) {
        let Some(offset) = clock.measured_ms() else { return };
        // Heartbeats re-measure every few seconds; the view changes only when the clock does.
        let unchanged =
            self.view(host_id, |v| v.clock_offset_ms).is_some_and(|known| known.abs_diff(offset) < 1_000);
        if !unchanged {
            self.update(host_id, |v| v.clock_offset_ms = Some(offset));
        }
    }

    /// Applies a facts update: stores it, records changes, refreshes the in-memory view.
    pub async fn apply_facts(
        &self,
        host_id: &str,
        update: v1::FactsUpdate,
        now_ms: i64,
    ) -> Result<FactsApplied, IngestError> {
        let update = ingest::validate_facts(update)?;
        let applied = self.store.apply_facts(host_id, &update, now_ms).await?;
        if applied.changed > 0 {
            let units = self
                .store
                .facts_with_prefix(Some(host_id), UNIT_PREFIX)
                .await
                .map(|mut all| all.remove(host_id));
            let cores = update.set.get(CORES_KEY).and_then(|v| v.parse().ok());
            self.update(host_id, |v| {
                if let Ok(units) = units {
                    v.failed_units = units.as_ref().map(failed_units).unwrap_or_default();
                }
                if cores.is_some() {
                    v.cores = cores;
                }
            });
        }
        Ok(applied)
    }

    /// Waits until every sample queued so far is committed.
    pub async fn flush(&self) {
        self.writer.flush().await;
    }

    /// The newest sample and the health of `host`.
    pub fn vitals(&self, host: &v1::Host, now_ms: i64) -> (Option<v1::MetricSample>, v1::Health) {
        let view =
            self.hosts.read().unwrap_or_else(|p| p.into_inner()).get(&host.id).cloned().unwrap_or_default();
        let input = HealthInput {
            online: host.online,
            last_seen_ms: host.last_seen_ms,
            latest: view.latest.as_ref(),
            failed_units: &view.failed_units,
            cores: view.cores,
            clock_offset_ms: view.clock_offset_ms,
            now_ms,
            stale_after_ms: i64::try_from(self.config.stale_after_secs).unwrap_or(i64::MAX / 1000) * 1000,
        };
        let health = health::assess(&input, &self.config.health);
        (view.latest, health)
    }

    /// Drops what is kept in memory about a forgotten host.
    pub fn forget(&self, host_id: &str) {
        self.hosts.write().unwrap_or_else(|p| p.into_inner()).remove(host_id);
    }

    fn view<T>(&self, host_id: &str, f: impl FnOnce(&HostView) -> Option<T>) -> Option<T> {
        self.hosts.read().unwrap_or_else(|p| p.into_inner()).get(host_id).and_then(f)
    }

    fn update(&self, host_id: &str, f: impl FnOnce(&mut HostView)) {
        f(self.hosts.write().unwrap_or_else(|p| p.into_inner()).entry(host_id.to_owned()).or_default());
    }
}

/// Units whose active state is `failed`, from `unit.<name>` = `load/active/sub` facts.
fn failed_units(units: &BTreeMap<String, String>) -> Vec<String> {
    units
        .iter()
        .filter(|(_, state)| state.split('/').nth(1) == Some("failed"))
        .filter_map(|(key, _)| key.strip_prefix(UNIT_PREFIX).map(str::to_owned))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_units_are_read_from_the_active_state() {
        let units: BTreeMap<String, String> = [
            ("unit.nginx.service", "loaded/failed/failed"),
            ("unit.ssh.service", "loaded/active/running"),
            ("unit.failed-looking.service", "loaded/inactive/dead"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(failed_units(&units), vec!["nginx.service".to_owned()]);
    }
}
