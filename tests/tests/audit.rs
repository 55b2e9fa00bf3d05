//! The audit log: what is recorded, tamper detection by editing the SQLite file directly, rate
//! limits, and secrets that must never appear in logs or audit rows.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::Connection;
use tailops_proto::v1;
use tailops_tests::*;

async fn verify(controller: &TestController) -> v1::VerifyAuditResponse {
    controller.audit().await.verify_audit(v1::VerifyAuditRequest {}).await.expect("verify").into_inner()
}

async fn entries(controller: &TestController, action: &str) -> Vec<v1::AuditEntry> {
    let request = v1::ListAuditRequest { action: action.into(), limit: 1000, ..Default::default() };
    controller.audit().await.list_audit(request).await.expect("list").into_inner().entries
}

async fn db(controller: &TestController) -> sqlx::SqliteConnection {
    let path = controller.data_dir().file(tailops_controller::data_dir::DATABASE);
    sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.expect("open db")
}

#[tokio::test]
async fn jobs_identity_changes_and_denials_are_recorded() {
    let controller = TestController::start().await;
    let _a = controller.agent("a", &[]).await;
    let viewer = controller.principal("user", "val", "viewer", None).await;
    collect_events(
        controller
            .fleet()
            .await
            .run_job(exec_request(all_hosts(), &["echo", "audited"], Duration::from_secs(10)))
            .await
            .expect("job")
            .into_inner(),
    )
    .await;
    let _ = controller.fleet_as(&viewer).await.create_join_token(v1::CreateJoinTokenRequest::default()).await;

    let created = entries(&controller, "job.create").await;
    assert_eq!(created.len(), 1);
    assert!(created[0].principal.ends_with("/user/admin"));
    assert_eq!(created[0].targets, ["a"]);
    assert!(created[0].arguments_json.contains("audited"));
    assert_eq!(entries(&controller, "job.complete").await[0].outcome, "JOB_STATE_SUCCEEDED");
    assert_eq!(entries(&controller, "identity.invite").await.len(), 1);
    assert_eq!(entries(&controller, "enrollment.login").await.len(), 1);
    let denied = entries(&controller, "call").await;
    assert!(
        denied.iter().any(|e| e.decision == "deny"
            && e.principal.ends_with("/user/val")
            && e.arguments_json.contains("CreateJoinToken")),
        "{denied:?}"
    );
    assert!(verify(&controller).await.intact);
    controller.stop().await;
}

/// What an MCP bridge sends on each request: the name and version of its MCP client.
const CLIENT: &str = "claude-code/1.0.3";

/// A process listing: the mcp role runs it without approval.
fn process_list(selector: v1::HostSelector) -> v1::RunJobRequest {
    let list = v1::ProcessListAction { sort: v1::ProcessSort::Memory as i32, limit: 3 };
    v1::RunJobRequest {
        selector: Some(selector),
        action: Some(v1::JobAction { kind: Some(v1::job_action::Kind::ProcessList(list)), elevated: false }),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_bridges_client_is_recorded_in_every_row_it_causes_and_is_covered_by_the_chain() {
    let controller = TestController::start().await;
    let _a = controller.agent("a", &[("env", "prod")]).await;
    let _b = controller.agent("b", &[("env", "lab")]).await;
    let bridge =
        controller.principal("bridge", "assistant", "mcp", Some(label_selector("env", "prod"))).await;
    let mut fleet = controller.fleet_as(&bridge).await;
    let job = fleet.run_job(via(process_list(host_named("a")), CLIENT.as_bytes())).await.expect("job");
    assert_eq!(completed(&collect_events(job.into_inner()).await).state(), v1::JobState::Succeeded);
    // Refused inside the fleet service: host b is outside the bridge's scope.
    let err = fleet.run_job(via(process_list(host_named("b")), CLIENT.as_bytes())).await.expect_err("scope");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    // Refused by the policy layer: join tokens need the admin tier.
    let err = fleet
        .create_join_token(via(v1::CreateJoinTokenRequest::default(), CLIENT.as_bytes()))
        .await
        .expect_err("admin tier");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    let by_bridge = |rows: Vec<v1::AuditEntry>| -> Vec<v1::AuditEntry> {
        rows.into_iter().filter(|e| e.principal == bridge.principal).collect()
    };
    let created = by_bridge(entries(&controller, "job.create").await);
    assert_eq!(created.iter().map(|e| e.decision.as_str()).collect::<Vec<_>>(), ["deny", "allow"]);
    let completed_rows = by_bridge(entries(&controller, "job.complete").await);
    assert_eq!(completed_rows.len(), 1);
    let denied = by_bridge(entries(&controller, "call").await);
    assert!(denied.iter().any(|e| e.arguments_json.contains("CreateJoinToken")), "{denied:?}");
    for row in created.iter().chain(&completed_rows).chain(&denied) {
        assert_eq!(row.client, CLIENT, "{row:?}");
    }
    // The admin's own requests named no client.
    let invites = entries(&controller, "identity.invite").await;
    assert!(invites.iter().all(|e| e.client.is_empty()), "{invites:?}");
    let json = tailopsctl(
        &controller.admin_profile_file().await,
        &["audit", "ls", "--action", "job.complete", "-o", "json"],
    )
    .await;
    assert!(json.status.success(), "{}", text(&json.stderr));
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(json[0]["client"], CLIENT);
    assert!(verify(&controller).await.intact);

    // The client is part of each row's hash: changing, adding or removing it is tampering.
    let mut conn = db(&controller).await;
    let with_client = i64::try_from(created[1].seq).expect("seq");
    let without_client = i64::try_from(invites[0].seq).expect("seq");
    for (seq, forged, original) in
        [(with_client, "a-human/1.0", CLIENT), (with_client, "", CLIENT), (without_client, CLIENT, "")]
    {
        let edit = "UPDATE audit SET client = ? WHERE seq = ?";
        sqlx::query(edit).bind(forged).bind(seq).execute(&mut conn).await.expect("forge");
        let report = verify(&controller).await;
        assert!(!report.intact, "row {seq} with client {forged:?} passed verification");
        assert_eq!(report.first_bad_seq, u64::try_from(seq).expect("seq"));
        assert!(report.problem.contains("altered"), "{}", report.problem);
        sqlx::query(edit).bind(original).bind(seq).execute(&mut conn).await.expect("restore");
        assert!(verify(&controller).await.intact);
    }
    controller.stop().await;
}

fn host_named(name: &str) -> v1::HostSelector {
    v1::HostSelector { hosts: vec![name.to_owned()], ..Default::default() }
}

#[tokio::test]
async fn an_over_long_or_control_character_client_is_sanitized() {
    let controller = TestController::start().await;
    let bridge = controller.principal("bridge", "assistant", "mcp", None).await;
    let mut fleet = controller.fleet_as(&bridge).await;
    // A tab and the 8-bit CSI (U+009B, a terminal escape): both control characters, both
    // accepted in an HTTP/2 header value.
    let mut hostile = b"evil\tclient\xc2\x9b31m".to_vec();
    hostile.extend_from_slice("é".repeat(100).as_bytes());
    for (header, expected) in [
        // 15 bytes, then two-byte characters: the limit falls inside the 57th.
        (hostile.as_slice(), format!("evil?client?31m{}", "é".repeat(56))),
        (b" \t ".as_slice(), String::new()),
    ] {
        let request = via(v1::CreateJoinTokenRequest::default(), header);
        fleet.create_join_token(request).await.expect_err("admin tier");
        let denied = entries(&controller, "call").await;
        let newest = denied.iter().find(|e| e.principal == bridge.principal).expect("the denial is recorded");
        assert_eq!(newest.client, expected);
        assert!(newest.client.len() <= 128);
    }
    assert!(verify(&controller).await.intact);
    controller.stop().await;
}

#[tokio::test]
async fn non_admins_list_only_their_own_audit_rows() {
    let controller = TestController::start().await;
    let bridge = controller.principal("bridge", "assistant", "mcp", None).await;
    let viewer = controller.principal("user", "val", "viewer", None).await;
    for profile in [&bridge, &viewer] {
        let request = via(v1::CreateJoinTokenRequest::default(), CLIENT.as_bytes());
        controller.fleet_as(profile).await.create_join_token(request).await.expect_err("admin tier");
    }

    for profile in [&bridge, &viewer] {
        let mut audit = controller.audit_as(profile).await;
        let mine = audit.list_audit(v1::ListAuditRequest::default()).await.expect("own rows").into_inner();
        let actions: Vec<&str> = mine.entries.iter().map(|e| e.action.as_str()).collect();
        assert!(actions.contains(&"call") && actions.contains(&"enrollment.login"), "{actions:?}");
        assert!(mine.entries.iter().all(|e| e.principal == profile.principal), "{:?}", mine.entries);

        // Naming yourself is the same; naming anyone else is refused, and recorded.
        let named = v1::ListAuditRequest { principal: profile.principal.clone(), ..Default::default() };
        assert_eq!(
            audit.list_audit(named).await.expect("own rows").into_inner().entries.len(),
            mine.entries.len()
        );
        let other =
            v1::ListAuditRequest { principal: controller.admin.principal.clone(), ..Default::default() };
        let err = audit.list_audit(via(other, CLIENT.as_bytes())).await.expect_err("someone else's rows");
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(err.message().contains("only admins"), "{}", err.message());

        // Verifying the chain stays an admin's job.
        let err = audit.verify_audit(v1::VerifyAuditRequest {}).await.expect_err("verify");
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
    }
    let refused = entries(&controller, "audit.list").await;
    assert_eq!(refused.len(), 2);
    assert!(refused.iter().all(|e| e.decision == "deny" && e.client == CLIENT), "{refused:?}");

    // The admin still sees everyone's rows.
    let everyone = entries(&controller, "").await;
    for principal in [&bridge.principal, &viewer.principal, &controller.admin.principal] {
        assert!(everyone.iter().any(|e| e.principal == *principal), "no rows of {principal}");
    }
    controller.stop().await;
}

#[tokio::test]
async fn editing_the_database_is_detected() {
    let controller = TestController::start().await;
    for _ in 0..4 {
        controller.token(&[], 1, Duration::from_secs(60)).await;
    }
    let report = verify(&controller).await;
    assert!(report.intact, "{}", report.problem);
    assert_eq!(report.rows_checked, 4);
    let mut conn = db(&controller).await;

    // Altered content.
    sqlx::query("UPDATE audit SET outcome = 'nothing to see' WHERE seq = 2")
        .execute(&mut conn)
        .await
        .expect("edit");
    let report = verify(&controller).await;
    assert!(!report.intact);
    assert_eq!(report.first_bad_seq, 2);
    assert!(report.problem.contains("altered"), "{}", report.problem);
    sqlx::query("UPDATE audit SET outcome = 'ok' WHERE seq = 2").execute(&mut conn).await.expect("restore");
    assert!(verify(&controller).await.intact);

    // Reordered rows: swap the content of rows 2 and 3.
    sqlx::query("UPDATE audit SET seq = -2 WHERE seq = 2").execute(&mut conn).await.expect("swap");
    sqlx::query("UPDATE audit SET seq = 2 WHERE seq = 3").execute(&mut conn).await.expect("swap");
    sqlx::query("UPDATE audit SET seq = 3 WHERE seq = -2").execute(&mut conn).await.expect("swap");
    let report = verify(&controller).await;
    assert!(!report.intact);
    assert_eq!(report.first_bad_seq, 2);
    sqlx::query("UPDATE audit SET seq = -2 WHERE seq = 2").execute(&mut conn).await.expect("swap back");
    sqlx::query("UPDATE audit SET seq = 2 WHERE seq = 3").execute(&mut conn).await.expect("swap back");
    sqlx::query("UPDATE audit SET seq = 3 WHERE seq = -2").execute(&mut conn).await.expect("swap back");
    assert!(verify(&controller).await.intact);

    // A row appended behind the controller's back, even with a well-formed chain.
    sqlx::query(
        "INSERT INTO audit (seq, at, principal, action, targets, arguments, decision, outcome, prev_hash, hash)
         SELECT seq + 1, at, principal, action, targets, arguments, decision, outcome, hash, hash
         FROM audit WHERE seq = (SELECT max(seq) FROM audit)",
    )
    .execute(&mut conn)
    .await
    .expect("append");
    let report = verify(&controller).await;
    assert!(!report.intact);
    assert_eq!(report.first_bad_seq, 5);
    sqlx::query("DELETE FROM audit WHERE seq = 5").execute(&mut conn).await.expect("remove forged row");
    assert!(verify(&controller).await.intact);

    // A deleted row in the middle.
    sqlx::query("DELETE FROM audit WHERE seq = 3").execute(&mut conn).await.expect("delete");
    let report = verify(&controller).await;
    assert!(!report.intact);
    assert_eq!(report.first_bad_seq, 3);
    assert!(report.problem.contains("missing"), "{}", report.problem);
    controller.stop().await;
}

#[tokio::test]
async fn deleting_the_newest_rows_or_rewriting_the_chain_is_detected() {
    let controller = TestController::start().await;
    for _ in 0..3 {
        controller.token(&[], 1, Duration::from_secs(60)).await;
    }
    assert!(verify(&controller).await.intact);
    let mut conn = db(&controller).await;
    sqlx::query("DELETE FROM audit WHERE seq = 3").execute(&mut conn).await.expect("truncate");
    let report = verify(&controller).await;
    assert!(!report.intact);
    assert_eq!(report.first_bad_seq, 3);
    assert!(report.problem.contains("deleted from the end"), "{}", report.problem);

    // The CLI says so too, and exits non-zero.
    let profile = controller.admin_profile_file().await;
    let out = tokio::process::Command::new(binary("tailopsctl").await)
        .arg("--profile")
        .arg(&profile)
        .args(["audit", "verify"])
        .output()
        .await
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("TAMPERED"));
    controller.stop().await;
}

#[tokio::test]
async fn exec_is_rate_limited_per_principal_with_a_retry_delay() {
    let controller = TestController::start_with(|c| c.rate_limits.exec_per_minute = 2).await;
    let _a = controller.agent("a", &[]).await;
    let mut fleet = controller.fleet().await;
    for _ in 0..2 {
        collect_events(
            fleet
                .run_job(exec_request(all_hosts(), &["true"], Duration::from_secs(5)))
                .await
                .expect("ok")
                .into_inner(),
        )
        .await;
    }
    let limited =
        fleet.run_job(exec_request(all_hosts(), &["true"], Duration::from_secs(5))).await.expect_err("limit");
    assert_eq!(limited.code(), tonic::Code::ResourceExhausted);
    assert!(limited.message().contains("retry in"), "{}", limited.message());
    assert!(limited.metadata().get("retry-after-ms").is_some());
    // Observing is a separate bucket.
    fleet.list_hosts(v1::ListHostsRequest::default()).await.expect("observe still allowed");
    controller.stop().await;
}

#[tokio::test]
async fn enrollment_attempts_are_limited_per_address_and_failures_audited() {
    let controller = TestController::start_with(|c| c.rate_limits.enroll_per_minute_per_address = 3).await;
    let dir = tempfile::tempdir().expect("dir");
    for i in 0..3 {
        let err =
            tailops_agent::enroll(controller.enroll_options(&format!("tops_guess{i}"), "x", dir.path()))
                .await
                .expect_err("bad token");
        assert!(
            matches!(err, tailops_agent::AgentError::Refused(s) if s.code() == tonic::Code::Unauthenticated)
        );
    }
    let err = tailops_agent::enroll(controller.enroll_options("tops_guess4", "x", dir.path()))
        .await
        .expect_err("limited");
    assert!(
        matches!(err, tailops_agent::AgentError::Refused(s) if s.code() == tonic::Code::ResourceExhausted)
    );
    let failures = entries(&controller, "enrollment.enroll").await;
    assert_eq!(failures.iter().filter(|e| e.decision == "deny").count(), 3);
    assert!(failures.iter().all(|e| e.principal.starts_with("anonymous@127.0.0.1")));
    assert!(failures.iter().all(|e| !e.arguments_json.contains("tops_guess")));
    controller.stop().await;
}

/// Everything the controller and agents log in this test process.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn secrets_never_reach_logs_or_audit_rows() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();
    let controller = TestController::start().await;
    let token = controller.token(&[("env", "lab")], 2, Duration::from_secs(60)).await;
    let dir = tempfile::tempdir().expect("dir");
    tailops_agent::enroll(controller.enroll_options(&token, "h1", dir.path())).await.expect("enroll");
    let invite = controller
        .identity()
        .await
        .create_invite(v1::CreateInviteRequest {
            kind: v1::PrincipalKindProto::User as i32,
            name: "sam".into(),
            role: "viewer".into(),
            scope: None,
            ttl_secs: 60,
        })
        .await
        .expect("invite")
        .into_inner();
    let profile = tailopsctl::login::login(tailopsctl::login::LoginOptions {
        controller_url: controller.url.clone(),
        token: invite.token.clone(),
        ca_fingerprint: controller.fingerprint,
    })
    .await
    .expect("login");
    // A failed attempt with a near-miss of the real token.
    let near_miss = format!("{token}x");
    let _ = tailops_agent::enroll(controller.enroll_options(&near_miss, "h2", dir.path())).await;

    let audit = entries(&controller, "").await;
    let audit_text = format!("{audit:?}");
    let logs = String::from_utf8_lossy(&captured.0.lock().expect("lock")).into_owned();
    assert!(logs.contains("host enrolled"), "logs were captured");
    for secret in [&token, &invite.token, &near_miss] {
        assert!(!logs.contains(secret.as_str()), "a token reached the logs");
        assert!(!audit_text.contains(secret.as_str()), "a token reached the audit log");
    }
    for text in [&logs, &audit_text] {
        assert!(!text.contains("PRIVATE KEY"), "key material leaked");
        assert!(!text.contains(profile.key_pem.lines().nth(1).unwrap_or("-")), "key material leaked");
    }
    controller.stop().await;
}
