//! Writes hosts' job results to SQLite in batches: one transaction per batch rather than one
//! per host, which is what lets a job on thousands of hosts finish in a fraction of a second.

use tokio::sync::{mpsc, oneshot};

use crate::batch::next_batch;
use crate::store::{Store, TargetOutcome};
use crate::telemetry::Telemetry;

const QUEUE: usize = 16_384;
const BATCH: usize = 1024;

/// One host's final result.
#[derive(Debug)]
pub struct HostResult {
    pub job_id: u64,
    pub host_id: String,
    pub outcome: TargetOutcome,
}

#[derive(Debug)]
enum Command {
    // Boxed: a result with an operation's output is large, a flush is a pointer.
    Write(Box<HostResult>),
    Flush(oneshot::Sender<()>),
}

#[derive(Debug, Clone)]
pub struct ResultWriter {
    queue: mpsc::Sender<Command>,
}

impl ResultWriter {
    pub fn start(store: Store, telemetry: Telemetry) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(writer(store, telemetry, rx));
        Self { queue }
    }

    pub async fn write(&self, result: HostResult) {
        if self.queue.send(Command::Write(Box::new(result))).await.is_err() {
            tracing::error!("result writer is gone; a host result was not persisted");
        }
    }

    /// Waits until every result queued so far is committed.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.queue.send(Command::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

async fn writer(store: Store, telemetry: Telemetry, mut rx: mpsc::Receiver<Command>) {
    while let Some(batch) = next_batch(&mut rx, BATCH).await {
        let mut results = Vec::new();
        let mut flushes = Vec::new();
        for cmd in batch {
            match cmd {
                Command::Write(r) => results.push(*r),
                Command::Flush(done) => flushes.push(done),
            }
        }
        if !results.is_empty() {
            let started = std::time::Instant::now();
            match store.finish_targets(&results).await {
                Ok(()) => telemetry.observe_db_write("job_results", results.len(), started.elapsed()),
                Err(e) => tracing::error!(error = %e, rows = results.len(), "could not persist host results"),
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}
