//! `tailopsctl op`: typed operations from the catalog, run on hosts like `exec`.

use std::process::ExitCode;
use std::time::Duration;

use std::collections::BTreeMap;

use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};
use tailops_ops::{OperationSpec, catalog};
use tailops_proto::v1::{self, fleet_client::FleetClient};
use tonic::transport::Channel;

use super::render::{print_json, table};
use super::{Output, SelectorArgs, exec, parse_label};

#[derive(Debug, Subcommand)]
pub enum OpCommand {
    /// List operations with their parameters and risk tier (optionally one family, e.g. `service`).
    Ls { filter: Option<String> },
    /// Run an operation: `tailopsctl op service.restart --host web1 unit=nginx [--dry-run]`.
    #[command(external_subcommand)]
    Run(Vec<String>),
}

/// The arguments after `tailopsctl op`, parsed on their own so the operation name can come
/// first like a subcommand.
#[derive(Debug, Parser)]
#[command(name = "tailopsctl op", about = "Run a typed operation on hosts")]
pub struct OpRunArgs {
    /// The operation, e.g. service.restart (`tailopsctl op ls` lists them).
    operation: String,
    #[command(flatten)]
    job: JobFlags,
    /// Output format (also accepted here, after the operation name).
    #[arg(long, short = 'o', value_enum)]
    output: Option<Output>,
    /// Parameters, KEY=VALUE.
    #[arg(value_name = "KEY=VALUE", value_parser = parse_label)]
    params: Vec<(String, String)>,
}

/// Where and how an operation runs: shared by `op` and the friendly commands (`svc`, `ctr`...).
#[derive(Debug, Clone, Args)]
pub struct JobFlags {
    #[command(flatten)]
    selector: SelectorArgs,
    /// Change nothing; say exactly what would run.
    #[arg(long)]
    dry_run: bool,
    /// Deadline for the whole job on every host.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// How many hosts run at once (0 = all).
    #[arg(long, default_value_t = 0)]
    concurrency: u32,
    /// Why this is needed; shown to whoever approves it, and kept in the audit log.
    #[arg(long, default_value = "")]
    reason: String,
    /// Ask for control-tier authorisation so that file and log reads reach beyond the host's
    /// observe roots (/var/log by default). Operators and admins have it already; for a viewer
    /// it is refused, for an AI bridge it waits for a human's approval.
    #[arg(long)]
    elevate: bool,
    /// Wait this long for hosts that are offline (or drop before the job reaches them): they run
    /// it when they reconnect, and are reported expired after it. Without it, offline hosts are
    /// reported unreachable at once.
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    queue_for: Option<Duration>,
}

pub async fn run(channel: Channel, command: OpCommand, output: Output) -> anyhow::Result<ExitCode> {
    match command {
        OpCommand::Ls { filter } => {
            list(filter.as_deref(), output)?;
            Ok(ExitCode::SUCCESS)
        }
        OpCommand::Run(argv) => {
            let args =
                match OpRunArgs::try_parse_from(std::iter::once("tailopsctl op".to_owned()).chain(argv)) {
                    Ok(args) => args,
                    Err(e) => e.exit(),
                };
            let output = args.output.unwrap_or(output);
            run_operation(channel, &args.operation, args.params.into_iter().collect(), args.job, output).await
        }
    }
}

/// Runs operation `name` with `params` on the hosts `job` selects and follows it like `exec`.
pub async fn run_operation(
    channel: Channel,
    name: &str,
    params: BTreeMap<String, String>,
    job: JobFlags,
    output: Output,
) -> anyhow::Result<ExitCode> {
    // Checked here for a quick, precise error; the controller and the agent check again.
    tailops_ops::validate(name, &params, job.dry_run)?;
    let request = v1::RunJobRequest {
        selector: Some(job.selector.to_wire()),
        action: Some(v1::JobAction {
            kind: Some(v1::job_action::Kind::Operation(v1::OperationAction {
                name: name.to_owned(),
                params,
                dry_run: job.dry_run,
            })),
            elevated: job.elevate,
        }),
        timeout_ms: u64::try_from(job.timeout.as_millis()).unwrap_or(u64::MAX),
        concurrency: job.concurrency,
        output_cap_bytes: 0,
        reason: job.reason,
        queue_for_ms: job.queue_for.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    };
    let mut fleet = FleetClient::new(channel);
    let events = fleet.run_job(request).await?.into_inner();
    exec::follow(&mut fleet, events, output, true).await
}

fn matches(spec: &OperationSpec, filter: Option<&str>) -> bool {
    filter.is_none_or(|f| spec.name == f || spec.family() == f)
}

fn params_text(spec: &OperationSpec) -> String {
    spec.params
        .iter()
        .map(|p| match (p.required, p.default) {
            (true, _) => format!("{}=<{}>", p.name, p.kind.describe()),
            (false, Some(d)) => format!("[{}={d}]", p.name),
            (false, None) => format!("[{}=<{}>]", p.name, p.kind.describe()),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn list(filter: Option<&str>, output: Output) -> anyhow::Result<()> {
    let specs: Vec<&OperationSpec> = catalog().filter(|s| matches(s, filter)).collect();
    if specs.is_empty() {
        let families: std::collections::BTreeSet<&str> = catalog().map(OperationSpec::family).collect();
        anyhow::bail!(
            "no operation or family {:?}; families: {}",
            filter.unwrap_or(""),
            families.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    if output == Output::Json {
        let rows: Vec<Value> = specs
            .iter()
            .map(|s| {
                json!({
                    "name": s.name, "summary": s.summary, "tier": s.tier.name(), "mutating": s.mutating,
                    "params": s.params.iter().map(|p| json!({
                        "name": p.name, "kind": p.kind.describe(), "required": p.required,
                        "default": p.default, "help": p.help,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        return print_json(&Value::Array(rows));
    }
    let mut t = table(&["OPERATION", "TIER", "PARAMETERS", "WHAT IT DOES"]);
    for s in &specs {
        let tier = if s.mutating { format!("{} (dry-run)", s.tier.name()) } else { s.tier.name().to_owned() };
        t.add_row(vec![s.name.to_owned(), tier, params_text(s), s.summary.to_owned()]);
    }
    println!("{t}");
    if let [one] = specs.as_slice() {
        for p in one.params {
            println!("  {}: {} ({})", p.name, p.help, p.kind.describe());
        }
    }
    Ok(())
}
