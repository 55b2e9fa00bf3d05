//! Tools that run or follow jobs: exec, top processes, every catalog operation, and the job
//! tools (list, get, wait, cancel).
//!
//! A job the bridge may run outright is followed to the end (progress notifications as hosts
//! finish; a client's cancellation cancels the job). A job that needs a human's approval is
//! returned at once with its id and the command that approves it; `wait_job` follows it later.

use std::collections::BTreeMap;
use std::time::Duration;

use rmcp::model::Tool;
use serde_json::{Value, json};
use tailops_ops::OperationSpec;
use tailops_proto::v1::{self, job_event::Kind};

use super::schema::{JOB_ARGS, SELECTOR_ARGS, exposed, object, queue_for_schema, selector_properties};
use super::{Args, Call, ToolError, ToolResult, capped, time};

/// Output kept per host and stream while a job runs; what reaches the model is cut further.
const KEEP_OUTPUT_BYTES: usize = 64 * 1024;
/// Default per-host timeout of jobs started by the bridge.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest per-host timeout an assistant may ask for.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Longest an assistant's job may wait for offline hosts.
const MAX_QUEUE_FOR: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, Copy)]
pub enum JobTool {
    Exec,
    TopProcesses,
    ListJobs,
    GetJob,
    WaitJob,
    CancelJob,
}

pub fn tools() -> Vec<(Tool, JobTool)> {
    let mut exec = selector_properties();
    exec.insert(
        "argv".into(),
        json!({"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 256,
               "description": "The command and its arguments, run directly (no shell), e.g. [\"df\", \"-h\"]."}),
    );
    exec.insert(
        "timeout".into(),
        json!({"type": "string", "description": "Per-host limit, default 30s, e.g. 2m."}),
    );
    exec.insert(
        "reason".into(),
        json!({"type": "string", "maxLength": 500, "description": "Why this is needed; shown to a human approver."}),
    );
    exec.insert("queue_for".into(), queue_for_schema());
    let mut top = selector_properties();
    top.insert(
        "sort".into(),
        json!({"type": "string", "enum": ["cpu", "memory"], "default": "cpu", "description": "Rank by CPU or memory."}),
    );
    top.insert(
        "limit".into(),
        json!({"type": "integer", "minimum": 1, "maximum": 100, "default": 15, "description": "Processes per host."}),
    );
    let job_id = json!({"type": "integer", "minimum": 1, "description": "The job's id."});
    let not_read_only = |title: &str, destructive: bool, idempotent: bool| {
        rmcp::model::ToolAnnotations::with_title(title)
            .read_only(false)
            .destructive(destructive)
            .idempotent(idempotent)
            .open_world(false)
    };
    vec![
        (
            Tool::new(
                "exec",
                "Run a command on hosts (argv, no shell) and return each host's exit status and output. \
                 For the default bridge role this creates a job that waits for a human's approval and \
                 returns its id and the approval command at once; follow it with wait_job.",
                object(serde_json::Value::Object(exec), &["argv"]),
            )
            .with_annotations(not_read_only("Run a command", true, false).open_world(true)),
            JobTool::Exec,
        ),
        (
            Tool::new(
                "top_processes",
                "The processes using the most CPU or memory on hosts (two readings 0.5 s apart).",
                object(serde_json::Value::Object(top), &[]),
            )
            .with_annotations(super::observe("Top processes")),
            JobTool::TopProcesses,
        ),
        (
            Tool::new(
                "list_jobs",
                "Recent jobs, newest first: id, state, who asked, what they do.",
                object(
                    json!({"limit": {"type": "integer", "minimum": 1, "maximum": 200, "default": 20, "description": "How many jobs."}}),
                    &[],
                ),
            )
            .with_annotations(super::observe("List jobs")),
            JobTool::ListJobs,
        ),
        (
            Tool::new(
                "get_job",
                "A job's state and each host's result and output (as far as it has run).",
                object(json!({"job_id": job_id}), &["job_id"]),
            )
            .with_annotations(super::observe("Get a job")),
            JobTool::GetJob,
        ),
        (
            Tool::new(
                "wait_job",
                "Wait for a job to finish (for example after a human approved it) and return its results. \
                 Returns early with the job's state if it is still waiting or running when the timeout \
                 passes; cancelling this call stops the wait, not the job.",
                object(
                    json!({"job_id": job_id, "timeout": {"type": "string", "default": "60s",
                           "description": "How long to wait, e.g. 30s or 5m."}}),
                    &["job_id"],
                ),
            )
            .with_annotations(super::observe("Wait for a job")),
            JobTool::WaitJob,
        ),
        (
            Tool::new(
                "cancel_job",
                "Cancel a running job or withdraw a pending one: running commands are stopped on every \
                 host. The bridge may always cancel jobs it asked for.",
                object(json!({"job_id": job_id}), &["job_id"]),
            )
            .with_annotations(not_read_only("Cancel a job", true, true)),
            JobTool::CancelJob,
        ),
    ]
}

pub async fn call(tool: JobTool, args: &Args, call: &Call) -> ToolResult {
    match tool {
        JobTool::Exec => {
            let mut known = SELECTOR_ARGS.to_vec();
            known.extend(["argv", "timeout", "reason", "queue_for"]);
            args.only(&known)?;
            let argv = args.strings("argv")?;
            if argv.first().is_none_or(|program| program.trim().is_empty()) {
                return Err(ToolError::InvalidArgument("argv needs at least the program to run".into()));
            }
            let action = v1::job_action::Kind::Exec(v1::ExecAction { argv });
            run(call, job_request(args, action)?).await
        }
        JobTool::TopProcesses => {
            let mut known = SELECTOR_ARGS.to_vec();
            known.extend(["sort", "limit"]);
            args.only(&known)?;
            let sort = match args.text("sort")?.unwrap_or("cpu") {
                "cpu" => v1::ProcessSort::Cpu,
                "memory" | "mem" => v1::ProcessSort::Memory,
                other => {
                    return Err(ToolError::InvalidArgument(format!(
                        "sort must be cpu or memory, not {other:?}"
                    )));
                }
            };
            let limit = u32::try_from(args.number("limit", 15, 1, 100)?).unwrap_or(15);
            let action =
                v1::job_action::Kind::ProcessList(v1::ProcessListAction { sort: sort as i32, limit });
            run(call, job_request(args, action)?).await
        }
        JobTool::ListJobs => {
            args.only(&["limit"])?;
            let limit = u32::try_from(args.number("limit", 20, 1, 200)?).unwrap_or(20);
            let jobs = call
                .controller
                .fleet()
                .list_jobs(call.request(v1::ListJobsRequest { limit }))
                .await?
                .into_inner()
                .jobs;
            Ok(json!({"jobs": jobs.iter().map(job_json).collect::<Vec<_>>()}))
        }
        JobTool::GetJob => {
            args.only(&["job_id"])?;
            let job_id = args.number("job_id", 0, 1, u64::MAX)?;
            let response = call
                .controller
                .fleet()
                .get_job(call.request(v1::GetJobRequest { job_id }))
                .await?
                .into_inner();
            let hosts = response
                .targets
                .iter()
                .map(|t| HostResult {
                    host: t.target.as_ref().map(|t| t.host_name.clone()).unwrap_or_default(),
                    state: t.state(),
                    result: t.result.clone(),
                    stdout: t.stdout.clone(),
                    stderr: t.stderr.clone(),
                })
                .collect::<Vec<_>>();
            let mut value = response.job.as_ref().map(job_json).unwrap_or_default();
            value["hosts"] = hosts_json(&hosts, call);
            Ok(value)
        }
        JobTool::WaitJob => {
            args.only(&["job_id", "timeout"])?;
            let job_id = args.number("job_id", 0, 1, u64::MAX)?;
            let wait = args.duration("timeout")?.unwrap_or(Duration::from_secs(60)).min(call.limits.max_wait);
            let events =
                call.controller.fleet().watch_job(call.request(v1::WatchJobRequest { job_id })).await?;
            follow(call, events.into_inner(), wait, Mode::Wait).await
        }
        JobTool::CancelJob => {
            args.only(&["job_id"])?;
            let job_id = args.number("job_id", 0, 1, u64::MAX)?;
            let response = call
                .controller
                .fleet()
                .cancel_job(call.request(v1::CancelJobRequest { job_id }))
                .await?
                .into_inner();
            Ok(json!({
                "job_id": job_id,
                "already_finished": response.already_finished,
                "cancelled_targets": response.cancelled_targets,
            }))
        }
    }
}

/// A catalog operation: validated here first, so a mistake is explained before anything is
/// sent, then run as a job like any other.
pub async fn operation(spec: &'static OperationSpec, args: &Args, call: &Call) -> ToolResult {
    let mut known = SELECTOR_ARGS.to_vec();
    known.extend(
        JOB_ARGS
            .iter()
            .filter(|a| (**a != "dry_run" || spec.mutating) && (**a != "elevate" || spec.reads_files())),
    );
    known.extend(spec.params.iter().map(|p| exposed(p.name)));
    args.only(&known)?;
    let mut params = BTreeMap::new();
    for p in spec.params {
        let name = exposed(p.name);
        let text = match args.raw(name) {
            None if p.required => {
                return Err(ToolError::InvalidArgument(format!("{name} is required: {}", p.help)));
            }
            None => continue,
            Some(Value::String(s)) => s.clone(),
            Some(Value::Bool(b)) => b.to_string(),
            Some(Value::Number(n)) => n.to_string(),
            Some(other) => {
                return Err(ToolError::InvalidArgument(format!(
                    "{name} must be a string, number or boolean, not {other}"
                )));
            }
        };
        params.insert(p.name.to_owned(), text);
    }
    let dry_run = args.flag("dry_run")?;
    tailops_ops::validate(spec.name, &params, dry_run).map_err(|e| {
        ToolError::InvalidArgument(match e {
            // Said with the names this tool uses.
            tailops_ops::OpsError::InvalidParam { param, reason, .. } => {
                format!("{}: {reason}", exposed(&param))
            }
            other => other.to_string(),
        })
    })?;
    let action = v1::job_action::Kind::Operation(v1::OperationAction {
        name: spec.name.to_owned(),
        params: params.into_iter().collect(),
        dry_run,
    });
    let mut request = job_request(args, action)?;
    if let Some(action) = request.action.as_mut() {
        action.elevated = spec.reads_files() && args.flag("elevate")?;
    }
    run(call, request).await
}

fn job_request(args: &Args, action: v1::job_action::Kind) -> Result<v1::RunJobRequest, ToolError> {
    let timeout = args.duration("timeout")?.unwrap_or(DEFAULT_TIMEOUT);
    if timeout.is_zero() || timeout > MAX_TIMEOUT {
        return Err(ToolError::InvalidArgument(format!(
            "timeout must be between 1s and {}",
            humantime::format_duration(MAX_TIMEOUT)
        )));
    }
    let queue_for = args.duration("queue_for")?.unwrap_or_default();
    if queue_for > MAX_QUEUE_FOR {
        return Err(ToolError::InvalidArgument(format!(
            "queue_for is at most {}",
            humantime::format_duration(MAX_QUEUE_FOR)
        )));
    }
    Ok(v1::RunJobRequest {
        selector: Some(args.selector()?),
        action: Some(v1::JobAction { kind: Some(action), elevated: false }),
        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        concurrency: 0,
        output_cap_bytes: 0,
        reason: args.text("reason")?.unwrap_or_default().to_owned(),
        queue_for_ms: u64::try_from(queue_for.as_millis()).unwrap_or(u64::MAX),
    })
}

async fn run(call: &Call, request: v1::RunJobRequest) -> ToolResult {
    // Wait as long as the job may run (plus a moment for results to arrive), within the limit;
    // a queued job that outlasts it is followed with wait_job.
    let runs_for = Duration::from_millis(request.queue_for_ms.saturating_add(request.timeout_ms));
    let wait = (runs_for + Duration::from_secs(5)).min(call.limits.max_wait);
    let events = call.controller.fleet().run_job(call.request(request)).await?.into_inner();
    follow(call, events, wait, Mode::Run).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The call started the job: an approval ends the call at once; cancelling it cancels the job.
    Run,
    /// The call follows an existing job: cancelling stops only the wait.
    Wait,
}

/// What one host did.
#[derive(Debug, Default)]
struct HostResult {
    host: String,
    state: v1::TargetState,
    result: Option<v1::CommandResult>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

async fn follow(
    call: &Call,
    mut events: tonic::Streaming<v1::JobEvent>,
    wait: Duration,
    mode: Mode,
) -> ToolResult {
    let deadline = tokio::time::Instant::now() + wait;
    let mut job_id = 0;
    let mut total = 0u64;
    let mut out_of_scope = Vec::new();
    let mut approval: Option<v1::ApprovalRequired> = None;
    let mut hosts: BTreeMap<String, HostResult> = BTreeMap::new();
    let mut completed: Option<v1::JobCompleted> = None;
    let mut stream_ended = false;
    while completed.is_none() {
        let event = tokio::select! {
            () = call.cancel.cancelled() => {
                if mode == Mode::Wait {
                    return Err(ToolError::Cancelled("; the job goes on".to_owned()));
                }
                return Err(cancel_started_job(call, job_id, &mut events).await);
            }
            () = tokio::time::sleep_until(deadline) => break,
            event = events.message() => event?,
        };
        let Some(event) = event else {
            stream_ended = true;
            break;
        };
        job_id = event.job_id;
        match event.kind {
            Some(Kind::Accepted(accepted)) => {
                total = accepted.targets.len() as u64;
                out_of_scope = accepted.out_of_scope;
                for target in accepted.targets {
                    hosts.insert(
                        target.host_id.clone(),
                        HostResult {
                            host: target.host_name,
                            state: v1::TargetState::Pending,
                            ..HostResult::default()
                        },
                    );
                }
                call.progress(0, Some(total), format!("job {job_id} accepted for {total} host(s)")).await;
            }
            Some(Kind::ApprovalRequired(required)) => {
                if mode == Mode::Run {
                    return Ok(pending(job_id, &required, &hosts, &out_of_scope));
                }
                approval = Some(required);
            }
            Some(Kind::ApprovalDecided(_)) => approval = None,
            Some(Kind::Started(started)) => {
                if let Some(host) = started.target.and_then(|t| hosts.get_mut(&t.host_id)) {
                    host.state = v1::TargetState::Running;
                }
            }
            Some(Kind::Queued(queued)) => {
                if let Some(host) = queued.target.and_then(|t| hosts.get_mut(&t.host_id)) {
                    host.state = v1::TargetState::Queued;
                }
            }
            Some(Kind::Output(output)) => {
                if let Some(host) = output.target.as_ref().and_then(|t| hosts.get_mut(&t.host_id)) {
                    let buffer = if output.stream() == v1::OutputStream::Stderr {
                        &mut host.stderr
                    } else {
                        &mut host.stdout
                    };
                    keep_tail(buffer, &output.data);
                }
            }
            Some(Kind::Finished(finished)) => {
                let state = finished.state();
                if let Some(host) = finished.target.as_ref().and_then(|t| hosts.get_mut(&t.host_id)) {
                    host.state = state;
                    host.result = finished.result;
                    let message = format!("{}: {}", host.host, state.short_name());
                    let done = hosts.values().filter(|h| is_final(h.state)).count() as u64;
                    call.progress(done, Some(total), message).await;
                }
            }
            Some(Kind::Completed(done)) => completed = Some(done),
            None => {}
        }
    }
    let hosts: Vec<HostResult> = hosts.into_values().collect();
    let mut value = json!({"job_id": job_id, "hosts": hosts_json(&hosts, call)});
    match (&completed, &approval) {
        (Some(done), _) => {
            value["state"] = json!(done.state().short_name());
            value["summary"] = summary_json(done.summary.as_ref());
        }
        (None, Some(required)) => {
            value["state"] = json!("pending_approval");
            value["approve_command"] = json!(required.approve_command);
            value["next"] = json!("still waiting for a human's approval; call wait_job again later");
        }
        (None, None) if stream_ended => {
            value["state"] = json!("unknown");
            value["next"] = json!("the controller ended the job's stream early; call get_job for its state");
        }
        (None, None) => {
            value["state"] = json!("running");
            value["next"] = json!(format!(
                "still running after {}; call wait_job to keep following it",
                humantime::format_duration(wait)
            ));
        }
    }
    if !out_of_scope.is_empty() {
        value["out_of_scope"] = json!(out_of_scope);
    }
    Ok(value)
}

/// Cancels the job a cancelled call started. The call may be cancelled before the job's first
/// event named it; the id is then awaited briefly, since the controller has created the job.
async fn cancel_started_job(
    call: &Call,
    mut job_id: u64,
    events: &mut tonic::Streaming<v1::JobEvent>,
) -> ToolError {
    if job_id == 0
        && let Ok(Ok(Some(event))) = tokio::time::timeout(Duration::from_secs(2), events.message()).await
    {
        job_id = event.job_id;
    }
    if job_id == 0 {
        return ToolError::Cancelled("; the job's id was not known yet: list_jobs shows it".to_owned());
    }
    match call.controller.fleet().cancel_job(call.request(v1::CancelJobRequest { job_id })).await {
        Ok(_) => ToolError::Cancelled(format!("; job {job_id} was cancelled")),
        Err(e) => {
            tracing::warn!(job_id, error = %e, "could not cancel the job of a cancelled call");
            ToolError::Cancelled(format!(
                "; cancelling job {job_id} failed ({}), so it may still run",
                e.message()
            ))
        }
    }
}

fn pending(
    job_id: u64,
    required: &v1::ApprovalRequired,
    hosts: &BTreeMap<String, HostResult>,
    out_of_scope: &[String],
) -> Value {
    json!({
        "job_id": job_id,
        "state": "pending_approval",
        "hosts": hosts.values().map(|h| h.host.clone()).collect::<Vec<_>>(),
        "out_of_scope": out_of_scope,
        "approval_expires_at": time(required.expires_at_ms),
        "approve_command": required.approve_command,
        "next": format!(
            "This needs a human's approval. Ask the user to run `{}` (or reject it), then call \
             wait_job with job_id {job_id}.",
            required.approve_command
        ),
    })
}

/// Keeps the newest `KEEP_OUTPUT_BYTES` of a stream: for logs and long output the end matters.
fn keep_tail(buffer: &mut Vec<u8>, data: &[u8]) {
    buffer.extend_from_slice(data);
    // Compacted only at twice the size, so a long stream of small chunks costs amortised O(1)
    // per byte rather than a copy of the whole buffer per chunk.
    if buffer.len() > 2 * KEEP_OUTPUT_BYTES {
        let excess = buffer.len() - KEEP_OUTPUT_BYTES;
        buffer.drain(..excess);
    }
}

/// The newest `KEEP_OUTPUT_BYTES` of a buffer.
fn kept(buffer: &[u8]) -> &[u8] {
    &buffer[buffer.len().saturating_sub(KEEP_OUTPUT_BYTES)..]
}

fn is_final(state: v1::TargetState) -> bool {
    !matches!(
        state,
        v1::TargetState::Pending
            | v1::TargetState::Running
            | v1::TargetState::Queued
            | v1::TargetState::Unspecified
    )
}

fn hosts_json(hosts: &[HostResult], call: &Call) -> Value {
    // Each host gets an equal share of the result budget for its output.
    let share = call.limits.max_result_chars / 2 / hosts.len().max(1);
    let (shown, omitted) = capped(hosts.iter().collect(), call.limits.max_rows);
    let mut list: Vec<Value> = shown.into_iter().map(|h| host_json(h, share, call.limits.max_rows)).collect();
    if omitted > 0 {
        list.push(json!({"omitted_hosts": omitted}));
    }
    Value::Array(list)
}

fn host_json(host: &HostResult, share: usize, max_rows: usize) -> Value {
    let mut value = json!({"host": host.host, "state": host.state.short_name()});
    if let Some(result) = &host.result {
        if let Some(code) = result.exit_code {
            value["exit_code"] = json!(code);
        }
        if let Some(signal) = result.signal {
            value["signal"] = json!(signal);
        }
        value["duration_ms"] = json!(result.duration_ms);
        if !result.error.is_empty() {
            value["error"] = json!(result.error);
        }
        if result.not_available {
            value["not_available"] = json!(true);
        }
        if result.stdout_truncated || result.stderr_truncated {
            value["output_capped_on_host"] =
                json!({"stdout_bytes": result.stdout_bytes, "stderr_bytes": result.stderr_bytes});
        }
        match result.output.as_ref().and_then(|o| o.kind.as_ref()) {
            Some(v1::action_output::Kind::Operation(output)) => {
                value["output"] = operation_json(output, max_rows)
            }
            Some(v1::action_output::Kind::ProcessList(list)) => {
                value["processes"] = processes_json(list, max_rows)
            }
            None => {}
        }
    }
    if !host.stdout.is_empty() {
        value["stdout"] = json!(tail_text(kept(&host.stdout), share));
    }
    if !host.stderr.is_empty() {
        value["stderr"] = json!(tail_text(kept(&host.stderr), share / 2));
    }
    value
}

/// The last `max` characters of `bytes`, marked when cut.
fn tail_text(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let count = text.chars().count();
    if count <= max {
        return text.into_owned();
    }
    let kept: String = text.chars().skip(count - max).collect();
    format!("[{} earlier characters omitted]\n{kept}", count - max)
}

fn operation_json(output: &v1::OperationOutput, max_rows: usize) -> Value {
    let (records, omitted) = capped(output.records.iter().collect(), max_rows);
    let rows: Vec<Value> = records
        .into_iter()
        .map(|record| {
            let mut row = serde_json::Map::new();
            for column in &output.columns {
                if let Some(value) = record.fields.get(column).and_then(|s| s.value.as_ref()) {
                    row.insert(column.clone(), scalar(value));
                }
            }
            // Fields outside the declared columns still reach the model.
            for (key, value) in &record.fields {
                if !row.contains_key(key)
                    && let Some(value) = &value.value
                {
                    row.insert(key.clone(), scalar(value));
                }
            }
            Value::Object(row)
        })
        .collect();
    let mut value = json!({"records": rows});
    if !output.summary.is_empty() {
        value["summary"] = json!(output.summary);
    }
    if !output.plan.is_empty() {
        value["plan"] = json!(output.plan);
    }
    if omitted > 0 {
        value["omitted_records"] = json!(omitted);
    }
    value
}

fn scalar(value: &v1::scalar::Value) -> Value {
    match value {
        v1::scalar::Value::Text(s) => json!(s),
        v1::scalar::Value::Int(n) => json!(n),
        v1::scalar::Value::Real(x) => json!((x * 100.0).round() / 100.0),
        v1::scalar::Value::Flag(b) => json!(b),
    }
}

fn processes_json(list: &v1::ProcessList, max_rows: usize) -> Value {
    let (processes, omitted) = capped(list.processes.iter().collect(), max_rows);
    json!({
        "total": list.total,
        "omitted": omitted,
        "top": processes.iter().map(|p| json!({
            "pid": p.pid,
            "name": p.name,
            "user": p.user,
            "cpu_percent": (p.cpu_percent * 10.0).round() / 10.0,
            "memory_mb": p.memory_bytes / (1024 * 1024),
            "command": p.command.chars().take(200).collect::<String>(),
        })).collect::<Vec<_>>(),
    })
}

fn summary_json(summary: Option<&v1::JobSummary>) -> Value {
    let s = summary.cloned().unwrap_or_default();
    json!({"total": s.total, "succeeded": s.succeeded, "failed": s.failed, "timed_out": s.timed_out,
           "unreachable": s.unreachable, "cancelled": s.cancelled, "queued": s.queued, "lost": s.lost,
           "expired": s.expired, "interrupted": s.interrupted})
}

/// What a job does, in one line.
pub fn describe(action: Option<&v1::JobAction>) -> String {
    match action.and_then(|a| a.kind.as_ref()) {
        Some(v1::job_action::Kind::Exec(exec)) => format!("exec {}", exec.argv.join(" ")),
        Some(v1::job_action::Kind::ProcessList(_)) => "top processes".to_owned(),
        Some(v1::job_action::Kind::Operation(op)) => {
            let params: Vec<String> = op.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let dry = if op.dry_run { " (dry run)" } else { "" };
            format!("{} {}{dry}", op.name, params.join(" ")).trim_end().to_owned()
        }
        None => "unknown".to_owned(),
    }
}

fn job_json(job: &v1::Job) -> Value {
    let mut value = json!({
        "job_id": job.id,
        "state": job.state().short_name(),
        "action": describe(job.action.as_ref()),
        "requested_by": job.requested_by,
        "created_at": time(job.created_at_ms),
        "summary": summary_json(job.summary.as_ref()),
    });
    if !job.requested_via.is_empty() {
        value["requested_via"] = json!(job.requested_via);
    }
    if job.finished_at_ms > 0 {
        value["finished_at"] = time(job.finished_at_ms);
    }
    if !job.reason.is_empty() {
        value["reason"] = json!(job.reason);
    }
    if !job.decided_by.is_empty() {
        value["decided_by"] = json!(job.decided_by);
    }
    if job.state() == v1::JobState::PendingApproval {
        value["approve_command"] = json!(format!("tailopsctl approvals approve {}", job.id));
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_keeps_the_newest_bytes() {
        let mut buffer = Vec::new();
        for _ in 0..3 {
            keep_tail(&mut buffer, &vec![b'a'; KEEP_OUTPUT_BYTES]);
        }
        keep_tail(&mut buffer, b"end");
        assert!(buffer.len() <= 2 * KEEP_OUTPUT_BYTES);
        assert_eq!(kept(&buffer).len(), KEEP_OUTPUT_BYTES);
        assert!(kept(&buffer).ends_with(b"aend"));
        let text = tail_text(b"0123456789", 4);
        assert!(text.starts_with("[6 earlier characters omitted]"), "{text}");
        assert!(text.ends_with("6789"));
    }

    #[test]
    fn every_operation_is_described_with_its_parameters() {
        let action = v1::JobAction {
            elevated: false,
            kind: Some(v1::job_action::Kind::Operation(v1::OperationAction {
                name: "service.restart".into(),
                params: [("unit".to_owned(), "nginx".to_owned())].into(),
                dry_run: true,
            })),
        };
        assert_eq!(describe(Some(&action)), "service.restart unit=nginx (dry run)");
    }
}
