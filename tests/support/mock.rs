//! A mock OpenAI-compatible upstream: a real HTTP server on 127.0.0.1 that
//! answers `POST /v1/chat/completions` from a per-test script and records
//! every request body it receives.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode, Version};
use axum::response::Response;
use axum::routing::post;
use serde_json::{Value, json};

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum MockResponse {
    /// 200 `text/event-stream`: each part is sent after its delay (ms).
    Stream(Vec<(u64, String)>),
    /// A non-2xx (or any) status with headers and a body.
    Status {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Never answer (the request hangs until the client gives up).
    Hang,
}

#[derive(Default)]
struct MockState {
    script: Mutex<VecDeque<MockResponse>>,
    received: Mutex<Vec<Value>>,
    versions: Mutex<Vec<Version>>,
    peers: Mutex<Vec<std::net::SocketAddr>>,
}

/// Handle to a running mock upstream.
#[derive(Clone)]
pub struct MockUpstream {
    state: Arc<MockState>,
    /// `http://127.0.0.1:PORT/v1`
    pub base_url: String,
}

impl MockUpstream {
    /// Starts the server on an ephemeral port.
    pub async fn start() -> Self {
        let state = Arc::new(MockState::default());
        let app = Router::new()
            .route("/v1/chat/completions", post(completions))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind mock");
        let addr = listener.local_addr().expect("mock addr");
        tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .await;
        });
        Self {
            state,
            base_url: format!("http://{addr}/v1"),
        }
    }

    /// Queues the next answer.
    pub fn push(&self, response: MockResponse) -> &Self {
        self.state.script.lock().expect("script lock").push_back(response);
        self
    }

    /// The HTTP version of every request received so far.
    pub fn versions(&self) -> Vec<Version> {
        self.state.versions.lock().expect("versions lock").clone()
    }

    /// The client address (one per connection) of every request so far.
    pub fn peers(&self) -> Vec<std::net::SocketAddr> {
        self.state.peers.lock().expect("peers lock").clone()
    }

    /// Every request body received so far.
    pub fn received(&self) -> Vec<Value> {
        self.state.received.lock().expect("received lock").clone()
    }
}

async fn completions(
    State(state): State<Arc<MockState>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    version: Version,
    body: Bytes,
) -> Response {
    state.versions.lock().expect("versions lock").push(version);
    state.peers.lock().expect("peers lock").push(peer);
    let parsed: Value = serde_json::from_slice(&body).unwrap_or_else(|_| json!({"unparsable": true}));
    state.received.lock().expect("received lock").push(parsed);
    let next = state.script.lock().expect("script lock").pop_front();
    match next {
        None => status_response(500, &[], "mock upstream: no scripted response left"),
        Some(MockResponse::Status { status, headers, body }) => {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            status_response(status, &headers, &body)
        }
        Some(MockResponse::Hang) => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            status_response(500, &[], "unreachable")
        }
        Some(MockResponse::Stream(parts)) => {
            let stream = async_stream::stream! {
                for (delay, text) in parts {
                    if delay > 0 {
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                    }
                    yield Ok::<_, Infallible>(Bytes::from(text));
                }
            };
            Response::builder()
                .status(200)
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(stream))
                .expect("response")
        }
    }
}

fn status_response(status: u16, headers: &[(&str, &str)], body: &str) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = StatusCode::from_u16(status).expect("status");
    for (k, v) in headers {
        response.headers_mut().insert(
            HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            HeaderValue::from_str(v).expect("header value"),
        );
    }
    response
}

// ---- chunk builders (OpenAI chat.completion.chunk) ----

fn chunk(delta: Value, finish_reason: Value) -> Value {
    json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "mock-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    })
}

/// `{"role":"assistant","content":""}` first chunk.
pub fn role() -> Value {
    chunk(json!({"role": "assistant", "content": ""}), Value::Null)
}

/// A content delta.
pub fn content(text: &str) -> Value {
    chunk(json!({"content": text}), Value::Null)
}

/// A `reasoning_content` delta.
pub fn reasoning_content(text: &str) -> Value {
    chunk(json!({"reasoning_content": text}), Value::Null)
}

/// A `reasoning` delta (OpenRouter/Ollama spelling).
pub fn reasoning(text: &str) -> Value {
    chunk(json!({"reasoning": text}), Value::Null)
}

/// A tool-call piece; `None` fields are omitted.
pub fn tool_piece(index: Option<u32>, id: Option<&str>, name: Option<&str>, arguments: &str) -> Value {
    let mut function = serde_json::Map::new();
    if let Some(name) = name {
        function.insert("name".into(), json!(name));
    }
    function.insert("arguments".into(), json!(arguments));
    let mut call = serde_json::Map::new();
    if let Some(index) = index {
        call.insert("index".into(), json!(index));
    }
    if let Some(id) = id {
        call.insert("id".into(), json!(id));
        call.insert("type".into(), json!("function"));
    }
    call.insert("function".into(), Value::Object(function));
    chunk(json!({"tool_calls": [Value::Object(call)]}), Value::Null)
}

/// An empty delta with a finish_reason.
pub fn finish(reason: &str) -> Value {
    chunk(json!({}), json!(reason))
}

/// A usage-only chunk with empty `choices` (stream_options.include_usage).
pub fn usage(prompt: u64, completion: u64) -> Value {
    json!({
        "id": "chatcmpl-mock", "object": "chat.completion.chunk", "model": "mock-model", "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    })
}

/// SSE stream of `chunks` then `data: [DONE]`, no delays.
pub fn sse(chunks: &[Value]) -> MockResponse {
    sse_with_delay(chunks, 0)
}

/// SSE stream of `chunks` then `data: [DONE]`, each after `delay_ms`.
pub fn sse_with_delay(chunks: &[Value], delay_ms: u64) -> MockResponse {
    let mut parts: Vec<(u64, String)> = chunks.iter().map(|c| (delay_ms, format!("data: {c}\n\n"))).collect();
    parts.push((delay_ms, "data: [DONE]\n\n".to_string()));
    MockResponse::Stream(parts)
}

/// SSE stream of `(delay_ms, chunk)` parts, each chunk after its delay, and
/// no `data: [DONE]`: the body just stops (or hangs, while a delay runs).
pub fn timed(parts: &[(u64, Value)]) -> MockResponse {
    MockResponse::Stream(
        parts
            .iter()
            .map(|(delay, chunk)| (*delay, format!("data: {chunk}\n\n")))
            .collect(),
    )
}

/// A raw body, sent in the given parts without delay.
pub fn raw(parts: &[&str]) -> MockResponse {
    MockResponse::Stream(parts.iter().map(|p| (0, p.to_string())).collect())
}

/// A whole plain text reply: role, the pieces, finish "stop", usage.
pub fn text_reply(pieces: &[&str], prompt_tokens: u64, completion_tokens: u64) -> MockResponse {
    let mut chunks = vec![role()];
    chunks.extend(pieces.iter().map(|p| content(p)));
    chunks.push(finish("stop"));
    chunks.push(usage(prompt_tokens, completion_tokens));
    sse(&chunks)
}

/// A round that calls tools: each `(id, name, arguments)` split in two pieces.
pub fn tool_reply(calls: &[(&str, &str, &str)], prompt_tokens: u64, completion_tokens: u64) -> MockResponse {
    let mut chunks = vec![role()];
    for (i, (id, name, args)) in calls.iter().enumerate() {
        let i = i as u32;
        let split = args.len() / 2;
        let split = (0..=split).rev().find(|n| args.is_char_boundary(*n)).unwrap_or(0);
        chunks.push(tool_piece(Some(i), Some(id), Some(name), ""));
        chunks.push(tool_piece(Some(i), None, None, &args[..split]));
        chunks.push(tool_piece(Some(i), None, None, &args[split..]));
    }
    chunks.push(finish("tool_calls"));
    chunks.push(usage(prompt_tokens, completion_tokens));
    sse(&chunks)
}

/// A non-stream answer: `code` with `headers` and `body`.
pub fn status(code: u16, headers: &[(&str, &str)], body: &str) -> MockResponse {
    MockResponse::Status {
        status: code,
        headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        body: body.to_string(),
    }
}

/// The chunks of a `pieces`-word reply (`w0 w1 ...`, see [`full_text`])
/// then finish "stop"; no usage.
pub fn words(pieces: usize) -> Vec<Value> {
    let mut chunks: Vec<Value> = (0..pieces).map(|i| content(&format!("w{i} "))).collect();
    chunks.push(finish("stop"));
    chunks
}

/// [`words`] streamed with `delay_ms` before each chunk.
pub fn slow_text(pieces: usize, delay_ms: u64) -> MockResponse {
    sse_with_delay(&words(pieces), delay_ms)
}

/// The whole text of [`words`]`(pieces)`.
pub fn full_text(pieces: usize) -> String {
    (0..pieces).map(|i| format!("w{i} ")).collect()
}

/// Scripts one reply on `upstream`: a round of tool calls `(id, name,
/// arguments)` per entry of `rounds`, one after the other, then the answer
/// "ok".
pub fn push_rounds(upstream: &MockUpstream, rounds: &[&[(&str, &str, Value)]]) {
    for calls in rounds {
        let args: Vec<(String, String, String)> = calls
            .iter()
            .map(|(id, name, a)| (id.to_string(), name.to_string(), a.to_string()))
            .collect();
        let refs: Vec<(&str, &str, &str)> = args
            .iter()
            .map(|(i, n, a)| (i.as_str(), n.as_str(), a.as_str()))
            .collect();
        upstream.push(tool_reply(&refs, 1, 1));
    }
    upstream.push(text_reply(&["ok"], 1, 1));
}
