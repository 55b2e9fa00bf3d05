//! The long-lived registry: what the controller records about itself (RPCs, database writes).

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder, prometheus_text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use prost::Message as _;

use super::layer::RpcMetricsLayer;

/// Upper bounds in seconds for the latency histograms: 0.5 ms (a cached read) to 10 s (a slow
/// SQLite write under load), about 2.5× apart so each decade has three buckets.
const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The `method` label of every call that is not a method this controller implements.
pub const OTHER_METHOD: &str = "other";

/// The controller's metrics registry. Cheap to clone; every clone records into the same series.
#[derive(Debug, Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_duration: Family<MethodLabel, Histogram, fn() -> Histogram>,
    db_write_duration: Family<WriterLabel, Histogram, fn() -> Histogram>,
    db_rows_written: Family<WriterLabel, Counter>,
    /// Every gRPC path the controller serves. The `method` label takes only these values (or
    /// [`OTHER_METHOD`]), so a client probing random paths cannot grow the series without bound.
    known_methods: HashSet<Arc<str>>,
    other: Arc<str>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    pub fn new() -> Self {
        let rpc_requests = Family::<RpcLabels, Counter>::default();
        let rpc_duration = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let db_write_duration = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let db_rows_written = Family::<WriterLabel, Counter>::default();

        let mut registry = Registry::default();
        // Counters are registered without `_total`: the encoder appends it.
        registry.register(
            "tailops_rpc_requests",
            "gRPC calls answered, by method and status code",
            rpc_requests.clone(),
        );
        registry.register(
            "tailops_rpc_duration_seconds",
            "Time from receiving a gRPC call to sending its response headers (for streams: until the stream starts)",
            rpc_duration.clone(),
        );
        registry.register(
            "tailops_db_write_duration_seconds",
            "Time one database write batch took, by writer",
            db_write_duration.clone(),
        );
        registry.register(
            "tailops_db_rows_written",
            "Rows written to the database, by writer",
            db_rows_written.clone(),
        );

        Self {
            inner: Arc::new(Inner {
                registry,
                rpc_requests,
                rpc_duration,
                db_write_duration,
                db_rows_written,
                known_methods: known_methods(),
                other: Arc::from(OTHER_METHOD),
            }),
        }
    }

    /// Records one answered gRPC call. `method` is the request path
    /// (`/tailops.v1.Fleet/ListHosts`); paths the controller does not serve count as `other`.
    pub fn observe_rpc(&self, method: &str, code: tonic::Code, elapsed: Duration) {
        self.record_rpc(self.method_label(method), code, elapsed);
    }

    /// Records one database write batch of `rows` rows by `writer` (e.g. `audit`, `results`).
    /// `writer` is `'static` so that the label set stays a fixed, code-defined list.
    pub fn observe_db_write(&self, writer: &'static str, rows: usize, elapsed: Duration) {
        let labels = [("writer", writer)];
        self.inner.db_write_duration.get_or_create(&labels).observe(elapsed.as_secs_f64());
        self.inner.db_rows_written.get_or_create(&labels).inc_by(u64::try_from(rows).unwrap_or(u64::MAX));
    }

    /// A layer for `tonic::transport::Server::builder().layer(..)` that calls
    /// [`observe_rpc`](Self::observe_rpc) for every request.
    pub fn rpc_layer(&self) -> RpcMetricsLayer {
        RpcMetricsLayer::new(self.clone())
    }

    /// The bounded `method` label for a request path, shared rather than copied per call.
    pub(crate) fn method_label(&self, path: &str) -> Arc<str> {
        self.inner.known_methods.get(path).unwrap_or(&self.inner.other).clone()
    }

    pub(crate) fn record_rpc(&self, method: Arc<str>, code: tonic::Code, elapsed: Duration) {
        self.inner
            .rpc_duration
            .get_or_create(&MethodLabel { method: method.clone() })
            .observe(elapsed.as_secs_f64());
        self.inner.rpc_requests.get_or_create(&RpcLabels { method, code: code_name(code) }).inc();
    }

    /// Appends the controller's own metric families in the Prometheus text format.
    pub(crate) fn encode(&self, out: &mut String) -> fmt::Result {
        prometheus_text::encode(out, &self.inner.registry)
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Every method of the services the controller serves, read from their descriptor sets so that a
/// service added to the protos is counted by name without touching this module.
fn known_methods() -> HashSet<Arc<str>> {
    let sets: [(&str, &[u8]); 4] = [
        ("tailops", tailops_proto::FILE_DESCRIPTOR_SET),
        ("health", tonic_health::pb::FILE_DESCRIPTOR_SET),
        ("reflection v1", tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET),
        ("reflection v1alpha", tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET),
    ];
    let mut methods = HashSet::new();
    for (what, bytes) in sets {
        let set = match prost_types::FileDescriptorSet::decode(bytes) {
            Ok(set) => set,
            Err(e) => {
                // Built into the binary, so this cannot really happen; if it did, those calls
                // would be counted as `other`, which is still correct, only less detailed.
                tracing::error!(descriptors = what, error = %e, "cannot decode descriptor set; its methods count as `other`");
                continue;
            }
        };
        for file in set.file {
            let package = file.package().to_owned();
            for service in file.service {
                let service_name = if package.is_empty() {
                    service.name().to_owned()
                } else {
                    format!("{package}.{}", service.name())
                };
                for method in service.method {
                    methods.insert(Arc::from(format!("/{service_name}/{}", method.name())));
                }
            }
        }
    }
    methods
}

/// Status code names as gRPC's own libraries print them (`OK`, `NotFound`, ...), the values
/// dashboards built for other gRPC servers expect.
pub(crate) fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct RpcLabels {
    method: Arc<str>,
    code: &'static str,
}

impl EncodeLabelSet for RpcLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> fmt::Result {
        EncodeLabel::encode(&("method", &*self.method), encoder.encode_label())?;
        EncodeLabel::encode(&("code", self.code), encoder.encode_label())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct MethodLabel {
    method: Arc<str>,
}

impl EncodeLabelSet for MethodLabel {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> fmt::Result {
        EncodeLabel::encode(&("method", &*self.method), encoder.encode_label())
    }
}

type WriterLabel = [(&'static str, &'static str); 1];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_label_is_bounded_to_served_methods() {
        let telemetry = Telemetry::new();
        for served in [
            "/tailops.v1.Fleet/ListHosts",
            "/tailops.v1.Monitoring/GetHost",
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert_eq!(&*telemetry.method_label(served), served);
        }
        for unknown in
            ["/tailops.v1.Fleet/NoSuchMethod", "/tailops.v1.Fleet/ListHosts/", "/", "", "/x.Y/Z", "/metrics"]
        {
            assert_eq!(&*telemetry.method_label(unknown), OTHER_METHOD, "{unknown:?}");
        }
    }

    #[test]
    fn counters_and_histograms_encode_with_their_labels() {
        let telemetry = Telemetry::new();
        telemetry.observe_rpc("/tailops.v1.Fleet/ListHosts", tonic::Code::Ok, Duration::from_millis(3));
        telemetry.observe_rpc("/tailops.v1.Fleet/ListHosts", tonic::Code::Ok, Duration::from_millis(30));
        telemetry.observe_rpc("/tailops.v1.Fleet/ListHosts", tonic::Code::NotFound, Duration::from_millis(1));
        telemetry.observe_rpc("/evil/1", tonic::Code::Unimplemented, Duration::from_millis(1));
        telemetry.observe_db_write("audit", 7, Duration::from_millis(2));
        telemetry.observe_db_write("audit", 5, Duration::from_millis(20));
        let mut out = String::new();
        telemetry.encode(&mut out).expect("encode");
        for line in [
            "# TYPE tailops_rpc_requests_total counter",
            r#"tailops_rpc_requests_total{method="/tailops.v1.Fleet/ListHosts",code="OK"} 2"#,
            r#"tailops_rpc_requests_total{method="/tailops.v1.Fleet/ListHosts",code="NotFound"} 1"#,
            r#"tailops_rpc_requests_total{method="other",code="Unimplemented"} 1"#,
            "# TYPE tailops_rpc_duration_seconds histogram",
            r#"tailops_rpc_duration_seconds_bucket{method="/tailops.v1.Fleet/ListHosts",le="0.0025"} 1"#,
            r#"tailops_rpc_duration_seconds_bucket{method="/tailops.v1.Fleet/ListHosts",le="0.005"} 2"#,
            r#"tailops_rpc_duration_seconds_bucket{method="/tailops.v1.Fleet/ListHosts",le="+Inf"} 3"#,
            r#"tailops_rpc_duration_seconds_count{method="/tailops.v1.Fleet/ListHosts"} 3"#,
            r#"tailops_db_rows_written_total{writer="audit"} 12"#,
            r#"tailops_db_write_duration_seconds_count{writer="audit"} 2"#,
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
        }
    }
}
