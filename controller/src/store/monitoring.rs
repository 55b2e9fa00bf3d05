//! Metrics and facts tables: batched sample inserts, rollups, retention, and the queries behind
//! the Monitoring service.

use std::collections::{BTreeMap, HashMap};

use prost::Message;
// Every dynamic statement here only interpolates a table name from `MetricTable`.
use sqlx::{AssertSqlSafe, QueryBuilder, Row, Sqlite};
use tailops_proto::v1;

use super::{Store, StoreError, decode};

/// Rows per multi-row INSERT: 16 columns × 512 rows stays far below SQLite's 32,766 bound
/// parameters, and one statement text per chunk size keeps the prepared-statement cache warm.
const INSERT_CHUNK: usize = 512;

/// `INSERT INTO <rollup table> <select> ON CONFLICT DO UPDATE`: a bucket is always recomputed
/// whole, so running a rollup again over the same range is harmless. A macro so the statement
/// stays one static string.
macro_rules! rollup_sql {
    ($table:literal, $select:literal) => {
        concat!(
            "INSERT INTO ",
            $table,
            " (series, at, samples, cpu, cpu_max, load1, mem_used, mem_used_max, mem_total, swap_used, \
             disk_pct, disk_pct_max, net_rx, net_tx, procs) ",
            $select,
            " ON CONFLICT (series, at) DO UPDATE SET samples = excluded.samples, cpu = excluded.cpu, \
             cpu_max = excluded.cpu_max, load1 = excluded.load1, mem_used = excluded.mem_used, \
             mem_used_max = excluded.mem_used_max, mem_total = excluded.mem_total, \
             swap_used = excluded.swap_used, disk_pct = excluded.disk_pct, \
             disk_pct_max = excluded.disk_pct_max, net_rx = excluded.net_rx, net_tx = excluded.net_tx, \
             procs = excluded.procs"
        )
    };
}

/// Facts that change in the normal course of things (a count of peers that are online right
/// now): kept current, but not recorded as inventory changes, which would drown the real ones.
/// What one host's stored facts may hold: its facts are answered in one message, which has to
/// fit well inside the clients' 4 MiB decode limit.
pub const MAX_HOST_FACTS: usize = 20_000;
pub const MAX_HOST_FACT_BYTES: usize = 2 * 1024 * 1024;

pub const VOLATILE_FACTS: &[&str] = &["tailscale.online_peers"];

/// A metrics table: raw samples or one of the rollups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricTable {
    Raw,
    Minute,
    Hour,
}

impl MetricTable {
    fn name(self) -> &'static str {
        match self {
            Self::Raw => "metrics_raw",
            Self::Minute => "metrics_1m",
            Self::Hour => "metrics_1h",
        }
    }
}

/// One sample ready to insert: its host's series and the sample.
#[derive(Debug, Clone)]
pub struct SampleRow {
    pub series: i64,
    pub sample: v1::MetricSample,
}

/// What applying a facts update changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FactsApplied {
    /// Keys whose value was set or removed.
    pub changed: usize,
    /// Change-history rows written (none for a host's first report, which is its baseline).
    pub recorded: usize,
}

/// Filters for the change history.
#[derive(Debug, Clone, Default)]
pub struct ChangeFilter {
    pub host_id: Option<String>,
    pub since_ms: i64,
    pub key_prefix: String,
    pub limit: u32,
}

fn sql_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store {
    /// The series number of a host's metrics, created on first use.
    pub async fn metric_series(&self, host_id: &str) -> Result<i64, StoreError> {
        sqlx::query("INSERT INTO metric_series (host_id) VALUES (?) ON CONFLICT (host_id) DO NOTHING")
            .bind(host_id)
            .execute(self.writer())
            .await?;
        Ok(sqlx::query_scalar("SELECT id FROM metric_series WHERE host_id = ?")
            .bind(host_id)
            .fetch_one(self.pool())
            .await?)
    }

    /// Inserts raw samples and each host's newest full sample in one transaction. A sample
    /// already stored (same host and time, e.g. resent after a reconnect) is ignored.
    pub async fn insert_samples(
        &self,
        rows: &[SampleRow],
        latest: &[(String, v1::MetricSample)],
    ) -> Result<(), StoreError> {
        let mut tx = self.write_transaction().await?;
        for chunk in rows.chunks(INSERT_CHUNK) {
            let mut insert: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT OR IGNORE INTO metrics_raw (series, at, cpu, load1, load5, load15, mem_total, \
                 mem_used, mem_available, swap_total, swap_used, disk_pct, net_rx, net_tx, uptime, procs) ",
            );
            insert.push_values(chunk, |mut b, row| {
                let s = &row.sample;
                b.push_bind(row.series)
                    .push_bind(s.at_ms)
                    .push_bind(s.cpu_percent)
                    .push_bind(s.load1)
                    .push_bind(s.load5)
                    .push_bind(s.load15)
                    .push_bind(sql_int(s.mem_total_bytes))
                    .push_bind(sql_int(s.mem_used_bytes))
                    .push_bind(sql_int(s.mem_available_bytes))
                    .push_bind(sql_int(s.swap_total_bytes))
                    .push_bind(sql_int(s.swap_used_bytes))
                    .push_bind(s.fullest_disk_percent())
                    .push_bind(s.net_rx_bytes_per_sec)
                    .push_bind(s.net_tx_bytes_per_sec)
                    .push_bind(sql_int(s.uptime_secs))
                    .push_bind(i64::from(s.process_count));
            });
            insert.build().execute(&mut *tx).await?;
        }
        for chunk in latest.chunks(INSERT_CHUNK) {
            let mut upsert = QueryBuilder::<Sqlite>::new("INSERT INTO metrics_latest (host_id, at, sample) ");
            upsert.push_values(chunk, |mut row, (host_id, sample)| {
                row.push_bind(host_id).push_bind(sample.at_ms).push_bind(sample.encode_to_vec());
            });
            upsert.push(
                " ON CONFLICT (host_id) DO UPDATE SET at = excluded.at, sample = excluded.sample \
                 WHERE excluded.at >= metrics_latest.at",
            );
            upsert.build().persistent(false).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every host's newest stored sample.
    pub async fn latest_samples(&self) -> Result<Vec<(String, v1::MetricSample)>, StoreError> {
        let rows = sqlx::query("SELECT host_id, sample FROM metrics_latest").fetch_all(self.pool()).await?;
        rows.iter()
            .map(|row| Ok((row.try_get("host_id")?, decode("latest sample", row.try_get("sample")?)?)))
            .collect()
    }

    /// Recomputes the 1-minute buckets that start in `[from, to)` from raw samples.
    pub async fn rollup_minutes(&self, from: i64, to: i64) -> Result<u64, StoreError> {
        let sql = rollup_sql!(
            "metrics_1m",
            "SELECT series, at - at % 60000, count(*), avg(cpu), max(cpu), avg(load1), avg(mem_used),
                max(mem_used), avg(mem_total), avg(swap_used), avg(disk_pct), max(disk_pct), avg(net_rx),
                avg(net_tx), avg(procs)
             FROM metrics_raw WHERE at >= ?1 AND at < ?2
             GROUP BY series, at - at % 60000"
        );
        self.rollup(sql, from, to).await
    }

    /// Recomputes the 1-hour buckets that start in `[from, to)` from 1-minute rollups, weighting
    /// each minute by its sample count.
    pub async fn rollup_hours(&self, from: i64, to: i64) -> Result<u64, StoreError> {
        let sql = rollup_sql!(
            "metrics_1h",
            "SELECT series, at - at % 3600000, sum(samples),
                sum(cpu * samples) / sum(samples), max(cpu_max),
                sum(load1 * samples) / sum(samples),
                sum(mem_used * samples) / sum(samples), max(mem_used_max),
                sum(mem_total * samples) / sum(samples),
                sum(swap_used * samples) / sum(samples),
                sum(disk_pct * samples) / sum(samples), max(disk_pct_max),
                sum(net_rx * samples) / sum(samples), sum(net_tx * samples) / sum(samples),
                sum(procs * samples) / sum(samples)
             FROM metrics_1m WHERE at >= ?1 AND at < ?2
             GROUP BY series, at - at % 3600000"
        );
        self.rollup(sql, from, to).await
    }

    async fn rollup(&self, sql: &'static str, from: i64, to: i64) -> Result<u64, StoreError> {
        let mut tx = self.write_transaction().await?;
        let written = sqlx::query(sql).bind(from).bind(to).execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        Ok(written)
    }

    /// How far the named rollup is done, if it ever ran.
    pub async fn rollup_done_until(&self, name: &str) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar("SELECT done_until FROM metric_rollups WHERE name = ?")
            .bind(name)
            .fetch_optional(self.pool())
            .await?)
    }

    pub async fn set_rollup_done_until(&self, name: &str, done_until: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO metric_rollups (name, done_until) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET done_until = ?2",
        )
        .bind(name)
        .bind(done_until)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// The oldest timestamp in `table`, if it holds anything.
    pub async fn oldest_metric(&self, table: MetricTable) -> Result<Option<i64>, StoreError> {
        let sql = format!("SELECT min(at) FROM {}", table.name());
        Ok(sqlx::query_scalar::<_, Option<i64>>(AssertSqlSafe(sql)).fetch_one(self.pool()).await?)
    }

    /// Deletes rows of `table` in `[from, to)`. Callers delete old data in short slices so that
    /// no single transaction holds the write lock for long.
    pub async fn delete_metrics(&self, table: MetricTable, from: i64, to: i64) -> Result<u64, StoreError> {
        let sql = format!("DELETE FROM {} WHERE at >= ?1 AND at < ?2", table.name());
        let mut tx = self.write_transaction().await?;
        let deleted =
            sqlx::query(AssertSqlSafe(sql)).bind(from).bind(to).execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        Ok(deleted)
    }

    /// A host's metrics in `[since, until)` from `table`, oldest first, at most `limit` points.
    pub async fn metric_points(
        &self,
        host_id: &str,
        table: MetricTable,
        since: i64,
        until: i64,
        limit: u32,
    ) -> Result<Vec<v1::MetricPoint>, StoreError> {
        let columns = match table {
            MetricTable::Raw => {
                "m.at, 1 AS samples, m.cpu, m.cpu AS cpu_max, m.load1, m.mem_used, m.mem_used AS mem_used_max,
                 m.mem_total, m.swap_used, m.disk_pct, m.disk_pct AS disk_pct_max, m.net_rx, m.net_tx, m.procs"
            }
            MetricTable::Minute | MetricTable::Hour => {
                "m.at, m.samples, m.cpu, m.cpu_max, m.load1, m.mem_used, m.mem_used_max, m.mem_total,
                 m.swap_used, m.disk_pct, m.disk_pct_max, m.net_rx, m.net_tx, m.procs"
            }
        };
        let sql = format!(
            "SELECT {columns} FROM {} m JOIN metric_series s ON s.id = m.series
             WHERE s.host_id = ?1 AND m.at >= ?2 AND m.at < ?3 ORDER BY m.at LIMIT ?4",
            table.name()
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(host_id)
            .bind(since)
            .bind(until)
            .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(point_from_row).collect()
    }

    /// Counts a host's points in `[since, until)` in `table`.
    pub async fn count_metric_points(
        &self,
        host_id: &str,
        table: MetricTable,
        since: i64,
        until: i64,
    ) -> Result<u64, StoreError> {
        let sql = format!(
            "SELECT count(*) FROM {} m JOIN metric_series s ON s.id = m.series
             WHERE s.host_id = ?1 AND m.at >= ?2 AND m.at < ?3",
            table.name()
        );
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(host_id)
            .bind(since)
            .bind(until)
            .fetch_one(self.pool())
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Applies a facts update in one transaction and records what changed. The first report
    /// of a host is its baseline and records no history.
    pub async fn apply_facts(
        &self,
        host_id: &str,
        update: &v1::FactsUpdate,
        now_ms: i64,
    ) -> Result<FactsApplied, StoreError> {
        let mut tx = self.write_transaction().await?;
        let current: HashMap<String, String> = sqlx::query("SELECT key, value FROM facts WHERE host_id = ?")
            .bind(host_id)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|row| Ok((row.try_get("key")?, row.try_get("value")?)))
            .collect::<Result<_, sqlx::Error>>()?;
        let baseline = current.is_empty();

        let mut changes: Vec<(&str, Option<&str>, Option<&str>)> = Vec::new();
        for (key, value) in &update.set {
            let old = current.get(key).map(String::as_str);
            if old != Some(value.as_str()) {
                changes.push((key, old, Some(value)));
            }
        }
        if update.full {
            for (key, old) in &current {
                if !update.set.contains_key(key) {
                    changes.push((key, Some(old), None));
                }
            }
        } else {
            for key in &update.removed {
                if let Some(old) = current.get(key) {
                    changes.push((key, Some(old), None));
                }
            }
        }

        // Updates are diffs, so a per-update limit alone would let a host grow its facts without
        // bound across updates: the stored result is limited too.
        let mut after: HashMap<&str, &str> = current.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        for (key, _, new) in &changes {
            match new {
                Some(value) => after.insert(key, value),
                None => after.remove(key),
            };
        }
        let bytes: usize = after.iter().map(|(k, v)| k.len() + v.len()).sum();
        if after.len() > MAX_HOST_FACTS || bytes > MAX_HOST_FACT_BYTES {
            return Err(StoreError::Limit(format!(
                "the host would hold {} facts of {bytes} bytes; at most {MAX_HOST_FACTS} facts and \
                 {MAX_HOST_FACT_BYTES} bytes per host",
                after.len()
            )));
        }
        for (key, _, new) in &changes {
            match new {
                Some(value) => {
                    sqlx::query(
                        "INSERT INTO facts (host_id, key, value, updated_at) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (host_id, key) DO UPDATE SET value = ?3, updated_at = ?4",
                    )
                    .bind(host_id)
                    .bind(key)
                    .bind(value)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?;
                }
                None => {
                    sqlx::query("DELETE FROM facts WHERE host_id = ? AND key = ?")
                        .bind(host_id)
                        .bind(key)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        let mut recorded = 0;
        if !baseline {
            for (key, old, new) in changes.iter().filter(|(key, ..)| !VOLATILE_FACTS.contains(key)) {
                sqlx::query(
                    "INSERT INTO fact_changes (at, host_id, key, old_value, new_value) VALUES (?, ?, ?, ?, ?)",
                )
                .bind(now_ms)
                .bind(host_id)
                .bind(key)
                .bind(old)
                .bind(new)
                .execute(&mut *tx)
                .await?;
                recorded += 1;
            }
        }
        tx.commit().await?;
        Ok(FactsApplied { changed: changes.len(), recorded })
    }

    /// A host's current facts, by key.
    pub async fn facts(&self, host_id: &str) -> Result<Vec<v1::Fact>, StoreError> {
        let rows = sqlx::query("SELECT key, value, updated_at FROM facts WHERE host_id = ? ORDER BY key")
            .bind(host_id)
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|row| {
                Ok(v1::Fact {
                    key: row.try_get("key")?,
                    value: row.try_get("value")?,
                    updated_at_ms: row.try_get("updated_at")?,
                })
            })
            .collect()
    }

    /// The facts whose key starts with `prefix`, of one host or every host: host id → key → value.
    pub async fn facts_with_prefix(
        &self,
        host_id: Option<&str>,
        prefix: &str,
    ) -> Result<HashMap<String, BTreeMap<String, String>>, StoreError> {
        // A key range rather than a LIKE, so one host's lookup is a primary-key range scan.
        let end = format!("{prefix}\u{10FFFF}");
        let rows = sqlx::query(
            "SELECT host_id, key, value FROM facts
             WHERE (?1 IS NULL OR host_id = ?1) AND key >= ?2 AND key < ?3 ORDER BY host_id",
        )
        .bind(host_id)
        .bind(prefix)
        .bind(end)
        .fetch_all(self.pool())
        .await?;
        let mut out: HashMap<String, BTreeMap<String, String>> = HashMap::new();
        for row in &rows {
            out.entry(row.try_get("host_id")?)
                .or_default()
                .insert(row.try_get("key")?, row.try_get("value")?);
        }
        Ok(out)
    }

    /// Inventory changes, newest first.
    pub async fn fact_changes(&self, filter: &ChangeFilter) -> Result<Vec<v1::FactChange>, StoreError> {
        let rows = sqlx::query(
            "SELECT c.at, c.host_id, h.name, c.key, c.old_value, c.new_value
             FROM fact_changes c JOIN hosts h ON h.id = c.host_id
             WHERE (?1 IS NULL OR c.host_id = ?1) AND c.at >= ?2 AND substr(c.key, 1, length(?3)) = ?3
             ORDER BY c.at DESC, c.id DESC LIMIT ?4",
        )
        .bind(filter.host_id.as_deref())
        .bind(filter.since_ms)
        .bind(&filter.key_prefix)
        .bind(i64::from(filter.limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(v1::FactChange {
                    at_ms: row.try_get("at")?,
                    host_id: row.try_get("host_id")?,
                    host_name: row.try_get("name")?,
                    key: row.try_get("key")?,
                    old_value: row.try_get("old_value")?,
                    new_value: row.try_get("new_value")?,
                })
            })
            .collect()
    }

    /// Deletes change history older than `before`.
    pub async fn prune_fact_changes(&self, before: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query("DELETE FROM fact_changes WHERE at < ?")
            .bind(before)
            .execute(self.writer())
            .await?
            .rows_affected())
    }

    /// Removes a host's metrics (metric rows carry no foreign key: keeping inserts cheap).
    pub(crate) async fn delete_host_metrics(
        tx: &mut sqlx::Transaction<'static, Sqlite>,
        host_id: &str,
    ) -> Result<(), StoreError> {
        for table in [MetricTable::Raw, MetricTable::Minute, MetricTable::Hour] {
            let sql = format!(
                "DELETE FROM {} WHERE series IN (SELECT id FROM metric_series WHERE host_id = ?)",
                table.name()
            );
            sqlx::query(AssertSqlSafe(sql)).bind(host_id).execute(&mut **tx).await?;
        }
        Ok(())
    }
}

fn point_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<v1::MetricPoint, StoreError> {
    let samples: i64 = row.try_get("samples")?;
    #[allow(clippy::cast_precision_loss)]
    let float = |name: &str| -> Result<f64, sqlx::Error> {
        // Raw integer columns come back as integers; rollup columns as reals.
        row.try_get::<f64, _>(name).or_else(|_| row.try_get::<i64, _>(name).map(|v| v as f64))
    };
    Ok(v1::MetricPoint {
        at_ms: row.try_get("at")?,
        samples: u32::try_from(samples).unwrap_or(u32::MAX),
        cpu_percent: float("cpu")?,
        cpu_percent_max: float("cpu_max")?,
        load1: float("load1")?,
        mem_used_bytes: float("mem_used")?,
        mem_used_bytes_max: float("mem_used_max")?,
        mem_total_bytes: float("mem_total")?,
        swap_used_bytes: float("swap_used")?,
        disk_used_percent: float("disk_pct")?,
        disk_used_percent_max: float("disk_pct_max")?,
        net_rx_bytes_per_sec: float("net_rx")?,
        net_tx_bytes_per_sec: float("net_tx")?,
        process_count: float("procs")?,
    })
}
