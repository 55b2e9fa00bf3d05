//! Containers (Docker, or Podman's compatible CLI).

use super::{K, OperationSpec, ParamSpec, RiskTier, optional, param};

const CONTAINER: ParamSpec = param("container", K::Container, "the container's name or id");

const PROJECT: ParamSpec = param("project", K::Project, "the Compose project name (`compose.list`)");

const fn project(name: &'static str, summary: &'static str) -> OperationSpec {
    OperationSpec { name, summary, tier: RiskTier::Control, mutating: true, params: &[PROJECT] }
}

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
        params: &[
            CONTAINER,
            optional("lines", K::Int { min: 1, max: 10_000 }, "100", "how many lines"),
            optional("follow", K::Bool, "false", "keep streaming new lines until the job's deadline"),
        ],
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
    OperationSpec {
        name: "container.pull",
        summary: "Pull an image from its registry",
        tier: RiskTier::Control,
        mutating: true,
        params: &[param("image", K::Image, "the image reference, e.g. nginx:1.27")],
    },
    OperationSpec {
        name: "container.update",
        summary: "Pull a container's image and, if it changed, recreate the container with the same configuration",
        tier: RiskTier::Control,
        mutating: true,
        params: &[
            CONTAINER,
            optional(
                "pull",
                K::Bool,
                "true",
                "pull the image first (false: use the image already on the host)",
            ),
        ],
    },
    container("container.start", "Start a stopped container"),
    container("container.stop", "Stop a running container"),
    container("container.restart", "Restart a container"),
    // ----- Compose projects (the `docker compose` plugin) -----
    OperationSpec {
        name: "compose.list",
        summary: "Compose projects on the host with their status and files",
        tier: RiskTier::Observe,
        mutating: false,
        params: &[],
    },
    OperationSpec {
        name: "compose.status",
        summary: "The services of one Compose project and their state",
        tier: RiskTier::Observe,
        mutating: false,
        params: &[PROJECT],
    },
    project("compose.update", "Pull a project's images and recreate what changed (pull, then up -d)"),
    project("compose.restart", "Restart a project's services"),
    project("compose.down", "Stop and remove a project's containers and networks (volumes are kept)"),
];
