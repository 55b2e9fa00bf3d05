//! Read-only fleet tools: hosts, host details, the fleet overview, metrics, inventory changes
//! and the bridge's own recent audit trail.

use std::time::Duration;

use rmcp::model::Tool;
use serde_json::{Value, json};
use tailops_proto::v1;

use super::schema::object;
use super::{Args, Call, ToolError, ToolResult, capped, observe, time};

#[derive(Debug, Clone, Copy)]
pub enum FleetTool {
    ListHosts,
    GetHost,
    FleetOverview,
    QueryMetrics,
    InventoryChanges,
    RecentAudit,
}

/// Facts are many (every unit, container and NIC); a host's details keep these families and
/// leave the rest to `prefix`.
const SUMMARY_FACT_PREFIXES: &[&str] = &[
    "os.",
    "kernel",
    "arch",
    "cpu.",
    "memory.",
    "virtualization.",
    "tailscale.",
    "apps.",
    "ops.",
    "hostname",
];

pub fn tools() -> Vec<(Tool, FleetTool)> {
    let host = json!({"type": "string", "description": "The host's name."});
    let since = |default: &str| {
        json!({"type": "string", "default": default,
               "description": "How far back, as a duration such as 30m, 6h or 7d."})
    };
    vec![
        (
            Tool::new(
                "list_hosts",
                "Hosts this bridge may see, with online state, health score, CPU/memory/disk use and \
                 labels. Filter by labels, name, or only problems.",
                object(
                    json!({
                        "labels": {"type": "object", "additionalProperties": {"type": "string"},
                                   "description": "Only hosts with all these labels."},
                        "name_contains": {"type": "string", "description": "Only hosts whose name contains this."},
                        "problems_only": {"type": "boolean", "default": false,
                                          "description": "Only hosts that are offline, stale, degraded or unhealthy."},
                    }),
                    &[],
                ),
            )
            .with_annotations(observe("List hosts")),
            FleetTool::ListHosts,
        ),
        (
            Tool::new(
                "get_host",
                "One host in detail: status, latest metrics, health score with the reasons, labels and \
                 facts (OS, hardware, virtualization, Tailscale, detected apps). `fact_prefix` lists \
                 other facts, e.g. systemd. or docker.",
                object(
                    json!({"host": host, "fact_prefix": {"type": "string",
                           "description": "Return every fact starting with this instead of the summary."}}),
                    &["host"],
                ),
            )
            .with_annotations(observe("Host details")),
            FleetTool::GetHost,
        ),
        (
            Tool::new(
                "fleet_overview",
                "The whole fleet at a glance: host counts (online, offline, stale, degraded, unhealthy) \
                 and the top CPU, memory and disk users.",
                object(
                    json!({"top": {"type": "integer", "minimum": 1, "maximum": 50, "default": 5,
                                   "description": "How many hosts in each top list."}}),
                    &[],
                ),
            )
            .with_annotations(observe("Fleet overview")),
            FleetTool::FleetOverview,
        ),
        (
            Tool::new(
                "query_metrics",
                "A host's CPU, load, memory, disk and network over a time range, averaged per point \
                 (raw samples, minutes or hours depending on the range).",
                object(
                    json!({"host": host, "since": since("1h"),
                           "until": {"type": "string", "description": "End of the range as a duration ago (default now)."},
                           "resolution": {"type": "string", "enum": ["auto", "raw", "1m", "1h"], "default": "auto",
                                          "description": "Point spacing; auto picks by the range's length."}}),
                    &["host"],
                ),
            )
            .with_annotations(observe("Metrics over time")),
            FleetTool::QueryMetrics,
        ),
        (
            Tool::new(
                "inventory_changes",
                "What changed on hosts (packages, units, containers, addresses...), each with old and \
                 new value, newest first.",
                object(
                    json!({"host": {"type": "string", "description": "Only this host (default: all)."},
                           "since": since("24h"),
                           "prefix": {"type": "string", "description": "Only fact keys starting with this, e.g. docker."},
                           "limit": {"type": "integer", "minimum": 1, "maximum": 500, "default": 100,
                                     "description": "Most changes returned."}}),
                    &[],
                ),
            )
            .with_annotations(observe("Inventory changes")),
            FleetTool::InventoryChanges,
        ),
        (
            Tool::new(
                "recent_audit",
                "Recent entries of the audit log: what was done, by whom and through which client, and \
                 what was denied. A bridge without the admin role sees only its own entries.",
                object(
                    json!({"since": since("24h"),
                           "action": {"type": "string", "description": "Only this action, e.g. job.create."},
                           "limit": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50,
                                     "description": "Most entries returned."}}),
                    &[],
                ),
            )
            .with_annotations(observe("Recent audit")),
            FleetTool::RecentAudit,
        ),
    ]
}

pub async fn call(tool: FleetTool, args: &Args, call: &Call) -> ToolResult {
    match tool {
        FleetTool::ListHosts => list_hosts(args, call).await,
        FleetTool::GetHost => get_host(args, call).await,
        FleetTool::FleetOverview => {
            args.only(&["top"])?;
            let top = u32::try_from(args.number("top", 5, 1, 50)?).unwrap_or(5);
            let summary = call
                .controller
                .monitoring()
                .fleet_summary(call.request(v1::FleetSummaryRequest { top }))
                .await?
                .into_inner();
            let usage = |list: &[v1::HostUsage]| -> Vec<Value> {
                list.iter().map(|u| json!({"host": u.name, "percent": round(u.value)})).collect()
            };
            Ok(json!({
                "hosts": summary.hosts, "online": summary.online, "offline": summary.offline,
                "stale": summary.stale, "degraded": summary.degraded, "unhealthy": summary.unhealthy,
                "top_cpu": usage(&summary.top_cpu), "top_memory": usage(&summary.top_memory),
                "top_disk": usage(&summary.top_disk),
            }))
        }
        FleetTool::QueryMetrics => query_metrics(args, call).await,
        FleetTool::InventoryChanges => {
            args.only(&["host", "since", "prefix", "limit"])?;
            let since = args.duration("since")?.unwrap_or(Duration::from_secs(86_400));
            let limit = args.number("limit", 100, 1, 500)?.min(call.limits.max_rows as u64);
            let limit = u32::try_from(limit).unwrap_or(100);
            let request = v1::ListChangesRequest {
                host: args.text("host")?.unwrap_or_default().to_owned(),
                since_ms: ago(since),
                key_prefix: args.text("prefix")?.unwrap_or_default().to_owned(),
                limit,
            };
            let changes =
                call.controller.monitoring().list_changes(call.request(request)).await?.into_inner().changes;
            Ok(json!({"changes": changes.iter().map(|c| json!({
                "at": time(c.at_ms), "host": c.host_name, "key": c.key, "old": c.old_value, "new": c.new_value,
            })).collect::<Vec<_>>()}))
        }
        FleetTool::RecentAudit => {
            args.only(&["since", "action", "limit"])?;
            let since = args.duration("since")?.unwrap_or(Duration::from_secs(86_400));
            let limit = u32::try_from(args.number("limit", 50, 1, 200)?).unwrap_or(50);
            let request = v1::ListAuditRequest {
                since_ms: ago(since),
                principal: String::new(),
                action: args.text("action")?.unwrap_or_default().to_owned(),
                limit,
            };
            let entries =
                call.controller.audit().list_audit(call.request(request)).await?.into_inner().entries;
            Ok(json!({"entries": entries.iter().map(|e| {
                let arguments: Value = serde_json::from_str(&e.arguments_json).unwrap_or(Value::Null);
                let mut entry = json!({"seq": e.seq, "at": time(e.at_ms), "principal": e.principal,
                       "action": e.action, "targets": e.targets, "arguments": arguments,
                       "decision": e.decision, "outcome": e.outcome});
                if !e.client.is_empty() {
                    entry["client"] = json!(e.client);
                }
                entry
            }).collect::<Vec<_>>()}))
        }
    }
}

async fn list_hosts(args: &Args, call: &Call) -> ToolResult {
    args.only(&["labels", "name_contains", "problems_only"])?;
    let labels = args.string_map("labels")?;
    let name = args.text("name_contains")?.map(str::to_lowercase);
    let problems_only = args.flag("problems_only")?;
    let selector = v1::HostSelector { all: labels.is_empty(), labels, hosts: Vec::new() };
    let hosts = call
        .controller
        .fleet()
        .list_hosts(call.request(v1::ListHostsRequest { selector: Some(selector) }))
        .await?
        .into_inner()
        .hosts;
    let hosts: Vec<v1::Host> = hosts
        .into_iter()
        .filter(|h| name.as_ref().is_none_or(|n| h.name.to_lowercase().contains(n)))
        .filter(|h| !problems_only || has_problem(h))
        .collect();
    let count = hosts.len();
    let (hosts, omitted) = capped(hosts, call.limits.max_rows);
    Ok(json!({
        "count": count,
        "omitted": omitted,
        "hosts": hosts.iter().map(host_row).collect::<Vec<_>>(),
    }))
}

fn has_problem(host: &v1::Host) -> bool {
    let health = host.health.as_ref();
    !host.online
        || health.is_none_or(|h| {
            h.stale || matches!(h.status(), v1::HealthStatus::Degraded | v1::HealthStatus::Unhealthy)
        })
}

fn health_name(health: Option<&v1::Health>) -> &'static str {
    health.map_or(v1::HealthStatus::Unknown, v1::Health::status).short_name()
}

fn host_row(host: &v1::Host) -> Value {
    let mut row = json!({
        "name": host.name,
        "online": host.online,
        "health": health_name(host.health.as_ref()),
        "os": host.os,
        "labels": host.labels,
    });
    if let Some(health) = &host.health {
        row["score"] = json!(health.score);
        if !health.reasons.is_empty() {
            row["reasons"] = json!(health.reasons);
        }
    }
    if let Some(sample) = &host.latest {
        row["cpu_percent"] = json!(round(sample.cpu_percent));
        row["memory_percent"] = json!(round(sample.memory_percent()));
        if let Some((mount, percent)) = sample.fullest_disk() {
            row["fullest_disk"] = json!({"mount": mount, "percent": round(percent)});
        }
        row["load1"] = json!(round(sample.load1));
    }
    if !host.online {
        row["last_seen"] = time(host.last_seen_ms);
    }
    row
}

async fn get_host(args: &Args, call: &Call) -> ToolResult {
    args.only(&["host", "fact_prefix"])?;
    let host = args.required_text("host")?.to_owned();
    let prefix = args.text("fact_prefix")?.map(str::to_owned);
    let response =
        call.controller.monitoring().get_host(call.request(v1::GetHostRequest { host })).await?.into_inner();
    let facts: Vec<&v1::Fact> = response
        .facts
        .iter()
        .filter(|f| match &prefix {
            Some(prefix) => f.key.starts_with(prefix.as_str()),
            None => SUMMARY_FACT_PREFIXES.iter().any(|p| f.key.starts_with(p)),
        })
        .collect();
    let other = response.facts.len() - facts.len();
    let (facts, omitted) = capped(facts, call.limits.max_rows);
    let mut value = json!({
        "name": response.name,
        "online": response.online,
        "last_seen": time(response.last_seen_ms),
        "labels": response.labels,
        "health": response.health.as_ref().map(|h| json!({
            "status": health_name(Some(h)), "score": h.score, "stale": h.stale, "reasons": h.reasons,
        })),
        "facts": facts.iter().map(|f| (f.key.clone(), Value::String(f.value.clone()))).collect::<serde_json::Map<_, _>>(),
    });
    if omitted > 0 {
        value["omitted_facts"] = json!(omitted);
    }
    if prefix.is_none() && other > 0 {
        value["more_facts"] = json!(format!(
            "{other} more facts (systemd units, containers, NICs...): pass fact_prefix, e.g. systemd. or docker."
        ));
    }
    if let Some(sample) = &response.latest {
        value["latest"] = sample_json(sample);
    }
    Ok(value)
}

fn sample_json(sample: &v1::MetricSample) -> Value {
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    #[allow(clippy::cast_precision_loss)]
    let gib = |bytes: u64| round(bytes as f64 / GIB);
    json!({
        "at": time(sample.at_ms),
        "cpu_percent": round(sample.cpu_percent),
        "load": [round(sample.load1), round(sample.load5), round(sample.load15)],
        "memory": {"used_gib": gib(sample.mem_used_bytes), "total_gib": gib(sample.mem_total_bytes),
                   "percent": round(sample.memory_percent())},
        "swap_percent": round(sample.swap_percent()),
        "disks": sample.disks.iter().map(|d| json!({
            "mount": d.mount, "used_gib": gib(d.used_bytes), "total_gib": gib(d.total_bytes),
            "percent": round(d.used_percent()),
        })).collect::<Vec<_>>(),
        "net_rx_bytes_per_sec": round(sample.net_rx_bytes_per_sec),
        "net_tx_bytes_per_sec": round(sample.net_tx_bytes_per_sec),
        "uptime_secs": sample.uptime_secs,
        "processes": sample.process_count,
    })
}

async fn query_metrics(args: &Args, call: &Call) -> ToolResult {
    args.only(&["host", "since", "until", "resolution"])?;
    let host = args.required_text("host")?.to_owned();
    let since = args.duration("since")?.unwrap_or(Duration::from_secs(3600));
    let until = args.duration("until")?.unwrap_or_default();
    if until >= since {
        return Err(ToolError::InvalidArgument(
            "until must be more recent than since (both are durations ago)".into(),
        ));
    }
    let wanted = args.text("resolution")?.unwrap_or("auto");
    let resolution =
        [v1::Resolution::Auto, v1::Resolution::Raw, v1::Resolution::Minute, v1::Resolution::Hour]
            .into_iter()
            .find(|r| r.short_name() == wanted)
            .ok_or_else(|| {
                ToolError::InvalidArgument(format!("resolution must be auto, raw, 1m or 1h, not {wanted:?}"))
            })?;
    let request = v1::QueryMetricsRequest {
        host: host.clone(),
        since_ms: ago(since),
        until_ms: if until.is_zero() { 0 } else { ago(until) },
        resolution: resolution as i32,
    };
    let response = call.controller.monitoring().query_metrics(call.request(request)).await?.into_inner();
    // Evenly thinned to the row limit: a model needs the shape, not every point.
    let points = &response.points;
    let step = points.len().div_ceil(call.limits.max_rows).max(1);
    let rows: Vec<Value> = points
        .iter()
        .step_by(step)
        .map(|p| {
            json!([
                time(p.at_ms),
                round(p.cpu_percent),
                round(p.cpu_percent_max),
                round(p.load1),
                round(percent(p.mem_used_bytes, p.mem_total_bytes)),
                round(p.disk_used_percent_max),
                round(p.net_rx_bytes_per_sec),
                round(p.net_tx_bytes_per_sec)
            ])
        })
        .collect();
    Ok(json!({
        "host": host,
        "resolution": response.resolution().short_name(),
        "points": points.len(),
        "every_nth_point": step,
        "columns": ["at", "cpu_avg", "cpu_max", "load1", "memory_percent", "disk_max_percent", "net_rx_bps", "net_tx_bps"],
        "rows": rows,
    }))
}

fn percent(part: f64, whole: f64) -> f64 {
    if whole > 0.0 { part * 100.0 / whole } else { 0.0 }
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Milliseconds since the epoch, `duration` ago.
fn ago(duration: Duration) -> i64 {
    let ms = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
    tailops_proto::time::now_ms().saturating_sub(ms)
}
