//! Network faults with real network namespaces (issue 14, section 3): three `tailops-agent`
//! processes, each in its own namespace, run a three-second command; one host's link fails a
//! second in. The other two must finish as if nothing happened, the failed one must be written
//! off within the controller's offline window, and after the link heals the agent must come back
//! on its own and take new work. Needs root; see `tailops_tests::netns`.
//!
//! Bounds carry generous slack: CI is a shared two-core machine. They check that nothing waits
//! for a dead host (a job's timeout, TCP's own 15-minute give-up), not how fast anything is.

use std::time::{Duration, Instant};

use tailops_proto::v1;
use tailops_tests::netns::{AGENT_MAX_BACKOFF, NetnsFleet};
use tailops_tests::*;

const JOB: &[&str] = &["sh", "-c", "sleep 3; echo done"];
const JOB_LENGTH: Duration = Duration::from_secs(3);
/// Far below either: the job's timeout and what TCP would take to give up on its own.
const SLACK: Duration = Duration::from_secs(10);
/// After a heal, the agent must first learn that its old connection is dead (the controller
/// closed the stream during the outage; the close reaches the agent when TCP next retransmits,
/// and retransmissions back off while the link is down), then back off at most
/// `AGENT_MAX_BACKOFF`.
const RECONNECT_SLACK: Duration = Duration::from_secs(20);
const VICTIM: &str = "h1";

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// `ip link set eth0 down` in the agent's namespace.
    Cut,
    /// 100 % loss both ways with the links up: the TCP connection hangs instead of resetting.
    Blackhole,
}

#[tokio::test]
async fn a_cut_link_mid_fan_out_fails_only_that_host_which_comes_back_after_healing() {
    let Some(mut fleet) = NetnsFleet::start(3, |_| {}).await else { return };
    fault_mid_fan_out(&mut fleet, Fault::Cut).await;
    heal_and_run_again(&fleet, Fault::Cut).await;
}

#[tokio::test]
async fn work_queued_for_a_cut_off_host_runs_once_after_the_link_heals() {
    let Some(fleet) = NetnsFleet::start(2, |_| {}).await else { return };
    fleet.cut(VICTIM).await;
    fleet.wait_online(VICTIM, false, fleet.offline_window() + fleet.heartbeat_interval() + SLACK).await;

    // Namespaces share the filesystem: the test reads what the agent's job wrote.
    let marker = fleet.agent_state_dir(VICTIM).join("queued-ran");
    let script = format!("echo ran >> '{}'; echo queued", marker.display());
    let only_victim = v1::HostSelector { hosts: vec![VICTIM.to_owned()], ..Default::default() };
    let mut request = exec_request(only_victim, &["sh", "-c", &script], Duration::from_secs(30));
    request.queue_for_ms = 120_000;
    let mut stream = fleet.fleet().await.run_job(request).await.expect("accepted").into_inner();
    let before = events_until(&mut stream, |e| matches!(e.kind, Some(v1::job_event::Kind::Queued(_)))).await;
    let queued = before.last().and_then(|e| match &e.kind {
        Some(v1::job_event::Kind::Queued(q)) => q.target.clone(),
        _ => None,
    });
    assert_eq!(queued.map(|t| t.host_name).as_deref(), Some(VICTIM));

    let took = heal_and_wait_online(&fleet, Fault::Cut).await;
    eprintln!("{VICTIM}: back online {took:?} after the heal");
    let mut events = before;
    events.extend(collect_events(stream).await);
    let finished: Vec<&v1::TargetFinished> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(v1::job_event::Kind::Finished(f))
                if f.target.as_ref().is_some_and(|t| t.host_name == VICTIM) =>
            {
                Some(f)
            }
            _ => None,
        })
        .collect();
    assert_eq!(finished.len(), 1, "{finished:?}");
    assert_eq!(finished[0].state(), v1::TargetState::Succeeded, "{:?}", finished[0]);
    assert_eq!(output_of(&events, VICTIM, v1::OutputStream::Stdout), "queued\n");
    assert_eq!(completed(&events).state(), v1::JobState::Succeeded);
    let lines = tokio::fs::read_to_string(&marker).await.expect("marker").lines().count();
    assert_eq!(lines, 1, "the queued job ran {lines} times");
}

#[tokio::test]
async fn a_blackholed_link_mid_fan_out_is_found_by_missed_heartbeats_and_recovers() {
    let Some(mut fleet) = NetnsFleet::start(3, |_| {}).await else { return };
    let Some(method) = fleet.blackhole_method() else {
        netns::skip("neither tc netem nor nftables netdev hooks work here");
        return;
    };
    eprintln!("blackholing with {method:?}");
    fault_mid_fan_out(&mut fleet, Fault::Blackhole).await;
    heal_and_run_again(&fleet, Fault::Blackhole).await;
}

/// Runs `JOB` on every host, breaks `VICTIM`'s link a second into it, and checks how each
/// host's part ended and when.
async fn fault_mid_fan_out(fleet: &mut NetnsFleet, fault: Fault) {
    let started = Instant::now();
    let stream = fleet
        .fleet()
        .await
        .run_job(exec_request(all_hosts(), JOB, Duration::from_secs(60)))
        .await
        .expect("accepted")
        .into_inner();
    // Events are timestamped as they arrive, also while this task is busy breaking the link.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        let mut stream = stream;
        while let Some(event) = stream.message().await.expect("job stream error") {
            let _ = tx.send((Instant::now(), event));
        }
    });
    let mut events: Vec<(Instant, v1::JobEvent)> = Vec::new();
    let hosts = fleet.host_names();
    let mut running = std::collections::BTreeSet::new();
    while running.len() < hosts.len() {
        let (at, event) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("every host starts the job")
            .expect("the stream ended before every host started");
        if let Some(v1::job_event::Kind::Started(s)) = &event.kind {
            running.insert(s.target.clone().unwrap_or_default().host_name);
        }
        assert!(
            !matches!(event.kind, Some(v1::job_event::Kind::Finished(_))),
            "a host finished before all had started: {event:?}"
        );
        events.push((at, event));
    }

    tokio::time::sleep(Duration::from_secs(1)).await;
    let faulted = Instant::now();
    match fault {
        Fault::Cut => fleet.cut(VICTIM).await,
        Fault::Blackhole => fleet.blackhole(VICTIM).await,
    }
    while let Some(timed) =
        tokio::time::timeout(Duration::from_secs(60), rx.recv()).await.expect("job stream stalled")
    {
        events.push(timed);
    }
    reader.await.expect("reader");

    let finished_at = |host: &str| {
        events
            .iter()
            .find_map(|(at, e)| match &e.kind {
                Some(v1::job_event::Kind::Finished(f))
                    if f.target.as_ref().is_some_and(|t| t.host_name == host) =>
                {
                    Some(*at)
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("no result from {host}"))
    };
    let plain: Vec<v1::JobEvent> = events.iter().map(|(_, e)| e.clone()).collect();
    let finished = finished_by_host(&plain);
    let log = fleet.controller_log().await;

    for host in hosts.iter().filter(|h| *h != VICTIM) {
        let result = &finished[host];
        assert_eq!(result.state(), v1::TargetState::Succeeded, "{host}: {result:?}\n{log}");
        assert_eq!(output_of(&plain, host, v1::OutputStream::Stdout), "done\n");
        let took = finished_at(host) - started;
        assert!(took <= JOB_LENGTH + SLACK, "{host} took {took:?} with {VICTIM}'s link down");
        eprintln!("{host}: succeeded after {took:?}");
    }

    // The job had reached the host, which then went away for longer than the offline window.
    let lost = &finished[VICTIM];
    let state = lost.state().as_str_name();
    assert_eq!(lost.state(), v1::TargetState::Lost, "{VICTIM} ended {state}: {lost:?}");
    let error = lost.result.clone().unwrap_or_default().error.to_lowercase();
    assert!(
        ["disconnect", "offline", "lost", "silent"].iter().any(|w| error.contains(w)),
        "{VICTIM}'s error does not say it lost the agent: {error:?}"
    );
    let detected = finished_at(VICTIM) - faulted;
    // The sweeper looks once per heartbeat interval, so silence is noticed up to one interval
    // after the window.
    let bound = fleet.offline_window() + fleet.heartbeat_interval() + SLACK;
    assert!(detected <= bound, "{VICTIM} was written off {detected:?} after the fault (bound {bound:?})");
    eprintln!(
        "{VICTIM}: {state} {detected:?} after the {fault:?} (offline window {:?})",
        fleet.offline_window()
    );

    // Neither fault resets the connection: the controller found out because the heartbeats
    // stopped, not because the stream failed.
    assert!(
        log.lines().any(|l| l.contains("agent went silent") && l.contains(&format!("host={VICTIM}"))),
        "the controller did not notice {VICTIM} through its heartbeat deadline:\n{log}"
    );
    assert!(fleet.agent_running(VICTIM), "the agent process died: {}", fleet.agent_log(VICTIM).await);
    assert_eq!(completed(&plain).summary.unwrap_or_default().succeeded, 2);
}

/// Heals `VICTIM`'s link; the agent must reconnect by itself and run a new job.
async fn heal_and_run_again(fleet: &NetnsFleet, fault: Fault) {
    let took = heal_and_wait_online(fleet, fault).await;
    eprintln!("{VICTIM}: back online {took:?} after the heal");

    let only_victim = v1::HostSelector { hosts: vec![VICTIM.to_owned()], ..Default::default() };
    let stream = fleet
        .fleet()
        .await
        .run_job(exec_request(only_victim, &["echo", "back"], Duration::from_secs(30)))
        .await
        .expect("accepted")
        .into_inner();
    let events = collect_events(stream).await;
    let result = &finished_by_host(&events)[VICTIM];
    assert_eq!(result.state(), v1::TargetState::Succeeded, "{result:?}");
    assert_eq!(output_of(&events, VICTIM, v1::OutputStream::Stdout), "back\n");
    for host in fleet.host_names() {
        assert!(fleet.host(&host).await.is_some_and(|h| h.online), "{host} is offline");
    }
}

/// Undoes `fault` on `VICTIM` and waits until the controller lists it online again; returns how
/// long that took.
async fn heal_and_wait_online(fleet: &NetnsFleet, fault: Fault) -> Duration {
    match fault {
        Fault::Cut => fleet.heal(VICTIM).await,
        Fault::Blackhole => fleet.unblackhole(VICTIM).await,
    }
    fleet.wait_online(VICTIM, true, AGENT_MAX_BACKOFF + RECONNECT_SLACK).await
}
