//! Network checks, run from the host.

use super::{K, OperationSpec, ParamSpec, RiskTier, optional, param};

const HOST: ParamSpec = param("host", K::Host, "a DNS name or IP address");

pub(super) static OPS: &[OperationSpec] = &[
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
