//! A tower layer that counts and times every gRPC call the server answers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use super::Telemetry;

/// Records `tailops_rpc_requests_total` and `tailops_rpc_duration_seconds` for each request.
///
/// The time measured runs from the call reaching this layer to the response headers. For unary
/// calls that is the whole handler. For streaming responses it ends when the stream starts, not
/// when it finishes, and the status counted is the one known then: `OK` unless the call failed
/// before streaming (a long-lived stream's final status travels in trailers, which this layer
/// does not wait for). A call whose client goes away before the headers is counted as `Canceled`.
///
/// Place it outermost (before authorization) so that refused calls are counted too.
#[derive(Debug, Clone)]
pub struct RpcMetricsLayer {
    telemetry: Telemetry,
}

impl RpcMetricsLayer {
    pub fn new(telemetry: Telemetry) -> Self {
        Self { telemetry }
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService { inner, telemetry: self.telemetry.clone() }
    }
}

/// The service [`RpcMetricsLayer`] wraps around the server's router.
#[derive(Debug, Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
    telemetry: Telemetry,
}

impl<S, B, ResBody> tower::Service<http::Request<B>> for RpcMetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = self.telemetry.method_label(request.uri().path());
        ResponseFuture {
            inner: self.inner.call(request),
            telemetry: Some(self.telemetry.clone()),
            method,
            start: Instant::now(),
        }
    }
}

pin_project_lite::pin_project! {
    /// Waits for the inner service's response and records it.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        // `None` once recorded, so that `drop` records only calls that never completed.
        telemetry: Option<Telemetry>,
        method: Arc<str>,
        start: Instant,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(telemetry) = this.telemetry.take() {
                telemetry.record_rpc(this.method.clone(), tonic::Code::Cancelled, this.start.elapsed());
            }
        }
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").field("method", &self.method).field("start", &self.start).finish()
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let code = match &result {
            Ok(response) => response_code(response),
            // tonic turns a service error into a status without a specific code.
            Err(_) => tonic::Code::Unknown,
        };
        let elapsed: Duration = this.start.elapsed();
        if let Some(telemetry) = this.telemetry.take() {
            telemetry.record_rpc(this.method.clone(), code, elapsed);
        }
        Poll::Ready(result)
    }
}

/// The gRPC status a response's headers carry. Errors of unary calls come as "trailers-only"
/// responses with `grpc-status` in the headers; a successful call's status is in the trailers,
/// so no `grpc-status` header on a 200 means the call (or stream) started fine.
fn response_code<B>(response: &http::Response<B>) -> tonic::Code {
    if let Some(value) = response.headers().get("grpc-status") {
        return tonic::Code::from_bytes(value.as_bytes());
    }
    // Without a gRPC status, map the HTTP status as gRPC's own clients do
    // (doc/http-grpc-status-mapping.md in grpc/grpc).
    match response.status().as_u16() {
        200 => tonic::Code::Ok,
        400 => tonic::Code::Internal,
        401 => tonic::Code::Unauthenticated,
        403 => tonic::Code::PermissionDenied,
        404 => tonic::Code::Unimplemented,
        429 | 502..=504 => tonic::Code::Unavailable,
        _ => tonic::Code::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::{Layer as _, Service as _, ServiceExt as _};

    use super::*;

    fn encoded(telemetry: &Telemetry) -> String {
        let mut out = String::new();
        telemetry.encode(&mut out).expect("encode");
        out
    }

    #[tokio::test]
    async fn status_comes_from_the_response_headers() {
        let telemetry = Telemetry::new();
        let inner = tower::service_fn(|request: http::Request<()>| async move {
            let mut response = http::Response::new(());
            if request.uri().path().ends_with("/GetJob") {
                response.headers_mut().insert("grpc-status", http::HeaderValue::from_static("5"));
            }
            Ok::<_, Infallible>(response)
        });
        let mut service = telemetry.rpc_layer().layer(inner);
        for path in ["/tailops.v1.Fleet/ListHosts", "/tailops.v1.Fleet/GetJob", "/nope/Nope"] {
            let request = http::Request::builder().uri(path).body(()).expect("request");
            service.ready().await.expect("ready").call(request).await.expect("call");
        }
        let out = encoded(&telemetry);
        for line in [
            r#"tailops_rpc_requests_total{method="/tailops.v1.Fleet/ListHosts",code="OK"} 1"#,
            r#"tailops_rpc_requests_total{method="/tailops.v1.Fleet/GetJob",code="NotFound"} 1"#,
            r#"tailops_rpc_requests_total{method="other",code="OK"} 1"#,
            r#"tailops_rpc_duration_seconds_count{method="/tailops.v1.Fleet/GetJob"} 1"#,
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
        }
    }

    #[tokio::test]
    async fn a_call_dropped_before_its_response_counts_as_canceled() {
        let telemetry = Telemetry::new();
        let inner = tower::service_fn(|_: http::Request<()>| {
            futures::future::pending::<Result<http::Response<()>, Infallible>>()
        });
        let mut service = telemetry.rpc_layer().layer(inner);
        let request = http::Request::builder().uri("/tailops.v1.Fleet/ListHosts").body(()).expect("request");
        let call = service.ready().await.expect("ready").call(request);
        let timed_out = tokio::time::timeout(Duration::from_millis(10), call).await;
        assert!(timed_out.is_err());
        let out = encoded(&telemetry);
        let line = r#"tailops_rpc_requests_total{method="/tailops.v1.Fleet/ListHosts",code="Canceled"} 1"#;
        assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
    }

    #[test]
    fn http_status_without_grpc_status_maps_like_grpc_clients_do() {
        let with = |status: u16| {
            let response = http::Response::builder().status(status).body(()).expect("response");
            response_code(&response)
        };
        assert_eq!(with(200), tonic::Code::Ok);
        assert_eq!(with(404), tonic::Code::Unimplemented);
        assert_eq!(with(503), tonic::Code::Unavailable);
        assert_eq!(with(500), tonic::Code::Unknown);
    }
}
