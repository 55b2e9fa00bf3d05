//! Hosts whose clock is wrong, with real agent processes under libfaketime: an agent ten minutes
//! slow or fast connects to a controller that was initialised a moment ago (its certificates are
//! brand new), runs jobs, and has its samples re-timed onto the controller's clock with a health
//! reason saying what is wrong; an agent two hours slow is refused with an error that names the
//! clock.

use std::time::Duration;

use tailops_proto::time::now_ms;
use tailops_proto::v1;
use tailops_tests::*;

/// Polls the controller (every 200 ms, up to 30 s) until `name` has a sample; returns its view.
async fn with_sample(controller: &TestController, name: &str) -> v1::GetHostResponse {
    let mut monitoring = controller.monitoring().await;
    for _ in 0..150 {
        let host = monitoring
            .get_host(v1::GetHostRequest { host: name.to_owned() })
            .await
            .expect("get host")
            .into_inner();
        if host.latest.is_some() {
            return host;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no sample from {name} in 30 s");
}

/// What `date +%s` says on the agent's host, in milliseconds, minus the controller's clock.
async fn host_clock_offset_ms(controller: &TestController, name: &str) -> i64 {
    let selector = v1::HostSelector { hosts: vec![name.to_owned()], ..Default::default() };
    let request = exec_request(selector, &["date", "+%s"], Duration::from_secs(20));
    let before = now_ms();
    let events =
        collect_events(controller.fleet().await.run_job(request).await.expect("run").into_inner()).await;
    assert_eq!(completed(&events).state(), v1::JobState::Succeeded, "{events:?}");
    let host_secs: i64 = output_of(&events, name, v1::OutputStream::Stdout).trim().parse().expect("date +%s");
    host_secs * 1000 - before
}

async fn launch_skewed(controller: &TestController, name: &str, offset: &str) -> AgentProcess {
    let launch = AgentLaunch { env: faketime(offset), monitoring: true, ..AgentLaunch::default() };
    AgentProcess::launch(controller, name, launch).await
}

#[tokio::test]
async fn an_agent_ten_minutes_slow_connects_at_once_and_its_samples_are_retimed() {
    let controller = TestController::start().await;
    // Enrolment and the link both check the brand-new server certificate by the host's clock.
    let _agent = launch_skewed(&controller, "slow", "-10m").await;

    // The host really lives ten minutes in the past (so the rest of the test means something).
    let offset = host_clock_offset_ms(&controller, "slow").await;
    assert!((-602_000..=-598_000).contains(&offset), "host clock offset {offset} ms");

    let host = with_sample(&controller, "slow").await;
    let sample_at = host.latest.as_ref().expect("sample").at_ms;
    let age = now_ms() - sample_at;
    assert!((-5_000..30_000).contains(&age), "the sample is {age} ms old on the controller's clock");
    let health = host.health.expect("health");
    assert!(
        health.reasons.iter().any(|r| r.starts_with("clock 10m") && r.contains("behind the controller's")),
        "{:?}",
        health.reasons
    );
    assert_eq!(health.status(), v1::HealthStatus::Healthy, "a wrong clock is a reason, not an alarm");
}

#[tokio::test]
async fn an_agent_ten_minutes_fast_is_not_refused_as_from_the_future() {
    let controller = TestController::start().await;
    let agent = launch_skewed(&controller, "fast", "+10m").await;
    let offset = host_clock_offset_ms(&controller, "fast").await;
    assert!((598_000..=602_000).contains(&offset), "host clock offset {offset} ms");

    let host = with_sample(&controller, "fast").await;
    let age = now_ms() - host.latest.as_ref().expect("sample").at_ms;
    assert!((-5_000..30_000).contains(&age), "the sample is {age} ms old on the controller's clock");
    let reasons = host.health.expect("health").reasons;
    assert!(reasons.iter().any(|r| r.starts_with("clock 10m") && r.contains("ahead of")), "{reasons:?}");
    assert!(!agent.log().await.contains("samples refused"), "{}", agent.log().await);
}

#[tokio::test]
async fn an_agent_two_hours_slow_is_told_to_fix_its_clock() {
    let controller = TestController::start().await;
    let agent = binary("tailops-agent").await;
    let token = controller.token(&[], 1, Duration::from_secs(60)).await;
    let state_dir = tempfile::tempdir().expect("dir");
    let enroll = tokio::process::Command::new(agent)
        .envs(faketime("-2h"))
        .args(["enroll", "--controller", &controller.url, "--ca-fingerprint"])
        .arg(controller.fingerprint.to_string())
        .args(["--name", "stale", "--state-dir"])
        .arg(state_dir.path())
        .env("TAILOPS_JOIN_TOKEN", &token)
        .output()
        .await
        .expect("run enroll");
    assert!(!enroll.status.success());
    let stderr = text(&enroll.stderr);
    assert!(stderr.contains("certificate not valid yet"), "{stderr}");
    assert!(stderr.contains("if this machine's clock is wrong, fix its time sync first"), "{stderr}");
    assert!(controller.host("stale").await.is_none(), "nothing was enrolled");
}
