//! Files (read-only). Observe-tier jobs read under the host's observe roots (default
//! `/var/log`); jobs authorised at control tier (an operator, or an elevated request a human
//! approved) read under its wider base directories. The deny list (credentials, keys, TailOps
//! data) and the private-key content check apply at every tier, and symlinks are never followed.

use super::{K, OperationSpec, ParamSpec, RiskTier, optional, param};

const PATH: ParamSpec = param(
    "path",
    K::Path,
    "an absolute path under the host's observe roots (default /var/log); its other base directories \
     need control tier (an operator, or --elevate with approval); symlinks are not followed",
);

pub(super) static OPS: &[OperationSpec] = &[
    OperationSpec {
        name: "file.list",
        summary: "List a directory",
        tier: RiskTier::Observe,
        mutating: false,
        params: &[PATH, optional("hidden", K::Bool, "false", "include names starting with '.'")],
    },
    OperationSpec {
        name: "file.stat",
        summary: "Type, size, mode, owner and times of a file or directory",
        tier: RiskTier::Observe,
        mutating: false,
        params: &[PATH],
    },
    OperationSpec {
        name: "file.read",
        summary: "Read part of a file (offset and length in bytes, capped)",
        tier: RiskTier::Observe,
        mutating: false,
        params: &[
            PATH,
            optional("offset", K::Int { min: 0, max: i64::MAX }, "0", "byte offset to start at"),
            optional("length", K::Int { min: 1, max: 1_048_576 }, "65536", "bytes to read (at most 1 MiB)"),
        ],
    },
    OperationSpec {
        name: "file.tail",
        summary: "The last lines of a file",
        tier: RiskTier::Observe,
        mutating: false,
        params: &[PATH, optional("lines", K::Int { min: 1, max: 10_000 }, "100", "how many lines")],
    },
    OperationSpec {
        name: "file.search",
        summary: "Find files whose name matches a pattern under a directory",
        tier: RiskTier::Observe,
        mutating: false,
        params: &[
            PATH,
            param("pattern", K::Glob, "file name pattern, e.g. *.log (at most 16 groups of *)"),
            optional("max_depth", K::Int { min: 1, max: 32 }, "8", "how deep to descend"),
            optional("limit", K::Int { min: 1, max: 10_000 }, "500", "stop after this many matches"),
        ],
    },
];
