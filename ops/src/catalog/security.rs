//! Security checks (read-only): CIS-style basics, a secrets scan, vulnerability scanners.

use super::{K, OperationSpec, ParamSpec, RiskTier, optional, param};

pub(super) static OPS: &[OperationSpec] = &[
    OperationSpec {
        name: "security.checks",
        summary: "CIS-style basics: SSH root login and passwords, extra uid 0 accounts, IP forwarding, \
                  world-writable system files, firewall, non-loopback listeners",
        tier: RiskTier::Observe,
        mutating: false,
        params: &[],
    },
    OperationSpec {
        name: "security.secrets",
        summary: "Scan files under a path for secrets (cloud keys, tokens, private keys, passwords); \
                  findings are redacted",
        tier: RiskTier::Observe,
        mutating: false,
        params: &[param("path", K::Path, "a file or directory under the host's allowed base directories")],
    },
    OperationSpec {
        name: "security.vulnscan",
        summary: "Known vulnerabilities in a directory or a container image, with Trivy or Grype",
        tier: RiskTier::Observe,
        mutating: false,
        params: &[
            ParamSpec {
                name: "path",
                kind: K::Path,
                required: false,
                default: None,
                help: "a directory under the allowed base directories (give path or image)",
            },
            ParamSpec {
                name: "image",
                kind: K::Image,
                required: false,
                default: None,
                help: "a container image reference, e.g. nginx:1.27 (give path or image)",
            },
            optional("limit", K::Int { min: 1, max: 500 }, "20", "how many findings to list, worst first"),
        ],
    },
];
