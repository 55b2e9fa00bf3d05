//! What agents push is checked before it is stored, then written in batches: one SQLite
//! transaction for many hosts' samples is what makes ingest scale.

use std::collections::HashMap;
use std::time::Instant;

use tailops_proto::text::is_hidden;
use tailops_proto::v1;
use tokio::sync::{mpsc, oneshot};

use super::rollup::LateSamples;
use crate::batch::next_batch;
use crate::store::{SampleRow, Store, StoreError};
use crate::telemetry::Telemetry;

/// Samples one batch may carry (an agent's buffer after a long disconnection is sent in parts).
pub const MAX_SAMPLES_PER_BATCH: usize = 2_000;
const MAX_DISKS: usize = 256;
const MAX_INTERFACES: usize = 512;
const MAX_NAME: usize = 1024;
/// Sample times are re-timed by the host's measured clock offset first (`clock`); one still further in
/// the future than this is refused.
const MAX_CLOCK_SKEW_MS: i64 = 5 * 60_000;
pub const MAX_FACTS: usize = 20_000;
pub const MAX_FACT_KEY: usize = 512;
pub const MAX_FACT_VALUE: usize = 8 * 1024;
/// Hello fields (hostname, OS, arch, kernel, version) are kept to this many bytes.
pub const MAX_HELLO_FIELD: usize = 256;

const QUEUE: usize = 8_192;
/// Queue entries (one per pushed batch) drained into one transaction.
const WRITE_BATCH: usize = 2_048;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The samples worth keeping, in time order. Samples too old to keep, from the future, or
/// with impossible values are dropped; a batch with none left is an error.
pub fn validate(
    batch: v1::MetricsBatch,
    now_ms: i64,
    raw_retention_ms: i64,
) -> Result<Vec<v1::MetricSample>, IngestError> {
    if batch.samples.len() > MAX_SAMPLES_PER_BATCH {
        return Err(IngestError::Invalid(format!(
            "{} samples in one batch; at most {MAX_SAMPLES_PER_BATCH}",
            batch.samples.len()
        )));
    }
    let total = batch.samples.len();
    let (oldest, newest) =
        (now_ms.saturating_sub(raw_retention_ms), now_ms.saturating_add(MAX_CLOCK_SKEW_MS));
    let mut samples: Vec<v1::MetricSample> = batch
        .samples
        .into_iter()
        .filter(|s| s.at_ms > oldest && s.at_ms <= newest)
        .filter(plausible)
        .map(|mut s| {
            s.cpu_percent = s.cpu_percent.clamp(0.0, 100.0);
            s
        })
        .collect();
    if samples.is_empty() && total > 0 {
        return Err(IngestError::Invalid(format!(
            "none of {total} samples is usable (timestamps outside the retention window or beyond clock skew, \
             or impossible values)"
        )));
    }
    samples.sort_by_key(|s| s.at_ms);
    samples.dedup_by_key(|s| s.at_ms);
    Ok(samples)
}

fn plausible(s: &v1::MetricSample) -> bool {
    let finite = [s.cpu_percent, s.load1, s.load5, s.load15, s.net_rx_bytes_per_sec, s.net_tx_bytes_per_sec]
        .iter()
        .all(|v| v.is_finite() && *v >= 0.0);
    let rates = s.interfaces.iter().all(|i| {
        i.rx_bytes_per_sec.is_finite() && i.tx_bytes_per_sec.is_finite() && i.name.len() <= MAX_NAME
    });
    finite
        && rates
        && s.mem_used_bytes <= s.mem_total_bytes
        && s.swap_used_bytes <= s.swap_total_bytes
        && s.disks.len() <= MAX_DISKS
        && s.interfaces.len() <= MAX_INTERFACES
        && s.disks.iter().all(|d| {
            d.used_bytes <= d.total_bytes && d.mount.len() <= MAX_NAME && d.filesystem.len() <= MAX_NAME
        })
}

/// Refuses a facts update that is too large or has empty, oversized or control-character keys.
/// Values keep their size limit, and characters that would act on a terminal or hide text from
/// a reader (control, bidi and other format characters) are replaced by '?': host-provided
/// text reaches people and AI models.
pub fn validate_facts(mut update: v1::FactsUpdate) -> Result<v1::FactsUpdate, IngestError> {
    let entries = update.set.len() + update.removed.len();
    if entries > MAX_FACTS {
        return Err(IngestError::Invalid(format!("{entries} facts in one update; at most {MAX_FACTS}")));
    }
    let bad_key = |k: &String| k.is_empty() || k.len() > MAX_FACT_KEY || k.chars().any(is_hidden);
    if let Some(key) = update.set.keys().chain(&update.removed).find(|k| bad_key(k)) {
        return Err(IngestError::Invalid(format!(
            "fact key {:?} is empty, longer than {MAX_FACT_KEY} bytes or holds control characters or \
             invisible format characters",
            key.chars().filter(|c| !is_hidden(*c)).take(64).collect::<String>()
        )));
    }
    if let Some((key, _)) = update.set.iter().find(|(_, v)| v.len() > MAX_FACT_VALUE) {
        return Err(IngestError::Invalid(format!("fact {key:?} is longer than {MAX_FACT_VALUE} bytes")));
    }
    // Whether such a key would end up set or removed depended on what was stored before.
    if let Some(key) = update.removed.iter().find(|k| update.set.contains_key(*k)) {
        return Err(IngestError::Invalid(format!("fact {key:?} is both set and removed in one update")));
    }
    // A key removed twice would count, and be recorded in the history, twice.
    update.removed.sort_unstable();
    update.removed.dedup();
    for value in update.set.values_mut() {
        if value.chars().any(is_hidden) {
            *value = value.chars().map(|c| if is_hidden(c) { '?' } else { c }).collect();
        }
    }
    Ok(update)
}

/// Host-reported text made safe to store and show: at most `max_bytes` (cut at a character
/// boundary), control and format characters replaced by '?'.
pub fn clean_text(raw: &str, max_bytes: usize) -> String {
    let mut end = raw.len().min(max_bytes);
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    raw[..end].chars().map(|c| if is_hidden(c) { '?' } else { c }).collect()
}

#[derive(Debug)]
enum Command {
    Write { host_id: String, rows: Vec<SampleRow>, newest: v1::MetricSample },
    Flush(oneshot::Sender<()>),
}

/// Queues samples for a writer task that commits whatever has accumulated in one transaction.
#[derive(Debug, Clone)]
pub struct SampleWriter {
    queue: mpsc::Sender<Command>,
}

impl SampleWriter {
    pub fn start(store: Store, late: LateSamples, telemetry: Telemetry) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(writer(store, late, telemetry, rx));
        Self { queue }
    }

    /// Queues one host's samples; waits when the writer is behind, which slows that agent's
    /// stream instead of growing memory without bound.
    pub async fn write(
        &self,
        host_id: &str,
        series: i64,
        samples: Vec<v1::MetricSample>,
        newest: v1::MetricSample,
    ) {
        let rows = samples.into_iter().map(|sample| SampleRow { series, sample }).collect();
        if self.queue.send(Command::Write { host_id: host_id.to_owned(), rows, newest }).await.is_err() {
            tracing::error!("the sample writer is gone; samples were not stored");
        }
    }

    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.queue.send(Command::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

async fn writer(store: Store, late: LateSamples, telemetry: Telemetry, mut rx: mpsc::Receiver<Command>) {
    while let Some(batch) = next_batch(&mut rx, WRITE_BATCH).await {
        let mut rows = Vec::new();
        let mut latest: HashMap<String, v1::MetricSample> = HashMap::new();
        let mut flushes = Vec::new();
        for cmd in batch {
            match cmd {
                Command::Write { host_id, rows: r, newest } => {
                    rows.extend(r);
                    match latest.get(&host_id) {
                        Some(have) if have.at_ms >= newest.at_ms => {}
                        _ => {
                            latest.insert(host_id, newest);
                        }
                    }
                }
                Command::Flush(done) => flushes.push(done),
            }
        }
        if !rows.is_empty() {
            let latest: Vec<_> = latest.into_iter().collect();
            let started = Instant::now();
            match store.insert_samples(&rows, &latest).await {
                Ok(()) => telemetry.observe_db_write("metrics", rows.len(), started.elapsed()),
                Err(e) => tracing::error!(error = %e, rows = rows.len(), "could not store samples"),
            }
            // Noted once stored: a sample older than what the rollups have finished makes the
            // next rollup revisit its minute (a rollup racing this write is covered by the
            // rollup's own look-back).
            for row in &rows {
                late.saw(row.sample.at_ms);
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;
    const DAY: i64 = 86_400_000;

    #[test]
    fn host_text_is_cut_at_a_character_and_loses_controls_and_format_characters() {
        assert_eq!(clean_text("web-1.example", MAX_HELLO_FIELD), "web-1.example");
        assert_eq!(clean_text(&"A".repeat(4_000_000), MAX_HELLO_FIELD).len(), MAX_HELLO_FIELD);
        // A three-byte character straddling the limit is dropped whole.
        let straddling = format!("{}€", "x".repeat(MAX_HELLO_FIELD - 1));
        assert_eq!(clean_text(&straddling, MAX_HELLO_FIELD), "x".repeat(MAX_HELLO_FIELD - 1));
        // ESC, BEL, C1 CSI, RLO, zero-width space, isolate, BOM, tag: all neutralised.
        assert_eq!(
            clean_text("a\u{1b}[31mb\u{7}\u{9b}c\u{202e}d\u{200b}e\u{2066}f\u{feff}g\u{e0041}h", 256),
            "a?[31mb??c?d?e?f?g?h"
        );
        assert_eq!(clean_text("Ünïcödé ✓ 日本", 256), "Ünïcödé ✓ 日本");
    }

    #[test]
    fn fact_keys_with_format_characters_are_refused_and_values_cleaned() {
        let update = |key: &str, value: &str| v1::FactsUpdate {
            full: true,
            set: [(key.to_owned(), value.to_owned())].into(),
            removed: Vec::new(),
        };
        assert!(validate_facts(update("os\u{202e}", "linux")).is_err());
        let clean = validate_facts(update("os", "linux\u{1b}]0;x\u{7}")).expect("valid");
        assert_eq!(clean.set["os"], "linux?]0;x?");
    }

    fn at(at_ms: i64) -> v1::MetricSample {
        v1::MetricSample {
            at_ms,
            cpu_percent: 5.0,
            mem_total_bytes: 10,
            mem_used_bytes: 5,
            ..Default::default()
        }
    }

    #[test]
    fn samples_outside_the_window_or_impossible_are_dropped() {
        let mut nan = at(NOW - 2);
        nan.cpu_percent = f64::NAN;
        let mut over = at(NOW - 3);
        over.mem_used_bytes = 11;
        let batch = v1::MetricsBatch {
            samples: vec![
                at(NOW - 1),
                at(NOW - 3 * DAY),
                at(NOW + DAY),
                nan,
                over,
                at(NOW - 10),
                at(NOW - 1),
            ],
        };
        let kept = validate(batch, NOW, 2 * DAY).expect("some are valid");
        assert_eq!(kept.iter().map(|s| s.at_ms).collect::<Vec<_>>(), vec![NOW - 10, NOW - 1]);
    }

    #[test]
    fn a_batch_with_nothing_usable_is_refused_with_the_reason() {
        let err = validate(v1::MetricsBatch { samples: vec![at(NOW + DAY)] }, NOW, DAY).unwrap_err();
        assert!(err.to_string().contains("none of 1 samples is usable"), "{err}");
        let huge = v1::MetricsBatch { samples: vec![at(NOW); MAX_SAMPLES_PER_BATCH + 1] };
        assert!(validate(huge, NOW, DAY).is_err());
    }

    #[test]
    fn bad_fact_keys_are_refused() {
        let mut update = v1::FactsUpdate::default();
        update.set.insert("ok".into(), "v".into());
        assert!(validate_facts(update.clone()).is_ok());
        update.set.insert("bad\nkey".into(), "v".into());
        assert!(validate_facts(update).unwrap_err().to_string().contains("control characters"));
        let mut long = v1::FactsUpdate::default();
        long.set.insert("k".into(), "x".repeat(MAX_FACT_VALUE + 1));
        assert!(validate_facts(long).is_err());
    }
}
