//! Typed configuration: built-in defaults, then an optional TOML file, then
//! `CHATD_*` environment variables (highest priority).
//!
//! Every setting is documented in `config.example.toml` at the repository root.
//! Unknown keys in the file are rejected, so a typo never silently falls back
//! to a default.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;

use reqwest::header::{HeaderName, HeaderValue};
use serde::Deserialize;

/// Name of the single provider built from the `[llm]` section when no
/// `[[providers]]` are configured.
pub const DEFAULT_PROVIDER: &str = "default";

/// Errors while loading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or parsed, or a value has the wrong type.
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A value parsed but is out of its allowed range.
    #[error("configuration: {0}")]
    Invalid(String),
}

/// The whole configuration of one chatd process.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server binds, e.g. `127.0.0.1:8080` (`CHATD_LISTEN`).
    pub listen: SocketAddr,
    /// sqlx SQLite URL, e.g. `sqlite://chatd.db` (`CHATD_DATABASE_URL`).
    /// The file is created and migrated at start. In-memory databases
    /// (`sqlite::memory:`) are refused: the writer thread opens the file too.
    pub database_url: String,
    /// The OpenAI-compatible upstream: timeouts, retries and, when
    /// `providers` is empty, the single upstream itself.
    pub llm: LlmConfig,
    /// Named OpenAI-compatible upstreams (`[[providers]]` tables), in order of
    /// preference. When empty, `[llm]` is the single provider named
    /// [`DEFAULT_PROVIDER`]; when not empty, `llm.base_url` and `llm.api_key`
    /// are ignored. See [`Config::effective_providers`].
    pub providers: Vec<ProviderConfig>,
    /// MCP servers whose tools the model may call.
    pub mcp_servers: Vec<McpServerConfig>,
    /// The reply loop.
    pub chat: ChatConfig,
    /// Tool execution.
    pub tools: ToolsConfig,
    /// HTTP limits, CORS, metrics and logs.
    pub http: HttpConfig,
    /// Access control: `"keys"` (default) or `"none"`. With `"keys"`, every
    /// route except `/healthz`, `/readyz`, `/metrics` and `/api/openapi.json` needs
    /// `Authorization: Bearer <key>` once at least one key is configured; a
    /// non-loopback `listen` without keys refuses to start. `"none"` turns
    /// authentication off explicitly.
    pub auth: AuthMode,
    /// API keys accepted in `Authorization: Bearer <key>` (`CHATD_API_KEYS`,
    /// comma-separated). Held only as SHA-256 digests once loaded.
    pub api_keys: Vec<String>,
    /// Per-key rate limits and size limits.
    pub limits: LimitsConfig,
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
    /// Replies running at once per key; more get 429.
    pub concurrent_replies: u32,
    /// Most messages in one conversation; a new message past it gets 422
    /// `conversation_too_long`.
    pub max_conversation_messages: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            requests_per_minute: 600,
            concurrent_replies: 16,
            max_conversation_messages: 10_000,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Plain,
    Json,
}

/// How chatd talks to the OpenAI-compatible chat-completions API.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmConfig {
    /// Base URL ending before `/chat/completions`, e.g. `http://127.0.0.1:11434/v1`
    /// (`CHATD_LLM_BASE_URL`). Ignored when `[[providers]]` are configured.
    pub base_url: String,
    /// Bearer token sent upstream; empty sends none (`CHATD_LLM_API_KEY`,
    /// falling back to `OPENAI_API_KEY`). Ignored when `[[providers]]` are
    /// configured.
    pub api_key: String,
    /// Model used when neither the conversation nor the request names one
    /// (`CHATD_LLM_MODEL`). Empty means a request must name a model (or the
    /// provider must have a `default_model`).
    pub model: String,
    /// Longest wait in ms from sending a request until the first SSE event
    /// arrives (this covers waiting for the response headers) before the
    /// attempt fails with `upstream_timeout`.
    pub first_chunk_timeout_ms: u64,
    /// Longest silence in ms between upstream SSE events after the first
    /// before the reply fails with `upstream_timeout`
    /// (`CHATD_LLM_IDLE_TIMEOUT_MS`).
    pub idle_timeout_ms: u64,
    /// TCP connect timeout in ms.
    pub connect_timeout_ms: u64,
    /// Speak HTTP/2 to upstreams without negotiating it (h2c "prior
    /// knowledge"), so that all streams share one connection instead of
    /// holding an HTTP/1.1 connection each (about 25 KB of buffers per
    /// stream). For cleartext upstreams that accept HTTP/2, such as a
    /// gateway or `chatd-bench`'s mock; HTTPS upstreams negotiate HTTP/2 on
    /// their own. Streams are spread over connections by
    /// `max_streams_per_connection`. Default false.
    pub http2_prior_knowledge: bool,
    /// Most streams one upstream connection carries before chatd opens
    /// another (HTTP/2: HTTPS providers that negotiate it, and
    /// `http2_prior_knowledge`). Servers cap the concurrent streams of a
    /// connection, hosted APIs at about 100 to 256, and streams beyond the
    /// cap wait for a free one. 0: no limit, one connection per host.
    /// Default 100.
    pub max_streams_per_connection: u32,
    /// Which HTTP client sends the streaming requests (`CHATD_LLM_TRANSPORT`):
    /// `auto` (default) or `reqwest`. See [`LlmTransport`].
    pub transport: LlmTransport,
    /// Most attempts of one model round on one provider (the first try
    /// included) when it fails with a retryable error before its first chunk.
    pub max_attempts: u32,
    /// Base delay in ms of the exponential backoff between attempts
    /// (`retry_base_ms * 2^(attempt-1)`, with full jitter).
    pub retry_base_ms: u64,
    /// Largest delay in ms between attempts. A `Retry-After` longer than this
    /// makes chatd give up on that provider instead of waiting.
    pub retry_max_ms: u64,
    /// Whether a round that failed on one provider moves on to the next
    /// providers that list the same model.
    pub fallback: bool,
    /// Longest line in bytes accepted from the upstream SSE stream; a longer
    /// line fails the reply with `upstream_error` instead of growing memory.
    pub max_line_bytes: usize,
    /// How the per-request `thinking` switch is sent upstream.
    pub thinking_style: ThinkingStyle,
}

/// Which HTTP client sends the streaming chat requests (`llm.transport`):
/// `"auto"` or `"reqwest"`. Any other value is a configuration error that
/// lists these two ("unknown variant `h2`, expected `auto` or `reqwest`").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LlmTransport {
    /// chatd's own pooled HTTP/1.1 connections, read by the reply's task,
    /// for a cleartext `http://` upstream when `http2_prior_knowledge` is
    /// off and no `HTTP_PROXY`/`ALL_PROXY` is set; reqwest for the others
    /// (HTTPS, HTTP/2, a proxy).
    #[default]
    Auto,
    /// reqwest for every upstream: the inline HTTP/1.1 connections are
    /// never used.
    Reqwest,
}

impl<'de> Deserialize<'de> for LlmTransport {
    // By hand: the config crate's own message for an unknown enum value
    // does not name the choices.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        match name.as_str() {
            "auto" => Ok(LlmTransport::Auto),
            "reqwest" => Ok(LlmTransport::Reqwest),
            other => Err(serde::de::Error::unknown_variant(other, &["auto", "reqwest"])),
        }
    }
}

/// One named OpenAI-compatible upstream (a `[[providers]]` table).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Unique name, used in requests and in `GET /api/models`.
    pub name: String,
    /// Base URL ending before `/chat/completions`, `http://` or `https://`.
    pub base_url: String,
    /// Bearer token sent upstream; `None` sends no `Authorization` header.
    /// [`Config::load_with_env`] fills it from `api_key_env` when that is set.
    #[serde(default)]
    pub api_key: Option<String>,
    /// Name of the environment variable holding the bearer token; read once at
    /// load. Setting both `api_key` and `api_key_env` in the file is an error,
    /// and so is naming a variable that is not set.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Model names this provider serves; used to route a request that names
    /// only a model, and to pick fallbacks.
    #[serde(default)]
    pub models: Vec<String>,
    /// Model used when a request names this provider but no model.
    #[serde(default)]
    pub default_model: Option<String>,
    /// Extra HTTP headers sent with every request to this provider (e.g.
    /// `HTTP-Referer`, `X-Title`, `api-version`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// Request fields used to switch a model's reasoning on or off. Providers
/// differ; a provider that does not know the field ignores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThinkingStyle {
    /// `chat_template_kwargs: {enable_thinking: bool}` (vLLM, SGLang, llama.cpp
    /// with Qwen3-style templates).
    ChatTemplateKwargs,
    /// `reasoning_effort: "medium"` when on, `"low"` when off (OpenAI o-series,
    /// and servers that copy its API).
    ReasoningEffort,
    /// Never send anything; `thinking` is stored but has no effect upstream.
    None,
}

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

/// Tool execution limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ToolsConfig {
    /// Longest run of one tool call in ms before it fails with a timeout.
    pub timeout_ms: u64,
    /// Most tool calls of one round running at once.
    pub concurrency: usize,
    /// Longest tool result in bytes; longer output is cut on a character
    /// boundary and marked as truncated.
    pub max_output_bytes: usize,
    /// Directory holding one workspace per project (`<root>/<project_id>`),
    /// used by the workspace and document-search tools. Created on demand.
    pub workspace_root: std::path::PathBuf,
    /// Per-tool approval policy, overriding each tool's default
    /// (`write_file` and MCP tools ask; the others run automatically).
    pub approval: std::collections::BTreeMap<String, crate::domain::Approval>,
    /// How long in ms a reply waits for an approval before the call counts
    /// as declined.
    pub approval_timeout_ms: u64,
    /// Largest file, in bytes, that `read_file` returns or `write_file`
    /// writes, and that the document index reads.
    pub max_file_bytes: u64,
    /// Most bytes a project workspace may hold; a write that would pass it
    /// is refused.
    pub workspace_quota_bytes: u64,
    /// `fetch_url` limits.
    pub fetch: FetchConfig,
}

/// Limits of the `fetch_url` tool.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FetchConfig {
    /// Longest fetch in ms, redirects included.
    pub timeout_ms: u64,
    /// Most bytes read from a response body; the rest is cut.
    pub max_bytes: u64,
    /// Most redirects followed (each target is checked again).
    pub max_redirects: u32,
    /// Hosts (names or IPs, exact match) fetched even when they resolve to a
    /// loopback, private, link-local or metadata address.
    pub allow_hosts: Vec<String>,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            timeout_ms: 10_000,
            max_bytes: 2 * 1024 * 1024,
            max_redirects: 5,
            allow_hosts: Vec::new(),
        }
    }
}

/// One MCP server (a `[[mcp_servers]]` table): either a child process
/// speaking MCP over stdio (`command`, `args`, `env`) or a streamable-HTTP
/// endpoint (`url`, `headers`). Its tools are registered as
/// `<name>__<tool>`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServerConfig {
    /// Unique name, `^[A-Za-z0-9_-]{1,32}$`; prefixes its tools' names.
    pub name: String,
    /// Program to start (stdio transport).
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Endpoint URL (streamable HTTP transport).
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Longest run of one call in ms (default: `tools.timeout_ms`).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

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
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: "sqlite://chatd.db".to_string(),
            llm: LlmConfig::default(),
            providers: Vec::new(),
            mcp_servers: Vec::new(),
            chat: ChatConfig::default(),
            tools: ToolsConfig::default(),
            http: HttpConfig::default(),
            auth: AuthMode::Keys,
            api_keys: Vec::new(),
            limits: LimitsConfig::default(),
        }
    }
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            base_url: "http://127.0.0.1:11434/v1".to_string(),
            api_key: String::new(),
            model: String::new(),
            first_chunk_timeout_ms: 60_000,
            idle_timeout_ms: 60_000,
            connect_timeout_ms: 10_000,
            http2_prior_knowledge: false,
            max_streams_per_connection: 100,
            transport: LlmTransport::Auto,
            max_attempts: 3,
            retry_base_ms: 250,
            retry_max_ms: 8_000,
            fallback: true,
            max_line_bytes: 4 * 1024 * 1024,
            thinking_style: ThinkingStyle::ChatTemplateKwargs,
        }
    }
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
        }
    }
}

impl Default for ToolsConfig {
    fn default() -> Self {
        Self {
            timeout_ms: 30_000,
            concurrency: 8,
            max_output_bytes: 64 * 1024,
            workspace_root: std::path::PathBuf::from("workspaces"),
            approval: std::collections::BTreeMap::new(),
            approval_timeout_ms: 300_000,
            max_file_bytes: 1024 * 1024,
            workspace_quota_bytes: 100 * 1024 * 1024,
            fetch: FetchConfig::default(),
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
        }
    }
}

/// Environment variables and the setting each one overrides.
const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("CHATD_LISTEN", "listen"),
    ("CHATD_DATABASE_URL", "database_url"),
    ("CHATD_LLM_BASE_URL", "llm.base_url"),
    ("CHATD_LLM_API_KEY", "llm.api_key"),
    ("CHATD_LLM_MODEL", "llm.model"),
    ("CHATD_LLM_IDLE_TIMEOUT_MS", "llm.idle_timeout_ms"),
    ("CHATD_LLM_TRANSPORT", "llm.transport"),
    ("CHATD_MAX_ITERATIONS", "chat.max_iterations"),
    ("CHATD_AUTH", "auth"),
    ("CHATD_METRICS_LISTEN", "http.metrics_listen"),
    ("CHATD_LOG_FORMAT", "http.log_format"),
];

impl Config {
    /// Loads defaults, then `file` (TOML) if given, then the process
    /// environment. Errors name the file or variable and the bad value.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, |name| std::env::var(name).ok())
    }

    /// Like [`Config::load`] with the environment supplied by `env`, so tests
    /// need not touch the process environment.
    pub fn load_with_env(file: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml).required(true));
        }
        for (var, key) in ENV_OVERRIDES {
            builder = builder.set_override_option(*key, env(var))?;
        }
        let api_key_set = env("CHATD_LLM_API_KEY").is_some();
        let mut config: Config = builder.build()?.try_deserialize()?;
        if !api_key_set
            && config.llm.api_key.is_empty()
            && let Some(key) = env("OPENAI_API_KEY")
        {
            config.llm.api_key = key;
        }
        if let Some(keys) = env("CHATD_API_KEYS") {
            config.api_keys = keys
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(String::from)
                .collect();
        }
        for (i, provider) in config.providers.iter_mut().enumerate() {
            provider.resolve_api_key(i, &env)?;
        }
        config.validate()?;
        Ok(config)
    }

    /// The providers in order of preference: the `[[providers]]` tables, or,
    /// when there are none, one provider named [`DEFAULT_PROVIDER`] built from
    /// `[llm]` (`base_url`, `api_key`, and `model` as its `default_model`).
    pub fn effective_providers(&self) -> Vec<ProviderConfig> {
        if !self.providers.is_empty() {
            return self.providers.clone();
        }
        let llm = &self.llm;
        vec![ProviderConfig {
            name: DEFAULT_PROVIDER.to_string(),
            base_url: llm.base_url.clone(),
            api_key: (!llm.api_key.is_empty()).then(|| llm.api_key.clone()),
            api_key_env: None,
            models: Vec::new(),
            default_model: (!llm.model.trim().is_empty()).then(|| llm.model.clone()),
            headers: BTreeMap::new(),
        }]
    }

    /// Checks ranges that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |msg: &str| Err(ConfigError::Invalid(msg.to_string()));
        if self.chat.max_iterations == 0 {
            return bad("chat.max_iterations must be at least 1");
        }
        if self.limits.requests_per_minute == 0 || self.limits.concurrent_replies == 0 {
            return bad("limits.requests_per_minute and limits.concurrent_replies must be at least 1");
        }
        if self.api_keys.iter().any(|k| k.len() < 16) {
            return bad("every API key must be at least 16 characters long");
        }
        if self.auth == AuthMode::Keys && self.api_keys.is_empty() && !self.listen.ip().is_loopback() {
            return Err(ConfigError::Invalid(format!(
                "listen = {} is not a loopback address and no API key is configured: set CHATD_API_KEYS \
                 (or api_keys), or say auth = \"none\" (CHATD_AUTH=none) to run without authentication",
                self.listen
            )));
        }
        if self.tools.concurrency == 0 {
            return bad("tools.concurrency must be at least 1");
        }
        if self.llm.idle_timeout_ms == 0
            || self.llm.first_chunk_timeout_ms == 0
            || self.llm.connect_timeout_ms == 0
            || self.tools.timeout_ms == 0
        {
            return bad("timeouts must be at least 1 ms");
        }
        if self.llm.max_attempts == 0 {
            return bad("llm.max_attempts must be at least 1");
        }
        if self.llm.retry_base_ms > self.llm.retry_max_ms {
            return bad("llm.retry_base_ms must not be larger than llm.retry_max_ms");
        }
        if self.chat.flush_interval_ms == 0 {
            return bad("chat.flush_interval_ms must be at least 1");
        }
        if self.chat.keepalive_interval_ms == 0 {
            return bad("chat.keepalive_interval_ms must be at least 1");
        }
        if !self.llm.base_url.starts_with("http://") && !self.llm.base_url.starts_with("https://") {
            return bad("llm.base_url must start with http:// or https://");
        }
        if !self.database_url.starts_with("sqlite:") {
            return bad("database_url must be a SQLite URL such as sqlite://chatd.db");
        }
        let mut names = HashSet::new();
        for (i, provider) in self.providers.iter().enumerate() {
            provider
                .validate()
                .map_err(|msg| ConfigError::Invalid(format!("providers[{i}] ({:?}): {msg}", provider.name)))?;
            if !names.insert(provider.name.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "providers[{i}]: the name {:?} is used twice; provider names must be unique",
                    provider.name
                )));
            }
        }
        Ok(())
    }
}

/// Headers chatd sets itself or that frame the request; a provider may not
/// override them.
const RESERVED_HEADERS: &[&str] = &[
    "content-length",
    "content-type",
    "transfer-encoding",
    "host",
    "connection",
];

impl ProviderConfig {
    /// Fills `api_key` from the variable named by `api_key_env`, looked up
    /// with `env`. Errors when both are set or the variable is not set.
    fn resolve_api_key(&mut self, index: usize, env: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let Some(var) = &self.api_key_env else {
            return Ok(());
        };
        let invalid = |msg: String| ConfigError::Invalid(format!("providers[{index}] ({:?}): {msg}", self.name));
        if self.api_key.is_some() {
            return Err(invalid("set either api_key or api_key_env, not both".to_string()));
        }
        if var.trim().is_empty() {
            return Err(invalid("api_key_env must name an environment variable".to_string()));
        }
        match env(var) {
            Some(key) => {
                self.api_key = Some(key);
                Ok(())
            }
            None => Err(invalid(format!("api_key_env names {var}, which is not set"))),
        }
    }

    /// Checks one provider; the error text names the bad field.
    fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("name must not be blank".into());
        }
        if !self.base_url.starts_with("http://") && !self.base_url.starts_with("https://") {
            return Err(format!(
                "base_url must start with http:// or https://, got {:?}",
                self.base_url
            ));
        }
        if self.models.iter().any(|m| m.trim().is_empty()) {
            return Err("models must not contain a blank name".into());
        }
        if self.default_model.as_deref().is_some_and(|m| m.trim().is_empty()) {
            return Err("default_model must not be blank; leave it out instead".into());
        }
        let has_key = self.api_key.as_deref().is_some_and(|k| !k.is_empty());
        for (name, value) in &self.headers {
            let parsed = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("headers: {name:?} is not a valid HTTP header name"))?;
            if RESERVED_HEADERS.contains(&parsed.as_str()) {
                return Err(format!("headers: {name:?} is set by chatd and cannot be configured"));
            }
            if parsed == reqwest::header::AUTHORIZATION && has_key {
                return Err("headers: Authorization conflicts with api_key/api_key_env; set only one".into());
            }
            HeaderValue::from_str(value)
                .map_err(|_| format!("headers: the value of {name:?} is not a valid HTTP header value"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults_match_the_documented_values() {
        let c = Config::load_with_env(None, env(&[])).expect("defaults load");
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.llm.base_url, "http://127.0.0.1:11434/v1");
        assert_eq!(c.llm.idle_timeout_ms, 60_000);
        assert_eq!(c.chat.max_iterations, 20);
        assert_eq!(c.chat.on_disconnect, OnDisconnect::Continue);
        assert_eq!(c.http.max_body_bytes, 1024 * 1024);
    }

    #[test]
    fn file_then_env_override() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\n[llm]\nmodel = \"from-file\"\napi_key = \"file-key\"\n[chat]\nmax_iterations = 3\non_disconnect = \"cancel\"\n",
        )
        .expect("write");
        let c = Config::load_with_env(
            Some(&path),
            env(&[
                ("CHATD_LLM_MODEL", "from-env"),
                ("CHATD_LLM_IDLE_TIMEOUT_MS", "1500"),
                ("OPENAI_API_KEY", "ignored-because-file-sets-one"),
            ]),
        )
        .expect("load");
        assert_eq!(c.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(c.llm.model, "from-env");
        assert_eq!(c.llm.idle_timeout_ms, 1500);
        assert_eq!(c.llm.api_key, "file-key");
        assert_eq!(c.chat.max_iterations, 3);
        assert_eq!(c.chat.on_disconnect, OnDisconnect::Cancel);
    }

    #[test]
    fn openai_api_key_is_the_fallback() {
        let c = Config::load_with_env(None, env(&[("OPENAI_API_KEY", "sk-x")])).expect("load");
        assert_eq!(c.llm.api_key, "sk-x");
        let c = Config::load_with_env(None, env(&[("OPENAI_API_KEY", "sk-x"), ("CHATD_LLM_API_KEY", "sk-y")]))
            .expect("load");
        assert_eq!(c.llm.api_key, "sk-y");
    }

    #[test]
    fn the_example_file_loads_and_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
        let c = Config::load_with_env(Some(&path), env(&[])).expect("example loads");
        let d = Config::default();
        assert_eq!(
            format!("{c:?}"),
            format!("{d:?}"),
            "config.example.toml documents the defaults"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[llm]\nmodle = \"typo\"\n").expect("write");
        let err = Config::load_with_env(Some(&path), env(&[])).expect_err("typo rejected");
        assert!(err.to_string().contains("modle"), "{err}");

        let err = Config::load_with_env(None, env(&[("CHATD_MAX_ITERATIONS", "0")])).expect_err("zero rejected");
        assert!(err.to_string().contains("max_iterations"), "{err}");

        let err = Config::load_with_env(None, env(&[("CHATD_LISTEN", "nope")])).expect_err("bad address rejected");
        assert!(err.to_string().contains("listen"), "{err}");
    }

    fn write(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).expect("write");
        path
    }

    #[test]
    fn resilience_defaults() {
        let c = Config::load_with_env(None, env(&[])).expect("defaults load");
        assert_eq!(c.llm.first_chunk_timeout_ms, 60_000);
        assert_eq!(c.llm.idle_timeout_ms, 60_000);
        assert_eq!(c.llm.connect_timeout_ms, 10_000);
        assert_eq!(c.llm.max_attempts, 3);
        assert_eq!(c.llm.retry_base_ms, 250);
        assert_eq!(c.llm.retry_max_ms, 8_000);
        assert!(c.llm.fallback);
        assert!(c.providers.is_empty());
    }

    #[test]
    fn without_providers_llm_is_the_default_provider() {
        let c = Config::load_with_env(
            None,
            env(&[
                ("CHATD_LLM_BASE_URL", "https://api.example.com/v1"),
                ("CHATD_LLM_API_KEY", "sk-env"),
                ("CHATD_LLM_MODEL", "gpt-x"),
            ]),
        )
        .expect("load");
        assert_eq!(
            c.effective_providers(),
            vec![ProviderConfig {
                name: DEFAULT_PROVIDER.to_string(),
                base_url: "https://api.example.com/v1".to_string(),
                api_key: Some("sk-env".to_string()),
                api_key_env: None,
                models: vec![],
                default_model: Some("gpt-x".to_string()),
                headers: BTreeMap::new(),
            }]
        );
        let c = Config::load_with_env(None, env(&[])).expect("load");
        let p = &c.effective_providers()[0];
        assert_eq!((p.api_key.as_deref(), p.default_model.as_deref()), (None, None));
    }

    #[test]
    fn providers_load_in_order_with_keys_from_the_env_function() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(
            &dir,
            r#"
[llm]
model = "global"
max_attempts = 5
retry_base_ms = 10
retry_max_ms = 20
fallback = false
first_chunk_timeout_ms = 1234

[[providers]]
name = "local"
base_url = "http://127.0.0.1:11434/v1"
models = ["llama3", "qwen3"]

[[providers]]
name = "router"
base_url = "https://openrouter.example/api/v1"
api_key_env = "ROUTER_KEY"
default_model = "qwen3"
headers = { "X-Title" = "chatd", "HTTP-Referer" = "https://example.com" }
"#,
        );
        let c = Config::load_with_env(Some(&path), env(&[("ROUTER_KEY", "sk-router")])).expect("load");
        assert_eq!(
            (c.llm.max_attempts, c.llm.retry_base_ms, c.llm.retry_max_ms),
            (5, 10, 20)
        );
        assert!(!c.llm.fallback);
        assert_eq!(c.llm.first_chunk_timeout_ms, 1234);
        let names: Vec<_> = c.effective_providers().into_iter().map(|p| p.name).collect();
        assert_eq!(
            names,
            ["local", "router"],
            "[llm] is not a provider once [[providers]] exist"
        );
        let local = &c.providers[0];
        assert_eq!(local.models, ["llama3", "qwen3"]);
        assert_eq!((local.api_key.as_deref(), local.default_model.as_deref()), (None, None));
        let router = &c.providers[1];
        assert_eq!(router.api_key.as_deref(), Some("sk-router"));
        assert_eq!(router.api_key_env.as_deref(), Some("ROUTER_KEY"));
        assert_eq!(router.default_model.as_deref(), Some("qwen3"));
        let headers: Vec<(String, String)> = router
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        assert_eq!(
            headers,
            [
                ("http-referer".to_string(), "https://example.com".to_string()),
                ("x-title".to_string(), "chatd".to_string())
            ]
        );
    }

    #[test]
    fn bad_providers_are_rejected_with_the_field_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = "[[providers]]\nname = \"a\"\nbase_url = \"http://a\"\n";
        let cases: Vec<(String, &str)> = vec![
            ("[[providers]]\nbase_url = \"http://a\"\n".into(), "name"),
            ("[[providers]]\nname = \"a\"\n".into(), "base_url"),
            (format!("{p}modle = \"x\"\n"), "modle"),
            (
                "[[providers]]\nname = \"a\"\nbase_url = \"ftp://a\"\n".into(),
                "base_url",
            ),
            ("[[providers]]\nname = \" \"\nbase_url = \"http://a\"\n".into(), "name"),
            (format!("{p}{p}"), "used twice"),
            (format!("{p}api_key = \"k\"\napi_key_env = \"K\"\n"), "not both"),
            (format!("{p}api_key_env = \"UNSET\"\n"), "UNSET"),
            (format!("{p}models = [\"\"]\n"), "models"),
            (format!("{p}default_model = \"\"\n"), "default_model"),
            (format!("{p}headers = {{ \"bad header\" = \"x\" }}\n"), "header name"),
            (
                format!("{p}headers = {{ \"x-ok\" = \"line\\nbreak\" }}\n"),
                "header value",
            ),
            (
                format!("{p}headers = {{ \"Content-Type\" = \"text/plain\" }}\n"),
                "set by chatd",
            ),
            (
                format!("{p}api_key = \"k\"\nheaders = {{ \"Authorization\" = \"x\" }}\n"),
                "Authorization",
            ),
            ("[llm]\nmax_attempts = 0\n".into(), "max_attempts"),
            ("[llm]\nretry_base_ms = 9000\n".into(), "retry_base_ms"),
            ("[llm]\nfirst_chunk_timeout_ms = 0\n".into(), "timeouts"),
            ("[llm]\nfallbak = true\n".into(), "fallbak"),
        ];
        for (text, needle) in &cases {
            let path = write(&dir, text);
            let err = Config::load_with_env(Some(&path), env(&[])).expect_err(text);
            assert!(err.to_string().contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn an_authorization_header_alone_is_allowed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(
            &dir,
            "[[providers]]\nname = \"a\"\nbase_url = \"http://a\"\nheaders = { \"Authorization\" = \"Token t\" }\n",
        );
        let c = Config::load_with_env(Some(&path), env(&[])).expect("load");
        assert_eq!(c.providers[0].headers.len(), 1);
    }

    #[test]
    fn llm_transport_is_auto_or_reqwest_from_the_file_or_the_env() {
        let c = Config::load_with_env(None, env(&[])).expect("defaults load");
        assert_eq!(c.llm.transport, LlmTransport::Auto);
        let c = Config::load_with_env(None, env(&[("CHATD_LLM_TRANSPORT", "reqwest")])).expect("load");
        assert_eq!(c.llm.transport, LlmTransport::Reqwest);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(&dir, "[llm]\ntransport = \"reqwest\"\n");
        let c = Config::load_with_env(Some(&path), env(&[])).expect("load");
        assert_eq!(c.llm.transport, LlmTransport::Reqwest);
        let path = write(&dir, "[llm]\ntransport = \"h2\"\n");
        let err = Config::load_with_env(Some(&path), env(&[])).expect_err("unknown transport");
        let text = err.to_string();
        assert!(
            text.contains("unknown variant `h2`, expected `auto` or `reqwest`") && text.contains("llm.transport"),
            "{text}"
        );
        let err =
            Config::load_with_env(None, env(&[("CHATD_LLM_TRANSPORT", "inline")])).expect_err("unknown transport");
        assert!(err.to_string().contains("`reqwest`"), "{err}");
    }
}
