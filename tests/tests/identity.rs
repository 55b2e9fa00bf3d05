//! Principals, roles, scopes and revocation over real mutual TLS.

use std::time::Duration;

use tailops_proto::v1::{self, OutputStream};
use tailops_tests::*;

fn user_invite(name: &str, role: &str) -> v1::CreateInviteRequest {
    v1::CreateInviteRequest {
        kind: v1::PrincipalKindProto::User as i32,
        name: name.into(),
        role: role.into(),
        scope: None,
        ttl_secs: 60,
    }
}

fn staging_scope() -> v1::HostSelector {
    v1::HostSelector { labels: [("env".to_owned(), "staging".to_owned())].into(), ..Default::default() }
}

#[tokio::test]
async fn an_invited_user_logs_in_with_a_key_made_locally() {
    let controller = TestController::start().await;
    let alice = controller.principal("user", "alice", "viewer", None).await;
    assert!(alice.principal.ends_with("/user/alice"), "{}", alice.principal);
    let me = tailops_proto::v1::identity_client::IdentityClient::new(
        tailopsctl::connect(&alice).await.expect("tls"),
    )
    .who_am_i(v1::WhoAmIRequest {})
    .await
    .expect("whoami")
    .into_inner();
    assert_eq!(me.role, "viewer");

    // The invite was single use.
    let invite = controller
        .identity()
        .await
        .create_invite(user_invite("bob", "operator"))
        .await
        .expect("invite")
        .into_inner();
    let options = tailopsctl::login::LoginOptions {
        controller_url: controller.url.clone(),
        token: invite.token.clone(),
        ca_fingerprint: controller.fingerprint,
    };
    tailopsctl::login::login(options.clone()).await.expect("first login");
    let again = tailopsctl::login::login(options).await.expect_err("second login");
    assert!(
        matches!(again, tailopsctl::login::LoginError::Refused(s) if s.code() == tonic::Code::Unauthenticated)
    );

    // Inviting an existing name or an unknown role is refused clearly.
    let mut identity = controller.identity().await;
    let dup = identity.create_invite(user_invite("alice", "viewer")).await.expect_err("exists");
    assert_eq!(dup.code(), tonic::Code::AlreadyExists);
    let bad_role = identity.create_invite(user_invite("carol", "root")).await.expect_err("role");
    assert_eq!(bad_role.code(), tonic::Code::InvalidArgument);
    controller.stop().await;
}

#[tokio::test]
async fn a_viewer_observes_but_cannot_exec_or_administer() {
    let controller = TestController::start().await;
    let _a = controller.agent("a", &[]).await;
    let viewer = controller.principal("user", "val", "viewer", None).await;
    let mut fleet = controller.fleet_as(&viewer).await;
    let hosts = fleet.list_hosts(v1::ListHostsRequest::default()).await.expect("observe").into_inner().hosts;
    assert_eq!(hosts.len(), 1);
    let exec =
        fleet.run_job(exec_request(all_hosts(), &["true"], Duration::from_secs(5))).await.expect_err("exec");
    assert_eq!(exec.code(), tonic::Code::PermissionDenied);
    let token = fleet.create_join_token(v1::CreateJoinTokenRequest::default()).await.expect_err("admin tier");
    assert_eq!(token.code(), tonic::Code::PermissionDenied);
    // Someone else's job is invisible without the control tier (its argv and output may hold
    // secrets), so cancelling it reads exactly like cancelling an unknown one.
    let mut admin_job = controller
        .fleet()
        .await
        .run_job(exec_request(all_hosts(), &["sleep", "5"], Duration::from_secs(10)))
        .await
        .expect("admin job")
        .into_inner();
    let job_id = admin_job.message().await.expect("event").expect("accepted").job_id;
    let cancel = fleet.cancel_job(v1::CancelJobRequest { job_id }).await.expect_err("control tier");
    assert_eq!(cancel.code(), tonic::Code::NotFound);
    let unknown = fleet.cancel_job(v1::CancelJobRequest { job_id: 999 }).await.expect_err("no such job");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    controller.stop().await;
}

#[tokio::test]
async fn a_scoped_operator_reaches_only_its_hosts_and_is_told() {
    let controller = TestController::start().await;
    let _s1 = controller.agent("stage1", &[("env", "staging")]).await;
    let _p1 = controller.agent("prod1", &[("env", "prod")]).await;
    let operator = controller.principal("user", "olga", "operator", Some(staging_scope())).await;
    let mut fleet = controller.fleet_as(&operator).await;

    let hosts = fleet.list_hosts(v1::ListHostsRequest::default()).await.expect("list").into_inner().hosts;
    assert_eq!(hosts.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(), ["stage1"]);

    let events = collect_events(
        fleet
            .run_job(exec_request(all_hosts(), &["echo", "hi"], Duration::from_secs(10)))
            .await
            .expect("job")
            .into_inner(),
    )
    .await;
    let Some(v1::job_event::Kind::Accepted(accepted)) = &events[0].kind else {
        panic!("first event is accepted")
    };
    assert_eq!(accepted.out_of_scope, ["prod1"]);
    assert_eq!(finished_by_host(&events).keys().collect::<Vec<_>>(), ["stage1"]);
    assert_eq!(output_of(&events, "stage1", OutputStream::Stdout), "hi\n");

    // Jobs on hosts outside the scope are invisible and cannot be cancelled.
    let admin_job = collect_events(
        controller
            .fleet()
            .await
            .run_job(exec_request(
                label_selector("env", "prod"),
                &["echo", "secret"],
                Duration::from_secs(10),
            ))
            .await
            .expect("admin job")
            .into_inner(),
    )
    .await[0]
        .job_id;
    let hidden = fleet.get_job(v1::GetJobRequest { job_id: admin_job }).await.expect_err("hidden");
    assert_eq!(hidden.code(), tonic::Code::NotFound);
    let cancel =
        fleet.cancel_job(v1::CancelJobRequest { job_id: admin_job }).await.expect_err("not cancellable");
    assert_eq!(cancel.code(), tonic::Code::NotFound);
    let listed = fleet.list_jobs(v1::ListJobsRequest::default()).await.expect("jobs").into_inner().jobs;
    assert!(listed.iter().all(|j| j.id != admin_job), "an out-of-scope job was listed");
    assert_eq!(listed.len(), 1, "the operator's own job is listed");

    let outside = v1::HostSelector { hosts: vec!["prod1".into()], ..Default::default() };
    let err =
        fleet.run_job(exec_request(outside, &["true"], Duration::from_secs(5))).await.expect_err("outside");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    controller.stop().await;
}

#[tokio::test]
async fn disabling_a_user_refuses_calls_and_closes_its_streams_at_once() {
    let controller = TestController::start().await;
    let _a = controller.agent("a", &[]).await;
    let operator = controller.principal("user", "otto", "operator", None).await;
    let mut fleet = controller.fleet_as(&operator).await;
    let mut stream = fleet
        .run_job(exec_request(all_hosts(), &["sleep", "30"], Duration::from_secs(60)))
        .await
        .expect("job")
        .into_inner();
    stream.message().await.expect("accepted").expect("event");

    controller
        .identity()
        .await
        .set_principal_disabled(v1::SetPrincipalDisabledRequest {
            kind: v1::PrincipalKindProto::User as i32,
            name: "otto".into(),
            disabled: true,
        })
        .await
        .expect("disable");

    // The open stream ends within 5 s with UNAUTHENTICATED.
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status.code()),
            }
        }
    })
    .await
    .expect("stream closed within 5 s");
    assert_eq!(closed, Some(tonic::Code::Unauthenticated));
    let denied = fleet.list_hosts(v1::ListHostsRequest::default()).await.expect_err("disabled");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);

    // Re-enabled, the same credentials work again.
    controller
        .identity()
        .await
        .set_principal_disabled(v1::SetPrincipalDisabledRequest {
            kind: v1::PrincipalKindProto::User as i32,
            name: "otto".into(),
            disabled: false,
        })
        .await
        .expect("enable");
    fleet.list_hosts(v1::ListHostsRequest::default()).await.expect("enabled again");
    controller.stop().await;
}

#[tokio::test]
async fn revoking_an_agent_certificate_closes_its_stream_and_refuses_reconnects() {
    let controller = TestController::start().await;
    let agent = controller.agent("victim", &[]).await;
    let state = tailops_agent::AgentState::load(agent.state_dir.path()).await.expect("state");
    let serial = tailops_pki::CertificateInfo::from_pem(&state.cert_pem).expect("cert").serial;
    let response = controller
        .identity()
        .await
        .revoke_certificate(v1::RevokeCertificateRequest { serial: serial.clone(), reason: "test".into() })
        .await
        .expect("revoke")
        .into_inner();
    assert_eq!(response.closed_streams, 1);
    controller.wait_online("victim", false).await;
    // The agent keeps retrying with the revoked certificate and stays out.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!controller.host("victim").await.expect("host").online);
    let certs = controller
        .identity()
        .await
        .list_certificates(v1::ListCertificatesRequest { principal: String::new(), include_expired: false })
        .await
        .expect("certs")
        .into_inner()
        .certificates;
    assert!(certs.iter().any(|c| c.serial == serial && c.revoked_at_ms > 0 && c.revoked_reason == "test"));
    controller.stop().await;
}

#[tokio::test]
async fn a_forgotten_host_is_cut_off_and_its_name_freed() {
    let controller = TestController::start().await;
    let _agent = controller.agent("old", &[]).await;
    let forgotten = controller
        .identity()
        .await
        .forget_host(v1::ForgetHostRequest { host: "old".into() })
        .await
        .expect("forget")
        .into_inner();
    assert_eq!(forgotten.revoked_certificates, 1);
    assert!(controller.host("old").await.is_none());
    // The name can be enrolled again by a new host.
    let _new = controller.agent("old", &[]).await;
    controller.stop().await;
}

#[tokio::test]
async fn join_tokens_can_be_listed_and_revoked() {
    let controller = TestController::start().await;
    let token = controller.token(&[("env", "lab")], 3, Duration::from_secs(600)).await;
    let mut identity = controller.identity().await;
    let tokens =
        identity.list_join_tokens(v1::ListJoinTokensRequest {}).await.expect("ls").into_inner().tokens;
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].uses_left, 3);
    identity
        .revoke_join_token(v1::RevokeJoinTokenRequest { id: tokens[0].id.clone() })
        .await
        .expect("revoke");
    let dir = tempfile::tempdir().expect("dir");
    let err = tailops_agent::enroll(controller.enroll_options(&token, "late", dir.path()))
        .await
        .expect_err("revoked");
    assert!(matches!(err, tailops_agent::AgentError::Refused(s) if s.code() == tonic::Code::Unauthenticated));
    controller.stop().await;
}

#[tokio::test]
async fn admins_cannot_lock_themselves_out() {
    let controller = TestController::start().await;
    let mut identity = controller.identity().await;
    let err = identity
        .set_principal_disabled(v1::SetPrincipalDisabledRequest {
            kind: v1::PrincipalKindProto::User as i32,
            name: "admin".into(),
            disabled: true,
        })
        .await
        .expect_err("self");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    controller.stop().await;
}

/// A copy of an agent's identity taken before a renewal: once the renewed certificate is in use,
/// the copy is refused, the attempt is flagged, and with `lock_on_clone` the identity is locked.
#[tokio::test]
async fn a_copied_agent_identity_is_refused_flagged_and_locked() {
    let controller = TestController::start_with(|c| {
        // Short enough that the agent renews as soon as it connects.
        c.timing.agent_cert_lifetime_secs = 60;
        c.security.lock_on_clone = true;
    })
    .await;
    let token = controller.token(&[], 1, Duration::from_secs(60)).await;
    let dir = tempfile::tempdir().expect("dir");
    tailops_agent::enroll(controller.enroll_options(&token, "cloned", dir.path())).await.expect("enroll");
    let copy = tailops_agent::AgentState::load(dir.path()).await.expect("copy of the identity");

    let mut agent = TestAgent::start(dir, "cloned");
    controller.wait_online("cloned", true).await;
    // Wait for the renewal, then reconnect so the renewed certificate is the one in use.
    for _ in 0..100 {
        let now = tailops_agent::AgentState::load(agent.state_dir.path()).await.expect("state");
        if now.cert_pem != copy.cert_pem {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent.pause().await;
    agent.resume();
    controller.wait_online("cloned", true).await;

    // The copy tries to use the link.
    let channel = tonic::transport::Endpoint::from_shared(controller.url.clone())
        .expect("url")
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&copy.ca_pem))
                .identity(tonic::transport::Identity::from_pem(&copy.cert_pem, &copy.key_pem)),
        )
        .expect("tls")
        .connect_lazy();
    let (_tx, rx) = tokio::sync::mpsc::channel(1);
    let refused = v1::agent_link_client::AgentLinkClient::new(channel)
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect_err("the copy is refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert!(refused.message().contains("superseded"), "{}", refused.message());

    // Locked: the genuine agent is cut off too, until an admin re-enrolls the host.
    controller.wait_online("cloned", false).await;
    let flagged = controller
        .audit()
        .await
        .list_audit(v1::ListAuditRequest { action: "identity.clone_suspected".into(), ..Default::default() })
        .await
        .expect("audit")
        .into_inner()
        .entries;
    assert_eq!(flagged.len(), 1);
    assert!(flagged[0].outcome.contains("locked"), "{}", flagged[0].outcome);
    controller.stop().await;
}
