//! Online/offline tracking: clean disconnects, silent agents, reconnects. The silent case uses a
//! real `tailops-agent` process stopped with SIGSTOP, so its TCP connection stays open while it
//! sends nothing: only the heartbeat deadline can notice.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tailops_tests::*;

#[tokio::test]
async fn a_disconnected_agent_goes_offline_and_comes_back() {
    let controller = TestController::start().await;
    let mut agent = controller.agent("flaky", &[]).await;
    agent.pause().await;
    controller.wait_online("flaky", false).await;
    agent.resume();
    controller.wait_online("flaky", true).await;
    controller.stop().await;
}

#[tokio::test]
async fn a_silent_agent_process_is_marked_offline_and_recovers() {
    let controller = TestController::start().await;
    // Built before the token's minute starts: a cold build can take longer than that.
    let agent = binary("tailops-agent").await;
    let token = controller.token(&[("role", "proc")], 1, Duration::from_secs(60)).await;
    let state = tempfile::tempdir().expect("dir");
    let enroll = tokio::process::Command::new(&agent)
        .args([
            "enroll",
            "--controller",
            &controller.url,
            "--ca-fingerprint",
            &controller.fingerprint.to_string(),
        ])
        .args(["--name", "sleeper", "--state-dir"])
        .arg(state.path())
        .env("TAILOPS_JOIN_TOKEN", &token)
        .output()
        .await
        .expect("run enroll");
    assert!(enroll.status.success(), "{}", String::from_utf8_lossy(&enroll.stderr));
    assert!(String::from_utf8_lossy(&enroll.stdout).contains("Enrolled as sleeper"));

    let mut child = tokio::process::Command::new(&agent)
        .args(["run", "--state-dir"])
        .arg(state.path())
        .kill_on_drop(true)
        .spawn()
        .expect("start agent");
    controller.wait_online("sleeper", true).await;
    let pid = Pid::from_raw(i32::try_from(child.id().expect("pid")).expect("pid"));

    kill(pid, Signal::SIGSTOP).expect("stop agent");
    controller.wait_online("sleeper", false).await;
    kill(pid, Signal::SIGCONT).expect("continue agent");
    controller.wait_online("sleeper", true).await;

    let host = controller.host("sleeper").await.expect("host");
    assert!(host.last_seen_ms > 0);
    assert_eq!(host.labels.get("role").map(String::as_str), Some("proc"));
    child.kill().await.expect("kill agent");
    controller.wait_online("sleeper", false).await;
    controller.stop().await;
}

#[tokio::test]
async fn agent_state_survives_a_controller_restart() {
    let controller = TestController::start().await;
    let _agent = controller.agent("steady", &[]).await;
    // Hosts are durable: a fresh controller process on the same data directory knows them.
    let data = controller.data_dir();
    let reopened = tailops_controller::Controller::open(&data).await.expect("reopen");
    let hosts = reopened.store().list_hosts().await.expect("hosts");
    assert!(
        hosts.iter().any(|h| h.name == "steady" && !h.online),
        "a reopened controller starts with hosts offline"
    );
    controller.stop().await;
}

#[tokio::test]
async fn an_agent_renews_its_certificate_over_the_link() {
    // A lifetime this short puts the 70% mark in the past at once (validity starts five minutes
    // early for clock skew), so the agent renews as soon as it connects.
    let controller = TestController::start_with(|config| config.timing.agent_cert_lifetime_secs = 60).await;
    let token = controller.token(&[], 1, Duration::from_secs(60)).await;
    let dir = tempfile::tempdir().expect("dir");
    tailops_agent::enroll(controller.enroll_options(&token, "renewer", dir.path())).await.expect("enroll");
    let cert_path = dir.path().join("agent.crt");
    let original = tokio::fs::read_to_string(&cert_path).await.expect("cert");
    let mut agent = TestAgent::start(dir, "renewer");
    let mut renewed = original.clone();
    for _ in 0..100 {
        renewed = tokio::fs::read_to_string(&cert_path).await.expect("cert");
        if renewed != original {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_ne!(renewed, original, "the certificate was not renewed");
    let old = tailops_pki::CertificateInfo::from_pem(&original).expect("old");
    let new = tailops_pki::CertificateInfo::from_pem(&renewed).expect("new");
    assert_eq!(old.principal, new.principal);
    assert_ne!(old.serial, new.serial);

    // The renewed key and certificate work for the next connection.
    agent.pause().await;
    controller.wait_online("renewer", false).await;
    agent.resume();
    controller.wait_online("renewer", true).await;
    controller.stop().await;
}
