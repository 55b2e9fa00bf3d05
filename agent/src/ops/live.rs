//! Lines an operation streams while it runs (following logs), delivered as the job's stdout in
//! sequence-numbered chunks like a command's output, and capped like it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tailops_proto::v1;
use tokio::sync::mpsc;

use crate::executor::OutputChunk;

#[derive(Debug, Clone)]
pub struct LiveOutput {
    tx: Option<mpsc::Sender<OutputChunk>>,
    seq: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    cap: u64,
    truncated: Arc<AtomicBool>,
}

impl LiveOutput {
    /// Streams to `tx`, at most `cap` bytes.
    pub fn new(tx: mpsc::Sender<OutputChunk>, cap: u64) -> Self {
        Self { tx: Some(tx), seq: Arc::default(), bytes: Arc::default(), cap, truncated: Arc::default() }
    }

    /// Output that goes nowhere (operations run outside a job, tests).
    pub fn discard() -> Self {
        Self { tx: None, seq: Arc::default(), bytes: Arc::default(), cap: 0, truncated: Arc::default() }
    }

    /// Sends one line; `false` once nobody listens any more (the job is over).
    pub async fn line(&self, text: &str) -> bool {
        let Some(tx) = &self.tx else { return false };
        let mut data = Vec::with_capacity(text.len() + 1);
        data.extend_from_slice(text.as_bytes());
        data.push(b'\n');
        let len = data.len() as u64;
        if self.bytes.fetch_add(len, Ordering::Relaxed) + len > self.cap {
            self.truncated.store(true, Ordering::Relaxed);
            return true;
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        tx.send(OutputChunk { stream: v1::OutputStream::Stdout, seq, data }).await.is_ok()
    }

    /// Bytes produced (sent or not) and whether the cap cut some off.
    pub fn totals(&self) -> (u64, bool) {
        (self.bytes.load(Ordering::Relaxed), self.truncated.load(Ordering::Relaxed))
    }
}
