//! Jobs: resolve a selector, record one target per host, dispatch over the agents' live streams
//! with a concurrency limit and an absolute deadline, collect results, and replay every event to
//! any number of watchers.
//!
//! A running job lives in memory as a [`LiveJob`] (its event log and per-host state) and in
//! SQLite (the job, its targets and, when each host finishes, its result and capped output).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::Stream;
use tailops_proto::text;
use tailops_proto::v1::{self, controller_message, job_event};
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use serde_json::json;

use crate::agents::AgentRegistry;
use crate::audit::{AuditLog, AuditRecord, AuditUnavailable};
use crate::auth::{Grant, Principal, Risk, Tier};
use crate::config::Limits;
use crate::now_ms;
use crate::output_budget::{OutputAccount, OutputBudget};
use crate::result_writer::{HostResult, JobEnd, ResultWriter};
use crate::store::{HostIdentity, HostKey, NewJob, Store, StoreError, TargetOutcome, summarize};
use crate::telemetry::Telemetry;

/// How long after the deadline the controller waits for an agent's own timeout report.
const REPORT_GRACE: Duration = Duration::from_secs(5);
/// How long a cancelled host has to confirm that it killed the process.
const CANCEL_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("no host matches the selector; check `tailopsctl hosts ls` for names and labels")]
    NoMatchingHosts,
    #[error("job {0} not found; list jobs with `tailopsctl jobs ls`")]
    NotFound(u64),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error(transparent)]
    AuditUnavailable(#[from] AuditUnavailable),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<JobError> for Status {
    fn from(e: JobError) -> Self {
        match e {
            JobError::InvalidArgument(m) => Status::invalid_argument(m),
            JobError::NoMatchingHosts => Status::not_found(e.to_string()),
            JobError::NotFound(_) => Status::not_found(e.to_string()),
            JobError::PermissionDenied(m) => Status::permission_denied(m),
            JobError::FailedPrecondition(m) => Status::failed_precondition(m),
            JobError::AuditUnavailable(e) => e.into(),
            JobError::Store(e) if e.is_disk_full() => {
                tracing::error!(error = %e, "job refused: the disk is full");
                Status::resource_exhausted(e.to_string())
            }
            JobError::Store(e) => {
                tracing::error!(error = %e, "job store failure");
                Status::internal("the controller could not record the job; see its log")
            }
        }
    }
}

/// A validated request to run an action on a set of hosts.
#[derive(Debug, Clone)]
pub struct JobRequest {
    pub requester: Principal,
    pub selector: v1::HostSelector,
    pub action: v1::JobAction,
    pub timeout: Duration,
    pub concurrency: u32,
    pub output_cap: u64,
    pub reason: String,
    /// How long hosts that are offline are waited for (zero: not at all).
    pub queue_for: Duration,
}

impl JobRequest {
    /// Checks a wire request against the limits and fills in defaults.
    pub fn from_wire(
        requester: Principal,
        req: v1::RunJobRequest,
        limits: &Limits,
    ) -> Result<Self, JobError> {
        let invalid = |m: String| JobError::InvalidArgument(m);
        let selector = req.selector.unwrap_or_default();
        if !selector.all && selector.labels.is_empty() && selector.hosts.is_empty() {
            return Err(invalid(
                "the selector is empty: name hosts, labels, or ask for all hosts explicitly".into(),
            ));
        }
        let action = req.action.ok_or_else(|| invalid("the job has no action".into()))?;
        match &action.kind {
            Some(v1::job_action::Kind::Exec(exec)) => {
                if exec.argv.is_empty() || exec.argv[0].is_empty() {
                    return Err(invalid(
                        "exec needs a command: tailopsctl exec --all -- COMMAND [ARGS...]".into(),
                    ));
                }
                if exec.argv.len() > MAX_ARGV_ELEMENTS {
                    return Err(invalid(format!(
                        "argv has {} elements; the limit is {MAX_ARGV_ELEMENTS}",
                        exec.argv.len()
                    )));
                }
                let size: usize = exec.argv.iter().map(String::len).sum();
                if size > limits.max_argv_bytes {
                    return Err(invalid(format!(
                        "argv is {size} bytes; the limit is {}",
                        limits.max_argv_bytes
                    )));
                }
                // Tabs and newlines are ordinary in scripts and every client shows them escaped;
                // the rest can redraw an approver's terminal or reorder what it shows.
                for (i, arg) in exec.argv.iter().enumerate() {
                    if let Some((at, c)) = text::find_hidden(arg, &['\t', '\n']) {
                        return Err(invalid(format!(
                            "argv[{i}] holds {} at byte {at}: control, escape and bidirectional characters \
                             are refused because they can hide from an approver what will run; put such \
                             text in a script on the host instead",
                            text::describe(c)
                        )));
                    }
                }
            }
            Some(v1::job_action::Kind::ProcessList(list)) => {
                if list.limit > MAX_PROCESS_LIST {
                    return Err(invalid(format!(
                        "a process list holds at most {MAX_PROCESS_LIST} processes, not {}",
                        list.limit
                    )));
                }
            }
            Some(v1::job_action::Kind::Operation(op)) => {
                tailops_ops::validate(&op.name, &op.params, op.dry_run)
                    .map_err(|e| invalid(e.to_string()))?;
            }
            None => return Err(invalid("the job has no action".into())),
        }
        let timeout_secs_max = limits.max_job_timeout_secs;
        let timeout = match req.timeout_ms {
            0 => Duration::from_secs(limits.default_job_timeout_secs),
            ms => Duration::from_millis(ms),
        };
        if timeout > Duration::from_secs(timeout_secs_max) {
            return Err(invalid(format!("timeout {timeout:?} exceeds the limit of {timeout_secs_max} s")));
        }
        // Below the control tier a job's output and a follow's duration are bounded tighter:
        // the lowest roles must not be able to hold the controller's memory for a day (M5).
        let observe_only = !requester.holds(Tier::Control);
        let max_cap = if observe_only {
            limits.max_output_cap_bytes.min(OBSERVE_MAX_OUTPUT_CAP)
        } else {
            limits.max_output_cap_bytes
        };
        let output_cap = match req.output_cap_bytes {
            0 => limits.default_output_cap_bytes.min(max_cap),
            n if n > max_cap => {
                return Err(invalid(format!(
                    "output cap {n} exceeds the limit of {max_cap} bytes{}",
                    if observe_only { " for roles without the control tier" } else { "" }
                )));
            }
            n => n,
        };
        let follows = matches!(&action.kind, Some(v1::job_action::Kind::Operation(op))
            if op.params.get("follow").is_some_and(|f| matches!(f.as_str(), "true" | "yes" | "1" | "on")));
        if observe_only && follows && timeout > OBSERVE_MAX_FOLLOW {
            return Err(invalid(format!(
                "a follow job runs at most {} for roles without the control tier; start a new one to go on",
                humantime::format_duration(OBSERVE_MAX_FOLLOW)
            )));
        }
        check_reason(&req.reason)?;
        let queue_for = Duration::from_millis(req.queue_for_ms);
        if queue_for > Duration::from_secs(limits.max_queue_for_secs) {
            return Err(invalid(format!(
                "queue-for {} exceeds the limit of {}",
                humantime::format_duration(queue_for),
                humantime::format_duration(Duration::from_secs(limits.max_queue_for_secs))
            )));
        }
        Ok(Self {
            requester,
            selector,
            action,
            timeout,
            concurrency: req.concurrency,
            output_cap,
            reason: req.reason,
            queue_for,
        })
    }
}

/// A reason a person gives (for a job, an approval, a rejection): shown to other people, so
/// bounded and plain.
fn check_reason(reason: &str) -> Result<(), JobError> {
    if reason.len() > 1024 {
        return Err(JobError::InvalidArgument("the reason is limited to 1024 bytes".into()));
    }
    if let Some((at, c)) = text::find_hidden(reason, &[]) {
        return Err(JobError::InvalidArgument(format!(
            "the reason holds {} at byte {at}: write it as one line of plain text",
            text::describe(c)
        )));
    }
    Ok(())
}

/// The largest output cap (per stream and host) a principal without the control tier may ask for.
pub const OBSERVE_MAX_OUTPUT_CAP: u64 = 4 * 1024 * 1024;
/// The longest a principal without the control tier may follow a log or a container.
pub const OBSERVE_MAX_FOLLOW: Duration = Duration::from_secs(3600);

/// The most arguments one exec may carry: the byte limit alone would let millions of empty
/// strings through.
pub const MAX_ARGV_ELEMENTS: usize = 4096;

/// The most processes one process-list action may return.
pub const MAX_PROCESS_LIST: u32 = 500;

/// What an action risks. Every action a job can carry declares it here.
pub fn risk_of(action: &v1::JobAction) -> Risk {
    match &action.kind {
        Some(v1::job_action::Kind::Exec(_)) | None => Risk { tier: Tier::Control, exec: true, egress: true },
        Some(v1::job_action::Kind::ProcessList(_)) => {
            Risk { tier: Tier::Observe, exec: false, egress: false }
        }
        // A dry run changes nothing, so it needs only observe, whatever it would change.
        Some(v1::job_action::Kind::Operation(op)) => {
            let spec = tailops_ops::find(&op.name);
            // A dry run only says what would run; it reaches nothing.
            let egress = !op.dry_run && spec.is_none_or(tailops_ops::OperationSpec::reaches_outside);
            let tier = match spec.map(|spec| spec.tier) {
                _ if op.dry_run => Tier::Observe,
                Some(tailops_ops::RiskTier::Observe) => Tier::Observe,
                Some(tailops_ops::RiskTier::Control) => Tier::Control,
                // Unknown operations are refused by validation; rank them highest regardless.
                Some(tailops_ops::RiskTier::Admin) | None => Tier::Admin,
            };
            Risk { tier, exec: false, egress }
        }
    }
}

/// Whether a network check aims at one of the fleet's own hosts (by its name) or at the host
/// it runs on (loopback), which keeps it inside the fleet whoever asks.
fn aims_at_fleet(action: &v1::JobAction, hosts: &[HostKey]) -> bool {
    let Some(v1::job_action::Kind::Operation(op)) = &action.kind else { return false };
    let inside = |target: &String| {
        target == "localhost"
            || target.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
            || hosts.iter().any(|h| h.name == *target)
    };
    op.name.starts_with("net.") && op.params.get("host").is_some_and(inside)
}

/// What an action risks once its `elevated` flag is counted: an elevated action is authorised
/// at control tier at least, because its reads reach beyond the observe roots.
pub fn authorised_risk(action: &v1::JobAction) -> Risk {
    let mut risk = risk_of(action);
    if action.elevated {
        risk.tier = risk.tier.max(Tier::Control);
    }
    risk
}

/// How far a job's reads reach on its hosts: beyond the observe roots only when the job was
/// authorised at control tier (outright or by approval) or its requester holds control outright.
pub fn read_reach(risk: Risk, requester_holds_control: bool) -> v1::ReadReach {
    if risk.tier >= Tier::Control || requester_holds_control {
        v1::ReadReach::Control
    } else {
        v1::ReadReach::Observe
    }
}

/// Whether `host` is addressed by `selector`.
pub fn selector_matches(selector: &v1::HostSelector, host: &impl HostIdentity) -> bool {
    let labels_match = selector.labels.iter().all(|(k, v)| host.label(k) == Some(v.as_str()));
    let named =
        selector.hosts.is_empty() || selector.hosts.iter().any(|h| h == host.name() || h == host.id());
    let explicit = selector.all || !selector.labels.is_empty() || !selector.hosts.is_empty();
    explicit && labels_match && named
}

/// How long the manager waits for hosts that went away.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryTiming {
    /// A host silent this long is offline; a job that reached it is lost once the host has been
    /// away so long.
    pub offline_after: Duration,
    /// After a restart, how long the hosts of jobs that were running get to reconnect and
    /// report before their part is recorded interrupted.
    pub recovery_window: Duration,
}

/// The manager's limits and clocks, from the controller's configuration.
#[derive(Debug, Clone)]
pub struct JobSettings {
    /// How long a job waits for approval.
    pub approval_ttl: Duration,
    pub timing: DeliveryTiming,
    /// What the output of all running jobs may hold in memory together.
    pub output_budget: OutputBudget,
}

#[derive(Debug)]
pub struct JobManager {
    store: Store,
    agents: Arc<AgentRegistry>,
    audit: AuditLog,
    results: ResultWriter,
    approval_ttl: Duration,
    timing: DeliveryTiming,
    /// Cancelled when the controller stops: watchers are told to come back, and nothing that
    /// is in flight is recorded as finished (the next start resumes it).
    shutdown: CancellationToken,
    live: Mutex<HashMap<u64, Arc<LiveJob>>>,
    /// What the output of all running jobs may hold in memory together.
    output_budget: OutputBudget,
}

impl JobManager {
    pub fn new(
        store: Store,
        agents: Arc<AgentRegistry>,
        audit: AuditLog,
        settings: JobSettings,
        telemetry: Telemetry,
        shutdown: CancellationToken,
    ) -> Self {
        let JobSettings { approval_ttl, timing, output_budget } = settings;
        let results = ResultWriter::start(store.clone(), telemetry);
        Self {
            store,
            agents,
            audit,
            results,
            approval_ttl,
            timing,
            shutdown,
            live: Mutex::default(),
            output_budget,
        }
    }

    /// Replaces the stored states of `job_id`'s unfinished hosts with their live ones (queued,
    /// running), if the job runs.
    pub fn overlay_live_states(&self, job_id: u64, targets: &mut [v1::TargetDetail]) {
        let Some(job) = self.lock_live().get(&job_id).cloned() else { return };
        let live = job.lock();
        for detail in targets.iter_mut().filter(|t| is_unfinished(t.state())) {
            if let Some(run) = detail.target.as_ref().and_then(|t| live.targets.get(&t.host_id)) {
                detail.state = run.state as i32;
                detail.started_at_ms = run.started_at_ms;
            }
        }
    }

    /// Cancelled when the controller stops.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Re-arms what the previous run left unfinished, and returns how many jobs wait for
    /// approval and how many resumed running. Jobs waiting for approval wait again. Running jobs
    /// resume: hosts that finished keep their stored results; the others are asked again once
    /// they reconnect (an agent runs a job id at most once and keeps its result until the
    /// controller has stored it) and are recorded interrupted if they do not report within the
    /// recovery window.
    pub async fn resume(self: &Arc<Self>) -> Result<(usize, usize), JobError> {
        let pending = self.store.jobs_in_state(v1::JobState::PendingApproval).await?;
        let pending_count = pending.len();
        for p in pending {
            let targets: Vec<v1::JobTarget> = p.targets.iter().filter_map(|t| t.target.clone()).collect();
            let action = p.job.action.clone().unwrap_or_default();
            let job = Arc::new(LiveJob::new(
                p.job.id,
                p.job.requested_by.clone(),
                Some(p.job.requested_via.clone()).filter(|via| !via.is_empty()),
                HostWork {
                    action: action.clone(),
                    // Held for approval, so authorised at its own risk once a human approves.
                    reach: read_reach(authorised_risk(&action), false),
                    output_cap: p.output_cap,
                    timeout: Duration::from_millis(p.timeout_ms),
                    queue_for: Duration::from_millis(p.queue_for_ms),
                    output: self.output_budget.account(),
                },
                targets.clone(),
            ));
            job.push(job_event::Kind::Accepted(v1::JobAccepted {
                targets,
                deadline_ms: 0,
                action: Some(action),
                out_of_scope: Vec::new(),
                queue_until_ms: 0,
            }));
            job.push(job_event::Kind::ApprovalRequired(approval_required(
                p.job.id,
                p.approval_expires_at_ms,
            )));
            self.lock_live().insert(p.job.id, job.clone());
            let manager = self.clone();
            let concurrency = p.job.concurrency;
            let expires = p.approval_expires_at_ms;
            tokio::spawn(async move { manager.await_approval(job, concurrency, expires).await });
        }

        let running = self.store.jobs_in_state(v1::JobState::Running).await?;
        let running_count = running.len();
        let last_seen: HashMap<String, i64> = if running.is_empty() {
            HashMap::new()
        } else {
            self.store.list_hosts().await?.into_iter().map(|h| (h.id, h.last_seen_ms)).collect()
        };
        let offline_after_ms = i64::try_from(self.timing.offline_after.as_millis()).unwrap_or(i64::MAX);
        for r in running {
            let targets: Vec<v1::JobTarget> = r.targets.iter().filter_map(|t| t.target.clone()).collect();
            let action = r.job.action.clone().unwrap_or_default();
            let job = Arc::new(LiveJob::new(
                r.job.id,
                r.job.requested_by.clone(),
                Some(r.job.requested_via.clone()).filter(|via| !via.is_empty()),
                HostWork {
                    action: action.clone(),
                    // Stored before reaches were recorded: observe, the narrowest (fails closed).
                    reach: r.reach,
                    output_cap: r.output_cap,
                    timeout: Duration::from_millis(r.timeout_ms),
                    queue_for: Duration::from_millis(r.queue_for_ms),
                    output: self.output_budget.account(),
                },
                targets.clone(),
            ));
            job.resume_clock(r.job.deadline_ms, r.job.queue_until_ms);
            job.push(job_event::Kind::Accepted(v1::JobAccepted {
                targets,
                deadline_ms: r.job.deadline_ms,
                action: Some(action),
                out_of_scope: Vec::new(),
                queue_until_ms: r.job.queue_until_ms,
            }));
            let mut unfinished = Vec::new();
            for detail in &r.targets {
                let Some(target) = detail.target.clone() else { continue };
                // A host not heard from since before the job was created was offline when it
                // started: the job cannot have reached it.
                let heard_since = last_seen
                    .get(&target.host_id)
                    .is_some_and(|&seen| seen >= r.job.created_at_ms.saturating_sub(offline_after_ms));
                match detail.state() {
                    // Queued: it never reached its host, which is waited for as before.
                    v1::TargetState::Queued => unfinished.push((target, Resumed::No)),
                    state if is_unfinished(state) && !heard_since => unfinished.push((target, Resumed::No)),
                    state if is_unfinished(state) => unfinished.push((target, Resumed::Yes)),
                    _ => job.restore_finished(detail),
                }
            }
            tracing::info!(
                job = r.job.id,
                hosts = unfinished.len(),
                "resuming a job the previous run left running"
            );
            self.lock_live().insert(r.job.id, job.clone());
            let manager = self.clone();
            let concurrency = r.job.concurrency;
            tokio::spawn(async move { manager.run_targets(job, concurrency, unfinished).await });
        }
        Ok((pending_count, running_count))
    }

    /// Records the job, starts dispatching it in the background and returns its live handle.
    /// Authorises the job per resolved host (the requester's scope narrows the selector), then
    /// runs it at once or holds it for approval, as the requester's role says.
    pub async fn start(self: &Arc<Self>, req: JobRequest) -> Result<Arc<LiveJob>, JobError> {
        // A job nobody could find in the audit log afterwards is not started (fail closed).
        self.audit.ensure_writable()?;
        let requested_by = req.requester.uri();
        let requested_via = req.requester.client.clone();
        let hosts = self.store.host_keys().await?;
        let mut risk = authorised_risk(&req.action);
        risk.egress &= !aims_at_fleet(&req.action, &hosts);
        let grant = req.requester.grant(risk);
        let reach = read_reach(risk, req.requester.holds(Tier::Control));
        if grant == Grant::No {
            let role = req.requester.role.map_or("none", |r| r.name);
            let what = if risk.exec { "exec".to_owned() } else { format!("{} actions", risk.tier) };
            return Err(JobError::PermissionDenied(format!("role {role} may not run {what}")));
        }
        let (in_scope, out_of_scope): (Vec<&HostKey>, Vec<&HostKey>) = hosts
            .iter()
            .filter(|h| selector_matches(&req.selector, *h))
            .partition(|h| req.requester.covers(*h));
        let out_of_scope: Vec<String> = out_of_scope.iter().map(|h| h.name.clone()).collect();
        if in_scope.is_empty() {
            if out_of_scope.is_empty() {
                return Err(JobError::NoMatchingHosts);
            }
            return Err(JobError::PermissionDenied(format!(
                "your role covers none of the {} matching host(s)",
                out_of_scope.len()
            )));
        }
        let targets: Vec<v1::JobTarget> = in_scope
            .iter()
            .map(|h| v1::JobTarget { host_id: h.id.clone(), host_name: h.name.clone() })
            .collect();
        let created_at_ms = now_ms();
        let timeout_ms = i64::try_from(req.timeout.as_millis()).unwrap_or(i64::MAX);
        let needs_approval = grant == Grant::WithApproval;
        let approval_expires_at_ms = if needs_approval {
            created_at_ms.saturating_add(i64::try_from(self.approval_ttl.as_millis()).unwrap_or(i64::MAX))
        } else {
            0
        };
        let queue_for_ms = i64::try_from(req.queue_for.as_millis()).unwrap_or(i64::MAX);
        // A queued job's deadline covers its queue window: a host that arrives at the end of it
        // still gets the whole timeout.
        let deadline_ms = if needs_approval {
            0
        } else {
            created_at_ms.saturating_add(queue_for_ms).saturating_add(timeout_ms)
        };
        let queue_until_ms =
            if needs_approval || queue_for_ms == 0 { 0 } else { created_at_ms.saturating_add(queue_for_ms) };
        let id = self
            .store
            .create_job(&NewJob {
                requested_by: requested_by.clone(),
                requested_via: requested_via.clone().unwrap_or_default(),
                selector: req.selector.clone(),
                action: req.action.clone(),
                concurrency: req.concurrency,
                output_cap: req.output_cap,
                created_at_ms,
                deadline_ms,
                timeout_ms,
                reason: req.reason.clone(),
                approval_expires_at_ms,
                queue_for_ms,
                reach,
                targets: targets.clone(),
            })
            .await
            .map_err(|e| self.store.name_disk_full(e))?;
        tracing::info!(job = id, by = %requested_by, hosts = targets.len(), needs_approval, "job created");

        let job = Arc::new(LiveJob::new(
            id,
            requested_by,
            requested_via,
            HostWork {
                action: req.action.clone(),
                reach,
                output_cap: req.output_cap,
                timeout: req.timeout,
                queue_for: req.queue_for,
                output: self.output_budget.account(),
            },
            targets.clone(),
        ));
        job.push(job_event::Kind::Accepted(v1::JobAccepted {
            targets: targets.clone(),
            deadline_ms,
            action: Some(req.action.clone()),
            out_of_scope: out_of_scope.clone(),
            queue_until_ms,
        }));
        self.lock_live().insert(id, job.clone());
        let manager = self.clone();
        let running = job.clone();
        if needs_approval {
            job.push(job_event::Kind::ApprovalRequired(approval_required(id, approval_expires_at_ms)));
            tokio::spawn(async move {
                manager.await_approval(running, req.concurrency, approval_expires_at_ms).await;
            });
        } else {
            tokio::spawn(async move { manager.run(running, req.concurrency).await });
        }
        // Recorded once the job is live, so a watcher never finds it persisted but not running.
        self.audit
            .record(
                AuditRecord::allow(
                    job.requested_by.clone(),
                    "job.create",
                    targets.iter().map(|t| t.host_name.clone()).collect(),
                    json!({
                        "job_id": id,
                        "action": action_json(&req.action),
                        "timeout_ms": timeout_ms,
                        "reason": req.reason,
                        "out_of_scope": out_of_scope,
                        "queue_for_ms": queue_for_ms,
                    }),
                    if needs_approval { "pending approval" } else { "dispatched" },
                )
                .via(job.requested_via.clone()),
            )
            .await;
        Ok(job)
    }

    /// Holds a job until a human decides or the approval expires.
    async fn await_approval(self: Arc<Self>, job: Arc<LiveJob>, concurrency: u32, expires_at_ms: i64) {
        let wait = Duration::from_millis(u64::try_from(expires_at_ms.saturating_sub(now_ms())).unwrap_or(0));
        let mut decision = job.decision.subscribe();
        let decided = tokio::select! {
            d = decision.wait_for(Option::is_some) => d.ok().and_then(|d| *d),
            () = tokio::time::sleep(wait) => None,
        };
        let decided = match decided {
            Some(decided) => decided,
            None => match self.store.decide_job(job.id, v1::JobState::Expired, "", 0).await {
                Ok(true) => {
                    self.audit
                        .record(AuditRecord::allow(
                            "controller",
                            "approval.expire",
                            Vec::new(),
                            json!({"job_id": job.id}),
                            "expired",
                        ))
                        .await;
                    job.push(job_event::Kind::ApprovalDecided(v1::ApprovalDecided {
                        approved: false,
                        by: String::new(),
                        reason: "the approval expired".into(),
                    }));
                    self.end_unrun(&job, v1::JobState::Expired, "the approval expired").await;
                    return;
                }
                // Decided in the same instant: follow the decision.
                _ => {
                    let mut decision = job.decision.subscribe();
                    match decision.wait_for(Option::is_some).await.ok().and_then(|d| *d) {
                        Some(decided) => decided,
                        None => return,
                    }
                }
            },
        };
        if decided.approved {
            self.run(job, concurrency).await;
        } else {
            self.end_unrun(&job, decided.state, "the job was not approved").await;
        }
    }

    /// Closes a job that never ran (rejected, cancelled or expired while pending): every target
    /// is recorded cancelled.
    async fn end_unrun(&self, job: &LiveJob, state: v1::JobState, why: &str) {
        for target in job.targets() {
            self.finish_target(job, &target, Finish::cancelled(why)).await;
        }
        let summary = job.final_state().1;
        self.close(job, state, summary).await;
    }

    /// Records the job's final state, tells its watchers, and forgets the live job.
    async fn close(&self, job: &LiveJob, state: v1::JobState, summary: v1::JobSummary) {
        // Every host's result is committed before the job is reported complete.
        let end = JobEnd { job_id: job.id, state, finished_at_ms: now_ms() };
        if let Err(e) = self.results.close_job(end).await {
            tracing::error!(job = job.id, error = %e, "could not persist job completion");
        }
        job.push(job_event::Kind::Completed(v1::JobCompleted {
            state: state as i32,
            summary: Some(summary),
        }));
        self.lock_live().remove(&job.id);
    }

    /// Approves or rejects a pending job. The approver must be a human other than the requester
    /// whose own role may run the job without approval on every one of its hosts.
    pub async fn decide(
        &self,
        id: u64,
        approver: &Principal,
        approve: bool,
        reason: &str,
    ) -> Result<v1::Job, JobError> {
        check_reason(reason)?;
        self.audit.ensure_writable()?;
        let job = self.lock_live().get(&id).cloned().filter(|j| j.is_waiting_for_approval());
        let Some(job) = job else {
            return match self.store.job(id).await? {
                Some(_) => Err(JobError::FailedPrecondition(format!("job {id} is not waiting for approval"))),
                None => Err(JobError::NotFound(id)),
            };
        };
        let deny = |m: &str| JobError::PermissionDenied(m.to_owned());
        if !approver.is_human() {
            return Err(deny("only a human user may approve or reject jobs"));
        }
        if approver.uri() == job.requested_by {
            return Err(deny("you cannot approve or reject your own job; ask another human"));
        }
        if !approver.role.is_some_and(|r| r.may_approve)
            || approver.grant(authorised_risk(&job.action)) != Grant::Yes
        {
            return Err(deny("your role may not run this job, so it may not approve it"));
        }
        if approve {
            let hosts = self.store.host_keys().await?;
            let covered = approver.covered_ids(&hosts);
            let uncovered = job.targets().iter().filter(|t| !covered.contains(t.host_id.as_str())).count();
            if uncovered > 0 {
                return Err(deny(&format!("{uncovered} of the job's hosts are outside your scope")));
            }
        } else if reason.trim().is_empty() {
            return Err(JobError::InvalidArgument("a rejection needs a reason: --reason TEXT".into()));
        }
        let (state, action) = if approve {
            (v1::JobState::Running, "approval.approve")
        } else {
            (v1::JobState::Rejected, "approval.reject")
        };
        let deadline_ms = if approve {
            now_ms().saturating_add(
                i64::try_from(job.queue_for.saturating_add(job.timeout).as_millis()).unwrap_or(i64::MAX),
            )
        } else {
            0
        };
        if !self.store.decide_job(id, state, &approver.uri(), deadline_ms).await? {
            return Err(JobError::FailedPrecondition(format!("job {id} is not waiting for approval")));
        }
        self.audit
            .record(
                AuditRecord::allow(
                    approver.uri(),
                    action,
                    job.targets().iter().map(|t| t.host_name.clone()).collect(),
                    json!({"job_id": id, "reason": reason, "requested_by": job.requested_by,
                           "requested_via": job.requested_via}),
                    if approve { "approved" } else { "rejected" },
                )
                .via(approver.client.clone()),
            )
            .await;
        job.push(job_event::Kind::ApprovalDecided(v1::ApprovalDecided {
            approved: approve,
            by: approver.uri(),
            reason: reason.to_owned(),
        }));
        job.decision.send_replace(Some(Decision { approved: approve, state }));
        tracing::info!(job = id, by = %approver.id, approve, "approval decided");
        let (job, _) = self.store.job(id).await?.ok_or(JobError::NotFound(id))?;
        Ok(job)
    }

    /// Every event of job `id` so far, then live ones until it completes.
    pub async fn watch(&self, id: u64) -> Result<JobEvents, JobError> {
        if let Some(job) = self.lock_live().get(&id).cloned() {
            return Ok(Box::pin(job.events()));
        }
        let (job, targets) = self.store.job(id).await?.ok_or(JobError::NotFound(id))?;
        // A job stored as running but not yet live was created between the two lookups.
        if matches!(job.state(), v1::JobState::Running | v1::JobState::PendingApproval)
            && let Some(live) = self.lock_live().get(&id).cloned()
        {
            return Ok(Box::pin(live.events()));
        }
        Ok(Box::pin(futures::stream::iter(replay_finished(&job, &targets))))
    }

    /// Cancels a running job: pending hosts never start, running ones have their process group killed.
    /// Withdraws a job that `requester` asked for and that still waits for approval; anything
    /// else is refused. The decision and the withdrawal are one conditional update, so a job
    /// approved a moment earlier is never stopped by someone without the control tier.
    pub async fn withdraw(&self, id: u64, requester: &str) -> Result<v1::CancelJobResponse, JobError> {
        let live = self.lock_live().get(&id).cloned();
        let refused = || JobError::PermissionDenied("only a pending job's requester may withdraw it".into());
        let Some(job) = live else {
            return match self.store.job(id).await? {
                Some(_) => Err(refused()),
                None => Err(JobError::NotFound(id)),
            };
        };
        if job.requested_by != requester || !job.is_waiting_for_approval() {
            return Err(refused());
        }
        if !self.store.decide_job(id, v1::JobState::Cancelled, "", 0).await? {
            return Err(refused());
        }
        let cancelled_targets = job.unfinished_count();
        job.decision.send_replace(Some(Decision { approved: false, state: v1::JobState::Cancelled }));
        job.cancel.cancel();
        tracing::info!(job = id, cancelled_targets, "pending job withdrawn by its requester");
        Ok(v1::CancelJobResponse { cancelled_targets, already_finished: false })
    }

    pub async fn cancel(&self, id: u64) -> Result<v1::CancelJobResponse, JobError> {
        let live = self.lock_live().get(&id).cloned();
        if let Some(job) = live {
            let cancelled_targets = job.unfinished_count();
            job.cancel.cancel();
            if job.is_waiting_for_approval()
                && self.store.decide_job(id, v1::JobState::Cancelled, "", 0).await?
            {
                job.decision.send_replace(Some(Decision { approved: false, state: v1::JobState::Cancelled }));
            }
            tracing::info!(job = id, cancelled_targets, "job cancel requested");
            return Ok(v1::CancelJobResponse { cancelled_targets, already_finished: false });
        }
        match self.store.job(id).await? {
            Some(_) => Ok(v1::CancelJobResponse { cancelled_targets: 0, already_finished: true }),
            None => Err(JobError::NotFound(id)),
        }
    }

    /// Withdraws what `requester` (a principal URI) set in motion, because its standing
    /// changed (disabled, role or scope changed): its jobs waiting for approval are rejected
    /// with `why`, so no approver can let them run, and its running jobs are cancelled. Returns
    /// how many jobs were withdrawn and how many cancelled.
    pub async fn withdraw_principal(&self, requester: &str, why: &str) -> Result<(u32, u32), JobError> {
        let jobs: Vec<Arc<LiveJob>> =
            self.lock_live().values().filter(|j| j.requested_by == requester).cloned().collect();
        let (mut withdrawn, mut cancelled) = (0, 0);
        for job in jobs {
            if job.is_waiting_for_approval()
                && self.store.decide_job(job.id, v1::JobState::Rejected, "controller", 0).await?
            {
                self.audit
                    .record(AuditRecord::allow(
                        "controller",
                        "approval.withdraw",
                        job.targets().iter().map(|t| t.host_name.clone()).collect(),
                        json!({"job_id": job.id, "requested_by": requester, "reason": why}),
                        "rejected",
                    ))
                    .await;
                job.push(job_event::Kind::ApprovalDecided(v1::ApprovalDecided {
                    approved: false,
                    by: "controller".into(),
                    reason: why.to_owned(),
                }));
                job.decision.send_replace(Some(Decision { approved: false, state: v1::JobState::Rejected }));
                withdrawn += 1;
            } else {
                // Running, or approved in the same instant: it runs under the old standing, so
                // it stops.
                job.cancel.cancel();
                cancelled += 1;
            }
        }
        if withdrawn + cancelled > 0 {
            tracing::info!(requester, withdrawn, cancelled, why, "jobs of a principal withdrawn");
        }
        Ok((withdrawn, cancelled))
    }

    /// Handles a job message from the agent of `host_id` (taken from its certificate). Messages
    /// about jobs this host was not given are dropped: an agent cannot report for another. A
    /// result for a job that is over (a repeat sent after a reconnect) is confirmed as stored
    /// once the store has it, so the agent forgets it.
    pub async fn on_agent_message(&self, host_id: &str, message: AgentJobMessage) {
        let job_id = message.job_id();
        let is_result = matches!(message, AgentJobMessage::Finished(_));
        let job = self.lock_live().get(&job_id).cloned();
        let accepted = job.is_some_and(|job| match message {
            AgentJobMessage::Started(_) => job.mark_started(host_id),
            AgentJobMessage::Output(out) => job.append_output(host_id, out.stream(), out.data),
            AgentJobMessage::Finished(done) => job.report_finished(host_id, done.result.unwrap_or_default()),
        });
        if accepted {
            return;
        }
        if !is_result {
            tracing::debug!(
                job = job_id,
                host = host_id,
                "message for a job this host is not running; dropped"
            );
            return;
        }
        // Looked up on the agent's own stream, not in a task of its own: an agent sending
        // results for made-up jobs slows only itself (its stream is paced), never the store.
        match self.store.result_settled(job_id, host_id).await {
            Ok(true) => self.confirm_stored(host_id, job_id),
            Ok(false) => {
                tracing::debug!(
                    job = job_id,
                    host = host_id,
                    "repeated result for a part still in flight; not confirmed yet"
                );
            }
            Err(e) => tracing::warn!(job = job_id, error = %e, "could not look up a repeated result"),
        }
    }

    /// Compares the jobs an agent says it runs (in its hello) with what this controller expects
    /// of that host, and returns those to cancel there: jobs that are over, or that this
    /// controller does not know.
    pub fn unexpected_jobs(&self, host_id: &str, running: &[u64]) -> Vec<u64> {
        let live = self.lock_live();
        running
            .iter()
            .take(MAX_REPORTED_RUNNING)
            .filter(|id| !live.get(id).is_some_and(|job| job.expects(host_id)))
            .copied()
            .collect()
    }

    /// Tells the agent of `host_id` that job `job_id`'s result is stored (if it is connected;
    /// otherwise it sends the result again on its next connection and hears it then).
    fn confirm_stored(&self, host_id: &str, job_id: u64) {
        if let Some(agent) = self.agents.get(host_id) {
            let stored = v1::ControllerMessage {
                kind: Some(controller_message::Kind::ResultsStored(v1::ResultsStored {
                    job_ids: vec![job_id],
                })),
            };
            let _ = agent.outbox.try_send(Ok(stored));
        }
    }

    async fn run(self: Arc<Self>, job: Arc<LiveJob>, concurrency: u32) {
        // The clock starts when the job may run (after approval, if it needed one).
        job.start_clock();
        let targets = job.targets().into_iter().map(|t| (t, Resumed::No)).collect();
        self.run_targets(job, concurrency, targets).await;
    }

    async fn run_targets(
        self: Arc<Self>,
        job: Arc<LiveJob>,
        concurrency: u32,
        targets: Vec<(v1::JobTarget, Resumed)>,
    ) {
        let deadline = job.deadline();
        let permits = match concurrency {
            0 => targets.len().max(1),
            n => usize::try_from(n).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS),
        };
        let semaphore = Arc::new(Semaphore::new(permits));
        let mut running = JoinSet::new();
        for (target, resumed) in targets {
            let permit = tokio::select! {
                permit = semaphore.clone().acquire_owned() => permit.ok(),
                () = job.cancel.cancelled() => None,
                () = tokio::time::sleep_until(deadline) => None,
            };
            let manager = self.clone();
            let job = job.clone();
            running.spawn(async move {
                let outcome = match permit {
                    Some(_permit) => manager.run_target(&job, &target, resumed).await,
                    None if job.cancel.is_cancelled() => Finish::cancelled("cancelled before it started"),
                    None => Finish::timed_out("the deadline passed before this host's turn came"),
                };
                manager.finish_target(&job, &target, outcome).await;
            });
        }
        while running.join_next().await.is_some() {}
        self.complete(&job).await;
    }

    /// One host's part: deliver the job (waiting for the host while the job queues), then wait
    /// for its result. A host that goes away after the job may have reached it is waited for
    /// (the offline window, or the queue window if longer) and asked again when it is back; the
    /// agent runs a job id at most once and answers a repeat with what it knows.
    async fn run_target(&self, job: &LiveJob, target: &v1::JobTarget, resumed: Resumed) -> Finish {
        let host_id = target.host_id.as_str();
        if job.cancel.is_cancelled() {
            return Finish::cancelled("cancelled before it started");
        }
        let deadline = job.deadline();
        let queue_until = job.queue_until();
        let (report_tx, mut report) = oneshot::channel();
        job.mark_dispatched(host_id, report_tx);
        // Whether the job may have reached the host (after a restart: it may have, before).
        let mut reached = resumed == Resumed::Yes;
        // Whether the host was connected since this controller started waiting for it.
        let mut seen = false;
        // Until when a host that may have the job is waited for once it is away.
        let mut away_until = after(Instant::now(), self.timing.recovery_window);
        loop {
            let Some(agent) = self.agents.get(host_id).filter(|a| !a.closed.is_cancelled()) else {
                if self.shutdown.is_cancelled() {
                    // Stopping: the next start resumes this host's part.
                    return std::future::pending().await;
                }
                let until = if reached {
                    queue_until.map_or(away_until, |q| q.max(away_until))
                } else {
                    match queue_until {
                        Some(q) if q > Instant::now() => {
                            if job.mark_queued(host_id, wall_clock(q))
                                && let Err(e) = self.store.mark_target_queued(job.id, host_id).await
                            {
                                // Only a restart's view of it suffers: it would count as delivered.
                                tracing::warn!(job = job.id, host = host_id, error = %e, "could not record a queued host");
                            }
                            q
                        }
                        _ => return Finish::unreachable("host is offline"),
                    }
                };
                let until = until.min(deadline + REPORT_GRACE);
                tokio::select! {
                    r = &mut report => return Finish::from_report(r.ok()),
                    () = self.agents.until_connected(host_id) => continue,
                    () = job.cancel.cancelled() => {
                        return Finish::cancelled(if reached {
                            "cancelled while the host was away; its agent is told when it reconnects"
                        } else {
                            "cancelled while queued for the host"
                        });
                    }
                    () = tokio::time::sleep_until(until) => {
                        return match (reached, seen) {
                            (false, _) => Finish::expired("the host stayed offline until the job's queue expired"),
                            (true, false) => Finish::interrupted(
                                "the controller restarted while this host's part was in flight, and the host \
                                 did not report within the recovery window",
                            ),
                            (true, true) => Finish::lost(
                                "the host went away while the job ran and did not come back within the offline window",
                            ),
                        };
                    }
                }
            };
            seen = true;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                // Too late to start; a result the agent kept arrives on its own after a reconnect.
                return tokio::select! {
                    r = &mut report => Finish::from_report(r.ok()),
                    () = tokio::time::sleep(REPORT_GRACE) => if reached {
                        Finish::interrupted("the deadline passed while the host was away, and it had no result to report")
                    } else {
                        Finish::timed_out("the deadline passed before the host took the job")
                    },
                };
            }
            let run = v1::ControllerMessage {
                kind: Some(controller_message::Kind::RunJob(v1::RunJob {
                    job_id: job.id,
                    action: Some(job.action.clone()),
                    timeout_ms: u64::try_from(remaining.min(job.timeout).as_millis()).unwrap_or(u64::MAX),
                    output_cap_bytes: job.output_cap,
                    reach: job.reach as i32,
                })),
            };
            // An agent that stops reading its stream must not hold the job past its deadline.
            let sent = tokio::select! {
                sent = agent.outbox.send(Ok(run)) => sent.is_ok(),
                () = agent.closed.cancelled() => false,
                () = job.cancel.cancelled() => return Finish::cancelled("cancelled before it reached the host"),
                () = tokio::time::sleep_until(deadline) => {
                    return Finish::timed_out("the host did not take the job before the deadline");
                }
            };
            if !sent {
                if !reached && queue_until.is_none() {
                    return Finish::unreachable("agent disconnected before the job reached it");
                }
                continue;
            }
            reached = true;
            job.mark_delivered(host_id);
            tokio::select! {
                r = &mut report => return Finish::from_report(r.ok()),
                () = agent.closed.cancelled() => {
                    away_until = self.offline_deadline(agent.last_seen_ms());
                    continue;
                }
                () = tokio::time::sleep_until(deadline + REPORT_GRACE) => {
                    return Finish::timed_out("the host did not report before the deadline");
                }
                () = job.cancel.cancelled() => {}
            }
            // Cancelled while running: ask the agent to kill the process group and wait briefly
            // for its confirmation, which carries whatever output was produced.
            let cancel = v1::ControllerMessage {
                kind: Some(controller_message::Kind::CancelJob(v1::CancelJob { job_id: job.id })),
            };
            let _ = agent.outbox.try_send(Ok(cancel));
            return tokio::select! {
                r = report => Finish::from_report(r.ok()),
                () = agent.closed.cancelled() => Finish::cancelled("agent disconnected after the cancel"),
                () = tokio::time::sleep(CANCEL_GRACE) => Finish::cancelled("the host did not confirm the cancel"),
            };
        }
    }

    /// When a host last seen at `last_seen_ms` (wall clock) has been away for the offline window.
    fn offline_deadline(&self, last_seen_ms: i64) -> Instant {
        let window = i64::try_from(self.timing.offline_after.as_millis()).unwrap_or(i64::MAX);
        let left = last_seen_ms.saturating_add(window).saturating_sub(now_ms());
        after(Instant::now(), Duration::from_millis(u64::try_from(left).unwrap_or(0)))
    }

    /// Records one host's outcome, and once it is stored tells the job's watchers (what a
    /// watcher saw finish is in the database, whatever happens to this process next) and, for
    /// a result the agent reported, the agent (which keeps it until then).
    async fn finish_target(&self, job: &LiveJob, target: &v1::JobTarget, finish: Finish) {
        let reported = finish.reported;
        let (outcome, finished) = job.settle(&target.host_id, finish);
        let stored =
            self.results.write(HostResult { job_id: job.id, host_id: target.host_id.clone(), outcome }).await;
        let stored = stored.await.unwrap_or(false);
        if self.shutdown.is_cancelled() && !stored {
            // Stopping: the next start resumes this host's part from what is stored, so the job
            // must not be recorded complete now either.
            return std::future::pending().await;
        }
        job.push(job_event::Kind::Finished(finished));
        if stored && reported {
            self.confirm_stored(&target.host_id, job.id);
        }
    }

    async fn complete(&self, job: &LiveJob) {
        let (state, summary) = job.final_state();
        self.close(job, state, summary).await;
        tracing::info!(job = job.id, state = ?state, "job completed");
        self.audit
            .record(
                AuditRecord::allow(
                    job.requested_by.clone(),
                    "job.complete",
                    job.targets().iter().map(|t| t.host_name.clone()).collect(),
                    json!({"job_id": job.id, "succeeded": summary.succeeded, "failed": summary.failed,
                           "timed_out": summary.timed_out, "unreachable": summary.unreachable,
                           "cancelled": summary.cancelled}),
                    state.as_str_name(),
                )
                // The requester's job, so the requester's client: its outcome belongs with it.
                .via(job.requested_via.clone()),
            )
            .await;
    }

    fn lock_live(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<LiveJob>>> {
        self.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A stream of job events for one watcher.
pub type JobEvents = std::pin::Pin<Box<dyn Stream<Item = v1::JobEvent> + Send>>;

/// The job-related messages an agent sends.
#[derive(Debug)]
pub enum AgentJobMessage {
    Started(v1::JobStarted),
    Output(v1::JobOutput),
    Finished(v1::JobFinished),
}

impl AgentJobMessage {
    fn job_id(&self) -> u64 {
        match self {
            Self::Started(m) => m.job_id,
            Self::Output(m) => m.job_id,
            Self::Finished(m) => m.job_id,
        }
    }
}

/// Whether a job's hosts are taken up again after a restart of the controller (so the job may
/// already have reached them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resumed {
    No,
    Yes,
}

/// Job ids of one agent's hello that are looked at; an agent runs far fewer at once.
const MAX_REPORTED_RUNNING: usize = 4096;

/// `now + span`, with spans from configuration beyond any real job cut to a century (an
/// `Instant` overflows where a configured limit need not).
fn after(now: Instant, span: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    now + span.min(CENTURY)
}

/// The wall-clock time (unix ms) of `instant`.
fn wall_clock(instant: Instant) -> i64 {
    let now = Instant::now();
    let offset = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    if instant >= now {
        now_ms().saturating_add(offset(instant - now))
    } else {
        now_ms().saturating_sub(offset(now - instant))
    }
}

/// The instant of wall-clock time `ms` (unix ms); now, if that has passed.
fn instant_of(ms: i64) -> Instant {
    after(Instant::now(), Duration::from_millis(u64::try_from(ms.saturating_sub(now_ms())).unwrap_or(0)))
}

/// How one host's part of a job ended, before it is recorded.
#[derive(Debug)]
struct Finish {
    state: v1::TargetState,
    result: v1::CommandResult,
    /// The agent reported it (and keeps it until told it is stored).
    reported: bool,
}

impl Finish {
    fn with_error(state: v1::TargetState, error: &str) -> Self {
        Self {
            state,
            result: v1::CommandResult { error: error.to_owned(), ..Default::default() },
            reported: false,
        }
    }
    fn unreachable(why: &str) -> Self {
        Self::with_error(v1::TargetState::Unreachable, why)
    }
    fn lost(why: &str) -> Self {
        Self::with_error(v1::TargetState::Lost, why)
    }
    fn expired(why: &str) -> Self {
        Self::with_error(v1::TargetState::Expired, why)
    }
    fn interrupted(why: &str) -> Self {
        Self::with_error(v1::TargetState::Interrupted, why)
    }
    fn cancelled(why: &str) -> Self {
        let mut f = Self::with_error(v1::TargetState::Cancelled, why);
        f.result.cancelled = true;
        f
    }
    fn timed_out(why: &str) -> Self {
        let mut f = Self::with_error(v1::TargetState::TimedOut, why);
        f.result.timed_out = true;
        f
    }
    fn from_report(report: Option<v1::CommandResult>) -> Self {
        let Some(result) = report else {
            return Self::unreachable("the job's report channel closed");
        };
        let state = if result.lost {
            v1::TargetState::Lost
        } else if result.cancelled {
            v1::TargetState::Cancelled
        } else if result.timed_out {
            v1::TargetState::TimedOut
        } else if result.error.is_empty() && result.exit_code == Some(0) {
            v1::TargetState::Succeeded
        } else {
            v1::TargetState::Failed
        };
        Self { state, result, reported: true }
    }
}

/// A job while it runs: its event log, per-host state, and the signal watchers wait on.
#[derive(Debug)]
pub struct LiveJob {
    pub id: u64,
    pub requested_by: String,
    /// The requester's client, if it named one.
    pub requested_via: Option<String>,
    action: v1::JobAction,
    /// How far its reads reach on the hosts, fixed when it is authorised.
    reach: v1::ReadReach,
    output_cap: u64,
    timeout: Duration,
    /// How long offline hosts are waited for (zero: not at all).
    queue_for: Duration,
    /// Set when the job starts running: until when offline hosts are waited for.
    queue_until: OnceLock<Option<Instant>>,
    /// Set when the job starts running.
    deadline: OnceLock<Instant>,
    decision: watch::Sender<Option<Decision>>,
    cancel: CancellationToken,
    state: Mutex<LiveState>,
    changed: watch::Sender<u64>,
    /// What its output holds of the controller's budget (handed back when the job is dropped).
    output: OutputAccount,
}

/// What a job runs on each host, and under which limits.
#[derive(Debug)]
struct HostWork {
    action: v1::JobAction,
    /// How far its reads reach on the hosts, fixed when it is authorised.
    reach: v1::ReadReach,
    output_cap: u64,
    timeout: Duration,
    queue_for: Duration,
    /// The job's share of the controller's live output budget.
    output: OutputAccount,
}

#[derive(Debug)]
struct LiveState {
    events: Vec<v1::JobEvent>,
    order: Vec<String>,
    targets: HashMap<String, TargetRun>,
    completed: bool,
}

#[derive(Debug)]
struct TargetRun {
    target: v1::JobTarget,
    state: v1::TargetState,
    report: Option<oneshot::Sender<v1::CommandResult>>,
    dispatched: bool,
    started_at_ms: i64,
    /// Output is held once, in the job's event log; a target keeps the indices of its output
    /// events and how many bytes each stream has produced (for the cap).
    output_events: Vec<usize>,
    stdout_bytes: usize,
    stderr_bytes: usize,
    /// Output was cut because the controller's live output budget was spent.
    stdout_cut: bool,
    stderr_cut: bool,
}

enum Next {
    Event(Box<v1::JobEvent>),
    Wait,
    End,
}

impl LiveJob {
    /// Starts the job's clock: its queue window and its deadline count from now. The deadline
    /// covers the queue window, so a host that comes at its end still gets the whole timeout.
    fn start_clock(&self) {
        let now = Instant::now();
        let _ = self.queue_until.set((!self.queue_for.is_zero()).then(|| after(now, self.queue_for)));
        let _ = self.deadline.set(after(now, self.queue_for.saturating_add(self.timeout)));
    }

    /// Sets the clock of a job resumed after a restart from its stored wall-clock times.
    fn resume_clock(&self, deadline_ms: i64, queue_until_ms: i64) {
        let _ = self.queue_until.set((queue_until_ms > 0).then(|| instant_of(queue_until_ms)));
        let _ = self.deadline.set(instant_of(deadline_ms));
    }

    /// The running deadline (see [`Self::start_clock`]).
    fn deadline(&self) -> Instant {
        *self.deadline.get_or_init(|| after(Instant::now(), self.queue_for.saturating_add(self.timeout)))
    }

    /// Until when offline hosts are waited for, if the job queues.
    fn queue_until(&self) -> Option<Instant> {
        self.queue_until.get().copied().flatten()
    }

    fn is_waiting_for_approval(&self) -> bool {
        self.deadline.get().is_none() && self.decision.borrow().is_none() && !self.lock().completed
    }

    fn new(
        id: u64,
        requested_by: String,
        requested_via: Option<String>,
        work: HostWork,
        targets: Vec<v1::JobTarget>,
    ) -> Self {
        let HostWork { action, reach, output_cap, timeout, queue_for, output } = work;
        let order = targets.iter().map(|t| t.host_id.clone()).collect();
        let targets = targets
            .into_iter()
            .map(|target| {
                let run = TargetRun {
                    target: target.clone(),
                    state: v1::TargetState::Pending,
                    report: None,
                    dispatched: false,
                    started_at_ms: 0,
                    output_events: Vec::new(),
                    stdout_bytes: 0,
                    stderr_bytes: 0,
                    stdout_cut: false,
                    stderr_cut: false,
                };
                (target.host_id, run)
            })
            .collect();
        Self {
            id,
            requested_by,
            requested_via,
            action,
            reach,
            output_cap,
            timeout,
            queue_for,
            queue_until: OnceLock::new(),
            deadline: OnceLock::new(),
            decision: watch::Sender::new(None),
            cancel: CancellationToken::new(),
            state: Mutex::new(LiveState { events: Vec::new(), order, targets, completed: false }),
            changed: watch::Sender::new(0),
            output,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LiveState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn push(&self, kind: job_event::Kind) {
        self.record(&mut self.lock(), kind);
        self.notify();
    }

    /// Appends an event under the state lock that the caller already holds, so events are
    /// logged in the same order as the state changes they describe. Call [`Self::notify`] after
    /// releasing the lock.
    fn record(&self, state: &mut LiveState, kind: job_event::Kind) {
        state.completed |= matches!(kind, job_event::Kind::Completed(_));
        state.events.push(v1::JobEvent { job_id: self.id, kind: Some(kind) });
    }

    fn notify(&self) {
        self.changed.send_modify(|version| *version += 1);
    }

    fn targets(&self) -> Vec<v1::JobTarget> {
        let state = self.lock();
        state.order.iter().filter_map(|id| state.targets.get(id)).map(|t| t.target.clone()).collect()
    }

    fn unfinished_count(&self) -> u32 {
        let state = self.lock();
        let n = state.targets.values().filter(|t| is_unfinished(t.state)).count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Whether `host_id`'s part of this job is still expected to run or report.
    fn expects(&self, host_id: &str) -> bool {
        self.lock().targets.get(host_id).is_some_and(|t| is_unfinished(t.state))
    }

    /// The host is offline; its part waits for it until `until_ms`. Told once; returns whether
    /// this call did.
    fn mark_queued(&self, host_id: &str, until_ms: i64) -> bool {
        {
            let mut state = self.lock();
            let Some(t) = state.targets.get_mut(host_id).filter(|t| t.state == v1::TargetState::Pending)
            else {
                return false;
            };
            t.state = v1::TargetState::Queued;
            let target = Some(t.target.clone());
            self.record(&mut state, job_event::Kind::Queued(v1::TargetQueued { target, until_ms }));
        }
        self.notify();
        true
    }

    /// The job was handed to the host's stream: a queued part is pending again.
    fn mark_delivered(&self, host_id: &str) {
        if let Some(t) = self.lock().targets.get_mut(host_id).filter(|t| t.state == v1::TargetState::Queued) {
            t.state = v1::TargetState::Pending;
        }
    }

    /// A host's part that finished before the controller restarted, replayed from the store.
    fn restore_finished(&self, detail: &v1::TargetDetail) {
        let Some(target) = detail.target.clone() else { return };
        {
            let mut state = self.lock();
            let Some(t) = state.targets.get_mut(&target.host_id) else { return };
            t.state = detail.state();
            for (stream, data) in
                [(v1::OutputStream::Stdout, &detail.stdout), (v1::OutputStream::Stderr, &detail.stderr)]
            {
                if !data.is_empty() {
                    let output = v1::TargetOutput {
                        target: Some(target.clone()),
                        stream: stream as i32,
                        data: data.clone(),
                    };
                    self.record(&mut state, job_event::Kind::Output(output));
                }
            }
            let finished = v1::TargetFinished {
                target: Some(target),
                state: detail.state,
                result: detail.result.clone(),
            };
            self.record(&mut state, job_event::Kind::Finished(finished));
        }
        self.notify();
    }

    fn mark_dispatched(&self, host_id: &str, report: oneshot::Sender<v1::CommandResult>) {
        if let Some(t) = self.lock().targets.get_mut(host_id) {
            t.dispatched = true;
            t.report = Some(report);
        }
    }

    fn mark_started(&self, host_id: &str) -> bool {
        {
            let mut state = self.lock();
            if !state.targets.get(host_id).is_some_and(|t| t.dispatched) {
                return false;
            }
            // A repeated start is harmless: only a pending target starts.
            self.start_pending(&mut state, host_id, now_ms());
        }
        self.notify();
        true
    }

    /// Marks a pending target running since `started_at_ms` and emits its `started` event.
    fn start_pending(&self, state: &mut LiveState, host_id: &str, started_at_ms: i64) {
        let Some(t) = state
            .targets
            .get_mut(host_id)
            .filter(|t| matches!(t.state, v1::TargetState::Pending | v1::TargetState::Queued))
        else {
            return;
        };
        t.state = v1::TargetState::Running;
        t.started_at_ms = started_at_ms;
        let target = t.target.clone();
        self.record(state, job_event::Kind::Started(v1::TargetStarted { target: Some(target) }));
    }

    fn append_output(&self, host_id: &str, stream: v1::OutputStream, mut data: Vec<u8>) -> bool {
        let cap = usize::try_from(self.output_cap).unwrap_or(usize::MAX);
        {
            let mut state = self.lock();
            let next_event = state.events.len();
            let Some(t) = state.targets.get_mut(host_id).filter(|t| t.dispatched && is_unfinished(t.state))
            else {
                return false;
            };
            let (produced, cut) = match stream {
                v1::OutputStream::Stderr => (&mut t.stderr_bytes, &mut t.stderr_cut),
                _ => (&mut t.stdout_bytes, &mut t.stdout_cut),
            };
            // The agent enforces the cap; this is the controller's own bound on what it keeps.
            data.truncate(cap.saturating_sub(*produced));
            if data.is_empty() {
                return true;
            }
            let granted = self.output.take(data.len());
            if granted < data.len() {
                if !*cut {
                    tracing::warn!(job = self.id, host = %t.target.host_name, "the controller's live output budget (limits.max_live_output_bytes) is spent; this host's output is cut");
                }
                *cut = true;
                data.truncate(granted);
                if data.is_empty() {
                    return true;
                }
            }
            *produced += data.len();
            t.output_events.push(next_event);
            let target = Some(t.target.clone());
            let output = v1::TargetOutput { target, stream: stream as i32, data };
            self.record(&mut state, job_event::Kind::Output(output));
        }
        self.notify();
        true
    }

    fn report_finished(&self, host_id: &str, result: v1::CommandResult) -> bool {
        let mut state = self.lock();
        let Some(t) = state.targets.get_mut(host_id).filter(|t| t.dispatched) else {
            return false;
        };
        let Some(report) = t.report.take() else {
            return false;
        };
        // Agents announce only jobs that run for a while; a quick one's start is its result's
        // time minus its duration, and watchers still see it start before it finishes.
        let ran_ms = i64::try_from(result.duration_ms).unwrap_or(i64::MAX);
        self.start_pending(&mut state, host_id, now_ms().saturating_sub(ran_ms));
        let _ = report.send(result);
        true
    }

    /// Records the host's final state; returns what to store and the event that tells
    /// watchers (sent once it is stored).
    fn settle(&self, host_id: &str, mut finish: Finish) -> (TargetOutcome, v1::TargetFinished) {
        let mut state = self.lock();
        let (target, indices, started_at_ms) = match state.targets.get_mut(host_id) {
            Some(t) => {
                t.state = finish.state;
                t.report = None;
                // Said like the host's own cap: output was produced and not kept.
                finish.result.stdout_truncated |= t.stdout_cut;
                finish.result.stderr_truncated |= t.stderr_cut;
                (t.target.clone(), std::mem::take(&mut t.output_events), t.started_at_ms)
            }
            None => (v1::JobTarget { host_id: host_id.to_owned(), host_name: String::new() }, Vec::new(), 0),
        };
        let (stdout, stderr) = collect_output(&state.events, &indices);
        let finished = v1::TargetFinished {
            target: Some(target),
            state: finish.state as i32,
            result: Some(finish.result.clone()),
        };
        let outcome = TargetOutcome {
            state: finish.state,
            result: finish.result,
            stdout,
            stderr,
            started_at_ms,
            finished_at_ms: now_ms(),
        };
        (outcome, finished)
    }

    fn final_state(&self) -> (v1::JobState, v1::JobSummary) {
        let state = self.lock();
        let summary = summarize(state.targets.values().map(|t| t.state));
        let job_state = if summary.succeeded == summary.total && summary.total > 0 {
            v1::JobState::Succeeded
        } else if self.cancel.is_cancelled() {
            v1::JobState::Cancelled
        } else {
            v1::JobState::Failed
        };
        (job_state, summary)
    }

    fn next_event(&self, index: usize) -> Next {
        let state = self.lock();
        match state.events.get(index) {
            Some(event) => Next::Event(Box::new(event.clone())),
            None if state.completed => Next::End,
            None => Next::Wait,
        }
    }

    /// Replays every event from the first, then follows live until the job completes.
    pub fn events(self: Arc<Self>) -> impl Stream<Item = v1::JobEvent> + Send + 'static {
        let changed = self.changed.subscribe();
        futures::stream::unfold((self, 0usize, changed), |(job, index, mut changed)| async move {
            loop {
                // Mark the current version seen *before* looking, so a push between the look and
                // the wait still wakes us.
                changed.borrow_and_update();
                match job.next_event(index) {
                    Next::Event(event) => return Some((*event, (job, index + 1, changed))),
                    Next::End => return None,
                    Next::Wait => {
                        if changed.changed().await.is_err() {
                            return None;
                        }
                    }
                }
            }
        })
    }
}

/// One target's stdout and stderr, gathered from the output events at `indices`.
fn collect_output(events: &[v1::JobEvent], indices: &[usize]) -> (Vec<u8>, Vec<u8>) {
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    for event in indices.iter().filter_map(|&i| events.get(i)) {
        if let Some(job_event::Kind::Output(out)) = &event.kind {
            match out.stream() {
                v1::OutputStream::Stderr => stderr.extend_from_slice(&out.data),
                _ => stdout.extend_from_slice(&out.data),
            }
        }
    }
    (stdout, stderr)
}

fn is_unfinished(state: v1::TargetState) -> bool {
    matches!(state, v1::TargetState::Pending | v1::TargetState::Running | v1::TargetState::Queued)
}

/// Output of a finished job is replayed in events of at most this many bytes.
const REPLAY_CHUNK: usize = 256 * 1024;

/// The event sequence of a job that finished before this watcher arrived, rebuilt from SQLite.
fn replay_finished(job: &v1::Job, targets: &[v1::TargetDetail]) -> Vec<v1::JobEvent> {
    let event = |kind| v1::JobEvent { job_id: job.id, kind: Some(kind) };
    let mut events = vec![event(job_event::Kind::Accepted(v1::JobAccepted {
        targets: targets.iter().filter_map(|t| t.target.clone()).collect(),
        deadline_ms: job.deadline_ms,
        action: job.action.clone(),
        out_of_scope: Vec::new(),
        queue_until_ms: job.queue_until_ms,
    }))];
    for t in targets {
        for (stream, data) in [(v1::OutputStream::Stdout, &t.stdout), (v1::OutputStream::Stderr, &t.stderr)] {
            // In pieces: a host's output (up to the 64 MiB cap) in one event would not fit in a
            // gRPC message.
            for piece in data.chunks(REPLAY_CHUNK) {
                events.push(event(job_event::Kind::Output(v1::TargetOutput {
                    target: t.target.clone(),
                    stream: stream as i32,
                    data: piece.to_vec(),
                })));
            }
        }
        events.push(event(job_event::Kind::Finished(v1::TargetFinished {
            target: t.target.clone(),
            state: t.state,
            result: t.result.clone(),
        })));
    }
    if !matches!(job.state(), v1::JobState::Running | v1::JobState::PendingApproval) {
        events.push(event(job_event::Kind::Completed(v1::JobCompleted {
            state: job.state,
            summary: job.summary,
        })));
    }
    events
}

/// The event telling watchers a job waits for a human, and how to approve it.
fn approval_required(job_id: u64, expires_at_ms: i64) -> v1::ApprovalRequired {
    v1::ApprovalRequired { expires_at_ms, approve_command: format!("tailopsctl approvals approve {job_id}") }
}

/// An approval decision, as seen by the job's runner.
#[derive(Debug, Clone, Copy)]
struct Decision {
    approved: bool,
    /// The job's state when not approved.
    state: v1::JobState,
}

/// The action as audit arguments.
fn action_json(action: &v1::JobAction) -> serde_json::Value {
    match &action.kind {
        Some(v1::job_action::Kind::Exec(exec)) => json!({"exec": exec.argv}),
        Some(v1::job_action::Kind::ProcessList(list)) => json!({"process_list": {
            "sort": v1::ProcessSort::try_from(list.sort).unwrap_or_default().as_str_name(),
            "limit": list.limit,
        }}),
        Some(v1::job_action::Kind::Operation(op)) => json!({"operation": {
            "name": op.name, "params": op.params, "dry_run": op.dry_run,
        }}),
        None => serde_json::Value::Null,
    }
}
