//! The gRPC services. Each maps its errors to precise `tonic::Status` codes.

pub mod agent_link;
pub mod audit;
pub mod enrollment;
pub mod fleet;
pub mod identity;

use std::collections::BTreeMap;

use tonic::Status;

const MAX_LABELS: usize = 64;

/// An unexpected failure: logged in full, reported without internals.
pub fn internal(e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "request failed");
    Status::internal("the controller failed to answer; see its log")
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
        if value.len() > 255 || value.chars().any(char::is_control) {
            return Err(Status::invalid_argument(format!(
                "invalid value for label {key:?}: at most 255 printable characters"
            )));
        }
    }
    Ok(())
}
