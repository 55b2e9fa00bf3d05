//! Token buckets per principal (or source address) and bucket kind. In memory: limits protect
//! this controller process, and a restart refilling them is harmless.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::RateLimits;

/// What is being limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bucket {
    Observe,
    Control,
    Admin,
    Exec,
    /// Enrollment and login attempts, per source address.
    Enroll,
}

impl Bucket {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Observe => "observe",
            Self::Control => "control",
            Self::Admin => "admin",
            Self::Exec => "exec",
            Self::Enroll => "enrollment",
        }
    }
}

#[derive(Debug)]
struct State {
    tokens: f64,
    updated: Instant,
}

/// Refused: try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

#[derive(Debug)]
pub struct RateLimiter {
    limits: RateLimits,
    buckets: Mutex<HashMap<(String, Bucket), State>>,
}

/// Buckets idle this long are full again and can be forgotten.
const IDLE_EVICTION: Duration = Duration::from_secs(600);

impl RateLimiter {
    pub fn new(limits: RateLimits) -> Self {
        Self { limits, buckets: Mutex::default() }
    }

    fn per_minute(&self, bucket: Bucket) -> u32 {
        match bucket {
            Bucket::Observe => self.limits.observe_per_minute,
            Bucket::Control => self.limits.control_per_minute,
            Bucket::Admin => self.limits.admin_per_minute,
            Bucket::Exec => self.limits.exec_per_minute,
            Bucket::Enroll => self.limits.enroll_per_minute_per_address,
        }
    }

    /// Takes one token from `who`'s `bucket`, or says how long until one is available.
    /// Capacity is one minute's worth, refilled continuously.
    pub fn check(&self, who: &str, bucket: Bucket) -> Result<(), RetryAfter> {
        let per_minute = self.per_minute(bucket);
        if per_minute == 0 {
            return Err(RetryAfter(Duration::from_secs(60)));
        }
        let capacity = f64::from(per_minute);
        let rate = capacity / 60.0;
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() > 100_000 {
            buckets.retain(|_, s| now.duration_since(s.updated) < IDLE_EVICTION);
        }
        let state =
            buckets.entry((who.to_owned(), bucket)).or_insert(State { tokens: capacity, updated: now });
        let refill = now.duration_since(state.updated).as_secs_f64() * rate;
        state.tokens = (state.tokens + refill).min(capacity);
        state.updated = now;
        if state.tokens >= 1.0 {
            state.tokens -= 1.0;
            Ok(())
        } else {
            Err(RetryAfter(Duration::from_secs_f64((1.0 - state.tokens) / rate)))
        }
    }
}

impl RetryAfter {
    /// The gRPC status for a refusal, with the delay in the message and in `retry-after-ms`.
    pub fn into_status(self, bucket: Bucket) -> tonic::Status {
        let ms = u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut status = tonic::Status::resource_exhausted(format!(
            "rate limit for {} requests exceeded; retry in {:.1} s",
            bucket.as_str(),
            self.0.as_secs_f64()
        ));
        if let Ok(value) = ms.to_string().parse() {
            status.metadata_mut().insert("retry-after-ms", value);
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_beyond_capacity_and_says_when_to_retry() {
        let limits = RateLimits { exec_per_minute: 3, ..RateLimits::default() };
        let limiter = RateLimiter::new(limits);
        for _ in 0..3 {
            limiter.check("alice", Bucket::Exec).expect("within the limit");
        }
        let RetryAfter(wait) = limiter.check("alice", Bucket::Exec).expect_err("over the limit");
        assert!(wait > Duration::from_secs(10) && wait <= Duration::from_secs(20), "{wait:?}");
        // Other principals and buckets are independent.
        limiter.check("bob", Bucket::Exec).expect("bob has his own bucket");
        limiter.check("alice", Bucket::Observe).expect("observe is separate");
    }
}
