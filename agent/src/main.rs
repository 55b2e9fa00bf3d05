//! `tailops-agent`: enroll this host, then run the agent link.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
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
        /// Extra label KEY=VALUE (repeatable); labels carried by the token win on conflict.
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// Connect to the controller and serve jobs until stopped.
    Run {
        #[arg(long, env = "TAILOPS_AGENT_STATE_DIR", default_value = "/var/lib/tailops-agent")]
        state_dir: PathBuf,
    },
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

#[tokio::main]
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
        Command::Run { state_dir } => {
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
            tailops_agent::run(LinkOptions::new(state_dir), shutdown).await?;
            Ok(())
        }
    }
}
