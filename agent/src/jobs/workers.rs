//! Where typed actions run: a thread each, so nothing an operation does can hold up the link.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tailops_proto::v1;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::refused;

/// How a typed action's wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The action returned its result.
    Finished,
    /// The deadline or a cancel came first (or the action could not start); the action, if it
    /// runs, was told to stop and is no longer waited for.
    Abandoned,
}

/// Where typed actions run: each on a thread of its own with its own current-thread runtime, so
/// that nothing an operation does (CPU-bound matching over many entries, a blocking call, a
/// future that never yields) can hold up the link's runtime, which carries heartbeats, cancels
/// and results (H3). The deadline and cancel are enforced on the link's runtime, so a job ends
/// on time whatever its action does. An action still running then is abandoned: it is told to
/// stop, and its future is dropped at its next await (which kills the tools it runs, process
/// groups included), ending its thread. Work that never awaits cannot be interrupted from
/// outside; it is bounded instead: threads are counted until they end, abandoned ones included,
/// and an action beyond [`super::MAX_WORKERS`] is refused, so such work costs at most that many
/// threads, never the link.
#[derive(Debug, Clone)]
pub struct Workers {
    busy: Arc<AtomicUsize>,
    max: usize,
}

impl Workers {
    pub fn new(max: usize) -> Self {
        Self { busy: Arc::default(), max }
    }

    /// Runs `work` on a thread of its own until it returns, `timeout` passes or `cancel` fires,
    /// whichever comes first; the result records how long that took.
    pub async fn run(
        &self,
        job_id: u64,
        timeout: Duration,
        cancel: &CancellationToken,
        work: impl std::future::Future<Output = v1::CommandResult> + Send + 'static,
    ) -> (v1::CommandResult, Ended) {
        let started = Instant::now();
        let Some(slot) = Slot::take(&self.busy, self.max) else {
            tracing::warn!(job = job_id, max = self.max, "operation refused: every worker is busy");
            let why = format!(
                "the agent is busy: {} operations are still running or stopping; try again when they have ended",
                self.max
            );
            return (refused(&why), Ended::Abandoned);
        };
        let (result_tx, result_rx) = oneshot::channel();
        let stop = CancellationToken::new();
        let stop_worker = stop.clone();
        let spawned = std::thread::Builder::new().name(format!("op-{job_id}")).spawn(move || {
            let _slot = slot;
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => {
                    let error = format!("cannot start a runtime for the operation: {e}");
                    let _ = result_tx.send(v1::CommandResult { error, ..Default::default() });
                    return;
                }
            };
            // Boxed: operation futures are large, and this thread's stack is the default 2 MiB.
            let work = Box::pin(work);
            runtime.block_on(async move {
                tokio::select! {
                    result = work => {
                        let _ = result_tx.send(result);
                    }
                    () = stop_worker.cancelled() => {}
                }
            });
            // Tasks and blocking calls the operation left behind are not waited for.
            runtime.shutdown_background();
        });
        if let Err(e) = spawned {
            let error = format!("cannot start a thread for the operation: {e}");
            return (v1::CommandResult { error, ..Default::default() }, Ended::Abandoned);
        }
        // However this wait ends, the worker is told to stop.
        let _stop = stop.drop_guard();
        let (mut result, ended) = tokio::select! {
            biased;
            result = result_rx => match result {
                Ok(result) => (result, Ended::Finished),
                Err(_) => {
                    let error = "the operation stopped without a result (the agent's log says why)".to_owned();
                    (v1::CommandResult { error, ..Default::default() }, Ended::Finished)
                }
            },
            () = tokio::time::sleep(timeout) => (v1::CommandResult { timed_out: true, ..Default::default() }, Ended::Abandoned),
            () = cancel.cancelled() => (v1::CommandResult { cancelled: true, ..Default::default() }, Ended::Abandoned),
        };
        if ended == Ended::Abandoned {
            tracing::debug!(
                job = job_id,
                "operation abandoned at its deadline or cancel; its worker was told to stop"
            );
        }
        result.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        (result, ended)
    }
}

/// One of [`Workers`]' places, held by a worker thread until it ends.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(busy: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        busy.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| Self(busy.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Work that never reaches an await, as CPU-bound matching would not: it blocks its thread.
    async fn blocking_work(duration: Duration) -> v1::CommandResult {
        // Blocking on purpose: this stands for an operation that never yields.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(duration);
        v1::CommandResult { exit_code: Some(0), ..Default::default() }
    }

    /// Counts ticks of a 10 ms interval on the calling runtime, standing for the heartbeats.
    fn ticker() -> (Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
        let ticks = Arc::new(AtomicUsize::new(0));
        let counter = ticks.clone();
        let task = tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_millis(10));
            loop {
                interval.tick().await;
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        (ticks, task)
    }

    #[tokio::test]
    async fn the_deadline_ends_work_that_never_yields_and_this_runtime_keeps_running() {
        let workers = Workers::new(4);
        let (ticks, task) = ticker();
        let cancel = CancellationToken::new();
        let waited = Instant::now();
        let (result, ended) =
            workers.run(1, Duration::from_millis(300), &cancel, blocking_work(Duration::from_secs(10))).await;
        assert!(result.timed_out && !result.cancelled, "{result:?}");
        assert_eq!(ended, Ended::Abandoned);
        assert!(waited.elapsed() < Duration::from_secs(5), "the deadline waited for the work");
        // This (current-thread) runtime ran its other tasks all along.
        assert!(ticks.load(Ordering::Relaxed) >= 10, "{} ticks", ticks.load(Ordering::Relaxed));
        task.abort();
    }

    #[tokio::test]
    async fn a_cancel_ends_work_that_never_yields() {
        let workers = Workers::new(4);
        let cancel = CancellationToken::new();
        let canceller = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            canceller.cancel();
        });
        let waited = Instant::now();
        let (result, ended) =
            workers.run(2, Duration::from_secs(60), &cancel, blocking_work(Duration::from_secs(10))).await;
        assert!(result.cancelled && !result.timed_out, "{result:?}");
        assert_eq!(ended, Ended::Abandoned);
        assert!(waited.elapsed() < Duration::from_secs(5), "the cancel waited for the work");
    }

    #[tokio::test]
    async fn results_pass_through_and_a_panic_is_a_failure_not_a_lost_job() {
        let workers = Workers::new(4);
        let cancel = CancellationToken::new();
        let quick = async { v1::CommandResult { exit_code: Some(0), ..Default::default() } };
        let (result, ended) = workers.run(3, Duration::from_secs(60), &cancel, quick).await;
        assert_eq!((result.exit_code, ended), (Some(0), Ended::Finished));
        let panics = async {
            if Instant::now().elapsed() < Duration::from_secs(3600) {
                panic!("an operation's bug");
            }
            v1::CommandResult::default()
        };
        let (result, ended) = workers.run(4, Duration::from_secs(60), &cancel, panics).await;
        assert!(result.error.contains("stopped without a result"), "{result:?}");
        assert_eq!(ended, Ended::Finished);
    }

    #[tokio::test]
    async fn abandoned_work_holds_its_place_until_it_stops_and_more_is_refused() {
        let workers = Workers::new(2);
        let cancel = CancellationToken::new();
        for job in 0..2 {
            let (result, _) = workers
                .run(job, Duration::from_millis(50), &cancel, blocking_work(Duration::from_secs(1)))
                .await;
            assert!(result.timed_out);
        }
        let quick = async { v1::CommandResult { exit_code: Some(0), ..Default::default() } };
        let (result, ended) = workers.run(3, Duration::from_secs(60), &cancel, quick).await;
        assert!(result.error.starts_with("refused: the agent is busy: 2 operations"), "{}", result.error);
        assert_eq!(ended, Ended::Abandoned);
        // Once the abandoned work has stopped, its places are free again.
        for _ in 0..100 {
            if workers.busy.load(Ordering::Acquire) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let quick = async { v1::CommandResult { exit_code: Some(0), ..Default::default() } };
        let (result, ended) = workers.run(4, Duration::from_secs(60), &cancel, quick).await;
        assert_eq!((result.exit_code, ended), (Some(0), Ended::Finished), "{}", result.error);
    }
}
