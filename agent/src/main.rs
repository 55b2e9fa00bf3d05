//! `tailops-agent`: enroll this host, then run the agent link.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tailops_agent::monitor::MonitorOptions;
use tailops_agent::mounts::MountFilter;
use tailops_agent::ops::OpsConfig;
use tailops_agent::{EnrollOptions, LinkOptions};
use tailops_pki::Fingerprint;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "tailops-agent",
    version,
    about = "TailOps agent: connects this host to a TailOps controller"
)]
struct Cli {
    /// Log filter, e.g. `info` or `tailops_agent=debug` (overrides RUST_LOG).
    #[arg(long, global = true)]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enroll this host with a join token from `tailopsctl token create`.
    Enroll {
        /// Controller URL, e.g. https://controller.tailnet.ts.net:7443
        #[arg(long)]
        controller: String,
        /// The join token (prefer the environment variable: argv is visible to other users).
        #[arg(long, env = "TAILOPS_JOIN_TOKEN", hide_env_values = true)]
        token: String,
        /// The controller CA fingerprint printed with the token, sha256:HEX.
        #[arg(long)]
        ca_fingerprint: Fingerprint,
        #[arg(long, env = "TAILOPS_AGENT_STATE_DIR", default_value = "/var/lib/tailops-agent")]
        state_dir: PathBuf,
        /// Host name in the fleet (default: this machine's host name).
        #[arg(long)]
        name: Option<String>,
        /// Label KEY=VALUE (repeatable). Ignored by the controller: a host's labels decide which
        /// jobs and scopes reach it, so they come only from the join token
        /// (`tailopsctl token create --label KEY=VALUE`) or an admin.
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// Connect to the controller and serve jobs until stopped.
    Run {
        #[arg(long, env = "TAILOPS_AGENT_STATE_DIR", default_value = "/var/lib/tailops-agent")]
        state_dir: PathBuf,
        #[command(flatten)]
        monitoring: MonitoringArgs,
        #[command(flatten)]
        ops: OpsArgs,
        /// Longest wait between reconnect attempts (doubling from 0.5s, jittered). Lower it where
        /// a controller outage is short and rare, e.g. the network-partition tests.
        #[arg(long, env = "TAILOPS_MAX_BACKOFF", default_value = "30s", value_parser = at_least_100ms)]
        max_backoff: Duration,
    },
}

#[derive(Debug, clap::Args)]
struct MonitoringArgs {
    /// How often to sample CPU, memory, disks and network (at least 1s).
    #[arg(long, env = "TAILOPS_SAMPLE_INTERVAL", default_value = "10s", value_parser = at_least_a_second)]
    sample_interval: Duration,
    /// How often to look for changed facts (OS, units, containers, addresses...).
    #[arg(long, env = "TAILOPS_FACTS_INTERVAL", default_value = "60s", value_parser = at_least_a_second)]
    facts_interval: Duration,
    /// Send no samples and no facts (jobs only).
    #[arg(long)]
    no_monitoring: bool,
    /// Count filesystems of this type as disks even if they are pseudo filesystems (repeatable).
    #[arg(long = "include-fstype", value_name = "TYPE")]
    include_fstypes: Vec<String>,
    /// Do not count filesystems of this type as disks (repeatable).
    #[arg(long = "exclude-fstype", value_name = "TYPE")]
    exclude_fstypes: Vec<String>,
    /// Do not count mounts at or under this path as disks (repeatable).
    #[arg(long = "exclude-mount", value_name = "PATH")]
    exclude_mounts: Vec<String>,
}

impl MonitoringArgs {
    fn options(self) -> Option<MonitorOptions> {
        if self.no_monitoring {
            return None;
        }
        let mut options = MonitorOptions {
            sample_interval: self.sample_interval,
            facts_interval: self.facts_interval,
            ..Default::default()
        };
        options.facts.mounts = MountFilter {
            include_fstypes: self.include_fstypes,
            exclude_fstypes: self.exclude_fstypes,
            exclude_mount_prefixes: self.exclude_mounts,
        };
        Some(options)
    }
}

#[derive(Debug, clap::Args)]
struct OpsArgs {
    /// Directory that jobs authorised at control tier (operators, admins, approved or elevated
    /// requests) may read under (repeatable; replaces the defaults /var/log, /etc, /srv, /opt,
    /// /home).
    #[arg(long = "files-base", value_name = "DIR")]
    files_base: Vec<PathBuf>,
    /// Directory that observe-tier jobs (viewers, AI bridges) may read under (repeatable;
    /// replaces the default /var/log). Keep it narrow: observe must never reach credentials.
    #[arg(long = "files-observe-root", value_name = "DIR")]
    files_observe_roots: Vec<PathBuf>,
    /// Path file operations may never read, on top of the built-in deny list and the agent's own
    /// state directory, which is always denied (repeatable; absolute).
    #[arg(long = "files-deny", value_name = "PATH")]
    files_deny: Vec<PathBuf>,
    /// Where a tool lives, NAME=PATH (repeatable), e.g. docker=/usr/local/bin/podman.
    #[arg(long = "tool", value_name = "NAME=PATH", value_parser = parse_tool)]
    tools: Vec<(String, PathBuf)>,
}

impl OpsArgs {
    async fn config(self) -> anyhow::Result<OpsConfig> {
        let mut config = OpsConfig::default();
        if !self.files_base.is_empty() {
            config.files.base_dirs = canonical_dirs("--files-base", &self.files_base).await?;
        }
        if !self.files_observe_roots.is_empty() {
            config.files.observe_roots =
                canonical_dirs("--files-observe-root", &self.files_observe_roots).await?;
        }
        config.files.deny = deny_paths(&self.files_deny).await?;
        for (name, path) in self.tools {
            config.set_tool(&name, path).map_err(anyhow::Error::msg)?;
        }
        Ok(config)
    }
}

/// The policy compares canonical paths, so the roots it is given are canonical too.
async fn canonical_dirs(flag: &str, dirs: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut canonical = Vec::with_capacity(dirs.len());
    for dir in dirs {
        canonical.push(
            tokio::fs::canonicalize(dir)
                .await
                .map_err(|e| anyhow::anyhow!("{flag} {}: {e}", dir.display()))?,
        );
    }
    Ok(canonical)
}

/// Denied paths are compared with the paths file operations open, which never pass through a
/// symlink: so each is denied as given and, where it exists, as its canonical path.
async fn deny_paths(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut denied = Vec::with_capacity(paths.len());
    for path in paths {
        if !path.is_absolute() {
            anyhow::bail!("--files-deny {}: give an absolute path", path.display());
        }
        denied.push(path.clone());
        if let Ok(canonical) = tokio::fs::canonicalize(path).await
            && canonical != *path
        {
            denied.push(canonical);
        }
    }
    Ok(denied)
}

fn parse_tool(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => {
            if !OpsConfig::TOOLS.contains(&name) {
                return Err(format!("unknown tool {name:?}; known: {}", OpsConfig::TOOLS.join(", ")));
            }
            Ok((name.to_owned(), PathBuf::from(path)))
        }
        _ => Err(format!("expected NAME=PATH, got {s:?}")),
    }
}

fn at_least_a_second(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(1) {
        return Err(format!("{s} is too short; use 1s or more"));
    }
    Ok(d)
}

/// Lower would let an agent that cannot reach its controller retry in a busy loop.
fn at_least_100ms(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(100) {
        return Err(format!("{s} is too short; use 100ms or more"));
    }
    Ok(d)
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

// One thread carries the link, heartbeats, cancels and exec jobs' I/O, all of it light; typed
// operations, whose cost grows with their input, each run on a thread of their own (see
// `link::Workers`), so none of them can hold this one up. A worker per core would cost about
// 1 MiB of idle RSS for nothing (docs/BENCHMARKS.md).
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tailops_pki::install_crypto_provider();
    let cli = Cli::parse();
    let filter = match cli.log.as_deref() {
        Some(f) => tracing_subscriber::EnvFilter::new(f),
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    };
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();

    match cli.command {
        Command::Enroll { controller, token, ca_fingerprint, state_dir, name, labels } => {
            let state = tailops_agent::enroll(EnrollOptions {
                controller_url: controller,
                token,
                ca_fingerprint,
                state_dir,
                name,
                labels: labels.into_iter().collect::<BTreeMap<_, _>>(),
            })
            .await?;
            println!(
                "Enrolled as {} (host id {}); state in {}",
                state.config.name,
                state.config.host_id,
                state.dir.display()
            );
            println!("Start the agent with: tailops-agent run --state-dir {}", state.dir.display());
            Ok(())
        }
        Command::Run { state_dir, monitoring, ops, max_backoff } => {
            let ops = ops.config().await?;
            let shutdown = CancellationToken::new();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    Some(()) = async { match term.as_mut() { Some(t) => t.recv().await, None => None } } => {}
                }
                stop.cancel();
            });
            let mut options = LinkOptions::new(state_dir);
            options.monitor = monitoring.options();
            options.ops = std::sync::Arc::new(ops);
            options.max_backoff = max_backoff;
            options.min_backoff = options.min_backoff.min(max_backoff);
            tailops_agent::run(options, shutdown).await?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use proptest::prelude::*;

    use super::*;

    fn config() -> ProptestConfig {
        let default = ProptestConfig::default();
        // `PROPTEST_CASES`, when set, is already in the default.
        let cases = if std::env::var_os("PROPTEST_CASES").is_some() { default.cases } else { 2000 };
        // No regression files in the source tree: a case worth keeping becomes a unit test.
        ProptestConfig { cases, failure_persistence: None, ..default }
    }

    fn hostile_text() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => any::<String>(),
            3 => "[a-z=/._-]{0,12}",
            2 => (prop::sample::select(OpsConfig::TOOLS), "=?[ -~]{0,12}").prop_map(|(t, rest)| format!("{t}{rest}")),
            1 => "[0-9]{1,25} ?(ns|ms|s|m|h|d|y|years)?",
            1 => (any::<char>(), 0usize..5000).prop_map(|(c, n)| c.to_string().repeat(n)),
        ]
    }

    #[test]
    fn a_label_needs_a_key() {
        assert!(parse_label("=lab").unwrap_err().contains("KEY=VALUE"));
        assert_eq!(parse_label("site=").expect("an empty value is a value"), ("site".into(), String::new()));
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn labels_split_at_the_first_equals_sign_or_are_refused(text in hostile_text()) {
            match parse_label(&text) {
                Ok((key, value)) => {
                    prop_assert!(!key.is_empty() && !key.contains('='));
                    prop_assert_eq!(format!("{key}={value}"), text);
                }
                Err(message) => {
                    prop_assert!(text.starts_with('=') || !text.contains('='));
                    prop_assert!(message.contains("KEY=VALUE"), "{}", message);
                }
            }
        }

        /// Only a known tool with a path is accepted; a refusal says which tools exist.
        #[test]
        fn tools_are_known_names_with_a_path(text in hostile_text()) {
            match parse_tool(&text) {
                Ok((name, path)) => {
                    prop_assert!(OpsConfig::TOOLS.contains(&name.as_str()));
                    prop_assert!(!path.as_os_str().is_empty());
                    prop_assert_eq!(format!("{name}={}", path.display()), text);
                }
                Err(message) => {
                    prop_assert!(
                        message.contains("NAME=PATH") || message.contains("known: systemctl"),
                        "{}",
                        message
                    );
                }
            }
        }

        #[test]
        fn intervals_are_at_least_a_second_or_refused_with_a_reason(text in hostile_text()) {
            match at_least_a_second(&text) {
                Ok(interval) => prop_assert!(interval >= Duration::from_secs(1)),
                Err(message) => prop_assert!(!message.trim().is_empty()),
            }
        }

        /// Whole command lines, flags among them: a verdict, never a panic.
        #[test]
        fn any_command_line_gets_a_verdict(
            words in prop::collection::vec(
                prop_oneof![
                    2 => prop::sample::select(&[
                        "enroll", "run", "--controller", "--token", "--ca-fingerprint", "--name",
                        "--label", "--label==x", "--tool", "--tool=docker=", "--sample-interval",
                        "--sample-interval=0s", "--facts-interval", "--files-base", "--files-deny",
                        "--no-monitoring", "--log", "--help", "sha256:00",
                    ][..]).prop_map(str::to_owned),
                    1 => hostile_text(),
                ],
                0..8,
            ),
        ) {
            if let Err(e) = Cli::try_parse_from(std::iter::once("tailops-agent".to_owned()).chain(words)) {
                prop_assert!(!e.render().to_string().trim().is_empty());
            }
        }
    }
}
