//! Writes hosts' job results to SQLite in batches: one transaction per batch rather than one
//! per host, which is what lets a job on thousands of hosts finish in a fraction of a second.
//! A job's completion rides the same queue, so it commits in the transaction that holds its
//! last results instead of one of its own.

use tailops_proto::v1;
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

/// Whether a result was committed.
pub type Stored = oneshot::Receiver<bool>;

/// A job's final state.
#[derive(Debug, Clone, Copy)]
pub struct JobEnd {
    pub job_id: u64,
    pub state: v1::JobState,
    pub finished_at_ms: i64,
}

/// Why a job's end was not recorded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CloseError {
    #[error("the result writer has stopped")]
    Stopped,
    #[error("could not commit the job's results: {0}")]
    Failed(String),
}

#[derive(Debug)]
enum Command {
    // Boxed: a result with an operation's output is large, a completion is small.
    Write(Box<HostResult>, oneshot::Sender<bool>),
    Close(JobEnd, oneshot::Sender<Result<(), CloseError>>),
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

    /// Queues `result`; the returned receiver says whether it was committed.
    pub async fn write(&self, result: HostResult) -> Stored {
        let (stored, rx) = oneshot::channel();
        if self.queue.send(Command::Write(Box::new(result), stored)).await.is_err() {
            tracing::error!("result writer is gone; a host result was not persisted");
        }
        rx
    }

    /// Records a job's final state once every result queued before it is committed, in the
    /// same transaction as the last of them.
    pub async fn close_job(&self, end: JobEnd) -> Result<(), CloseError> {
        let (tx, rx) = oneshot::channel();
        self.queue.send(Command::Close(end, tx)).await.map_err(|_| CloseError::Stopped)?;
        rx.await.map_err(|_| CloseError::Stopped)?
    }
}

async fn writer(store: Store, telemetry: Telemetry, mut rx: mpsc::Receiver<Command>) {
    while let Some(batch) = next_batch(&mut rx, BATCH).await {
        let mut results = Vec::new();
        let mut stored = Vec::new();
        let mut ends = Vec::new();
        let mut waiting = Vec::new();
        for cmd in batch {
            match cmd {
                Command::Write(r, done) => {
                    results.push(*r);
                    stored.push(done);
                }
                Command::Close(end, done) => {
                    ends.push(end);
                    waiting.push(done);
                }
            }
        }
        let started = std::time::Instant::now();
        let written = match store.finish_targets(&results, &ends).await {
            Ok(()) => {
                telemetry.observe_db_write("job_results", results.len(), started.elapsed());
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, rows = results.len(), jobs = ends.len(), "could not persist host results");
                Err(CloseError::Failed(e.to_string()))
            }
        };
        for done in stored {
            let _ = done.send(written.is_ok());
        }
        for done in waiting {
            let _ = done.send(written.clone());
        }
    }
}
