//! The operations, one file per family. Adding one makes it known to the controller
//! (validation, risk tier), the CLI (`op ls`) and the MCP bridge; the agent must implement it
//! in the same change (a test checks every family has a handler).

mod containers;
mod files;
mod logs;
mod net;
mod packages;
mod proxmox;
mod security;
mod services;

use crate::params::ParamKind as K;
use crate::{OperationSpec, ParamSpec, RiskTier};

const fn param(name: &'static str, kind: K, help: &'static str) -> ParamSpec {
    ParamSpec { name, kind, required: true, default: None, help }
}

const fn optional(name: &'static str, kind: K, default: &'static str, help: &'static str) -> ParamSpec {
    ParamSpec { name, kind, required: false, default: Some(default), help }
}

/// The families, in the order `op ls` shows them.
static FAMILIES: &[&[OperationSpec]] = &[
    services::OPS,
    containers::OPS,
    files::OPS,
    logs::OPS,
    net::OPS,
    packages::OPS,
    security::OPS,
    proxmox::OPS,
];

/// Every operation.
pub fn all() -> impl Iterator<Item = &'static OperationSpec> {
    FAMILIES.iter().flat_map(|family| family.iter())
}

/// The operation called `name`.
pub fn find(name: &str) -> Option<&'static OperationSpec> {
    all().find(|op| op.name == name)
}
