//! Lines an operation streams while it runs (following logs), delivered as the job's stdout in
//! sequence-numbered chunks like a command's output, and capped like it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tailops_proto::v1;
use tokio::sync::mpsc;

use crate::executor::OutputChunk;

/// The largest piece of a line sent in one message: one log line can be megabytes (within a job's
/// output cap of up to 64 MiB), and a link message must stay far below the controller's 4 MiB
/// decode limit.
pub const MAX_CHUNK: usize = 64 * 1024;

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

    /// Sends one line (in pieces of at most [`MAX_CHUNK`] bytes); `false` once nobody listens
    /// any more (the job is over).
    pub async fn line(&self, text: &str) -> bool {
        let Some(tx) = &self.tx else { return false };
        let len = text.len() as u64 + 1;
        if self.bytes.fetch_add(len, Ordering::Relaxed) + len > self.cap {
            self.truncated.store(true, Ordering::Relaxed);
            return true;
        }
        let mut data = Vec::with_capacity(text.len() + 1);
        data.extend_from_slice(text.as_bytes());
        data.push(b'\n');
        for piece in data.chunks(MAX_CHUNK) {
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            let chunk = OutputChunk { stream: v1::OutputStream::Stdout, seq, data: piece.to_vec() };
            if tx.send(chunk).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Bytes produced (sent or not) and whether the cap cut some off.
    pub fn totals(&self) -> (u64, bool) {
        (self.bytes.load(Ordering::Relaxed), self.truncated.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_huge_line_goes_in_pieces_within_the_cap() {
        let (tx, mut rx) = mpsc::channel(1024);
        let live = LiveOutput::new(tx, 64 * 1024 * 1024);
        let line = "x".repeat(5 * 1024 * 1024);
        assert!(live.line(&line).await);
        assert!(live.line("next").await);
        drop(live);
        let mut chunks = Vec::new();
        while let Some(chunk) = rx.recv().await {
            chunks.push(chunk);
        }
        assert!(chunks.iter().all(|c| c.data.len() <= MAX_CHUNK));
        assert_eq!(
            chunks.iter().map(|c| c.seq).collect::<Vec<_>>(),
            (0..chunks.len() as u64).collect::<Vec<_>>()
        );
        let all: Vec<u8> = chunks.into_iter().flat_map(|c| c.data).collect();
        assert_eq!(all.len(), line.len() + "\nnext\n".len());
        assert!(all.ends_with(b"x\nnext\n"));
    }

    #[tokio::test]
    async fn lines_past_the_cap_are_counted_not_sent() {
        let (tx, mut rx) = mpsc::channel(16);
        let live = LiveOutput::new(tx, 10);
        assert!(live.line("12345").await);
        assert!(live.line("67890").await);
        assert_eq!(live.totals(), (12, true));
        drop(live);
        assert_eq!(rx.recv().await.map(|c| c.data), Some(b"12345\n".to_vec()));
        assert!(rx.recv().await.is_none());
    }
}
