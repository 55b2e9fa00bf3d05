//! The gRPC services. Each maps its errors to precise `tonic::Status` codes.

pub mod agent_link;
pub mod audit;
pub mod enrollment;
pub mod fleet;
pub mod identity;
pub mod monitoring;
pub mod stall_guard;

use std::collections::BTreeMap;

use tailops_proto::v1;
use tonic::Status;

use crate::auth::Principal;
use crate::store::StoreError;
use crate::{AppState, now_ms};

const MAX_LABELS: usize = 64;

/// An unexpected failure: logged in full, reported without internals.
pub fn internal(e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "request failed");
    Status::internal("the controller failed to answer; see its log")
}

/// The hosts `principal` may see, with live online state, newest sample and health.
pub async fn visible_hosts(state: &AppState, principal: &Principal) -> Result<Vec<v1::Host>, Status> {
    let mut hosts = state.store.list_hosts().await.map_err(internal)?;
    hosts.retain(|h| principal.covers(h));
    let now = now_ms();
    for host in &mut hosts {
        make_live(state, host, now);
    }
    Ok(hosts)
}

/// One host by name or id, if `principal` may see it, made live like [`visible_hosts`].
pub async fn visible_host(
    state: &AppState,
    principal: &Principal,
    name_or_id: &str,
) -> Result<Option<v1::Host>, Status> {
    let host = state.store.find_host(name_or_id).await.map_err(internal)?;
    Ok(host.filter(|h| principal.covers(h)).map(|mut h| {
        make_live(state, &mut h, now_ms());
        h
    }))
}

/// Every host, made live like [`visible_hosts`].
pub async fn live_hosts(state: &AppState) -> Result<Vec<v1::Host>, StoreError> {
    let mut hosts = state.store.list_hosts().await?;
    let now = now_ms();
    for host in &mut hosts {
        make_live(state, host, now);
    }
    Ok(hosts)
}

/// A stored host as it is now: the live registry is the truth for online state (the database
/// may lag a sweep behind), and the monitoring view adds the newest sample and health.
fn make_live(state: &AppState, host: &mut v1::Host, now: i64) {
    match state.agents.get(&host.id) {
        Some(conn) => {
            host.online = true;
            host.last_seen_ms = host.last_seen_ms.max(conn.last_seen_ms());
        }
        None => host.online = false,
    }
    let (latest, health) = state.monitoring.vitals(host, now);
    host.latest = latest;
    host.health = Some(health);
}

/// Host names and label keys: what fits in a DNS label, plus `_` and `.`.
pub fn validate_name(what: &str, name: &str) -> Result<(), Status> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "invalid {what} {name:?}: use 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit"
        )))
    }
}

pub fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), Status> {
    if labels.len() > MAX_LABELS {
        return Err(Status::invalid_argument(format!("at most {MAX_LABELS} labels are allowed")));
    }
    for (key, value) in labels {
        validate_name("label key", key)?;
        if value.len() > 255 || value.chars().any(tailops_proto::text::is_hidden) {
            return Err(Status::invalid_argument(format!(
                "invalid value for label {key:?}: at most 255 printable characters"
            )));
        }
    }
    Ok(())
}
