//! Identity, approvals and audit commands.

use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use tailops_proto::v1::{
    self, audit_client::AuditClient, fleet_client::FleetClient, identity_client::IdentityClient,
};
use tonic::transport::Channel;

use super::render::{self, ago, print_json, rfc3339, table};
use super::{Output, parse_label};

/// Hosts a role is limited to.
#[derive(Debug, Clone, Default, Args)]
pub struct ScopeArgs {
    /// Limit the role to hosts carrying label KEY=VALUE (repeatable: all must match).
    #[arg(long = "scope-label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Limit the role to this host (repeatable).
    #[arg(long = "scope-host", value_name = "NAME")]
    hosts: Vec<String>,
}

impl ScopeArgs {
    fn to_wire(&self) -> Option<v1::HostSelector> {
        if self.labels.is_empty() && self.hosts.is_empty() {
            return None;
        }
        Some(v1::HostSelector {
            all: false,
            labels: self.labels.iter().cloned().collect(),
            hosts: self.hosts.clone(),
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum PrincipalCommand {
    /// Create a one-time invite; the invitee runs the printed `tailopsctl login` line.
    Invite {
        name: String,
        /// admin, operator, viewer or mcp.
        #[arg(long)]
        role: String,
        #[command(flatten)]
        scope: ScopeArgs,
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// List users and bridges.
    Ls,
    /// Refuse every call from NAME at once and close its live streams.
    Disable {
        name: String,
    },
    Enable {
        name: String,
    },
    /// Change NAME's role (and scope; without --scope-* the role covers every host).
    SetRole {
        name: String,
        role: String,
        #[command(flatten)]
        scope: ScopeArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Certificates issued by the controller's CA (unexpired, unless --all).
    Ls {
        /// Only this principal's (spiffe://... URI).
        #[arg(long)]
        principal: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Revoke a certificate: refused from now on, its live streams closed.
    Revoke {
        serial: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// Jobs waiting for a human's approval.
    Ls,
    /// Approve a pending job; it starts at once with its full timeout.
    Approve { id: u64 },
    /// Reject a pending job.
    Reject {
        id: u64,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Audit rows, newest first.
    Ls {
        /// Only rows from the last DURATION (e.g. 24h).
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<Duration>,
        #[arg(long)]
        principal: Option<String>,
        #[arg(long)]
        action: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Recompute the hash chain; exits non-zero and names the first bad row if it was tampered with.
    Verify,
}

fn kind_wire(kind: &str) -> i32 {
    if kind == "bridge" { v1::PrincipalKindProto::Bridge as i32 } else { v1::PrincipalKindProto::User as i32 }
}

fn principal_json(p: &v1::PrincipalInfo) -> Value {
    let kind = if p.kind() == v1::PrincipalKindProto::Bridge { "bridge" } else { "user" };
    json!({
        "id": p.id, "kind": kind, "name": p.name, "role": p.role, "disabled": p.disabled,
        "scope": p.scope.as_ref().map(scope_text), "created_at": rfc3339(p.created_at_ms),
    })
}

fn scope_text(s: &v1::HostSelector) -> String {
    let mut parts: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    parts.extend(s.hosts.iter().cloned());
    parts.join(",")
}

fn print_principal(p: &v1::PrincipalInfo, output: Output) -> anyhow::Result<()> {
    if output == Output::Json {
        return print_json(&principal_json(p));
    }
    let scope = p.scope.as_ref().map_or_else(|| "all hosts".to_owned(), scope_text);
    let state = if p.disabled { "disabled" } else { "enabled" };
    println!("{}  role {}  scope {}  {state}", p.id, p.role, scope);
    Ok(())
}

pub async fn principals(
    channel: Channel,
    kind: &str,
    command: PrincipalCommand,
    output: Output,
) -> anyhow::Result<()> {
    let mut identity = IdentityClient::new(channel);
    match command {
        PrincipalCommand::Invite { name, role, scope, ttl } => {
            let r = identity
                .create_invite(v1::CreateInviteRequest {
                    kind: kind_wire(kind),
                    name,
                    role,
                    scope: scope.to_wire(),
                    ttl_secs: ttl.as_secs().max(1),
                })
                .await?
                .into_inner();
            if output == Output::Json {
                return print_json(&json!({
                    "token": r.token, "principal": r.principal, "expires_at": rfc3339(r.expires_at_ms),
                    "ca_fingerprint": r.ca_fingerprint, "controller_url": r.controller_url,
                }));
            }
            println!(
                "Invite for {} (expires {})",
                r.principal,
                rfc3339(r.expires_at_ms).as_str().unwrap_or("?")
            );
            println!();
            println!("The invitee runs, on their own machine (the key is generated there):");
            println!();
            println!(
                "  TAILOPS_INVITE_TOKEN={} tailopsctl login --controller {} --ca-fingerprint {}",
                r.token, r.controller_url, r.ca_fingerprint
            );
            println!();
            println!("The token is shown only this once.");
        }
        PrincipalCommand::Ls => {
            let all = identity.list_principals(v1::ListPrincipalsRequest {}).await?.into_inner().principals;
            if output == Output::Json {
                return print_json(&Value::Array(all.iter().map(principal_json).collect()));
            }
            let mut t = table(&["KIND", "NAME", "ROLE", "SCOPE", "STATE", "CREATED"]);
            for p in &all {
                let kind = if p.kind() == v1::PrincipalKindProto::Bridge { "bridge" } else { "user" };
                t.add_row(vec![
                    kind.to_owned(),
                    p.name.clone(),
                    p.role.clone(),
                    p.scope.as_ref().map_or_else(|| "all hosts".to_owned(), scope_text),
                    if p.disabled { "disabled".into() } else { "enabled".into() },
                    ago(p.created_at_ms),
                ]);
            }
            println!("{t}");
        }
        PrincipalCommand::Disable { name } => {
            let request = v1::SetPrincipalDisabledRequest { kind: kind_wire(kind), name, disabled: true };
            print_principal(&identity.set_principal_disabled(request).await?.into_inner(), output)?;
        }
        PrincipalCommand::Enable { name } => {
            let request = v1::SetPrincipalDisabledRequest { kind: kind_wire(kind), name, disabled: false };
            print_principal(&identity.set_principal_disabled(request).await?.into_inner(), output)?;
        }
        PrincipalCommand::SetRole { name, role, scope } => {
            let request =
                v1::SetPrincipalRoleRequest { kind: kind_wire(kind), name, role, scope: scope.to_wire() };
            print_principal(&identity.set_principal_role(request).await?.into_inner(), output)?;
        }
    }
    Ok(())
}

pub async fn whoami(channel: Channel, output: Output) -> anyhow::Result<()> {
    let me = IdentityClient::new(channel).who_am_i(v1::WhoAmIRequest {}).await?.into_inner();
    print_principal(&me, output)
}

fn cert_json(c: &v1::CertificateRecord) -> Value {
    json!({
        "serial": c.serial, "principal": c.principal, "issued_at": rfc3339(c.issued_at_ms),
        "not_after": rfc3339(c.not_after_ms), "revoked_at": rfc3339(c.revoked_at_ms),
        "revoked_reason": if c.revoked_reason.is_empty() { Value::Null } else { Value::String(c.revoked_reason.clone()) },
    })
}

pub async fn certs(channel: Channel, command: CertsCommand, output: Output) -> anyhow::Result<()> {
    let mut identity = IdentityClient::new(channel);
    match command {
        CertsCommand::Ls { principal, all } => {
            let request = v1::ListCertificatesRequest {
                principal: principal.unwrap_or_default(),
                include_expired: all,
            };
            let certs = identity.list_certificates(request).await?.into_inner().certificates;
            if output == Output::Json {
                return print_json(&Value::Array(certs.iter().map(cert_json).collect()));
            }
            let mut t = table(&["SERIAL", "PRINCIPAL", "ISSUED", "EXPIRES", "REVOKED"]);
            for c in &certs {
                t.add_row(vec![
                    c.serial.clone(),
                    c.principal.clone(),
                    ago(c.issued_at_ms),
                    rfc3339(c.not_after_ms).as_str().unwrap_or("-").to_owned(),
                    if c.revoked_at_ms > 0 { format!("yes ({})", c.revoked_reason) } else { "no".into() },
                ]);
            }
            println!("{t}");
        }
        CertsCommand::Revoke { serial, reason } => {
            let r = identity
                .revoke_certificate(v1::RevokeCertificateRequest { serial, reason })
                .await?
                .into_inner();
            let cert = r.certificate.unwrap_or_default();
            if output == Output::Json {
                return print_json(
                    &json!({"certificate": cert_json(&cert), "closed_streams": r.closed_streams}),
                );
            }
            println!(
                "revoked {} of {} ({} live stream(s) closed)",
                cert.serial, cert.principal, r.closed_streams
            );
        }
    }
    Ok(())
}

pub async fn list_tokens(channel: Channel, output: Output) -> anyhow::Result<()> {
    let tokens = IdentityClient::new(channel)
        .list_join_tokens(v1::ListJoinTokensRequest {})
        .await?
        .into_inner()
        .tokens;
    if output == Output::Json {
        let rows: Vec<Value> = tokens
            .iter()
            .map(|t| {
                json!({"id": t.id, "labels": t.labels, "created_by": t.created_by, "created_at": rfc3339(t.created_at_ms),
                       "expires_at": rfc3339(t.expires_at_ms), "uses_left": t.uses_left})
            })
            .collect();
        return print_json(&Value::Array(rows));
    }
    let mut t = table(&["ID", "USES LEFT", "EXPIRES", "LABELS", "CREATED BY"]);
    for token in &tokens {
        let labels = token.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
        t.add_row(vec![
            token.id.clone(),
            token.uses_left.to_string(),
            rfc3339(token.expires_at_ms).as_str().unwrap_or("-").to_owned(),
            labels,
            token.created_by.clone(),
        ]);
    }
    println!("{t}");
    Ok(())
}

pub async fn revoke_token(channel: Channel, id: String, output: Output) -> anyhow::Result<()> {
    IdentityClient::new(channel).revoke_join_token(v1::RevokeJoinTokenRequest { id: id.clone() }).await?;
    if output == Output::Json {
        return print_json(&json!({"revoked": id}));
    }
    println!("join token {id} revoked");
    Ok(())
}

pub async fn forget_host(channel: Channel, host: String, output: Output) -> anyhow::Result<()> {
    let r = IdentityClient::new(channel)
        .forget_host(v1::ForgetHostRequest { host: host.clone() })
        .await?
        .into_inner();
    if output == Output::Json {
        return print_json(&json!({"host_id": r.host_id, "revoked_certificates": r.revoked_certificates}));
    }
    println!("forgot {host} ({}); {} certificate(s) revoked", r.host_id, r.revoked_certificates);
    Ok(())
}

pub async fn approvals(channel: Channel, command: ApprovalsCommand, output: Output) -> anyhow::Result<()> {
    let mut fleet = FleetClient::new(channel);
    let decide = |job_id, approve, reason| v1::DecideApprovalRequest { job_id, approve, reason };
    match command {
        ApprovalsCommand::Ls => {
            let approvals = fleet.list_approvals(v1::ListApprovalsRequest {}).await?.into_inner().approvals;
            if output == Output::Json {
                let rows: Vec<Value> = approvals
                    .iter()
                    .map(|a| {
                        let job = a.job.clone().unwrap_or_default();
                        json!({"job_id": job.id, "requested_by": job.requested_by, "requested_via": job.requested_via,
                               "action": render::action_json(job.action.as_ref()),
                               "reason": a.reason, "hosts": a.targets.iter().map(|t| t.host_name.clone()).collect::<Vec<_>>(),
                               "expires_at": rfc3339(a.expires_at_ms)})
                    })
                    .collect();
                return print_json(&Value::Array(rows));
            }
            if approvals.is_empty() {
                println!("No jobs are waiting for approval.");
                return Ok(());
            }
            let mut t = table(&["JOB", "REQUESTED BY", "COMMAND", "HOSTS", "REASON", "EXPIRES"]);
            for a in &approvals {
                let job = a.job.clone().unwrap_or_default();
                t.add_row(vec![
                    job.id.to_string(),
                    render::by_via(&job.requested_by, &job.requested_via),
                    render::action_text(job.action.as_ref()),
                    a.targets.iter().map(|t| t.host_name.clone()).collect::<Vec<_>>().join(","),
                    a.reason.clone(),
                    rfc3339(a.expires_at_ms).as_str().unwrap_or("-").to_owned(),
                ]);
            }
            println!("{t}");
        }
        ApprovalsCommand::Approve { id } => {
            fleet.decide_approval(decide(id, true, String::new())).await?;
            if output == Output::Json {
                return print_json(&json!({"job_id": id, "approved": true}));
            }
            println!("job {id} approved; it is running (follow it with `tailopsctl jobs watch {id}`)");
        }
        ApprovalsCommand::Reject { id, reason } => {
            fleet.decide_approval(decide(id, false, reason)).await?;
            if output == Output::Json {
                return print_json(&json!({"job_id": id, "approved": false}));
            }
            println!("job {id} rejected");
        }
    }
    Ok(())
}

/// Returns whether the command succeeded (verify fails on a broken chain).
pub async fn audit(channel: Channel, command: AuditCommand, output: Output) -> anyhow::Result<bool> {
    let mut audit = AuditClient::new(channel);
    match command {
        AuditCommand::Ls { since, principal, action, limit } => {
            let since_ms = since.map_or(0, |d| {
                tailops_proto::time::now_ms().saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            });
            let request = v1::ListAuditRequest {
                since_ms,
                principal: principal.unwrap_or_default(),
                action: action.unwrap_or_default(),
                limit,
            };
            let entries = audit.list_audit(request).await?.into_inner().entries;
            if output == Output::Json {
                let rows: Vec<Value> = entries
                    .iter()
                    .map(|e| {
                        json!({"seq": e.seq, "at": rfc3339(e.at_ms), "principal": e.principal, "client": e.client,
                               "action": e.action,
                               "targets": e.targets, "arguments": serde_json::from_str::<Value>(&e.arguments_json).unwrap_or(Value::Null),
                               "decision": e.decision, "outcome": e.outcome})
                    })
                    .collect();
                print_json(&Value::Array(rows))?;
                return Ok(true);
            }
            let mut t = table(&["SEQ", "WHEN", "PRINCIPAL", "ACTION", "TARGETS", "DECISION", "OUTCOME"]);
            for e in &entries {
                t.add_row(vec![
                    e.seq.to_string(),
                    ago(e.at_ms),
                    render::by_via(&e.principal, &e.client),
                    e.action.clone(),
                    e.targets.join(","),
                    e.decision.clone(),
                    e.outcome.clone(),
                ]);
            }
            println!("{t}");
            Ok(true)
        }
        AuditCommand::Verify => {
            let r = audit.verify_audit(v1::VerifyAuditRequest {}).await?.into_inner();
            if output == Output::Json {
                print_json(&json!({"intact": r.intact, "rows_checked": r.rows_checked,
                                   "first_bad_seq": r.first_bad_seq, "problem": r.problem}))?;
            } else if r.intact {
                println!("audit log intact: {} rows verified", r.rows_checked);
            } else {
                println!("AUDIT LOG TAMPERED: {} (first bad row: {})", r.problem, r.first_bad_seq);
            }
            Ok(r.intact)
        }
    }
}
