//! Identity edges (issue 13, point 5): certificate expiry per call (M3), a second holder of an
//! agent identity (M7), revocation of renewals and the live-certificate cap (L1), withdrawing a
//! principal's jobs when its standing changes (L2), host names that are not ids and labels from
//! the token only (L3), host-reported text limits (L4), and server-certificate rotation (L15).
//! Everything runs over real mutual TLS against a real controller and SQLite.

use std::net::IpAddr;
use std::time::Duration;

use tailops_agent::AgentState;
use tailops_pki::CertificateInfo;
use tailops_proto::time::now_ms;
use tailops_proto::v1::{
    self, agent_link_client::AgentLinkClient, agent_message, controller_message,
    identity_client::IdentityClient,
};
use tailops_tests::*;
use tokio::sync::mpsc;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A channel with `state`'s agent identity, from `local` (another loopback address stands for
/// another machine).
fn agent_channel(url: &str, state: &AgentState, local: Option<IpAddr>) -> Channel {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&state.ca_pem))
        .identity(Identity::from_pem(&state.cert_pem, &state.key_pem));
    Endpoint::from_shared(url.to_owned())
        .expect("url")
        .tls_config(tls)
        .expect("tls")
        .local_address(local)
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy()
}

/// An agent link opened by hand: what a copy of an identity, or a hostile agent, can send.
struct RawLink {
    tx: mpsc::Sender<v1::AgentMessage>,
    inbound: tonic::Streaming<v1::ControllerMessage>,
    beating: tokio_util::sync::CancellationToken,
}

impl RawLink {
    /// Opens the link with `hello`, reads the welcome and keeps heartbeats flowing.
    async fn open(
        url: &str,
        state: &AgentState,
        local: Option<IpAddr>,
        hello: v1::Hello,
    ) -> Result<Self, tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        tx.send(msg(agent_message::Kind::Hello(hello))).await.expect("queue hello");
        let mut inbound = AgentLinkClient::new(agent_channel(url, state, local))
            .max_decoding_message_size(8 * 1024 * 1024)
            .max_encoding_message_size(8 * 1024 * 1024)
            .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let welcome = inbound.message().await?.expect("a welcome");
        assert!(matches!(welcome.kind, Some(controller_message::Kind::Welcome(_))), "{welcome:?}");
        let beating = tokio_util::sync::CancellationToken::new();
        let (beats, stop) = (tx.clone(), beating.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(TEST_HEARTBEAT / 2) => {}
                }
                let beat = v1::Heartbeat { sent_at_ms: now_ms() };
                if beats.send(msg(agent_message::Kind::Heartbeat(beat))).await.is_err() {
                    return;
                }
            }
        });
        Ok(Self { tx, inbound, beating })
    }

    /// Waits (up to `bound`) until the controller ends the stream; panics if it does not.
    async fn wait_closed(&mut self, bound: Duration) {
        tokio::time::timeout(bound, async {
            loop {
                match self.inbound.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => return,
                }
            }
        })
        .await
        .expect("the controller closed the stream");
    }
}

impl Drop for RawLink {
    fn drop(&mut self) {
        self.beating.cancel();
    }
}

fn msg(kind: agent_message::Kind) -> v1::AgentMessage {
    v1::AgentMessage { kind: Some(kind) }
}

fn hello() -> v1::Hello {
    v1::Hello {
        agent_version: "raw".into(),
        hostname: "raw".into(),
        os: "linux".into(),
        arch: "x86_64".into(),
        kernel: "6".into(),
        running_jobs: Vec::new(),
        // Not said: the controller measures no clock offset and re-times nothing.
        clock_ms: 0,
    }
}

/// Enrolls host `name` without running an agent; returns its state (key and certificate).
async fn enrolled(controller: &TestController, name: &str) -> (tempfile::TempDir, AgentState) {
    let token = controller.token(&[], 1, Duration::from_secs(60)).await;
    let dir = tempfile::tempdir().expect("dir");
    tailops_agent::enroll(controller.enroll_options(&token, name, dir.path())).await.expect("enroll");
    let state = AgentState::load(dir.path()).await.expect("state");
    (dir, state)
}

async fn audit_rows(controller: &TestController, action: &str) -> Vec<v1::AuditEntry> {
    controller
        .audit()
        .await
        .list_audit(v1::ListAuditRequest { action: action.into(), ..Default::default() })
        .await
        .expect("audit")
        .into_inner()
        .entries
}

async fn certificates_of(controller: &TestController, principal: &str) -> Vec<v1::CertificateRecord> {
    controller
        .identity()
        .await
        .list_certificates(v1::ListCertificatesRequest { principal: principal.into(), include_expired: true })
        .await
        .expect("certs")
        .into_inner()
        .certificates
}

/// Sleeps until `not_after_ms` has passed by a second (validity has one-second precision).
async fn sleep_past(not_after_ms: i64) {
    let wait = u64::try_from(not_after_ms + 1_500 - now_ms()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(wait)).await;
}

// ----- M3 ---------------------------------------------------------------------------------------

/// M3: an HTTP/2 connection opened while the certificate was valid does not keep it valid.
#[tokio::test]
async fn an_expired_certificate_is_refused_on_the_connection_it_opened() {
    // Certificates start five minutes early for clock skew and end this long after issue.
    let controller = TestController::start_with(|c| c.timing.user_cert_lifetime_secs = 8).await;
    let user = controller.principal("user", "ursula", "viewer", None).await;
    let not_after_ms = CertificateInfo::from_pem(&user.cert_pem).expect("cert").not_after_ms;
    let mut identity = IdentityClient::new(tailopsctl::connect(&user).await.expect("connects"));
    identity.who_am_i(v1::WhoAmIRequest {}).await.expect("valid now");

    sleep_past(not_after_ms).await;
    let refused = identity.who_am_i(v1::WhoAmIRequest {}).await.expect_err("expired");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("expired"), "{}", refused.message());
    assert!(refused.message().contains("log in again"), "says what to do: {}", refused.message());
    // Nor can it be renewed on that connection.
    let (_, csr_pem) = tailops_pki::csr::generate_key_and_csr("tailopsctl").expect("csr");
    let renew =
        identity.renew_certificate(v1::RenewCertificateRequest { csr_pem }).await.expect_err("expired");
    assert_eq!(renew.code(), tonic::Code::Unauthenticated, "{renew:?}");
    let renewals = certificates_of(&controller, &user.principal).await;
    assert_eq!(renewals.len(), 1, "no certificate was issued: {renewals:?}");
    controller.stop().await;
}

/// M3: the agent link, a stream that lives for days, ends when its certificate does.
#[tokio::test]
async fn the_agent_link_closes_when_its_certificate_expires() {
    let controller = TestController::start_with(|c| c.timing.agent_cert_lifetime_secs = 6).await;
    let (_dir, state) = enrolled(&controller, "shortlived").await;
    let not_after_ms = CertificateInfo::from_pem(&state.cert_pem).expect("cert").not_after_ms;
    let mut link = RawLink::open(&controller.url, &state, None, hello()).await.expect("link");
    controller.wait_online("shortlived", true).await;

    link.wait_closed(Duration::from_secs(60)).await;
    assert!(now_ms() >= not_after_ms, "closed only once the certificate expired");
    controller.wait_online("shortlived", false).await;
    controller.stop().await;
}

// ----- M7 ---------------------------------------------------------------------------------------

/// M7: a copy of a live agent's identity, from another machine, is refused and flagged, and
/// the identity cannot be renewed over the link while it is contested.
#[tokio::test]
async fn a_copy_of_a_live_agent_identity_is_refused_and_holds_renewal() {
    let controller = TestController::start().await;
    let (_dir, state) = enrolled(&controller, "genuine").await;
    let local = |ip: &str| Some(ip.parse::<IpAddr>().expect("ip"));
    let genuine = RawLink::open(&controller.url, &state, local("127.0.0.1"), hello()).await.expect("link");
    controller.wait_online("genuine", true).await;

    let copy = RawLink::open(&controller.url, &state, local("127.0.0.2"), hello()).await;
    let refused = copy.err().expect("the copy is refused while the genuine stream is alive");
    assert_eq!(refused.code(), tonic::Code::AlreadyExists, "{refused:?}");
    assert!(refused.message().contains("another address"), "{}", refused.message());
    let flagged = audit_rows(&controller, "identity.clone_suspected").await;
    assert_eq!(flagged.len(), 1, "{flagged:?}");
    assert!(flagged[0].arguments_json.contains("127.0.0.2"), "{}", flagged[0].arguments_json);

    // The genuine stream kept the identity, and it may not renew while the copy is about.
    let host = controller.host("genuine").await.expect("host");
    assert!(host.online);
    let (_, csr_pem) = tailops_pki::csr::generate_key_and_csr("genuine").expect("csr");
    genuine
        .tx
        .send(msg(agent_message::Kind::RenewCertificate(v1::RenewCertificate { csr_pem })))
        .await
        .expect("send");
    let mut refused_renewal = Vec::new();
    for _ in 0..100 {
        refused_renewal = audit_rows(&controller, "identity.renew").await;
        if !refused_renewal.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(refused_renewal.len(), 1, "{refused_renewal:?}");
    assert_eq!(refused_renewal[0].decision, "deny", "{:?}", refused_renewal[0]);
    assert_eq!(certificates_of(&controller, &host_principal(&controller, &host.id)).await.len(), 1);
    controller.stop().await;
}

/// M7: an agent that reconnects while its old stream still looks open is not mistaken for a
/// copy: from the same address it replaces the old stream, and from another address it does
/// once the old stream has gone quiet.
#[tokio::test]
async fn an_ordinary_reconnect_replaces_the_old_stream() {
    let controller = TestController::start().await;
    let (_dir, state) = enrolled(&controller, "roamer").await;
    let local = |ip: &str| Some(ip.parse::<IpAddr>().expect("ip"));

    let mut first = RawLink::open(&controller.url, &state, local("127.0.0.1"), hello()).await.expect("link");
    let mut second = RawLink::open(&controller.url, &state, local("127.0.0.1"), hello())
        .await
        .expect("a reconnect from the same address replaces the old stream");
    first.wait_closed(Duration::from_secs(10)).await;

    // The stream stops sending (a network change: the old TCP session is not dead yet).
    second.beating.cancel();
    tokio::time::sleep(TEST_HEARTBEAT * 3).await;
    let _moved = RawLink::open(&controller.url, &state, local("127.0.0.2"), hello())
        .await
        .expect("a stream that went quiet is replaced from a new address");
    second.wait_closed(Duration::from_secs(10)).await;
    assert!(audit_rows(&controller, "identity.clone_suspected").await.is_empty());
    controller.wait_online("roamer", true).await;
    controller.stop().await;
}

fn host_principal(controller: &TestController, host_id: &str) -> String {
    let domain = controller.admin.principal.split('/').nth(2).expect("trust domain").to_owned();
    format!("spiffe://{domain}/agent/{host_id}")
}

// ----- L1 ---------------------------------------------------------------------------------------

/// Renews `profile`'s certificate over its own connection; returns the renewed profile.
async fn renewed(profile: &tailopsctl::Profile) -> tailopsctl::Profile {
    let (key_pem, csr_pem) = tailops_pki::csr::generate_key_and_csr("tailopsctl").expect("csr");
    let response = IdentityClient::new(tailopsctl::connect(profile).await.expect("connects"))
        .renew_certificate(v1::RenewCertificateRequest { csr_pem })
        .await
        .expect("renewed")
        .into_inner();
    tailopsctl::Profile { cert_pem: response.certificate_pem, key_pem, ..profile.clone() }
}

fn serial(profile: &tailopsctl::Profile) -> String {
    CertificateInfo::from_pem(&profile.cert_pem).expect("cert").serial
}

/// L1: revoking a certificate revokes every certificate renewed from it, and renewing in a
/// loop does not pile up live certificates.
#[tokio::test]
async fn revoking_a_certificate_revokes_its_renewals_and_live_certificates_are_capped() {
    let controller = TestController::start().await;
    let original = controller.principal("bridge", "looper", "mcp", None).await;
    let first = renewed(&original).await;
    let second = renewed(&original).await;
    let third = renewed(&original).await;
    // A renewal of a renewal: revoked with the original too.
    let grandchild = renewed(&third).await;

    let certs = certificates_of(&controller, &original.principal).await;
    let live: Vec<&str> = certs.iter().filter(|c| c.revoked_at_ms == 0).map(|c| c.serial.as_str()).collect();
    assert_eq!(certs.len(), 5);
    // After the last renewal: the one it came with and the newest; the rest are superseded.
    assert_eq!(live.len(), 2, "{certs:?}");
    for kept in [serial(&third), serial(&grandchild)] {
        assert!(live.contains(&kept.as_str()), "{kept} is live: {certs:?}");
    }
    for retired in [serial(&original), serial(&first), serial(&second)] {
        let record = certs.iter().find(|c| c.serial == retired).expect("recorded");
        assert!(record.revoked_at_ms > 0 && record.revoked_reason.contains("superseded"), "{record:?}");
    }

    // The admin revokes the certificate it knows about; whatever was renewed from it goes too.
    controller
        .identity()
        .await
        .revoke_certificate(v1::RevokeCertificateRequest {
            serial: serial(&original),
            reason: "leaked".into(),
        })
        .await
        .expect("revoke");
    for profile in [&third, &grandchild] {
        let refused = IdentityClient::new(tailopsctl::connect(profile).await.expect("connects"))
            .who_am_i(v1::WhoAmIRequest {})
            .await
            .expect_err("revoked with the certificate it was renewed from");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    }
    let certs = certificates_of(&controller, &original.principal).await;
    assert!(certs.iter().all(|c| c.revoked_at_ms > 0), "{certs:?}");
    let record = certs.iter().find(|c| c.serial == serial(&grandchild)).expect("grandchild");
    assert!(record.revoked_reason.contains(&serial(&original)), "{record:?}");
    controller.stop().await;
}

// ----- L2 ---------------------------------------------------------------------------------------

fn job_id_when(
    events: &mut Vec<v1::JobEvent>,
    event: v1::JobEvent,
    wanted: fn(&v1::job_event::Kind) -> bool,
) -> Option<u64> {
    let id = event.job_id;
    let hit = event.kind.as_ref().is_some_and(wanted);
    events.push(event);
    hit.then_some(id)
}

/// Reads `stream` until an event `wanted` says so; returns the job id.
async fn job_until(
    stream: &mut tonic::Streaming<v1::JobEvent>,
    wanted: fn(&v1::job_event::Kind) -> bool,
) -> u64 {
    let mut events = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("job stream stalled")
            .expect("stream")
            .expect("an event");
        if let Some(id) = job_id_when(&mut events, event, wanted) {
            return id;
        }
    }
}

/// L2: disabling a principal withdraws its pending approvals; demoting one cancels its
/// running jobs and ends its open streams.
#[tokio::test]
async fn a_principal_disabled_or_demoted_loses_its_pending_and_running_jobs() {
    let controller = TestController::start().await;
    let _agent = controller.agent("l2", &[]).await;
    let bridge = controller.principal("bridge", "assistant", "mcp", None).await;
    let approver = controller.principal("user", "val", "operator", None).await;
    let otto = controller.principal("user", "otto", "operator", None).await;

    let mut pending = controller
        .fleet_as(&bridge)
        .await
        .run_job(exec_request(all_hosts(), &["echo", "hi"], Duration::from_secs(30)))
        .await
        .expect("held for approval")
        .into_inner();
    let pending_id = job_until(&mut pending, |k| matches!(k, v1::job_event::Kind::ApprovalRequired(_))).await;
    let mut running = controller
        .fleet_as(&otto)
        .await
        .run_job(exec_request(all_hosts(), &["sleep", "60"], Duration::from_secs(120)))
        .await
        .expect("runs")
        .into_inner();
    let running_id = job_until(&mut running, |k| matches!(k, v1::job_event::Kind::Started(_))).await;

    let mut identity = controller.identity().await;
    identity
        .set_principal_disabled(v1::SetPrincipalDisabledRequest {
            kind: v1::PrincipalKindProto::Bridge as i32,
            name: "assistant".into(),
            disabled: true,
        })
        .await
        .expect("disable");
    let approve = controller
        .fleet_as(&approver)
        .await
        .decide_approval(v1::DecideApprovalRequest {
            job_id: pending_id,
            approve: true,
            reason: String::new(),
        })
        .await
        .expect_err("withdrawn");
    assert_eq!(approve.code(), tonic::Code::FailedPrecondition, "{approve:?}");
    assert!(approve.message().contains("not waiting for approval"), "{}", approve.message());
    let job = controller
        .fleet()
        .await
        .get_job(v1::GetJobRequest { job_id: pending_id })
        .await
        .expect("job")
        .into_inner()
        .job
        .expect("job");
    assert_eq!(job.state(), v1::JobState::Rejected, "{job:?}");
    let withdrawn = audit_rows(&controller, "approval.withdraw").await;
    assert_eq!(withdrawn.len(), 1, "{withdrawn:?}");
    assert!(withdrawn[0].arguments_json.contains("disabled"), "{}", withdrawn[0].arguments_json);

    identity
        .set_principal_role(v1::SetPrincipalRoleRequest {
            kind: v1::PrincipalKindProto::User as i32,
            name: "otto".into(),
            role: "viewer".into(),
            scope: None,
        })
        .await
        .expect("demote");
    // Otto's stream ends: it was opened under the old role.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match running.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status.code()),
            }
        }
    })
    .await
    .expect("the demoted principal's stream ends");
    assert_eq!(ended, Some(tonic::Code::Aborted));
    let events = collect_events(
        controller
            .fleet()
            .await
            .watch_job(v1::WatchJobRequest { job_id: running_id })
            .await
            .expect("watch")
            .into_inner(),
    )
    .await;
    assert_eq!(completed(&events).state(), v1::JobState::Cancelled, "{events:?}");
    controller.stop().await;
}

// ----- L3 ---------------------------------------------------------------------------------------

/// L3: no host may be named like a host id, and an enrolling agent cannot label itself.
#[tokio::test]
async fn host_names_are_never_ids_and_labels_come_from_the_token() {
    let controller = TestController::start().await;
    let _web = controller.agent("web1", &[("env", "staging")]).await;
    let web1 = controller.host("web1").await.expect("web1");
    let token = controller.token(&[("site", "lab")], 5, Duration::from_secs(60)).await;

    for name in [web1.id.as_str(), "00000000-0000-4000-8000-000000000000", "0123456789abcdef0123456789abcdef"]
    {
        let dir = tempfile::tempdir().expect("dir");
        let err = tailops_agent::enroll(controller.enroll_options(&token, name, dir.path()))
            .await
            .expect_err("a name shaped like an id");
        assert!(
            matches!(&err, tailops_agent::AgentError::Refused(s)
                if s.code() == tonic::Code::InvalidArgument && s.message().contains("host id")),
            "{err}"
        );
    }

    let dir = tempfile::tempdir().expect("dir");
    let mut options = controller.enroll_options(&token, "web2", dir.path());
    options.labels =
        [("env".to_owned(), "prod".to_owned()), ("site".to_owned(), "elsewhere".to_owned())].into();
    tailops_agent::enroll(options).await.expect("the refusals left the token its uses");
    let hosts =
        controller.fleet().await.list_hosts(v1::ListHostsRequest::default()).await.expect("ls").into_inner();
    let web2 = hosts.hosts.iter().find(|h| h.name == "web2").expect("web2");
    assert_eq!(web2.labels, [("site".to_owned(), "lab".to_owned())].into(), "only the token's labels");
    controller.stop().await;
}

// ----- L4 ---------------------------------------------------------------------------------------

/// L4: what an agent says about itself is kept small and free of terminal and bidi controls,
/// and its facts cannot grow without bound across updates.
#[tokio::test]
async fn hello_and_facts_are_bounded_and_cleaned() {
    let controller = TestController::start().await;
    let (_dir, state) = enrolled(&controller, "loud").await;
    let hostile = v1::Hello {
        agent_version: "1.0\u{1b}[2J".into(),
        hostname: "A".repeat(4_000_000),
        os: "linux\u{202e}txt.exe".into(),
        arch: "x86_64\u{200b}".into(),
        kernel: "6\r\n\u{7}".into(),
        running_jobs: Vec::new(),
        clock_ms: i64::MIN,
    };
    let link = RawLink::open(&controller.url, &state, None, hostile).await.expect("the stream is accepted");
    controller.wait_online("loud", true).await;

    // The admin's listing still fits a client's default 4 MiB limit.
    let hosts =
        controller.fleet().await.list_hosts(v1::ListHostsRequest::default()).await.expect("ls").into_inner();
    let host = hosts.hosts.iter().find(|h| h.name == "loud").expect("host");
    assert_eq!(host.hostname.len(), 256);
    for text in [&host.agent_version, &host.os, &host.arch, &host.kernel] {
        assert!(!text.chars().any(|c| c.is_control() || matches!(c, '\u{200b}' | '\u{202e}')), "{text:?}");
    }
    assert_eq!(host.os, "linux?txt.exe");

    // Facts: 200 values of 8000 bytes are accepted; another 100 would pass the per-host limit.
    let big = |prefix: &str, n: usize| -> std::collections::BTreeMap<String, String> {
        (0..n).map(|i| (format!("{prefix}.{i}"), "x".repeat(8000))).collect()
    };
    let facts =
        |full: bool, set| msg(agent_message::Kind::Facts(v1::FactsUpdate { full, set, removed: Vec::new() }));
    link.tx.send(facts(true, big("first", 200))).await.expect("send");
    link.tx.send(facts(false, big("second", 100))).await.expect("send");
    let probe = [("probe".to_owned(), "\u{1b}]0;pwned\u{7}ok".to_owned())].into();
    link.tx.send(facts(false, probe)).await.expect("send");
    let mut monitoring = controller.monitoring().await;
    let mut stored = Vec::new();
    for _ in 0..100 {
        stored = monitoring
            .get_host(v1::GetHostRequest { host: "loud".into() })
            .await
            .expect("get host")
            .into_inner()
            .facts;
        if stored.iter().any(|f| f.key == "probe") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let probe = stored.iter().find(|f| f.key == "probe").expect("the last update was applied");
    assert_eq!(probe.value, "?]0;pwned?ok");
    assert_eq!(stored.iter().filter(|f| f.key.starts_with("first.")).count(), 200);
    assert_eq!(stored.iter().filter(|f| f.key.starts_with("second.")).count(), 0, "over the per-host limit");
    controller.stop().await;
}

// ----- L15 --------------------------------------------------------------------------------------

/// L15: the server certificate can be replaced (new key, same CA, new names) without touching
/// agents or profiles; the first admin's certificate lasts as long as any user's.
#[tokio::test]
async fn the_server_certificate_can_be_rotated_and_the_first_admin_is_short_lived() {
    let controller = TestController::start().await;
    let admin = CertificateInfo::from_pem(&controller.admin.cert_pem).expect("admin cert");
    let user_lifetime = tailops_controller::config::Timing::default().user_cert_lifetime_secs;
    assert!(
        admin.not_after_ms - now_ms() <= i64::try_from(user_lifetime * 1000).expect("ms"),
        "the first admin certificate lasts no longer than a user's"
    );
    let data = controller.data_dir();
    let old =
        tokio::fs::read_to_string(data.file(tailops_controller::data_dir::SERVER_CERT)).await.expect("old");
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "ops.example.test".to_owned()];
    let rotated = tailops_controller::data_dir::rotate_server_certificate(&data, Some(names.clone()))
        .await
        .expect("rotate");
    assert_eq!(rotated.advertise, names);
    assert_ne!(rotated.serial, CertificateInfo::from_pem(&old).expect("old").serial);
    assert_eq!(data.load_config().await.expect("config").advertise, names);
    let key_mode = std::os::unix::fs::PermissionsExt::mode(
        &tokio::fs::metadata(data.file(tailops_controller::data_dir::SERVER_KEY))
            .await
            .expect("key")
            .permissions(),
    );
    assert_eq!(key_mode & 0o777, 0o600);

    let controller = controller.restart().await;
    // The new certificate is served: it names the new address, which the old one did not.
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&controller.admin.ca_pem))
        .identity(Identity::from_pem(&controller.admin.cert_pem, &controller.admin.key_pem))
        .domain_name("ops.example.test");
    let channel = Endpoint::from_shared(controller.url.clone())
        .expect("url")
        .tls_config(tls)
        .expect("tls")
        .connect_lazy();
    IdentityClient::new(channel)
        .who_am_i(v1::WhoAmIRequest {})
        .await
        .expect("the new name is in the served certificate");
    // Existing profiles and agents need nothing: they trust the CA.
    let _agent = controller.agent("after-rotation", &[]).await;
    controller.stop().await;
}
