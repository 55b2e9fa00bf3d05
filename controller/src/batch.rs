//! Draining a queue in batches, for the writer tasks that turn many small writes into one
//! SQLite transaction.

use tokio::sync::mpsc;

/// Waits for the next item, then takes whatever else is already queued, up to `max` in all.
/// `None` once every sender is gone and the queue is empty.
pub async fn next_batch<T>(rx: &mut mpsc::Receiver<T>, max: usize) -> Option<Vec<T>> {
    let first = rx.recv().await?;
    let mut batch = Vec::with_capacity(max.min(64));
    batch.push(first);
    while batch.len() < max {
        match rx.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    Some(batch)
}
