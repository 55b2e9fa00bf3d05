//! The fleet as gauges: what a scrape asks the controller for, and how it is written out.
//!
//! Per-host gauges are not kept in long-lived metric families: hosts come and go, and a family
//! would keep reporting a removed host until someone deleted its series. Instead each scrape takes
//! a fresh [`FleetSnapshot`] and a [`Collector`] writes it through prometheus-client's own text
//! encoder, which keeps the escaping and number formatting identical to the controller's other
//! metrics and writes every family in one piece, in host order, without building per-series maps.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use futures::future::BoxFuture;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tailops_proto::v1::MetricSample;

/// One host as the exposition shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostGauges {
    pub host_id: String,
    pub name: String,
    /// Operator-set labels; each becomes a `label_<key>` label on every series of the host.
    pub labels: BTreeMap<String, String>,
    pub online: bool,
    /// Unix milliseconds; 0 (never seen) leaves out `tailops_host_last_seen_timestamp_seconds`.
    pub last_seen_ms: i64,
    /// The newest sample the host pushed, if any.
    pub latest: Option<MetricSample>,
}

/// What one scrape reports about the fleet.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetSnapshot {
    pub hosts: Vec<HostGauges>,
    pub connected_agents: u64,
    /// Job counts by state name (`running`, `succeeded`, ...).
    pub jobs_by_state: Vec<(String, u64)>,
    /// Health score (0-100) by host id; ids not in `hosts` are left out, having no host labels.
    pub health_scores: Vec<(String, u32)>,
}

/// Where a scrape gets the fleet from. Called once per scrape; a scrape waits for it only a
/// bounded time, so an implementation may take a database read but should not hold locks
/// across it that the agent link needs.
pub trait SnapshotSource: Send + Sync + 'static {
    fn snapshot(&self) -> BoxFuture<'_, FleetSnapshot>;
}

/// Appends the fleet families in the Prometheus text format.
pub(crate) fn encode(out: &mut String, snapshot: FleetSnapshot) -> fmt::Result {
    // A registry per scrape is the only public way to get prometheus-client's encoder; it holds
    // nothing but this one collector.
    let mut registry = Registry::default();
    registry.register_collector(Box::new(FleetCollector { snapshot }));
    prometheus_text::encode(out, &registry)
}

#[derive(Debug)]
struct FleetCollector {
    snapshot: FleetSnapshot,
}

/// A host with its label set built once for all of its series.
struct Host<'a> {
    gauges: &'a HostGauges,
    labels: Vec<(String, String)>,
    health: Option<u32>,
}

impl Collector for FleetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let snapshot = &self.snapshot;
        let enc = &mut encoder;

        let mut family = enc.encode_descriptor(
            "tailops_agents_connected",
            "Agents with an open link to this controller",
            None,
            MetricType::Gauge,
        )?;
        family.encode_gauge(&snapshot.connected_agents)?;

        if !snapshot.jobs_by_state.is_empty() {
            let mut family =
                enc.encode_descriptor("tailops_jobs", "Jobs by state", None, MetricType::Gauge)?;
            for (state, count) in &snapshot.jobs_by_state {
                family.encode_family(&[("state", state.as_str())])?.encode_gauge(count)?;
            }
        }

        let health: HashMap<&str, u32> =
            snapshot.health_scores.iter().map(|(id, score)| (id.as_str(), *score)).collect();
        // A host listed twice would produce duplicate series, which makes Prometheus reject them.
        let mut seen = HashSet::new();
        let hosts: Vec<Host<'_>> = snapshot
            .hosts
            .iter()
            .filter(|h| seen.insert(h.host_id.as_str()))
            .map(|h| Host {
                gauges: h,
                labels: host_labels(h),
                health: health.get(h.host_id.as_str()).copied(),
            })
            .collect();

        let gauge =
            |enc: &mut DescriptorEncoder<'_>, name, help, value: &dyn Fn(&Host<'_>) -> Option<Value>| {
                host_gauge(enc, &hosts, name, help, value)
            };
        gauge(enc, "tailops_host_up", "1 if the host's agent is connected, else 0", &|h| {
            Some(Value::U(u64::from(h.gauges.online)))
        })?;
        gauge(
            enc,
            "tailops_host_last_seen_timestamp_seconds",
            "When the host's agent was last heard from",
            &|h| (h.gauges.last_seen_ms > 0).then(|| Value::F(seconds(h.gauges.last_seen_ms))),
        )?;
        gauge(enc, "tailops_host_health_score", "Health score, 100 is perfect", &|h| {
            h.health.map(|s| Value::U(s.into()))
        })?;

        let sample = |f: fn(&MetricSample) -> Value| move |h: &Host<'_>| h.gauges.latest.as_ref().map(f);
        gauge(
            enc,
            "tailops_host_sample_timestamp_seconds",
            "When the latest sample was taken",
            &sample(|s| Value::F(seconds(s.at_ms))),
        )?;
        gauge(
            enc,
            "tailops_host_cpu_percent",
            "Whole-host CPU use, 0-100",
            &sample(|s| Value::F(s.cpu_percent)),
        )?;
        gauge(enc, "tailops_host_load1", "1-minute load average", &sample(|s| Value::F(s.load1)))?;
        gauge(enc, "tailops_host_load5", "5-minute load average", &sample(|s| Value::F(s.load5)))?;
        gauge(enc, "tailops_host_load15", "15-minute load average", &sample(|s| Value::F(s.load15)))?;
        gauge(
            enc,
            "tailops_host_memory_total_bytes",
            "Physical memory",
            &sample(|s| Value::U(s.mem_total_bytes)),
        )?;
        gauge(
            enc,
            "tailops_host_memory_used_bytes",
            "Memory in use: total minus available",
            &sample(|s| Value::U(s.mem_used_bytes)),
        )?;
        gauge(
            enc,
            "tailops_host_memory_available_bytes",
            "Memory available without swapping",
            &sample(|s| Value::U(s.mem_available_bytes)),
        )?;
        gauge(enc, "tailops_host_swap_total_bytes", "Swap space", &sample(|s| Value::U(s.swap_total_bytes)))?;
        gauge(enc, "tailops_host_swap_used_bytes", "Swap in use", &sample(|s| Value::U(s.swap_used_bytes)))?;
        gauge(
            enc,
            "tailops_host_uptime_seconds",
            "Time since the host booted",
            &sample(|s| Value::U(s.uptime_secs)),
        )?;
        gauge(
            enc,
            "tailops_host_processes",
            "Running processes",
            &sample(|s| Value::U(s.process_count.into())),
        )?;

        per_item(
            enc,
            &hosts,
            "tailops_host_disk_used_bytes",
            "Bytes used per mounted filesystem",
            "mount",
            |s| s.disks.iter().map(|d| (d.mount.as_str(), Value::U(d.used_bytes))).collect(),
        )?;
        per_item(
            enc,
            &hosts,
            "tailops_host_disk_total_bytes",
            "Size of each mounted filesystem",
            "mount",
            |s| s.disks.iter().map(|d| (d.mount.as_str(), Value::U(d.total_bytes))).collect(),
        )?;
        per_item(
            enc,
            &hosts,
            "tailops_host_network_receive_bytes_per_second",
            "Receive rate per network interface",
            "interface",
            |s| s.interfaces.iter().map(|i| (i.name.as_str(), Value::F(i.rx_bytes_per_sec))).collect(),
        )?;
        per_item(
            enc,
            &hosts,
            "tailops_host_network_transmit_bytes_per_second",
            "Transmit rate per network interface",
            "interface",
            |s| s.interfaces.iter().map(|i| (i.name.as_str(), Value::F(i.tx_bytes_per_sec))).collect(),
        )?;
        Ok(())
    }
}

/// Byte counts stay integers in the output; rates and percentages are floats.
#[derive(Debug, Clone, Copy)]
enum Value {
    U(u64),
    F(f64),
}

impl EncodeGaugeValue for Value {
    fn encode(&self, encoder: &mut prometheus_client::encoding::GaugeValueEncoder<'_>) -> fmt::Result {
        match self {
            Value::U(v) => v.encode(encoder),
            Value::F(v) => v.encode(encoder),
        }
    }
}

fn seconds(ms: i64) -> f64 {
    // i64 milliseconds fit f64 exactly up to 2^53, about 285,000 years from 1970.
    ms as f64 / 1000.0
}

/// One per-host family; written only if some host has a value, as other Prometheus clients do.
fn host_gauge(
    enc: &mut DescriptorEncoder<'_>,
    hosts: &[Host<'_>],
    name: &str,
    help: &str,
    value: &dyn Fn(&Host<'_>) -> Option<Value>,
) -> fmt::Result {
    let values: Vec<(&Host<'_>, Value)> = hosts.iter().filter_map(|h| value(h).map(|v| (h, v))).collect();
    if values.is_empty() {
        return Ok(());
    }
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (host, v) in values {
        family.encode_family(&host.labels)?.encode_gauge(&v)?;
    }
    Ok(())
}

/// One per-host family with one series per disk or interface of the latest sample.
fn per_item(
    enc: &mut DescriptorEncoder<'_>,
    hosts: &[Host<'_>],
    name: &str,
    help: &str,
    item_label: &'static str,
    items: impl for<'s> Fn(&'s MetricSample) -> Vec<(&'s str, Value)>,
) -> fmt::Result {
    let values: Vec<(&Host<'_>, Vec<(&str, Value)>)> = hosts
        .iter()
        .filter_map(|h| h.gauges.latest.as_ref().map(|s| (h, items(s))))
        .filter(|(_, items)| !items.is_empty())
        .collect();
    if values.is_empty() {
        return Ok(());
    }
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (host, items) in values {
        // Bind mounts can list one mount point twice; a repeated series would be rejected.
        let mut seen = HashSet::new();
        for (item, v) in items.into_iter().filter(|(item, _)| seen.insert(*item)) {
            let labels = (host.labels.as_slice(), [(item_label, item)]);
            family.encode_family(&labels)?.encode_gauge(&v)?;
        }
    }
    Ok(())
}

/// `host`, `host_id`, then the host's own labels as `label_<key>` in key order.
fn host_labels(host: &HostGauges) -> Vec<(String, String)> {
    let mut labels = Vec::with_capacity(2 + host.labels.len());
    labels.push(("host".to_owned(), host.name.clone()));
    labels.push(("host_id".to_owned(), host.host_id.clone()));
    let mut names = HashSet::new();
    for (key, value) in &host.labels {
        let name = host_label_name(key);
        // `rack-id` and `rack_id` both become `label_rack_id`; a label may appear only once in a
        // series, so the first in key order wins.
        if names.insert(name.clone()) {
            labels.push((name, value.clone()));
        }
    }
    labels
}

/// `label_` plus the key with every character outside `[a-zA-Z0-9_]` replaced by `_`. The prefix
/// makes any key a valid label name (`[a-zA-Z_][a-zA-Z0-9_]*`), never a reserved `__` one, and
/// keeps host labels from colliding with `host`, `mount` and the like.
fn host_label_name(key: &str) -> String {
    let mut name = String::with_capacity("label_".len() + key.len());
    name.push_str("label_");
    name.extend(key.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }));
    name
}

// Compile-time check that the label sets used above are encodable, so a prometheus-client
// upgrade that changes the trait impls fails here rather than in a distant generic error.
const _: fn() = || {
    fn encodable<T: EncodeLabelSet>() {}
    encodable::<Vec<(String, String)>>();
    encodable::<(&[(String, String)], [(&str, &str); 1])>();
};

#[cfg(test)]
mod tests {
    use super::*;

    fn is_valid_label_name(name: &str) -> bool {
        let mut chars = name.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    }

    #[test]
    fn host_label_names_are_sanitized() {
        for (key, expected) in [
            ("env", "label_env"),
            ("rack-id", "label_rack_id"),
            ("9lives", "label_9lives"),
            ("a.b/c d", "label_a_b_c_d"),
            ("zoné", "label_zon_"),
            ("", "label_"),
            ("__name__", "label___name__"),
        ] {
            let name = host_label_name(key);
            assert_eq!(name, expected, "{key:?}");
            assert!(is_valid_label_name(&name), "{name:?}");
        }
    }

    #[test]
    fn colliding_host_label_keys_keep_the_first() {
        let host = HostGauges {
            host_id: "h1".into(),
            name: "a".into(),
            labels: [("rack-id".to_owned(), "1".to_owned()), ("rack_id".to_owned(), "2".to_owned())].into(),
            ..HostGauges::default()
        };
        let labels = host_labels(&host);
        assert_eq!(labels.iter().filter(|(k, _)| k == "label_rack_id").count(), 1);
        assert!(labels.contains(&("label_rack_id".to_owned(), "1".to_owned())));
    }

    #[test]
    fn empty_fleet_still_reports_connected_agents() {
        let mut out = String::new();
        encode(&mut out, FleetSnapshot::default()).expect("encode");
        assert!(out.lines().any(|l| l == "tailops_agents_connected 0"), "{out}");
        assert!(!out.contains("tailops_host_"), "{out}");
    }
}
