//! Network checks run from the host: interfaces, sockets, TCP reachability, DNS and ping.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use tailops_ops::Validated;
use tailops_proto::v1;

use super::output::{Cell, Table};
use super::tool;
use super::{OpError, OpsConfig};

pub async fn run(
    op: &Validated,
    config: &OpsConfig,
    timeout: Duration,
) -> Result<v1::OperationOutput, OpError> {
    match op.spec.name {
        "net.interfaces" => interfaces().await,
        "net.sockets" => sockets(op.text("state") == Some("all")).await,
        "net.port" => {
            let host = op.text("host").unwrap_or_default();
            let port = u16::try_from(op.int("port").unwrap_or(0)).unwrap_or(0);
            port_check(host, port, op.duration("timeout").unwrap_or(Duration::from_secs(5)).min(timeout))
                .await
        }
        "net.dns" => {
            dns(config, op.text("name").unwrap_or_default(), op.text("type").unwrap_or("A"), timeout).await
        }
        "net.ping" => {
            ping(config, op.text("host").unwrap_or_default(), op.int("count").unwrap_or(4), timeout).await
        }
        "net.http" => super::http::http(op, timeout).await,
        "net.tls" => super::http::tls(op, timeout).await,
        "net.traceroute" => super::traceroute::run(op, config, timeout).await,
        other => Err(OpError::NotAvailable(format!("{other} is not implemented by this agent"))),
    }
}

async fn interfaces() -> Result<v1::OperationOutput, OpError> {
    let facts = crate::facts::net::collect(Path::new("/")).await;
    let mut names: Vec<&str> = facts
        .keys()
        .filter_map(|k| k.strip_prefix("net."))
        .filter_map(|k| k.rsplit_once('.'))
        .map(|(n, _)| n)
        .collect();
    names.dedup();
    let mut table = Table::new(&["interface", "state", "mtu", "mac", "addresses"]);
    for name in &names {
        let fact = |field: &str| facts.get(&format!("net.{name}.{field}")).cloned();
        table.row([
            Cell::from(*name),
            Cell::from(fact("state")),
            Cell::from(fact("mtu").and_then(|m| m.parse::<i64>().ok())),
            Cell::from(fact("mac")),
            Cell::from(fact("addresses")),
        ]);
    }
    table.summary(format!("{} interface(s) besides lo", names.len()));
    Ok(table.finish())
}

/// A socket from `/proc/net/{tcp,tcp6,udp,udp6}`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Socket {
    proto: &'static str,
    local: SocketAddr,
    remote: SocketAddr,
    state: &'static str,
}

const TCP_STATES: &[&str] = &[
    "",
    "established",
    "syn_sent",
    "syn_recv",
    "fin_wait1",
    "fin_wait2",
    "time_wait",
    "close",
    "close_wait",
    "last_ack",
    "listen",
    "closing",
];

async fn sockets(all: bool) -> Result<v1::OperationOutput, OpError> {
    let mut found = Vec::new();
    for (file, proto) in [("tcp", "tcp"), ("tcp6", "tcp6"), ("udp", "udp"), ("udp6", "udp6")] {
        let Ok(text) = tokio::fs::read_to_string(format!("/proc/net/{file}")).await else { continue };
        found.extend(parse_proc_net(&text, proto));
    }
    found.retain(|s| all || s.state == "listen" || (s.proto.starts_with("udp") && s.remote.port() == 0));
    found.sort_by_key(|s| (s.proto, s.local.port(), s.local.ip()));
    let mut table = Table::new(&["proto", "local", "remote", "state"]);
    for s in &found {
        table.row([
            Cell::from(s.proto),
            Cell::from(s.local.to_string()),
            Cell::from(s.remote.to_string()),
            Cell::from(s.state),
        ]);
    }
    table.summary(format!("{} socket(s)", found.len()));
    Ok(table.finish())
}

/// Lines like `0: 0100007F:1F90 00000000:0000 0A ...`: addresses in the kernel's byte order.
fn parse_proc_net(text: &str, proto: &'static str) -> Vec<Socket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let _slot = f.next()?;
            let local = parse_endpoint(f.next()?)?;
            let remote = parse_endpoint(f.next()?)?;
            let code = usize::from_str_radix(f.next()?, 16).ok()?;
            let state = if proto.starts_with("tcp") {
                TCP_STATES.get(code).copied().unwrap_or("unknown")
            } else if code == 7 {
                "unconnected"
            } else {
                "connected"
            };
            Some(Socket { proto, local, remote, state })
        })
        .collect()
}

fn parse_endpoint(field: &str) -> Option<SocketAddr> {
    let (addr, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(u32::from_str_radix(addr, 16).ok()?.swap_bytes())),
        32 => {
            // Four 32-bit words, each in host (little-endian) order.
            let mut bytes = [0u8; 16];
            for (i, word) in bytes.chunks_mut(4).enumerate() {
                let w = u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16).ok()?.swap_bytes();
                word.copy_from_slice(&w.to_be_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

async fn port_check(host: &str, port: u16, timeout: Duration) -> Result<v1::OperationOutput, OpError> {
    // The address policy of net.http applies: no probing the metadata service or link-local.
    let addrs = super::http::resolve_checked(host, port, timeout).await?;
    let mut table = Table::new(&["address", "open", "millis", "error"]);
    let mut open = 0;
    for addr in &addrs {
        let started = Instant::now();
        let outcome = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await;
        #[allow(clippy::cast_precision_loss)]
        let millis = started.elapsed().as_secs_f64() * 1000.0;
        let (ok, error) = match outcome {
            Ok(Ok(_)) => (true, None),
            Ok(Err(e)) => (false, Some(e.to_string())),
            Err(_) => (false, Some(format!("no answer within {}", humantime::format_duration(timeout)))),
        };
        open += usize::from(ok);
        table.row([
            Cell::from(addr.to_string()),
            Cell::from(ok),
            Cell::from(ok.then_some(millis)),
            Cell::from(error),
        ]);
    }
    table.summary(format!(
        "{host}:{port} {} ({open} of {} address(es) accept)",
        if open > 0 { "open" } else { "closed" },
        addrs.len()
    ));
    Ok(table.finish())
}

async fn dns(
    config: &OpsConfig,
    name: &str,
    kind: &str,
    timeout: Duration,
) -> Result<v1::OperationOutput, OpError> {
    let mut table = Table::new(&["name", "type", "value"]);
    match kind {
        "A" | "AAAA" => {
            // The host's own resolver (getaddrinfo, on tokio's blocking pool): what its programs see.
            let addrs = tokio::time::timeout(timeout, tokio::net::lookup_host((name, 0)))
                .await
                .map_err(|_| OpError::Failed(format!("resolving {name} took too long")))?
                .map_err(|e| OpError::Failed(format!("cannot resolve {name}: {e}")))?;
            let mut ips: Vec<IpAddr> =
                addrs.map(|a| a.ip()).filter(|ip| ip.is_ipv4() == (kind == "A")).collect();
            ips.sort();
            ips.dedup();
            for ip in &ips {
                table.row([Cell::from(name), Cell::from(kind), Cell::from(ip.to_string())]);
            }
            table.step(&["getaddrinfo", name]);
        }
        _ => {
            let dig = tool::locate(&config.dig, "dig").await.map_err(|_| {
                OpError::NotAvailable(format!(
                    "{kind} lookups need dig (package dnsutils or bind-utils); A and AAAA work without it"
                ))
            })?;
            let args = ["+short", "+time=3", "+tries=1", "-t", kind, name];
            let ran = tool::run(&dig, &args, timeout).await?;
            if !ran.success() {
                return Err(OpError::Failed(format!("dig: {}", ran.complaint())));
            }
            for value in ran.stdout.lines().map(str::trim).filter(|l| !l.is_empty()) {
                table.row([Cell::from(name), Cell::from(kind), Cell::from(value)]);
            }
            table.step(&[&["dig"][..], &args[..]].concat());
        }
    }
    let n = table.len();
    table.summary(format!("{n} {kind} record(s) for {name}"));
    Ok(table.finish())
}

async fn ping(
    config: &OpsConfig,
    host: &str,
    count: i64,
    timeout: Duration,
) -> Result<v1::OperationOutput, OpError> {
    let ping = tool::locate(&config.ping, "ping").await?;
    // ping gets the checked address, not the name: a second lookup could answer differently.
    let address = checked_address(host, timeout).await?;
    let count = count.to_string();
    let args = ["-n", "-c", count.as_str(), "-W", "2", "--", address.as_str()];
    let ran = tool::run(&ping, &args, timeout).await?;
    let stats = parse_ping(&ran.stdout);
    if stats.is_none() && !ran.success() {
        return Err(OpError::Failed(format!("ping {host}: {}", ran.complaint())));
    }
    let stats = stats.unwrap_or_default();
    let mut table =
        Table::new(&["host", "sent", "received", "loss_percent", "rtt_min_ms", "rtt_avg_ms", "rtt_max_ms"]);
    table.row([
        Cell::from(host),
        Cell::from(stats.sent),
        Cell::from(stats.received),
        Cell::from(stats.loss_percent),
        Cell::from(stats.rtt.map(|r| r.0)),
        Cell::from(stats.rtt.map(|r| r.1)),
        Cell::from(stats.rtt.map(|r| r.2)),
    ]);
    table.step(&[&["ping"][..], &args[..]].concat());
    table.summary(format!("{host}: {} of {} replies", stats.received, stats.sent));
    Ok(table.finish())
}

/// The first address `host` resolves to, once the address policy allows all of them, as text
/// for a tool's argv.
pub(super) async fn checked_address(host: &str, timeout: Duration) -> Result<String, OpError> {
    let addrs = super::http::resolve_checked(host, 0, timeout).await?;
    addrs
        .first()
        .map(|a| a.ip().to_string())
        .ok_or_else(|| OpError::Failed(format!("{host} resolves to no address")))
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct PingStats {
    sent: u64,
    received: u64,
    loss_percent: f64,
    rtt: Option<(f64, f64, f64)>,
}

/// The summary lines of iputils and busybox ping.
fn parse_ping(text: &str) -> Option<PingStats> {
    let summary = text.lines().find(|l| l.contains("packets transmitted"))?;
    let number_before = |word: &str| {
        summary
            .split(',')
            .find(|p| p.contains(word))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    };
    let sent: u64 = number_before("transmitted")?;
    let received: u64 = number_before("received")?;
    #[allow(clippy::cast_precision_loss)]
    let loss_percent = if sent == 0 { 0.0 } else { (sent - received.min(sent)) as f64 * 100.0 / sent as f64 };
    let rtt = text.lines().find(|l| l.contains("min/avg/max")).and_then(|l| {
        let values = l.split('=').nth(1)?.trim();
        let mut parts = values.split_whitespace().next()?.split('/').map(|v| v.parse::<f64>().ok());
        Some((parts.next()??, parts.next()??, parts.next()??))
    });
    Some(PingStats { sent, received, loss_percent, rtt })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_lines_decode_to_addresses() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0 100 0 0 10 0\n";
        let sockets = parse_proc_net(tcp, "tcp");
        assert_eq!(sockets[0].local, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(sockets[0].state, "listen");
        let tcp6 = "header\n   0: 00000000000000000000000001000000:0016 00000000000000000000000000000000:0000 0A 0 0 0 0 0 0\n";
        assert_eq!(parse_proc_net(tcp6, "tcp6")[0].local, "[::1]:22".parse().expect("addr"));
    }

    #[test]
    fn ping_summaries_parse() {
        let iputils = "PING 127.0.0.1 (127.0.0.1) 56(84) bytes of data.\n\n--- 127.0.0.1 ping statistics ---\n4 packets transmitted, 4 received, 0% packet loss, time 3060ms\nrtt min/avg/max/mdev = 0.031/0.045/0.061/0.011 ms\n";
        let s = parse_ping(iputils).expect("stats");
        assert_eq!((s.sent, s.received), (4, 4));
        assert_eq!(s.rtt, Some((0.031, 0.045, 0.061)));
        let lost = "--- 10.9.9.9 ping statistics ---\n2 packets transmitted, 0 received, 100% packet loss, time 1001ms\n";
        let s = parse_ping(lost).expect("stats");
        assert_eq!((s.received, s.loss_percent, s.rtt), (0, 100.0, None));
    }

    #[tokio::test]
    async fn a_loopback_listener_is_open_and_a_closed_port_is_not() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let open = port_check("127.0.0.1", port, Duration::from_secs(2)).await.expect("check");
        assert!(open.summary.contains("open"), "{}", open.summary);
        let listening = sockets(false).await.expect("sockets");
        assert!(listening.records.iter().any(|r| {
            r.fields
                .get("local")
                .is_some_and(|v| v.value == Some(v1::scalar::Value::Text(format!("127.0.0.1:{port}"))))
        }));
        drop(listener);
        let closed = port_check("127.0.0.1", port, Duration::from_secs(2)).await.expect("check");
        assert!(closed.summary.contains("closed"), "{}", closed.summary);
    }

    #[tokio::test]
    async fn localhost_resolves() {
        let out = dns(&OpsConfig::default(), "localhost", "A", Duration::from_secs(5)).await.expect("dns");
        assert!(
            out.records
                .iter()
                .any(|r| r.fields["value"].value == Some(v1::scalar::Value::Text("127.0.0.1".into()))),
            "{out:?}"
        );
    }
}
