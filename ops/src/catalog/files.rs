//! Files (read-only, under allowed base directories, never the deny list).

use super::{K, OperationSpec, ParamSpec, RiskTier, optional, param};

const PATH: ParamSpec = param("path", K::Path, "an absolute path under the host's allowed base directories");

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
            param("pattern", K::Glob, "file name pattern, e.g. *.log"),
            optional("max_depth", K::Int { min: 1, max: 32 }, "8", "how deep to descend"),
            optional("limit", K::Int { min: 1, max: 10_000 }, "500", "stop after this many matches"),
        ],
    },
];
