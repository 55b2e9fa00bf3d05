//! Command-line parsing and dispatch.

mod exec;
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
    /// Run a command on hosts and stream its output (argv, no shell).
    Exec(exec::ExecArgs),
    /// Jobs: list, inspect, re-attach, cancel.
    #[command(subcommand)]
    Jobs(JobsCommand),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
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
    /// List hosts with their status.
    Ls,
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
    let path = Profile::resolve_path(cli.profile.as_deref())?;
    let profile = Profile::load(&path).await?;
    let channel = tailopsctl::connect(&profile).await?;
    let mut fleet = FleetClient::new(channel);
    match cli.command {
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
        Command::Hosts(HostsCommand::Ls) => {
            let hosts = fleet
                .list_hosts(v1::ListHostsRequest::default())
                .await?
                .into_inner()
                .hosts;
            render::hosts(&hosts, cli.output)?;
        }
        Command::Exec(args) => return exec::run(&mut fleet, args, cli.output).await,
        Command::Jobs(JobsCommand::Ls { limit }) => {
            let jobs = fleet
                .list_jobs(v1::ListJobsRequest { limit })
                .await?
                .into_inner()
                .jobs;
            render::jobs(&jobs, cli.output)?;
        }
        Command::Jobs(JobsCommand::Show { id }) => {
            let job = fleet
                .get_job(v1::GetJobRequest { job_id: id })
                .await?
                .into_inner();
            render::job_detail(&job, cli.output)?;
            return Ok(job_exit_code(job.job.as_ref().map(|j| j.state())));
        }
        Command::Jobs(JobsCommand::Watch { id }) => {
            let events = fleet
                .watch_job(v1::WatchJobRequest { job_id: id })
                .await?
                .into_inner();
            return exec::follow(&mut fleet, events, cli.output, false).await;
        }
        Command::Jobs(JobsCommand::Cancel { id }) => {
            let response = fleet
                .cancel_job(v1::CancelJobRequest { job_id: id })
                .await?
                .into_inner();
            render::cancelled(id, &response, cli.output)?;
        }
    }
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
