//! Refusals in the audit log, bounded. Every refusal is worth knowing about, but a caller that
//! repeats a refused call (a revoked certificate in a retry loop, a viewer probing admin methods)
//! must not be able to grow the log without bound or turn the writer into its amplifier. Each
//! caller's refusals are recorded one by one within its [`Bucket::Refused`] budget; past it they
//! are counted and recorded as one row per caller and minute.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::json;

use crate::audit::{AuditLog, AuditRecord};
use crate::rate_limit::{Bucket, RateLimiter};

/// How often counted refusals are written as one row each.
const FLUSH_EVERY: Duration = Duration::from_secs(60);
/// Callers tracked at once between flushes; beyond this, refusals are only logged.
const MAX_CALLERS: usize = 10_000;

#[derive(Debug)]
pub struct RefusalLog {
    audit: AuditLog,
    limiter: Arc<RateLimiter>,
    /// Refusals past the budget, per caller, since the last flush: how many, and the last
    /// method refused.
    counted: Mutex<HashMap<String, (u64, String)>>,
}

impl RefusalLog {
    /// Starts the log and its flush task (which ends when the log is dropped).
    pub fn start(audit: AuditLog, limiter: Arc<RateLimiter>) -> Arc<Self> {
        let log = Arc::new(Self { audit, limiter, counted: Mutex::default() });
        tokio::spawn(flush_every(Arc::downgrade(&log), FLUSH_EVERY));
        log
    }

    /// Records `record` (a refusal of `who`), or counts it when `who` is over its budget.
    pub async fn record(&self, who: &str, method: &str, record: AuditRecord) {
        if self.limiter.check(who, Bucket::Refused).is_ok() {
            self.audit.record(record).await;
            return;
        }
        let mut counted = self.counted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if counted.len() >= MAX_CALLERS && !counted.contains_key(who) {
            tracing::debug!(caller = who, method, "refusal not audited: too many callers refused at once");
            return;
        }
        let entry = counted.entry(who.to_owned()).or_insert((0, String::new()));
        entry.0 += 1;
        method.clone_into(&mut entry.1);
    }

    /// Writes one row per caller whose refusals were counted, and starts counting afresh.
    pub async fn flush(&self) {
        let counted =
            std::mem::take(&mut *self.counted.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for (who, (count, method)) in counted {
            let arguments =
                json!({"refusals": count, "last_method": method, "window_secs": FLUSH_EVERY.as_secs()});
            let why = format!("{count} further refusal(s) past the per-caller audit budget, counted");
            self.audit.record(AuditRecord::deny(who, "call.refusals_counted", arguments, &why)).await;
        }
    }
}

async fn flush_every(log: Weak<RefusalLog>, period: Duration) {
    let mut ticks = tokio::time::interval(period);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(log) = log.upgrade() else { return };
        log.flush().await;
    }
}
