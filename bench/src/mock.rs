//! `chatd-bench mock`: a fast OpenAI-compatible upstream in its own process.
//!
//! `POST /v1/chat/completions` parses the request like a real server and
//! streams `chat.completion.chunk`s, each serialized with serde_json as it is
//! sent, then `data: [DONE]`. The reply's shape comes from the model name
//! (see [`ReplySpec`]), so one mock serves every mix of lengths and delays,
//! through chatd or straight from the load client.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

/// The pieces a reply is made of; token `i` is `VOCAB[i % VOCAB.len()]`.
/// Quotes, a newline and non-ASCII letters make JSON escaping do real work.
const VOCAB: [&str; 16] = [
    " the",
    " quick",
    " brown",
    " fox",
    " jumps",
    " over",
    " a",
    " lazy",
    " dog",
    ",",
    " and",
    " \"quoted\"",
    " naïve",
    " café",
    "\n",
    " 42",
];

/// Token `i` of every reply.
pub fn token(i: usize) -> &'static str {
    VOCAB[i % VOCAB.len()]
}

/// The whole text of a reply of `tokens` tokens.
pub fn expected_text(tokens: usize) -> String {
    (0..tokens).map(token).collect()
}

/// The arguments of the mock's tool call, and what chatd's calculator
/// answers to them.
pub const TOOL_ARGUMENTS: &str = r#"{"expression": "12*7"}"#;
pub const TOOL_RESULT: &str = "84";

/// What one reply looks like, carried in the model name
/// `bench-t{tokens}-d{delay_ms}-{text|tool}`: `tokens` content chunks, one
/// every `delay_ms` on a fixed schedule (the first at once; chunk `i` is due
/// `i * delay_ms` after it, however late the ones before it went out). With
/// `tool`, a request whose history holds no tool result is answered with a
/// `calculator` call instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplySpec {
    pub tokens: usize,
    pub delay_ms: u64,
    pub tool: bool,
}

impl ReplySpec {
    pub const fn text(tokens: usize, delay_ms: u64) -> Self {
        Self {
            tokens,
            delay_ms,
            tool: false,
        }
    }

    /// The model name that asks the mock for this reply.
    pub fn model(&self) -> String {
        let mode = if self.tool { "tool" } else { "text" };
        format!("bench-t{}-d{}-{mode}", self.tokens, self.delay_ms)
    }

    /// Reads a model name made by [`ReplySpec::model`].
    pub fn parse(model: &str) -> Option<Self> {
        let mut parts = model.strip_prefix("bench-")?.split('-');
        let tokens = parts.next()?.strip_prefix('t')?.parse().ok()?;
        let delay_ms = parts.next()?.strip_prefix('d')?.parse().ok()?;
        let tool = match parts.next()? {
            "text" => false,
            "tool" => true,
            _ => return None,
        };
        Some(Self { tokens, delay_ms, tool })
    }
}

/// Binds `listen` (backlog 8192: bursts of connects), prints `listening
/// ADDR` on stdout and serves until killed. Sockets get TCP_NODELAY, so a
/// chunk is never held back by Nagle's algorithm waiting for an ACK.
pub async fn serve(listen: SocketAddr) -> anyhow::Result<bool> {
    let socket = tokio::net::TcpSocket::new_v4().context("socket")?;
    socket.set_reuseaddr(true).context("SO_REUSEADDR")?;
    socket.bind(listen).with_context(|| format!("bind {listen}"))?;
    let listener = socket.listen(8192).context("listen")?;
    let addr = listener.local_addr().context("local addr")?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening {addr}").context("stdout")?;
        out.flush().context("stdout")?;
    }
    let app = Router::new()
        .route("/v1/chat/completions", post(completions))
        .route("/healthz", get(|| async { "ok" }));
    // hyper's connection builder rather than `axum::serve`: HTTP/2 (h2c
    // with prior knowledge, as chatd's `llm.http2_prior_knowledge` speaks
    // it) with an explicit stream limit, [`H2_MAX_STREAMS`] unless
    // `CHATD_BENCH_MOCK_H2_STREAMS` sets another.
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let streams = std::env::var("CHATD_BENCH_MOCK_H2_STREAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(H2_MAX_STREAMS);
    builder.http2().max_concurrent_streams(streams);
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, most likely: wait for some to close.
                eprintln!("mock: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        tokio::spawn(async move {
            let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
        });
    }
}

/// Concurrent HTTP/2 streams the mock allows on one connection: hyper's
/// default, and within what hosted APIs allow (about 100 to 256), so that
/// `c10000` needs chatd to spread its streams over connections
/// (`llm.max_streams_per_connection`) as a hosted API would.
const H2_MAX_STREAMS: u32 = 200;

#[derive(Deserialize)]
struct ChatRequest {
    model: String,
    #[serde(default)]
    messages: Vec<Message>,
    // Parsed and dropped, as a server that uses them would still parse them.
    #[serde(default)]
    #[allow(dead_code)]
    tools: IgnoredAny,
}

#[derive(Deserialize)]
struct Message {
    role: String,
    #[serde(default)]
    #[allow(dead_code)]
    content: IgnoredAny,
}

async fn completions(body: Bytes) -> Response {
    let request: ChatRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return (axum::http::StatusCode::BAD_REQUEST, format!("bad request: {e}")).into_response(),
    };
    let Some(spec) = ReplySpec::parse(&request.model) else {
        return (
            axum::http::StatusCode::NOT_FOUND,
            format!("unknown model {:?}", request.model),
        )
            .into_response();
    };
    let call_tool = spec.tool && !request.messages.iter().any(|m| m.role == "tool");
    let model = request.model;
    let stream = async_stream::stream! {
        let frame = |chunk: &Chunk<'_>| {
            let json = serde_json::to_string(chunk).unwrap_or_default();
            Ok::<_, Infallible>(Bytes::from(format!("data: {json}\n\n")))
        };
        yield frame(&Chunk::delta(&model, Delta { role: Some("assistant"), content: Some(""), ..Delta::default() }));
        if call_tool {
            let split = TOOL_ARGUMENTS.len() / 2;
            let pieces = [
                ToolPiece { index: 0, id: Some("call_bench"), kind: Some("function"),
                    function: FunctionPiece { name: Some("calculator"), arguments: "" } },
                ToolPiece { index: 0, id: None, kind: None,
                    function: FunctionPiece { name: None, arguments: &TOOL_ARGUMENTS[..split] } },
                ToolPiece { index: 0, id: None, kind: None,
                    function: FunctionPiece { name: None, arguments: &TOOL_ARGUMENTS[split..] } },
            ];
            for piece in pieces {
                yield frame(&Chunk::delta(&model, Delta { tool_calls: Some([piece]), ..Delta::default() }));
            }
            yield frame(&Chunk::finish(&model, "tool_calls"));
        } else {
            // Token `i` is due at `first + i * delay`, on a fixed schedule,
            // as from a model server on its own hardware: a late wake-up
            // (this process shares two cores with chatd and the load
            // client) delays that token, not every token after it.
            let first = tokio::time::Instant::now();
            for i in 0..spec.tokens {
                if i > 0 && spec.delay_ms > 0 {
                    tokio::time::sleep_until(first + Duration::from_millis(spec.delay_ms) * i as u32).await;
                }
                yield frame(&Chunk::delta(&model, Delta { content: Some(token(i)), ..Delta::default() }));
            }
            yield frame(&Chunk::finish(&model, "stop"));
        }
        let completion = if call_tool { 10 } else { spec.tokens as u64 };
        yield frame(&Chunk::usage(&model, Usage { prompt_tokens: 10, completion_tokens: completion, total_tokens: 10 + completion }));
        yield Ok(Bytes::from_static(b"data: [DONE]\n\n"));
    };
    Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// An OpenAI `chat.completion.chunk`.
#[derive(Serialize)]
struct Chunk<'a> {
    id: &'static str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: &'static str,
    choices: Vec<Choice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'a str>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolPiece<'a>; 1]>,
}

#[derive(Serialize)]
struct ToolPiece<'a> {
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'a str>,
    function: FunctionPiece<'a>,
}

#[derive(Serialize)]
struct FunctionPiece<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

impl<'a> Chunk<'a> {
    fn new(model: &'a str, choices: Vec<Choice<'a>>, usage: Option<Usage>) -> Self {
        Self {
            id: "chatcmpl-bench",
            object: "chat.completion.chunk",
            created: 1_700_000_000,
            model,
            system_fingerprint: "fp_bench",
            choices,
            usage,
        }
    }

    fn delta(model: &'a str, delta: Delta<'a>) -> Self {
        Self::new(
            model,
            vec![Choice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason: None,
            }],
            None,
        )
    }

    fn finish(model: &'a str, reason: &'a str) -> Self {
        Self::new(
            model,
            vec![Choice {
                index: 0,
                delta: Delta::default(),
                logprobs: None,
                finish_reason: Some(reason),
            }],
            None,
        )
    }

    fn usage(model: &'a str, usage: Usage) -> Self {
        Self::new(model, Vec::new(), Some(usage))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_round_trip() {
        for spec in [
            ReplySpec::text(1, 0),
            ReplySpec {
                tokens: 20_000,
                delay_ms: 20,
                tool: true,
            },
        ] {
            assert_eq!(ReplySpec::parse(&spec.model()), Some(spec));
        }
        assert_eq!(ReplySpec::parse("gpt-4o"), None);
    }

    #[test]
    fn chunks_are_openai_shaped() {
        let c = Chunk::delta(
            "m",
            Delta {
                content: Some(token(11)),
                ..Delta::default()
            },
        );
        let v: serde_json::Value = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(v["choices"][0]["delta"]["content"], " \"quoted\"");
        assert_eq!(v["object"], "chat.completion.chunk");
        assert!(v["choices"][0]["finish_reason"].is_null());
    }
}
