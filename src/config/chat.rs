//! `[chat]`: the reply loop.

use serde::Deserialize;

use super::{ConfigError, invalid};

/// The reply loop.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatConfig {
    /// Most model rounds in one reply (`CHATD_MAX_ITERATIONS`).
    pub max_iterations: u32,
    /// What a client disconnect does to its reply.
    pub on_disconnect: OnDisconnect,
    /// Interval in ms after which a stream with no event gets an SSE
    /// keep-alive comment.
    pub keepalive_interval_ms: u64,
    /// How long in ms a finished reply's events stay replayable exactly (in
    /// memory for the first minute at most, in the `reply_event_batches`
    /// table for all of it); later resumes get a compact replay built from
    /// the stored message.
    pub replay_retention_ms: u64,
    /// Longest interval in ms between writes of a streaming reply's partial
    /// state to its message row (what a crash can lose at most).
    pub flush_interval_ms: u64,
    /// On SIGTERM/Ctrl-C, how long in ms running replies may take to finish
    /// before they are stopped and stored as `interrupted`.
    pub drain_timeout_ms: u64,
    /// Longest accepted user message, in characters (Unicode scalar values).
    pub max_message_chars: usize,
    /// Largest `max_tokens` (completion tokens per model round) a request or
    /// a conversation may ask for; a larger one is refused with 422
    /// `validation_failed`. A conversation that stored a larger value before
    /// the ceiling was lowered is sent the ceiling.
    pub max_tokens_ceiling: u32,
    /// `max_tokens` sent upstream when neither the request nor the
    /// conversation sets one; unset (the default): none is sent, and the
    /// upstream's own limit applies (typically what is left of the model's
    /// context). Not sent by default because upstreams refuse a
    /// `max_tokens` above what a model can produce (OpenAI: its output
    /// limit, vLLM: its context length less the prompt), so no one value
    /// fits every model. At most `max_tokens_ceiling`.
    pub default_max_tokens: Option<u32>,
    /// Longest wall-clock time of one reply, in ms, from its start to its
    /// terminal event: model rounds, tool calls and waits for approval all
    /// count. A reply still running then is stopped as a cancel stops it
    /// (upstream request and running tools dropped) and ends with an
    /// `error` event of code `reply_timeout`; its partial content is stored
    /// with status `error`.
    pub max_reply_ms: u64,
    /// Most writes (mostly reply events) queued for the database and not
    /// yet committed. At the bound, each streaming reply waits before it
    /// reads its next upstream chunk until the writer has caught up, so a
    /// stalled database slows generation instead of growing memory; no
    /// event is dropped, and new turns, final replies and flushes are never
    /// held. The queue can pass the bound by the events of one upstream
    /// chunk per streaming reply. The default is far above a normal burst:
    /// the writer commits whatever is queued every 100 ms.
    pub writer_queue_events: usize,
}

/// What happens to a reply when its HTTP client goes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDisconnect {
    /// The reply runs to its end and is stored.
    Continue,
    /// The reply is cancelled and stored with status `cancelled` once the
    /// last subscriber is gone.
    Cancel,
}

impl Default for ChatConfig {
    fn default() -> Self {
        Self {
            max_iterations: 20,
            on_disconnect: OnDisconnect::Continue,
            keepalive_interval_ms: 15_000,
            replay_retention_ms: 600_000,
            flush_interval_ms: 1_000,
            drain_timeout_ms: 30_000,
            max_message_chars: 100_000,
            max_tokens_ceiling: 32_768,
            default_max_tokens: None,
            max_reply_ms: 600_000,
            writer_queue_events: 65_536,
        }
    }
}

impl ChatConfig {
    /// Checks that `max_iterations`, `flush_interval_ms`,
    /// `keepalive_interval_ms`, `max_tokens_ceiling`, `max_reply_ms` and
    /// `writer_queue_events` are at least 1, and `default_max_tokens` (when set) between 1 and
    /// `max_tokens_ceiling`. Errors: [`ConfigError::Invalid`] naming the
    /// setting.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_iterations == 0 {
            return invalid("chat.max_iterations must be at least 1");
        }
        if self.flush_interval_ms == 0 {
            return invalid("chat.flush_interval_ms must be at least 1");
        }
        if self.keepalive_interval_ms == 0 {
            return invalid("chat.keepalive_interval_ms must be at least 1");
        }
        if self.max_tokens_ceiling == 0 {
            return invalid("chat.max_tokens_ceiling must be at least 1");
        }
        if self.max_reply_ms == 0 {
            return invalid("chat.max_reply_ms must be at least 1");
        }
        if self.writer_queue_events == 0 {
            return invalid("chat.writer_queue_events must be at least 1");
        }
        match self.default_max_tokens {
            Some(0) => return invalid("chat.default_max_tokens must be at least 1 (or left out: none is sent)"),
            Some(n) if n > self.max_tokens_ceiling => {
                return invalid(format!(
                    "chat.default_max_tokens ({n}) must be at most chat.max_tokens_ceiling ({})",
                    self.max_tokens_ceiling
                ));
            }
            _ => {}
        }
        Ok(())
    }
}
