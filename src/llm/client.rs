//! HTTP client for an OpenAI-compatible `POST /chat/completions` stream and
//! its `GET /models` list. The requests are built by [`Upstream`] and the
//! streams sent over a [`Transport`]; this reads what comes back.

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::Value;
use tokio::time::{Instant, timeout, timeout_at};

use super::errors::{error_from_answer, error_from_response, truncate};
use super::lines::{LineError, cap_line_length};
use super::providers::ProviderError;
use super::request::Upstream;
use super::transport::{Transport, TransportKind};
use super::{ChatChunk, ChatRequest, HttpPool, LlmError, StreamItem, WireRequest};
use crate::config::{LlmConfig, ProviderConfig};
use crate::domain::error_chain;

/// Most bytes of a `GET /models` body (hosted routers list hundreds of models).
const MODELS_BODY_LIMIT: usize = 8 * 1024 * 1024;

/// Streams chat completions from one OpenAI-compatible server.
///
/// Cloning is cheap: clones share the connection pool. `Debug` shows neither
/// the API key nor header values.
#[derive(Clone)]
pub struct LlmClient {
    /// The pool `GET /models` takes its client from.
    http: HttpPool,
    upstream: Upstream,
    /// What the streams are sent over (decided once, in
    /// [`Transport::for_upstream`]).
    transport: Transport,
    first_chunk_timeout: Duration,
    idle_timeout: Duration,
    max_line_bytes: usize,
}

impl std::fmt::Debug for LlmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmClient")
            .field("url", &self.upstream.chat_url())
            .field("api_key", &self.upstream.redacted_key())
            .field("headers", &self.upstream.header_names())
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
        Self::for_provider(http, config, &config.default_provider()).map_err(|e| LlmError::unavailable(e.to_string()))
    }

    /// A client for one provider over the shared [`HttpPool`] `http`: its base URL,
    /// key and extra headers, with the timeouts, line limit and transport
    /// setting (`llm.transport`) of `llm`.
    ///
    /// Errors: [`ProviderError::Invalid`] when the provider fails
    /// [`ProviderConfig::validate`] (e.g. a header name or value is not
    /// valid HTTP, or the base URL is not `http(s)://`).
    pub fn for_provider(http: HttpPool, llm: &LlmConfig, provider: &ProviderConfig) -> Result<Self, ProviderError> {
        let upstream = Upstream::new(provider)?;
        let transport = Transport::for_upstream(&http, llm, upstream.base_url());
        Ok(Self {
            http,
            upstream,
            transport,
            first_chunk_timeout: Duration::from_millis(llm.first_chunk_timeout_ms),
            idle_timeout: Duration::from_millis(llm.idle_timeout_ms),
            max_line_bytes: llm.max_line_bytes,
        })
    }

    /// Which HTTP client this client's streams take: chatd's inline
    /// HTTP/1.1 connections or reqwest (see `llm.transport`).
    pub fn transport(&self) -> TransportKind {
        self.transport.kind()
    }

    /// The base URL requests go to, without a trailing `/`.
    pub fn base_url(&self) -> &str {
        self.upstream.base_url()
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
        let wire = WireRequest { model, request };
        let idle = self.idle_timeout;
        let idle_ms = millis(idle);
        let first_ms = millis(self.first_chunk_timeout);
        // Until the first event, one deadline covers the headers and the body.
        let first_deadline = deadline_after(self.first_chunk_timeout);
        let request = self.upstream.chat(&wire)?;
        let answer = timeout_at(first_deadline, self.transport.send(request))
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
                        yield Err(LlmError::Upstream {
                            detail: format!("stream broken: {}", describe_sse_error(e)),
                            public: "the model provider's stream broke off or could not be read".to_string(),
                        });
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
                    yield Err(LlmError::stream_error(data));
                    break;
                }
                match serde_json::from_str::<ChatChunk>(data) {
                    Ok(chunk) => {
                        if let Some(error) = &chunk.error {
                            yield Err(LlmError::stream_error(&error.to_string()));
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
            let (url, headers) = self.upstream.models()?;
            let response = self
                .http
                .client()
                .get(url)
                .headers(headers)
                .send()
                .await
                .map_err(|e| LlmError::unavailable(error_chain(&e)))?;
            if !response.status().is_success() {
                return Err(error_from_response(response, deadline_after(limit)).await);
            }
            let mut body = Vec::new();
            let mut stream = response.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| LlmError::unavailable(error_chain(&e)))?;
                body.extend_from_slice(&chunk);
                if body.len() > MODELS_BODY_LIMIT {
                    return Err(LlmError::upstream(format!(
                        "GET /models answered with more than {MODELS_BODY_LIMIT} bytes"
                    )));
                }
            }
            model_ids(&body)
        };
        timeout(limit, fetch)
            .await
            .map_err(|_| LlmError::unavailable(format!("GET /models: no answer within {} ms", millis(limit))))?
    }
}

/// The ids of an OpenAI model list; entries without a string `id` are skipped.
fn model_ids(body: &[u8]) -> Result<Vec<String>, LlmError> {
    let not_a_list = || LlmError::upstream("GET /models did not answer with an OpenAI model list");
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

#[cfg(test)]
mod tests {
    use super::*;

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
