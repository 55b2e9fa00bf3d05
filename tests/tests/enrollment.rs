//! Enrollment through a real controller: join tokens, CA pinning, and refusals that lose nothing.

use std::time::Duration;

use tailops_pki::Fingerprint;
use tailops_proto::v1;
use tailops_tests::TestController;

#[tokio::test]
async fn enrolled_host_gets_token_labels_and_comes_online() {
    let controller = TestController::start().await;
    let _agent = controller.agent("web1", &[("env", "prod")]).await;
    let host = controller.host("web1").await.expect("host listed");
    assert!(host.online);
    assert_eq!(host.labels.get("env").map(String::as_str), Some("prod"));
    assert_eq!(host.agent_version, env!("CARGO_PKG_VERSION"));
    assert!(!host.id.is_empty());
    controller.stop().await;
}

#[tokio::test]
async fn reused_token_is_refused() {
    let controller = TestController::start().await;
    let token = controller.token(&[], 1, Duration::from_secs(60)).await;
    let first = tempfile::tempdir().expect("dir");
    tailops_agent::enroll(controller.enroll_options(&token, "one", first.path())).await.expect("first use");

    let second = tempfile::tempdir().expect("dir");
    let err = tailops_agent::enroll(controller.enroll_options(&token, "two", second.path()))
        .await
        .expect_err("second use must be refused");
    let tailops_agent::AgentError::Refused(status) = err else { panic!("unexpected error {err}") };
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(status.message().contains("no uses left"), "{}", status.message());
    assert!(controller.host("two").await.is_none());
    controller.stop().await;
}

#[tokio::test]
async fn expired_token_is_refused() {
    let controller = TestController::start().await;
    let token = controller.token(&[], 1, Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let dir = tempfile::tempdir().expect("dir");
    let err = tailops_agent::enroll(controller.enroll_options(&token, "late", dir.path()))
        .await
        .expect_err("expired");
    let tailops_agent::AgentError::Refused(status) = err else { panic!("unexpected error {err}") };
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(status.message().contains("expired"), "{}", status.message());
    controller.stop().await;
}

#[tokio::test]
async fn unknown_token_is_refused() {
    let controller = TestController::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let err = tailops_agent::enroll(controller.enroll_options("tops_guessed", "x", dir.path()))
        .await
        .expect_err("unknown token");
    assert!(matches!(err, tailops_agent::AgentError::Refused(s) if s.code() == tonic::Code::Unauthenticated));
    controller.stop().await;
}

#[tokio::test]
async fn wrong_ca_fingerprint_is_refused_before_the_token_is_sent() {
    let controller = TestController::start().await;
    let token = controller.token(&[], 1, Duration::from_secs(60)).await;
    let dir = tempfile::tempdir().expect("dir");
    let mut options = controller.enroll_options(&token, "pinned", dir.path());
    options.ca_fingerprint = Fingerprint::of_der(b"some other CA");
    let err = tailops_agent::enroll(options).await.expect_err("mismatch");
    assert!(
        matches!(err, tailops_agent::AgentError::Pki(tailops_pki::PkiError::FingerprintMismatch { .. })),
        "{err}"
    );
    // The token was never presented, so it still works with the right fingerprint.
    tailops_agent::enroll(controller.enroll_options(&token, "pinned", dir.path()))
        .await
        .expect("token intact");
    controller.stop().await;
}

#[tokio::test]
async fn taken_name_is_refused_and_the_token_keeps_its_use() {
    let controller = TestController::start().await;
    let _first = controller.agent("dup", &[]).await;
    let token = controller.token(&[], 1, Duration::from_secs(60)).await;
    let dir = tempfile::tempdir().expect("dir");
    let err =
        tailops_agent::enroll(controller.enroll_options(&token, "dup", dir.path())).await.expect_err("taken");
    assert!(
        matches!(&err, tailops_agent::AgentError::Refused(s) if s.code() == tonic::Code::AlreadyExists),
        "{err}"
    );
    tailops_agent::enroll(controller.enroll_options(&token, "dup2", dir.path()))
        .await
        .expect("token still has its use");
    controller.stop().await;
}

#[tokio::test]
async fn bad_names_and_labels_get_clear_errors() {
    let controller = TestController::start().await;
    let token = controller.token(&[], 1, Duration::from_secs(60)).await;
    let dir = tempfile::tempdir().expect("dir");
    let err = tailops_agent::enroll(controller.enroll_options(&token, "bad name!", dir.path()))
        .await
        .expect_err("bad");
    assert!(
        matches!(&err, tailops_agent::AgentError::Refused(s) if s.code() == tonic::Code::InvalidArgument),
        "{err}"
    );

    let mut fleet = controller.fleet().await;
    let status = fleet
        .create_join_token(v1::CreateJoinTokenRequest {
            labels: [("bad key".to_owned(), "v".to_owned())].into(),
            ttl_secs: 60,
            uses: 1,
        })
        .await
        .expect_err("bad label");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    // Nothing was consumed by the refusals.
    tailops_agent::enroll(controller.enroll_options(&token, "good", dir.path())).await.expect("token intact");
    controller.stop().await;
}

#[tokio::test]
async fn init_twice_refuses_to_overwrite() {
    let controller = TestController::start().await;
    let again = tailops_controller::data_dir::initialize(
        &controller.data_dir(),
        tailops_controller::data_dir::InitOptions {
            trust_domain: "other".into(),
            listen: "127.0.0.1:0".parse().expect("addr"),
            advertise: vec![],
        },
    )
    .await;
    assert!(matches!(again, Err(tailops_controller::ControllerError::AlreadyInitialized(_))));
    controller.stop().await;
}
