//! Logs: journald and allowlisted log files, optionally followed (lines stream as the job's
//! stdout until the job's deadline or cancellation).

use super::{K, OperationSpec, RiskTier, optional, param};

/// journald's priorities, most severe first; `--priority=X` shows X and everything above it.
pub const PRIORITIES: &[&str] = &["emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"];

pub(super) static OPS: &[OperationSpec] = &[
    OperationSpec {
        name: "log.journal",
        summary: "Query the systemd journal (optionally follow it while the job runs)",
        tier: RiskTier::Observe,
        mutating: false,
        params: &[
            super::ParamSpec {
                name: "unit",
                kind: K::Unit,
                required: false,
                default: None,
                help: "only this systemd unit",
            },
            super::ParamSpec {
                name: "since",
                kind: K::Duration { max_secs: 90 * 24 * 3600 },
                required: false,
                default: None,
                help: "entries newer than this long ago (e.g. 1h)",
            },
            super::ParamSpec {
                name: "until",
                kind: K::Duration { max_secs: 90 * 24 * 3600 },
                required: false,
                default: None,
                help: "entries older than this long ago (e.g. 10m)",
            },
            super::ParamSpec {
                name: "priority",
                kind: K::Choice(PRIORITIES),
                required: false,
                default: None,
                help: "this priority and more severe ones",
            },
            super::ParamSpec {
                name: "grep",
                kind: K::Text { max: 200 },
                required: false,
                default: None,
                help: "only messages matching this pattern (PCRE, journalctl --grep)",
            },
            optional(
                "lines",
                K::Int { min: 1, max: 10_000 },
                "200",
                "at most this many (the newest) entries",
            ),
            optional("follow", K::Bool, "false", "keep streaming new entries until the job's deadline"),
        ],
    },
    OperationSpec {
        name: "log.file",
        summary: "The last lines of an allowlisted log file (optionally follow it while the job runs)",
        tier: RiskTier::Observe,
        mutating: false,
        params: &[
            param("path", K::Path, "an absolute path under the host's allowed base directories"),
            optional("lines", K::Int { min: 1, max: 10_000 }, "100", "how many of the last lines"),
            optional("follow", K::Bool, "false", "keep streaming appended lines until the job's deadline"),
        ],
    },
];
