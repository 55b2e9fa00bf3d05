//! The live agent connections: one per host, the newest replacing any older one.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use tailops_proto::v1::ControllerMessage;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// Messages queued to one agent's outbound stream.
pub type Outbox = mpsc::Sender<Result<ControllerMessage, Status>>;

/// One connected agent stream.
#[derive(Debug, Clone)]
pub struct AgentConnection {
    pub conn_id: u64,
    pub host_id: String,
    pub host_name: String,
    /// Serial of the certificate the stream was opened with.
    pub serial: String,
    pub outbox: Outbox,
    /// Cancelled when this stream ends for any reason (disconnect, replaced, went silent).
    pub closed: CancellationToken,
    last_seen_ms: Arc<AtomicI64>,
}

impl AgentConnection {
    pub fn touch(&self, now_ms: i64) {
        self.last_seen_ms.fetch_max(now_ms, Ordering::Relaxed);
    }
    pub fn last_seen_ms(&self) -> i64 {
        self.last_seen_ms.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct AgentRegistry {
    // A std mutex: it is held only for map operations, never across an await.
    connections: Mutex<HashMap<String, AgentConnection>>,
    next_conn_id: AtomicU64,
}

impl AgentRegistry {
    /// Registers a new stream for `host_id`. An older stream for the same host is closed: the
    /// newest connection wins (an agent that reconnected before the old TCP session timed out).
    ///
    /// Returns the new connection and the one it replaced, if that one was still open: the same
    /// identity connected twice at once, which the caller flags (a copied key looks like this).
    pub fn register(
        &self,
        host_id: &str,
        host_name: &str,
        serial: &str,
        outbox: Outbox,
        now_ms: i64,
    ) -> (AgentConnection, Option<AgentConnection>) {
        let conn = AgentConnection {
            conn_id: self.next_conn_id.fetch_add(1, Ordering::Relaxed),
            host_id: host_id.to_owned(),
            host_name: host_name.to_owned(),
            serial: serial.to_owned(),
            outbox,
            closed: CancellationToken::new(),
            last_seen_ms: Arc::new(AtomicI64::new(now_ms)),
        };
        let previous = self.lock().insert(host_id.to_owned(), conn.clone());
        let still_open = previous.filter(|p| !p.closed.is_cancelled());
        if let Some(previous) = &still_open {
            tracing::info!(host = host_name, "agent reconnected; closing its previous stream");
            previous.closed.cancel();
        }
        (conn, still_open)
    }

    /// Closes the streams opened with certificate `serial`; returns how many.
    pub fn close_serial(&self, serial: &str) -> u32 {
        let mut closed = 0;
        for conn in self.lock().values().filter(|c| c.serial == serial) {
            conn.closed.cancel();
            closed += 1;
        }
        closed
    }

    /// Removes the stream if it is still the current one for its host; returns whether it was.
    pub fn unregister(&self, conn: &AgentConnection) -> bool {
        conn.closed.cancel();
        let mut connections = self.lock();
        match connections.get(&conn.host_id) {
            Some(current) if current.conn_id == conn.conn_id => {
                connections.remove(&conn.host_id);
                true
            }
            _ => false,
        }
    }

    pub fn get(&self, host_id: &str) -> Option<AgentConnection> {
        self.lock().get(host_id).cloned()
    }

    /// All current connections (a snapshot; cheap clones).
    pub fn snapshot(&self) -> Vec<AgentConnection> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, AgentConnection>> {
        // A panic while holding this lock cannot leave the map half-updated, so poisoning
        // carries no information here.
        self.connections.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
