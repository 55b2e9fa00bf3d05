//! What job output may cost the controller, through real agents: running jobs share one budget
//! for the output they hold (the rest is cut, and the results say so, until jobs finish), and a
//! client that stops reading a job's events is let go of instead of holding the job in memory.

use std::time::Duration;

use tailops_proto::v1;
use tailops_tests::*;
use tonic::Code;

const BUDGET: u64 = 1024 * 1024;

/// `bytes` of output on stdout, and exit 0.
fn print(bytes: usize) -> String {
    format!("head -c {bytes} /dev/zero | tr '\\0' x")
}

async fn run_to_end(controller: &TestController, request: v1::RunJobRequest) -> v1::GetJobResponse {
    let events =
        collect_events(controller.fleet().await.run_job(request).await.expect("run").into_inner()).await;
    assert_eq!(completed(&events).state(), v1::JobState::Succeeded, "{events:?}");
    let job_id = events[0].job_id;
    controller.fleet().await.get_job(v1::GetJobRequest { job_id }).await.expect("get job").into_inner()
}

#[tokio::test]
async fn running_jobs_share_one_output_budget_and_hand_it_back() {
    let controller = TestController::start_with(|c| c.limits.max_live_output_bytes = BUDGET).await;
    let mut agents = Vec::new();
    for i in 0..6 {
        agents.push(controller.agent(&format!("loud-{i}"), &[("role", "loud")]).await);
    }

    // 6 × 400 kB wanted, 1 MiB allowed: every host succeeds, the output kept is exactly the
    // budget, and each host that lost some says so.
    let script = print(400_000);
    let request =
        exec_request(label_selector("role", "loud"), &["sh", "-c", &script], Duration::from_secs(30));
    let job = run_to_end(&controller, request).await;
    let kept: usize = job.targets.iter().map(|t| t.stdout.len()).sum();
    assert_eq!(kept as u64, BUDGET);
    for t in &job.targets {
        let result = t.result.as_ref().expect("result");
        assert_eq!(result.exit_code, Some(0));
        assert_eq!(
            result.stdout_truncated,
            t.stdout.len() < 400_000,
            "{:?}: {} bytes",
            t.target,
            t.stdout.len()
        );
    }
    assert!(
        job.targets.iter().filter(|t| t.result.as_ref().is_some_and(|r| r.stdout_truncated)).count() >= 3
    );

    // The finished job handed its share back: the next one keeps all of its output.
    let two = v1::HostSelector { hosts: vec!["loud-0".into(), "loud-1".into()], ..Default::default() };
    let job =
        run_to_end(&controller, exec_request(two, &["sh", "-c", &script], Duration::from_secs(30))).await;
    for t in &job.targets {
        assert_eq!(t.stdout.len(), 400_000);
        assert!(!t.result.as_ref().expect("result").stdout_truncated);
    }
}

#[tokio::test]
async fn a_watcher_that_stops_reading_is_let_go_and_the_job_goes_on() {
    let controller = TestController::start_with(|c| c.network.watch_stall_timeout_secs = 2).await;
    let _agent = controller.agent("chatty", &[]).await;
    // Many 8 kB events over ~4 s, 6.4 MB in all: more than the watcher's buffer and HTTP/2 windows hold.
    let script = "i=0; while [ $i -lt 800 ]; do head -c 8000 /dev/zero | tr '\\0' y; echo; sleep 0.005; i=$((i+1)); done";
    let mut request = exec_request(all_hosts(), &["sh", "-c", script], Duration::from_secs(60));
    request.output_cap_bytes = 8 * 1024 * 1024;

    // The requester reads everything, on its own connection.
    let mut requester = controller.fleet().await.run_job(request).await.expect("run").into_inner();
    let first = requester.message().await.expect("event").expect("accepted");
    let job_id = first.job_id;
    // This watcher, on another connection, reads nothing.
    let mut stalled =
        controller.fleet().await.watch_job(v1::WatchJobRequest { job_id }).await.expect("watch").into_inner();

    let mut events = vec![first];
    while let Some(event) = requester.message().await.expect("the reading client is never cut off") {
        events.push(event);
    }
    assert_eq!(completed(&events).state(), v1::JobState::Succeeded);
    assert_eq!(output_of(&events, "chatty", v1::OutputStream::Stdout).len(), 800 * 8001);

    // Long after the stall timeout, the silent watcher finds what it missed and why.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), stalled.message()).await.expect("not hung") {
            Ok(Some(event)) => assert!(
                !matches!(event.kind, Some(v1::job_event::Kind::Completed(_))),
                "the stalled watcher was not let go"
            ),
            Ok(None) => panic!("the stream ended without saying why"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains(&format!("tailopsctl jobs watch {job_id}")), "{status:?}");

    // Watching again replays the whole job.
    let again = collect_events(
        controller.fleet().await.watch_job(v1::WatchJobRequest { job_id }).await.expect("watch").into_inner(),
    )
    .await;
    assert_eq!(output_of(&again, "chatty", v1::OutputStream::Stdout).len(), 800 * 8001);
}
