//! Command-line parsing and dispatch.

mod admin;
mod exec;
mod friendly;
mod monitor;
mod ops;
#[cfg(test)]
mod properties;
mod render;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tailops_proto::v1::{self, fleet_client::FleetClient};
use tailopsctl::Profile;

#[derive(Debug, Parser)]
#[command(name = "tailopsctl", version, about = "TailOps admin CLI")]
struct Cli {
    /// Profile file (default: $TAILOPS_PROFILE, else ~/.config/tailops/profile.toml).
    #[arg(long, global = true)]
    profile: Option<PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Join tokens for enrolling hosts.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Enrolled hosts.
    #[command(subcommand)]
    Hosts(HostsCommand),
    /// A host's metrics over time: a table, JSON, or sparklines (--spark).
    Metrics(monitor::MetricsArgs),
    /// A live, refreshing fleet table, like `top` for hosts.
    Top(monitor::TopArgs),
    /// The top processes on a host, by CPU or memory.
    Ps(monitor::PsArgs),
    /// Inventory history: what changed on hosts.
    #[command(subcommand)]
    Inventory(monitor::InventoryCommand),
    /// Run a command on hosts and stream its output (argv, no shell).
    Exec(exec::ExecArgs),
    /// Typed operations (services, files, network checks): `op ls`, `op NAME --host H KEY=VALUE`.
    #[command(subcommand)]
    Op(ops::OpCommand),
    /// Services: `svc ls|status|start|stop|restart|reload|enable|disable [UNIT] --host H`.
    Svc(friendly::FriendlyArgs),
    /// Containers: `ctr ls|inspect|logs|stats|images|start|stop|restart [CONTAINER] --host H`.
    Ctr(friendly::FriendlyArgs),
    /// Files (read-only): `files list|stat|read|tail|search PATH --host H [KEY=VALUE]`.
    Files(friendly::FriendlyArgs),
    /// Network checks from hosts: `net interfaces|sockets|port|dns|ping [HOST] --host H [KEY=VALUE]`.
    Net(friendly::FriendlyArgs),
    /// Packages: `pkg updates|upgrade|install [PACKAGES] --host H`.
    Pkg(friendly::FriendlyArgs),
    /// Logs: the journal (`--unit`, `--since`, `--priority`, `--grep`) or `--file PATH`; `-f` follows.
    Logs(friendly::LogsArgs),
    /// Security checks: `check [basics|secrets PATH|vulns PATH] --host H`.
    Check(friendly::CheckArgs),
    /// Jobs: list, inspect, re-attach, cancel.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Jobs waiting for a human's approval.
    #[command(subcommand)]
    Approvals(admin::ApprovalsCommand),
    /// Human principals: invite, list, disable, enable, set-role.
    #[command(subcommand)]
    Users(admin::PrincipalCommand),
    /// Automation principals (such as the MCP bridge): invite, list, disable, enable, set-role.
    #[command(subcommand)]
    Bridges(admin::PrincipalCommand),
    /// Certificates issued by the controller: list and revoke.
    #[command(subcommand)]
    Certs(admin::CertsCommand),
    /// The hash-chained audit log.
    #[command(subcommand)]
    Audit(admin::AuditCommand),
    /// Who this profile authenticates as, with role and scope.
    Whoami,
    /// Redeem an invite: generate a key here, get a certificate, write a profile.
    Login(LoginArgs),
}

#[derive(Debug, Args)]
struct LoginArgs {
    /// Controller URL, e.g. https://controller.tailnet.ts.net:7443
    #[arg(long)]
    controller: String,
    /// The invite token (prefer the environment variable: argv is visible to other users).
    #[arg(long, env = "TAILOPS_INVITE_TOKEN", hide_env_values = true)]
    token: String,
    /// The controller CA fingerprint printed with the invite, sha256:HEX.
    #[arg(long)]
    ca_fingerprint: tailops_pki::Fingerprint,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Join tokens that can still be used.
    Ls,
    /// Use up a join token so nobody can enroll with it.
    Revoke { id: String },
    /// Create a join token and print the enrollment command to run on a host.
    Create {
        /// Label KEY=VALUE given to hosts enrolled with this token (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// How long the token stays valid.
        #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// How many hosts may enroll with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
    },
}

#[derive(Debug, Subcommand)]
enum HostsCommand {
    /// List hosts with status, health and CPU/memory/disk use.
    Ls(monitor::HostsLsArgs),
    /// One host: facts, latest metrics, and health with its reasons.
    Show { host: String },
    /// Remove a host: its certificates are revoked and its stream closed; the name becomes free.
    Forget { host: String },
}

#[derive(Debug, Subcommand)]
enum JobsCommand {
    /// List recent jobs, newest first.
    Ls {
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Show a job: per-host state, exit, duration and output.
    Show { id: u64 },
    /// Re-attach to a job: replay its output so far and follow it live.
    Watch { id: u64 },
    /// Cancel a running job (kills the command's process group on every host).
    Cancel { id: u64 },
}

/// Host selection shared by commands that address hosts.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = true)]
pub struct SelectorArgs {
    /// Every host.
    #[arg(long, conflicts_with_all = ["labels", "hosts"])]
    all: bool,
    /// Hosts carrying label KEY=VALUE (repeatable: all must match).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Host by name or id (repeatable).
    #[arg(long = "host", value_name = "NAME_OR_ID")]
    hosts: Vec<String>,
}

impl SelectorArgs {
    pub fn to_wire(&self) -> v1::HostSelector {
        v1::HostSelector {
            all: self.all,
            labels: self.labels.iter().cloned().collect(),
            hosts: self.hosts.clone(),
        }
    }
}

pub fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

pub async fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    // The catalog is compiled in: listing it needs no controller.
    if let Command::Op(ops::OpCommand::Ls { filter }) = &cli.command {
        ops::list(filter.as_deref(), cli.output)?;
        return Ok(ExitCode::SUCCESS);
    }
    let path = Profile::resolve_path(cli.profile.as_deref())?;
    if let Command::Login(args) = cli.command {
        return login(args, &path).await;
    }
    let mut profile = Profile::load(&path).await?;
    let channel = tailopsctl::connect(&profile).await?;
    match tailopsctl::renew::renew_if_due(channel.clone(), &mut profile, &path).await {
        Ok(true) => eprintln!("renewed this profile's certificate"),
        Ok(false) => {}
        Err(e) => eprintln!("warning: could not renew this profile's certificate: {e}"),
    }
    let mut fleet = FleetClient::new(channel.clone());
    let output = cli.output;
    match cli.command {
        Command::Login(_) => unreachable!("handled above"),
        Command::Token(TokenCommand::Ls) => admin::list_tokens(channel, output).await?,
        Command::Token(TokenCommand::Revoke { id }) => admin::revoke_token(channel, id, output).await?,
        Command::Hosts(HostsCommand::Forget { host }) => admin::forget_host(channel, host, output).await?,
        Command::Approvals(command) => admin::approvals(channel, command, output).await?,
        Command::Users(command) => admin::principals(channel, "user", command, output).await?,
        Command::Bridges(command) => admin::principals(channel, "bridge", command, output).await?,
        Command::Certs(command) => admin::certs(channel, command, output).await?,
        Command::Whoami => admin::whoami(channel, output).await?,
        Command::Audit(command) => {
            if !admin::audit(channel, command, output).await? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Token(TokenCommand::Create { labels, ttl, uses }) => {
            let response = fleet
                .create_join_token(v1::CreateJoinTokenRequest {
                    labels: labels.into_iter().collect(),
                    ttl_secs: ttl.as_secs().max(1),
                    uses,
                })
                .await?
                .into_inner();
            render::token(&response, cli.output)?;
        }
        Command::Hosts(HostsCommand::Ls(args)) => monitor::hosts_ls(channel, args, output).await?,
        Command::Hosts(HostsCommand::Show { host }) => monitor::hosts_show(channel, host, output).await?,
        Command::Metrics(args) => monitor::metrics(channel, args, output).await?,
        Command::Top(args) => monitor::top(channel, args, output).await?,
        Command::Ps(args) => return monitor::ps(channel, args, output).await,
        Command::Inventory(command) => monitor::inventory(channel, command, output).await?,
        Command::Exec(args) => return exec::run(&mut fleet, args, cli.output).await,
        Command::Op(command) => return ops::run(channel, command, output).await,
        Command::Svc(args) => return friendly::run(channel, friendly::SVC, args, output).await,
        Command::Ctr(args) => return friendly::run(channel, friendly::CTR, args, output).await,
        Command::Files(args) => return friendly::run(channel, friendly::FILES, args, output).await,
        Command::Net(args) => return friendly::run(channel, friendly::NET, args, output).await,
        Command::Pkg(args) => return friendly::run(channel, friendly::PKG, args, output).await,
        Command::Logs(args) => return friendly::logs(channel, args, output).await,
        Command::Check(args) => return friendly::check(channel, args, output).await,
        Command::Jobs(JobsCommand::Ls { limit }) => {
            let jobs = fleet.list_jobs(v1::ListJobsRequest { limit }).await?.into_inner().jobs;
            render::jobs(&jobs, cli.output)?;
        }
        Command::Jobs(JobsCommand::Show { id }) => {
            let job = fleet.get_job(v1::GetJobRequest { job_id: id }).await?.into_inner();
            render::job_detail(&job, cli.output)?;
            return Ok(job_exit_code(job.job.as_ref().map(|j| j.state())));
        }
        Command::Jobs(JobsCommand::Watch { id }) => {
            let events = fleet.watch_job(v1::WatchJobRequest { job_id: id }).await?.into_inner();
            return exec::follow(&mut fleet, events, cli.output, false).await;
        }
        Command::Jobs(JobsCommand::Cancel { id }) => {
            let response = fleet.cancel_job(v1::CancelJobRequest { job_id: id }).await?.into_inner();
            render::cancelled(id, &response, cli.output)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn login(args: LoginArgs, path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let profile = tailopsctl::login::login(tailopsctl::login::LoginOptions {
        controller_url: args.controller,
        token: args.token,
        ca_fingerprint: args.ca_fingerprint,
    })
    .await?;
    profile.save_new(path).await?;
    println!("Logged in as {}; profile written to {}", profile.principal, path.display());
    Ok(ExitCode::SUCCESS)
}

fn job_exit_code(state: Option<v1::JobState>) -> ExitCode {
    match state {
        Some(v1::JobState::Succeeded | v1::JobState::Running) => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}

/// One line for a person: gRPC statuses say what went wrong and what to do next.
pub fn describe(err: &anyhow::Error) -> String {
    if let Some(status) = err.downcast_ref::<tonic::Status>() {
        let hint = match status.code() {
            tonic::Code::Unauthenticated => " (check the profile's certificate)",
            tonic::Code::PermissionDenied => " (this principal is not allowed to do that)",
            tonic::Code::Unavailable => " (is the controller running and reachable?)",
            _ => "",
        };
        return format!("{}{hint} [{:?}]", status.message(), status.code());
    }
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}
