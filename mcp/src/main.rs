//! `tailops-mcp`: serve the MCP bridge over stdio (default) or Streamable HTTP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use rmcp::ServiceExt as _;
use tailops_mcp::Bridge;
use tailops_mcp::controller::Controller;
use tailops_mcp::http::HttpPolicy;
use tailops_mcp::tools::Limits;
use tokio_util::sync::CancellationToken;

/// MCP bridge: lets AI assistants use the fleet under the bridge's own identity. Observe tools
/// run at once; anything that changes hosts waits for a human's approval unless the bridge's
/// role allows it.
///
/// Create the bridge's profile once:
///   tailopsctl bridges invite assistant --role mcp        (as an admin; prints a token)
///   TAILOPS_INVITE_TOKEN=... tailopsctl --profile ~/.config/tailops/mcp.toml login --controller URL --ca-fingerprint sha256:...
#[derive(Debug, Parser)]
#[command(name = "tailops-mcp", version, verbatim_doc_comment)]
struct Cli {
    /// The bridge principal's profile (default: $TAILOPS_PROFILE, else ~/.config/tailops/profile.toml).
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Serve Streamable HTTP on ADDR:PORT instead of stdio (keep it on loopback; expose it on the
    /// tailnet with `tailscale serve`).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<SocketAddr>,
    /// Host header values accepted over HTTP, besides localhost, 127.0.0.1 and ::1 (e.g. the
    /// tailnet name `tailscale serve` forwards for). Repeatable.
    #[arg(long = "allow-host", value_name = "HOST[:PORT]")]
    allowed_hosts: Vec<String>,
    /// Browser origins accepted over HTTP (scheme://host[:port]); requests from any other
    /// origin are refused. Requests without an Origin header (non-browser clients) pass. Repeatable.
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    allowed_origins: Vec<String>,
    /// Require `Authorization: Bearer TOKEN` on HTTP requests. Required when --listen is not a
    /// loopback address. Prefer the environment variable: argv is visible to other users.
    #[arg(long, env = "TAILOPS_MCP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Serve HTTP on a loopback address without a bearer token. Every local user, process and
    /// host-network container can then act as the bridge: only for single-user machines.
    #[arg(long)]
    allow_unauthenticated_loopback: bool,
    /// Most HTTP connections open at once; more wait until one closes.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    http_max_connections: u32,
    /// Most HTTP connections from one address; more are closed at once. Behind `tailscale
    /// serve` every client arrives from loopback and shares this.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    http_max_connections_per_address: u32,
    /// A request's headers must arrive within this; it also closes idle keep-alive connections.
    #[arg(long, default_value = "10s", value_parser = parse_http_timeout)]
    http_header_timeout: Duration,
    /// A request's body must arrive within this after its headers.
    #[arg(long, default_value = "30s", value_parser = parse_http_timeout)]
    http_body_timeout: Duration,
    /// Longest tool result, in characters; longer results are cut with a note on how to narrow them.
    #[arg(long, default_value_t = 16_000, value_parser = clap::value_parser!(u32).range(1000..=1_000_000))]
    max_result_chars: u32,
    /// Most rows (hosts, records, processes, points) in one result.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(10..=10_000))]
    max_rows: u32,
    /// Longest a tool call waits for a job before returning its state (the job goes on); at most 1h.
    #[arg(long, default_value = "5m", value_parser = parse_max_wait)]
    max_wait: Duration,
}

fn parse_max_wait(text: &str) -> Result<Duration, String> {
    let wait = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if wait.is_zero() || wait > Duration::from_secs(3600) {
        return Err("must be between 1s and 1h".to_owned());
    }
    Ok(wait)
}

fn parse_http_timeout(text: &str) -> Result<Duration, String> {
    let timeout = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if timeout < Duration::from_millis(100) || timeout > Duration::from_secs(600) {
        return Err("must be between 100ms and 10m".to_owned());
    }
    Ok(timeout)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // stdout belongs to the MCP protocol when serving stdio: logs go to stderr, always.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,rmcp=warn".into()),
        )
        .init();
    let cli = Cli::parse();
    if let Some(addr) = cli.listen {
        check_http_exposure(
            addr,
            &cli.allowed_hosts,
            cli.token.as_deref(),
            cli.allow_unauthenticated_loopback,
        )?;
    }
    let shutdown = CancellationToken::new();
    let profile = tailopsctl::Profile::resolve_path(cli.profile.as_deref())?;
    let (controller, identity) = Controller::connect(profile.clone(), shutdown.clone())
        .await
        .with_context(|| format!("bridge profile {}", profile.display()))?;
    tracing::info!(principal = %identity.id, role = %identity.role, "connected to the controller");
    let limits = Limits {
        max_result_chars: cli.max_result_chars as usize,
        max_rows: cli.max_rows as usize,
        max_wait: cli.max_wait,
    };
    let bridge = Bridge::new(controller, identity, limits);
    match cli.listen {
        None => {
            let service = bridge.serve(rmcp::transport::stdio()).await.context("MCP handshake over stdio")?;
            tokio::select! {
                result = service.waiting() => { result.context("MCP session over stdio")?; }
                () = terminated() => {}
            }
        }
        Some(addr) => {
            let listener =
                tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listen on {addr}"))?;
            let local = listener.local_addr()?;
            let mut allowed_hosts = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
            allowed_hosts.extend(cli.allowed_hosts);
            let policy = HttpPolicy {
                allowed_hosts,
                allowed_origins: cli.allowed_origins,
                token: cli.token,
                session_idle: cli.max_wait + Duration::from_secs(300),
                limits: tailops_mcp::http::HttpLimits {
                    max_connections: cli.http_max_connections as usize,
                    max_connections_per_address: cli.http_max_connections_per_address as usize,
                    header_timeout: cli.http_header_timeout,
                    body_timeout: cli.http_body_timeout,
                },
            };
            // Tests and wrappers read the bound address (port 0 picks one) from this line.
            eprintln!("tailops-mcp listening on http://{local}/mcp");
            let server = tokio::spawn(tailops_mcp::http::serve(listener, bridge, policy, shutdown.clone()));
            terminated().await;
            shutdown.cancel();
            let _ = server.await;
        }
    }
    shutdown.cancel();
    Ok(())
}

/// Shortest bearer token accepted: a guessable token is no guard.
const MIN_TOKEN_LEN: usize = 16;

/// HTTP needs a bearer token: a non-loopback address, or a loopback one behind a proxy such as
/// `tailscale serve` (which the extra `--allow-host` names give away), is reachable from other
/// machines, and plain loopback from every local user and process; the last may go without a
/// token only when asked for explicitly. A token, when given, must not be guessable.
fn check_http_exposure(
    addr: SocketAddr,
    allowed_hosts: &[String],
    token: Option<&str>,
    allow_unauthenticated_loopback: bool,
) -> anyhow::Result<()> {
    if let Some(token) = token
        && token.trim().len() < MIN_TOKEN_LEN
    {
        anyhow::bail!(
            "the bearer token is shorter than {MIN_TOKEN_LEN} characters; use a random one, e.g. `openssl rand -hex 32`"
        );
    }
    if token.is_none() && !addr.ip().is_loopback() {
        anyhow::bail!(
            "--listen {addr} is not a loopback address: set a bearer token (TAILOPS_MCP_TOKEN), or \
             listen on 127.0.0.1"
        );
    }
    if token.is_none() && !allowed_hosts.is_empty() {
        anyhow::bail!(
            "--allow-host means requests arrive through a proxy (such as `tailscale serve`) from \
             other machines: set a bearer token (TAILOPS_MCP_TOKEN)"
        );
    }
    if token.is_none() && !allow_unauthenticated_loopback {
        anyhow::bail!(
            "--listen {addr} without a bearer token lets every local user, process and host-network \
             container act as the bridge: set a bearer token (TAILOPS_MCP_TOKEN, e.g. from \
             `openssl rand -hex 32`), or pass --allow-unauthenticated-loopback on a single-user machine"
        );
    }
    if token.is_none() {
        tracing::warn!(%addr, "serving HTTP without a bearer token: every local process can use the bridge");
    }
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn terminated() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
