//! Monitoring and inventory commands: `hosts ls|show`, `metrics`, `top`, `ps`, `inventory`.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};
use tailops_proto::time::now_ms;
use tailops_proto::v1::{self, fleet_client::FleetClient, job_event, monitoring_client::MonitoringClient};
use tonic::transport::Channel;

use super::Output;
use super::render::{ago, labels_text, print_json, rfc3339, table};

#[derive(Debug, Clone, Args)]
pub struct HostsLsArgs {
    /// Only hosts whose newest sample is older than this (e.g. 5m), or that never sent one.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    stale: Option<Duration>,
    /// Only hosts that are not healthy (degraded, unhealthy, offline or without data).
    #[arg(long)]
    unhealthy: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ResolutionArg {
    Auto,
    Raw,
    #[value(name = "1m")]
    Minute,
    #[value(name = "1h")]
    Hour,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum MetricArg {
    Cpu,
    Mem,
    Swap,
    Load,
    Disk,
    Net,
    Procs,
}

#[derive(Debug, Clone, Args)]
pub struct MetricsArgs {
    /// Host name or id.
    host: String,
    /// How far back (e.g. 30m, 6h, 7d).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    since: Duration,
    /// End of the range, as an age (default: now).
    #[arg(long, value_parser = humantime::parse_duration)]
    until: Option<Duration>,
    /// Raw samples, 1-minute or 1-hour rollups; auto picks by range.
    #[arg(long, value_enum, default_value_t = ResolutionArg::Auto)]
    resolution: ResolutionArg,
    /// Metrics to show (repeatable; default cpu, mem, disk, net).
    #[arg(long = "metric", value_enum)]
    metrics: Vec<MetricArg>,
    /// One sparkline per metric instead of a table.
    #[arg(long)]
    spark: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TopSort {
    Cpu,
    Mem,
    Disk,
    Load,
    Health,
    Name,
}

#[derive(Debug, Clone, Args)]
pub struct TopArgs {
    /// Column to sort by (highest first; name alphabetically).
    #[arg(long, value_enum, default_value_t = TopSort::Cpu)]
    sort: TopSort,
    /// Refresh interval.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Show at most this many hosts.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Print one frame and exit.
    #[arg(long)]
    once: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PsSort {
    Cpu,
    Mem,
}

#[derive(Debug, Clone, Args)]
pub struct PsArgs {
    /// Host name or id.
    host: String,
    #[arg(long, value_enum, default_value_t = PsSort::Cpu)]
    sort: PsSort,
    /// How many processes (at most 500).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=500))]
    limit: u32,
    /// Show whole command lines (they can hold secrets, so below the control tier only the
    /// program is shown; an AI bridge's request waits for a human's approval).
    #[arg(long)]
    elevate: bool,
}

#[derive(Debug, Subcommand)]
pub enum InventoryCommand {
    /// What changed on hosts (kernel, packages, containers, units, addresses), newest first.
    Changes {
        /// Only this host (name or id).
        #[arg(long)]
        host: Option<String>,
        /// How far back.
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        since: Duration,
        /// Only facts whose key starts with this, e.g. `container.` or `unit.`.
        #[arg(long)]
        prefix: Option<String>,
        #[arg(long, default_value_t = 200)]
        limit: u32,
    },
}

fn ago_ms(d: Duration) -> i64 {
    now_ms() - i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
}

// ----- formatting ---------------------------------------------------------------------------

/// 1536 → "1.5 KiB".
#[allow(clippy::cast_precision_loss)]
pub fn bytes(n: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{value:.0} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

fn rate(bytes_per_sec: f64) -> String {
    format!("{}/s", bytes(bytes_per_sec))
}

/// Values as a line of block characters scaled between their minimum and maximum.
pub fn sparkline(values: &[f64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let finite = values.iter().copied().filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    values
        .iter()
        .map(|v| {
            if !v.is_finite() || hi <= lo {
                return BARS[0];
            }
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let i = (((v - lo) / (hi - lo)) * 7.0).round() as usize;
            BARS[i.min(7)]
        })
        .collect()
}

fn health_text(h: Option<&v1::Health>) -> String {
    match h {
        Some(h) if h.status() == v1::HealthStatus::Unknown => {
            if h.stale {
                "stale".into()
            } else {
                "unknown".into()
            }
        }
        Some(h) => format!("{} {}", h.score, h.status().short_name()),
        None => "-".into(),
    }
}

fn health_json(h: Option<&v1::Health>) -> Value {
    h.map_or(Value::Null, |h| {
        json!({"score": h.score, "status": h.status().short_name(), "stale": h.stale, "reasons": h.reasons})
    })
}

fn sample_json(s: Option<&v1::MetricSample>) -> Value {
    s.map_or(Value::Null, |s| {
        json!({
            "at": rfc3339(s.at_ms), "cpu_percent": s.cpu_percent,
            "load": [s.load1, s.load5, s.load15],
            "memory": {"total_bytes": s.mem_total_bytes, "used_bytes": s.mem_used_bytes,
                       "available_bytes": s.mem_available_bytes},
            "swap": {"total_bytes": s.swap_total_bytes, "used_bytes": s.swap_used_bytes},
            "disks": s.disks.iter().map(|d| json!({"mount": d.mount, "filesystem": d.filesystem,
                "used_bytes": d.used_bytes, "total_bytes": d.total_bytes})).collect::<Vec<_>>(),
            "network": {"rx_bytes_per_sec": s.net_rx_bytes_per_sec, "tx_bytes_per_sec": s.net_tx_bytes_per_sec,
                "interfaces": s.interfaces.iter().map(|i| json!({"name": i.name,
                    "rx_bytes_per_sec": i.rx_bytes_per_sec, "tx_bytes_per_sec": i.tx_bytes_per_sec}))
                    .collect::<Vec<_>>()},
            "uptime_secs": s.uptime_secs, "processes": s.process_count,
        })
    })
}

/// CPU, memory and fullest-disk cells, or dashes without a sample.
fn vitals_cells(s: Option<&v1::MetricSample>) -> [String; 4] {
    match s {
        Some(s) => [
            format!("{:.0}%", s.cpu_percent),
            format!("{:.0}%", s.memory_percent()),
            s.fullest_disk().map_or_else(|| "-".into(), |(_, p)| format!("{p:.0}%")),
            format!("{:.2}", s.load1),
        ],
        None => ["-".into(), "-".into(), "-".into(), "-".into()],
    }
}

// ----- hosts --------------------------------------------------------------------------------

pub async fn hosts_ls(channel: Channel, args: HostsLsArgs, output: Output) -> anyhow::Result<()> {
    let mut hosts =
        FleetClient::new(channel).list_hosts(v1::ListHostsRequest::default()).await?.into_inner().hosts;
    if let Some(stale) = args.stale {
        let cutoff = ago_ms(stale);
        hosts.retain(|h| h.latest.as_ref().is_none_or(|s| s.at_ms < cutoff));
    }
    if args.unhealthy {
        hosts.retain(|h| h.health.as_ref().is_none_or(|x| x.status() != v1::HealthStatus::Healthy));
    }
    if output == Output::Json {
        let rows: Vec<Value> = hosts
            .iter()
            .map(|h| {
                json!({
                    "id": h.id, "name": h.name, "labels": h.labels, "online": h.online,
                    "last_seen": rfc3339(h.last_seen_ms), "agent_version": h.agent_version,
                    "hostname": h.hostname, "os": h.os, "arch": h.arch, "kernel": h.kernel,
                    "enrolled_at": rfc3339(h.enrolled_at_ms),
                    "health": health_json(h.health.as_ref()), "latest": sample_json(h.latest.as_ref()),
                })
            })
            .collect();
        return print_json(&Value::Array(rows));
    }
    if hosts.is_empty() {
        if args.stale.is_some() || args.unhealthy {
            println!("No host matches.");
        } else {
            println!("No hosts enrolled yet. Create a join token with `tailopsctl token create`.");
        }
        return Ok(());
    }
    let mut t =
        table(&["NAME", "STATUS", "HEALTH", "CPU", "MEM", "DISK", "LOAD", "LAST SEEN", "OS", "LABELS"]);
    for h in &hosts {
        let [cpu, mem, disk, load] = vitals_cells(h.latest.as_ref());
        t.add_row(vec![
            h.name.clone(),
            if h.online { "online".into() } else { "offline".into() },
            health_text(h.health.as_ref()),
            cpu,
            mem,
            disk,
            load,
            ago(h.last_seen_ms),
            format!("{} {}", h.os, h.arch).trim().to_owned(),
            labels_text(&h.labels),
        ]);
    }
    println!("{t}");
    Ok(())
}

pub async fn hosts_show(channel: Channel, host: String, output: Output) -> anyhow::Result<()> {
    let h = MonitoringClient::new(channel).get_host(v1::GetHostRequest { host }).await?.into_inner();
    if output == Output::Json {
        let facts: serde_json::Map<String, Value> =
            h.facts.iter().map(|f| (f.key.clone(), Value::String(f.value.clone()))).collect();
        return print_json(&json!({
            "id": h.host_id, "name": h.name, "labels": h.labels, "online": h.online,
            "last_seen": rfc3339(h.last_seen_ms), "health": health_json(h.health.as_ref()),
            "latest": sample_json(h.latest.as_ref()), "facts": facts,
        }));
    }
    let facts: BTreeMap<&str, &str> = h.facts.iter().map(|f| (f.key.as_str(), f.value.as_str())).collect();
    let fact = |k: &str| facts.get(k).copied().unwrap_or("-");
    println!("{} ({})", h.name, h.host_id);
    println!("  status:  {}, last seen {}", if h.online { "online" } else { "offline" }, ago(h.last_seen_ms));
    if !h.labels.is_empty() {
        println!("  labels:  {}", labels_text(&h.labels));
    }
    let health = h.health.clone().unwrap_or_default();
    println!("  health:  {}", health_text(Some(&health)));
    for reason in &health.reasons {
        println!("           - {reason}");
    }
    println!();
    println!("  os:      {} ({})", fact("os.pretty"), fact("arch"));
    println!("  kernel:  {}", fact("kernel"));
    println!("  cpu:     {} ({} cores)", fact("cpu.model"), fact("cpu.cores"));
    println!("  virt:    {} {}", fact("virt.kind"), facts.get("virt.technology").copied().unwrap_or(""));
    if let Some(ts) = facts.get("tailscale.dns_name") {
        println!("  tailnet: {ts} ({})", fact("tailscale.addresses"));
    }
    if let Some(s) = h.latest.as_ref() {
        println!();
        println!("  sampled: {}", ago(s.at_ms));
        println!("  cpu:     {:.1}%  load {:.2} {:.2} {:.2}", s.cpu_percent, s.load1, s.load5, s.load15);
        #[allow(clippy::cast_precision_loss)]
        let b = |n: u64| bytes(n as f64);
        println!(
            "  memory:  {} of {} used ({:.0}%), {} available; swap {} of {}",
            b(s.mem_used_bytes),
            b(s.mem_total_bytes),
            s.memory_percent(),
            b(s.mem_available_bytes),
            b(s.swap_used_bytes),
            b(s.swap_total_bytes)
        );
        println!("  network: rx {}  tx {}", rate(s.net_rx_bytes_per_sec), rate(s.net_tx_bytes_per_sec));
        println!(
            "  uptime:  {}  processes: {}",
            humantime::format_duration(Duration::from_secs(s.uptime_secs)),
            s.process_count
        );
        if !s.disks.is_empty() {
            let mut t = table(&["MOUNT", "FS", "USED", "SIZE", "USE%"]);
            for d in &s.disks {
                t.add_row(vec![
                    d.mount.clone(),
                    d.filesystem.clone(),
                    b(d.used_bytes),
                    b(d.total_bytes),
                    format!("{:.0}%", d.used_percent()),
                ]);
            }
            println!("{t}");
        }
    }
    let groups = fact_groups(&facts);
    if !groups.is_empty() {
        println!();
        for (group, count) in groups {
            println!("  {group}: {count}");
        }
        println!("  (`tailopsctl hosts show {} -o json` lists every fact)", h.name);
    }
    Ok(())
}

/// Counts of the repeated fact families (units, containers, apps, ...) for the summary.
fn fact_groups<'a>(facts: &BTreeMap<&'a str, &'a str>) -> Vec<(String, usize)> {
    let mut containers = std::collections::BTreeSet::new();
    let (mut units, mut failed, mut apps) = (0, 0, Vec::new());
    for (key, value) in facts {
        if let Some(rest) = key.strip_prefix("container.") {
            if let Some((name, _)) = rest.rsplit_once('.') {
                containers.insert(name);
            }
        } else if key.starts_with("unit.") {
            units += 1;
            if value.split('/').nth(1) == Some("failed") {
                failed += 1;
            }
        } else if let Some(app) = key.strip_prefix("app.") {
            apps.push(app);
        }
    }
    let mut out = Vec::new();
    if units > 0 {
        out.push(("systemd units".to_owned(), units));
        out.push(("failed units".to_owned(), failed));
    }
    if !containers.is_empty() {
        out.push(("containers".to_owned(), containers.len()));
    }
    if !apps.is_empty() {
        out.push((format!("applications ({})", apps.join(", ")), apps.len()));
    }
    out
}

// ----- metrics ------------------------------------------------------------------------------

/// A column title and how to read its value from a point.
type Column = (&'static str, fn(&v1::MetricPoint) -> f64);

/// A metric's columns.
fn metric_columns(metric: MetricArg) -> Vec<Column> {
    match metric {
        MetricArg::Cpu => vec![("cpu%", |p| p.cpu_percent), ("cpu% max", |p| p.cpu_percent_max)],
        MetricArg::Mem => vec![("mem used", |p| p.mem_used_bytes), ("mem max", |p| p.mem_used_bytes_max)],
        MetricArg::Swap => vec![("swap used", |p| p.swap_used_bytes)],
        MetricArg::Load => vec![("load1", |p| p.load1)],
        MetricArg::Disk => vec![("disk%", |p| p.disk_used_percent)],
        MetricArg::Net => vec![("rx", |p| p.net_rx_bytes_per_sec), ("tx", |p| p.net_tx_bytes_per_sec)],
        MetricArg::Procs => vec![("procs", |p| p.process_count)],
    }
}

fn format_metric(title: &str, value: f64) -> String {
    match title {
        "mem used" | "mem max" | "swap used" => bytes(value),
        "rx" | "tx" => rate(value),
        "load1" => format!("{value:.2}"),
        _ => format!("{value:.1}"),
    }
}

pub async fn metrics(channel: Channel, args: MetricsArgs, output: Output) -> anyhow::Result<()> {
    let until_ms = args.until.map_or(0, ago_ms);
    let since_ms = ago_ms(args.since);
    let resolution = match args.resolution {
        ResolutionArg::Auto => v1::Resolution::Auto,
        ResolutionArg::Raw => v1::Resolution::Raw,
        ResolutionArg::Minute => v1::Resolution::Minute,
        ResolutionArg::Hour => v1::Resolution::Hour,
    };
    let response = MonitoringClient::new(channel)
        .query_metrics(v1::QueryMetricsRequest {
            host: args.host.clone(),
            since_ms,
            until_ms,
            resolution: resolution as i32,
        })
        .await?
        .into_inner();
    let mut chosen = args.metrics.clone();
    if chosen.is_empty() {
        chosen = vec![MetricArg::Cpu, MetricArg::Mem, MetricArg::Disk, MetricArg::Net];
    }
    chosen.sort();
    chosen.dedup();
    let columns: Vec<_> = chosen.iter().flat_map(|m| metric_columns(*m)).collect();
    let used = response.resolution().short_name();
    if output == Output::Json {
        let points: Vec<Value> = response
            .points
            .iter()
            .map(|p| {
                let mut row = serde_json::Map::new();
                row.insert("at".into(), rfc3339(p.at_ms));
                row.insert("samples".into(), json!(p.samples));
                for (title, value) in &columns {
                    row.insert(
                        title.replace(['%', ' '], "_").trim_end_matches('_').to_owned(),
                        json!(value(p)),
                    );
                }
                Value::Object(row)
            })
            .collect();
        return print_json(&json!({"host_id": response.host_id, "resolution": used, "points": points}));
    }
    if response.points.is_empty() {
        println!(
            "No {used} metrics for {} in that range. Rollups lag real time by a few minutes; try \
             --resolution raw for the last hours.",
            args.host
        );
        return Ok(());
    }
    if args.spark {
        let first = response.points.first().map_or(0, |p| p.at_ms);
        let last = response.points.last().map_or(0, |p| p.at_ms);
        println!("{} at {used} resolution, {} points", args.host, response.points.len());
        println!("{} .. {}", rfc3339(first).as_str().unwrap_or("?"), rfc3339(last).as_str().unwrap_or("?"));
        for (title, value) in &columns {
            let values: Vec<f64> = response.points.iter().map(value).collect();
            let (lo, hi) =
                values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| (l.min(*v), h.max(*v)));
            let now = values.last().copied().unwrap_or(0.0);
            println!(
                "{title:>10} {} now {} (min {}, max {})",
                sparkline(&downsample(&values, 60)),
                format_metric(title, now),
                format_metric(title, lo),
                format_metric(title, hi)
            );
        }
        return Ok(());
    }
    let mut header = vec!["TIME"];
    if response.resolution() != v1::Resolution::Raw {
        header.push("SAMPLES");
    }
    let titles: Vec<String> = columns.iter().map(|(t, _)| t.to_uppercase()).collect();
    header.extend(titles.iter().map(String::as_str));
    let mut t = table(&header);
    for p in &response.points {
        let mut row = vec![rfc3339(p.at_ms).as_str().unwrap_or("?").to_owned()];
        if response.resolution() != v1::Resolution::Raw {
            row.push(p.samples.to_string());
        }
        row.extend(columns.iter().map(|(title, value)| format_metric(title, value(p))));
        t.add_row(row);
    }
    println!("{t}");
    Ok(())
}

/// At most `width` values: averages of equal runs, so a sparkline fits a terminal.
fn downsample(values: &[f64], width: usize) -> Vec<f64> {
    if values.len() <= width {
        return values.to_vec();
    }
    #[allow(clippy::cast_precision_loss)]
    (0..width)
        .map(|i| {
            let run = &values[i * values.len() / width..(i + 1) * values.len() / width];
            run.iter().sum::<f64>() / run.len().max(1) as f64
        })
        .collect()
}

// ----- top ----------------------------------------------------------------------------------

pub async fn top(channel: Channel, args: TopArgs, output: Output) -> anyhow::Result<()> {
    let mut fleet = FleetClient::new(channel.clone());
    let mut monitoring = MonitoringClient::new(channel);
    let interactive = output == Output::Table && !args.once;
    loop {
        let summary = monitoring.fleet_summary(v1::FleetSummaryRequest::default()).await?.into_inner();
        let mut hosts = fleet.list_hosts(v1::ListHostsRequest::default()).await?.into_inner().hosts;
        sort_hosts(&mut hosts, args.sort);
        hosts.truncate(args.limit);
        if output == Output::Json {
            let rows: Vec<Value> = hosts
                .iter()
                .map(|h| {
                    json!({"name": h.name, "online": h.online, "health": health_json(h.health.as_ref()),
                                 "latest": sample_json(h.latest.as_ref())})
                })
                .collect();
            // One line per frame, so a program can follow the stream.
            let counts = json!({"hosts": summary.hosts, "online": summary.online, "offline": summary.offline,
                                "stale": summary.stale, "unhealthy": summary.unhealthy, "degraded": summary.degraded});
            println!(
                "{}",
                serde_json::to_string(&json!({"at": rfc3339(now_ms()), "fleet": counts, "hosts": rows}))?
            );
        } else {
            let frame = top_frame(&summary, &hosts);
            if interactive {
                // Home the cursor and clear, then draw: no flicker from scrolling.
                print!("\x1b[H\x1b[2J{frame}");
                println!(
                    "sorted by {:?}; refreshing every {}; Ctrl-C to quit",
                    args.sort,
                    humantime::format_duration(args.interval)
                );
            } else {
                print!("{frame}");
            }
            std::io::stdout().flush()?;
        }
        if args.once {
            return Ok(());
        }
        tokio::select! {
            () = tokio::time::sleep(args.interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

fn sort_hosts(hosts: &mut [v1::Host], sort: TopSort) {
    let key = |h: &v1::Host| -> f64 {
        let Some(s) = h.latest.as_ref().filter(|_| h.online) else { return -1.0 };
        match sort {
            TopSort::Cpu => s.cpu_percent,
            TopSort::Mem => s.memory_percent(),
            TopSort::Disk => s.fullest_disk().map_or(0.0, |d| d.1),
            TopSort::Load => s.load1,
            // Worst first.
            TopSort::Health => 100.0 - f64::from(h.health.as_ref().map_or(0, |x| x.score)),
            TopSort::Name => 0.0,
        }
    };
    if sort == TopSort::Name {
        hosts.sort_by(|a, b| a.name.cmp(&b.name));
    } else {
        hosts.sort_by(|a, b| key(b).total_cmp(&key(a)).then_with(|| a.name.cmp(&b.name)));
    }
}

fn top_frame(summary: &v1::FleetSummaryResponse, hosts: &[v1::Host]) -> String {
    let mut t =
        table(&["NAME", "HEALTH", "CPU", "MEM", "DISK", "LOAD", "NET RX", "NET TX", "PROCS", "UPTIME"]);
    for h in hosts {
        let [cpu, mem, disk, load] = vitals_cells(h.latest.as_ref().filter(|_| h.online));
        let s = h.latest.as_ref().filter(|_| h.online);
        t.add_row(vec![
            h.name.clone(),
            if h.online { health_text(h.health.as_ref()) } else { "offline".into() },
            cpu,
            mem,
            disk,
            load,
            s.map_or_else(|| "-".into(), |s| rate(s.net_rx_bytes_per_sec)),
            s.map_or_else(|| "-".into(), |s| rate(s.net_tx_bytes_per_sec)),
            s.map_or_else(|| "-".into(), |s| s.process_count.to_string()),
            s.map_or_else(
                || "-".into(),
                |s| humantime::format_duration(Duration::from_secs(s.uptime_secs / 60 * 60)).to_string(),
            ),
        ]);
    }
    format!(
        "{} hosts: {} online, {} offline, {} stale; {} unhealthy, {} degraded\n{t}\n",
        summary.hosts, summary.online, summary.offline, summary.stale, summary.unhealthy, summary.degraded
    )
}

// ----- ps -----------------------------------------------------------------------------------

pub async fn ps(channel: Channel, args: PsArgs, output: Output) -> anyhow::Result<ExitCode> {
    let sort = match args.sort {
        PsSort::Cpu => v1::ProcessSort::Cpu,
        PsSort::Mem => v1::ProcessSort::Memory,
    };
    let request = v1::RunJobRequest {
        selector: Some(v1::HostSelector { hosts: vec![args.host.clone()], ..Default::default() }),
        action: Some(v1::JobAction {
            kind: Some(v1::job_action::Kind::ProcessList(v1::ProcessListAction {
                sort: sort as i32,
                limit: args.limit,
            })),
            elevated: args.elevate,
        }),
        timeout_ms: 15_000,
        ..Default::default()
    };
    let mut events = FleetClient::new(channel).run_job(request).await?.into_inner();
    let mut finished: Option<v1::TargetFinished> = None;
    while let Some(event) = events.message().await? {
        match event.kind {
            Some(job_event::Kind::Finished(f)) => finished = Some(f),
            Some(job_event::Kind::Completed(_)) => break,
            Some(job_event::Kind::Accepted(a)) if a.targets.is_empty() => {
                anyhow::bail!("no host named {:?}; `tailopsctl hosts ls` lists them", args.host);
            }
            _ => {}
        }
    }
    let Some(finished) = finished else { anyhow::bail!("the job ended without a result from {}", args.host) };
    let state = finished.state();
    let result = finished.result.unwrap_or_default();
    let list = match result.output.and_then(|o| o.kind) {
        Some(v1::action_output::Kind::ProcessList(list)) => list,
        _ => {
            let why = if result.error.is_empty() {
                format!("the host answered {state:?} without a process list")
            } else {
                result.error
            };
            eprintln!("{}: {why}", args.host);
            return Ok(ExitCode::FAILURE);
        }
    };
    if output == Output::Json {
        let rows: Vec<Value> = list
            .processes
            .iter()
            .map(|p| {
                json!({"pid": p.pid, "ppid": p.parent_pid, "name": p.name, "user": p.user,
                             "cpu_percent": p.cpu_percent, "memory_bytes": p.memory_bytes,
                             "started_at": rfc3339(p.started_at_ms), "state": p.state, "command": p.command})
            })
            .collect();
        print_json(&json!({"host": args.host, "total": list.total, "processes": rows}))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = table(&["PID", "USER", "CPU%", "MEM", "STATE", "STARTED", "COMMAND"]);
    for p in &list.processes {
        let command = if p.command.is_empty() { format!("[{}]", p.name) } else { p.command.clone() };
        #[allow(clippy::cast_precision_loss)]
        t.add_row(vec![
            p.pid.to_string(),
            p.user.clone(),
            format!("{:.1}", p.cpu_percent),
            bytes(p.memory_bytes as f64),
            p.state.clone(),
            ago(p.started_at_ms),
            command.chars().take(80).collect(),
        ]);
    }
    println!("{} of {} processes on {}", list.processes.len(), list.total, args.host);
    println!("{t}");
    Ok(ExitCode::SUCCESS)
}

// ----- inventory ----------------------------------------------------------------------------

pub async fn inventory(channel: Channel, command: InventoryCommand, output: Output) -> anyhow::Result<()> {
    let InventoryCommand::Changes { host, since, prefix, limit } = command;
    let changes = MonitoringClient::new(channel)
        .list_changes(v1::ListChangesRequest {
            host: host.unwrap_or_default(),
            since_ms: ago_ms(since),
            key_prefix: prefix.unwrap_or_default(),
            limit,
        })
        .await?
        .into_inner()
        .changes;
    if output == Output::Json {
        let rows: Vec<Value> = changes
            .iter()
            .map(|c| {
                json!({"at": rfc3339(c.at_ms), "host": c.host_name, "host_id": c.host_id, "key": c.key,
                             "old": c.old_value, "new": c.new_value})
            })
            .collect();
        return print_json(&Value::Array(rows));
    }
    if changes.is_empty() {
        println!("No inventory changes in that period.");
        return Ok(());
    }
    let mut t = table(&["WHEN", "HOST", "FACT", "CHANGE"]);
    for c in &changes {
        let change = match (&c.old_value, &c.new_value) {
            (None, Some(new)) => format!("+ {new}"),
            (Some(old), None) => format!("- {old}"),
            (Some(old), Some(new)) => format!("{old} → {new}"),
            (None, None) => String::new(),
        };
        t.add_row(vec![ago(c.at_ms), c.host_name.clone(), c.key.clone(), change]);
    }
    println!("{t}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparklines_scale_between_min_and_max() {
        assert_eq!(sparkline(&[0.0, 50.0, 100.0]), "▁▅█");
        assert_eq!(sparkline(&[3.0, 3.0]), "▁▁");
        assert_eq!(sparkline(&[]), "");
    }

    #[test]
    fn sizes_read_like_df() {
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(1536.0), "1.5 KiB");
        assert_eq!(bytes(3.0 * 1024.0 * 1024.0 * 1024.0), "3.0 GiB");
    }

    #[test]
    fn downsampling_averages_runs() {
        assert_eq!(downsample(&[1.0, 3.0, 5.0, 7.0], 2), vec![2.0, 6.0]);
        assert_eq!(downsample(&[1.0], 5), vec![1.0]);
    }
}
