//! The live agent connections: one per host. A newer stream replaces an older one that is dead
//! or comes from the same address; while the older one is alive, a stream from another address
//! is refused (two holders of one identity) and the identity is marked contested.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use tailops_proto::v1::ControllerMessage;
use tokio::sync::{mpsc, watch};
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
    /// The address the stream came from, if known.
    pub remote: Option<IpAddr>,
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

/// When a second stream of one identity counts as a clone rather than a reconnect.
#[derive(Debug, Clone, Copy)]
pub struct ClonePolicy {
    /// The older stream is alive if it sent anything this recently (ms).
    pub live_within_ms: i64,
    /// How long a refused second stream keeps the identity contested (ms): no renewal then.
    pub contested_for_ms: i64,
}

/// A stream for a new address, refused because the identity's stream elsewhere is alive.
#[derive(Debug, Clone)]
pub struct Refused {
    /// The certificate and address of the live stream that holds the identity.
    pub live_serial: String,
    pub live_remote: Option<IpAddr>,
}

#[derive(Debug, Default)]
pub struct AgentRegistry {
    // A std mutex: it is held only for map operations, never across an await.
    connections: Mutex<HashMap<String, AgentConnection>>,
    /// Host id -> until when (unix ms) it stays contested.
    contested: Mutex<HashMap<String, i64>>,
    /// Host id -> bumped whenever a stream of that host registers (for [`Self::until_connected`]).
    arrivals: Mutex<HashMap<String, watch::Sender<u64>>>,
    next_conn_id: AtomicU64,
}

impl AgentRegistry {
    /// Registers a new stream for `host_id` coming from `remote`.
    ///
    /// An older stream of the host that is closed, silent for longer than
    /// `policy.live_within_ms`, or from the same address is replaced and closed: the agent
    /// reconnected before the old TCP session timed out. An older stream from another address
    /// that is alive means two holders of one identity (a copied key looks like this): the new
    /// one is refused, so a copy cannot silently take over the real agent's jobs, and the
    /// identity is contested for `policy.contested_for_ms`.
    ///
    /// Returns the new connection and the one it replaced, if that one was still open.
    #[allow(clippy::too_many_arguments)]
    pub fn register(
        &self,
        host_id: &str,
        host_name: &str,
        serial: &str,
        remote: Option<IpAddr>,
        outbox: Outbox,
        now_ms: i64,
        policy: ClonePolicy,
    ) -> Result<(AgentConnection, Option<AgentConnection>), Refused> {
        let conn = AgentConnection {
            conn_id: self.next_conn_id.fetch_add(1, Ordering::Relaxed),
            host_id: host_id.to_owned(),
            host_name: host_name.to_owned(),
            serial: serial.to_owned(),
            remote,
            outbox,
            closed: CancellationToken::new(),
            last_seen_ms: Arc::new(AtomicI64::new(now_ms)),
        };
        let previous = {
            let mut connections = self.lock();
            if let Some(live) = connections.get(host_id).filter(|p| {
                !p.closed.is_cancelled()
                    && p.remote != remote
                    && now_ms.saturating_sub(p.last_seen_ms()) <= policy.live_within_ms
            }) {
                let refused = Refused { live_serial: live.serial.clone(), live_remote: live.remote };
                drop(connections);
                self.lock_contested()
                    .insert(host_id.to_owned(), now_ms.saturating_add(policy.contested_for_ms));
                return Err(refused);
            }
            connections.insert(host_id.to_owned(), conn.clone())
        };
        if let Some(arrived) = self.lock_arrivals().get(host_id) {
            arrived.send_modify(|n| *n += 1);
        }
        let still_open = previous.filter(|p| !p.closed.is_cancelled());
        if let Some(previous) = &still_open {
            tracing::info!(host = host_name, "agent reconnected; closing its previous stream");
            previous.closed.cancel();
        }
        Ok((conn, still_open))
    }

    /// Whether a second holder of `host_id`'s identity tried to connect recently.
    pub fn is_contested(&self, host_id: &str, now_ms: i64) -> bool {
        let mut contested = self.lock_contested();
        match contested.get(host_id) {
            Some(until) if *until >= now_ms => true,
            Some(_) => {
                contested.remove(host_id);
                false
            }
            None => false,
        }
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

    /// Resolves once `host_id` has an open stream: at once if it has one now.
    pub async fn until_connected(&self, host_id: &str) {
        let mut arrivals = self
            .lock_arrivals()
            .entry(host_id.to_owned())
            .or_insert_with(|| watch::Sender::new(0))
            .subscribe();
        // Subscribed before looking, so a stream that registers in between still wakes us.
        while self.get(host_id).is_none_or(|c| c.closed.is_cancelled()) {
            if arrivals.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    fn lock_arrivals(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<u64>>> {
        self.arrivals.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// All current connections (a snapshot; cheap clones).
    pub fn snapshot(&self) -> Vec<AgentConnection> {
        self.lock().values().cloned().collect()
    }

    fn lock_contested(&self) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
        self.contested.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, AgentConnection>> {
        // A panic while holding this lock cannot leave the map half-updated, so poisoning
        // carries no information here.
        self.connections.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
