//! Typed configuration: built-in defaults, then an optional TOML file, then
//! `CHATD_*` environment variables (highest priority).
//!
//! Every setting is documented in `config.example.toml` at the repository root.
//! Unknown keys in the file are rejected, so a typo never silently falls back
//! to a default.

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

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
    /// The file is created and migrated at start.
    pub database_url: String,
    /// The OpenAI-compatible upstream.
    pub llm: LlmConfig,
    /// The reply loop.
    pub chat: ChatConfig,
    /// Tool execution.
    pub tools: ToolsConfig,
    /// HTTP limits.
    pub http: HttpConfig,
}

/// How chatd talks to the OpenAI-compatible chat-completions API.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmConfig {
    /// Base URL ending before `/chat/completions`, e.g. `http://127.0.0.1:11434/v1`
    /// (`CHATD_LLM_BASE_URL`).
    pub base_url: String,
    /// Bearer token sent upstream; empty sends none (`CHATD_LLM_API_KEY`,
    /// falling back to `OPENAI_API_KEY`).
    pub api_key: String,
    /// Model used when neither the conversation nor the request names one
    /// (`CHATD_LLM_MODEL`). Empty means a request must name a model.
    pub model: String,
    /// Longest silence in ms between upstream chunks (and before the response
    /// headers) before the reply fails with `upstream_timeout`
    /// (`CHATD_LLM_IDLE_TIMEOUT_MS`).
    pub idle_timeout_ms: u64,
    /// TCP connect timeout in ms.
    pub connect_timeout_ms: u64,
    /// Longest line in bytes accepted from the upstream SSE stream; a longer
    /// line fails the reply with `upstream_error` instead of growing memory.
    pub max_line_bytes: usize,
    /// How the per-request `thinking` switch is sent upstream.
    pub thinking_style: ThinkingStyle,
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
    /// Interval in ms between SSE keep-alive comments.
    pub keepalive_interval_ms: u64,
    /// How long in ms a finished reply's events stay replayable exactly (in
    /// memory and in the `reply_events` table); later resumes get a compact
    /// replay built from the stored message.
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
}

/// HTTP limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Largest accepted request body in bytes; larger bodies get 413.
    pub max_body_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: "sqlite://chatd.db".to_string(),
            llm: LlmConfig::default(),
            chat: ChatConfig::default(),
            tools: ToolsConfig::default(),
            http: HttpConfig::default(),
        }
    }
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            base_url: "http://127.0.0.1:11434/v1".to_string(),
            api_key: String::new(),
            model: String::new(),
            idle_timeout_ms: 60_000,
            connect_timeout_ms: 10_000,
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
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
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
    ("CHATD_MAX_ITERATIONS", "chat.max_iterations"),
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
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |msg: &str| Err(ConfigError::Invalid(msg.to_string()));
        if self.chat.max_iterations == 0 {
            return bad("chat.max_iterations must be at least 1");
        }
        if self.tools.concurrency == 0 {
            return bad("tools.concurrency must be at least 1");
        }
        if self.llm.idle_timeout_ms == 0 || self.tools.timeout_ms == 0 {
            return bad("timeouts must be at least 1 ms");
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
}
