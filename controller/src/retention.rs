//! How long the controller keeps job history, audit rows, certificates and join tokens, and the
//! task that enforces it. Metrics have their own retention (`[monitoring]`). Pruning the audit log
//! moves its anchor (the last pruned row's hash), so the rest of the chain still verifies.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::store::{Store, StoreError};

/// `[retention]` in `controller.toml`. Zero keeps that kind of record forever.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Ended jobs, with each host's result and output, are deleted this long after they ended.
    pub job_days: u64,
    /// Audit rows are deleted this long after they were recorded (the newest row always stays).
    pub audit_days: u64,
    /// Certificate records are deleted this long after the certificate expired.
    pub certificate_days_after_expiry: u64,
    /// Join tokens and invites are deleted this long after they expired.
    pub token_days_after_expiry: u64,
    /// How often the pass runs.
    pub every_secs: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            job_days: 90,
            audit_days: 365,
            certificate_days_after_expiry: 30,
            token_days_after_expiry: 30,
            every_secs: 3600,
        }
    }
}

/// What one pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub jobs: u64,
    pub audit_rows: u64,
    pub certificates: u64,
    pub tokens: u64,
}

const DAY_MS: i64 = 24 * 3600 * 1000;

/// One pass as of `now_ms`. Exposed so tests can drive simulated time.
pub async fn prune_once(store: &Store, config: &RetentionConfig, now_ms: i64) -> Result<Pruned, StoreError> {
    let cutoff =
        |days: u64| now_ms.saturating_sub(i64::try_from(days).unwrap_or(i64::MAX).saturating_mul(DAY_MS));
    let mut pruned = Pruned::default();
    if config.job_days > 0 {
        pruned.jobs = store.prune_jobs(cutoff(config.job_days)).await?;
    }
    if config.audit_days > 0 {
        pruned.audit_rows = store.prune_audit(cutoff(config.audit_days)).await?;
    }
    if config.certificate_days_after_expiry > 0 {
        pruned.certificates = store.prune_certificates(cutoff(config.certificate_days_after_expiry)).await?;
    }
    if config.token_days_after_expiry > 0 {
        pruned.tokens = store.prune_tokens(cutoff(config.token_days_after_expiry)).await?;
    }
    Ok(pruned)
}

/// Runs a pass at start and then every `every_secs` until `shutdown`.
pub async fn run(store: Store, config: RetentionConfig, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(Duration::from_secs(config.every_secs.max(60)));
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shutdown.cancelled() => return,
        }
        match prune_once(&store, &config, crate::now_ms()).await {
            Ok(p) if p != Pruned::default() => {
                tracing::info!(
                    jobs = p.jobs,
                    certificates = p.certificates,
                    tokens = p.tokens,
                    "retention pass"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "retention pass failed; will retry"),
        }
    }
}
