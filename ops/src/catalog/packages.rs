//! Packages (apt on Debian and Ubuntu, dnf on Fedora and RHEL; the agent uses whichever the
//! host has). `package.updates` only reads what the package lists already say: it does not
//! refresh them (`apt-get update` changes state), so its answer is as fresh as the host's last
//! refresh.

use super::{K, OperationSpec, ParamSpec, RiskTier};

const PACKAGES: ParamSpec = ParamSpec {
    name: "packages",
    kind: K::Packages,
    required: true,
    default: None,
    help: "comma-separated package names, e.g. nginx,curl",
};

pub(super) static OPS: &[OperationSpec] = &[
    OperationSpec {
        name: "package.updates",
        summary: "Packages with an update available (from the package lists as last refreshed)",
        tier: RiskTier::Observe,
        mutating: false,
        params: &[],
    },
    OperationSpec {
        name: "package.upgrade",
        summary: "Upgrade installed packages (all, or the ones named); the dry run simulates it",
        tier: RiskTier::Admin,
        mutating: true,
        params: &[ParamSpec {
            required: false,
            help: "comma-separated package names to upgrade; all upgradable packages when absent",
            ..PACKAGES
        }],
    },
    OperationSpec {
        name: "package.install",
        summary: "Install packages; the dry run simulates it",
        tier: RiskTier::Admin,
        mutating: true,
        params: &[PACKAGES],
    },
];
