//! The scenarios. Each returns a serialisable result; `main` prints and saves them.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use tailops_agent::AgentState;
use tailops_proto::v1;

use crate::measure::{
    Lag, Percentiles, children_cpu_seconds, peak_rss_bytes, process_cpu_seconds, rss_bytes,
};
use crate::{Bench, Memory};

#[derive(Debug, Clone, Serialize)]
pub struct EnrollResult {
    pub enrollments: usize,
    pub parallel: usize,
    pub seconds: f64,
    pub per_second: f64,
}

/// Enrolls `n` agents (`parallel` at a time) through the real enrollment path: CA pinning
/// handshake, TLS connection, token + CSR, certificate signing, state files written.
pub fn enroll(bench: &Bench, n: usize, parallel: usize) -> anyhow::Result<(EnrollResult, Vec<AgentState>)> {
    let started = std::time::Instant::now();
    let states = bench.enroll(n, parallel)?;
    let seconds = started.elapsed().as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let per_second = n as f64 / seconds;
    Ok((EnrollResult { enrollments: n, parallel, seconds, per_second }, states))
}

#[derive(Debug, Clone, Serialize)]
pub struct FanoutResult {
    pub agents: usize,
    pub runs: usize,
    /// From the client's RunJob call until it has received every host's result.
    pub latency: Percentiles,
    /// Scheduling lag of the controller runtime during the runs.
    pub controller_lag: Lag,
}

/// Runs a no-op job on every agent `runs` times, one after another.
pub fn fanout(bench: &Bench, runs: usize) -> anyhow::Result<FanoutResult> {
    let agents = bench.agent_count();
    let (latencies, controller_lag) = bench.sim_rt.block_on(async {
        bench.reset_lag().await?;
        let mut fleet = bench.fleet().await?;
        let mut latencies = Vec::with_capacity(runs);
        for _ in 0..runs {
            let request = no_op_job(v1::HostSelector { all: true, ..Default::default() });
            let started = tokio::time::Instant::now();
            let mut events = fleet.run_job(request).await?.into_inner();
            let summary = loop {
                match events.message().await? {
                    Some(v1::JobEvent { kind: Some(v1::job_event::Kind::Completed(done)), .. }) => {
                        break done.summary.unwrap_or_default();
                    }
                    Some(_) => {}
                    None => anyhow::bail!("the job stream ended before the job completed"),
                }
            };
            latencies.push(started.elapsed());
            let total = usize::try_from(summary.total)?;
            if total != agents || summary.succeeded != summary.total {
                anyhow::bail!(
                    "fan-out reached {} of {agents} hosts ({} succeeded)",
                    total,
                    summary.succeeded
                );
            }
        }
        anyhow::Ok((latencies, bench.controller_lag().await?))
    })?;
    Ok(FanoutResult { agents, runs, latency: Percentiles::of(&latencies), controller_lag })
}

#[derive(Debug, Clone, Serialize)]
pub struct SteadyResult {
    pub agents: usize,
    pub window_s: f64,
    pub heartbeat_s: f64,
    /// Percent of one core: controller runtime + SQLite worker threads (in-process), or the
    /// controller's whole process (own process).
    pub controller_cpu_pct: f64,
    /// Percent of one core: the load generator (simulated agents, client, harness); with the
    /// controller in its own process, this whole process.
    pub agents_cpu_pct: f64,
    /// RSS of this (the harness's) process.
    pub process_rss_bytes: u64,
    /// (RSS now - RSS before any agent) / agents, this process. In-process that is controller
    /// and simulated agent together, so an upper bound for the controller's share; with the
    /// controller in its own process, the simulated agent's end alone.
    pub rss_per_agent_bytes: u64,
    /// RSS of the controller's process (own-process mode only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub controller_rss_bytes: Option<u64>,
    /// (controller RSS now - controller RSS before any agent) / agents (own-process mode only):
    /// the controller's memory per agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub controller_rss_per_agent_bytes: Option<u64>,
    pub controller_lag: Lag,
    /// Heartbeat times written to SQLite per second: one transaction per sweep updating every
    /// online host (derived from the code path, not counted).
    pub sqlite_rows_per_s: f64,
}

/// Leaves the fleet idle (heartbeats only) for `window` and measures the cost. `baseline` is
/// [`Bench::memory`] before any agent was enrolled.
pub fn steady(
    bench: &Bench,
    window: Duration,
    baseline: Memory,
    heartbeat: Duration,
) -> anyhow::Result<SteadyResult> {
    let agents = bench.agent_count();
    let per_agent =
        |now: u64, before: u64| now.saturating_sub(before) / u64::try_from(agents.max(1)).unwrap_or(1);
    bench.sim_rt.block_on(async {
        bench.reset_lag().await?;
        let before = bench.cpu_times().await?;
        tokio::time::sleep(window).await;
        let used = bench.cpu_times().await?.since(before);
        let memory = bench.memory().await?;
        let window_s = window.as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        Ok(SteadyResult {
            agents,
            window_s,
            heartbeat_s: heartbeat.as_secs_f64(),
            controller_cpu_pct: used.controller_s / window_s * 100.0,
            agents_cpu_pct: used.agents_s / window_s * 100.0,
            process_rss_bytes: memory.harness_bytes,
            rss_per_agent_bytes: per_agent(memory.harness_bytes, baseline.harness_bytes),
            controller_rss_bytes: memory.controller_bytes,
            controller_rss_per_agent_bytes: memory
                .controller_bytes
                .zip(baseline.controller_bytes)
                .map(|(now, before)| per_agent(now, before)),
            controller_lag: bench.controller_lag().await?,
            sqlite_rows_per_s: agents as f64 / heartbeat.as_secs_f64(),
        })
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct ReconnectResult {
    pub agents: usize,
    /// From the controller's restart until every agent is online again.
    pub seconds_to_all_online: f64,
}

pub fn reconnect(bench: &mut Bench) -> anyhow::Result<ReconnectResult> {
    let agents = bench.agent_count();
    let started = std::time::Instant::now();
    bench.restart_controller()?;
    bench.wait_online(agents, Duration::from_secs(300))?;
    Ok(ReconnectResult { agents, seconds_to_all_online: started.elapsed().as_secs_f64() })
}

#[derive(Debug, Clone, Serialize)]
pub struct FootprintResult {
    pub window_s: f64,
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
    /// Percent of one core over the window, the agent process alone.
    pub cpu_pct: f64,
    /// Percent of one core used by the commands the agent ran for facts (docker, systemctl...).
    pub commands_cpu_pct: f64,
}

/// The real `tailops-agent` binary, enrolled and idle for `window` at the default heartbeat.
pub fn footprint(bench: &Bench, agent_binary: &Path, window: Duration) -> anyhow::Result<FootprintResult> {
    let state = bench.enroll(1, 1)?.remove(0);
    bench.sim_rt.block_on(async {
        let mut child = tokio::process::Command::new(agent_binary)
            .args(["--log", "warn", "run", "--state-dir"])
            .arg(&state.dir)
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().ok_or_else(|| anyhow::anyhow!("agent exited at once"))?.to_string();
        // Let it connect and settle before measuring.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let cpu_before = process_cpu_seconds(&pid).await;
        let commands_before = children_cpu_seconds(&pid).await;
        tokio::time::sleep(window).await;
        let cpu = process_cpu_seconds(&pid).await - cpu_before;
        let commands = children_cpu_seconds(&pid).await - commands_before;
        let rss = rss_bytes(&pid).await;
        let peak = peak_rss_bytes(&pid).await;
        child.kill().await?;
        let window_s = window.as_secs_f64();
        anyhow::Ok(FootprintResult {
            window_s,
            rss_bytes: rss,
            peak_rss_bytes: peak,
            cpu_pct: cpu / window_s * 100.0,
            commands_cpu_pct: commands / window_s * 100.0,
        })
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct IngestResult {
    pub agents: usize,
    pub samples_per_batch: usize,
    pub seconds: f64,
    /// Samples committed to SQLite (`metrics_raw` rows), per second, from the first batch sent
    /// until the last row was committed.
    pub samples_per_second: f64,
    pub rows: u64,
    pub controller_lag: Lag,
}

/// `agents` agent streams push sample batches as fast as the controller takes them for
/// `window`; counts the rows that reach `metrics_raw`. Everything runs through the real path:
/// mTLS stream, decoding, validation, the batched writer, SQLite.
pub fn ingest(
    bench: &Bench,
    agents: usize,
    samples_per_batch: usize,
    window: Duration,
) -> anyhow::Result<IngestResult> {
    let states = bench.enroll(agents, 32)?;
    let database = bench.database();
    bench.sim_rt.block_on(async {
        let rows_before = count_rows(&database).await?;
        let mut streams = Vec::with_capacity(agents);
        for state in &states {
            streams.push(crate::open_link(state).await?);
        }
        bench.reset_lag().await?;
        let started = std::time::Instant::now();
        let deadline = tokio::time::Instant::now() + window;
        let mut tasks = Vec::with_capacity(agents);
        // Old enough that a run of a few minutes stays inside raw retention and in the past.
        let base = tailops_proto::time::now_ms() - 40 * 3_600_000;
        for (i, (outbox, inbound)) in streams.into_iter().enumerate() {
            tasks.push(tokio::spawn(async move {
                let from = base + i64::try_from(i).unwrap_or(0) % 1000;
                let sent =
                    push_samples(&outbox, from, samples_per_batch, Duration::ZERO, Some(deadline)).await;
                drop(inbound);
                sent
            }));
        }
        for task in tasks {
            task.await?;
        }
        // Wait for the writer to commit what it holds: the count stops growing.
        let mut rows = count_rows(&database).await?;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = count_rows(&database).await?;
            if now == rows {
                break;
            }
            rows = now;
        }
        let seconds = started.elapsed().as_secs_f64() - 0.2;
        let committed = rows - rows_before;
        #[allow(clippy::cast_precision_loss)]
        let samples_per_second = committed as f64 / seconds;
        anyhow::Ok(IngestResult {
            agents,
            samples_per_batch,
            seconds,
            samples_per_second,
            rows: committed,
            controller_lag: bench.controller_lag().await?,
        })
    })
}

/// Pushes batches of `per_batch` samples, one a second of sample time from `from_ms` on, `pause`
/// apart, until `deadline` (if any) or the stream closes; returns how many samples were sent.
async fn push_samples(
    outbox: &tokio::sync::mpsc::Sender<v1::AgentMessage>,
    from_ms: i64,
    per_batch: usize,
    pause: Duration,
    deadline: Option<tokio::time::Instant>,
) -> u64 {
    let mut at = from_ms;
    let mut sent = 0u64;
    while deadline.is_none_or(|d| tokio::time::Instant::now() < d) {
        let samples = (0..per_batch)
            .map(|_| {
                at += 1000;
                synthetic_sample(at)
            })
            .collect();
        let batch = v1::agent_message::Kind::Metrics(v1::MetricsBatch { samples });
        if outbox.send(v1::AgentMessage { kind: Some(batch) }).await.is_err() {
            break;
        }
        sent += per_batch as u64;
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    sent
}

/// A job that runs `true` on the hosts `selector` names: the fan-outs' unit of work.
fn no_op_job(selector: v1::HostSelector) -> v1::RunJobRequest {
    v1::RunJobRequest {
        selector: Some(selector),
        action: Some(v1::JobAction {
            elevated: false,
            kind: Some(v1::job_action::Kind::Exec(v1::ExecAction { argv: vec!["true".into()] })),
        }),
        timeout_ms: 60_000,
        ..Default::default()
    }
}

/// A sample shaped like a real host's: two disks, three interfaces.
fn synthetic_sample(at_ms: i64) -> v1::MetricSample {
    #[allow(clippy::cast_precision_loss)]
    let wobble = (at_ms % 7_000) as f64 / 100.0;
    v1::MetricSample {
        at_ms,
        cpu_percent: wobble,
        load1: 0.4,
        load5: 0.3,
        load15: 0.2,
        mem_total_bytes: 16 << 30,
        mem_used_bytes: 6 << 30,
        mem_available_bytes: 10 << 30,
        swap_total_bytes: 2 << 30,
        swap_used_bytes: 0,
        disks: vec![
            v1::DiskUsage {
                mount: "/".into(),
                filesystem: "ext4".into(),
                used_bytes: 40 << 30,
                total_bytes: 100 << 30,
            },
            v1::DiskUsage {
                mount: "/srv".into(),
                filesystem: "xfs".into(),
                used_bytes: 1 << 40,
                total_bytes: 2 << 40,
            },
        ],
        interfaces: ["eth0", "tailscale0", "docker0"]
            .iter()
            .map(|n| v1::InterfaceRate {
                name: (*n).into(),
                rx_bytes_per_sec: 1200.0,
                tx_bytes_per_sec: 800.0,
            })
            .collect(),
        net_rx_bytes_per_sec: 3600.0,
        net_tx_bytes_per_sec: 2400.0,
        uptime_secs: 86_400,
        process_count: 180,
    }
}

async fn count_rows(database: &Path) -> anyhow::Result<u64> {
    use sqlx::ConnectOptions;
    let mut conn =
        sqlx::sqlite::SqliteConnectOptions::new().filename(database).read_only(true).connect().await?;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM metrics_raw").fetch_one(&mut conn).await?;
    Ok(u64::try_from(n)?)
}

#[derive(Debug, Clone, Serialize)]
pub struct CrashResult {
    pub agents: usize,
    /// Jobs started before the kill.
    pub jobs: usize,
    /// Jobs a client had not seen complete when the controller died.
    pub jobs_in_flight: usize,
    /// Hosts' results a client had seen finish before the kill (all must be stored).
    pub results_seen: usize,
    /// Seconds from the kill until the new controller listened.
    pub seconds_to_listen: f64,
    /// Seconds from the restart until every agent was online again.
    pub seconds_to_all_online: f64,
    /// Seconds from the restart until every job had a final state.
    pub seconds_to_all_settled: f64,
    /// Final states of the hosts' parts of the jobs that were in flight.
    pub in_flight_outcomes: std::collections::BTreeMap<String, u64>,
    /// Audit rows verified after the restart.
    pub audit_rows: u64,
}

/// What one fan-out client saw of its jobs before the controller died.
#[derive(Debug, Default)]
struct Seen {
    /// Job id -> host id -> state of every `finished` event seen.
    finished: std::collections::BTreeMap<u64, std::collections::BTreeMap<String, i32>>,
    completed: std::collections::BTreeSet<u64>,
}

/// Kills the controller (SIGKILL) while `clients` clients start fan-outs to every simulated agent
/// one after another and `ingest_agents` streams push 50 samples every 100 ms each, then restarts it and checks what survived:
/// the database's integrity, every host result a client saw finish, the audit chain, a final
/// state for every job, every agent back online. Fails with the first broken guarantee.
pub fn crash(
    bench: &mut Bench,
    clients: usize,
    ingest_agents: usize,
    kill_after: Duration,
) -> anyhow::Result<CrashResult> {
    let agents = bench.agent_count();
    let ingest_states = bench.enroll(ingest_agents, 32)?;
    let (clients_seen, ingesters) = bench.sim_rt.block_on(async {
        let mut ingesters = Vec::new();
        let base = tailops_proto::time::now_ms() - 40 * 3_600_000;
        for (i, state) in ingest_states.iter().enumerate() {
            let (outbox, inbound) = crate::open_link(state).await?;
            ingesters.push(tokio::spawn(async move {
                let from = base + i64::try_from(i).unwrap_or(0);
                push_samples(&outbox, from, 50, Duration::from_millis(100), None).await;
                drop(inbound);
            }));
        }
        let mut clients_seen = Vec::new();
        // The ingest streams are hosts too, but run no jobs: the fan-outs name the agents.
        let selector = v1::HostSelector { hosts: bench.agent_names(), ..Default::default() };
        for _ in 0..clients {
            let fleet = bench.fleet().await?;
            clients_seen.push(tokio::spawn(fan_out_until_error(fleet, selector.clone())));
        }
        tokio::time::sleep(kill_after).await;
        anyhow::Ok((clients_seen, ingesters))
    })?;

    let killed = std::time::Instant::now();
    bench.kill_and_restart_controller()?;
    let seconds_to_listen = killed.elapsed().as_secs_f64();
    let restarted = std::time::Instant::now();

    let mut seen = Seen::default();
    bench.sim_rt.block_on(async {
        for client in clients_seen {
            let client = client.await?;
            seen.finished.extend(client.finished);
            seen.completed.extend(client.completed);
        }
        for ingester in ingesters {
            ingester.abort();
        }
        anyhow::Ok(())
    })?;
    let seconds_to_all_online = {
        bench.wait_online(agents, Duration::from_secs(300))?;
        restarted.elapsed().as_secs_f64()
    };

    bench.sim_rt.block_on(async {
        let mut fleet = bench.fleet().await?;
        // Every job reaches a final state: its hosts report after the restart, or the recovery
        // window passes.
        let mut outcomes = std::collections::BTreeMap::new();
        let mut results_seen = 0;
        for (&job_id, finished) in &seen.finished {
            let settle_limit = tokio::time::Instant::now() + Duration::from_secs(180);
            let (job, targets) = loop {
                let response = fleet.get_job(v1::GetJobRequest { job_id }).await?.into_inner();
                let job = response.job.ok_or_else(|| anyhow::anyhow!("job {job_id} is missing after the restart"))?;
                if !matches!(job.state(), v1::JobState::Running | v1::JobState::PendingApproval) {
                    break (job, response.targets);
                }
                if tokio::time::Instant::now() > settle_limit {
                    anyhow::bail!("job {job_id} was still {:?} three minutes after the restart", job.state());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            // What a client saw finish was stored, with the state it saw.
            for (host_id, state) in finished {
                let stored = targets
                    .iter()
                    .find(|t| t.target.as_ref().is_some_and(|t| &t.host_id == host_id))
                    .map(|t| t.state);
                anyhow::ensure!(
                    stored == Some(*state),
                    "job {job_id} host {host_id}: a client saw state {state} before the crash, the store has {stored:?}"
                );
                results_seen += 1;
            }
            if !seen.completed.contains(&job_id) {
                for t in &targets {
                    *outcomes.entry(t.state().short_name().to_owned()).or_insert(0u64) += 1;
                }
            }
            anyhow::ensure!(
                targets.iter().all(|t| !matches!(
                    t.state(),
                    v1::TargetState::Pending | v1::TargetState::Running | v1::TargetState::Queued
                )),
                "job {job_id} ended {:?} with unfinished hosts",
                job.state()
            );
        }
        let seconds_to_all_settled = restarted.elapsed().as_secs_f64();

        let integrity = integrity_check(&bench.database()).await?;
        anyhow::ensure!(integrity == "ok", "PRAGMA integrity_check after the crash: {integrity}");
        let verified =
            bench.audit().await?.verify_audit(v1::VerifyAuditRequest::default()).await?.into_inner();
        anyhow::ensure!(verified.intact, "the audit chain is broken after the crash: {}", verified.problem);

        let jobs = seen.finished.len();
        let jobs_in_flight = seen.finished.keys().filter(|id| !seen.completed.contains(id)).count();
        anyhow::Ok(CrashResult {
            agents,
            jobs,
            jobs_in_flight,
            results_seen,
            seconds_to_listen,
            seconds_to_all_online,
            seconds_to_all_settled,
            in_flight_outcomes: outcomes,
            audit_rows: verified.rows_checked,
        })
    })
}

/// Starts fan-outs to every host one after another until the controller goes away; returns what
/// it saw.
async fn fan_out_until_error(
    mut fleet: tailops_proto::v1::fleet_client::FleetClient<tonic::transport::Channel>,
    selector: v1::HostSelector,
) -> Seen {
    let mut seen = Seen::default();
    loop {
        let request = no_op_job(selector.clone());
        let Ok(response) = fleet.run_job(request).await else { return seen };
        let mut events = response.into_inner();
        loop {
            match events.message().await {
                Ok(Some(event)) => match event.kind {
                    Some(v1::job_event::Kind::Accepted(_)) => {
                        seen.finished.entry(event.job_id).or_default();
                    }
                    Some(v1::job_event::Kind::Finished(f)) => {
                        let host = f.target.map(|t| t.host_id).unwrap_or_default();
                        seen.finished.entry(event.job_id).or_default().insert(host, f.state);
                    }
                    Some(v1::job_event::Kind::Completed(_)) => {
                        seen.completed.insert(event.job_id);
                    }
                    _ => {}
                },
                Ok(None) => break,
                Err(_) => return seen,
            }
        }
    }
}

async fn integrity_check(database: &Path) -> anyhow::Result<String> {
    use sqlx::ConnectOptions;
    let mut conn =
        sqlx::sqlite::SqliteConnectOptions::new().filename(database).read_only(true).connect().await?;
    Ok(sqlx::query_scalar("PRAGMA integrity_check").fetch_one(&mut conn).await?)
}

#[derive(Debug, Clone, Serialize)]
pub struct SoakPoint {
    pub at_s: f64,
    pub controller_rss_bytes: u64,
    /// The anonymous (heap) and file-backed parts of `controller_rss_bytes`.
    pub controller_rss_anon_bytes: u64,
    pub controller_rss_file_bytes: u64,
    pub controller_fds: usize,
    /// Scheduling lag of the controller runtime since the previous point.
    pub lag_wakeup_p99_ms: f64,
    pub fanout_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SoakResult {
    pub agents: usize,
    pub window_s: f64,
    pub fanouts: usize,
    pub reconnects: usize,
    pub samples: u64,
    /// RSS growth from the first point after warm-up to the last, in percent.
    pub rss_growth_pct: f64,
    /// Open descriptors at the first point after warm-up and at the last.
    pub fds_after_warmup: usize,
    pub fds_at_end: usize,
    pub points: Vec<SoakPoint>,
}

/// Holds the fleet busy for `window`: a fan-out to every agent each `every`, a rolling set of
/// `reconnect_batch` agents reconnecting each `every`, and `sample_streams` streams pushing
/// samples at the rate of `agents` monitored hosts (one sample per host each 10 s). Records the
/// controller's RSS, descriptors and lag at each round; the first `warmup` is not counted in the
/// growth. Needs the controller in its own process.
pub fn soak(
    bench: &mut Bench,
    window: Duration,
    every: Duration,
    warmup: Duration,
    reconnect_batch: usize,
    sample_streams: usize,
) -> anyhow::Result<SoakResult> {
    anyhow::ensure!(bench.controller_pid().is_some(), "the soak needs the controller in its own process");
    let agents = bench.agent_count();
    let selector = v1::HostSelector { hosts: bench.agent_names(), ..Default::default() };
    let streams = bench.enroll(sample_streams, 32)?;
    // One sample per monitored host every 10 s, spread over the streams.
    let per_stream_per_second = (agents as f64 / 10.0 / sample_streams.max(1) as f64).max(0.1);
    let pause = Duration::from_secs_f64(1.0 / per_stream_per_second);
    // Counted as they go: the pushers are stopped, not finished, when the window ends.
    let pushed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let pushers = bench.sim_rt.block_on(async {
        let base = tailops_proto::time::now_ms() - 40 * 3_600_000;
        let mut pushers = Vec::new();
        for (i, state) in streams.iter().enumerate() {
            let (outbox, inbound) = crate::open_link(state).await?;
            let pushed = pushed.clone();
            pushers.push(tokio::spawn(async move {
                let mut at = base + i64::try_from(i).unwrap_or(0);
                // One sample per batch, `pause` apart, like a host's monitor.
                loop {
                    at += 1_000;
                    let batch = v1::MetricsBatch { samples: vec![synthetic_sample(at)] };
                    let message = v1::AgentMessage { kind: Some(v1::agent_message::Kind::Metrics(batch)) };
                    if outbox.send(message).await.is_err() {
                        break;
                    }
                    pushed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(pause).await;
                }
                drop(inbound);
            }));
        }
        anyhow::Ok(pushers)
    })?;
    let started = std::time::Instant::now();
    let mut points = Vec::new();
    let (mut fanouts, mut reconnects, mut next_reconnect) = (0, 0, 0);
    while started.elapsed() < window {
        let round = std::time::Instant::now();
        let fanout_ms = bench.sim_rt.block_on(async {
            let mut fleet = bench.fleet().await?;
            let request = no_op_job(selector.clone());
            let sent = tokio::time::Instant::now();
            let mut events = fleet.run_job(request).await?.into_inner();
            while let Some(event) = events.message().await? {
                if matches!(event.kind, Some(v1::job_event::Kind::Completed(_))) {
                    break;
                }
            }
            anyhow::Ok(sent.elapsed().as_secs_f64() * 1000.0)
        })?;
        fanouts += 1;
        bench.restart_agents(next_reconnect, reconnect_batch);
        next_reconnect += reconnect_batch;
        reconnects += reconnect_batch.min(agents);
        let point = bench.sim_rt.block_on(async {
            let lag = bench.controller_lag().await?;
            bench.reset_lag().await?;
            let pid = bench.controller_pid().map(|p| p.to_string()).unwrap_or_default();
            anyhow::Ok(SoakPoint {
                at_s: started.elapsed().as_secs_f64(),
                controller_rss_bytes: crate::measure::rss_bytes(&pid).await,
                controller_rss_anon_bytes: crate::measure::rss_anon_bytes(&pid).await,
                controller_rss_file_bytes: crate::measure::rss_file_bytes(&pid).await,
                controller_fds: bench.controller_fds().await.unwrap_or(0),
                lag_wakeup_p99_ms: lag.wakeup.p99_ms,
                fanout_ms,
            })
        })?;
        points.push(point);
        let rest = every.saturating_sub(round.elapsed());
        bench.sim_rt.block_on(async { tokio::time::sleep(rest).await });
    }
    for pusher in pushers {
        pusher.abort();
    }
    let samples = pushed.load(std::sync::atomic::Ordering::Relaxed);
    let warm: Vec<&SoakPoint> = points.iter().filter(|p| p.at_s >= warmup.as_secs_f64()).collect();
    let (first, last) = match (warm.first(), warm.last()) {
        (Some(first), Some(last)) => (*first, *last),
        _ => anyhow::bail!("the soak window ended before the warm-up did; make it longer"),
    };
    #[allow(clippy::cast_precision_loss)]
    let rss_growth_pct = (last.controller_rss_bytes as f64 - first.controller_rss_bytes as f64)
        / first.controller_rss_bytes.max(1) as f64
        * 100.0;
    Ok(SoakResult {
        agents,
        window_s: started.elapsed().as_secs_f64(),
        fanouts,
        reconnects,
        samples,
        rss_growth_pct,
        fds_after_warmup: first.controller_fds,
        fds_at_end: last.controller_fds,
        points,
    })
}
