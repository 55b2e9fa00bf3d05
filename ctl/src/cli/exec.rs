//! `tailopsctl exec` and `jobs watch`: stream a job's events, pssh-style.

use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tailops_proto::v1::{self, fleet_client::FleetClient, job_event};
use tonic::Streaming;
use tonic::transport::Channel;

use super::{Output, SelectorArgs, render};

#[derive(Debug, Clone, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    selector: SelectorArgs,
    /// Absolute deadline for the whole job; the process group is killed when it passes.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// How many hosts run at once (0 = all).
    #[arg(long, default_value_t = 0)]
    concurrency: u32,
    /// Per-stream output cap per host, in bytes (0 = controller default, 1 MiB).
    #[arg(long, default_value_t = 0)]
    output_cap: u64,
    /// Why this is needed; shown to whoever approves it, and kept in the audit log.
    #[arg(long, default_value = "")]
    reason: String,
    /// Wait this long for hosts that are offline (or drop before the job reaches them): they run
    /// it when they reconnect, and are reported expired after it. Without it, offline hosts are
    /// reported unreachable at once. The timeout counts from when each host gets the job.
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    queue_for: Option<Duration>,
    /// The command and its arguments, after `--`. No shell is involved.
    #[arg(last = true, required = true, value_name = "ARGV")]
    argv: Vec<String>,
}

pub async fn run(
    fleet: &mut FleetClient<Channel>,
    args: ExecArgs,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let request = v1::RunJobRequest {
        selector: Some(args.selector.to_wire()),
        action: Some(v1::JobAction {
            elevated: false,
            kind: Some(v1::job_action::Kind::Exec(v1::ExecAction { argv: args.argv })),
        }),
        timeout_ms: u64::try_from(args.timeout.as_millis()).unwrap_or(u64::MAX),
        concurrency: args.concurrency,
        output_cap_bytes: args.output_cap,
        reason: args.reason,
        queue_for_ms: args.queue_for.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    };
    let events = fleet.run_job(request).await?.into_inner();
    follow(fleet, events, output, true).await
}

/// Prints events until the job completes. With `cancel_on_interrupt`, the first Ctrl-C cancels
/// the job (and the stream then shows how each host ended); a second one leaves at once.
pub async fn follow(
    fleet: &mut FleetClient<Channel>,
    mut events: Streaming<v1::JobEvent>,
    output: Output,
    cancel_on_interrupt: bool,
) -> anyhow::Result<ExitCode> {
    let mut printer = Printer::new(output);
    let mut interrupted = false;
    let mut job_id = None;
    loop {
        let event = tokio::select! {
            event = events.message() => event?,
            _ = tokio::signal::ctrl_c() => {
                match (job_id, cancel_on_interrupt, interrupted) {
                    (Some(id), true, false) => {
                        eprintln!("interrupted: cancelling job {id} (Ctrl-C again to leave without waiting)");
                        fleet.cancel_job(v1::CancelJobRequest { job_id: id }).await?;
                        interrupted = true;
                        continue;
                    }
                    (Some(id), _, _) => eprintln!("left job {id}; it continues: tailopsctl jobs watch {id}"),
                    (None, _, _) => {}
                }
                return Ok(ExitCode::from(130));
            }
        };
        let Some(event) = event else {
            anyhow::bail!("the controller closed the stream before the job completed");
        };
        job_id = Some(event.job_id);
        if let Some(completed) = printer.event(&event)? {
            return Ok(if completed.state() == v1::JobState::Succeeded {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
    }
}

/// Turns events into prefixed lines, holding partial lines until they complete.
struct Printer {
    output: Output,
    partial: HashMap<(String, i32), Vec<u8>>,
}

impl Printer {
    fn new(output: Output) -> Self {
        Self { output, partial: HashMap::new() }
    }

    fn event(&mut self, event: &v1::JobEvent) -> anyhow::Result<Option<v1::JobCompleted>> {
        if self.output == Output::Json {
            println!("{}", render::event_json(event));
            return Ok(match &event.kind {
                Some(job_event::Kind::Completed(c)) => Some(*c),
                _ => None,
            });
        }
        match &event.kind {
            Some(job_event::Kind::Accepted(a)) => {
                eprintln!("job {}: {} host(s)", event.job_id, a.targets.len());
            }
            Some(job_event::Kind::Started(_)) => {}
            Some(job_event::Kind::Queued(q)) => {
                let host = q.target.as_ref().map(|t| t.host_name.as_str()).unwrap_or_default();
                eprintln!(
                    "{}: offline; queued until {} (runs when it reconnects)",
                    render::safe(host),
                    render::rfc3339(q.until_ms).as_str().unwrap_or("?")
                );
            }
            Some(job_event::Kind::ApprovalRequired(a)) => {
                eprintln!(
                    "job {} needs a human's approval: `{}` (expires {}); waiting, Ctrl-C leaves it pending",
                    event.job_id,
                    a.approve_command,
                    render::rfc3339(a.expires_at_ms).as_str().unwrap_or("?")
                );
            }
            Some(job_event::Kind::ApprovalDecided(d)) => {
                if d.approved {
                    eprintln!("job {} approved by {}", event.job_id, render::safe(&d.by));
                } else if d.by.is_empty() {
                    eprintln!("job {} not approved: {}", event.job_id, render::safe(&d.reason));
                } else {
                    eprintln!(
                        "job {} rejected by {}: {}",
                        event.job_id,
                        render::safe(&d.by),
                        render::safe(&d.reason)
                    );
                }
            }
            Some(job_event::Kind::Output(out)) => {
                let host = out.target.as_ref().map(|t| t.host_name.clone()).unwrap_or_default();
                let buffer = self.partial.entry((host.clone(), out.stream)).or_default();
                buffer.extend_from_slice(&out.data);
                if let Some(last_newline) = buffer.iter().rposition(|b| *b == b'\n') {
                    let complete: Vec<u8> = buffer.drain(..=last_newline).collect();
                    write_lines(&host, out.stream(), &complete)?;
                }
            }
            Some(job_event::Kind::Finished(f)) => {
                let host = f.target.as_ref().map(|t| t.host_name.clone()).unwrap_or_default();
                for stream in [v1::OutputStream::Stdout as i32, v1::OutputStream::Stderr as i32] {
                    if let Some(rest) = self.partial.remove(&(host.clone(), stream)).filter(|r| !r.is_empty())
                    {
                        write_lines(&host, v1::OutputStream::try_from(stream).unwrap_or_default(), &rest)?;
                    }
                }
                if let Some(v1::action_output::Kind::Operation(op)) =
                    f.result.as_ref().and_then(|r| r.output.as_ref()).and_then(|o| o.kind.as_ref())
                {
                    print!("{}", render::operation_text(&host, op));
                }
                eprintln!("{}", render::target_status(&host, f.state(), f.result.as_ref()));
            }
            Some(job_event::Kind::Completed(c)) => {
                eprintln!("{}", render::summary_line(event.job_id, c));
                return Ok(Some(*c));
            }
            None => {}
        }
        Ok(None)
    }
}

fn write_lines(host: &str, stream: v1::OutputStream, bytes: &[u8]) -> std::io::Result<()> {
    let text = String::from_utf8_lossy(bytes);
    let mut out: Box<dyn Write> = match stream {
        v1::OutputStream::Stderr => Box::new(std::io::stderr().lock()),
        _ => Box::new(std::io::stdout().lock()),
    };
    // A host's output is whatever its programs (and anyone who can write to its logs) chose:
    // escape sequences are shown, not obeyed. Tabs stay tabs.
    let host = render::safe(host);
    for line in text.lines() {
        let shown: Vec<_> = line.split('\t').map(render::safe).collect();
        writeln!(out, "[{host}] {}", shown.join("\t"))?;
    }
    out.flush()
}
