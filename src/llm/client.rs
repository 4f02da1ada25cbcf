//! HTTP client for an OpenAI-compatible `POST /chat/completions` stream and
//! its `GET /models` list.

use std::time::Duration;

use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use futures::stream::BoxStream;
use http_body_util::Full;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use serde_json::Value;
use tokio::time::{Instant, timeout, timeout_at};

use super::h1::H1Pool;
use super::lines::{LineError, cap_line_length};
use super::pool::LaneGuard;
use super::providers::ProviderError;
use super::{ChatChunk, ChatRequest, HttpPool, LlmError, StreamItem, WireRequest};
use crate::config::{LlmConfig, ProviderConfig};

/// What the upstream answered a streaming request: its status, headers and
/// body (errors described as text), and the lane place the stream holds.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: BoxStream<'static, Result<Bytes, String>>,
    lane: Option<LaneGuard>,
}

impl Answer {
    fn from_reqwest(response: reqwest::Response, lane: Option<LaneGuard>) -> Self {
        Self {
            status: response.status(),
            headers: response.headers().clone(),
            body: response
                .bytes_stream()
                .map(|r| r.map_err(|e| describe_error(&e)))
                .boxed(),
            lane,
        }
    }
}

/// Most bytes of an HTTP error body read to build an error message.
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// Most characters of an upstream error message passed on to the client.
const ERROR_MESSAGE_CHARS: usize = 500;
/// Most bytes of a `GET /models` body (hosted routers list hundreds of models).
const MODELS_BODY_LIMIT: usize = 8 * 1024 * 1024;

/// Streams chat completions from one OpenAI-compatible server.
///
/// Cloning is cheap: clones share the connection pool. `Debug` shows neither
/// the API key nor header values.
#[derive(Clone)]
pub struct LlmClient {
    http: HttpPool,
    base_url: String,
    url: String,
    api_key: String,
    headers: HeaderMap,
    first_chunk_timeout: Duration,
    idle_timeout: Duration,
    max_line_bytes: usize,
    /// Whether streams may share a connection (HTTP/2: an HTTPS upstream,
    /// or `llm.http2_prior_knowledge`), and so count against
    /// `llm.max_streams_per_connection`.
    shared_connections: bool,
}

impl std::fmt::Debug for LlmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmClient")
            .field("url", &self.url)
            .field("api_key", &if self.api_key.is_empty() { "" } else { "<redacted>" })
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("first_chunk_timeout", &self.first_chunk_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_line_bytes", &self.max_line_bytes)
            .finish_non_exhaustive()
    }
}

impl LlmClient {
    /// Builds a client for `config.base_url` with `config.api_key` and no
    /// extra headers (the single-provider setup). Fails only if the TLS stack
    /// cannot be set up ([`LlmError::Unavailable`]).
    pub fn new(config: &LlmConfig) -> Result<Self, LlmError> {
        let http = HttpPool::new(config)?;
        Self::for_provider(http, config, &config.default_provider()).map_err(|e| LlmError::Unavailable(e.to_string()))
    }

    /// A client for one provider over the shared [`HttpPool`] `http`: its base URL,
    /// key and extra headers, with the timeouts and line limit of `llm`.
    ///
    /// Errors: [`ProviderError::Invalid`] when the provider fails
    /// [`ProviderConfig::validate`] (e.g. a header name or value is not
    /// valid HTTP, or the base URL is not `http(s)://`).
    pub fn for_provider(http: HttpPool, llm: &LlmConfig, provider: &ProviderConfig) -> Result<Self, ProviderError> {
        let invalid = |message: String| ProviderError::Invalid {
            provider: provider.name.clone(),
            message,
        };
        provider.validate().map_err(invalid)?;
        let headers = provider.header_map().map_err(invalid)?;
        let base_url = provider.base_url.trim_end_matches('/').to_string();
        let shared_connections = llm.http2_prior_knowledge || base_url.starts_with("https://");
        Ok(Self {
            http,
            url: format!("{base_url}/chat/completions"),
            base_url,
            api_key: provider.api_key.clone().unwrap_or_default(),
            headers,
            first_chunk_timeout: Duration::from_millis(llm.first_chunk_timeout_ms),
            idle_timeout: Duration::from_millis(llm.idle_timeout_ms),
            max_line_bytes: llm.max_line_bytes,
            shared_connections,
        })
    }

    /// The base URL requests go to, without a trailing `/`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Sends `request` (which should have `stream: true`) and returns the
    /// stream of parsed items. The stream ends after `[DONE]`, at the end of
    /// the body, or after its first error. Data lines that are not JSON are
    /// logged and skipped.
    ///
    /// Timeouts ([`LlmError::Timeout`]): the first SSE event must arrive
    /// within `llm.first_chunk_timeout_ms` of sending the request (waiting for
    /// the response headers counts; [`super::TimeoutPhase::FirstChunk`]), each
    /// later one within `llm.idle_timeout_ms` of the previous one
    /// ([`super::TimeoutPhase::Idle`]). Other errors:
    /// [`LlmError::Unavailable`] (connection failure, 5xx),
    /// [`LlmError::RateLimited`] (429), [`LlmError::Upstream`] (other
    /// statuses, an error object in the stream, a broken stream).
    pub async fn stream_chat(
        &self,
        request: &ChatRequest,
    ) -> Result<BoxStream<'static, Result<StreamItem, LlmError>>, LlmError> {
        self.stream_chat_as(request, &request.model).await
    }

    /// [`Self::stream_chat`] with `model` sent in place of `request.model`
    /// (a provider's name for the model a route serves).
    pub async fn stream_chat_as(
        &self,
        request: &ChatRequest,
        model: &str,
    ) -> Result<BoxStream<'static, Result<StreamItem, LlmError>>, LlmError> {
        let request = WireRequest { model, request };
        let idle = self.idle_timeout;
        let idle_ms = millis(idle);
        let first_ms = millis(self.first_chunk_timeout);
        // Until the first event, one deadline covers the headers and the body.
        let first_deadline = deadline_after(self.first_chunk_timeout);
        let answer = timeout_at(first_deadline, self.send(request))
            .await
            .map_err(|_| LlmError::first_chunk_timeout(first_ms))??;
        if !answer.status.is_success() {
            return Err(error_from_answer(answer, first_deadline).await);
        }

        let bytes = cap_line_length(answer.body, self.max_line_bytes);
        let mut events = bytes.eventsource();
        let lane = answer.lane;
        let stream = async_stream::stream! {
            let _lane = lane;
            let mut first = true;
            // One timer for the whole stream: each event only notes when it
            // came, and the timer, when it fires, moves to the real
            // deadline (last event + idle) if that is later. A timer armed
            // and cancelled per chunk cost more than parsing the chunk.
            let mut last_event = Instant::now();
            let timer = tokio::time::sleep_until(first_deadline);
            tokio::pin!(timer);
            loop {
                let next = tokio::select! {
                    biased;
                    next = events.next() => next,
                    _ = &mut timer => {
                        let due = if first { first_deadline } else { deadline_at(last_event, idle) };
                        if Instant::now() < due {
                            timer.as_mut().reset(due);
                            continue;
                        }
                        yield Err(if first {
                            LlmError::first_chunk_timeout(first_ms)
                        } else {
                            LlmError::idle_timeout(idle_ms)
                        });
                        break;
                    }
                };
                let event = match next {
                    None => break,
                    Some(Err(e)) => {
                        yield Err(LlmError::Upstream(format!("stream broken: {}", describe_sse_error(e))));
                        break;
                    }
                    Some(Ok(event)) => event,
                };
                last_event = Instant::now();
                if first {
                    timer.as_mut().reset(deadline_at(last_event, idle));
                }
                first = false;
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

    /// Sends the streaming request: over [`HttpPool::h1`] to a cleartext
    /// HTTP/1.1 upstream when the pool has that client, else with reqwest
    /// (HTTPS, HTTP/2, a proxy). Both send the same request: `POST` of the
    /// JSON body with `Accept: text/event-stream`, the provider's headers
    /// and `Authorization: Bearer` when there is a key.
    ///
    /// Errors: [`LlmError::Unavailable`] when no response came (connection
    /// refused or reset, connect timeout, a key that is not a valid header
    /// value).
    async fn send(&self, request: WireRequest<'_>) -> Result<Answer, LlmError> {
        if !self.shared_connections
            && let Some(h1) = self.http.h1()
        {
            return self.send_h1(h1, request).await;
        }
        // The lane's place is held until the stream is dropped.
        let (http, lane) = self.http.stream_client(self.shared_connections);
        let builder = http.post(&self.url).header(ACCEPT, "text/event-stream").json(&request);
        let response = self
            .authorized(builder)
            .send()
            .await
            .map_err(|e| LlmError::Unavailable(describe_error(&e)))?;
        Ok(Answer::from_reqwest(response, lane))
    }

    /// `builder` with the provider's headers (replacing those set before)
    /// and, when there is a key, `Authorization: Bearer`.
    fn authorized(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let builder = builder.headers(self.headers.clone());
        if self.api_key.is_empty() {
            builder
        } else {
            builder.bearer_auth(&self.api_key)
        }
    }

    /// [`Self::send`] over the HTTP/1.1 client, with the same headers.
    async fn send_h1(&self, h1: &H1Pool, request: WireRequest<'_>) -> Result<Answer, LlmError> {
        let json = serde_json::to_vec(&request)
            .map_err(|e| LlmError::Unavailable(format!("cannot encode the request: {e}")))?;
        let mut http_request = http::Request::post(&self.url)
            .body(Full::new(Bytes::from(json)))
            .map_err(|e| LlmError::Unavailable(format!("cannot build the request: {e}")))?;
        let headers = http_request.headers_mut();
        headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        // As reqwest's `headers`: a provider header replaces one set above.
        for name in self.headers.keys() {
            headers.remove(name);
            for value in self.headers.get_all(name) {
                headers.append(name, value.clone());
            }
        }
        if !self.api_key.is_empty() {
            let mut value = HeaderValue::from_str(&format!("Bearer {}", self.api_key))
                .map_err(|_| LlmError::Unavailable("the API key is not a valid HTTP header value".into()))?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let (parts, body) = h1.send(http_request).await.map_err(LlmError::Unavailable)?;
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body: body.boxed(),
            lane: None,
        })
    }

    /// The model ids of `GET {base_url}/models` (OpenAI list format
    /// `{"data":[{"id":...}]}`), in the server's order. The whole request,
    /// body included, must finish within `limit`.
    ///
    /// Errors: [`LlmError::Unavailable`] for a connection failure, a 5xx or
    /// no answer within `limit`; [`LlmError::RateLimited`] for a 429;
    /// [`LlmError::Upstream`] for other statuses, a body over 8 MiB or one
    /// that is not a model list.
    pub async fn list_models(&self, limit: Duration) -> Result<Vec<String>, LlmError> {
        let fetch = async {
            let builder = self.http.client().get(format!("{}/models", self.base_url));
            let response = self
                .authorized(builder)
                .send()
                .await
                .map_err(|e| LlmError::Unavailable(describe_error(&e.without_url())))?;
            if !response.status().is_success() {
                return Err(error_from_response(response, deadline_after(limit)).await);
            }
            let mut body = Vec::new();
            let mut stream = response.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| LlmError::Unavailable(describe_error(&e.without_url())))?;
                body.extend_from_slice(&chunk);
                if body.len() > MODELS_BODY_LIMIT {
                    return Err(LlmError::Upstream(format!(
                        "GET /models answered with more than {MODELS_BODY_LIMIT} bytes"
                    )));
                }
            }
            model_ids(&body)
        };
        timeout(limit, fetch)
            .await
            .map_err(|_| LlmError::Unavailable(format!("GET /models: no answer within {} ms", millis(limit))))?
    }
}

/// The ids of an OpenAI model list; entries without a string `id` are skipped.
fn model_ids(body: &[u8]) -> Result<Vec<String>, LlmError> {
    let not_a_list = || LlmError::Upstream("GET /models did not answer with an OpenAI model list".to_string());
    let value: Value = serde_json::from_slice(body).map_err(|_| not_a_list())?;
    let data = value.get("data").and_then(Value::as_array).ok_or_else(not_a_list)?;
    Ok(data
        .iter()
        .filter_map(|m| m.get("id").and_then(Value::as_str))
        .map(str::to_string)
        .collect())
}

/// `d` from now; a duration too large to represent means about 30 years.
fn deadline_after(d: Duration) -> Instant {
    deadline_at(Instant::now(), d)
}

/// `from + d`, or about 30 years from `from` for a `d` too large to add.
fn deadline_at(from: Instant, d: Duration) -> Instant {
    from.checked_add(d)
        .unwrap_or_else(|| from + Duration::from_secs(30 * 365 * 24 * 3600))
}

/// A duration in whole ms, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
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
/// The body is read until `deadline`; a slower body is cut there.
async fn error_from_response(response: reqwest::Response, deadline: Instant) -> LlmError {
    error_from_answer(Answer::from_reqwest(response, None), deadline).await
}

/// [`error_from_response`] for an [`Answer`].
async fn error_from_answer(answer: Answer, deadline: Instant) -> LlmError {
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

    #[test]
    fn model_lists() {
        assert_eq!(
            model_ids(br#"{"object":"list","data":[{"id":"a","object":"model"},{"id":7},{"id":"b"}]}"#),
            Ok(vec!["a".to_string(), "b".to_string()])
        );
        assert!(model_ids(b"[]").is_err());
        assert!(model_ids(b"not json").is_err());
    }
}
