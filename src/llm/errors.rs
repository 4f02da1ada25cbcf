//! What an upstream's failure says, as an [`LlmError`]: a non-2xx answer
//! classified by its status with the message from its body, and errors
//! described with their sources.

use futures::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde_json::Value;
use tokio::time::{Instant, timeout_at};

use super::LlmError;
use super::transport::Answer;

/// Most bytes of an HTTP error body read to build an error message.
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// Most characters of an upstream error message passed on to the client.
const ERROR_MESSAGE_CHARS: usize = 500;

/// Classifies a non-2xx response: 429 rate limited, 5xx unavailable, other
/// statuses upstream errors; the message comes from a JSON `error.message`,
/// `error` or `message` field, or from the text body.
/// The body is read until `deadline`; a slower body is cut there.
pub(super) async fn error_from_response(response: reqwest::Response, deadline: Instant) -> LlmError {
    error_from_answer(Answer::from_reqwest(response, None), deadline).await
}

/// [`error_from_response`] for an [`Answer`] of either transport.
pub(super) async fn error_from_answer(answer: Answer, deadline: Instant) -> LlmError {
    let status = answer.status;
    let retry_after_ms = retry_after_ms(&answer.headers);
    let mut body = Vec::new();
    let mut stream = answer.body;
    while let Ok(Some(Ok(chunk))) = timeout_at(deadline, stream.next()).await {
        body.extend_from_slice(&chunk);
        if body.len() >= ERROR_BODY_LIMIT {
            break;
        }
    }
    let text = String::from_utf8_lossy(&body);
    let detail = error_message(&text);
    let message = if detail.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {detail}")
    };
    if status == StatusCode::TOO_MANY_REQUESTS {
        LlmError::RateLimited {
            message,
            retry_after_ms,
        }
    } else if status.is_server_error() {
        LlmError::Unavailable(message)
    } else {
        LlmError::Upstream(message)
    }
}

/// `Retry-After` in ms, from its delay-seconds form.
fn retry_after_ms(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let secs: f64 = value.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then_some((secs * 1000.0) as u64)
}

/// The human-readable part of an error body (JSON or text), at most 500
/// characters.
pub(super) fn error_message(body: &str) -> String {
    match serde_json::from_str::<Value>(body) {
        Ok(v) => json_error_message(&v),
        Err(_) => truncate(body.trim(), ERROR_MESSAGE_CHARS),
    }
}

/// The message of an OpenAI-style error value: `{"error":{"message"}}`,
/// `{"message"}`, `{"error":"..."}` or the JSON itself; at most 500
/// characters.
pub(super) fn json_error_message(v: &Value) -> String {
    let inner = v.get("error").unwrap_or(v);
    let text = inner
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| inner.as_str().map(str::to_string))
        .unwrap_or_else(|| inner.to_string());
    truncate(&text, ERROR_MESSAGE_CHARS)
}

/// An error and its sources, `: `-separated ("client error (Connect):
/// tcp connect error: Connection refused (os error 111)").
pub(super) fn describe_error(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// At most `max` characters of `s`, cut on a character boundary (then
/// `…` is added).
pub(super) fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_from_common_shapes() {
        assert_eq!(
            error_message(r#"{"error":{"message":"bad model","type":"x"}}"#),
            "bad model"
        );
        assert_eq!(error_message(r#"{"error":"overloaded"}"#), "overloaded");
        assert_eq!(error_message(r#"{"message":"nope"}"#), "nope");
        assert_eq!(error_message("  Bad Gateway \n"), "Bad Gateway");
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "2".parse().expect("header"));
        assert_eq!(retry_after_ms(&h), Some(2000));
    }
}
