//! End to end: the real endpoint over TCP, its body read by an independent exposition parser
//! (`prometheus-parse`) plus a strict label-set reader; the RPC layer inside a real tonic server.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use prometheus_parse::{Scrape, Value};
use tailops_proto::v1::{DiskUsage, InterfaceRate, MetricSample};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::endpoint::{Limits, serve_with};
use super::*;

const RACK: &str = r#"row "7" \ left"#;

struct Fixed(FleetSnapshot);

impl SnapshotSource for Fixed {
    fn snapshot(&self) -> BoxFuture<'_, FleetSnapshot> {
        Box::pin(async move { self.0.clone() })
    }
}

/// A source that never answers, like a database stuck behind a lock.
struct Never;

impl SnapshotSource for Never {
    fn snapshot(&self) -> BoxFuture<'_, FleetSnapshot> {
        Box::pin(futures::future::pending())
    }
}

fn fleet() -> FleetSnapshot {
    let a = HostGauges {
        host_id: "h-a".into(),
        name: "a".into(),
        labels: BTreeMap::from([
            ("env".to_owned(), "prod".to_owned()),
            ("rack-id".to_owned(), RACK.to_owned()),
        ]),
        online: true,
        last_seen_ms: 1_700_000_001_000,
        latest: Some(MetricSample {
            at_ms: 1_700_000_000_500,
            cpu_percent: 42.5,
            load1: 1.25,
            load5: 0.75,
            load15: 0.5,
            mem_total_bytes: 8 << 30,
            mem_used_bytes: 3 << 30,
            mem_available_bytes: 5 << 30,
            swap_total_bytes: 2 << 30,
            swap_used_bytes: 1 << 20,
            disks: vec![
                DiskUsage {
                    mount: "/".into(),
                    filesystem: "ext4".into(),
                    used_bytes: 10 << 30,
                    total_bytes: 50 << 30,
                },
                DiskUsage {
                    mount: "/var".into(),
                    filesystem: "xfs".into(),
                    used_bytes: 7 << 30,
                    total_bytes: 20 << 30,
                },
            ],
            interfaces: vec![InterfaceRate {
                name: "eth0".into(),
                rx_bytes_per_sec: 1234.5,
                tx_bytes_per_sec: 678.25,
            }],
            net_rx_bytes_per_sec: 1234.5,
            net_tx_bytes_per_sec: 678.25,
            uptime_secs: 3600,
            process_count: 123,
        }),
    };
    let b = HostGauges {
        host_id: "h-b".into(),
        name: "b".into(),
        labels: BTreeMap::from([("env".to_owned(), "dev".to_owned())]),
        online: false,
        last_seen_ms: 1_699_999_000_000,
        latest: None,
    };
    FleetSnapshot {
        hosts: vec![a, b],
        connected_agents: 1,
        jobs_by_state: vec![("running".into(), 2), ("succeeded".into(), 40)],
        health_scores: vec![("h-a".into(), 87), ("h-b".into(), 0), ("h-gone".into(), 55)],
    }
}

struct Running {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    /// Shuts the endpoint down; it must stop within a few seconds.
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("serve stops")
            .expect("serve task");
    }
}

async fn start(telemetry: Telemetry, source: Arc<dyn SnapshotSource>, limits: Limits) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve_with(listener, telemetry, source, shutdown.clone(), limits));
    Running { addr, shutdown, task }
}

fn fast() -> Limits {
    Limits {
        scrape_timeout: Duration::from_millis(300),
        header_read_timeout: Duration::from_secs(2),
        shutdown_grace: Duration::from_secs(1),
        ..Limits::default()
    }
}

struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

/// A minimal HTTP/1.1 client: one request, `Connection: close`, read to the end.
async fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("response within 10 s")
        .expect("read");
    let raw = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("header end");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status code");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Reply { status, headers, body: body.to_owned() }
}

fn parse(body: &str) -> Scrape {
    Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("exposition parses")
}

/// The one sample of `metric` whose labels include `labels`; fails on none or several.
fn sample<'s>(scrape: &'s Scrape, metric: &str, labels: &[(&str, &str)]) -> &'s prometheus_parse::Sample {
    let found: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect();
    assert_eq!(found.len(), 1, "{metric}{labels:?}: {found:#?}");
    found[0]
}

fn gauge(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    match sample(scrape, metric, labels).value {
        Value::Gauge(v) => v,
        ref other => panic!("{metric}{labels:?} is not a gauge: {other:?}"),
    }
}

fn absent(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> bool {
    !scrape
        .samples
        .iter()
        .any(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
}

/// Reads `name{k="v",...} value` by the exposition grammar, undoing `\\`, `\"` and `\n`.
/// `prometheus-parse` keeps escapes as they are and splits labels on `,`, so escaping is checked
/// here instead.
fn strict_sample(line: &str) -> (String, Vec<(String, String)>, String) {
    let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("no name end in {line}"));
    let (name, mut rest) = line.split_at(name_end);
    let mut labels = Vec::new();
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            if !labels.is_empty() {
                inner = inner.strip_prefix(',').unwrap_or_else(|| panic!("expected `,` in {line}"));
            }
            let (key, after) = inner.split_once("=\"").unwrap_or_else(|| panic!("expected `=\"` in {line}"));
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    None => panic!("unterminated value in {line}"),
                    Some((i, '"')) => break i + 1,
                    Some((_, '\\')) => match chars.next().map(|(_, c)| c) {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        other => panic!("bad escape {other:?} in {line}"),
                    },
                    Some((_, c)) => value.push(c),
                }
            };
            labels.push((key.to_owned(), value));
            inner = &after[end..];
        }
    }
    let value = rest.strip_prefix(' ').unwrap_or_else(|| panic!("no value in {line}")).to_owned();
    (name.to_owned(), labels, value)
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Every line is HELP, TYPE or a well-formed sample; every family has one HELP and one TYPE and
/// all its samples right after them; no series appears twice.
fn check_structure(body: &str) {
    let mut families = HashSet::new();
    let mut series = HashSet::new();
    let mut current: Option<(String, String)> = None;
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().expect("help name");
            assert!(families.insert(name.to_owned()), "family {name} appears twice");
            current = None;
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("type line");
            assert!(families.contains(name), "TYPE without HELP: {line}");
            current = Some((name.to_owned(), kind.to_owned()));
        } else {
            let (family, kind) =
                current.as_ref().unwrap_or_else(|| panic!("sample outside a family: {line}"));
            let (name, labels, value) = strict_sample(line);
            let allowed: &[&str] = if kind == "histogram" { &["_bucket", "_sum", "_count"] } else { &[""] };
            assert!(
                allowed.iter().any(|suffix| name == format!("{family}{suffix}")),
                "{name} inside family {family}"
            );
            let mut keys = HashSet::new();
            for (key, _) in &labels {
                assert!(is_name(key), "label name {key:?} in {line}");
                assert!(keys.insert(key.clone()), "label {key} twice in {line}");
            }
            assert!(value.parse::<f64>().is_ok() || value == "+Inf" || value == "NaN", "value {value:?}");
            assert!(series.insert((name, labels)), "duplicate series {line}");
        }
    }
}

#[tokio::test]
async fn metrics_endpoint_serves_the_fleet_and_the_controllers_own_metrics() {
    let telemetry = Telemetry::new();
    telemetry.observe_rpc("/tailops.v1.Fleet/ListHosts", tonic::Code::Ok, Duration::from_millis(2));
    telemetry.observe_rpc("/tailops.v1.Fleet/ListHosts", tonic::Code::Ok, Duration::from_millis(40));
    telemetry.observe_rpc(
        "/tailops.v1.Fleet/ListHosts",
        tonic::Code::PermissionDenied,
        Duration::from_millis(1),
    );
    telemetry.observe_rpc("/probe/../../etc/passwd", tonic::Code::Unimplemented, Duration::from_millis(1));
    telemetry.observe_db_write("results", 25, Duration::from_millis(4));
    let server = start(telemetry, Arc::new(Fixed(fleet())), fast()).await;

    let reply = request(server.addr, "GET", "/metrics").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        reply.headers.get("content-type").map(String::as_str),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    check_structure(&reply.body);
    let scrape = parse(&reply.body);

    // The controller's own metrics.
    let ok = sample(
        &scrape,
        "tailops_rpc_requests_total",
        &[("method", "/tailops.v1.Fleet/ListHosts"), ("code", "OK")],
    );
    assert_eq!(ok.value, Value::Counter(2.0));
    let denied = sample(
        &scrape,
        "tailops_rpc_requests_total",
        &[("method", "/tailops.v1.Fleet/ListHosts"), ("code", "PermissionDenied")],
    );
    assert_eq!(denied.value, Value::Counter(1.0));
    let other = sample(&scrape, "tailops_rpc_requests_total", &[("method", "other")]);
    assert_eq!(other.value, Value::Counter(1.0));
    let Value::Histogram(buckets) =
        &sample(&scrape, "tailops_rpc_duration_seconds", &[("method", "/tailops.v1.Fleet/ListHosts")]).value
    else {
        panic!("rpc duration is not a histogram");
    };
    let le = |bound: f64| buckets.iter().find(|b| b.less_than == bound).map(|b| b.count);
    assert_eq!(le(0.0005), Some(0.0));
    assert_eq!(le(0.0025), Some(2.0));
    assert_eq!(le(0.05), Some(3.0));
    assert_eq!(le(10.0), Some(3.0));
    assert_eq!(le(f64::INFINITY), Some(3.0));
    assert_eq!(
        sample(&scrape, "tailops_db_rows_written_total", &[("writer", "results")]).value,
        Value::Counter(25.0)
    );

    // Fleet-wide gauges.
    assert_eq!(gauge(&scrape, "tailops_agents_connected", &[]), 1.0);
    assert_eq!(gauge(&scrape, "tailops_jobs", &[("state", "running")]), 2.0);
    assert_eq!(gauge(&scrape, "tailops_jobs", &[("state", "succeeded")]), 40.0);

    // Host a: online, full sample.
    let a = [("host", "a"), ("host_id", "h-a"), ("label_env", "prod")];
    assert_eq!(gauge(&scrape, "tailops_host_up", &a), 1.0);
    assert_eq!(gauge(&scrape, "tailops_host_last_seen_timestamp_seconds", &a), 1_700_000_001.0);
    assert_eq!(gauge(&scrape, "tailops_host_health_score", &a), 87.0);
    assert_eq!(gauge(&scrape, "tailops_host_sample_timestamp_seconds", &a), 1_700_000_000.5);
    assert_eq!(gauge(&scrape, "tailops_host_cpu_percent", &a), 42.5);
    assert_eq!(gauge(&scrape, "tailops_host_load1", &a), 1.25);
    assert_eq!(gauge(&scrape, "tailops_host_load5", &a), 0.75);
    assert_eq!(gauge(&scrape, "tailops_host_load15", &a), 0.5);
    assert_eq!(gauge(&scrape, "tailops_host_memory_total_bytes", &a), (8u64 << 30) as f64);
    assert_eq!(gauge(&scrape, "tailops_host_memory_used_bytes", &a), (3u64 << 30) as f64);
    assert_eq!(gauge(&scrape, "tailops_host_memory_available_bytes", &a), (5u64 << 30) as f64);
    assert_eq!(gauge(&scrape, "tailops_host_swap_total_bytes", &a), (2u64 << 30) as f64);
    assert_eq!(gauge(&scrape, "tailops_host_swap_used_bytes", &a), (1u64 << 20) as f64);
    assert_eq!(gauge(&scrape, "tailops_host_uptime_seconds", &a), 3600.0);
    assert_eq!(gauge(&scrape, "tailops_host_processes", &a), 123.0);
    let a_root = [("host", "a"), ("mount", "/")];
    let a_var = [("host", "a"), ("mount", "/var")];
    assert_eq!(gauge(&scrape, "tailops_host_disk_used_bytes", &a_root), (10u64 << 30) as f64);
    assert_eq!(gauge(&scrape, "tailops_host_disk_total_bytes", &a_root), (50u64 << 30) as f64);
    assert_eq!(gauge(&scrape, "tailops_host_disk_used_bytes", &a_var), (7u64 << 30) as f64);
    assert_eq!(gauge(&scrape, "tailops_host_disk_total_bytes", &a_var), (20u64 << 30) as f64);
    let eth0 = [("host", "a"), ("interface", "eth0")];
    assert_eq!(gauge(&scrape, "tailops_host_network_receive_bytes_per_second", &eth0), 1234.5);
    assert_eq!(gauge(&scrape, "tailops_host_network_transmit_bytes_per_second", &eth0), 678.25);

    // Host b: offline and without a sample.
    let b = [("host", "b"), ("host_id", "h-b"), ("label_env", "dev")];
    assert_eq!(gauge(&scrape, "tailops_host_up", &b), 0.0);
    assert_eq!(gauge(&scrape, "tailops_host_last_seen_timestamp_seconds", &b), 1_699_999_000.0);
    assert_eq!(gauge(&scrape, "tailops_host_health_score", &b), 0.0);
    for metric in
        ["tailops_host_cpu_percent", "tailops_host_sample_timestamp_seconds", "tailops_host_disk_used_bytes"]
    {
        assert!(absent(&scrape, metric, &[("host", "b")]), "{metric} for host b");
    }
    // A score for a host the snapshot does not list has no labels to go with it.
    assert!(absent(&scrape, "tailops_host_health_score", &[("host_id", "h-gone")]));

    // The odd label key is sanitized and its value, quote and backslash included, round-trips.
    let line = reply.body.lines().find(|l| l.starts_with("tailops_host_cpu_percent{")).expect("cpu line");
    let (_, labels, _) = strict_sample(line);
    assert!(labels.contains(&("label_rack_id".to_owned(), RACK.to_owned())), "{labels:?}");
    assert!(!reply.body.contains("rack-id"));

    server.stop().await;
}

#[tokio::test]
async fn endpoint_answers_other_paths_and_methods() {
    let server = start(Telemetry::new(), Arc::new(Fixed(FleetSnapshot::default())), fast()).await;

    let index = request(server.addr, "GET", "/").await;
    assert_eq!(index.status, 200);
    assert!(index.body.contains("/metrics"), "{}", index.body);

    assert_eq!(request(server.addr, "GET", "/nope").await.status, 404);
    assert_eq!(request(server.addr, "GET", "/metrics/extra").await.status, 404);

    let post = request(server.addr, "POST", "/metrics").await;
    assert_eq!(post.status, 405);
    assert_eq!(post.headers.get("allow").map(String::as_str), Some("GET"));
    assert_eq!(request(server.addr, "DELETE", "/").await.status, 405);

    server.stop().await;
}

#[tokio::test]
async fn a_source_that_never_answers_gets_503_within_the_timeout() {
    let limits = fast();
    let server = start(Telemetry::new(), Arc::new(Never), limits).await;
    let started = Instant::now();
    let reply = request(server.addr, "GET", "/metrics").await;
    let elapsed = started.elapsed();
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(elapsed >= limits.scrape_timeout, "answered after {elapsed:?}");

    // The endpoint still serves the next request.
    assert_eq!(request(server.addr, "GET", "/").await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_stops_listening() {
    let server = start(Telemetry::new(), Arc::new(Fixed(FleetSnapshot::default())), fast()).await;
    // A connected client that never sends a request must not hold up shutdown.
    let mut idle = TcpStream::connect(server.addr).await.expect("connect");
    assert_eq!(request(server.addr, "GET", "/").await.status, 200);

    server.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(3), server.task)
        .await
        .expect("serve stops")
        .expect("serve task");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(3), idle.read(&mut buf)).await.expect("idle closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(TcpStream::connect(server.addr).await.is_err(), "still listening after shutdown");
}

/// A connection from `source` (a 127.0.0.x address) to `addr`, with a small receive buffer.
async fn connect_from(source: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("receive buffer");
    socket.bind(SocketAddr::from((source, 0))).expect("bind the source address");
    socket.connect(addr).await.expect("connect")
}

/// Whether the server closed `stream` within `wait` (end of file or reset; data counts as open).
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(wait, stream.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
}

/// L10: silent connections from one address take at most its share of the slots, so the real
/// scraper (another address) is answered at once even with a long header timeout.
#[tokio::test]
async fn one_address_cannot_take_every_slot() {
    let limits = Limits { header_read_timeout: Duration::from_secs(120), max_per_address: 4, ..fast() };
    let server = start(Telemetry::new(), Arc::new(Fixed(fleet())), limits).await;
    let mut flood = Vec::new();
    for _ in 0..80 {
        flood.push(connect_from([127, 0, 0, 2], server.addr).await);
    }
    let reply = request(server.addr, "GET", "/metrics").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // Beyond its share, the flooding address's connections were closed at once.
    let mut closed = 0;
    for stream in &mut flood {
        if closed_within(stream, Duration::from_millis(200)).await {
            closed += 1;
        }
    }
    assert!(closed >= 80 - 4, "only {closed} of 80 connections from one address were refused");
    server.stop().await;
}

/// L10: a client that asks for a large scrape and never reads it loses its connection once the
/// write stalls for the limit, so it cannot hold a slot.
#[tokio::test]
async fn a_client_that_never_reads_loses_its_slot() {
    let limits = Limits {
        header_read_timeout: Duration::from_secs(120),
        write_stall_timeout: Duration::from_secs(1),
        max_per_address: 1,
        ..fast()
    };
    // Several megabytes of exposition: more than the socket buffers hold.
    let template = fleet().hosts.remove(0);
    let hosts = (0..3_000)
        .map(|i| HostGauges { host_id: format!("h-{i}"), name: format!("host-{i}"), ..template.clone() })
        .collect();
    let snapshot = FleetSnapshot { hosts, ..FleetSnapshot::default() };
    let server = start(Telemetry::new(), Arc::new(Fixed(snapshot)), limits).await;

    let source = [127, 0, 0, 3];
    let mut stalled = connect_from(source, server.addr).await;
    let head = format!("GET /metrics HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr);
    stalled.write_all(head.as_bytes()).await.expect("send the request");
    // While the stalled response holds the address's one slot, another connection is refused.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut second = connect_from(source, server.addr).await;
    assert!(closed_within(&mut second, Duration::from_secs(5)).await, "the address's slot was not taken");

    // Once the write has stalled for the limit, the slot is free again (generous bound).
    let mut served = false;
    for _ in 0..40 {
        let mut next = connect_from(source, server.addr).await;
        let head = format!("GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", server.addr);
        if next.write_all(head.as_bytes()).await.is_ok() {
            let mut reply = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(5), next.read_to_end(&mut reply)).await;
            if matches!(read, Ok(Ok(_))) && reply.starts_with(b"HTTP/1.1 200") {
                served = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(served, "the client that never reads kept its slot");
    drop(stalled);
    server.stop().await;
}

#[tokio::test]
async fn bind_is_off_without_an_address_and_names_the_setting_on_failure() {
    assert!(bind(&PrometheusConfig::default()).await.expect("off").is_none());

    let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = taken.local_addr().expect("addr");
    let config = PrometheusConfig { listen: Some(addr) };
    let err = bind(&config).await.expect_err("address in use");
    let message = err.to_string();
    assert!(message.contains(&addr.to_string()) && message.contains("[prometheus] listen"), "{message}");

    let config: PrometheusConfig = toml::from_str("listen = \"127.0.0.1:0\"").expect("toml");
    let listener = bind(&config).await.expect("bind").expect("on");
    assert!(listener.local_addr().expect("addr").port() != 0);
    assert!(toml::from_str::<PrometheusConfig>("port = 9").is_err(), "unknown keys are refused");
    let written = toml::to_string(&PrometheusConfig { listen: Some(addr) }).expect("serialize");
    assert_eq!(toml::from_str::<PrometheusConfig>(&written).expect("read back").listen, Some(addr));
    assert_eq!(toml::to_string(&PrometheusConfig::default()).expect("serialize off"), "");
}

#[tokio::test]
async fn rpc_layer_counts_calls_through_a_real_tonic_server() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    let telemetry = Telemetry::new();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(telemetry.rpc_layer())
            .add_service(health)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async move {
                    stop.cancelled().await;
                },
            ),
    );

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut client = HealthClient::new(channel);
    client.check(HealthCheckRequest { service: String::new() }).await.expect("overall health");
    client.check(HealthCheckRequest { service: String::new() }).await.expect("overall health");
    let err =
        client.check(HealthCheckRequest { service: "tailops.v1.Nope".into() }).await.expect_err("unknown");
    assert_eq!(err.code(), tonic::Code::NotFound);

    let mut body = String::new();
    telemetry.encode(&mut body).expect("encode");
    let scrape = parse(&body);
    let check = "/grpc.health.v1.Health/Check";
    assert_eq!(
        sample(&scrape, "tailops_rpc_requests_total", &[("method", check), ("code", "OK")]).value,
        Value::Counter(2.0)
    );
    assert_eq!(
        sample(&scrape, "tailops_rpc_requests_total", &[("method", check), ("code", "NotFound")]).value,
        Value::Counter(1.0)
    );
    let Value::Histogram(buckets) =
        &sample(&scrape, "tailops_rpc_duration_seconds", &[("method", check)]).value
    else {
        panic!("not a histogram");
    };
    assert_eq!(buckets.iter().find(|b| b.less_than == f64::INFINITY).map(|b| b.count), Some(3.0));

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server stops")
        .expect("join")
        .expect("serve");
}
