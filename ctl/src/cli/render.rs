//! Tables for people, JSON for programs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use serde_json::{Value, json};
use tailops_proto::text;
use tailops_proto::v1::{self, job_event};

use super::Output;

/// A table for a terminal. Every cell may hold text a host, a requester or an AI assistant
/// chose (names, argv, reasons, log lines), so each is shown through [`text::display`]: a
/// control character, escape sequence or bidi override appears as a visible escape instead of
/// acting on the terminal.
#[derive(Debug)]
pub struct SafeTable(Table);

impl SafeTable {
    pub fn add_row<S: AsRef<str>>(&mut self, cells: impl IntoIterator<Item = S>) -> &mut Self {
        self.0.add_row(cells.into_iter().map(|c| text::display(c.as_ref()).into_owned()).collect::<Vec<_>>());
        self
    }
}

impl std::fmt::Display for SafeTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

pub fn table(header: &[&str]) -> SafeTable {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(header.iter().copied());
    SafeTable(t)
}

/// A line of host- or requester-chosen text for a terminal, outside a table.
pub fn safe(s: &str) -> std::borrow::Cow<'_, str> {
    text::display(s)
}

pub fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// "3s ago", "2h ago", or "never".
pub fn ago(ms: i64) -> String {
    if ms <= 0 {
        return "never".into();
    }
    let then = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    match SystemTime::now().duration_since(then) {
        Ok(d) => format!("{} ago", humantime::format_duration(Duration::from_secs(d.as_secs().max(1)))),
        Err(_) => "just now".into(),
    }
}

pub fn rfc3339(ms: i64) -> Value {
    if ms <= 0 {
        return Value::Null;
    }
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    Value::String(humantime::format_rfc3339_millis(t).to_string())
}

pub fn labels_text(labels: &std::collections::BTreeMap<String, String>) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// A principal and the client it came through: `BY via CLIENT`, or just `BY`.
pub fn by_via(by: &str, via: &str) -> String {
    if via.is_empty() { by.to_owned() } else { format!("{by} via {via}") }
}

/// What a job does, for a person: the command line, or the typed action and its parameters.
pub fn action_text(action: Option<&v1::JobAction>) -> String {
    match action.and_then(|a| a.kind.as_ref()) {
        // Quoted per argument, so an approver sees every boundary and every byte.
        Some(v1::job_action::Kind::Exec(e)) => text::command_line(&e.argv),
        Some(v1::job_action::Kind::ProcessList(p)) => {
            let sort = if p.sort() == v1::ProcessSort::Memory { "mem" } else { "cpu" };
            format!("(process list, top {} by {sort})", p.limit)
        }
        Some(v1::job_action::Kind::Operation(op)) => {
            let params: Vec<String> = op.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let dry = if op.dry_run { " (dry run)" } else { "" };
            format!("{} {}{dry}", op.name, params.join(" ")).trim_end().to_owned()
        }
        None => String::new(),
    }
}

/// What a job does, as data.
pub fn action_json(action: Option<&v1::JobAction>) -> Value {
    match action.and_then(|a| a.kind.as_ref()) {
        Some(v1::job_action::Kind::Exec(e)) => json!({"exec": {"argv": e.argv}}),
        Some(v1::job_action::Kind::ProcessList(p)) => {
            json!({"process_list": {"sort": p.sort().as_str_name(), "limit": p.limit}})
        }
        Some(v1::job_action::Kind::Operation(op)) => {
            json!({"operation": {"name": op.name, "params": op.params, "dry_run": op.dry_run}})
        }
        None => Value::Null,
    }
}

pub fn token(t: &v1::CreateJoinTokenResponse, output: Output) -> anyhow::Result<()> {
    if output == Output::Json {
        return print_json(&json!({
            "token": t.token,
            "token_id": t.token_id,
            "expires_at": rfc3339(t.expires_at_ms),
            "uses": t.uses,
            "ca_fingerprint": t.ca_fingerprint,
            "controller_url": t.controller_url,
        }));
    }
    println!(
        "Join token {} (uses: {}, expires {})",
        t.token_id,
        t.uses,
        rfc3339(t.expires_at_ms).as_str().unwrap_or("?")
    );
    println!();
    println!("Run on the host to enroll:");
    println!();
    println!(
        "  TAILOPS_JOIN_TOKEN={} tailops-agent enroll --controller {} --ca-fingerprint {}",
        t.token, t.controller_url, t.ca_fingerprint
    );
    println!();
    println!("The token is shown only this once.");
    Ok(())
}

fn summary_json(s: Option<&v1::JobSummary>) -> Value {
    let s = s.copied().unwrap_or_default();
    json!({
        "total": s.total, "succeeded": s.succeeded, "failed": s.failed, "timed_out": s.timed_out,
        "unreachable": s.unreachable, "cancelled": s.cancelled, "queued": s.queued, "lost": s.lost,
        "expired": s.expired, "interrupted": s.interrupted,
    })
}

fn job_json(j: &v1::Job) -> Value {
    json!({
        "id": j.id, "state": j.state().short_name(), "requested_by": j.requested_by,
        "requested_via": j.requested_via,
        "action": action_json(j.action.as_ref()), "created_at": rfc3339(j.created_at_ms),
        "deadline": rfc3339(j.deadline_ms), "finished_at": rfc3339(j.finished_at_ms),
        "concurrency": j.concurrency, "summary": summary_json(j.summary.as_ref()),
        "queue_until": rfc3339(j.queue_until_ms),
    })
}

pub fn jobs(jobs: &[v1::Job], output: Output) -> anyhow::Result<()> {
    if output == Output::Json {
        return print_json(&Value::Array(jobs.iter().map(job_json).collect()));
    }
    if jobs.is_empty() {
        println!("No jobs yet. Try `tailopsctl exec --all -- uname -a`.");
        return Ok(());
    }
    let mut t = table(&["ID", "STATE", "CREATED", "BY", "HOSTS OK", "COMMAND"]);
    for j in jobs {
        let s = j.summary.unwrap_or_default();
        let by = by_via(j.requested_by.rsplit('/').next().unwrap_or_default(), &j.requested_via);
        t.add_row(vec![
            j.id.to_string(),
            j.state().short_name().to_owned(),
            ago(j.created_at_ms),
            by,
            format!("{}/{}", s.succeeded, s.total),
            action_text(j.action.as_ref()),
        ]);
    }
    println!("{t}");
    Ok(())
}

fn result_text(state: v1::TargetState, result: Option<&v1::CommandResult>) -> String {
    let r = result.cloned().unwrap_or_default();
    let mut text = match (state, r.exit_code, r.signal) {
        (v1::TargetState::Unreachable, ..) => format!("unreachable: {}", r.error),
        (v1::TargetState::Lost, ..) => format!("lost: {}", r.error),
        (v1::TargetState::Expired, ..) => format!("expired: {}", r.error),
        (v1::TargetState::Interrupted, ..) => format!("interrupted: {}", r.error),
        (v1::TargetState::TimedOut, ..) => {
            format!("timed out after {}", humantime::format_duration(Duration::from_millis(r.duration_ms)))
        }
        (v1::TargetState::Cancelled, ..) => "cancelled".to_owned(),
        (_, Some(code), _) => format!("exit {code}"),
        (_, None, Some(signal)) => format!("killed by signal {signal}"),
        _ if !r.error.is_empty() => format!("error: {}", r.error),
        _ => state.short_name().to_owned(),
    };
    if r.duration_ms > 0 && !matches!(state, v1::TargetState::TimedOut) {
        text.push_str(&format!(" ({})", humantime::format_duration(Duration::from_millis(r.duration_ms))));
    }
    for (name, truncated, total) in
        [("stdout", r.stdout_truncated, r.stdout_bytes), ("stderr", r.stderr_truncated, r.stderr_bytes)]
    {
        match (truncated, total) {
            // A typed result cut to fit carries no byte count: its summary says what was kept.
            (true, 0) => text.push_str("; result truncated"),
            (true, total) => text.push_str(&format!("; {name} truncated ({total} bytes produced)")),
            (false, _) => {}
        }
    }
    text
}

pub fn target_status(host: &str, state: v1::TargetState, result: Option<&v1::CommandResult>) -> String {
    let mark = if state == v1::TargetState::Succeeded { "ok" } else { "FAILED" };
    format!("{}: {mark} {}", safe(host), safe(&result_text(state, result)))
}

pub fn summary_line(job_id: u64, c: &v1::JobCompleted) -> String {
    let s = c.summary.unwrap_or_default();
    let mut line = format!(
        "job {job_id} {}: {} host(s), {} succeeded, {} failed, {} timed out, {} unreachable, {} cancelled",
        c.state().short_name(),
        s.total,
        s.succeeded,
        s.failed,
        s.timed_out,
        s.unreachable,
        s.cancelled
    );
    // The delivery outcomes are rare: named only when they happened.
    for (count, name) in [(s.lost, "lost"), (s.expired, "expired"), (s.interrupted, "interrupted")] {
        if count > 0 {
            line.push_str(&format!(", {count} {name}"));
        }
    }
    line
}

fn result_json(r: Option<&v1::CommandResult>) -> Value {
    let Some(r) = r else { return Value::Null };
    json!({
        "exit_code": r.exit_code, "signal": r.signal, "timed_out": r.timed_out, "cancelled": r.cancelled,
        "duration_ms": r.duration_ms, "stdout_truncated": r.stdout_truncated, "stderr_truncated": r.stderr_truncated,
        "stdout_bytes": r.stdout_bytes, "stderr_bytes": r.stderr_bytes,
        "error": if r.error.is_empty() { Value::Null } else { Value::String(r.error.clone()) },
        "not_available": r.not_available,
        "output": r.output.as_ref().and_then(|o| o.kind.as_ref()).map_or(Value::Null, action_output_json),
    })
}

fn scalar_json(s: &v1::Scalar) -> Value {
    match &s.value {
        Some(v1::scalar::Value::Text(t)) => Value::String(t.clone()),
        Some(v1::scalar::Value::Int(n)) => json!(n),
        Some(v1::scalar::Value::Real(x)) => json!(x),
        Some(v1::scalar::Value::Flag(b)) => json!(b),
        None => Value::Null,
    }
}

fn scalar_text(s: Option<&v1::Scalar>) -> String {
    match s.and_then(|s| s.value.as_ref()) {
        Some(v1::scalar::Value::Text(t)) => t.clone(),
        Some(v1::scalar::Value::Int(n)) => n.to_string(),
        Some(v1::scalar::Value::Real(x)) => format!("{x:.3}"),
        Some(v1::scalar::Value::Flag(b)) => {
            if *b {
                "yes".into()
            } else {
                "no".into()
            }
        }
        None => "-".into(),
    }
}

/// The structured output of a typed action, as data.
pub fn action_output_json(kind: &v1::action_output::Kind) -> Value {
    match kind {
        v1::action_output::Kind::Operation(op) => {
            let records: Vec<Value> = op
                .records
                .iter()
                .map(|r| {
                    let fields: serde_json::Map<String, Value> = op
                        .columns
                        .iter()
                        .filter_map(|c| r.fields.get(c).map(|v| (c.clone(), scalar_json(v))))
                        .collect();
                    Value::Object(fields)
                })
                .collect();
            json!({"summary": op.summary, "plan": op.plan, "records": records})
        }
        v1::action_output::Kind::ProcessList(list) => {
            json!({"processes": list.processes.len(), "total": list.total})
        }
    }
}

/// An operation's output for a person: its summary, the steps it ran, and its records.
pub fn operation_text(host: &str, op: &v1::OperationOutput) -> String {
    let mut text = String::new();
    if !op.summary.is_empty() {
        text.push_str(&format!("[{}] {}\n", safe(host), safe(&op.summary)));
    }
    for step in &op.plan {
        text.push_str(&format!("[{}] $ {}\n", safe(host), safe(step)));
    }
    // One value per record reads better as plain lines than as a one-column table.
    if op.columns.len() == 1 {
        for r in &op.records {
            text.push_str(&format!(
                "[{}] {}\n",
                safe(host),
                safe(&scalar_text(r.fields.get(&op.columns[0])))
            ));
        }
    } else if !op.records.is_empty() {
        let header: Vec<String> = op.columns.iter().map(|c| c.to_uppercase()).collect();
        let mut t = table(&header.iter().map(String::as_str).collect::<Vec<_>>());
        for r in &op.records {
            t.add_row(op.columns.iter().map(|c| scalar_text(r.fields.get(c))).collect::<Vec<_>>());
        }
        text.push_str(&format!("{t}\n"));
    }
    text
}

pub fn job_detail(detail: &v1::GetJobResponse, output: Output) -> anyhow::Result<()> {
    let Some(job) = &detail.job else { anyhow::bail!("the controller returned no job") };
    if output == Output::Json {
        let targets: Vec<Value> = detail
            .targets
            .iter()
            .map(|t| {
                let target = t.target.clone().unwrap_or_default();
                json!({
                    "host_id": target.host_id, "host": target.host_name, "state": t.state().short_name(),
                    "result": result_json(t.result.as_ref()),
                    "stdout": String::from_utf8_lossy(&t.stdout), "stderr": String::from_utf8_lossy(&t.stderr),
                    "started_at": rfc3339(t.started_at_ms), "finished_at": rfc3339(t.finished_at_ms),
                })
            })
            .collect();
        let mut value = job_json(job);
        value["targets"] = Value::Array(targets);
        return print_json(&value);
    }
    println!("Job {}  {}", job.id, job.state().short_name());
    println!("  command:   {}", action_text(job.action.as_ref()));
    println!("  by:        {}", by_via(&job.requested_by, &job.requested_via));
    println!("  created:   {}", rfc3339(job.created_at_ms).as_str().unwrap_or("-"));
    println!();
    let mut t = table(&["HOST", "STATE", "RESULT"]);
    for target in &detail.targets {
        let name = target.target.as_ref().map(|t| t.host_name.clone()).unwrap_or_default();
        t.add_row(vec![
            name,
            target.state().short_name().to_owned(),
            result_text(target.state(), target.result.as_ref()),
        ]);
    }
    println!("{t}");
    for target in &detail.targets {
        let name = target.target.as_ref().map(|t| t.host_name.as_str()).unwrap_or_default();
        for (label, bytes) in [("", &target.stdout), (" (stderr)", &target.stderr)] {
            for line in String::from_utf8_lossy(bytes).lines() {
                println!("[{name}]{label} {line}");
            }
        }
    }
    Ok(())
}

pub fn cancelled(id: u64, r: &v1::CancelJobResponse, output: Output) -> anyhow::Result<()> {
    if output == Output::Json {
        return print_json(
            &json!({"job_id": id, "cancelled_targets": r.cancelled_targets, "already_finished": r.already_finished}),
        );
    }
    if r.already_finished {
        println!("job {id} had already finished");
    } else {
        println!("job {id}: cancel sent to {} unfinished host(s)", r.cancelled_targets);
    }
    Ok(())
}

/// One JSON object per event, for `--output json` streaming.
pub fn event_json(event: &v1::JobEvent) -> Value {
    let host = |t: &Option<v1::JobTarget>| t.as_ref().map(|t| t.host_name.clone()).unwrap_or_default();
    match &event.kind {
        Some(job_event::Kind::Accepted(a)) => json!({
            "job_id": event.job_id, "event": "accepted",
            "hosts": a.targets.iter().map(|t| t.host_name.clone()).collect::<Vec<_>>(),
            "action": action_json(a.action.as_ref()), "deadline": rfc3339(a.deadline_ms),
            "queue_until": rfc3339(a.queue_until_ms),
        }),
        Some(job_event::Kind::ApprovalRequired(a)) => json!({
            "job_id": event.job_id, "event": "approval_required",
            "expires_at": rfc3339(a.expires_at_ms), "approve_command": a.approve_command,
        }),
        Some(job_event::Kind::ApprovalDecided(d)) => json!({
            "job_id": event.job_id, "event": "approval_decided", "approved": d.approved, "by": d.by, "reason": d.reason,
        }),
        Some(job_event::Kind::Started(s)) => {
            json!({"job_id": event.job_id, "event": "started", "host": host(&s.target)})
        }
        Some(job_event::Kind::Queued(q)) => json!({
            "job_id": event.job_id, "event": "queued", "host": host(&q.target), "until": rfc3339(q.until_ms),
        }),
        Some(job_event::Kind::Output(o)) => json!({
            "job_id": event.job_id, "event": "output", "host": host(&o.target),
            "stream": if o.stream() == v1::OutputStream::Stderr { "stderr" } else { "stdout" },
            "data": String::from_utf8_lossy(&o.data),
        }),
        Some(job_event::Kind::Finished(f)) => json!({
            "job_id": event.job_id, "event": "finished", "host": host(&f.target),
            "state": f.state().short_name(), "result": result_json(f.result.as_ref()),
        }),
        Some(job_event::Kind::Completed(c)) => json!({
            "job_id": event.job_id, "event": "completed", "state": c.state().short_name(),
            "summary": summary_json(c.summary.as_ref()),
        }),
        None => json!({"job_id": event.job_id, "event": "unknown"}),
    }
}
