//! `Fleet`: the admin API (join tokens, hosts, jobs).

use std::collections::HashSet;
use std::pin::Pin;
use std::time::Duration;

use base64::Engine;
use futures::{Stream, StreamExt};
use tailops_proto::v1::{self, fleet_server::Fleet};
use tonic::{Request, Response, Status};

use crate::auth::{Principal, Tier};
use serde_json::json;

use crate::audit::AuditRecord;
use crate::jobs::{JobError, JobRequest, authorised_risk, selector_matches};
use crate::rate_limit::Bucket;
use crate::services::enrollment::hash_secret;
use crate::services::stall_guard::stall_guarded;
use crate::services::{internal, validate_labels, visible_hosts};
use crate::store::NewJoinToken;
use crate::{AppState, now_ms};

/// Join token secrets start with this, so they are recognisable in a secret scanner.
const TOKEN_PREFIX: &str = "tops_";
const DEFAULT_JOB_LIST: u32 = 50;
const MAX_JOB_LIST: u32 = 1000;

#[derive(Debug, Clone)]
pub struct FleetService {
    state: AppState,
}

impl FleetService {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<v1::JobEvent, Status>> + Send>>;

/// A job a scoped principal may not see is reported as not found, so its existence leaks nothing.
fn out_of_scope(id: u64) -> Status {
    Status::not_found(format!("job {id} not found; list jobs with `tailopsctl jobs ls`"))
}

impl FleetService {
    /// Whether the principal may see job `id`. Anyone sees the jobs they asked for. Others' jobs
    /// carry their argv and output, which may hold secrets, so only principals holding the
    /// control tier outright (operators, admins: the people who approve and could run them) see
    /// them, and then only when every host of the job is within their scope. Unknown jobs count
    /// as visible so that the caller reports them as not found.
    async fn may_see_job(&self, principal: &Principal, id: u64) -> Result<bool, Status> {
        let Some((job, targets)) = self.state.store.job(id).await.map_err(internal)? else { return Ok(true) };
        if job.requested_by == principal.uri() {
            return Ok(true);
        }
        if !principal.holds(Tier::Control) {
            return Ok(false);
        }
        if principal.scope.is_none() {
            return Ok(true);
        }
        let hosts = self.state.store.host_keys().await.map_err(internal)?;
        let covered = principal.covered_ids(&hosts);
        Ok(targets.iter().filter_map(|t| t.target.as_ref()).all(|t| covered.contains(t.host_id.as_str())))
    }

    async fn audit_denied(
        &self,
        principal: &Principal,
        action: &str,
        arguments: serde_json::Value,
        why: &str,
    ) {
        let record = AuditRecord::deny(principal.uri(), action, arguments, why).via(principal.client.clone());
        self.state.audit.record(record).await;
    }

    /// Ends the stream when the caller's credentials are revoked.
    /// `events` until the controller stops; then one error telling the watcher how to come back
    /// (the job goes on: agents keep running it and the next start resumes it).
    fn until_shutdown(
        &self,
        job_id: u64,
        events: impl Stream<Item = v1::JobEvent> + Send + 'static,
    ) -> impl Stream<Item = Result<v1::JobEvent, Status>> + Send + 'static {
        let shutdown = self.state.jobs.shutdown_token().clone();
        let stopped = shutdown.clone();
        events.map(Ok).take_until(shutdown.cancelled_owned()).chain(
            futures::stream::once(async move {
                stopped.is_cancelled().then(|| {
                    Status::unavailable(format!(
                        "the controller is shutting down; job {job_id} goes on and resumes when it is back: \
                         `tailopsctl jobs watch {job_id}`"
                    ))
                })
            })
            .filter_map(|stopped| async move { stopped.map(Err) }),
        )
    }

    /// The stream a client gets for job `job_id`: ended when the principal's certificate is
    /// revoked, and when the client stops reading (`stall_guard`).
    fn guarded(
        &self,
        principal: &Principal,
        job_id: u64,
        events: impl Stream<Item = Result<v1::JobEvent, Status>> + Send + 'static,
    ) -> EventStream {
        let stall = Duration::from_secs(self.state.config.network.watch_stall_timeout_secs);
        let events = stall_guarded(job_id, events, stall);
        Box::pin(self.state.revocations.guard(events, principal.uri(), principal.serial.clone()))
    }
}

#[tonic::async_trait]
impl Fleet for FleetService {
    async fn create_join_token(
        &self,
        request: Request<v1::CreateJoinTokenRequest>,
    ) -> Result<Response<v1::CreateJoinTokenResponse>, Status> {
        let principal = Principal::of(&request)?;
        let req = request.into_inner();
        validate_labels(&req.labels)?;
        let timing = &self.state.config.timing;
        let ttl_secs = match req.ttl_secs {
            0 => timing.join_token_default_ttl_secs,
            n if n > timing.join_token_max_ttl_secs => {
                return Err(Status::invalid_argument(format!(
                    "ttl {} exceeds the limit of {}",
                    humantime::format_duration(Duration::from_secs(n)),
                    humantime::format_duration(Duration::from_secs(timing.join_token_max_ttl_secs))
                )));
            }
            n => n,
        };
        let max_uses = self.state.config.limits.max_join_token_uses;
        let uses = match req.uses {
            0 => 1,
            n if n > max_uses => {
                return Err(Status::invalid_argument(format!("uses {n} exceeds the limit of {max_uses}")));
            }
            n => n,
        };
        let secret_bytes: [u8; 32] = rand::random();
        let secret = format!(
            "{TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret_bytes)
        );
        let id = hex::encode(rand::random::<[u8; 6]>());
        let now = now_ms();
        let expires_at_ms =
            now.saturating_add(i64::try_from(ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX));
        self.state
            .store
            .insert_join_token(&NewJoinToken {
                id: id.clone(),
                secret_hash: hash_secret(&secret),
                labels: req.labels.clone(),
                created_by: principal.id.uri(),
                created_at_ms: now,
                expires_at_ms,
                uses,
            })
            .await
            .map_err(internal)?;
        tracing::info!(token_id = %id, by = %principal.id, uses, ttl_secs, "join token created");
        self.state
            .audit
            .record(
                AuditRecord::allow(
                    principal.uri(),
                    "fleet.create_join_token",
                    Vec::new(),
                    json!({"token_id": id, "labels": req.labels, "uses": uses, "ttl_secs": ttl_secs}),
                    "ok",
                )
                .via(principal.client.clone()),
            )
            .await;
        Ok(Response::new(v1::CreateJoinTokenResponse {
            token: secret,
            token_id: id,
            expires_at_ms,
            uses,
            ca_fingerprint: self.state.ca.fingerprint().to_string(),
            controller_url: self.state.public_url.clone(),
        }))
    }

    async fn list_hosts(
        &self,
        request: Request<v1::ListHostsRequest>,
    ) -> Result<Response<v1::ListHostsResponse>, Status> {
        let principal = Principal::of(&request)?;
        let selector = request.into_inner().selector;
        let mut hosts = visible_hosts(&self.state, &principal).await?;
        if let Some(selector) = selector {
            hosts.retain(|h| selector_matches(&selector, h));
        }
        Ok(Response::new(v1::ListHostsResponse { hosts }))
    }

    type RunJobStream = EventStream;

    async fn run_job(
        &self,
        request: Request<v1::RunJobRequest>,
    ) -> Result<Response<Self::RunJobStream>, Status> {
        let principal = Principal::of(&request)?;
        let req = JobRequest::from_wire(principal.clone(), request.into_inner(), &self.state.config.limits)?;
        // The call itself was charged to the observe bucket; the action is charged to its own
        // tier's (and exec's) bucket too, so control and admin work runs at their rates.
        let risk = authorised_risk(&req.action);
        let buckets = [
            (risk.tier == Tier::Control).then_some(Bucket::Control),
            (risk.tier == Tier::Admin).then_some(Bucket::Admin),
            risk.exec.then_some(Bucket::Exec),
        ];
        for bucket in buckets.into_iter().flatten() {
            if let Err(retry) = self.state.limiter.check(&principal.uri(), bucket) {
                return Err(retry.into_status(bucket));
            }
        }
        let job = match self.state.jobs.start(req).await {
            Ok(job) => job,
            Err(e @ JobError::PermissionDenied(_)) => {
                self.audit_denied(&principal, "job.create", json!({}), &e.to_string()).await;
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Response::new(self.guarded(&principal, job.id, self.until_shutdown(job.id, job.events()))))
    }

    type WatchJobStream = EventStream;

    async fn watch_job(
        &self,
        request: Request<v1::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let principal = Principal::of(&request)?;
        let id = request.into_inner().job_id;
        if !self.may_see_job(&principal, id).await? {
            return Err(out_of_scope(id));
        }
        let events = self.state.jobs.watch(id).await?;
        Ok(Response::new(self.guarded(&principal, id, self.until_shutdown(id, events))))
    }

    async fn list_jobs(
        &self,
        request: Request<v1::ListJobsRequest>,
    ) -> Result<Response<v1::ListJobsResponse>, Status> {
        let principal = Principal::of(&request)?;
        let limit = match request.into_inner().limit {
            0 => DEFAULT_JOB_LIST,
            n => n.min(MAX_JOB_LIST),
        };
        let uri = principal.uri();
        let own_only = (!principal.holds(Tier::Control)).then_some(uri.as_str());
        let mut jobs = self.state.store.list_jobs(limit, own_only).await.map_err(internal)?;
        if own_only.is_none() && principal.scope.is_some() {
            let mut visible = Vec::with_capacity(jobs.len());
            for job in jobs {
                if self.may_see_job(&principal, job.id).await? {
                    visible.push(job);
                }
            }
            jobs = visible;
        }
        Ok(Response::new(v1::ListJobsResponse { jobs }))
    }

    async fn get_job(
        &self,
        request: Request<v1::GetJobRequest>,
    ) -> Result<Response<v1::GetJobResponse>, Status> {
        let principal = Principal::of(&request)?;
        let id = request.into_inner().job_id;
        if !self.may_see_job(&principal, id).await? {
            return Err(out_of_scope(id));
        }
        let (job, mut targets) = self.state.store.job(id).await.map_err(internal)?.ok_or_else(|| {
            Status::not_found(format!("job {id} not found; list jobs with `tailopsctl jobs ls`"))
        })?;
        // A running job's hosts are stored when they finish; until then the live view says
        // which are queued or running.
        self.state.jobs.overlay_live_states(id, &mut targets);
        Ok(Response::new(v1::GetJobResponse { job: Some(job), targets }))
    }

    async fn cancel_job(
        &self,
        request: Request<v1::CancelJobRequest>,
    ) -> Result<Response<v1::CancelJobResponse>, Status> {
        let principal = Principal::of(&request)?;
        let id = request.into_inner().job_id;
        if !self.may_see_job(&principal, id).await? {
            return Err(out_of_scope(id));
        }
        // Withdrawing one's own request before it runs changes nothing on any host, so it needs
        // no more than the right to have asked. Stopping a running job (an approved upgrade
        // half done) is a control action: it needs the control tier outright.
        let response = if principal.holds(Tier::Control) {
            self.state.jobs.cancel(id).await?
        } else {
            // Checked and withdrawn in one step, so an approval landing in between cannot turn
            // a withdrawal into stopping a running job.
            match self.state.jobs.withdraw(id, &principal.uri()).await {
                Err(JobError::PermissionDenied(_)) => {
                    let why = "without the control tier, only the job's requester may cancel it, and only \
                               while it waits for approval";
                    self.audit_denied(&principal, "job.cancel", json!({"job_id": id}), why).await;
                    return Err(Status::permission_denied(why));
                }
                other => other?,
            }
        };
        tracing::info!(job = id, by = %principal.id, "job cancel");
        self.state
            .audit
            .record(
                AuditRecord::allow(
                    principal.uri(),
                    "job.cancel",
                    Vec::new(),
                    json!({"job_id": id, "cancelled_targets": response.cancelled_targets}),
                    if response.already_finished { "already finished" } else { "ok" },
                )
                .via(principal.client.clone()),
            )
            .await;
        Ok(Response::new(response))
    }

    async fn list_approvals(
        &self,
        request: Request<v1::ListApprovalsRequest>,
    ) -> Result<Response<v1::ListApprovalsResponse>, Status> {
        let principal = Principal::of(&request)?;
        let pending =
            self.state.store.jobs_in_state(v1::JobState::PendingApproval).await.map_err(internal)?;
        let hosts = self.state.store.host_keys().await.map_err(internal)?;
        // Hosts deleted since the job was created no longer restrict who sees it.
        let uncovered: HashSet<&str> =
            hosts.iter().filter(|h| !principal.covers(*h)).map(|h| h.id.as_str()).collect();
        let uri = principal.uri();
        let sees_others = principal.holds(Tier::Control);
        let approvals = pending
            .into_iter()
            // Without the control tier, only one's own requests (M4: others' argv stays private).
            .filter(|p| sees_others || p.job.requested_by == uri)
            // A scoped principal sees the approvals whose hosts it covers.
            .filter(|p| {
                p.targets
                    .iter()
                    .filter_map(|t| t.target.as_ref())
                    .all(|t| !uncovered.contains(t.host_id.as_str()))
            })
            .map(|p| v1::Approval {
                reason: p.job.reason.clone(),
                targets: p.targets.iter().filter_map(|t| t.target.clone()).collect(),
                expires_at_ms: p.approval_expires_at_ms,
                job: Some(p.job),
            })
            .collect();
        Ok(Response::new(v1::ListApprovalsResponse { approvals }))
    }

    async fn decide_approval(
        &self,
        request: Request<v1::DecideApprovalRequest>,
    ) -> Result<Response<v1::DecideApprovalResponse>, Status> {
        let principal = Principal::of(&request)?;
        let req = request.into_inner();
        if !self.may_see_job(&principal, req.job_id).await? {
            return Err(out_of_scope(req.job_id));
        }
        let job = match self.state.jobs.decide(req.job_id, &principal, req.approve, &req.reason).await {
            Ok(job) => job,
            Err(e @ JobError::PermissionDenied(_)) => {
                let action = if req.approve { "approval.approve" } else { "approval.reject" };
                self.audit_denied(&principal, action, json!({"job_id": req.job_id}), &e.to_string()).await;
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Response::new(v1::DecideApprovalResponse { job: Some(job) }))
    }
}
