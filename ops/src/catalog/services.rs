//! Services (systemd).

use super::{K, OperationSpec, ParamSpec, RiskTier, optional, param};

const UNIT: ParamSpec = param("unit", K::Unit, "the systemd unit, e.g. nginx or nginx.service");

const fn service(name: &'static str, summary: &'static str) -> OperationSpec {
    OperationSpec { name, summary, tier: RiskTier::Control, mutating: true, params: &[UNIT] }
}

pub(super) static OPS: &[OperationSpec] = &[
    OperationSpec {
        name: "service.list",
        summary: "List systemd services with their load, active and sub state",
        tier: RiskTier::Observe,
        mutating: false,
        params: &[optional(
            "state",
            K::Choice(&["all", "running", "failed", "active", "inactive"]),
            "all",
            "only services in this state",
        )],
    },
    OperationSpec {
        name: "service.status",
        summary: "One service's load, active and sub state, boot setting, main PID, memory and restarts",
        tier: RiskTier::Observe,
        mutating: false,
        params: &[UNIT],
    },
    service("service.start", "Start a service"),
    service("service.stop", "Stop a service"),
    service("service.restart", "Restart a service"),
    service("service.reload", "Reload a service's configuration"),
    service("service.enable", "Enable a service at boot"),
    service("service.disable", "Disable a service at boot"),
];
