//! HTTP client for an OpenAI-compatible `POST /chat/completions` stream.

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use futures::stream::BoxStream;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde_json::Value;
use tokio::time::timeout;

use super::lines::{LineError, cap_line_length};
use super::{ChatChunk, ChatRequest, LlmError, StreamItem};
use crate::config::LlmConfig;

/// Most bytes of an HTTP error body read to build an error message.
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// Most characters of an upstream error message passed on to the client.
const ERROR_MESSAGE_CHARS: usize = 500;

/// Streams chat completions from one OpenAI-compatible server.
#[derive(Debug, Clone)]
pub struct LlmClient {
    http: reqwest::Client,
    url: String,
    api_key: String,
    idle_timeout: Duration,
    max_line_bytes: usize,
}

impl LlmClient {
    /// Builds a client for `config.base_url`. Fails only if the TLS stack
    /// cannot be set up.
    pub fn new(config: &LlmConfig) -> Result<Self, LlmError> {
        // reqwest is built without a bundled crypto provider; use ring. An
        // error means a provider is already installed, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| LlmError::Unavailable(format!("cannot build HTTP client: {e}")))?;
        Ok(Self {
            http,
            url: format!("{}/chat/completions", config.base_url.trim_end_matches('/')),
            api_key: config.api_key.clone(),
            idle_timeout: Duration::from_millis(config.idle_timeout_ms),
            max_line_bytes: config.max_line_bytes,
        })
    }

    /// Sends `request` (which should have `stream: true`) and returns the
    /// stream of parsed items. The stream ends after `[DONE]`, at the end of
    /// the body, or after its first error; it yields
    /// [`LlmError::Timeout`] when no item arrives within the idle timeout.
    /// Data lines that are not JSON are logged and skipped.
    pub async fn stream_chat(
        &self,
        request: &ChatRequest,
    ) -> Result<BoxStream<'static, Result<StreamItem, LlmError>>, LlmError> {
        let idle = self.idle_timeout;
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        let mut builder = self
            .http
            .post(&self.url)
            .header("accept", "text/event-stream")
            .json(request);
        if !self.api_key.is_empty() {
            builder = builder.bearer_auth(&self.api_key);
        }
        let response = timeout(idle, builder.send())
            .await
            .map_err(|_| LlmError::Timeout(idle_ms))?
            .map_err(|e| LlmError::Unavailable(describe_reqwest(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(error_from_response(response).await);
        }

        let bytes = cap_line_length(response.bytes_stream(), self.max_line_bytes);
        let mut events = bytes.eventsource();
        let stream = async_stream::stream! {
            loop {
                let event = match timeout(idle, events.next()).await {
                    Err(_) => {
                        yield Err(LlmError::Timeout(idle_ms));
                        break;
                    }
                    Ok(None) => break,
                    Ok(Some(Err(e))) => {
                        yield Err(LlmError::Upstream(format!("stream broken: {}", describe_sse_error(e))));
                        break;
                    }
                    Ok(Some(Ok(event))) => event,
                };
                let data = event.data.trim();
                if data.is_empty() {
                    continue;
                }
                if data == "[DONE]" {
                    yield Ok(StreamItem::Done);
                    break;
                }
                if event.event == "error" {
                    yield Err(LlmError::Upstream(error_message(data)));
                    break;
                }
                match serde_json::from_str::<ChatChunk>(data) {
                    Ok(chunk) => {
                        if let Some(error) = &chunk.error {
                            yield Err(LlmError::Upstream(json_error_message(error)));
                            break;
                        }
                        yield Ok(StreamItem::Chunk(chunk));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, data = %truncate(data, 200), "skipping a data line that is not a chunk");
                    }
                }
            }
        };
        Ok(stream.boxed())
    }
}

fn describe_sse_error<E: std::fmt::Display>(e: eventsource_stream::EventStreamError<LineError<E>>) -> String {
    match e {
        eventsource_stream::EventStreamError::Transport(inner) => inner.to_string(),
        other => other.to_string(),
    }
}

/// Classifies a non-2xx response: 429 rate limited, 5xx unavailable, other
/// statuses upstream errors; the message comes from a JSON `error.message`,
/// `error` or `message` field, or from the text body.
async fn error_from_response(response: reqwest::Response) -> LlmError {
    let status = response.status();
    let retry_after_ms = retry_after_ms(response.headers());
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
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

/// The human-readable part of an error body (JSON or text).
fn error_message(body: &str) -> String {
    match serde_json::from_str::<Value>(body) {
        Ok(v) => json_error_message(&v),
        Err(_) => truncate(body.trim(), ERROR_MESSAGE_CHARS),
    }
}

/// The message of an OpenAI-style error value: `{"error":{"message"}}`,
/// `{"message"}`, `{"error":"..."}` or the JSON itself.
fn json_error_message(v: &Value) -> String {
    let inner = v.get("error").unwrap_or(v);
    let text = inner
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| inner.as_str().map(str::to_string))
        .unwrap_or_else(|| inner.to_string());
    truncate(&text, ERROR_MESSAGE_CHARS)
}

fn describe_reqwest(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// At most `max` characters of `s`, cut on a character boundary.
fn truncate(s: &str, max: usize) -> String {
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
