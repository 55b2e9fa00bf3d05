//! The append-only, hash-chained audit log.
//!
//! Rows are appended by one writer task, in batches, so the chain has a single author and
//! recording never blocks a request on SQLite. Each row stores the previous row's hash and
//! `SHA-256(previous hash || canonical content)`; [`AuditLog::verify`] recomputes the chain and names the
//! first row that was altered, deleted, inserted or reordered. Deleting the newest rows leaves a
//! valid chain, so verification also compares the last row with the head this controller wrote.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::Row;
use tailops_proto::v1;
use tokio::sync::{mpsc, oneshot};

use crate::batch::next_batch;
use crate::now_ms;
use crate::store::{Store, StoreError};
use crate::telemetry::Telemetry;

const QUEUE: usize = 4096;
const BATCH: usize = 256;
/// Rows kept for a retry while the log cannot be written (actions are refused meanwhile, so
/// only refusals and reads add to them).
const MAX_UNWRITTEN: usize = 4 * QUEUE;
const RETRY_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// Argument keys whose values are never recorded, whatever a caller passes.
const SECRET_KEYS: &[&str] = &["token", "secret", "key", "key_pem", "password", "csr_pem", "certificate_pem"];

/// Whether the audited action was allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
}

impl Decision {
    fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

/// One thing that happened, before it is sequenced and hashed.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub principal: String,
    pub action: String,
    pub targets: Vec<String>,
    pub arguments: Value,
    pub decision: Decision,
    pub outcome: String,
    /// The program the principal's request came through (`NAME/VERSION`), if it named one.
    pub client: Option<String>,
}

impl AuditRecord {
    pub fn allow(
        principal: impl Into<String>,
        action: &str,
        targets: Vec<String>,
        arguments: Value,
        outcome: &str,
    ) -> Self {
        Self {
            principal: principal.into(),
            action: action.to_owned(),
            targets,
            arguments,
            decision: Decision::Allow,
            outcome: outcome.to_owned(),
            client: None,
        }
    }

    pub fn deny(principal: impl Into<String>, action: &str, arguments: Value, reason: &str) -> Self {
        Self {
            principal: principal.into(),
            action: action.to_owned(),
            targets: Vec::new(),
            arguments,
            decision: Decision::Deny,
            outcome: reason.to_owned(),
            client: None,
        }
    }

    /// Attributes the row to the client the request came through (see [`crate::auth::Principal`]).
    #[must_use]
    pub fn via(mut self, client: Option<String>) -> Self {
        self.client = client;
        self
    }
}

enum Command {
    Append(AuditRecord),
    Flush(oneshot::Sender<()>),
    Verify(oneshot::Sender<Result<v1::VerifyAuditResponse, StoreError>>),
}

/// Handle for recording; cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditLog {
    queue: mpsc::Sender<Command>,
    /// Set while rows cannot be written (disk full, database error); cleared once they are.
    failing: Arc<AtomicBool>,
    /// The database file, named when rows cannot be written.
    database: Arc<std::path::Path>,
}

/// The audit log cannot be written: actions that change anything are refused until it can.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the audit log cannot be written (disk full or database error at {}), so actions that change \
     anything are refused until it can; free space on that disk or check the controller's log",
    database.display()
)]
pub struct AuditUnavailable {
    pub database: Arc<std::path::Path>,
}

impl From<AuditUnavailable> for tonic::Status {
    fn from(e: AuditUnavailable) -> Self {
        tonic::Status::unavailable(e.to_string())
    }
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("audit command")
    }
}

/// The newest row written: its sequence number and hash.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: [u8; 32],
}

impl AuditLog {
    /// Reads the current head and starts the writer task.
    pub async fn start(store: Store, telemetry: Telemetry) -> Result<Self, StoreError> {
        let head = read_head(&store).await?;
        let (queue, rx) = mpsc::channel(QUEUE);
        let failing = Arc::new(AtomicBool::new(false));
        let database = Arc::from(store.path());
        tokio::spawn(writer(store, telemetry, rx, head, failing.clone()));
        Ok(Self { queue, failing, database })
    }

    /// Fails while the log cannot be written: an action that would go unrecorded is not taken.
    pub fn ensure_writable(&self) -> Result<(), AuditUnavailable> {
        if self.failing.load(Ordering::Relaxed) {
            Err(AuditUnavailable { database: self.database.clone() })
        } else {
            Ok(())
        }
    }

    /// Queues a record. Waits only if the writer is a full queue behind, so audit rows are never
    /// dropped.
    pub async fn record(&self, mut record: AuditRecord) {
        redact(&mut record.arguments);
        if self.queue.send(Command::Append(record)).await.is_err() {
            tracing::error!("audit writer is gone; record lost");
        }
    }

    /// Waits until everything queued so far is written.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.queue.send(Command::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Verifies the whole chain against the head this controller wrote (after everything queued).
    pub async fn verify(&self) -> Result<v1::VerifyAuditResponse, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .send(Command::Verify(tx))
            .await
            .map_err(|_| StoreError::Corrupt("audit writer is gone".into()))?;
        rx.await.map_err(|_| StoreError::Corrupt("audit writer is gone".into()))?
    }
}

fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if SECRET_KEYS.contains(&key.as_str()) {
                    *v = Value::String("[redacted]".into());
                } else {
                    redact(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

async fn read_head(store: &Store) -> Result<Head, StoreError> {
    let row = sqlx::query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        .fetch_optional(store.pool())
        .await?;
    let Some(row) = row else { return Ok(Head::default()) };
    let seq: i64 = row.try_get("seq")?;
    let hash: Vec<u8> = row.try_get("hash")?;
    Ok(Head { seq: u64::try_from(seq).unwrap_or(0), hash: hash.try_into().unwrap_or([0; 32]) })
}

/// The hashed columns of one row, exactly as stored.
struct Content<'a> {
    seq: u64,
    at: i64,
    principal: &'a str,
    action: &'a str,
    targets: &'a str,
    arguments: &'a str,
    decision: &'a str,
    outcome: &'a str,
    /// '' when the request named no client.
    client: &'a str,
}

impl Content<'_> {
    /// The bytes a row's hash covers, besides the previous hash: a JSON array of the column
    /// values, which is unambiguous (strings are escaped) and stable. The client is appended
    /// only when there is one, so rows written before it was recorded keep their hashes (and
    /// an eight-element array can never equal a nine-element one).
    fn canonical(&self) -> Vec<u8> {
        let mut values = vec![
            json!(self.seq),
            json!(self.at),
            json!(self.principal),
            json!(self.action),
            json!(self.targets),
            json!(self.arguments),
            json!(self.decision),
            json!(self.outcome),
        ];
        if !self.client.is_empty() {
            values.push(json!(self.client));
        }
        Value::Array(values).to_string().into_bytes()
    }
}

fn chain_hash(prev: &[u8], canonical: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(prev);
    hasher.update(canonical);
    hasher.finalize().into()
}

/// The single author of the chain: it alone knows the head. Rows it cannot write are kept
/// (up to [`MAX_UNWRITTEN`]) and retried every [`RETRY_EVERY`]; meanwhile the log reports itself
/// failing, so that actions are refused instead of going unrecorded.
async fn writer(
    store: Store,
    telemetry: Telemetry,
    mut rx: mpsc::Receiver<Command>,
    head: Head,
    failing: Arc<AtomicBool>,
) {
    let mut current = head;
    let mut unwritten: Vec<AuditRecord> = Vec::new();
    loop {
        let batch = if unwritten.is_empty() {
            next_batch(&mut rx, BATCH).await
        } else {
            tokio::select! {
                batch = next_batch(&mut rx, BATCH) => batch,
                () = tokio::time::sleep(RETRY_EVERY) => Some(Vec::new()),
            }
        };
        let Some(batch) = batch else { break };
        let mut flushes = Vec::new();
        let mut verifies = Vec::new();
        let mut records = std::mem::take(&mut unwritten);
        for cmd in batch {
            match cmd {
                Command::Append(r) => records.push(r),
                Command::Flush(done) => flushes.push(done),
                Command::Verify(done) => verifies.push(done),
            }
        }
        if !records.is_empty() {
            let started = std::time::Instant::now();
            match append(&store, current, &records).await {
                Ok(new_head) => {
                    current = new_head;
                    telemetry.observe_db_write("audit", records.len(), started.elapsed());
                    if failing.swap(false, Ordering::Relaxed) {
                        tracing::warn!(rows = records.len(), "audit log writable again; kept rows written");
                    }
                }
                Err(e) => {
                    failing.store(true, Ordering::Relaxed);
                    tracing::error!(
                        error = %e,
                        rows = records.len(),
                        "could not write audit rows; refusing actions until they can be written"
                    );
                    if records.len() > MAX_UNWRITTEN {
                        let lost = records.len() - MAX_UNWRITTEN;
                        tracing::error!(lost, "audit rows lost: more were kept unwritten than fit");
                        records.drain(..lost);
                    }
                    unwritten = records;
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
        // Verified here, between batches, so no append can race the comparison with the head.
        for done in verifies {
            let _ = done.send(verify(&store, current).await);
        }
    }
}

async fn append(store: &Store, mut head: Head, records: &[AuditRecord]) -> Result<Head, StoreError> {
    let mut tx = store.write_transaction().await?;
    for r in records {
        let seq = head.seq + 1;
        let at = now_ms();
        let targets = serde_json::to_string(&r.targets).unwrap_or_else(|_| "[]".into());
        let arguments = r.arguments.to_string();
        let client = r.client.as_deref().unwrap_or_default();
        let content = Content {
            seq,
            at,
            principal: &r.principal,
            action: &r.action,
            targets: &targets,
            arguments: &arguments,
            decision: r.decision.as_str(),
            outcome: &r.outcome,
            client,
        }
        .canonical();
        let hash = chain_hash(&head.hash, &content);
        sqlx::query(
            "INSERT INTO audit (seq, at, principal, action, targets, arguments, decision, outcome, client, prev_hash, hash)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(i64::try_from(seq).unwrap_or(i64::MAX))
        .bind(at)
        .bind(&r.principal)
        .bind(&r.action)
        .bind(&targets)
        .bind(&arguments)
        .bind(r.decision.as_str())
        .bind(&r.outcome)
        .bind(client)
        .bind(head.hash.as_slice())
        .bind(hash.as_slice())
        .execute(&mut *tx)
        .await?;
        head = Head { seq, hash };
    }
    tx.commit().await?;
    Ok(head)
}

/// Lists rows, newest first.
pub async fn list(store: &Store, req: &v1::ListAuditRequest) -> Result<Vec<v1::AuditEntry>, StoreError> {
    let limit = if req.limit == 0 { 100 } else { req.limit.min(10_000) };
    let rows = sqlx::query(
        "SELECT * FROM audit WHERE at >= ? AND (? = '' OR principal = ?) AND (? = '' OR action = ?)
         ORDER BY seq DESC LIMIT ?",
    )
    .bind(req.since_ms)
    .bind(&req.principal)
    .bind(&req.principal)
    .bind(&req.action)
    .bind(&req.action)
    .bind(i64::from(limit))
    .fetch_all(store.pool())
    .await?;
    rows.iter()
        .map(|row| {
            let targets: String = row.try_get("targets")?;
            Ok(v1::AuditEntry {
                seq: u64::try_from(row.try_get::<i64, _>("seq")?).unwrap_or(0),
                at_ms: row.try_get("at")?,
                principal: row.try_get("principal")?,
                action: row.try_get("action")?,
                targets: serde_json::from_str(&targets).unwrap_or_default(),
                arguments_json: row.try_get("arguments")?,
                decision: row.try_get("decision")?,
                outcome: row.try_get("outcome")?,
                client: row.try_get("client")?,
            })
        })
        .collect()
}

/// Recomputes the chain over every row and compares its end with `head`.
async fn verify(store: &Store, head: Head) -> Result<v1::VerifyAuditResponse, StoreError> {
    // One read transaction: the anchor and the rows after it are one snapshot, even if retention
    // prunes meanwhile.
    let mut snapshot = store.pool().begin().await?;
    let anchor =
        sqlx::query("SELECT seq, hash FROM audit_anchor WHERE id = 1").fetch_optional(&mut *snapshot).await?;
    let rows = sqlx::query("SELECT * FROM audit ORDER BY seq").fetch_all(&mut *snapshot).await?;
    snapshot.commit().await?;
    let (mut prev_seq, mut prev_hash) = match anchor {
        Some(row) => {
            let hash: Vec<u8> = row.try_get("hash")?;
            (u64::try_from(row.try_get::<i64, _>("seq")?).unwrap_or(0), hash.try_into().unwrap_or([0; 32]))
        }
        None => (0u64, [0u8; 32]),
    };
    let bad = |seq: u64, checked: u64, problem: String| v1::VerifyAuditResponse {
        intact: false,
        rows_checked: checked,
        first_bad_seq: seq,
        problem,
    };
    for (checked, row) in (1u64..).zip(rows.iter()) {
        let seq = u64::try_from(row.try_get::<i64, _>("seq")?).unwrap_or(0);
        let stored_prev: Vec<u8> = row.try_get("prev_hash")?;
        let stored_hash: Vec<u8> = row.try_get("hash")?;
        if seq != prev_seq + 1 {
            return Ok(bad(
                prev_seq + 1,
                checked,
                format!("row {} is missing (next row is {seq}): rows were deleted", prev_seq + 1),
            ));
        }
        if stored_prev != prev_hash {
            return Ok(bad(
                seq,
                checked,
                format!(
                    "row {seq} does not follow row {prev_seq}: rows were inserted, replaced or reordered"
                ),
            ));
        }
        let (principal, action, targets, arguments, decision, outcome, client): (
            String,
            String,
            String,
            String,
            String,
            String,
            String,
        ) = (
            row.try_get("principal")?,
            row.try_get("action")?,
            row.try_get("targets")?,
            row.try_get("arguments")?,
            row.try_get("decision")?,
            row.try_get("outcome")?,
            row.try_get("client")?,
        );
        let content = Content {
            seq,
            at: row.try_get("at")?,
            principal: &principal,
            action: &action,
            targets: &targets,
            arguments: &arguments,
            decision: &decision,
            outcome: &outcome,
            client: &client,
        }
        .canonical();
        let hash = chain_hash(&prev_hash, &content);
        if stored_hash != hash {
            return Ok(bad(
                seq,
                checked,
                format!("row {seq} was altered: its content does not match its hash"),
            ));
        }
        if seq == head.seq && hash != head.hash {
            return Ok(bad(
                seq,
                checked,
                format!("row {seq} differs from the one this controller wrote: the chain was rewritten"),
            ));
        }
        prev_seq = seq;
        prev_hash = hash;
    }
    let checked = u64::try_from(rows.len()).unwrap_or(u64::MAX);
    if prev_seq > head.seq {
        return Ok(bad(
            head.seq + 1,
            checked,
            format!(
                "rows {}..={prev_seq} were not written by this controller: rows were inserted",
                head.seq + 1
            ),
        ));
    }
    if head.seq > prev_seq {
        return Ok(bad(
            prev_seq + 1,
            checked,
            format!("rows {}..={} were deleted from the end of the log", prev_seq + 1, head.seq),
        ));
    }
    Ok(v1::VerifyAuditResponse {
        intact: true,
        rows_checked: checked,
        first_bad_seq: 0,
        problem: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("audit.db")).await.expect("open store");
        (dir, store)
    }

    /// Writes row `seq` exactly as the controller did before clients were recorded: no client
    /// column in the insert, and the eight-value canonical form.
    async fn insert_old_style_row(store: &Store, prev: Head) -> Head {
        let seq = prev.seq + 1;
        let at = 1_700_000_000_000_i64 + i64::try_from(seq).expect("seq");
        let content =
            json!([seq, at, "spiffe://t/user/old", "fleet.create_join_token", "[]", "{}", "allow", "ok"])
                .to_string()
                .into_bytes();
        let hash = chain_hash(&prev.hash, &content);
        sqlx::query(
            "INSERT INTO audit (seq, at, principal, action, targets, arguments, decision, outcome, prev_hash, hash)
             VALUES (?, ?, 'spiffe://t/user/old', 'fleet.create_join_token', '[]', '{}', 'allow', 'ok', ?, ?)",
        )
        .bind(i64::try_from(seq).expect("seq"))
        .bind(at)
        .bind(prev.hash.as_slice())
        .bind(hash.as_slice())
        .execute(store.writer())
        .await
        .expect("insert old row");
        Head { seq, hash }
    }

    fn record(client: Option<&str>) -> AuditRecord {
        AuditRecord::allow("spiffe://t/bridge/b", "job.create", vec!["a".into()], json!({"job_id": 1}), "ok")
            .via(client.map(str::to_owned))
    }

    #[tokio::test]
    async fn rows_written_before_clients_were_recorded_still_verify() {
        let (_dir, store) = store().await;
        let head = insert_old_style_row(&store, Head::default()).await;
        let head = insert_old_style_row(&store, head).await;
        // New rows, with and without a client, chain on to the old ones.
        let head =
            append(&store, head, &[record(Some("claude-code/1.0.3")), record(None)]).await.expect("append");
        let report = verify(&store, head).await.expect("verify");
        assert!(report.intact, "{}", report.problem);
        assert_eq!(report.rows_checked, 4);
        let entries = list(&store, &v1::ListAuditRequest::default()).await.expect("list");
        let clients: Vec<&str> = entries.iter().map(|e| e.client.as_str()).collect();
        assert_eq!(clients, ["", "claude-code/1.0.3", "", ""]);
    }

    #[tokio::test]
    async fn altering_a_rows_client_is_detected() {
        let (_dir, store) = store().await;
        let head = insert_old_style_row(&store, Head::default()).await;
        let head =
            append(&store, head, &[record(Some("claude-code/1.0.3")), record(None)]).await.expect("append");
        assert!(verify(&store, head).await.expect("verify").intact);

        for (seq, forged) in [(1, "claude-code/1.0.3"), (2, "other/2.0"), (2, ""), (3, "cursor/0.9")] {
            let original: String = sqlx::query_scalar("SELECT client FROM audit WHERE seq = ?")
                .bind(seq)
                .fetch_one(store.pool())
                .await
                .expect("read");
            let edit = "UPDATE audit SET client = ? WHERE seq = ?";
            sqlx::query(edit).bind(forged).bind(seq).execute(store.writer()).await.expect("forge");
            let report = verify(&store, head).await.expect("verify");
            assert!(!report.intact, "client of row {seq} changed to {forged:?} went unnoticed");
            assert_eq!(report.first_bad_seq, u64::try_from(seq).expect("seq"));
            assert!(report.problem.contains("altered"), "{}", report.problem);
            sqlx::query(edit).bind(original).bind(seq).execute(store.writer()).await.expect("restore");
            assert!(verify(&store, head).await.expect("verify").intact);
        }
    }
}
