//! `tailops-bench`: runs the scenarios, prints a table per scenario and writes JSON.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde_json::json;
use tailops_bench::{Bench, ControllerMode, controller_process, scenarios};

#[derive(Debug, Parser)]
#[command(name = "tailops-bench", about = "Benchmark a real TailOps controller with simulated agents")]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Run the controller in a child process (this binary, re-executed) instead of on a runtime
    /// in this one: each process then holds one end of every connection (twice the fleet fits
    /// under the open-file limit), and the controller's CPU and memory are measured apart from
    /// the simulated agents'.
    #[arg(long)]
    controller_process: bool,
    /// Fleet sizes for fan-out and steady state, ascending.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000,5000,10000")]
    agents: Vec<usize>,
    /// Fan-out runs per size.
    #[arg(long, default_value_t = 30)]
    runs: usize,
    /// Steady-state measurement window per size.
    #[arg(long, default_value = "30s", value_parser = humantime_duration)]
    steady: Duration,
    /// Heartbeat interval of the simulated fleet.
    #[arg(long, default_value = "10s", value_parser = humantime_duration)]
    heartbeat: Duration,
    /// Concurrent enrollments.
    #[arg(long, default_value_t = 32)]
    enroll_parallel: usize,
    /// Idle window for the real agent's footprint (0 skips it).
    #[arg(long, default_value = "60s", value_parser = humantime_duration)]
    footprint: Duration,
    /// Skip the reconnect storm.
    #[arg(long)]
    no_reconnect: bool,
    /// Which scenario groups to run (default: all).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "fleet,ingest,footprint")]
    only: Vec<Group>,
    /// Agent streams pushing samples in the ingest scenario.
    #[arg(long, default_value_t = 200)]
    ingest_agents: usize,
    /// Samples per pushed batch in the ingest scenario.
    #[arg(long, default_value_t = 100)]
    ingest_batch: usize,
    /// How long the ingest scenario pushes.
    #[arg(long, default_value = "20s", value_parser = humantime_duration)]
    ingest_window: Duration,
    /// Fan-out clients running while the crash scenario kills the controller.
    #[arg(long, default_value_t = 4)]
    crash_clients: usize,
    /// How long the crash scenario lets fan-outs and ingest run before the kill.
    #[arg(long, default_value = "3s", value_parser = humantime_duration)]
    crash_after: Duration,
    /// How long the soak runs.
    #[arg(long, default_value = "60m", value_parser = humantime_duration)]
    soak_window: Duration,
    /// One soak round (a fan-out, a batch of reconnects, a measurement) this often.
    #[arg(long, default_value = "10s", value_parser = humantime_duration)]
    soak_every: Duration,
    /// Soak rounds before this are left out of the RSS growth.
    #[arg(long, default_value = "2m", value_parser = humantime_duration)]
    soak_warmup: Duration,
    /// Agents reconnecting per soak round, in a rolling window over the fleet.
    #[arg(long, default_value_t = 20)]
    soak_reconnects: usize,
    /// Streams carrying the soak's samples (one per agent every 10 s, in all).
    #[arg(long, default_value_t = 20)]
    soak_streams: usize,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench/results.json")]
    json: PathBuf,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Internal: the controller's side of --controller-process (see controller_process.rs).
    #[command(name = controller_process::SUBCOMMAND, hide = true)]
    ServeController {
        /// An initialised controller data directory.
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        listen: SocketAddr,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Group {
    /// Enrollment, fan-out, steady state and the reconnect storm, per fleet size.
    Fleet,
    /// Sample ingest into SQLite.
    Ingest,
    /// The real agent binary, idle.
    Footprint,
    /// SIGKILL of the controller mid fan-out and ingest, then recovery (needs
    /// --controller-process; runs on the fleet of the last --agents size).
    Crash,
    /// Fan-outs, rolling reconnects and sample ingest for --soak-window, recording the
    /// controller's RSS, descriptors and lag (needs --controller-process).
    Soak,
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = number.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("invalid duration unit in {s:?}: use ms, s or m")),
    }
}

/// Every simulated agent's connection holds a descriptor in this process (and, in-process, the
/// controller's end too), so the file limit caps the fleet size. Raises it as far as allowed
/// (a controller child process inherits it); returns the limit in force.
fn raise_file_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let wanted = 200_000;
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < wanted
        && setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted).is_err()
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let file_limit = raise_file_limit();
    if let Some(Command::ServeController { data_dir, listen }) = &args.command {
        return controller_process::serve_controller(data_dir, *listen);
    }
    // Per simulated agent: in-process two descriptors (both ends), in own-process mode one in
    // each process; plus headroom for enrollment, clients and SQLite.
    let descriptors_per_agent = if args.controller_process { 1 } else { 2 };
    let max_agents =
        usize::try_from(file_limit.saturating_sub(1000) / descriptors_per_agent).unwrap_or(usize::MAX);
    let fleet_sizes: &[usize] = if args.only.contains(&Group::Fleet) { &args.agents } else { &[] };
    if let Some(too_big) = fleet_sizes.iter().find(|n| **n > max_agents) {
        anyhow::bail!(
            "{too_big} agents need about {} file descriptors per process but the limit here is {file_limit}; \
             use at most {max_agents} agents (or raise the hard limit: ulimit -Hn{})",
            too_big * usize::try_from(descriptors_per_agent).unwrap_or(2) + 1000,
            if args.controller_process { "" } else { "; or use --controller-process" }
        );
    }
    let mode = if args.controller_process {
        ControllerMode::OwnProcess { binary: std::env::current_exe()? }
    } else {
        ControllerMode::InProcess
    };
    let mut bench = Bench::start(args.heartbeat, mode)?;
    let baseline = bench.sim_rt.block_on(bench.memory())?;
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    match bench.controller_pid() {
        None => println!(
            "tailops-bench: controller in-process; controller and load generator share this machine's {cores} cores"
        ),
        Some(pid) => println!(
            "tailops-bench: controller in its own process (pid {pid}); controller and load generator share this machine's {cores} cores"
        ),
    }

    let mut enrollments = Vec::new();
    let mut fanouts = Vec::new();
    let mut steadies = Vec::new();
    for &size in fleet_sizes {
        let missing = size.saturating_sub(bench.agent_count());
        if missing > 0 {
            let (result, states) = scenarios::enroll(&bench, missing, args.enroll_parallel)?;
            println!(
                "enroll   {:>6} agents: {:>8.0} enrollments/s ({:.1} s, {} in parallel)",
                result.enrollments, result.per_second, result.seconds, result.parallel
            );
            enrollments.push(result);
            bench.run_agents(states);
        }
        bench.wait_online(size, Duration::from_secs(300))?;
        let runs = if size >= 5000 { args.runs.min(10) } else { args.runs };
        let fanout = scenarios::fanout(&bench, runs)?;
        println!(
            "fan-out  {:>6} agents: p50 {:>8.2} ms  p90 {:>8.2}  p99 {:>8.2}  max {:>8.2}  ({} runs; {})",
            size,
            fanout.latency.p50_ms,
            fanout.latency.p90_ms,
            fanout.latency.p99_ms,
            fanout.latency.max_ms,
            fanout.runs,
            fanout.controller_lag
        );
        fanouts.push(fanout);
        let steady = scenarios::steady(&bench, args.steady, baseline, args.heartbeat)?;
        match (steady.controller_rss_bytes, steady.controller_rss_per_agent_bytes) {
            (Some(controller_rss), Some(controller_per_agent)) => println!(
                "steady   {:>6} agents: controller {:>6.2} % of a core, load generator {:>6.2} %, controller RSS {:>7.1} MiB ({:.1} KB/agent), load generator RSS {:.1} MiB ({:.1} KB/agent); {}",
                size,
                steady.controller_cpu_pct,
                steady.agents_cpu_pct,
                controller_rss as f64 / 1_048_576.0,
                controller_per_agent as f64 / 1000.0,
                steady.process_rss_bytes as f64 / 1_048_576.0,
                steady.rss_per_agent_bytes as f64 / 1000.0,
                steady.controller_lag
            ),
            _ => println!(
                "steady   {:>6} agents: controller {:>6.2} % of a core, agents {:>6.2} %, RSS {:>7.1} MiB ({:.1} KB/agent, both sides); {}",
                size,
                steady.controller_cpu_pct,
                steady.agents_cpu_pct,
                steady.process_rss_bytes as f64 / 1_048_576.0,
                steady.rss_per_agent_bytes as f64 / 1000.0,
                steady.controller_lag
            ),
        }
        steadies.push(steady);
    }
    let reconnect = if args.no_reconnect || !args.only.contains(&Group::Fleet) {
        None
    } else {
        let r = scenarios::reconnect(&mut bench)?;
        println!(
            "reconnect {:>5} agents: all online {:.2} s after the controller restarted",
            r.agents, r.seconds_to_all_online
        );
        Some(r)
    };
    let ingest = if args.only.contains(&Group::Ingest) {
        let r = scenarios::ingest(&bench, args.ingest_agents, args.ingest_batch, args.ingest_window)?;
        println!(
            "ingest   {:>6} agents: {:>9.0} samples/s into SQLite ({} rows in {:.1} s, batches of {}; {})",
            r.agents, r.samples_per_second, r.rows, r.seconds, r.samples_per_batch, r.controller_lag
        );
        Some(r)
    } else {
        None
    };
    let needs_fleet = args.only.contains(&Group::Crash) || args.only.contains(&Group::Soak);
    if needs_fleet && bench.agent_count() == 0 {
        let n = args.agents.last().copied().unwrap_or(200);
        let (_, states) = scenarios::enroll(&bench, n, args.enroll_parallel)?;
        bench.run_agents(states);
        bench.wait_online(n, Duration::from_secs(300))?;
    }
    let soak = if args.only.contains(&Group::Soak) {
        let r = scenarios::soak(
            &mut bench,
            args.soak_window,
            args.soak_every,
            args.soak_warmup,
            args.soak_reconnects,
            args.soak_streams,
        )?;
        println!(
            "soak     {:>6} agents: {:.0} s, {} fan-outs, {} reconnects, {} samples; controller RSS {:+.1} % after \
             warm-up ({:.1} -> {:.1} MiB), fds {} -> {}",
            r.agents,
            r.window_s,
            r.fanouts,
            r.reconnects,
            r.samples,
            r.rss_growth_pct,
            r.points
                .iter()
                .find(|p| p.at_s >= args.soak_warmup.as_secs_f64())
                .map_or(0.0, |p| p.controller_rss_bytes as f64 / 1_048_576.0),
            r.points.last().map_or(0.0, |p| p.controller_rss_bytes as f64 / 1_048_576.0),
            r.fds_after_warmup,
            r.fds_at_end
        );
        Some(r)
    } else {
        None
    };
    let crash = if args.only.contains(&Group::Crash) {
        if bench.agent_count() == 0 {
            let n = args.agents.last().copied().unwrap_or(200);
            let (_, states) = scenarios::enroll(&bench, n, args.enroll_parallel)?;
            bench.run_agents(states);
            bench.wait_online(n, Duration::from_secs(300))?;
        }
        let r = scenarios::crash(&mut bench, args.crash_clients, args.ingest_agents, args.crash_after)?;
        println!(
            "crash    {:>6} agents: {} jobs ({} in flight, {} results seen) survived SIGKILL; listening again after \
             {:.2} s, all online {:.2} s and all jobs settled {:.2} s after the restart; in flight ended {:?}",
            r.agents,
            r.jobs,
            r.jobs_in_flight,
            r.results_seen,
            r.seconds_to_listen,
            r.seconds_to_all_online,
            r.seconds_to_all_settled,
            r.in_flight_outcomes
        );
        Some(r)
    } else {
        None
    };
    let footprint = if args.footprint.is_zero() || !args.only.contains(&Group::Footprint) {
        None
    } else {
        let agent_binary = std::env::current_exe()?.with_file_name("tailops-agent");
        let f = scenarios::footprint(&bench, &agent_binary, args.footprint)?;
        println!(
            "agent    idle {:.0} s: RSS {:.1} MiB (peak {:.1}), CPU {:.3} % of a core (+ {:.3} % in fact commands)",
            f.window_s,
            f.rss_bytes as f64 / 1_048_576.0,
            f.peak_rss_bytes as f64 / 1_048_576.0,
            f.cpu_pct,
            f.commands_cpu_pct
        );
        Some(f)
    };

    let results = json!({
        "controller": bench.mode_name(),
        "cores": cores,
        "enrollment": enrollments,
        "fanout": fanouts,
        "steady": steadies,
        "reconnect": reconnect,
        "ingest": ingest,
        "agent_footprint": footprint,
        "crash": crash,
        "soak": soak,
    });
    let json = serde_json::to_string_pretty(&results)?;
    bench.sim_rt.block_on(async {
        if let Some(parent) = args.json.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        tokio::fs::write(&args.json, json).await
    })?;
    println!("results written to {}", args.json.display());
    Ok(())
}
