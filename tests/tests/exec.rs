//! Remote exec through real agents: selection, output, exit codes, deadlines, cancel, caps.

use std::time::Duration;

use tailops_proto::v1::{self, OutputStream, TargetState};
use tailops_tests::*;

#[tokio::test]
async fn label_selector_reaches_exactly_the_matching_hosts() {
    let controller = TestController::start().await;
    let _web1 = controller.agent("web1", &[("env", "prod")]).await;
    let _web2 = controller.agent("web2", &[("env", "prod")]).await;
    let _db1 = controller.agent("db1", &[("env", "dev")]).await;

    let mut fleet = controller.fleet().await;
    let stream = fleet
        .run_job(exec_request(
            label_selector("env", "prod"),
            &["echo", "hello from prod"],
            Duration::from_secs(10),
        ))
        .await
        .expect("job accepted")
        .into_inner();
    let events = collect_events(stream).await;
    let finished = finished_by_host(&events);
    assert_eq!(finished.keys().collect::<Vec<_>>(), ["web1", "web2"]);
    for host in ["web1", "web2"] {
        assert_eq!(finished[host].state(), TargetState::Succeeded);
        assert_eq!(output_of(&events, host, OutputStream::Stdout), "hello from prod\n");
    }
    let done = completed(&events);
    assert_eq!(done.state(), v1::JobState::Succeeded);

    // The job and its output were persisted.
    let job =
        fleet.get_job(v1::GetJobRequest { job_id: events[0].job_id }).await.expect("get job").into_inner();
    assert_eq!(job.targets.len(), 2);
    assert!(job.targets.iter().all(|t| t.stdout == b"hello from prod\n"));
    assert_eq!(job.job.expect("job").summary.expect("summary").succeeded, 2);
    controller.stop().await;
}

#[tokio::test]
async fn non_zero_exit_and_stderr_are_reported() {
    let controller = TestController::start().await;
    let _a = controller.agent("a", &[]).await;
    let mut fleet = controller.fleet().await;
    let stream = fleet
        .run_job(exec_request(all_hosts(), &["sh", "-c", "echo oops >&2; exit 7"], Duration::from_secs(10)))
        .await
        .expect("accepted")
        .into_inner();
    let events = collect_events(stream).await;
    let finished = &finished_by_host(&events)["a"];
    assert_eq!(finished.state(), TargetState::Failed);
    assert_eq!(finished.result.as_ref().and_then(|r| r.exit_code), Some(7));
    assert_eq!(output_of(&events, "a", OutputStream::Stderr), "oops\n");
    assert_eq!(completed(&events).state(), v1::JobState::Failed);
    controller.stop().await;
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group_including_grandchildren() {
    let controller = TestController::start().await;
    let _a = controller.agent("a", &[]).await;
    let mut fleet = controller.fleet().await;
    // The shell starts a grandchild, prints its pid, and waits: only a group kill stops both.
    let stream = fleet
        .run_job(exec_request(
            all_hosts(),
            &["sh", "-c", "sleep 300 & echo $!; wait"],
            Duration::from_secs(2),
        ))
        .await
        .expect("accepted")
        .into_inner();
    let events = collect_events(stream).await;
    let finished = &finished_by_host(&events)["a"];
    assert_eq!(finished.state(), TargetState::TimedOut);
    assert!(finished.result.as_ref().is_some_and(|r| r.timed_out));
    let pid: i32 = output_of(&events, "a", OutputStream::Stdout).trim().parse().expect("grandchild pid");
    for _ in 0..50 {
        if !process_alive(pid).await {
            controller.stop().await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("grandchild {pid} survived the timeout");
}

#[tokio::test]
async fn cancel_stops_a_running_job() {
    let controller = TestController::start().await;
    let _a = controller.agent("a", &[]).await;
    let mut fleet = controller.fleet().await;
    let mut stream = fleet
        .run_job(exec_request(
            all_hosts(),
            &["sh", "-c", "sleep 300 & echo $!; wait"],
            Duration::from_secs(120),
        ))
        .await
        .expect("accepted")
        .into_inner();
    // Wait until the host has started and printed the grandchild's pid.
    let mut events = Vec::new();
    while output_of(&events, "a", OutputStream::Stdout).is_empty() {
        events.push(stream.message().await.expect("stream").expect("event"));
    }
    let job_id = events[0].job_id;
    let response = fleet.cancel_job(v1::CancelJobRequest { job_id }).await.expect("cancel").into_inner();
    assert_eq!(response.cancelled_targets, 1);
    events.extend(collect_events(stream).await);
    assert_eq!(finished_by_host(&events)["a"].state(), TargetState::Cancelled);
    assert_eq!(completed(&events).state(), v1::JobState::Cancelled);
    let pid: i32 = output_of(&events, "a", OutputStream::Stdout).trim().parse().expect("pid");
    for _ in 0..50 {
        if !process_alive(pid).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!process_alive(pid).await, "grandchild {pid} survived the cancel");

    // Cancelling again is answered, not an error.
    let again = fleet.cancel_job(v1::CancelJobRequest { job_id }).await.expect("cancel again").into_inner();
    assert!(again.already_finished);
    controller.stop().await;
}

#[tokio::test]
async fn output_cap_is_reported_not_silently_applied() {
    let controller = TestController::start().await;
    let _a = controller.agent("a", &[]).await;
    let mut fleet = controller.fleet().await;
    let mut request =
        exec_request(all_hosts(), &["head", "-c", "50000", "/dev/zero"], Duration::from_secs(10));
    request.output_cap_bytes = 1000;
    let events = collect_events(fleet.run_job(request).await.expect("accepted").into_inner()).await;
    let result = finished_by_host(&events)["a"].result.clone().expect("result");
    assert!(result.stdout_truncated);
    assert_eq!(result.stdout_bytes, 50_000);
    assert_eq!(output_of(&events, "a", OutputStream::Stdout).len(), 1000);
    let job = fleet.get_job(v1::GetJobRequest { job_id: events[0].job_id }).await.expect("job").into_inner();
    assert_eq!(job.targets[0].stdout.len(), 1000);
    controller.stop().await;
}

#[tokio::test]
async fn offline_hosts_are_reported_unreachable_and_bad_requests_refused() {
    let controller = TestController::start().await;
    let _up = controller.agent("up", &[]).await;
    let mut down = controller.agent("down", &[]).await;
    down.pause().await;
    controller.wait_online("down", false).await;

    let mut fleet = controller.fleet().await;
    let events = collect_events(
        fleet
            .run_job(exec_request(all_hosts(), &["true"], Duration::from_secs(10)))
            .await
            .expect("ok")
            .into_inner(),
    )
    .await;
    let finished = finished_by_host(&events);
    assert_eq!(finished["up"].state(), TargetState::Succeeded);
    assert_eq!(finished["down"].state(), TargetState::Unreachable);

    let empty = v1::HostSelector::default();
    let err = fleet
        .run_job(exec_request(empty, &["true"], Duration::from_secs(5)))
        .await
        .expect_err("empty selector");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = fleet
        .run_job(exec_request(label_selector("env", "nowhere"), &["true"], Duration::from_secs(5)))
        .await
        .expect_err("no match");
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err =
        fleet.run_job(exec_request(all_hosts(), &[], Duration::from_secs(5))).await.expect_err("no argv");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    controller.stop().await;
}

#[tokio::test]
async fn a_finished_job_can_be_replayed() {
    let controller = TestController::start().await;
    let _a = controller.agent("a", &[]).await;
    let mut fleet = controller.fleet().await;
    let events = collect_events(
        fleet
            .run_job(exec_request(all_hosts(), &["echo", "again"], Duration::from_secs(10)))
            .await
            .expect("ok")
            .into_inner(),
    )
    .await;
    let replay = collect_events(
        fleet.watch_job(v1::WatchJobRequest { job_id: events[0].job_id }).await.expect("watch").into_inner(),
    )
    .await;
    assert_eq!(output_of(&replay, "a", OutputStream::Stdout), "again\n");
    assert_eq!(completed(&replay).state(), v1::JobState::Succeeded);
    let missing = fleet.watch_job(v1::WatchJobRequest { job_id: 999_999 }).await.expect_err("unknown job");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    controller.stop().await;
}
