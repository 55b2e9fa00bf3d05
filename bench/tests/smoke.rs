//! A tiny run of every scenario but the real-binary footprint, so the harness cannot rot.
//! Numbers from a run this small mean nothing; only that each scenario completes is checked.

use std::time::Duration;

use tailops_bench::measure::{LagProbe, rss_bytes};
use tailops_bench::{Bench, scenarios};

#[test]
fn every_scenario_runs_end_to_end() {
    let heartbeat = Duration::from_millis(200);
    let mut bench = Bench::start(heartbeat).expect("controller starts");
    let probe = LagProbe::start(bench.controller_rt.handle());
    let baseline = bench.sim_rt.block_on(rss_bytes("self"));

    let (enrolled, states) = scenarios::enroll(&bench, 3, 2).expect("enroll");
    assert_eq!(enrolled.enrollments, 3);
    assert!(enrolled.per_second > 0.0);
    bench.run_agents(states);
    bench.wait_online(3, Duration::from_secs(30)).expect("agents online");

    let fanout = scenarios::fanout(&bench, 3, &probe).expect("fan-out");
    assert_eq!((fanout.agents, fanout.latency.count), (3, 3));
    assert!(fanout.latency.max_ms > 0.0);
    assert!(fanout.controller_lag.count > 0, "the lag probe ran");

    let steady = scenarios::steady(&bench, Duration::from_secs(1), baseline, heartbeat, &probe);
    assert_eq!(steady.agents, 3);
    assert!(steady.process_rss_bytes > 0);

    let reconnect = scenarios::reconnect(&mut bench).expect("reconnect");
    assert_eq!(reconnect.agents, 3);
    // Work still flows after the restart.
    scenarios::fanout(&bench, 1, &probe).expect("fan-out after restart");

    let ingest = scenarios::ingest(&bench, 2, 10, Duration::from_millis(500), &probe).expect("ingest");
    assert_eq!(ingest.agents, 2);
    assert!(ingest.rows > 0, "samples reached SQLite");
}
