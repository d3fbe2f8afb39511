//! What operators see of a running server: `/metrics` (Prometheus text), `/readyz`, and the
//! per-request accounting of both listeners.
//!
//! The parts record through the `metrics` facade (`metrics::counter!` …), which costs next to
//! nothing when no recorder is installed (the command-line tools, the parts' own tests);
//! `sluice serve` installs the Prometheus recorder here and serves its rendering. Every name
//! is `sluice_<name>_<unit>`; docs/METRICS.md lists them with their labels, and
//! docs/grafana-dashboard.json charts them.
//!
//! Label values come from fixed sets or from things an operator created (streams, mappings),
//! never from raw request input: a route is the router's matched pattern (`/uploads/{id}`,
//! not the id), an edge operation is one the edge knows (`compat::OperationLabel`), an S3
//! request is labelled by its method. So no client can make the registry grow.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::json;

/// Latency buckets (seconds) of every `*_seconds` histogram: 0.5 ms to 30 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Buckets of the group-commit sizes (`*_batch_size`).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
/// How often histograms are folded into their buckets, which bounds the memory their
/// samples take between two scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);
/// How long one engine check of `/readyz` may take before the engine counts as down.
const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Installs the process's metrics recorder (once, at `sluice serve`'s start) and keeps its
/// histograms folded in the background.
pub(crate) fn install() -> Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Suffix("_batch_size".into()), BATCH_BUCKETS)
        })
        .context("invalid histogram buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(UPKEEP_EVERY).await;
            upkeep.run_upkeep();
        }
    });
    metrics::gauge!("sluice_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}

/// What `/readyz` checks: each engine answers within [`READY_CHECK_TIMEOUT`].
#[derive(Clone)]
pub(crate) struct Readiness {
    pub(crate) meta: sluice_meta::Meta,
    pub(crate) blobs: Arc<dyn sluice_blobs::Blobs>,
}

#[derive(Clone)]
struct Ops {
    /// `None`: metrics are off (`metrics = false`).
    handle: Option<PrometheusHandle>,
    ready: Readiness,
}

/// `/metrics` and `/readyz`, merged into the API listener's router. (`/healthz`, alive, is the
/// gateway's own.) They are unauthenticated, as scrape and probe endpoints are: put the API
/// behind a proxy that does not forward them if its port is public (docs/DEPLOY.md).
pub(crate) fn routes(handle: Option<PrometheusHandle>, ready: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(render))
        .route("/readyz", get(readyz))
        .with_state(Ops { handle, ready })
}

async fn render(State(ops): State<Ops>) -> Response {
    let Some(handle) = &ops.handle else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({
                "message": "metrics are off on this server (metrics = false, SLUICE_METRICS=false)",
                "error": "not_found",
            })),
        )
            .into_response();
    };
    process_gauges();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        handle.render(),
    )
        .into_response()
}

/// Resident memory and open files, read from /proc at scrape time (Linux; elsewhere absent).
fn process_gauges() {
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm")
        && let Some(pages) = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<f64>().ok())
    {
        let page = rustix::param::page_size() as f64;
        metrics::gauge!("sluice_process_resident_memory_bytes").set(pages * page);
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        metrics::gauge!("sluice_process_open_fds").set(dir.count() as f64);
    }
}

/// 200 when every engine answers (the server started only after its recovery — outbox
/// delivery, sweeps — was done), else 503 with what failed: for a load balancer or an
/// orchestrator's readiness probe.
async fn readyz(State(ops): State<Ops>) -> Response {
    let meta = ops.ready.meta.clone();
    let meta_check = tokio::time::timeout(
        READY_CHECK_TIMEOUT,
        meta.read(|tx| -> Result<i64, sluice_meta::MetaError> {
            tx.query_row("SELECT 1", sluice_meta::params![], |r| r.get(0))
        }),
    );
    let blobs_check = tokio::time::timeout(READY_CHECK_TIMEOUT, ops.ready.blobs.check());
    let (meta_result, blobs_result) = tokio::join!(meta_check, blobs_check);
    let verdict = |r: Result<Result<(), String>, tokio::time::error::Elapsed>| match r {
        Ok(Ok(())) => "ok".to_owned(),
        Ok(Err(e)) => e,
        Err(_) => format!("no answer within {READY_CHECK_TIMEOUT:?}"),
    };
    let meta_state = verdict(meta_result.map(|r| r.map(|_| ()).map_err(|e| e.to_string())));
    let blobs_state = verdict(blobs_result.map(|r| r.map_err(|e| e.to_string())));
    let ready = meta_state == "ok" && blobs_state == "ok";
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ready { "ready" } else { "unavailable" },
        "checks": { "meta": meta_state, "blobs": blobs_state },
    });
    let mut resp = (status, Json(body)).into_response();
    if !ready {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

/// Counts and times every request of a listener (`sluice_http_requests_total`,
/// `sluice_http_request_duration_seconds`, by listener, route and status). On the edge it
/// also writes the request log line (the API's gateway writes its own, with its request id).
/// With [`Tracked::closing_after_refused_expect`] it also closes the connection after an
/// error answer to a request that announced its body with `Expect: 100-continue`
/// (`sluice_compat::close_after_refused_expect` says why).
///
/// A tower layer written by hand rather than two `axum::middleware::from_fn`: those clone
/// and box the inner service and box a future per request, for every request of the
/// listener (together with the gateway's request-id layer, a few per cent of the server's
/// CPU at 15k uploads/s; docs/BENCHMARKS.md, session 26).
impl<S> tower::Layer<S> for Tracked {
    type Service = Track<S>;

    fn layer(&self, inner: S) -> Track<S> {
        Track {
            inner,
            tracked: self.clone(),
        }
    }
}

/// The service of the [`Tracked`] layer.
#[derive(Clone)]
pub(crate) struct Track<S> {
    inner: S,
    tracked: Tracked,
}

impl<S> tower::Service<Request> for Track<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = TrackFuture<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let expects_continue =
            self.tracked.close_after_refused_expect && sluice_compat::expects_continue(&req);
        let method = req.method().clone();
        let matched = req.extensions().get::<MatchedPath>().cloned();
        TrackFuture {
            inner: self.inner.call(req),
            tracked: self.tracked.clone(),
            started: Instant::now(),
            method,
            matched,
            expects_continue,
        }
    }
}

pin_project_lite::pin_project! {
    /// The answer of a [`Track`]ed request: accounted for when it is ready.
    pub(crate) struct TrackFuture<F> {
        #[pin]
        inner: F,
        tracked: Tracked,
        started: Instant,
        method: Method,
        matched: Option<MatchedPath>,
        expects_continue: bool,
    }
}

impl<F, E> std::future::Future for TrackFuture<F>
where
    F: std::future::Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let mut resp = std::task::ready!(this.inner.poll(cx))?;
        if *this.expects_continue {
            sluice_compat::close_if_refused(&mut resp);
        }
        this.tracked.finished(
            this.method,
            this.matched.as_ref().map(MatchedPath::as_str),
            &resp,
            this.started.elapsed(),
        );
        std::task::Poll::Ready(Ok(resp))
    }
}

/// One listener's request accounting for [`Track`]: the listener's label and the metric
/// handles of each route and status seen so far. Looking a handle up in the recorder's
/// registry builds and hashes its whole key (2 % of the server's CPU at 20k requests/s);
/// a route's handles are looked up there once and kept here. The map stays small: routes
/// and statuses come from fixed sets (module documentation).
#[derive(Clone)]
pub(crate) struct Tracked {
    listener: &'static str,
    close_after_refused_expect: bool,
    routes: Arc<std::sync::Mutex<std::collections::HashMap<String, RouteHandles>>>,
}

struct RouteHandles {
    duration: metrics::Histogram,
    by_status: Vec<(u16, metrics::Counter)>,
}

impl Tracked {
    /// The accounting of the listener labelled `listener` (`api`, `edge`). Handles are made
    /// at a route's first request, so the recorder must be installed before serving.
    pub(crate) fn new(listener: &'static str) -> Self {
        Tracked {
            listener,
            close_after_refused_expect: false,
            routes: Arc::default(),
        }
    }

    /// Also closes the connection after an error answer to a request that announced its
    /// body with `Expect: 100-continue` ([`Track`]).
    pub(crate) fn closing_after_refused_expect(mut self) -> Self {
        self.close_after_refused_expect = true;
        self
    }

    /// Accounts for one answered request (and logs it, on the edge).
    fn finished(&self, method: &Method, matched: Option<&str>, resp: &Response, elapsed: Duration) {
        let listener = self.listener;
        let status = resp.status();
        let label = route_label(listener, method, matched, resp);
        self.record(&label, status, elapsed);
        if listener == "edge" {
            let request_id = resp
                .headers()
                .get("x-amzn-requestid")
                .or_else(|| resp.headers().get("x-amz-request-id"))
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            let micros = elapsed.as_micros() as u64;
            let route = &*label;
            if status.is_server_error() {
                tracing::warn!(%request_id, %method, %route, status = status.as_u16(), micros, "request failed");
            } else {
                tracing::debug!(%request_id, %method, %route, status = status.as_u16(), micros, "request");
            }
        }
    }

    fn record(&self, route: &str, status: StatusCode, elapsed: Duration) {
        let Ok(mut routes) = self.routes.lock() else {
            return;
        };
        // One lookup per request once the route has been seen.
        if let Some(handles) = routes.get_mut(route) {
            handles.record(self.listener, route, status, elapsed);
            return;
        }
        let mut handles = RouteHandles {
            duration: metrics::histogram!(
                "sluice_http_request_duration_seconds",
                "listener" => self.listener,
                "route" => route.to_owned()
            ),
            by_status: Vec::new(),
        };
        handles.record(self.listener, route, status, elapsed);
        routes.insert(route.to_owned(), handles);
    }
}

impl RouteHandles {
    fn record(
        &mut self,
        listener: &'static str,
        route: &str,
        status: StatusCode,
        elapsed: Duration,
    ) {
        self.duration.record(elapsed.as_secs_f64());
        let code = status.as_u16();
        match self.by_status.iter().find(|(c, _)| *c == code) {
            Some((_, counter)) => counter.increment(1),
            None => {
                let counter = metrics::counter!(
                    "sluice_http_requests_total",
                    "listener" => listener,
                    "route" => route.to_owned(),
                    "status" => status.as_str().to_owned()
                );
                counter.increment(1);
                self.by_status.push((code, counter));
            }
        }
    }
}

/// The route label (module documentation: never raw request input).
fn route_label<'a>(
    listener: &str,
    method: &Method,
    matched: Option<&'a str>,
    resp: &Response,
) -> std::borrow::Cow<'a, str> {
    if let Some(op) = resp.extensions().get::<sluice_compat::OperationLabel>() {
        return op.0.into();
    }
    match matched {
        // The edge's `/` is also S3's ListBuckets (and S3 requests fall back past it).
        Some(path) if !(listener == "edge" && path == "/") => path.into(),
        _ if listener == "edge" => {
            let m = match *method {
                Method::GET => "GET",
                Method::PUT => "PUT",
                Method::POST => "POST",
                Method::DELETE => "DELETE",
                Method::HEAD => "HEAD",
                Method::OPTIONS => "OPTIONS",
                _ => "other",
            };
            format!("s3:{m}").into()
        }
        _ => "unmatched".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::route_label;
    use axum::http::Method;
    use axum::response::{IntoResponse, Response};

    fn plain() -> Response {
        "x".into_response()
    }

    #[test]
    fn labels_are_patterns_and_known_operations_never_raw_input() {
        assert_eq!(
            route_label("api", &Method::GET, Some("/uploads/{id}"), &plain()),
            "/uploads/{id}"
        );
        assert_eq!(
            route_label("api", &Method::GET, None, &plain()),
            "unmatched"
        );
        assert_eq!(
            route_label("edge", &Method::GET, Some("/"), &plain()),
            "s3:GET"
        );
        let odd = Method::from_bytes(b"MADEUP").expect("a valid token");
        assert_eq!(route_label("edge", &odd, None, &plain()), "s3:other");
        let mut labelled = plain();
        labelled
            .extensions_mut()
            .insert(sluice_compat::OperationLabel("kinesis:PutRecord"));
        assert_eq!(
            route_label("edge", &Method::POST, Some("/"), &labelled),
            "kinesis:PutRecord"
        );
    }
}
