//! Checks on every request before it is routed: a client's `x-request-id`
//! is kept only when it is a short token of safe characters (anything else
//! is replaced by a fresh id, so that a client cannot forge log lines), and
//! the request body must arrive whole within `http.body_timeout_ms`.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// The request id header (in and out).
pub const REQUEST_ID: &str = "x-request-id";

/// Longest client-supplied request id kept, in bytes.
pub const MAX_REQUEST_ID_BYTES: usize = 64;

/// Whether a client's request id may be logged and echoed as it is: 1 to
/// [`MAX_REQUEST_ID_BYTES`] of `A-Z a-z 0-9 . _ - :`.
pub fn is_safe_request_id(value: &[u8]) -> bool {
    !value.is_empty()
        && value.len() <= MAX_REQUEST_ID_BYTES
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
}

/// Drops an unsafe or repeated `x-request-id` so that the request id layer gives the
/// request a fresh UUID instead.
pub async fn sanitize_request_id(mut request: Request, next: Next) -> Response {
    let mut ids = request.headers().get_all(REQUEST_ID).iter();
    let keep = match (ids.next(), ids.next()) {
        (None, _) => true,
        (Some(id), None) => is_safe_request_id(id.as_bytes()),
        (Some(_), Some(_)) => false,
    };
    if !keep {
        request.headers_mut().remove(REQUEST_ID);
    }
    next.run(request).await
}

/// The body limits: the deadline for the whole body and the largest size.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// `http.body_timeout_ms`.
    pub timeout: Duration,
    /// `http.max_body_bytes`.
    pub max_bytes: usize,
}

/// Reads the request body whole within [`BodyLimits::timeout`] (counted
/// from the end of the head), then routes the request with the buffered
/// body. A body still incomplete at the deadline gets 408
/// `request_timeout`; one over `max_bytes` gets 413 `payload_too_large`; a
/// body the client broke off gets 400 `invalid_request`. Requests without a
/// body pass through at once.
pub async fn read_body_in_time(State(limits): State<BodyLimits>, request: Request, next: Next) -> Response {
    use hyper::body::Body as _;
    let (parts, body) = request.into_parts();
    if body.is_end_stream() {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let read = axum::body::to_bytes(body, limits.max_bytes);
    let bytes = match tokio::time::timeout(limits.timeout, read).await {
        Err(_) => return timed_out(limits.timeout),
        Ok(Err(e)) => {
            return if is_length_limit(&e) {
                ApiError::payload_too_large().into_response()
            } else {
                ApiError::invalid_request(format!("the request body could not be read: {e}")).into_response()
            };
        }
        Ok(Ok(bytes)) => bytes,
    };
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

fn timed_out(timeout: Duration) -> Response {
    let mut response = ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        format!(
            "the request body did not arrive within {} ms (http.body_timeout_ms)",
            timeout.as_millis()
        ),
    )
    .into_response();
    response
        .headers_mut()
        .insert(axum::http::header::CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::is_safe_request_id;

    #[test]
    fn only_short_tokens_of_safe_characters_are_kept() {
        for ok in ["abc-123", "a", "0f8e:trace.span_1", &"x".repeat(64)] {
            assert!(is_safe_request_id(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            &"x".repeat(65),
            "a b",
            "id\r\nFORGED log line",
            "id\"quoted\"",
            "ünï",
            "a/b",
            "{json}",
        ] {
            assert!(!is_safe_request_id(bad.as_bytes()), "{bad:?}");
        }
    }
}
