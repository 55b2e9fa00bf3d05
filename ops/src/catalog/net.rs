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
    OperationSpec {
        name: "net.http",
        summary: "An HTTP(S) request from the host: status, timings, redirects (each hop checked against the address policy)",
        tier: RiskTier::Observe,
        mutating: false,
        params: &[
            param("url", K::Url, "the http:// or https:// URL"),
            optional("method", K::Choice(&["GET", "HEAD"]), "GET", "request method"),
            optional("timeout", K::Duration { max_secs: 60 }, "10s", "give up after this long"),
        ],
    },
    OperationSpec {
        name: "net.tls",
        summary: "A TLS server's certificate: subject, issuer, names, validity, days left, whether it verifies",
        tier: RiskTier::Observe,
        mutating: false,
        params: &[
            HOST,
            optional("port", K::Port, "443", "the TCP port"),
            optional("timeout", K::Duration { max_secs: 60 }, "10s", "give up after this long"),
        ],
    },
    OperationSpec {
        name: "net.traceroute",
        summary: "The route to a host, hop by hop (through the host's traceroute or tracepath)",
        tier: RiskTier::Observe,
        mutating: false,
        params: &[
            HOST,
            optional("max_hops", K::Int { min: 1, max: 64 }, "30", "give up after this many hops"),
        ],
    },
];
