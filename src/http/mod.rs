//! HTTP: the axum router, request and response types, SSE framing.
//!
//! Routes:
//! - `POST /api/chat` — start a reply, answered as `text/event-stream`
//! - `GET /api/chat/{message_id}/events` — resume a reply's stream
//! - `POST /api/chat/{message_id}/cancel` — stop a reply
//! - `POST /api/chat/{message_id}/approve` — let a tool call run, or decline it
//! - `GET|POST /api/conversations`, `GET|PATCH|DELETE /api/conversations/{id}`,
//!   `GET /api/conversations/{id}/messages` (a page, without steps unless
//!   asked), `GET /api/conversations/{id}/messages/{message_id}` (one, with
//!   its steps)
//! - `GET /api/tools`, `GET /api/models`
//! - `GET /healthz`, `GET /readyz`
//! - `GET /api/openapi.json` — the OpenAPI 3.1 document of all of these
//!
//! Unknown routes and methods get the same JSON error shape as everything else.

pub mod access;
mod accumulate;
mod chat;
mod conversations;
pub mod error;
mod extract;
pub mod guard;
mod health;
pub mod metrics;
mod models;
pub mod openapi;
pub mod serve;
mod sse;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware;
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use access::Access;

use crate::chat::{ChatService, ConversationService, Models};
use error::ApiError;

/// Shared state of every handler: the services, nothing of the store or the
/// providers.
#[derive(Clone)]
pub struct AppState {
    /// Replies: start, resume, cancel, approve; tools and config.
    pub chat: Arc<ChatService>,
    /// The conversation routes' work.
    pub conversations: Arc<ConversationService>,
    /// `GET /api/models`.
    pub models: Arc<Models>,
    /// API keys, rate limits and reply slots.
    pub access: Arc<Access>,
}

/// Builds the router with every route and the layers: request id
/// (`x-request-id` in and out), tracing, CORS, API keys and rate limits,
/// request metrics, panic catching and the body limit. `/metrics` is served
/// here unless `http.metrics_listen` puts it on its own address. Spawns
/// nothing: the access table's pruning is the app's background task.
pub fn router(state: AppState) -> Router {
    let config = state.chat.config();
    let max_body = config.http.max_body_bytes;
    let body_limits = guard::BodyLimits {
        timeout: std::time::Duration::from_millis(config.http.body_timeout_ms),
        max_bytes: max_body,
    };
    let separate_metrics = config.http.metrics_listen.is_some();
    let access = state.access.clone();
    let cors = cors_layer(&config.http.cors_origins);
    metrics::install();

    let mut router = Router::new()
        .route("/api/chat", post(chat::post_chat))
        .route("/api/chat/{message_id}/events", get(chat::resume))
        .route("/api/chat/{message_id}/cancel", post(chat::cancel))
        .route("/api/chat/{message_id}/approve", post(chat::approve))
        .route(
            "/api/conversations",
            get(conversations::list).post(conversations::create),
        )
        .route(
            "/api/conversations/{id}",
            get(conversations::get_one)
                .patch(conversations::patch)
                .delete(conversations::delete),
        )
        .route("/api/conversations/{id}/messages", get(conversations::messages))
        .route(
            "/api/conversations/{id}/messages/{message_id}",
            get(conversations::message),
        )
        .route("/api/tools", get(health::tools))
        .route("/api/models", get(models::list))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/api/openapi.json", get(openapi::openapi_json));
    if !separate_metrics {
        router = router.route("/metrics", get(metrics::render));
    }
    let request_id = HeaderName::from_static("x-request-id");
    router
        .route_layer(middleware::from_fn(metrics::count_requests))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(body_limits, guard::read_body_in_time))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn_with_state(access.clone(), access::middleware))
        .layer(cors)
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &axum::http::Request<_>| {
            let id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
            tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id = %id)
        }))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .layer(middleware::from_fn(guard::sanitize_request_id))
        .with_state(state)
}

/// The router for a separate metrics address (`http.metrics_listen`);
/// `chat` reports the gauges read at scrape time.
pub fn metrics_router(chat: Arc<ChatService>) -> Router {
    metrics::install();
    Router::new().route("/metrics", get(metrics::render)).with_state(chat)
}

impl axum::extract::FromRef<AppState> for Arc<ChatService> {
    fn from_ref(state: &AppState) -> Self {
        state.chat.clone()
    }
}

/// CORS for the configured origins: the frontend may POST `/api/chat` with
/// `Authorization` and read the stream and `x-request-id`.
fn cors_layer(origins: &[String]) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            HeaderName::from_static("last-event-id"),
        ])
        .expose_headers([HeaderName::from_static("x-request-id"), header::RETRY_AFTER])
        .max_age(std::time::Duration::from_secs(600));
    if origins.iter().any(|o| o == "*") {
        return layer.allow_origin(AllowOrigin::any());
    }
    let list: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok())
        .collect();
    layer.allow_origin(AllowOrigin::list(list))
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// A handler panic is a bug: log it and answer 500 `internal` in the usual
/// JSON shape instead of dropping the connection.
fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    axum::response::IntoResponse::into_response(ApiError::internal(&format!("handler panicked: {detail}")))
}
