//! Prometheus metrics: the recorder (installed once per process, with an
//! upkeep task), `GET /metrics`, and the per-request counter middleware.
//!
//! Metric names (all prefixed `chatd_`): `http_requests_total{method,route,
//! status}`, `replies_active`, `replies_total{outcome}`,
//! `time_to_first_token_seconds`, `reply_duration_seconds`,
//! `tokens_total{model,direction}`, `upstream_errors_total{kind}`,
//! `tool_calls_total{tool,outcome}`, `db_write_seconds`,
//! `store_queue_depth` (writes queued for the database and not yet
//! committed, read at each scrape) and `store_backpressure_waits_total`
//! (times a streaming reply waited for room in that queue).

use std::sync::OnceLock;
use std::time::Duration;

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::chat::ChatService;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Latency buckets in seconds, for every histogram.
const BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Installs the global recorder (once) and starts its upkeep task; returns
/// the handle that renders the metrics, or `None` if another recorder was
/// installed first.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new().set_buckets(BUCKETS).ok()?;
            match builder.install_recorder() {
                Ok(handle) => {
                    let upkeep = handle.clone();
                    tokio::spawn(async move {
                        loop {
                            tokio::time::sleep(Duration::from_secs(5)).await;
                            upkeep.run_upkeep();
                        }
                    });
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    None
                }
            }
        })
        .clone()
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "health",
    summary = "Prometheus metrics",
    description = "Served here unless `http.metrics_listen` puts it on its own address. Among the `chatd_*` metrics: \
        `chatd_store_queue_depth` (writes queued for the database, read at each scrape) and \
        `chatd_store_backpressure_waits_total` (waits of streaming replies for room in that queue).",
    security(),
    responses((status = 200, description = "Prometheus text exposition format", body = String,
        content_type = "text/plain; version=0.0.4"))
)]
pub async fn render(State(chat): State<Arc<ChatService>>) -> Response {
    // Read now: the writer's thread may be the one stalled.
    metrics::gauge!("chatd_store_queue_depth").set(chat.store_queue_depth() as f64);
    let body = HANDLE
        .get()
        .and_then(Option::as_ref)
        .map(PrometheusHandle::render)
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// Counts every request by method, matched route and status.
pub async fn count_requests(request: Request, next: Next) -> Response {
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let response = next.run(request).await;
    metrics::counter!("chatd_http_requests_total", "method" => method, "route" => route,
        "status" => response.status().as_u16().to_string())
    .increment(1);
    response
}
