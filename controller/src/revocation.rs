//! Tells live streams that the credentials they were opened with are no longer good, so that
//! disabling, forgetting or revoking takes effect on open streams at once, not at reconnect.

use futures::{Stream, StreamExt};
use tokio::sync::broadcast;
use tonic::Status;

/// Something whose certificates may no longer be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    /// Every certificate of this principal (spiffe:// URI): disabled, forgotten, role removed.
    Principal(String),
    /// One certificate (lower-case hex serial).
    Serial(String),
    /// The principal's role or scope changed: streams it opened were authorised under the old
    /// one and must be opened again.
    Changed(String),
}

#[derive(Debug, Clone)]
pub struct Revocations {
    tx: broadcast::Sender<Revoked>,
}

impl Default for Revocations {
    fn default() -> Self {
        Self { tx: broadcast::channel(1024).0 }
    }
}

impl Revocations {
    pub fn publish(&self, revoked: Revoked) {
        // No receiver simply means no live stream is affected.
        let _ = self.tx.send(revoked);
    }

    /// Resolves, with what happened, when `principal` or its certificate `serial` is revoked or
    /// the principal changed. If revocations arrive faster than this watcher reads them, it
    /// gives up its stream (as revoked) rather than risk missing one.
    pub fn until_revoked(
        &self,
        principal: String,
        serial: String,
    ) -> impl Future<Output = Revoked> + Send + 'static {
        let mut rx = self.tx.subscribe();
        async move {
            loop {
                match rx.recv().await {
                    Ok(revoked) => {
                        let ours = match &revoked {
                            Revoked::Principal(p) | Revoked::Changed(p) => *p == principal,
                            Revoked::Serial(s) => *s == serial,
                        };
                        if ours {
                            return revoked;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => return Revoked::Principal(principal),
                    Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
                }
            }
        }
    }

    /// Ends `stream` with `UNAUTHENTICATED` as soon as the caller's credentials are revoked.
    pub fn guard<S, T>(
        &self,
        stream: S,
        principal: String,
        serial: String,
    ) -> impl Stream<Item = Result<T, Status>> + Send + 'static
    where
        S: Stream<Item = Result<T, Status>> + Send + 'static,
        T: Send + 'static,
    {
        let revoked = futures::stream::once(self.until_revoked(principal, serial)).map(|why| {
            Err(match why {
                Revoked::Changed(_) => Status::aborted(
                    "your role or scope changed while this stream was open; open it again to continue",
                ),
                Revoked::Principal(_) | Revoked::Serial(_) => {
                    Status::unauthenticated("the credentials of this stream were revoked")
                }
            })
        });
        // Whichever comes first ends the stream: its natural end, or the revocation.
        futures::stream::select(
            stream.map(Some).chain(futures::stream::once(async { None })),
            revoked.map(Some),
        )
        .take_while(|item| std::future::ready(item.is_some()))
        .filter_map(std::future::ready)
        .scan(false, |revoked_seen, item: Result<T, Status>| {
            // After a revocation error, stop.
            if *revoked_seen {
                return std::future::ready(None);
            }
            if item.is_err() {
                *revoked_seen = true;
            }
            std::future::ready(Some(item))
        })
    }
}
