//! Typed operations on the host: the catalog (`tailops-ops`) says what exists; this module runs
//! it. Every operation is validated again here (the agent does not trust that the controller
//! did), external tools run as argv through `tokio::process` under the job's deadline, and a
//! missing tool answers "not available on this host" instead of failing obscurely.
//!
//! - [`services`]: systemd through `systemctl`.
//! - [`containers`]: Docker (or a compatible CLI) through `docker`.
//! - [`files`]: read-only file access under base directories, never the deny list.
//! - [`logs`]: the systemd journal and allowlisted log files, optionally followed.
//! - [`net`]: network checks from the host; [`http`]: HTTP(S) requests and TLS certificates
//!   (with the address policy every hop passes); [`traceroute`]: routes.
//! - [`packages`]: updates, upgrades and installs through apt or dnf.
//! - [`security`]: CIS-style checks, secrets scan, vulnerability scanners (Trivy, Grype).
//! - [`proxmox`]: Proxmox VE guests through `pct` and `qm`.
//! - [`output`]: building the structured result; [`live`]: lines streamed while running.
//! - [`tool`]: finding and running external programs.

pub mod containers;
pub mod docker_api;
pub mod files;
pub mod http;
pub mod live;
pub mod logs;
pub mod net;
pub mod output;
pub mod packages;
pub mod proxmox;
pub mod security;
pub mod services;
pub mod tool;
pub mod traceroute;

use std::path::PathBuf;
use std::time::Duration;

use tailops_ops::Validated;
use tailops_proto::v1;

pub use files::FilePolicy;
pub use live::LiveOutput;

/// Where the agent's tools are and what it may read. Paths are names looked up in `PATH` unless
/// they contain a `/`.
#[derive(Debug, Clone)]
pub struct OpsConfig {
    pub systemctl: PathBuf,
    pub docker: PathBuf,
    /// The Docker Engine's API socket (used where the CLI falls short: `container.update`).
    pub docker_socket: PathBuf,
    pub pct: PathBuf,
    pub qm: PathBuf,
    pub ping: PathBuf,
    pub dig: PathBuf,
    pub journalctl: PathBuf,
    pub traceroute: PathBuf,
    pub tracepath: PathBuf,
    pub files: FilePolicy,
    /// `apt` (for `apt list`), `apt-get` and `dnf`: a host with `apt-get` uses apt, otherwise dnf.
    pub apt: PathBuf,
    pub apt_get: PathBuf,
    pub dnf: PathBuf,
    /// The root the security checks read (`etc/ssh/sshd_config`, `etc/passwd`, `proc/...`).
    pub security_root: PathBuf,
    /// Firewall front ends, tried in this order by `security.checks`.
    pub ufw: PathBuf,
    pub nft: PathBuf,
    pub iptables: PathBuf,
    /// Vulnerability scanners, Trivy first.
    pub trivy: PathBuf,
    pub grype: PathBuf,
}

impl Default for OpsConfig {
    fn default() -> Self {
        Self {
            systemctl: "systemctl".into(),
            docker: "docker".into(),
            docker_socket: "/var/run/docker.sock".into(),
            pct: "pct".into(),
            qm: "qm".into(),
            ping: "ping".into(),
            dig: "dig".into(),
            journalctl: "journalctl".into(),
            traceroute: "traceroute".into(),
            tracepath: "tracepath".into(),
            files: FilePolicy::default(),
            apt: "apt".into(),
            apt_get: "apt-get".into(),
            dnf: "dnf".into(),
            security_root: "/".into(),
            ufw: "ufw".into(),
            nft: "nft".into(),
            iptables: "iptables".into(),
            trivy: "trivy".into(),
            grype: "grype".into(),
        }
    }
}

impl OpsConfig {
    /// Points the tool called `name` (`systemctl`, `docker`, `apt-get`...) at `path`.
    pub fn set_tool(&mut self, name: &str, path: PathBuf) -> Result<(), String> {
        let slot = match name {
            "systemctl" => &mut self.systemctl,
            "docker" => &mut self.docker,
            "docker-socket" => &mut self.docker_socket,
            "pct" => &mut self.pct,
            "qm" => &mut self.qm,
            "ping" => &mut self.ping,
            "dig" => &mut self.dig,
            "journalctl" => &mut self.journalctl,
            "traceroute" => &mut self.traceroute,
            "tracepath" => &mut self.tracepath,
            "apt" => &mut self.apt,
            "apt-get" => &mut self.apt_get,
            "dnf" => &mut self.dnf,
            "ufw" => &mut self.ufw,
            "nft" => &mut self.nft,
            "iptables" => &mut self.iptables,
            "trivy" => &mut self.trivy,
            "grype" => &mut self.grype,
            other => return Err(format!("unknown tool {other:?}; known: {}", Self::TOOLS.join(", "))),
        };
        *slot = path;
        Ok(())
    }

    /// The names `set_tool` accepts.
    pub const TOOLS: &[&str] = &[
        "systemctl",
        "docker",
        "docker-socket",
        "pct",
        "qm",
        "ping",
        "dig",
        "journalctl",
        "traceroute",
        "tracepath",
        "apt",
        "apt-get",
        "dnf",
        "ufw",
        "nft",
        "iptables",
        "trivy",
        "grype",
    ];
}

/// The fact listing the operation families this host can run (`service,container,file,...`).
pub const FAMILIES_FACT: &str = "ops.families";

/// The operation families whose tools this host has. Files, logs (`log.file`), network and
/// security checks need nothing beyond the agent; the others need their tool (and services a
/// running systemd). Compose needs Docker's plugin, which only running it can tell, so it is
/// listed with Docker.
pub async fn families(config: &OpsConfig) -> Vec<&'static str> {
    let has = |program: &std::path::Path| {
        let program = program.to_owned();
        async move { crate::facts::find_program(&program).await.is_some() }
    };
    let systemd = tokio::fs::metadata("/run/systemd/system").await.is_ok();
    let (systemctl, docker, apt, dnf, pct, qm) = tokio::join!(
        has(&config.systemctl),
        has(&config.docker),
        has(&config.apt_get),
        has(&config.dnf),
        has(&config.pct),
        has(&config.qm),
    );
    let mut families = vec!["file", "log", "net", "security"];
    if systemctl && systemd {
        families.push("service");
    }
    if docker {
        families.extend(["container", "compose"]);
    }
    if apt || dnf {
        families.push("package");
    }
    if pct || qm {
        families.push("proxmox");
    }
    families.sort_unstable();
    families
}

/// How far a job's reads reach on this host, as the controller authorised it
/// ([`v1::ReadReach`]). Observe reads stay under the observe roots and see no command lines;
/// control reads reach the wider roots. Anything unknown is treated as observe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Reach {
    #[default]
    Observe,
    Control,
}

impl Reach {
    /// The reach a `RunJob` carries; an unknown value reads as the narrowest.
    pub fn of(job: &v1::RunJob) -> Self {
        match v1::ReadReach::try_from(job.reach) {
            Ok(v1::ReadReach::Control) => Self::Control,
            Ok(v1::ReadReach::Observe) | Err(_) => Self::Observe,
        }
    }
}

/// Why an operation did not produce a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// The host lacks the tool or facility (no systemd, no docker...).
    #[error("not available on this host: {0}")]
    NotAvailable(String),
    /// The request was refused by the host's policy (path outside base directories, deny list).
    #[error("refused: {0}")]
    Refused(String),
    /// The operation ran and failed; the message says how.
    #[error("{0}")]
    Failed(String),
}

/// Runs a validated operation within `timeout`. Operations that follow something (logs) write
/// to `live` as they go; the rest return everything in their result.
pub async fn run(
    op: &Validated,
    config: &OpsConfig,
    reach: Reach,
    timeout: Duration,
    live: &LiveOutput,
) -> Result<v1::OperationOutput, OpError> {
    match op.spec.family() {
        "service" => services::run(op, config, timeout).await,
        "container" | "compose" => containers::run(op, config, timeout, live).await,
        "file" => files::run(op, &config.files, reach).await,
        "log" => logs::run(op, config, reach, timeout, live).await,
        "net" => net::run(op, config, timeout).await,
        "package" => packages::run(op, config, timeout).await,
        "security" => security::run(op, config, reach, timeout).await,
        "proxmox" => proxmox::run(op, config, timeout).await,
        family => Err(OpError::NotAvailable(format!("this agent does not implement {family} operations"))),
    }
}

/// The result of an operation for the job protocol: exit code 0 with the output on success,
/// otherwise the error (and whether the host simply lacks what the operation needs). The output
/// is fitted under `limit` encoded bytes ([`output::fit`]; `stdout_truncated` then says it was
/// cut), so no result can exceed what the controller accepts on the link.
pub fn command_result(
    op: &Validated,
    outcome: Result<v1::OperationOutput, OpError>,
    limit: usize,
) -> v1::CommandResult {
    match outcome {
        Ok(mut output) => {
            let truncated = output::fit(&mut output, limit, kept_end(op));
            v1::CommandResult {
                exit_code: Some(0),
                stdout_truncated: truncated,
                output: Some(v1::ActionOutput { kind: Some(v1::action_output::Kind::Operation(output)) }),
                ..Default::default()
            }
        }
        Err(e) => {
            // Errors quote tool output, which can be one endless line.
            let error = e.to_string();
            v1::CommandResult {
                not_available: matches!(e, OpError::NotAvailable(_)),
                error: output::cut_text(&error, output::MAX_TEXT_BYTES / 16).unwrap_or(error),
                ..Default::default()
            }
        }
    }
}

/// Logs and tails list the newest line last: when they must be cut, the newest lines stay.
fn kept_end(op: &Validated) -> output::Keep {
    match op.spec.name {
        "file.tail" | "log.journal" | "log.file" | "container.logs" => output::Keep::Last,
        _ => output::Keep::First,
    }
}

#[cfg(test)]
mod tests {
    use super::OpsConfig;

    #[test]
    fn every_named_tool_can_be_pointed_elsewhere() {
        let mut config = OpsConfig::default();
        for name in OpsConfig::TOOLS {
            config.set_tool(name, format!("/opt/bin/{name}").into()).expect("known tool");
        }
        assert_eq!(config.apt_get, std::path::PathBuf::from("/opt/bin/apt-get"));
        assert_eq!(config.docker_socket, std::path::PathBuf::from("/opt/bin/docker-socket"));
        assert!(config.set_tool("kubectl", "/x".into()).unwrap_err().contains("known: systemctl"));
    }

    #[test]
    fn every_catalog_family_has_a_handler() {
        let implemented =
            ["service", "container", "compose", "file", "log", "net", "package", "security", "proxmox"];
        for spec in tailops_ops::catalog() {
            assert!(implemented.contains(&spec.family()), "{} has no handler in the agent", spec.name);
        }
    }
}
