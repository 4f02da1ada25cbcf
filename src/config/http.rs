//! `[http]`, `auth`/`api_keys` and `[limits]`: what the HTTP layer serves and
//! who may call it.

use std::net::SocketAddr;

use serde::Deserialize;

use super::{ConfigError, invalid};

/// HTTP limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Largest accepted request body in bytes; larger bodies get 413.
    pub max_body_bytes: usize,
    /// Origins allowed by CORS (e.g. `https://chat.example.com`); empty
    /// allows none. `["*"]` allows any origin.
    pub cors_origins: Vec<String>,
    /// Serve `GET /metrics` on this separate address instead of the main one
    /// (`CHATD_METRICS_LISTEN`).
    pub metrics_listen: Option<SocketAddr>,
    /// `plain` (default) or `json` log lines (`CHATD_LOG_FORMAT`).
    pub log_format: LogFormat,
    /// Time a client has to send a whole request head, in ms, counted from
    /// the connection's open or from the end of the previous response; a
    /// connection that misses it is closed. Default 30,000.
    pub header_read_timeout_ms: u64,
    /// Time a client has to send a whole request body, in ms, counted from
    /// the end of its head; a body still incomplete then gets 408
    /// `request_timeout`. Default 30,000.
    pub body_timeout_ms: u64,
    /// An HTTP/1.1 keep-alive connection with no request in flight is closed
    /// after this many ms. A request in flight (an SSE stream however long)
    /// is never cut. At most `header_read_timeout_ms`, which also runs while
    /// a connection waits for its next request. Default 15,000.
    pub keep_alive_timeout_ms: u64,
    /// Most client connections open at once; further connections wait in the
    /// listen backlog until one closes. Default 16,384.
    pub max_connections: usize,
    /// Length of the listen socket's queue of connections not yet accepted
    /// (`listen(2)`'s backlog), for the main and the metrics address. A
    /// burst of connects beyond it is dropped by the kernel, and each such
    /// client waits for its SYN to be sent again, a second or more. Linux
    /// caps it at `net.core.somaxconn` (chatd warns at start when that is
    /// lower). 1..=65535, default 8,192.
    pub listen_backlog: u32,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// Whether requests need an API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Require a key when keys are configured (and refuse a public listen
    /// address without keys).
    Keys,
    /// No authentication, even on a public address.
    None,
}

/// Per-key limits; they apply when API keys are in use (without
/// authentication there is no key to count by).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Requests per minute per key, on every limited route; more get 429
    /// with `Retry-After` (seconds).
    pub requests_per_minute: u32,
    /// Replies running at once per key; more get 429 `too_many_replies`.
    pub concurrent_replies: u32,
    /// SSE responses open at once per key: every `POST /api/chat` stream and
    /// every `GET /api/chat/{message_id}/events` (a follower or resume), from
    /// the response's start until its body is dropped (the stream ended or
    /// the client went away). One more gets 429 `too_many_streams` with
    /// `Retry-After`, and a refused `POST /api/chat` starts no reply.
    /// Default 32. Like every per-key limit, off without authentication.
    pub concurrent_streams: u32,
    /// Most messages in one conversation; a new message past it gets 422
    /// `conversation_too_long`.
    pub max_conversation_messages: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            requests_per_minute: 600,
            concurrent_replies: 16,
            concurrent_streams: 32,
            max_conversation_messages: 10_000,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            cors_origins: Vec::new(),
            metrics_listen: None,
            log_format: LogFormat::Plain,
            header_read_timeout_ms: 30_000,
            body_timeout_ms: 30_000,
            keep_alive_timeout_ms: 15_000,
            max_connections: 16_384,
            listen_backlog: 8_192,
        }
    }
}

impl HttpConfig {
    /// Checks that the timeouts and `max_connections` are at least 1, that
    /// `keep_alive_timeout_ms` is at most `header_read_timeout_ms` and that
    /// `listen_backlog` is 1..=65535.
    /// Errors: [`ConfigError::Invalid`] naming the setting.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.header_read_timeout_ms == 0 || self.body_timeout_ms == 0 || self.keep_alive_timeout_ms == 0 {
            return invalid(
                "http.header_read_timeout_ms, http.body_timeout_ms and http.keep_alive_timeout_ms must be at least 1",
            );
        }
        if self.keep_alive_timeout_ms > self.header_read_timeout_ms {
            return invalid(
                "http.keep_alive_timeout_ms must be at most http.header_read_timeout_ms (an idle connection also waits for a request head)",
            );
        }
        if self.max_connections == 0 {
            return invalid("http.max_connections must be at least 1");
        }
        if !(1..=65_535).contains(&self.listen_backlog) {
            return invalid("http.listen_backlog must be between 1 and 65535");
        }
        Ok(())
    }
}

impl LimitsConfig {
    /// Checks that `requests_per_minute`, `concurrent_replies` and
    /// `concurrent_streams` are at least 1. Errors: [`ConfigError::Invalid`]
    /// naming the setting.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.requests_per_minute == 0 || self.concurrent_replies == 0 {
            return invalid("limits.requests_per_minute and limits.concurrent_replies must be at least 1");
        }
        if self.concurrent_streams == 0 {
            return invalid("limits.concurrent_streams must be at least 1");
        }
        Ok(())
    }
}

impl AuthMode {
    /// Checks access control: every key has at least 16 characters, and
    /// with [`AuthMode::Keys`] a non-loopback `listen` has at least one key.
    /// Errors: [`ConfigError::Invalid`]; the second one tells how to set a
    /// key or turn authentication off.
    pub(super) fn validate(self, api_keys: &[String], listen: SocketAddr) -> Result<(), ConfigError> {
        if api_keys.iter().any(|k| k.len() < 16) {
            return invalid("every API key must be at least 16 characters long");
        }
        if self == AuthMode::Keys && api_keys.is_empty() && !listen.ip().is_loopback() {
            return invalid(format!(
                "listen = {listen} is not a loopback address and no API key is configured: set CHATD_API_KEYS \
                 (or api_keys), or say auth = \"none\" (CHATD_AUTH=none) to run without authentication"
            ));
        }
        Ok(())
    }
}
