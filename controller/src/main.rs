//! `tailops-controller`: initialise a data directory, serve, or run a local dev setup.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use tailops_controller::Controller;
use tailops_controller::data_dir::{DataDir, InitOptions, initialize, rotate_server_certificate};
use tailops_proto::v1::{self, fleet_client::FleetClient, identity_client::IdentityClient};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "tailops-controller",
    version,
    about = "TailOps controller: CA, enrollment, agent link, jobs"
)]
struct Cli {
    /// Log filter, e.g. `info` or `tailops_controller=debug` (overrides RUST_LOG).
    #[arg(long, global = true)]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a data directory: CA, server certificate, database and the first admin profile.
    Init {
        #[arg(long, env = "TAILOPS_DATA_DIR")]
        data_dir: PathBuf,
        /// Names principals: spiffe://TRUST_DOMAIN/KIND/NAME.
        #[arg(long, default_value = "tailops.local")]
        trust_domain: String,
        /// Address to listen on. Use 0.0.0.0:7443 (or the tailnet IP) to accept remote agents.
        #[arg(long, default_value = "127.0.0.1:7443")]
        listen: SocketAddr,
        /// DNS name or IP clients use to reach the controller (repeatable); all go into the server
        /// certificate, the first into enrollment commands. Default: localhost and 127.0.0.1.
        #[arg(long = "advertise", value_name = "NAME_OR_IP")]
        advertise: Vec<String>,
    },
    /// Serve the gRPC API (TLS only) from an initialised data directory.
    Serve {
        #[arg(long, env = "TAILOPS_DATA_DIR")]
        data_dir: PathBuf,
        /// Override the configured listen address.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Issue a new server certificate (new key, same CA) before the current one expires.
    /// Agents and profiles trust the CA, not this certificate, so nothing else changes. A
    /// running controller serves the new certificate after a restart.
    RotateServerCert {
        #[arg(long, env = "TAILOPS_DATA_DIR")]
        data_dir: PathBuf,
        /// DNS name or IP clients use to reach the controller (repeatable); replaces the
        /// configured names. Default: keep the configured names.
        #[arg(long = "advertise", value_name = "NAME_OR_IP")]
        advertise: Vec<String>,
    },
    /// Run a controller and a local agent enrolled against it, for trying TailOps on one machine.
    Dev {
        #[arg(long, default_value = ".tailops-dev")]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:7443")]
        listen: SocketAddr,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tailops_pki::install_crypto_provider();
    let cli = Cli::parse();
    init_tracing(cli.log.as_deref());
    raise_fd_limit();
    match cli.command {
        Command::Init { data_dir, trust_domain, listen, advertise } => {
            let dir = DataDir::new(data_dir);
            let done = initialize(&dir, InitOptions { trust_domain, listen, advertise }).await?;
            println!("Initialised controller data in {}", dir.path().display());
            println!("CA fingerprint:  {}", done.ca_fingerprint);
            println!("Admin profile:   {}", done.admin_profile_path.display());
            println!();
            println!("Next:");
            println!("  tailops-controller serve --data-dir {}", dir.path().display());
            println!("  export TAILOPS_PROFILE={}", absolute(&done.admin_profile_path).display());
            println!("  tailopsctl token create --label env=home");
            println!();
            println!(
                "The admin certificate lasts {} days; tailopsctl renews it on use once 70% of that has passed.",
                done.config.timing.admin_cert_lifetime_secs / 86_400
            );
            println!(
                "The server certificate lasts {} days; renew it with `tailops-controller rotate-server-cert`.",
                done.config.timing.server_cert_lifetime_secs / 86_400
            );
            Ok(())
        }
        Command::RotateServerCert { data_dir, advertise } => {
            let dir = DataDir::new(data_dir);
            let advertise = (!advertise.is_empty()).then_some(advertise);
            let rotated = rotate_server_certificate(&dir, advertise).await?;
            println!("New server certificate {} for {}", rotated.serial, rotated.advertise.join(", "));
            println!("Valid until {}", tailops_proto::time::format_ms(rotated.not_after_ms));
            println!("Restart the controller to serve it; agents and profiles need no change.");
            Ok(())
        }
        Command::Serve { data_dir, listen } => {
            let dir = DataDir::new(data_dir);
            warn_if_server_certificate_ends_soon(&dir).await;
            let controller = Controller::open(&dir).await?;
            let listener = controller.bind(listen).await?;
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            controller.serve(listener, shutdown).await?;
            Ok(())
        }
        Command::Dev { data_dir, listen } => dev(DataDir::new(data_dir), listen).await,
    }
}

/// Every connection fails once the server certificate ends: say so well before.
async fn warn_if_server_certificate_ends_soon(dir: &DataDir) {
    const SOON_MS: i64 = 30 * 86_400_000;
    let Ok(pem) = dir.read(tailops_controller::data_dir::SERVER_CERT).await else { return };
    match tailops_pki::CertificateInfo::from_pem(&pem) {
        Ok(info) if info.not_after_ms - tailops_proto::time::now_ms() < SOON_MS => tracing::warn!(
            until = %tailops_proto::time::format_ms(info.not_after_ms),
            "the server certificate ends soon: run `tailops-controller rotate-server-cert` and restart"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the server certificate's validity"),
    }
}

/// Every connection costs a file descriptor, and the usual soft limit (1024) is far below what a
/// fleet plus a flood of idle peers needs; the hard limit is what the administrator allows.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "raised the open-file limit"),
            Err(e) => tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit"),
        },
        Ok((soft, _)) => tracing::info!(limit = soft, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
}

fn init_tracing(filter: Option<&str>) {
    let filter = match filter {
        Some(f) => tracing_subscriber::EnvFilter::new(f),
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    };
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

async fn cancel_on_signal(token: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            token.cancel();
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    token.cancel();
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// Controller in this process, agent as a child process from the binary next to this one.
/// The dev controller's MCP bridge (`assistant`, role `mcp`): its profile, created on the first
/// run next to the admin's.
async fn dev_bridge_profile(
    dir: &DataDir,
    admin: tonic::transport::Channel,
    endpoint: &str,
) -> anyhow::Result<PathBuf> {
    let path = absolute(&dir.file("mcp.profile.toml"));
    if tokio::fs::try_exists(&path).await.unwrap_or(false) {
        return Ok(path);
    }
    let invite = IdentityClient::new(admin)
        .create_invite(v1::CreateInviteRequest {
            kind: v1::PrincipalKindProto::Bridge as i32,
            name: "assistant".to_owned(),
            role: "mcp".to_owned(),
            scope: None,
            ttl_secs: 300,
        })
        .await
        .context("inviting the dev bridge")?
        .into_inner();
    let profile = tailopsctl::login::login(tailopsctl::login::LoginOptions {
        controller_url: endpoint.to_owned(),
        token: invite.token,
        ca_fingerprint: invite.ca_fingerprint.parse()?,
    })
    .await?;
    profile.save_new(&path).await?;
    Ok(path)
}

async fn dev(dir: DataDir, listen: SocketAddr) -> anyhow::Result<()> {
    if !dir.is_initialized().await {
        let options = InitOptions { trust_domain: "tailops.local".into(), listen, advertise: Vec::new() };
        initialize(&dir, options).await?;
    }
    let controller = Controller::open(&dir).await?;
    let listener = controller.bind(Some(listen)).await.with_context(|| {
        format!("is another controller already running on {listen}? pass --listen to pick another")
    })?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let server = tokio::spawn(controller.serve(listener, shutdown.clone()));

    let profile_path = absolute(&dir.file(tailops_controller::data_dir::ADMIN_PROFILE));
    let mut profile = tailopsctl::Profile::load(&profile_path).await?;
    profile.endpoint = format!("https://localhost:{}", listen.port());
    let channel = tailopsctl::connect(&profile).await?;
    let mut fleet = FleetClient::new(channel.clone());

    let agent_bin = std::env::current_exe()?.with_file_name("tailops-agent");
    if !tokio::fs::try_exists(&agent_bin).await.unwrap_or(false) {
        bail!("{} not found; build every binary first with `cargo build`", agent_bin.display());
    }
    let agent_dir = absolute(&dir.file("agent"));
    if !tokio::fs::try_exists(agent_dir.join("agent.toml")).await.unwrap_or(false) {
        let token = fleet
            .create_join_token(v1::CreateJoinTokenRequest {
                labels: [("env".to_owned(), "dev".to_owned())].into(),
                ttl_secs: 300,
                uses: 1,
            })
            .await?
            .into_inner();
        let status = tokio::process::Command::new(&agent_bin)
            .args(["enroll", "--controller", &profile.endpoint, "--ca-fingerprint", &token.ca_fingerprint])
            .arg("--state-dir")
            .arg(&agent_dir)
            .env("TAILOPS_JOIN_TOKEN", &token.token)
            .status()
            .await?;
        if !status.success() {
            bail!("enrolling the local agent failed ({status})");
        }
    }
    let mut agent = tokio::process::Command::new(&agent_bin)
        .arg("run")
        .arg("--state-dir")
        .arg(&agent_dir)
        .kill_on_drop(true)
        .spawn()
        .context("starting the local agent")?;

    let mut online = false;
    for _ in 0..100 {
        let hosts = fleet.list_hosts(v1::ListHostsRequest::default()).await?.into_inner().hosts;
        if hosts.iter().any(|h| h.online) {
            online = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bridge_profile = dev_bridge_profile(&dir, channel, &profile.endpoint).await;
    let ctl = std::env::current_exe()?.with_file_name("tailopsctl");
    println!();
    println!("TailOps dev controller at {} (data in {})", profile.endpoint, dir.path().display());
    if online {
        println!("A local agent is enrolled and connected.");
    } else {
        println!("The local agent has not connected yet; see the log above.");
    }
    println!();
    println!("Try it from another terminal:");
    println!("  export TAILOPS_PROFILE={}", profile_path.display());
    println!("  {} hosts ls", ctl.display());
    println!("  {} exec --all -- uname -a", ctl.display());
    match bridge_profile {
        Ok(path) => {
            println!();
            println!("Connect an AI assistant (MCP over stdio; it observes freely, and its actions wait for");
            println!("`tailopsctl approvals approve ID`):");
            let mcp = std::env::current_exe()?.with_file_name("tailops-mcp");
            println!("  {} --profile {}", mcp.display(), path.display());
        }
        Err(e) => tracing::warn!(error = %e, "no MCP bridge profile for the dev controller"),
    }
    println!();
    println!("Stop with Ctrl-C.");

    tokio::select! {
        () = shutdown.cancelled() => {}
        status = agent.wait() => tracing::error!(?status, "the local agent exited"),
    }
    shutdown.cancel();
    let _ = agent.kill().await;
    server.await??;
    Ok(())
}
