//! The one place errors become HTTP responses.
//!
//! Every error body has the shape `{"error": {"code": "...", "message": "..."}}`
//! with a stable `code`. Internal errors are logged in full and answered with
//! a generic message.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::chat::ChatError;
use crate::domain::ErrorInfo;

/// An error answered as JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable machine-readable code, e.g. `invalid_json`, `not_found`.
    pub code: &'static str,
    /// What went wrong and what to fix.
    pub message: String,
}

/// The body of every error response (schema only: [`ApiError`] writes it).
#[derive(Debug, Clone, PartialEq, utoipa::ToSchema)]
#[schema(example = json!({"error": {"code": "validation_failed", "message": "temperature must be between 0 and 2, got 3"}}))]
pub struct ErrorBody {
    pub error: ErrorInfo,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 `invalid_request`: well-formed JSON with wrong types or fields.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 422 `validation_failed`: a value out of range.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", message)
    }

    /// 413 `payload_too_large`: a body over `http.max_body_bytes`.
    pub fn payload_too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is larger than the limit (http.max_body_bytes)",
        )
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 500 `internal`, after logging the real cause.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

impl From<ChatError> for ApiError {
    fn from(e: ChatError) -> Self {
        match e {
            ChatError::Invalid(m) => Self::validation(m),
            ChatError::ConversationNotFound(_) | ChatError::MessageNotFound(_) | ChatError::CursorNotFound { .. } => {
                Self::not_found(e.to_string())
            }
            ChatError::ConversationTooLong { .. } => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "conversation_too_long", e.to_string())
            }
            ChatError::NoPendingApproval(_) => Self::new(StatusCode::CONFLICT, "not_pending", e.to_string()),
            ChatError::AlreadyEnded { .. } => Self::new(StatusCode::CONFLICT, "reply_finished", e.to_string()),
            ChatError::ShuttingDown => Self::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", e.to_string()),
            ChatError::Busy { .. } => Self::new(StatusCode::CONFLICT, "conversation_busy", e.to_string()),
            ChatError::Store(inner) => Self::internal(&inner),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonSyntaxError(e) => Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body is not valid JSON: {}", e.body_text()),
            ),
            JsonRejection::JsonDataError(e) => Self::invalid_request(e.body_text()),
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with the header Content-Type: application/json",
            ),
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::payload_too_large()
            }
            other => Self::invalid_request(other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::invalid_request(rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        match rejection {
            // The only path parameters are ids, e.g. `%FF` (not UTF-8).
            PathRejection::FailedToDeserializePathParams(e) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_id", e.body_text())
            }
            other => Self::internal(&other.body_text()),
        }
    }
}

/// Parses a UUID path segment; 400 `invalid_id` names the segment.
pub fn parse_uuid(what: &str, raw: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(raw).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            format!("{what} {raw:?} is not a UUID"),
        )
    })
}
