//! The OpenAI-compatible streaming client.
//!
//! [`LlmClient::stream_chat`] POSTs `/chat/completions` with `stream: true`
//! and yields parsed [`ChatChunk`]s. The chunk types are lenient on purpose:
//! real servers add fields (`reasoning_content`, `reasoning`), omit others
//! (tool call ids), and send `null` where OpenAI sends a value. Unknown fields
//! are kept in `extra` maps rather than dropped or rejected.

mod client;
mod lines;
mod types;

pub use client::LlmClient;
pub use types::{
    ChatChunk, ChatRequest, ChunkChoice, Delta, FunctionCall, FunctionDefinition, FunctionDelta, RequestMessage,
    StreamOptions, ToolCall, ToolCallDelta, ToolDefinition, Usage,
};

/// Why an upstream call failed. Each maps to one `error` event code.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum LlmError {
    /// Connection refused/reset, DNS failure, or a 5xx answer
    /// (`upstream_unavailable`).
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
    /// HTTP 429 (`rate_limited`); `retry_after_ms` from a `Retry-After` header.
    #[error("upstream rate limited: {message}")]
    RateLimited {
        message: String,
        retry_after_ms: Option<u64>,
    },
    /// No chunk within the idle timeout (`upstream_timeout`).
    #[error("upstream sent nothing for {0} ms")]
    Timeout(u64),
    /// Any other 4xx, an `error` object in the stream, a stream that ends
    /// without finishing, or an over-long line (`upstream_error`).
    #[error("upstream error: {0}")]
    Upstream(String),
}

/// One item of an upstream stream.
#[derive(Debug, Clone)]
pub enum StreamItem {
    /// A parsed `chat.completion.chunk`.
    Chunk(ChatChunk),
    /// The `data: [DONE]` sentinel.
    Done,
}
