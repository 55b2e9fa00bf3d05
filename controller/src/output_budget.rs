//! How much job output the controller holds in memory at once, over all running jobs.
//!
//! Each job caps every host's stdout and stderr (`output_cap`), but caps multiply: a 1,000-host
//! job at the 64 MiB maximum could ask for 128 GiB. Running jobs draw on one budget
//! (`limits.max_live_output_bytes`); once it is spent, further output is cut (the host's result
//! says so, as for its own cap) until jobs finish and hand their share back. Watchers never add
//! to it: they read the one event log of the job.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The controller-wide budget.
#[derive(Debug, Clone)]
pub struct OutputBudget {
    used: Arc<AtomicU64>,
    limit: u64,
}

impl OutputBudget {
    pub fn new(limit: u64) -> Self {
        Self { used: Arc::default(), limit }
    }

    /// A job's account on the budget; what it took is handed back when the job is dropped (its
    /// event log, which holds the output, goes with it).
    pub fn account(&self) -> OutputAccount {
        OutputAccount { budget: self.clone(), held: AtomicU64::new(0) }
    }

    /// Bytes held by running jobs now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }
}

/// What one job holds of the budget.
#[derive(Debug)]
pub struct OutputAccount {
    budget: OutputBudget,
    held: AtomicU64,
}

impl OutputAccount {
    /// Takes up to `wanted` bytes; returns how many the job may keep.
    pub fn take(&self, wanted: usize) -> usize {
        let wanted = u64::try_from(wanted).unwrap_or(u64::MAX);
        let limit = self.budget.limit;
        let mut granted = 0;
        // A compare-and-swap loop: concurrent jobs never overdraw the budget together.
        let _ = self.budget.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            granted = wanted.min(limit.saturating_sub(used));
            Some(used + granted)
        });
        self.held.fetch_add(granted, Ordering::Relaxed);
        usize::try_from(granted).unwrap_or(usize::MAX)
    }
}

impl Drop for OutputAccount {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(*self.held.get_mut(), Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_share_the_budget_and_hand_it_back() {
        let budget = OutputBudget::new(100);
        let first = budget.account();
        assert_eq!(first.take(60), 60);
        let second = budget.account();
        assert_eq!(second.take(60), 40, "only what is left");
        assert_eq!(second.take(1), 0);
        assert_eq!(budget.used(), 100);
        drop(first);
        assert_eq!(budget.used(), 40);
        assert_eq!(second.take(usize::MAX), 60);
        drop(second);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn concurrent_takers_never_overdraw() {
        let budget = OutputBudget::new(10_000);
        let accounts: Vec<_> = (0..8).map(|_| budget.account()).collect();
        let granted: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = accounts
                .iter()
                .map(|account| scope.spawn(move || (0..1_000).map(|_| account.take(3)).sum::<usize>()))
                .collect();
            handles.into_iter().map(|h| h.join().expect("thread")).sum()
        });
        assert_eq!(granted, 10_000);
        assert_eq!(budget.used(), 10_000);
        drop(accounts);
        assert_eq!(budget.used(), 0);
    }
}
