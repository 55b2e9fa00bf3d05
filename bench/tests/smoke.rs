//! A tiny run of every scenario but the real-binary footprint, so the harness cannot rot: once
//! with the controller in this process and once with it in a child process
//! (`tailops-bench --controller-process`). Numbers from a run this small mean nothing; only that
//! each scenario completes is checked.

use std::time::Duration;

use tailops_bench::{Bench, ControllerMode, scenarios};

#[test]
fn every_scenario_runs_end_to_end() {
    every_scenario_runs(ControllerMode::InProcess);
}

#[test]
fn every_scenario_runs_with_the_controller_in_its_own_process() {
    every_scenario_runs(ControllerMode::OwnProcess { binary: env!("CARGO_BIN_EXE_tailops-bench").into() });
}

fn every_scenario_runs(mode: ControllerMode) {
    let own_process = matches!(mode, ControllerMode::OwnProcess { .. });
    let heartbeat = Duration::from_millis(200);
    let mut bench = Bench::start(heartbeat, mode).expect("controller starts");
    assert_eq!(bench.mode_name(), if own_process { "own-process" } else { "in-process" });
    assert_eq!(bench.controller_pid().is_some(), own_process);
    let baseline = bench.sim_rt.block_on(bench.memory()).expect("memory");

    let (enrolled, states) = scenarios::enroll(&bench, 3, 2).expect("enroll");
    assert_eq!(enrolled.enrollments, 3);
    assert!(enrolled.per_second > 0.0);
    bench.run_agents(states);
    bench.wait_online(3, Duration::from_secs(30)).expect("agents online");

    let fanout = scenarios::fanout(&bench, 3).expect("fan-out");
    assert_eq!((fanout.agents, fanout.latency.count), (3, 3));
    assert!(fanout.latency.max_ms > 0.0);
    assert!(fanout.controller_lag.timer_tick.count > 0, "the timer probe ran");
    assert!(fanout.controller_lag.wakeup.count > 0, "the wake-up probe ran");

    let steady = scenarios::steady(&bench, Duration::from_secs(1), baseline, heartbeat).expect("steady");
    assert_eq!(steady.agents, 3);
    assert!(steady.process_rss_bytes > 0);
    assert!(steady.controller_lag.timer_tick.count > 0, "the timer probe ran");
    assert!(steady.controller_lag.wakeup.count > 0, "the wake-up probe ran");
    if own_process {
        assert!(steady.controller_rss_bytes.is_some_and(|rss| rss > 0), "{steady:?}");
        assert!(steady.controller_rss_per_agent_bytes.is_some(), "{steady:?}");
    } else {
        assert_eq!(steady.controller_rss_bytes, None);
    }

    let pid_before = bench.controller_pid();
    let reconnect = scenarios::reconnect(&mut bench).expect("reconnect");
    assert_eq!(reconnect.agents, 3);
    if own_process {
        assert_ne!(bench.controller_pid(), pid_before, "a new controller process");
    }
    // Work still flows after the restart, and the (new) lag probe answers.
    let after = scenarios::fanout(&bench, 1).expect("fan-out after restart");
    assert_eq!(after.latency.count, 1);

    let ingest = scenarios::ingest(&bench, 2, 10, Duration::from_millis(500)).expect("ingest");
    assert_eq!(ingest.agents, 2);
    assert!(ingest.rows > 0, "samples reached SQLite");

    if own_process {
        let soak =
            scenarios::soak(&mut bench, Duration::from_secs(3), Duration::from_secs(1), Duration::ZERO, 1, 1)
                .expect("soak");
        assert!(soak.fanouts >= 2 && soak.points.iter().all(|p| p.controller_fds > 0), "{soak:?}");
        // The scenario checks its own guarantees and fails with the first one broken.
        let crash = scenarios::crash(&mut bench, 2, 2, Duration::from_millis(500)).expect("crash recovery");
        assert_eq!(crash.agents, 3);
        assert!(crash.jobs > 0, "{crash:?}");
    }
}
