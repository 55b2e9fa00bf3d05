//! No request can stall an agent (issue 13, point 3; H3, M6, L13, L7).
//!
//! Every test runs a real `tailops-agent` process: an agent task inside the test process would
//! share the test's runtime, and a stalled runtime would stall the test instead of showing up as
//! a host going offline. The controller's heartbeat deadline is 3 × 200 ms here, so an agent
//! whose link stops for a moment is marked offline; the tests look every 100 ms while the worst
//! input of each family runs. A result the agent sent is told apart from the controller's own
//! fallback (which comes 5 s after the deadline or a cancel and says "did not report" or "did not
//! confirm") by its empty error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tailops_proto::v1::{self, TargetState, fleet_client::FleetClient};
use tailops_tests::*;
use tempfile::TempDir;
use tokio::time::Instant;
use tonic::transport::Channel;

async fn online(admin: &mut FleetClient<Channel>, name: &str) -> bool {
    let hosts = admin.list_hosts(v1::ListHostsRequest::default()).await.expect("list hosts").into_inner();
    hosts.hosts.iter().any(|h| h.name == name && h.online)
}

/// What happened to one job on one host, and how the host looked meanwhile.
struct Watched {
    events: Vec<v1::JobEvent>,
    /// Times the host was seen offline while the job ran (checked every 100 ms).
    offline: usize,
    /// From the job's acceptance to its end.
    took: Duration,
}

impl Watched {
    fn finished(&self, host: &str) -> v1::TargetFinished {
        finished_by_host(&self.events).remove(host).expect("a result for the host")
    }
}

/// Runs `request` with `fleet`, calling `meanwhile` once the host reports the job started
/// (e.g. to cancel it), and watches the host's liveness until the job ends.
async fn watch<F, Fut>(
    controller: &TestController,
    fleet: &mut FleetClient<Channel>,
    request: v1::RunJobRequest,
    host: &str,
    meanwhile: F,
) -> Watched
where
    F: FnOnce(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut admin = controller.fleet().await;
    let mut stream = fleet.run_job(request).await.expect("accepted").into_inner();
    let started = Instant::now();
    let mut meanwhile = Some(meanwhile);
    let mut events = Vec::new();
    let mut offline = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            event = stream.message() => match event.expect("job stream") {
                Some(event) => {
                    let begun = matches!(event.kind, Some(v1::job_event::Kind::Started(_)));
                    let job_id = event.job_id;
                    events.push(event);
                    if begun && let Some(act) = meanwhile.take() {
                        act(job_id).await;
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                if !online(&mut admin, host).await {
                    offline += 1;
                }
            }
        }
        assert!(started.elapsed() < Duration::from_secs(120), "the job did not end");
    }
    Watched { events, offline, took: started.elapsed() }
}

async fn nothing(_: u64) {}

/// Cancels a job as the admin.
async fn cancel(controller: &TestController, job_id: u64) {
    let response = controller
        .fleet()
        .await
        .cancel_job(v1::CancelJobRequest { job_id })
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(response.cancelled_targets, 1);
}

/// Cancels a job as the admin, whether or not it is still running by then (a search with the
/// linear matcher may well have ended already).
async fn cancel_if_running(controller: &TestController, job_id: u64) {
    controller.fleet().await.cancel_job(v1::CancelJobRequest { job_id }).await.expect("cancel");
}

/// The agent itself reported how the job ended (not the controller's fallback).
fn reported_by_agent(finished: &v1::TargetFinished) -> v1::CommandResult {
    let result = finished.result.clone().unwrap_or_default();
    assert!(
        !result.error.contains("did not report") && !result.error.contains("did not confirm"),
        "the controller had to write the job off: {}",
        result.error
    );
    result
}

async fn wait_gone(pid: i32, what: &str) {
    for _ in 0..50 {
        if !process_alive(pid).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} ({pid}) outlived its job");
}

async fn read_pid(path: &Path) -> i32 {
    for _ in 0..100 {
        if let Ok(text) = tokio::fs::read_to_string(path).await
            && let Ok(pid) = text.trim().parse()
        {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} was never written", path.display());
}

fn arg(flag: &str, value: impl AsRef<Path>) -> Vec<String> {
    vec![flag.to_owned(), value.as_ref().display().to_string()]
}

/// A directory of `n` files with names of 20-odd characters, like /etc's.
async fn many_names(n: usize) -> TempDir {
    let dir = tempfile::tempdir().expect("dir");
    for i in 0..n {
        tokio::fs::write(dir.path().join(format!("ca-certificates{i:04}.conf")), b"x").await.expect("write");
    }
    dir
}

// ----- H3: CPU-bound work cannot hold up the link -------------------------------------------

#[tokio::test]
async fn the_exponential_file_search_as_mcp_neither_stalls_the_agent_nor_outlives_its_job() {
    let controller = TestController::start().await;
    let root = many_names(200).await;
    let agent = AgentProcess::start_with(&controller, "h3", &arg("--files-observe-root", root.path())).await;
    let bridge = controller.principal("bridge", "assistant", "mcp", None).await;
    let mut fleet = controller.fleet_as(&bridge).await;
    let pattern = format!("{}#", "*".repeat(30));
    let path = root.path().display().to_string();
    let search = |timeout| {
        op_request_with("h3", "file.search", &[("path", &path), ("pattern", &pattern)], false, timeout)
    };

    // To its deadline. (With a linear matcher the search simply ends early; either way the host
    // stays online and the agent, not the controller, reports the end.)
    let watched = watch(&controller, &mut fleet, search(Duration::from_secs(3)), "h3", nothing).await;
    let finished = watched.finished("h3");
    let result = reported_by_agent(&finished);
    assert!(
        matches!(finished.state(), TargetState::TimedOut | TargetState::Succeeded | TargetState::Failed),
        "{:?}: {}",
        finished.state(),
        result.error
    );
    if finished.state() == TargetState::TimedOut {
        assert!(result.timed_out);
    }
    assert_eq!(watched.offline, 0, "the host went offline while the search ran");

    // Cancelled while it runs.
    let watched = watch(&controller, &mut fleet, search(Duration::from_secs(60)), "h3", |id| {
        cancel_if_running(&controller, id)
    })
    .await;
    let finished = watched.finished("h3");
    let result = reported_by_agent(&finished);
    assert!(
        matches!(finished.state(), TargetState::Cancelled | TargetState::Succeeded),
        "{:?}",
        finished.state()
    );
    assert!(watched.took < Duration::from_secs(5), "the cancel took {:?}", watched.took);
    assert!(!result.error.contains("busy"), "{}", result.error);
    assert_eq!(watched.offline, 0, "the host went offline while the search ran");

    // The agent still serves jobs.
    let request = op_request("h3", "file.search", &[("path", &path), ("pattern", "*0001.conf")], false);
    let finished = watch(&controller, &mut fleet, request, "h3", nothing).await.finished("h3");
    let result = finished.result.clone().unwrap_or_default();
    assert_eq!(finished.state(), TargetState::Succeeded, "{}", result.error);
    assert_eq!(op_output(&result).records.len(), 1);
    drop(agent);
    controller.stop().await;
}

// ----- M6: results are capped below the link's message limit --------------------------------

#[tokio::test]
async fn tailing_a_huge_log_as_a_viewer_gives_a_truncated_result_not_a_lost_host() {
    let controller = TestController::start().await;
    let root = tempfile::tempdir().expect("dir");
    let log = root.path().join("big.log");
    let text: String = (0..10_000).map(|i| format!("{i:05} {}\n", "x".repeat(994))).collect();
    tokio::fs::write(&log, &text).await.expect("write log");
    let _agent = AgentProcess::start_with(&controller, "m6", &arg("--files-observe-root", root.path())).await;
    let viewer = controller.principal("user", "val", "viewer", None).await;
    let mut fleet = controller.fleet_as(&viewer).await;
    let path = log.display().to_string();

    for name in ["file.tail", "log.file"] {
        let request = op_request("m6", name, &[("path", &path), ("lines", "10000")], false);
        let watched = watch(&controller, &mut fleet, request, "m6", nothing).await;
        let finished = watched.finished("m6");
        let result = finished.result.clone().unwrap_or_default();
        assert_eq!(finished.state(), TargetState::Succeeded, "{name}: {}", result.error);
        assert!(result.stdout_truncated, "{name}: the cut is not flagged");
        let output = op_output(&result);
        let kept = output.records.len();
        assert!(kept > 0 && kept < 2_000, "{name}: {kept} records");
        assert!(output.summary.contains(&format!("(truncated: the last {kept} of ")), "{}", output.summary);
        // The newest lines are the ones kept.
        assert!(field(&output.records[kept - 1], "line").starts_with("09999 "), "{name}");
        assert_eq!(watched.offline, 0, "{name}: the host went offline");
    }
    controller.stop().await;
}

// ----- L13 and deadlines: tools die with their whole process group --------------------------

/// A `systemctl` that ignores SIGTERM, starts a grandchild `sleep 300` (its pid in `pid_file`)
/// and never exits.
async fn stubborn_tool(dir: &Path, pid_file: &Path) -> PathBuf {
    let body = format!(
        "#!/bin/sh\ntrap '' TERM\nsleep 300 &\necho $! > '{}'\nwhile :; do sleep 1; done\n",
        pid_file.display()
    );
    stand_in(&dir.join("systemctl"), &body).await
}

#[tokio::test]
async fn a_tool_that_ignores_sigterm_dies_with_its_grandchildren_at_the_deadline_and_on_cancel() {
    let controller = TestController::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let pid_file = dir.path().join("grandchild.pid");
    let tool = stubborn_tool(dir.path(), &pid_file).await;
    let _agent =
        AgentProcess::start_with(&controller, "l13", &[format!("--tool=systemctl={}", tool.display())]).await;
    let mut fleet = controller.fleet().await;

    let request = op_request_with("l13", "service.list", &[], false, Duration::from_secs(2));
    let watched = watch(&controller, &mut fleet, request, "l13", nothing).await;
    let finished = watched.finished("l13");
    let result = reported_by_agent(&finished);
    assert_eq!(finished.state(), TargetState::TimedOut, "{}", result.error);
    assert!(result.timed_out);
    assert!(watched.took < Duration::from_secs(5), "the deadline took {:?}", watched.took);
    assert_eq!(watched.offline, 0);
    wait_gone(read_pid(&pid_file).await, "the tool's grandchild").await;

    tokio::fs::remove_file(&pid_file).await.expect("remove pid file");
    let request = op_request_with("l13", "service.list", &[], false, Duration::from_secs(60));
    let pid_path = pid_file.clone();
    let watched = watch(&controller, &mut fleet, request, "l13", |id| {
        let controller = &controller;
        async move {
            // The tool is running once it wrote its grandchild's pid.
            read_pid(&pid_path).await;
            cancel(controller, id).await;
        }
    })
    .await;
    let finished = watched.finished("l13");
    let result = reported_by_agent(&finished);
    assert_eq!(finished.state(), TargetState::Cancelled, "{}", result.error);
    assert!(result.cancelled);
    assert_eq!(watched.offline, 0);
    wait_gone(read_pid(&pid_file).await, "the tool's grandchild").await;
    controller.stop().await;
}

#[tokio::test]
async fn a_tool_printing_without_end_is_cut_off_at_the_deadline_in_bounded_memory() {
    let controller = TestController::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let tool = stand_in(
        &dir.path().join("systemctl"),
        "#!/bin/sh\nexec yes 'flood.service loaded active running x'\n",
    )
    .await;
    let agent =
        AgentProcess::start_with(&controller, "flood", &[format!("--tool=systemctl={}", tool.display())])
            .await;
    let before = agent.rss_kib().await;
    let mut fleet = controller.fleet().await;
    let request = op_request_with("flood", "service.list", &[], false, Duration::from_secs(3));
    let watched = watch(&controller, &mut fleet, request, "flood", nothing).await;
    let finished = watched.finished("flood");
    let result = reported_by_agent(&finished);
    assert_eq!(finished.state(), TargetState::TimedOut, "{}", result.error);
    assert_eq!(watched.offline, 0);
    // `yes` writes hundreds of MiB a second; the agent keeps 4 MiB of it per stream.
    let after = agent.rss_kib().await;
    assert!(after < before + 64 * 1024, "the agent grew from {before} to {after} KiB");
    controller.stop().await;
}

// ----- follow jobs ---------------------------------------------------------------------------

#[tokio::test]
async fn a_follow_job_ends_on_cancel_and_the_host_stays_online() {
    let controller = TestController::start().await;
    let root = tempfile::tempdir().expect("dir");
    let log = root.path().join("app.log");
    tokio::fs::write(&log, "first\n").await.expect("write log");
    let _agent =
        AgentProcess::start_with(&controller, "follow", &arg("--files-observe-root", root.path())).await;
    let bridge = controller.principal("bridge", "assistant", "mcp", None).await;
    let mut fleet = controller.fleet_as(&bridge).await;
    let request = op_request_with(
        "follow",
        "log.file",
        &[("path", &log.display().to_string()), ("follow", "true")],
        false,
        Duration::from_secs(60),
    );
    let watched = watch(&controller, &mut fleet, request, "follow", |id| {
        let controller = &controller;
        async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            cancel(controller, id).await;
        }
    })
    .await;
    let finished = watched.finished("follow");
    let result = reported_by_agent(&finished);
    assert_eq!(finished.state(), TargetState::Cancelled, "{}", result.error);
    assert!(watched.took < Duration::from_secs(5), "the cancel took {:?}", watched.took);
    assert_eq!(watched.offline, 0);
    controller.stop().await;
}

// ----- L7: the address policy covers every network check -----------------------------------

#[tokio::test]
async fn network_checks_refuse_metadata_addresses_before_anything_runs() {
    let controller = TestController::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let log = dir.path().join("calls.log");
    let record = format!("#!/bin/sh\necho \"$0 $*\" >> '{}'\n", log.display());
    let ping = stand_in(&dir.path().join("ping"), &record).await;
    let traceroute = stand_in(&dir.path().join("traceroute"), &record).await;
    let args =
        [format!("--tool=ping={}", ping.display()), format!("--tool=traceroute={}", traceroute.display())];
    let _agent = AgentProcess::start_with(&controller, "l7", &args).await;

    for (name, params) in [
        ("net.port", vec![("host", "169.254.169.254"), ("port", "80")]),
        ("net.port", vec![("host", "100.100.100.200"), ("port", "80")]),
        ("net.tls", vec![("host", "169.254.169.254")]),
        ("net.ping", vec![("host", "100.100.100.200")]),
        ("net.ping", vec![("host", "fd00:ec2::254")]),
        ("net.traceroute", vec![("host", "64:ff9b::a9fe:a9fe")]),
    ] {
        let (state, result) = run_op(&controller, "l7", name, &params, false).await;
        assert_eq!(state, TargetState::Failed, "{name} {params:?}");
        assert!(
            result.error.starts_with("refused: ") && result.error.contains("address policy does not allow"),
            "{name} {params:?}: {}",
            result.error
        );
    }
    assert!(calls(dir.path()).await.is_empty(), "a tool ran: {:?}", calls(dir.path()).await);

    // Private and loopback targets stay allowed: checks from the host are for the homelab too.
    let (state, result) =
        run_op(&controller, "l7", "net.port", &[("host", "127.0.0.1"), ("port", "9")], false).await;
    assert_eq!(state, TargetState::Succeeded, "{}", result.error);
    controller.stop().await;
}
