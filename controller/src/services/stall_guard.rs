//! Job event streams for clients that may stop reading.
//!
//! A watcher's stream holds the job it follows, and with it the job's output. HTTP/2 flow
//! control stops sending to a client that does not read, so without a limit such a client would
//! hold that memory for as long as its connection lives. Events pass through a small buffer
//! instead; when the buffer stays full for the stall timeout, the watcher is let go of (the
//! job with it) and told, when it reads again, to watch again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tailops_proto::v1;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

/// Events a watcher may be behind before the stall clock starts.
const BUFFER: usize = 32;

/// `events`, ended with `RESOURCE_EXHAUSTED` if the client leaves the buffer full for `stall`.
pub fn stall_guarded<S>(
    job_id: u64,
    events: S,
    stall: Duration,
) -> impl Stream<Item = Result<v1::JobEvent, Status>> + Send + 'static
where
    S: Stream<Item = Result<v1::JobEvent, Status>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(BUFFER);
    let stalled = Arc::new(AtomicBool::new(false));
    let flag = stalled.clone();
    tokio::spawn(async move {
        let mut events = std::pin::pin!(events);
        loop {
            let event = tokio::select! {
                () = tx.closed() => return,
                event = events.next() => event,
            };
            let Some(event) = event else { return };
            match tokio::time::timeout(stall, tx.send(event)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::info!(job = job_id, "a watcher stopped reading; letting go of it");
                    flag.store(true, Ordering::Release);
                    return;
                }
            }
        }
    });
    let told = futures::stream::once(async move {
        stalled.load(Ordering::Acquire).then(|| {
            Status::resource_exhausted(format!(
                "this watcher stopped reading for longer than the controller waits ({} s) and was let go; \
                 the job goes on: `tailopsctl jobs watch {job_id}` replays it",
                stall.as_secs()
            ))
        })
    })
    .filter_map(|stalled| async move { stalled.map(Err) });
    ReceiverStream::new(rx).chain(told)
}
