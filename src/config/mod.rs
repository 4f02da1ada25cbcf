//! Typed configuration: built-in defaults, then an optional TOML file, then
//! `CHATD_*` environment variables (highest priority).
//!
//! Every setting is documented in `config.example.toml` at the repository root.
//! Unknown keys in the file are rejected, so a typo never silently falls back
//! to a default.
//!
//! [`Config`] holds one section per component, each in its own file with its
//! defaults and its own `validate`: [`LlmConfig`] and [`ProviderConfig`]
//! (`llm.rs`), [`ChatConfig`] (`chat.rs`), [`ToolsConfig`] and
//! [`McpServerConfig`] (`tools.rs`), [`HttpConfig`], [`AuthMode`] and
//! [`LimitsConfig`] (`http.rs`). Checks that several sections share (an
//! `http(s)://` URL, configured HTTP headers) are in `checks.rs`. Other
//! components use these checked values, or the same checks through
//! [`ProviderConfig::validate`], [`validate_providers`] and
//! [`McpServerConfig::validate`], instead of checking again on their own.

mod chat;
mod checks;
mod http;
mod llm;
mod tools;

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

pub use chat::{ChatConfig, OnDisconnect};
pub use http::{AuthMode, HttpConfig, LimitsConfig, LogFormat};
pub use llm::{
    DEFAULT_PROVIDER, LlmConfig, LlmTransport, ProviderCheckError, ProviderConfig, ThinkingStyle, validate_providers,
};
pub use tools::{FetchConfig, McpServerConfig, ToolsConfig};

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

/// `Err(ConfigError::Invalid(msg))`: how the sections' checks refuse a value.
fn invalid<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError::Invalid(msg.into()))
}

impl From<ProviderCheckError> for ConfigError {
    fn from(e: ProviderCheckError) -> Self {
        Self::Invalid(e.to_string())
    }
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
    ("CHATD_HTTP_MAX_CONNECTIONS", "http.max_connections"),
    ("CHATD_HTTP_LISTEN_BACKLOG", "http.listen_backlog"),
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
    /// `[llm]` (`base_url`, `api_key`, and `model` as its `default_model`;
    /// see [`LlmConfig::default_provider`]).
    pub fn effective_providers(&self) -> Vec<ProviderConfig> {
        if self.providers.is_empty() {
            vec![self.llm.default_provider()]
        } else {
            self.providers.clone()
        }
    }

    /// Checks ranges that serde cannot express: each section's own checks
    /// (`chat`, `limits`, `auth`/`api_keys`/`listen`, `tools`, `llm`), the
    /// SQLite `database_url`, and [`validate_providers`]. `mcp_servers` are
    /// not checked here: a bad entry makes only that server unavailable
    /// (see [`McpServerConfig::validate`]).
    ///
    /// Errors: the first problem found, as [`ConfigError::Invalid`] naming
    /// the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.chat.validate()?;
        self.limits.validate()?;
        self.http.validate()?;
        self.auth.validate(&self.api_keys, self.listen)?;
        self.tools.validate()?;
        self.llm.validate()?;
        if !self.database_url.starts_with("sqlite:") {
            return invalid("database_url must be a SQLite URL such as sqlite://chatd.db");
        }
        validate_providers(&self.providers)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
