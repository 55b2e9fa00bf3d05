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
    /// Refusals audited one by one, per principal or source address.
    Refused,
    /// Agent link streams opened, per agent identity.
    AgentConnect,
}

impl Bucket {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Observe => "observe",
            Self::Control => "control",
            Self::Admin => "admin",
            Self::Exec => "exec",
            Self::Enroll => "enrollment",
            Self::Refused => "refusal",
            Self::AgentConnect => "agent connection",
        }
    }
}

#[derive(Debug)]
struct State {
    tokens: f64,
    updated: Instant,
}

/// A budget of messages per second for one stream, with a burst of two seconds' worth. It
/// paces instead of refusing: [`MessagePacer::admit`] waits until the next message may be read,
/// so an agent that sends too much is slowed by backpressure, not cut off.
#[derive(Debug)]
pub struct MessagePacer {
    per_second: f64,
    tokens: f64,
    updated: tokio::time::Instant,
}

impl MessagePacer {
    pub fn new(per_second: u32) -> Self {
        let per_second = f64::from(per_second.max(1));
        Self { per_second, tokens: 2.0 * per_second, updated: tokio::time::Instant::now() }
    }

    /// Takes one message's token, waiting for it if the budget is spent.
    pub async fn admit(&mut self) {
        let now = tokio::time::Instant::now();
        let refill = now.duration_since(self.updated).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + refill).min(2.0 * self.per_second);
        self.updated = now;
        if self.tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - self.tokens) / self.per_second);
            tokio::time::sleep(wait).await;
            self.tokens = 1.0;
            self.updated = tokio::time::Instant::now();
        }
        self.tokens -= 1.0;
    }
}

/// Refused: try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

#[derive(Debug)]
pub struct RateLimiter {
    limits: RateLimits,
    buckets: Mutex<Buckets>,
}

#[derive(Debug)]
struct Buckets {
    states: HashMap<(String, Bucket), State>,
    swept: Instant,
}

/// Buckets idle this long are full again and can be forgotten.
const IDLE_EVICTION: Duration = Duration::from_secs(600);
/// Past this many buckets the map is swept, at most once per [`SWEEP_EVERY`], so that callers
/// minting fresh keys (rotating source addresses) cost a lookup each, not a scan each.
const MAX_BUCKETS: usize = 100_000;
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl RateLimiter {
    pub fn new(limits: RateLimits) -> Self {
        Self { limits, buckets: Mutex::new(Buckets { states: HashMap::new(), swept: Instant::now() }) }
    }

    /// Forgets idle buckets and, if that is not enough, the nearly full ones: forgetting a
    /// bucket refills it, which changes nothing for one that is (nearly) full anyway. Buckets
    /// that are actually limiting someone stay.
    fn sweep(&self, buckets: &mut Buckets, now: Instant) {
        buckets.swept = now;
        buckets.states.retain(|_, s| now.duration_since(s.updated) < IDLE_EVICTION);
        if buckets.states.len() >= MAX_BUCKETS {
            buckets.states.retain(|(_, bucket), s| {
                let capacity = f64::from(self.per_minute(*bucket));
                s.tokens < (capacity - 1.0).max(capacity / 2.0)
            });
        }
    }

    fn per_minute(&self, bucket: Bucket) -> u32 {
        match bucket {
            Bucket::Observe => self.limits.observe_per_minute,
            Bucket::Control => self.limits.control_per_minute,
            Bucket::Admin => self.limits.admin_per_minute,
            Bucket::Exec => self.limits.exec_per_minute,
            Bucket::Enroll => self.limits.enroll_per_minute_per_address,
            Bucket::Refused => self.limits.refusals_per_minute,
            Bucket::AgentConnect => self.limits.agent_connects_per_minute,
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
        if buckets.states.len() >= MAX_BUCKETS && now.duration_since(buckets.swept) >= SWEEP_EVERY {
            self.sweep(&mut buckets, now);
        }
        let state = buckets
            .states
            .entry((who.to_owned(), bucket))
            .or_insert(State { tokens: capacity, updated: now });
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

    #[tokio::test]
    async fn a_chatty_stream_is_paced_not_cut() {
        let mut pacer = MessagePacer::new(100);
        let started = tokio::time::Instant::now();
        for _ in 0..200 {
            pacer.admit().await;
        }
        let burst = started.elapsed();
        for _ in 0..20 {
            pacer.admit().await;
        }
        // Every message is admitted; the twenty past the burst wait their turn (0.2 s at 100/s).
        let paced = started.elapsed() - burst;
        assert!(paced >= Duration::from_millis(150), "past the burst, reading slows down: {paced:?}");
    }

    #[test]
    fn a_flood_of_fresh_keys_is_swept_but_limited_callers_stay_limited() {
        let limits = RateLimits { exec_per_minute: 1, ..RateLimits::default() };
        let limiter = RateLimiter::new(limits);
        limiter.check("mallory", Bucket::Exec).expect("first");
        limiter.check("mallory", Bucket::Exec).expect_err("limited");
        for i in 0..MAX_BUCKETS + 10 {
            let _ = limiter.check(&format!("denied@2001:db8::{i:x}"), Bucket::Enroll);
        }
        // Force the next call to sweep, as a second passing would.
        limiter.buckets.lock().expect("lock").swept -= SWEEP_EVERY;
        let _ = limiter.check("fresh", Bucket::Enroll);
        let buckets = limiter.buckets.lock().expect("lock");
        assert!(buckets.states.len() < 100, "nearly full buckets were forgotten: {}", buckets.states.len());
        drop(buckets);
        limiter.check("mallory", Bucket::Exec).expect_err("a bucket that limits someone is kept");
    }
}
