//! Who may call what, proven over real mutual-TLS connections to a real controller.

use std::time::Duration;

use prost::Message;
use tailops_controller::auth::{Access, POLICY, Tier, access_for};
use tailops_pki::{CertificateAuthority, PrincipalId, PrincipalKind};
use tailops_proto::v1;
use tailops_tests::*;
use tailopsctl::Profile;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Every method of every TailOps service, as `/package.Service/Method`, from the descriptors.
fn all_tailops_methods() -> Vec<String> {
    let fds =
        prost_types::FileDescriptorSet::decode(tailops_proto::FILE_DESCRIPTOR_SET).expect("descriptors");
    let mut methods = Vec::new();
    for file in fds.file {
        for service in &file.service {
            for method in &service.method {
                methods.push(format!("/{}.{}/{}", file.package(), service.name(), method.name()));
            }
        }
    }
    methods
}

/// Calls `path` with an empty message and returns the status code (Ok counts as `Code::Ok`).
async fn call(channel: Channel, path: &str) -> tonic::Code {
    let mut grpc = tonic::client::Grpc::new(channel);
    if let Err(status) = grpc.ready().await {
        return tonic::Status::from_error(Box::new(status)).code();
    }
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let path = http::uri::PathAndQuery::try_from(path).expect("path");
    match grpc.unary(tonic::Request::new(()), path, codec).await {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    }
}

fn tls_channel(url: &str, ca_pem: &str, identity: Option<(&str, &str)>) -> Channel {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    if let Some((cert, key)) = identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(url.to_owned())
        .expect("url")
        .tls_config(tls)
        .expect("tls")
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy()
}

#[test]
fn every_method_has_a_policy_entry() {
    for method in all_tailops_methods() {
        assert!(access_for(&method).is_some(), "{method} has no entry in the policy table");
    }
    assert!(access_for("/tailops.v1.Fleet/NoSuchMethod").is_none());
    assert_eq!(access_for("/tailops.v1.Enrollment/Enroll"), Some(Access::Anyone));
}

#[tokio::test]
async fn every_method_refuses_the_wrong_kinds_of_principal() {
    let controller = TestController::start().await;
    let agent = controller.agent("a", &[]).await;
    let agent_state = tailops_agent::AgentState::load(agent.state_dir.path()).await.expect("agent state");
    let ca = controller.admin.ca_pem.clone();

    let no_cert = || tls_channel(&controller.url, &ca, None);
    let as_agent = || tls_channel(&controller.url, &ca, Some((&agent_state.cert_pem, &agent_state.key_pem)));
    let as_admin =
        || tls_channel(&controller.url, &ca, Some((&controller.admin.cert_pem, &controller.admin.key_pem)));
    let viewer = controller.principal("user", "viewer1", "viewer", None).await;
    let bridge = controller.principal("bridge", "mcp1", "mcp", None).await;
    let operator = controller.principal("user", "operator1", "operator", None).await;
    let as_viewer = || tls_channel(&controller.url, &ca, Some((&viewer.cert_pem, &viewer.key_pem)));
    let as_bridge = || tls_channel(&controller.url, &ca, Some((&bridge.cert_pem, &bridge.key_pem)));
    let as_operator = || tls_channel(&controller.url, &ca, Some((&operator.cert_pem, &operator.key_pem)));
    // A revoked admin, and an "admin" from a foreign CA.
    let revoked = controller.principal("user", "revoked1", "admin", None).await;
    let serial = tailops_pki::CertificateInfo::from_pem(&revoked.cert_pem).expect("cert").serial;
    let revoke = v1::RevokeCertificateRequest { serial, reason: "test".into() };
    controller.identity().await.revoke_certificate(revoke).await.expect("revoke");
    let as_revoked = || tls_channel(&controller.url, &ca, Some((&revoked.cert_pem, &revoked.key_pem)));
    let foreign_ca = CertificateAuthority::generate("test.tailops").expect("foreign ca");
    let foreign_admin = PrincipalId::new("test.tailops", PrincipalKind::User, "admin").expect("id");
    let (foreign_cert, foreign_key) =
        foreign_ca.issue_client_with_new_key(&foreign_admin, Duration::from_secs(3600)).expect("cert");
    let as_foreign = || tls_channel(&controller.url, &ca, Some((&foreign_cert.pem, &foreign_key)));

    let mut checked = 0;
    for (method, access) in POLICY {
        match access {
            Access::Anyone => {}
            Access::Agent => {
                assert_eq!(
                    call(no_cert(), method).await,
                    tonic::Code::Unauthenticated,
                    "{method} without a cert"
                );
                assert_eq!(
                    call(as_admin(), method).await,
                    tonic::Code::PermissionDenied,
                    "{method} as admin"
                );
                checked += 1;
            }
            Access::Principal(tier) => {
                let denied = tonic::Code::PermissionDenied;
                assert_eq!(
                    call(no_cert(), method).await,
                    tonic::Code::Unauthenticated,
                    "{method} without a cert"
                );
                assert_eq!(call(as_agent(), method).await, denied, "{method} as agent");
                assert_eq!(
                    call(as_revoked(), method).await,
                    tonic::Code::Unauthenticated,
                    "{method} revoked"
                );
                assert_ne!(call(as_foreign(), method).await, tonic::Code::Ok, "{method} with a foreign CA");
                if *tier > Tier::Observe {
                    assert_eq!(call(as_viewer(), method).await, denied, "{method} as viewer");
                }
                if *tier == Tier::Admin {
                    assert_eq!(call(as_bridge(), method).await, denied, "{method} as mcp bridge");
                    assert_eq!(call(as_operator(), method).await, denied, "{method} as operator");
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 8, "only {checked} methods were checked");
    // A method outside the table is denied even to the admin.
    assert_eq!(call(as_admin(), "/tailops.v1.Fleet/NoSuchMethod").await, tonic::Code::PermissionDenied);
    controller.stop().await;
}

#[tokio::test]
async fn a_certificate_from_a_foreign_ca_is_refused() {
    let controller = TestController::start().await;
    let foreign = CertificateAuthority::generate("test.tailops").expect("foreign ca");
    let admin = PrincipalId::new("test.tailops", PrincipalKind::User, "admin").expect("id");
    let (cert, key) = foreign.issue_client_with_new_key(&admin, Duration::from_secs(3600)).expect("cert");
    assert!(refused_with(&controller, &cert.pem, &key).await, "a foreign-CA client certificate was accepted");
    controller.stop().await;
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let controller = TestController::start().await;
    let ca = controller.data_dir().load_ca("test.tailops").await.expect("ca");
    let admin = PrincipalId::new("test.tailops", PrincipalKind::User, "admin").expect("id");
    // Lifetime zero: valid from five minutes ago (skew allowance) until now.
    let (cert, key) = ca.issue_client_with_new_key(&admin, Duration::ZERO).expect("cert");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(refused_with(&controller, &cert.pem, &key).await, "an expired client certificate was accepted");
    controller.stop().await;
}

#[tokio::test]
async fn a_valid_certificate_unknown_to_the_database_is_refused() {
    let controller = TestController::start().await;
    // Signed by the real CA but never recorded: e.g. a leaked CA key, or a restored old backup.
    let ca = controller.data_dir().load_ca("test.tailops").await.expect("ca");
    let admin = PrincipalId::new("test.tailops", PrincipalKind::User, "admin").expect("id");
    let (cert, key) = ca.issue_client_with_new_key(&admin, Duration::from_secs(3600)).expect("cert");
    let profile = Profile { cert_pem: cert.pem, key_pem: key, ..controller.admin.clone() };
    let channel = tailopsctl::connect(&profile).await.expect("TLS itself succeeds");
    let status = v1::fleet_client::FleetClient::new(channel)
        .list_hosts(v1::ListHostsRequest::default())
        .await
        .expect_err("unknown serial");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    controller.stop().await;
}

#[tokio::test]
async fn plaintext_is_refused() {
    let controller = TestController::start().await;
    let channel = Endpoint::from_shared(format!("http://127.0.0.1:{}", controller.addr.port()))
        .expect("url")
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy();
    let result =
        v1::fleet_client::FleetClient::new(channel.clone()).list_hosts(v1::ListHostsRequest::default()).await;
    assert!(result.is_err(), "plaintext call succeeded");
    let result =
        v1::enrollment_client::EnrollmentClient::new(channel).enroll(v1::EnrollRequest::default()).await;
    assert!(result.is_err(), "plaintext enrollment succeeded");
    controller.stop().await;
}

#[tokio::test]
async fn health_is_open_and_reflection_is_for_admins_only() {
    let controller = TestController::start().await;
    let ca = controller.admin.ca_pem.clone();
    let no_cert = tls_channel(&controller.url, &ca, None);
    let health = tonic_health::pb::health_client::HealthClient::new(no_cert.clone())
        .check(tonic_health::pb::HealthCheckRequest { service: "tailops.v1.Fleet".into() })
        .await
        .expect("health without a client certificate")
        .into_inner();
    assert_eq!(health.status(), tonic_health::pb::health_check_response::ServingStatus::Serving);

    let path = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
    assert_eq!(call(no_cert, path).await, tonic::Code::Unauthenticated);
    controller.stop().await;
}

/// Calls ListHosts with the given client identity; true if refused (at TLS or by the server).
async fn refused_with(controller: &TestController, cert_pem: &str, key_pem: &str) -> bool {
    let channel = tls_channel(&controller.url, &controller.admin.ca_pem, Some((cert_pem, key_pem)));
    v1::fleet_client::FleetClient::new(channel).list_hosts(v1::ListHostsRequest::default()).await.is_err()
}

#[tokio::test]
async fn a_leaf_cannot_act_as_a_ca_and_the_ca_cannot_act_as_a_leaf() {
    let controller = TestController::start().await;
    let agent = controller.agent("a", &[]).await;
    let state = tailops_agent::AgentState::load(agent.state_dir.path()).await.expect("state");

    // Sign an "admin" certificate with the agent's leaf key, presenting the leaf as intermediate.
    let leaf_key = rcgen::KeyPair::from_pem(&state.key_pem).expect("leaf key");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&state.cert_pem, leaf_key).expect("issuer");
    let forged_key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.subject_alt_names =
        vec![rcgen::SanType::URI("spiffe://test.tailops/user/admin".try_into().expect("uri"))];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let forged = params.signed_by(&forged_key, &issuer).expect("forged");
    let chain = format!("{}{}", forged.pem(), state.cert_pem);
    assert!(refused_with(&controller, &chain, &forged_key.serialize_pem()).await, "leaf acted as a CA");

    // The CA certificate itself as a client certificate.
    let data = controller.data_dir();
    let ca_cert = data.read(tailops_controller::data_dir::CA_CERT).await.expect("ca cert");
    let ca_key = data.read(tailops_controller::data_dir::CA_KEY).await.expect("ca key");
    assert!(refused_with(&controller, &ca_cert, &ca_key).await, "the CA acted as a leaf");
    controller.stop().await;
}

#[tokio::test]
async fn a_revoked_user_certificate_is_refused() {
    let controller = TestController::start().await;
    let ops = controller.principal("user", "ops", "operator", None).await;
    let serial = tailops_pki::CertificateInfo::from_pem(&ops.cert_pem).expect("cert").serial;
    controller.fleet_as(&ops).await.list_hosts(v1::ListHostsRequest::default()).await.expect("works before");
    controller
        .identity()
        .await
        .revoke_certificate(v1::RevokeCertificateRequest { serial, reason: "laptop lost".into() })
        .await
        .expect("revoke");
    let err = controller
        .fleet_as(&ops)
        .await
        .list_hosts(v1::ListHostsRequest::default())
        .await
        .expect_err("revoked");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    controller.stop().await;
}

#[tokio::test]
async fn an_agent_cannot_report_results_for_another_hosts_job() {
    use tailops_proto::v1::{agent_message, controller_message};

    let controller = TestController::start().await;
    let impostor = controller.agent("impostor", &[("role", "a")]).await;
    let _victim = controller.agent("victim", &[("role", "b")]).await;
    let state = tailops_agent::AgentState::load(impostor.state_dir.path()).await.expect("state");

    let mut stream = controller
        .fleet()
        .await
        .run_job(exec_request(
            label_selector("role", "b"),
            &["sh", "-c", "sleep 1; echo real"],
            Duration::from_secs(10),
        ))
        .await
        .expect("job")
        .into_inner();
    let mut events = Vec::new();
    let job_id = loop {
        let event = stream.message().await.expect("stream").expect("event");
        let started = matches!(event.kind, Some(v1::job_event::Kind::Started(_)));
        let id = event.job_id;
        events.push(event);
        if started {
            break id;
        }
    };

    // The impostor opens its own link with its own (valid) certificate and reports for the job.
    let channel = tls_channel(&controller.url, &state.ca_pem, Some((&state.cert_pem, &state.key_pem)));
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let msg = |kind| v1::AgentMessage { kind: Some(kind) };
    tx.send(msg(agent_message::Kind::Hello(v1::Hello::default()))).await.expect("send");
    let mut inbound = v1::agent_link_client::AgentLinkClient::new(channel)
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("link")
        .into_inner();
    let welcome = inbound.message().await.expect("welcome").expect("message");
    assert!(matches!(welcome.kind, Some(controller_message::Kind::Welcome(_))));
    let forged_output = v1::JobOutput { job_id, stream: 1, seq: 0, data: b"forged\n".to_vec() };
    let forged_result = v1::CommandResult { exit_code: Some(42), ..Default::default() };
    tx.send(msg(agent_message::Kind::JobOutput(forged_output))).await.expect("send");
    tx.send(msg(agent_message::Kind::JobFinished(v1::JobFinished { job_id, result: Some(forged_result) })))
        .await
        .expect("send");

    events.extend(collect_events(stream).await);
    assert_eq!(output_of(&events, "victim", v1::OutputStream::Stdout), "real\n");
    let finished = finished_by_host(&events);
    assert_eq!(finished.keys().collect::<Vec<_>>(), ["victim"]);
    assert_eq!(finished["victim"].result.as_ref().and_then(|r| r.exit_code), Some(0));
    controller.stop().await;
}
