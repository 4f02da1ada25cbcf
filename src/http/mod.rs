//! HTTP: the axum router, request and response types, SSE framing.
//!
//! Routes:
//! - `POST /api/chat` — start a reply, answered as `text/event-stream`
//! - `GET /api/chat/{message_id}/events` — resume a reply's stream
//! - `POST /api/chat/{message_id}/cancel` — stop a reply
//! - `POST /api/chat/{message_id}/approve` — let a tool call run, or decline it
//! - `GET|POST /api/conversations`, `GET|PATCH|DELETE /api/conversations/{id}`,
//!   `GET /api/conversations/{id}/messages`
//! - `GET /api/tools`, `GET /api/models`
//! - `GET /healthz`, `GET /readyz`
//!
//! Unknown routes and methods get the same JSON error shape as everything else.

mod chat;
mod conversations;
pub mod error;
mod extract;
mod health;
mod models;
mod sse;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, StatusCode, Uri};
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::chat::ChatService;
use error::ApiError;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub chat: Arc<ChatService>,
}

/// Builds the router with every route, the body limit and request tracing.
pub fn router(chat: Arc<ChatService>) -> Router {
    let max_body = chat.config().http.max_body_bytes;
    Router::new()
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
        .route("/api/tools", get(health::tools))
        .route("/api/models", get(models::list))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(TraceLayer::new_for_http())
        .with_state(AppState { chat })
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
