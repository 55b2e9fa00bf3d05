//! Monitoring and inventory end to end: a real agent samples this machine and reports facts; the
//! controller stores, rolls up and serves them; the CLI shows them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tailops_agent::facts::FactsConfig;
use tailops_agent::monitor::MonitorOptions;
use tailops_agent::mounts::{MountFilter, read_mounts};
use tailops_proto::v1;
use tailops_tests::*;
use tonic::Code;

/// Polls `probe` every 100 ms for up to 20 s until it yields a value.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut probe: impl FnMut() -> F,
) -> T {
    for _ in 0..200 {
        if let Some(value) = probe().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn get_host(controller: &TestController, host: &str) -> v1::GetHostResponse {
    controller
        .monitoring()
        .await
        .get_host(v1::GetHostRequest { host: host.to_owned() })
        .await
        .expect("get host")
        .into_inner()
}

fn facts_of(host: &v1::GetHostResponse) -> BTreeMap<String, String> {
    host.facts.iter().map(|f| (f.key.clone(), f.value.clone())).collect()
}

async fn meminfo_bytes(key: &str) -> u64 {
    let meminfo = tokio::fs::read_to_string("/proc/meminfo").await.expect("meminfo");
    let line = meminfo.lines().find(|l| l.starts_with(key)).expect("meminfo key");
    line.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).expect("number") * 1024
}

async fn ctl(controller: &TestController, args: &[&str]) -> std::process::Output {
    tailopsctl(&controller.admin_profile_file().await, args).await
}

fn json_of(output: &std::process::Output) -> Value {
    assert!(output.status.success(), "stderr: {}", text(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("json output")
}

#[tokio::test]
async fn a_real_agent_reports_what_the_kernel_reports() {
    let controller = TestController::start().await;
    let _agent = controller.agent("local", &[("env", "test")]).await;

    let host = eventually("a sample and facts", || async {
        let host = get_host(&controller, "local").await;
        (host.latest.is_some() && !host.facts.is_empty()).then_some(host)
    })
    .await;
    let sample = host.latest.clone().expect("sample");
    let facts = facts_of(&host);

    let total = meminfo_bytes("MemTotal:").await;
    assert_eq!(sample.mem_total_bytes, total);
    assert_eq!(facts.get("memory.total_bytes"), Some(&total.to_string()));
    // "Used" leaves out page cache: it tracks MemTotal - MemAvailable, not MemTotal - MemFree.
    let used = total - meminfo_bytes("MemAvailable:").await;
    assert!(sample.mem_used_bytes.abs_diff(used) < total / 10, "used {} vs {used}", sample.mem_used_bytes);
    // The facts say which operation families this host can run.
    let families: Vec<&str> = facts.get("ops.families").map(|f| f.split(',').collect()).unwrap_or_default();
    assert!(families.contains(&"file") && families.contains(&"net"), "{families:?}");
    let docker = tokio::process::Command::new("sh").args(["-c", "command -v docker"]).status().await;
    assert_eq!(families.contains(&"container"), docker.is_ok_and(|s| s.success()), "{families:?}");
    let kernel = tokio::fs::read_to_string("/proc/sys/kernel/osrelease").await.expect("osrelease");
    assert_eq!(facts.get("kernel").map(String::as_str), Some(kernel.trim()));

    let mounts: Vec<String> = MountFilter::default()
        .select(read_mounts(Path::new("/proc/mounts")).await)
        .into_iter()
        .map(|m| m.mount_point)
        .collect();
    assert_eq!(sample.disks.iter().map(|d| d.mount.clone()).collect::<Vec<_>>(), mounts);
    let fact_mounts: Vec<String> = facts
        .keys()
        .filter_map(|k| k.strip_prefix("disk.").and_then(|k| k.strip_suffix(".fstype")).map(str::to_owned))
        .collect();
    let mut sorted = mounts.clone();
    sorted.sort();
    assert_eq!(fact_mounts, sorted);

    // Listing hosts carries the same sample and a health verdict.
    let listed = controller.host("local").await.expect("listed");
    assert!(listed.latest.is_some());
    let health = listed.health.expect("health");
    assert_ne!(health.status(), v1::HealthStatus::Unspecified);

    // Samples accumulate as raw points.
    let points = eventually("three raw points", || async {
        let response = controller
            .monitoring()
            .await
            .query_metrics(v1::QueryMetricsRequest {
                host: "local".into(),
                resolution: v1::Resolution::Raw as i32,
                ..Default::default()
            })
            .await
            .expect("query")
            .into_inner();
        (response.points.len() >= 3).then_some(response.points)
    })
    .await;
    #[allow(clippy::cast_precision_loss)]
    let total_f = total as f64;
    assert!(points.iter().all(|p| (p.mem_total_bytes - total_f).abs() < 1.0));
    assert!(points.windows(2).all(|w| w[0].at_ms < w[1].at_ms));
    controller.stop().await;
}

/// A stand-in `docker` that answers `docker ps --all --no-trunc --format {{json .}}` (checking
/// that exact argv) with the lines of a file the test rewrites, so a container "changes state"
/// without touching the real engine.
async fn fake_docker(dir: &Path) -> (PathBuf, PathBuf) {
    let listing = dir.join("containers.jsonl");
    let script = dir.join("docker");
    let body = format!(
        "#!/bin/sh\n[ \"$*\" = 'ps --all --no-trunc --format {{{{json .}}}}' ] || {{ echo \"unexpected: $*\" >&2; exit 2; }}\ncat '{}'\n",
        listing.display()
    );
    stand_in(&script, &body).await;
    (script, listing)
}

#[tokio::test]
async fn fact_changes_are_recorded_with_old_and_new_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (docker, listing) = fake_docker(dir.path()).await;
    let web = r#"{"Names":"web","Image":"nginx:1.25","State":"running","Ports":"0.0.0.0:80->80/tcp"}"#;
    tokio::fs::write(&listing, format!("{web}\n")).await.expect("listing");

    let controller = TestController::start().await;
    let monitor = MonitorOptions {
        sample_interval: Duration::from_millis(500),
        facts_interval: Duration::from_millis(200),
        facts: FactsConfig { docker_bin: docker, ..FactsConfig::default() },
        ..MonitorOptions::default()
    };
    let _agent = controller.agent_with_monitor("box", &[], Some(monitor)).await;
    eventually("the baseline facts", || async {
        let facts = facts_of(&get_host(&controller, "box").await);
        (facts.get("container.web.state").map(String::as_str) == Some("running")).then_some(())
    })
    .await;
    let changes = |prefix: &str| {
        let prefix = prefix.to_owned();
        let controller = &controller;
        async move {
            controller
                .monitoring()
                .await
                .list_changes(v1::ListChangesRequest {
                    host: "box".into(),
                    key_prefix: prefix,
                    ..Default::default()
                })
                .await
                .expect("changes")
                .into_inner()
                .changes
        }
    };
    assert!(changes("").await.is_empty(), "the first report is a baseline, not a change");

    let exited = web.replace("running", "exited");
    let db = r#"{"Names":"db","Image":"postgres:16","State":"running","Ports":""}"#;
    tokio::fs::write(&listing, format!("{exited}\n{db}\n")).await.expect("listing");
    let recorded = eventually("the recorded changes", || async {
        let all = changes("container.").await;
        (all.len() >= 3).then_some(all)
    })
    .await;
    let by_key: BTreeMap<&str, (Option<&str>, Option<&str>)> =
        recorded.iter().map(|c| (c.key.as_str(), (c.old_value.as_deref(), c.new_value.as_deref()))).collect();
    assert_eq!(by_key.get("container.web.state"), Some(&(Some("running"), Some("exited"))));
    assert_eq!(by_key.get("container.db.image"), Some(&(None, Some("postgres:16"))));
    assert_eq!(by_key.get("container.db.state"), Some(&(None, Some("running"))));
    assert!(recorded.iter().all(|c| c.host_name == "box"));

    // A removed container is a change too, and the current facts follow.
    tokio::fs::write(&listing, format!("{exited}\n")).await.expect("listing");
    eventually("the removal", || async {
        let all = changes("container.db.").await;
        all.iter().any(|c| c.key == "container.db.image" && c.new_value.is_none()).then_some(())
    })
    .await;
    let facts = facts_of(&get_host(&controller, "box").await);
    assert!(!facts.contains_key("container.db.image"));

    // The CLI shows the same history.
    let json = json_of(&ctl(&controller, &["inventory", "changes", "--host", "box", "-o", "json"]).await);
    let rows = json.as_array().expect("array");
    assert!(
        rows.iter()
            .any(|r| r["key"] == "container.web.state" && r["old"] == "running" && r["new"] == "exited")
    );
    let table = ctl(&controller, &["inventory", "changes", "--prefix", "container.web"]).await;
    assert!(text(&table.stdout).contains("running → exited"), "{}", text(&table.stdout));
    controller.stop().await;
}

#[tokio::test]
async fn a_silent_host_is_shown_offline_without_any_request_waiting_on_it() {
    let controller = TestController::start().await;
    let mut agent = controller.agent("quiet", &[]).await;
    eventually("a sample", || async { get_host(&controller, "quiet").await.latest.map(|_| ()) }).await;
    agent.pause().await;
    controller.wait_online("quiet", false).await;

    // Every view answers at once from what it has, and says why the host is not healthy.
    let host =
        tokio::time::timeout(Duration::from_secs(5), get_host(&controller, "quiet")).await.expect("prompt");
    assert!(!host.online);
    let health = host.health.expect("health");
    assert_eq!(health.status(), v1::HealthStatus::Unknown);
    assert!(health.reasons[0].starts_with("offline; last seen"), "{:?}", health.reasons);
    assert!(host.latest.is_some(), "the last known sample is kept");
    let summary = controller
        .monitoring()
        .await
        .fleet_summary(v1::FleetSummaryRequest::default())
        .await
        .expect("summary")
        .into_inner();
    assert_eq!((summary.hosts, summary.online, summary.offline), (1, 0, 1));

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let stale = json_of(&ctl(&controller, &["hosts", "ls", "--stale", "1s", "-o", "json"]).await);
    assert_eq!(stale.as_array().map(Vec::len), Some(1));
    let unhealthy = json_of(&ctl(&controller, &["hosts", "ls", "--unhealthy", "-o", "json"]).await);
    assert_eq!(unhealthy[0]["health"]["status"], "unknown");
    let show = ctl(&controller, &["hosts", "show", "quiet"]).await;
    assert!(text(&show.stdout).contains("- offline; last seen"), "{}", text(&show.stdout));
    controller.stop().await;
}

#[tokio::test]
async fn cli_views_show_metrics_processes_and_the_fleet() {
    let controller = TestController::start().await;
    let _agent = controller.agent("web1", &[("env", "prod")]).await;
    eventually("two samples", || async {
        let r = controller
            .monitoring()
            .await
            .query_metrics(v1::QueryMetricsRequest { host: "web1".into(), ..Default::default() })
            .await
            .ok()?
            .into_inner();
        (r.points.len() >= 2).then_some(())
    })
    .await;

    let ls = ctl(&controller, &["hosts", "ls"]).await;
    let out = text(&ls.stdout);
    assert!(out.contains("HEALTH") && out.contains("CPU") && out.contains("web1"), "{out}");

    let metrics = json_of(&ctl(&controller, &["metrics", "web1", "--since", "10m", "-o", "json"]).await);
    assert_eq!(metrics["resolution"], "raw");
    assert!(metrics["points"].as_array().is_some_and(|p| p.len() >= 2), "{metrics}");
    assert!(metrics["points"][0]["cpu"].is_number(), "{metrics}");
    let spark = ctl(&controller, &["metrics", "web1", "--metric", "mem", "--spark"]).await;
    assert!(text(&spark.stdout).contains("mem used"), "{}", text(&spark.stdout));

    let show = json_of(&ctl(&controller, &["hosts", "show", "web1", "-o", "json"]).await);
    assert_eq!(show["labels"]["env"], "prod");
    assert!(show["facts"]["kernel"].is_string());
    assert!(show["latest"]["memory"]["total_bytes"].as_u64().is_some_and(|t| t > 0));

    let top = ctl(&controller, &["top", "--once", "--sort", "mem"]).await;
    assert!(top.status.success(), "{}", text(&top.stderr));
    assert!(text(&top.stdout).starts_with("1 hosts: 1 online, 0 offline"), "{}", text(&top.stdout));

    // The agent runs in this test process, so this process is on its process list.
    let ps =
        json_of(&ctl(&controller, &["ps", "web1", "--sort", "mem", "--limit", "500", "-o", "json"]).await);
    let processes = ps["processes"].as_array().expect("processes");
    assert!(processes.iter().any(|p| p["pid"] == std::process::id()), "{ps}");
    let memory: Vec<u64> = processes.iter().filter_map(|p| p["memory_bytes"].as_u64()).collect();
    assert!(memory.windows(2).all(|w| w[0] >= w[1]));

    let ps_table = ctl(&controller, &["ps", "web1", "--limit", "3"]).await;
    assert!(text(&ps_table.stdout).starts_with("3 of "), "{}", text(&ps_table.stdout));
    controller.stop().await;
}

#[tokio::test]
async fn bad_queries_get_clear_errors() {
    let controller = TestController::start().await;
    let _agent = controller.agent("one", &[("env", "prod")]).await;
    let mut monitoring = controller.monitoring().await;

    let missing = monitoring.get_host(v1::GetHostRequest { host: "nope".into() }).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert!(missing.message().contains("hosts ls"), "{}", missing.message());
    let empty = monitoring.get_host(v1::GetHostRequest::default()).await.unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    let backwards = monitoring
        .query_metrics(v1::QueryMetricsRequest {
            host: "one".into(),
            since_ms: 2_000,
            until_ms: 1_000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(backwards.code(), Code::InvalidArgument);

    // A scoped viewer cannot see (or learn of) hosts outside its scope.
    let scope = Some(v1::HostSelector {
        labels: [("env".to_owned(), "staging".to_owned())].into(),
        ..Default::default()
    });
    let viewer = controller.principal("user", "vera", "viewer", scope).await;
    let mut scoped =
        v1::monitoring_client::MonitoringClient::new(tailopsctl::connect(&viewer).await.expect("connect"));
    let hidden = scoped.get_host(v1::GetHostRequest { host: "one".into() }).await.unwrap_err();
    assert_eq!(hidden.code(), Code::NotFound);
    let summary =
        scoped.fleet_summary(v1::FleetSummaryRequest::default()).await.expect("summary").into_inner();
    assert_eq!(summary.hosts, 0);

    // The CLI refuses nonsense before calling anything, and says what it expected.
    let bad = ctl(&controller, &["metrics", "one", "--resolution", "5m"]).await;
    assert!(!bad.status.success());
    assert!(text(&bad.stderr).contains("possible values"), "{}", text(&bad.stderr));
    let bad_ps = ctl(&controller, &["ps", "one", "--limit", "0"]).await;
    assert!(!bad_ps.status.success());
    let unknown = ctl(&controller, &["hosts", "show", "ghost"]).await;
    assert!(!unknown.status.success());
    assert!(text(&unknown.stderr).contains("no host named \"ghost\""), "{}", text(&unknown.stderr));
    controller.stop().await;
}

/// A free loopback port (bound and released; the controller binds it again right after).
async fn free_port() -> std::net::SocketAddr {
    let probe = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    probe.local_addr().expect("addr")
}

/// `GET /metrics` over a plain TCP connection.
async fn scrape(addr: std::net::SocketAddr) -> prometheus_parse::Scrape {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(!head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{head}");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("exposition parses")
}

fn gauge(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

#[tokio::test]
async fn prometheus_exposes_hosts_and_the_controller_itself() {
    let addr = free_port().await;
    let controller = TestController::start_with(|c| c.prometheus.listen = Some(addr)).await;
    let _agent = controller.agent("web", &[("env", "prod")]).await;
    eventually("a sample", || async { get_host(&controller, "web").await.latest.map(|_| ()) }).await;
    // The sample writer commits asynchronously; scrape until its rows are counted.
    let metrics = eventually("stored samples in the metrics", || async {
        let metrics = scrape(addr).await;
        gauge(&metrics, "tailops_db_rows_written_total", &[("writer", "metrics")]).filter(|n| *n >= 1.0)?;
        Some(metrics)
    })
    .await;
    let host = [("host", "web"), ("label_env", "prod")];
    assert_eq!(gauge(&metrics, "tailops_host_up", &host), Some(1.0));
    #[allow(clippy::cast_precision_loss)]
    let total = meminfo_bytes("MemTotal:").await as f64;
    assert_eq!(gauge(&metrics, "tailops_host_memory_total_bytes", &host), Some(total));
    assert!(gauge(&metrics, "tailops_host_health_score", &host).is_some());
    assert_eq!(gauge(&metrics, "tailops_agents_connected", &[]), Some(1.0));
    let calls = gauge(
        &metrics,
        "tailops_rpc_requests_total",
        &[("method", "/tailops.v1.Monitoring/GetHost"), ("code", "OK")],
    );
    assert!(calls.is_some_and(|n| n >= 1.0), "GetHost calls: {calls:?}");
    controller.stop().await;
}
