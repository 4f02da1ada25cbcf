//! Liveness, readiness and the tool list.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::openapi::{HealthStatus, ToolList};

/// `GET /healthz`: 200 `{"status":"ok"}` while the process serves HTTP.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "health",
    summary = "Liveness",
    security(),
    responses((status = 200, description = "`{\"status\":\"ok\"}` while the process serves HTTP", body = HealthStatus))
)]
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: 200 `{"status":"ready"}` when the database answers,
/// else 503 `not_ready`.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "health",
    summary = "Readiness",
    security(),
    responses(
        (status = 200, description = "`{\"status\":\"ready\"}`: the database answers", body = HealthStatus),
        (status = 503, description = "`not_ready`: the database is not reachable", body = ErrorBody),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state.chat.ready().await.map_err(|e| {
        tracing::warn!(error = %e, "readiness check failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the database is not reachable",
        )
    })?;
    Ok(Json(json!({"status": "ready"})))
}

/// `GET /api/tools`: `{"tools": [{name, description, parameters, origin,
/// approval}], "sources": [{name, status, error, tools}]}`, where
/// `parameters` is the JSON Schema of the arguments and `sources` reports
/// each MCP server.
#[utoipa::path(
    get,
    path = "/api/tools",
    operation_id = "list_tools",
    tag = "tools",
    summary = "List the tools and tool sources",
    responses(
        (status = 200, description = "Every tool with its JSON Schema, and the state of each MCP server",
            body = ToolList),
        (status = 401, description = "`unauthorized`: no valid API key", body = ErrorBody),
        (status = 429, description = "`rate_limited`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 500, description = "`internal`", body = ErrorBody),
    )
)]
pub async fn tools(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"tools": state.chat.tools(), "sources": state.chat.tool_sources()}))
}
