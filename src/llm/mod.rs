//! The OpenAI-compatible streaming client.
//!
//! [`LlmClient::stream_chat`] POSTs `/chat/completions` with `stream: true`
//! and yields parsed [`ChatChunk`]s. The chunk types are lenient on purpose:
//! real servers add fields (`reasoning_content`, `reasoning`), omit others
//! (tool call ids), and send `null` where OpenAI sends a value. Unknown fields
//! are skipped, never an error. (They were once kept in `#[serde(flatten)]`
//! maps, which nothing read and which made serde buffer every field of every
//! chunk first: a measurable share of chatd's CPU per token.)
//!
//! Several upstreams can be configured (`[[providers]]`): [`Providers`] holds
//! one client per provider and picks the model and providers of a request
//! ([`Providers::route`]); [`Route::open`] tries them in order, retrying per
//! [`RetryPolicy`], until one stream produces its first item.
//!
//! Each client builds its requests in one place (`request.rs`) and sends
//! its streams over one transport (`transport/`): chatd's own pooled
//! HTTP/1.1 connections (`h1.rs`) or reqwest over the lanes of
//! [`HttpPool`]; [`TransportKind::choose`] holds the rule, and
//! `llm.transport = "reqwest"` turns the inline connections off.

mod client;
mod errors;
mod h1;
mod lines;
mod pool;
mod providers;
mod request;
mod retry;
mod transport;
mod types;

pub use client::LlmClient;
pub use pool::HttpPool;
pub use providers::{
    Candidate, FailedAttempt, MODEL_LIST_TIMEOUT, NextStep, Opened, ProviderError, ProviderModels, Providers, Route,
    RouteError,
};
pub use retry::RetryPolicy;
pub use transport::TransportKind;
pub use types::{
    ChatChunk, ChatRequest, ChunkChoice, Delta, FunctionCall, FunctionDefinition, FunctionDelta, RequestMessage,
    StreamOptions, ToolCall, ToolCallDelta, ToolDefinition, Usage, WireRequest,
};

/// Why an upstream call failed. Each maps to one `error` event code.
///
/// Two texts per error: the `Display` form (and `detail`) holds everything
/// known, URLs, addresses, ports and upstream bodies included, for the log
/// only; [`LlmError::client_message`] is what a client may be shown, which
/// never names a URL, host, address, port or upstream body.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum LlmError {
    /// Connection refused/reset, DNS failure, or a 5xx answer
    /// (`upstream_unavailable`).
    #[error("upstream unavailable: {detail}")]
    Unavailable {
        /// The full reason, for the log.
        detail: String,
        /// The upstream's HTTP status when it answered with a 5xx.
        status: Option<u16>,
    },
    /// HTTP 429 (`rate_limited`); `retry_after_ms` from a `Retry-After` header.
    #[error("upstream rate limited: {message}")]
    RateLimited {
        /// The full reason (status and body), for the log.
        message: String,
        retry_after_ms: Option<u64>,
    },
    /// The upstream was silent for too long (`upstream_timeout`): no first
    /// SSE event within `llm.first_chunk_timeout_ms` of sending the request
    /// ([`TimeoutPhase::FirstChunk`]), or no event within
    /// `llm.idle_timeout_ms` after an earlier one ([`TimeoutPhase::Idle`]).
    /// `ms` is the limit that was exceeded, in ms.
    #[error("{}", phase.message(*ms))]
    Timeout { ms: u64, phase: TimeoutPhase },
    /// Any other 4xx, an `error` object in the stream, a stream that ends
    /// without finishing, or an over-long line (`upstream_error`).
    #[error("upstream error: {detail}")]
    Upstream {
        /// The full reason, for the log.
        detail: String,
        /// What a client may be told (see [`LlmError::client_message`]).
        public: String,
    },
}

/// Which wait of a request ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutPhase {
    /// From sending the request to the first SSE event (response headers
    /// included).
    FirstChunk,
    /// Between two SSE events.
    Idle,
}

impl TimeoutPhase {
    /// The error text for a wait of `ms` milliseconds in this phase.
    pub fn message(self, ms: u64) -> String {
        match self {
            TimeoutPhase::FirstChunk => format!("upstream sent no first chunk within {ms} ms"),
            TimeoutPhase::Idle => format!("upstream sent nothing for {ms} ms"),
        }
    }
}

impl LlmError {
    /// An [`LlmError::Unavailable`] without an HTTP status (the upstream
    /// could not be reached); `detail` is for the log.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        LlmError::Unavailable {
            detail: detail.into(),
            status: None,
        }
    }

    /// An [`LlmError::Upstream`] in chatd's own words, shown to clients as
    /// it is: `text` must name no URL, address or upstream body.
    pub fn upstream(text: impl Into<String>) -> Self {
        let text = text.into();
        LlmError::Upstream {
            detail: text.clone(),
            public: text,
        }
    }

    /// A first-chunk timeout after `ms` milliseconds.
    pub fn first_chunk_timeout(ms: u64) -> Self {
        LlmError::Timeout {
            ms,
            phase: TimeoutPhase::FirstChunk,
        }
    }

    /// An idle timeout (between events) after `ms` milliseconds.
    pub fn idle_timeout(ms: u64) -> Self {
        LlmError::Timeout {
            ms,
            phase: TimeoutPhase::Idle,
        }
    }

    /// Whether trying again (later, or on another provider) may succeed:
    /// true for [`LlmError::Unavailable`], [`LlmError::RateLimited`] and
    /// [`LlmError::Timeout`]; false for [`LlmError::Upstream`].
    pub fn is_retryable(&self) -> bool {
        match self {
            LlmError::Unavailable { .. } | LlmError::RateLimited { .. } | LlmError::Timeout { .. } => true,
            LlmError::Upstream { .. } => false,
        }
    }

    /// The upstream's `Retry-After`, in ms, when it sent one with a 429.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            LlmError::RateLimited { retry_after_ms, .. } => *retry_after_ms,
            _ => None,
        }
    }
}

/// One item of an upstream stream.
#[derive(Debug, Clone)]
pub enum StreamItem {
    /// A parsed `chat.completion.chunk`.
    Chunk(ChatChunk),
    /// The `data: [DONE]` sentinel.
    Done,
}
