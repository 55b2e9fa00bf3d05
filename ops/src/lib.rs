//! Typed host operations: what exists (`service.restart`, `file.read`, ...), which parameters
//! each takes and of what kind, how risky it is, and the validation every party applies. The
//! controller validates before a job is created, the agent validates again before running
//! anything, the CLI lists the catalog, the MCP bridge derives its tool schemas from it: one
//! table, so they cannot disagree.
//!
//! - [`catalog`]: the operations.
//! - [`params`]: parameter kinds and their validation.

pub mod catalog;
pub mod params;

use std::collections::BTreeMap;

pub use catalog::{all as catalog, find};
pub use params::{ParamKind, Value};

/// How much an operation can change, which decides who may run it and whether it needs
/// approval (see the controller's roles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RiskTier {
    /// Reads state.
    Observe,
    /// Changes what runs (start, stop, restart) without changing what is installed.
    Control,
    /// Changes what is installed or configured (packages, rollbacks).
    Admin,
}

impl RiskTier {
    pub fn name(self) -> &'static str {
        match self {
            Self::Observe => "observe",
            Self::Control => "control",
            Self::Admin => "admin",
        }
    }
}

/// One operation of the catalog.
#[derive(Debug)]
pub struct OperationSpec {
    /// Dotted, `family.verb`.
    pub name: &'static str,
    pub summary: &'static str,
    pub tier: RiskTier,
    /// Changes the host; such operations have a dry run that says exactly what would run.
    pub mutating: bool,
    pub params: &'static [ParamSpec],
}

impl OperationSpec {
    pub fn family(&self) -> &'static str {
        self.name.split_once('.').map_or(self.name, |(family, _)| family)
    }

    pub fn param(&self, name: &str) -> Option<&'static ParamSpec> {
        self.params.iter().find(|p| p.name == name)
    }

    /// The verb after the family (`restart` of `service.restart`).
    pub fn verb(&self) -> &'static str {
        self.name.split_once('.').map_or(self.name, |(_, verb)| verb)
    }

    /// Whether running it can take something away (stop, restart, roll back, upgrade) rather
    /// than only add or start something. Read-only operations destroy nothing.
    pub fn destructive(&self) -> bool {
        // Installing can remove conflicting packages and upgrade dependencies: destructive.
        self.mutating && !matches!(self.verb(), "start" | "enable" | "pull" | "snapshot")
    }

    /// Whether running it twice leaves the host as running it once does.
    pub fn idempotent(&self) -> bool {
        !self.mutating
            || matches!(
                self.verb(),
                "start" | "stop" | "enable" | "disable" | "install" | "pull" | "down" | "shutdown"
            )
    }

    /// Whether it reads contents from the host's filesystem (files, log files, secret scans),
    /// which the agent confines to the observe roots unless the job was authorised at control
    /// tier (an operator's, or an elevated request a human approved).
    pub fn reads_files(&self) -> bool {
        self.family() == "file" || matches!(self.name, "log.file" | "security.secrets" | "security.vulnscan")
    }

    /// Whether it reaches beyond the fleet: other hosts on the network, registries, package
    /// mirrors, vulnerability databases.
    pub fn reaches_outside(&self) -> bool {
        matches!(self.family(), "net" | "package") && !matches!(self.name, "net.interfaces" | "net.sockets")
            || matches!(
                self.name,
                "container.pull" | "container.update" | "compose.update" | "security.vulnscan"
            )
    }
}

/// One parameter of an operation.
#[derive(Debug)]
pub struct ParamSpec {
    pub name: &'static str,
    pub kind: ParamKind,
    pub required: bool,
    /// Used when the parameter is not given (and not required).
    pub default: Option<&'static str>,
    pub help: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpsError {
    #[error("unknown operation {0:?}; `tailopsctl op ls` lists them")]
    UnknownOperation(String),
    #[error("{op} takes no parameter {param:?}; it takes: {known}")]
    UnknownParam { op: String, param: String, known: String },
    #[error("{op} needs {param}=...: {help}")]
    MissingParam { op: String, param: String, help: String },
    #[error("{op}: invalid {param}: {reason}")]
    InvalidParam { op: String, param: String, reason: String },
    #[error("{0} changes nothing; --dry-run applies only to operations that change the host")]
    DryRunNotApplicable(String),
}

/// An operation with its parameters checked and converted.
#[derive(Debug, Clone)]
pub struct Validated {
    pub spec: &'static OperationSpec,
    /// Every parameter that was given or has a default.
    pub params: BTreeMap<&'static str, Value>,
    pub dry_run: bool,
}

impl Validated {
    pub fn text(&self, name: &str) -> Option<&str> {
        match self.params.get(name) {
            Some(Value::Text(s)) => Some(s),
            _ => None,
        }
    }

    pub fn int(&self, name: &str) -> Option<i64> {
        match self.params.get(name) {
            Some(Value::Int(n)) => Some(*n),
            _ => None,
        }
    }

    pub fn flag(&self, name: &str) -> bool {
        matches!(self.params.get(name), Some(Value::Bool(true)))
    }

    pub fn duration(&self, name: &str) -> Option<std::time::Duration> {
        match self.params.get(name) {
            Some(Value::Duration(d)) => Some(*d),
            _ => None,
        }
    }

    pub fn list(&self, name: &str) -> &[String] {
        match self.params.get(name) {
            Some(Value::List(items)) => items,
            _ => &[],
        }
    }
}

/// Checks `name` and `params` (as a person or program wrote them, `KEY=VALUE`) against the
/// catalog: unknown operations and parameters, missing required ones and malformed values are
/// refused with a message that says what was expected.
pub fn validate(name: &str, params: &BTreeMap<String, String>, dry_run: bool) -> Result<Validated, OpsError> {
    let spec = find(name).ok_or_else(|| OpsError::UnknownOperation(name.to_owned()))?;
    if dry_run && !spec.mutating {
        return Err(OpsError::DryRunNotApplicable(spec.name.to_owned()));
    }
    if let Some(unknown) = params.keys().find(|k| spec.param(k).is_none()) {
        let known = spec.params.iter().map(|p| p.name).collect::<Vec<_>>().join(", ");
        return Err(OpsError::UnknownParam {
            op: spec.name.to_owned(),
            param: unknown.clone(),
            known: if known.is_empty() { "none".to_owned() } else { known },
        });
    }
    let mut values = BTreeMap::new();
    for p in spec.params {
        let raw = match (params.get(p.name), p.default) {
            (Some(given), _) => given.as_str(),
            (None, Some(default)) => default,
            (None, None) if p.required => {
                return Err(OpsError::MissingParam {
                    op: spec.name.to_owned(),
                    param: p.name.to_owned(),
                    help: p.help.to_owned(),
                });
            }
            (None, None) => continue,
        };
        let value = p.kind.parse(raw).map_err(|reason| OpsError::InvalidParam {
            op: spec.name.to_owned(),
            param: p.name.to_owned(),
            reason,
        })?;
        values.insert(p.name, value);
    }
    Ok(Validated { spec, params: values, dry_run })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn the_catalog_is_consistent() {
        let mut names = std::collections::BTreeSet::new();
        for spec in catalog() {
            assert!(names.insert(spec.name), "{} is listed twice", spec.name);
            assert!(spec.name.contains('.'), "{} is not family.verb", spec.name);
            assert!(!spec.summary.is_empty());
            for p in spec.params {
                assert!(!p.help.is_empty(), "{}.{} has no help", spec.name, p.name);
                assert!(
                    !(p.required && p.default.is_some()),
                    "{}.{} is required with a default",
                    spec.name,
                    p.name
                );
                if let Some(default) = p.default {
                    assert!(
                        p.kind.parse(default).is_ok(),
                        "{}.{}: default {default:?} is invalid",
                        spec.name,
                        p.name
                    );
                }
            }
            // Whatever changes the host is at least control tier.
            assert!(!spec.mutating || spec.tier >= RiskTier::Control, "{} mutates as observe", spec.name);
        }
    }

    #[test]
    fn unknown_missing_and_malformed_are_refused_with_what_was_expected() {
        let e = validate("service.explode", &params(&[]), false).unwrap_err();
        assert!(e.to_string().contains("op ls"), "{e}");
        let e = validate("service.restart", &params(&[]), false).unwrap_err();
        assert!(matches!(e, OpsError::MissingParam { .. }), "{e}");
        let e =
            validate("service.restart", &params(&[("unit", "nginx"), ("force", "1")]), false).unwrap_err();
        assert!(e.to_string().contains("takes: unit"), "{e}");
        let e = validate("service.restart", &params(&[("unit", "--now")]), false).unwrap_err();
        assert!(e.to_string().contains("invalid unit"), "{e}");
        let e = validate("service.status", &params(&[("unit", "ssh")]), true).unwrap_err();
        assert_eq!(e, OpsError::DryRunNotApplicable("service.status".into()));
    }

    #[test]
    fn defaults_fill_in_and_values_are_typed() {
        let v = validate("file.read", &params(&[("path", "/var/log/syslog")]), false).expect("valid");
        assert_eq!(v.text("path"), Some("/var/log/syslog"));
        assert_eq!(v.int("offset"), Some(0));
        assert!(v.int("length").is_some_and(|n| n > 0));
        let v = validate("service.restart", &params(&[("unit", "nginx.service")]), true).expect("valid");
        assert!(v.dry_run);
    }
}
