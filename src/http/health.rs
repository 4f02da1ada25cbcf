//! Liveness, readiness and the tool list.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;

/// `GET /healthz`: 200 `{"status":"ok"}` while the process serves HTTP.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: 200 `{"status":"ready"}` when the database answers,
/// else 503 `not_ready`.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state.chat.store().ping().await.map_err(|e| {
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
pub async fn tools(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"tools": state.chat.tools(), "sources": state.chat.tool_sources()}))
}
