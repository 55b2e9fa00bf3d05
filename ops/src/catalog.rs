//! The operations. Adding one here makes it known to the controller (validation, risk tier),
//! the CLI (`op ls`, `op run`) and the MCP bridge; the agent must implement it in the same
//! change (a test checks every catalog entry has a handler).

use crate::params::ParamKind as K;
use crate::{OperationSpec, ParamSpec, RiskTier};

const fn param(name: &'static str, kind: K, help: &'static str) -> ParamSpec {
    ParamSpec { name, kind, required: true, default: None, help }
}

const fn optional(name: &'static str, kind: K, default: &'static str, help: &'static str) -> ParamSpec {
    ParamSpec { name, kind, required: false, default: Some(default), help }
}

const UNIT: ParamSpec = param("unit", K::Unit, "the systemd unit, e.g. nginx or nginx.service");
const PATH: ParamSpec = param("path", K::Path, "an absolute path under the host's allowed base directories");
const HOST: ParamSpec = param("host", K::Host, "a DNS name or IP address");

const CONTAINER: ParamSpec = param("container", K::Container, "the container's name or id");

const fn container(name: &'static str, summary: &'static str) -> OperationSpec {
    OperationSpec { name, summary, tier: RiskTier::Control, mutating: true, params: &[CONTAINER] }
}

const fn service(name: &'static str, summary: &'static str) -> OperationSpec {
    OperationSpec { name, summary, tier: RiskTier::Control, mutating: true, params: &[UNIT] }
}

/// Every operation, grouped by family.
pub static CATALOG: &[OperationSpec] = &[
    // ----- services (systemd) -----
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
    // ----- containers (Docker, or Podman's compatible CLI) -----
    OperationSpec {
        name: "container.list",
        summary: "Containers, running or not, with image, state and published ports",
        tier: RiskTier::Observe,
        mutating: false,
        params: &[],
    },
    OperationSpec {
        name: "container.inspect",
        summary: "One container's image, state, restart count, ports, mounts and networks",
        tier: RiskTier::Observe,
        mutating: false,
        params: &[CONTAINER],
    },
    OperationSpec {
        name: "container.logs",
        summary: "The last lines a container wrote (stdout and stderr)",
        tier: RiskTier::Observe,
        mutating: false,
        params: &[CONTAINER, optional("lines", K::Int { min: 1, max: 10_000 }, "100", "how many lines")],
    },
    OperationSpec {
        name: "container.stats",
        summary: "CPU, memory, network and block I/O of running containers",
        tier: RiskTier::Observe,
        mutating: false,
        params: &[],
    },
    OperationSpec {
        name: "container.images",
        summary: "Images on the host with tag, id, size and age",
        tier: RiskTier::Observe,
        mutating: false,
        params: &[],
    },
    container("container.start", "Start a stopped container"),
    container("container.stop", "Stop a running container"),
    container("container.restart", "Restart a container"),
    // ----- files (read-only, under allowed base directories, never the deny list) -----
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
    // ----- network checks, run from the host -----
    OperationSpec {
        name: "net.interfaces",
        summary: "Network interfaces with state, MTU, MAC and addresses",
        tier: RiskTier::Observe,
        mutating: false,
        params: &[],
    },
    OperationSpec {
        name: "net.sockets",
        summary: "TCP and UDP sockets: listening ports or all connections",
        tier: RiskTier::Observe,
        mutating: false,
        params: &[optional("state", K::Choice(&["listening", "all"]), "listening", "which sockets")],
    },
    OperationSpec {
        name: "net.port",
        summary: "Whether a TCP port accepts connections, and how fast",
        tier: RiskTier::Observe,
        mutating: false,
        params: &[
            HOST,
            param("port", K::Port, "the TCP port"),
            optional("timeout", K::Duration { max_secs: 30 }, "5s", "give up after this long"),
        ],
    },
    OperationSpec {
        name: "net.dns",
        summary: "Resolve a name (A, AAAA through the host's resolver; MX, TXT, CNAME through dig)",
        tier: RiskTier::Observe,
        mutating: false,
        params: &[
            param("name", K::Host, "the name to resolve"),
            optional("type", K::Choice(&["A", "AAAA", "MX", "TXT", "CNAME"]), "A", "record type"),
        ],
    },
    OperationSpec {
        name: "net.ping",
        summary: "ICMP echo round trips (through the host's ping)",
        tier: RiskTier::Observe,
        mutating: false,
        params: &[HOST, optional("count", K::Int { min: 1, max: 20 }, "4", "how many echo requests")],
    },
];

/// The operation called `name`.
pub fn find(name: &str) -> Option<&'static OperationSpec> {
    CATALOG.iter().find(|op| op.name == name)
}
