//! Containers (Docker, or Podman's compatible CLI).

use super::{K, OperationSpec, ParamSpec, RiskTier, optional, param};

const CONTAINER: ParamSpec = param("container", K::Container, "the container's name or id");

const fn container(name: &'static str, summary: &'static str) -> OperationSpec {
    OperationSpec { name, summary, tier: RiskTier::Control, mutating: true, params: &[CONTAINER] }
}

pub(super) static OPS: &[OperationSpec] = &[
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
];
