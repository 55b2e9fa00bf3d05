//! Delivery guarantees: jobs queued for offline hosts, exactly once per host across reconnects
//! and restarts of either side, results kept by agents while the controller is away, agents
//! that die mid-job. Every case runs real controllers and agents; the "runs once" checks use a
//! command that appends a line to a file, so a second run would show.

use std::time::Duration;

use tailops_proto::v1::{self, job_event};
use tailops_tests::*;

fn queued(
    selector: v1::HostSelector,
    argv: &[&str],
    timeout: Duration,
    queue_for: Duration,
) -> v1::RunJobRequest {
    let mut request = exec_request(selector, argv, timeout);
    request.queue_for_ms = u64::try_from(queue_for.as_millis()).expect("ms");
    request
}

fn host(name: &str) -> v1::HostSelector {
    v1::HostSelector { hosts: vec![name.to_owned()], ..Default::default() }
}

fn is_queued(event: &v1::JobEvent) -> bool {
    matches!(event.kind, Some(job_event::Kind::Queued(_)))
}

fn is_started(event: &v1::JobEvent) -> bool {
    matches!(event.kind, Some(job_event::Kind::Started(_)))
}

/// A command that appends one line to `file` (so running it twice shows), then prints `word`.
fn append_once(file: &std::path::Path, word: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), format!("echo ran >> '{}'; echo {word}", file.display())]
}

fn argv(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

async fn lines(path: &std::path::Path) -> usize {
    tokio::fs::read_to_string(path).await.map(|t| t.lines().count()).unwrap_or(0)
}

#[tokio::test]
async fn a_queued_job_runs_once_when_its_host_reconnects_even_across_restarts() {
    let mut controller = TestController::start().await;
    let mut late = controller.agent("late", &[]).await;
    late.pause().await;
    controller.wait_online("late", false).await;

    let marker = late.state_dir.path().join("ran");
    let command = append_once(&marker, "hello");
    let request = queued(host("late"), &argv(&command), Duration::from_secs(30), Duration::from_secs(120));
    let mut stream = controller.fleet().await.run_job(request).await.expect("accepted").into_inner();
    let before = events_until(&mut stream, is_queued).await;
    let Some(job_event::Kind::Accepted(accepted)) = &before[0].kind else {
        panic!("accepted first: {before:?}")
    };
    assert!(accepted.queue_until_ms > 0, "{accepted:?}");
    let job_id = before[0].job_id;

    // Watchers see the host as queued while it is away.
    let (job, targets) = get_job(&controller, job_id).await;
    assert_eq!(job.state(), v1::JobState::Running);
    assert_eq!(targets[0].state(), v1::TargetState::Queued, "{targets:?}");
    assert!(job.queue_until_ms > 0);

    late.resume();
    let events = collect_events(stream).await;
    let finished = finished_by_host(&events).remove("late").expect("finished");
    assert_eq!(finished.state(), v1::TargetState::Succeeded, "{finished:?}");
    assert_eq!(output_of(&events, "late", v1::OutputStream::Stdout), "hello\n");
    assert_eq!(completed(&events).state(), v1::JobState::Succeeded);
    assert_eq!(lines(&marker).await, 1);

    // Another reconnect of the agent and a restart of the controller deliver nothing again.
    late.pause().await;
    controller = controller.restart().await;
    late.resume();
    controller.wait_online("late", true).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(lines(&marker).await, 1, "the job ran again");
    let (job, targets) = get_job(&controller, job_id).await;
    assert_eq!((job.state(), targets[0].state()), (v1::JobState::Succeeded, v1::TargetState::Succeeded));
    controller.stop().await;
}

#[tokio::test]
async fn a_host_that_stays_away_past_the_queue_window_expires_and_cancel_reaches_queued_hosts() {
    let controller = TestController::start().await;
    let mut away = controller.agent("away", &[]).await;
    let _here = controller.agent("here", &[]).await;
    away.pause().await;
    controller.wait_online("away", false).await;

    // Expiry: the host never comes back within the window; the host that is online is not held up.
    let request = queued(all_hosts(), &["true"], Duration::from_secs(30), Duration::from_secs(2));
    let stream = controller.fleet().await.run_job(request).await.expect("accepted").into_inner();
    let events = collect_events(stream).await;
    let finished = finished_by_host(&events);
    assert_eq!(finished["here"].state(), v1::TargetState::Succeeded);
    assert_eq!(finished["away"].state(), v1::TargetState::Expired, "{:?}", finished["away"]);
    let error = &finished["away"].result.as_ref().expect("result").error;
    assert!(error.contains("queue expired"), "{error}");
    let done = completed(&events);
    assert_eq!(done.state(), v1::JobState::Failed);
    assert_eq!(done.summary.expect("summary").expired, 1);

    // Cancel: a queued host's part ends cancelled at once, and never runs when the host returns.
    let marker = away.state_dir.path().join("cancelled-ran");
    let command = append_once(&marker, "no");
    let request = queued(host("away"), &argv(&command), Duration::from_secs(30), Duration::from_secs(120));
    let mut stream = controller.fleet().await.run_job(request).await.expect("accepted").into_inner();
    let job_id = events_until(&mut stream, is_queued).await[0].job_id;
    let cancel = controller
        .fleet()
        .await
        .cancel_job(v1::CancelJobRequest { job_id })
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(cancel.cancelled_targets, 1);
    let events = collect_events(stream).await;
    let finished = finished_by_host(&events).remove("away").expect("finished");
    assert_eq!(finished.state(), v1::TargetState::Cancelled);
    assert!(finished.result.expect("result").error.contains("queued"));
    away.resume();
    controller.wait_online("away", true).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(lines(&marker).await, 0, "a cancelled queued job ran");
    controller.stop().await;
}

#[tokio::test]
async fn without_queue_for_an_offline_host_is_unreachable_at_once() {
    let controller = TestController::start().await;
    let mut gone = controller.agent("gone", &[]).await;
    gone.pause().await;
    controller.wait_online("gone", false).await;
    let request = exec_request(host("gone"), &["true"], Duration::from_secs(30));
    let (state, result, _) = run_request(&controller, "gone", request).await;
    assert_eq!(state, v1::TargetState::Unreachable, "{result:?}");
    controller.stop().await;
}

#[tokio::test]
async fn a_result_that_ends_while_the_controller_is_down_is_delivered_after_it_restarts() {
    let controller = TestController::start().await;
    let agent = controller.agent("worker", &[]).await;
    let marker = agent.state_dir.path().join("slow");
    let script = format!("sleep 3; echo ran >> '{}'; exit 7", marker.display());
    let request = exec_request(host("worker"), &["sh", "-c", &script], Duration::from_secs(60));
    let mut stream = controller.fleet().await.run_job(request).await.expect("accepted").into_inner();
    let job_id = events_until(&mut stream, is_started).await[0].job_id;

    // The watcher is told the controller stops and how to come back.
    let controller = controller.restart().await;
    let status = loop {
        match stream.message().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the watch ended without saying why"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains(&format!("tailopsctl jobs watch {job_id}")), "{status:?}");

    // The job resumed; the agent kept running it and delivers its real exit code.
    let stream =
        controller.fleet().await.watch_job(v1::WatchJobRequest { job_id }).await.expect("watch").into_inner();
    let events = collect_events(stream).await;
    let finished = finished_by_host(&events).remove("worker").expect("finished");
    assert_eq!(finished.state(), v1::TargetState::Failed, "{finished:?}");
    assert_eq!(finished.result.as_ref().and_then(|r| r.exit_code), Some(7), "{finished:?}");
    assert_eq!(lines(&marker).await, 1);
    let (job, targets) = get_job(&controller, job_id).await;
    assert_eq!(job.state(), v1::JobState::Failed);
    assert_eq!(targets[0].result.as_ref().and_then(|r| r.exit_code), Some(7));
    // The agent forgets a result once the controller has stored it.
    let held = agent.state_dir.path().join("jobs/held");
    for _ in 0..50 {
        if count_files(&held).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count_files(&held).await, 0, "the stored result is still held by the agent");
    controller.stop().await;
}

#[tokio::test]
async fn queued_jobs_survive_a_controller_restart() {
    let controller = TestController::start().await;
    let mut later = controller.agent("later", &[]).await;
    later.pause().await;
    controller.wait_online("later", false).await;
    let marker = later.state_dir.path().join("ran");
    let command = append_once(&marker, "after the restart");
    let request = queued(host("later"), &argv(&command), Duration::from_secs(30), Duration::from_secs(120));
    let mut stream = controller.fleet().await.run_job(request).await.expect("accepted").into_inner();
    let job_id = events_until(&mut stream, is_queued).await[0].job_id;
    drop(stream);

    let controller = controller.restart().await;
    let (_, targets) = get_job(&controller, job_id).await;
    assert_eq!(targets[0].state(), v1::TargetState::Queued, "{targets:?}");
    later.resume();
    let stream =
        controller.fleet().await.watch_job(v1::WatchJobRequest { job_id }).await.expect("watch").into_inner();
    let events = collect_events(stream).await;
    let finished = finished_by_host(&events).remove("later").expect("finished");
    assert_eq!(finished.state(), v1::TargetState::Succeeded, "{finished:?}");
    assert_eq!(lines(&marker).await, 1);
    controller.stop().await;
}

#[tokio::test]
async fn an_agent_killed_mid_job_is_lost_within_the_offline_window_and_others_are_unaffected() {
    let controller = TestController::start().await;
    let mut victim = AgentProcess::start(&controller, "victim").await;
    let _steady = controller.agent("steady", &[]).await;
    let pidfile = victim.state_dir.path().join("pid");
    let script = format!("echo $$ > '{}'; sleep 60", pidfile.display());
    let long = exec_request(host("victim"), &["sh", "-c", &script], Duration::from_secs(120));
    let mut victim_job = controller.fleet().await.run_job(long).await.expect("accepted").into_inner();
    events_until(&mut victim_job, is_started).await;
    let leader: i32 = wait_for_file(&pidfile).await.trim().parse().expect("pid");
    let other = exec_request(host("steady"), &["sh", "-c", "sleep 1; echo fine"], Duration::from_secs(30));
    let other_job = controller.fleet().await.run_job(other).await.expect("accepted").into_inner();

    let killed_at = tokio::time::Instant::now();
    victim.kill().await;
    let events = collect_events(victim_job).await;
    let lost_after = killed_at.elapsed();
    let finished = finished_by_host(&events).remove("victim").expect("finished");
    assert_eq!(finished.state(), v1::TargetState::Lost, "{finished:?}");
    // The offline window is 3 heartbeats of 200 ms; the job's deadline is two minutes away.
    assert!(lost_after < Duration::from_secs(30), "lost only after {lost_after:?}");
    let others = collect_events(other_job).await;
    assert_eq!(finished_by_host(&others)["steady"].state(), v1::TargetState::Succeeded);
    assert_eq!(output_of(&others, "steady", v1::OutputStream::Stdout), "fine\n");

    // The dead agent left its job's processes behind; once it is back it kills them.
    assert!(process_alive(leader).await, "the job's process died with the agent");
    victim.run();
    controller.wait_online("victim", true).await;
    for _ in 0..100 {
        if !process_alive(leader).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!process_alive(leader).await, "the restarted agent left the job's processes running");
    let log = victim.log().await;
    assert!(log.contains(&format!("leftover processes (group {leader}) were killed")), "{log}");
    controller.stop().await;
}

#[tokio::test]
async fn an_agent_restarted_mid_job_reports_it_lost_and_kills_what_it_left() {
    // A wide offline window, so the agent is back before the controller writes it off: the
    // agent's own report decides the outcome.
    let controller = TestController::start_with(|config| config.timing.offline_after_missed = 100).await;
    let mut victim = AgentProcess::start(&controller, "phoenix").await;
    let pidfile = victim.state_dir.path().join("pid");
    let marker = victim.state_dir.path().join("ran");
    let script = format!("echo $$ > '{}'; echo ran >> '{}'; sleep 60", pidfile.display(), marker.display());
    let long = exec_request(host("phoenix"), &["sh", "-c", &script], Duration::from_secs(120));
    let mut stream = controller.fleet().await.run_job(long).await.expect("accepted").into_inner();
    events_until(&mut stream, is_started).await;
    let leader: i32 = wait_for_file(&pidfile).await.trim().parse().expect("pid");

    victim.kill().await;
    victim.run();
    let events = collect_events(stream).await;
    let finished = finished_by_host(&events).remove("phoenix").expect("finished");
    assert_eq!(finished.state(), v1::TargetState::Lost, "{finished:?}");
    let error = finished.result.expect("result").error;
    assert!(error.contains("agent restarted") && error.contains(&format!("group {leader}")), "{error}");
    assert!(!process_alive(leader).await, "the job's processes outlived the restart");
    // Redelivered after the reconnect, the job did not start a second time.
    assert_eq!(lines(&marker).await, 1);
    controller.stop().await;
}

#[tokio::test]
async fn an_approval_still_gates_a_queued_job_whose_window_starts_at_the_approval() {
    let controller = TestController::start().await;
    let mut away = controller.agent("away", &[]).await;
    away.pause().await;
    controller.wait_online("away", false).await;
    let bridge = controller.principal("bridge", "claude", "mcp", None).await;
    let marker = away.state_dir.path().join("approved-ran");
    let command = append_once(&marker, "approved");
    let request = queued(host("away"), &argv(&command), Duration::from_secs(30), Duration::from_secs(120));
    let mut stream =
        controller.fleet_as(&bridge).await.run_job(request).await.expect("accepted").into_inner();
    let job_id = until_approval_required(&mut stream).await;

    // Waiting for a human, the host is not yet queued, and coming back changes nothing.
    away.resume();
    controller.wait_online("away", true).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(lines(&marker).await, 0, "a job waiting for approval ran");
    away.pause().await;
    controller.wait_online("away", false).await;

    let decided = v1::DecideApprovalRequest { job_id, approve: true, reason: String::new() };
    controller.fleet().await.decide_approval(decided).await.expect("approve");
    let queued_at = events_until(&mut stream, is_queued).await;
    let Some(job_event::Kind::Queued(q)) = &queued_at.last().expect("queued").kind else { panic!("queued") };
    // The queue window counts from the approval, not from the request.
    let (job, _) = get_job(&controller, job_id).await;
    assert!(q.until_ms > job.created_at_ms + 120_000, "{q:?} {job:?}");
    away.resume();
    let events = collect_events(stream).await;
    assert_eq!(finished_by_host(&events)["away"].state(), v1::TargetState::Succeeded);
    assert_eq!(lines(&marker).await, 1);
    controller.stop().await;
}

async fn get_job(controller: &TestController, job_id: u64) -> (v1::Job, Vec<v1::TargetDetail>) {
    let response =
        controller.fleet().await.get_job(v1::GetJobRequest { job_id }).await.expect("get job").into_inner();
    (response.job.expect("job"), response.targets)
}

async fn count_files(dir: &std::path::Path) -> usize {
    let mut count = 0;
    if let Ok(mut entries) = tokio::fs::read_dir(dir).await {
        while let Ok(Some(_)) = entries.next_entry().await {
            count += 1;
        }
    }
    count
}
