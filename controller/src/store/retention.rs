//! Deleting what is kept no longer: ended jobs with their per-host results and output,
//! certificates long expired, join tokens and invites long expired or used up. Each delete is
//! one short write transaction, in slices, so retention never holds the writer for long.

use super::{Store, StoreError};

/// Rows deleted per statement: small enough that other writers wait milliseconds, not seconds.
const SLICE: i64 = 500;

impl Store {
    /// Deletes jobs that ended before `before_ms`, with their targets; jobs still running or
    /// waiting for approval are kept whatever their age. Returns how many jobs went.
    pub async fn prune_jobs(&self, before_ms: i64) -> Result<u64, StoreError> {
        let mut deleted = 0;
        loop {
            let mut tx = self.write_transaction().await?;
            sqlx::query(
                "DELETE FROM job_targets WHERE job_id IN
                 (SELECT id FROM jobs WHERE finished_at > 0 AND finished_at < ? ORDER BY id LIMIT ?)",
            )
            .bind(before_ms)
            .bind(SLICE)
            .execute(&mut *tx)
            .await?;
            let jobs = sqlx::query(
                "DELETE FROM jobs WHERE id IN
                 (SELECT id FROM jobs WHERE finished_at > 0 AND finished_at < ? ORDER BY id LIMIT ?)",
            )
            .bind(before_ms)
            .bind(SLICE)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            deleted += jobs;
            if jobs < u64::try_from(SLICE).unwrap_or(u64::MAX) {
                return Ok(deleted);
            }
        }
    }

    /// Deletes the records of certificates that expired before `before_ms`: no TLS handshake
    /// accepts them any more, so their revocation state no longer matters.
    pub async fn prune_certificates(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.prune_sliced(
            "DELETE FROM certificates WHERE serial IN
             (SELECT serial FROM certificates WHERE not_after < ? LIMIT ?)",
            before_ms,
        )
        .await
    }

    /// Deletes join tokens and invites that expired before `before_ms` (used-up tokens expire
    /// like the others; their hashes are useless to anyone).
    pub async fn prune_tokens(&self, before_ms: i64) -> Result<u64, StoreError> {
        let tokens = self
            .prune_sliced(
                "DELETE FROM join_tokens WHERE id IN
                 (SELECT id FROM join_tokens WHERE expires_at < ? LIMIT ?)",
                before_ms,
            )
            .await?;
        let invites = self
            .prune_sliced(
                "DELETE FROM invites WHERE id IN
                 (SELECT id FROM invites WHERE expires_at < ? LIMIT ?)",
                before_ms,
            )
            .await?;
        Ok(tokens + invites)
    }

    /// Deletes audit rows recorded before `before_ms`, always keeping the newest row, and moves
    /// the chain's anchor to the last row deleted (its sequence number and hash), in the same
    /// transaction: verification then starts from the anchor, and a gap or an edit after it is
    /// still found.
    pub async fn prune_audit(&self, before_ms: i64) -> Result<u64, StoreError> {
        let mut tx = self.write_transaction().await?;
        let last = sqlx::query(
            "SELECT seq, hash FROM audit WHERE at < ? AND seq < (SELECT MAX(seq) FROM audit)
             ORDER BY seq DESC LIMIT 1",
        )
        .bind(before_ms)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(last) = last else { return Ok(0) };
        let seq: i64 = sqlx::Row::try_get(&last, "seq")?;
        let hash: Vec<u8> = sqlx::Row::try_get(&last, "hash")?;
        let deleted = sqlx::query("DELETE FROM audit WHERE seq <= ?")
            .bind(seq)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query(
            "INSERT INTO audit_anchor (id, seq, hash, at) VALUES (1, ?, ?, ?)
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, at = excluded.at",
        )
        .bind(seq)
        .bind(hash)
        .bind(crate::now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(deleted)
    }

    async fn prune_sliced(&self, statement: &'static str, before_ms: i64) -> Result<u64, StoreError> {
        let mut deleted = 0;
        loop {
            let mut tx = self.write_transaction().await?;
            let n =
                sqlx::query(statement).bind(before_ms).bind(SLICE).execute(&mut *tx).await?.rows_affected();
            tx.commit().await?;
            deleted += n;
            if n < u64::try_from(SLICE).unwrap_or(u64::MAX) {
                return Ok(deleted);
            }
        }
    }
}
