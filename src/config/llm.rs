//! `[llm]` and `[[providers]]`: the OpenAI-compatible upstreams, their
//! timeouts and retries, and the one provider check
//! ([`ProviderConfig::validate`], [`validate_providers`]).

use std::collections::{BTreeMap, HashSet};

use reqwest::header::{AUTHORIZATION, HeaderMap};
use serde::Deserialize;

use super::checks::{header_map, http_url};
use super::{ConfigError, invalid};

/// Name of the single provider built from the `[llm]` section when no
/// `[[providers]]` are configured.
pub const DEFAULT_PROVIDER: &str = "default";

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
    /// [`super::Config::load_with_env`] fills it from `api_key_env` when that
    /// is set.
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

impl LlmConfig {
    /// Checks the ranges serde cannot express: timeouts of at least 1 ms,
    /// `max_attempts` at least 1, `retry_base_ms <= retry_max_ms`, and an
    /// `http(s)://` `base_url`. Errors: [`ConfigError::Invalid`].
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.idle_timeout_ms == 0 || self.first_chunk_timeout_ms == 0 || self.connect_timeout_ms == 0 {
            return invalid("timeouts must be at least 1 ms");
        }
        if self.max_attempts == 0 {
            return invalid("llm.max_attempts must be at least 1");
        }
        if self.retry_base_ms > self.retry_max_ms {
            return invalid("llm.retry_base_ms must not be larger than llm.retry_max_ms");
        }
        http_url("llm.base_url", &self.base_url).or_else(invalid)
    }

    /// The provider named [`DEFAULT_PROVIDER`] that `[llm]` stands for when
    /// no `[[providers]]` are configured: its `base_url`, its `api_key`
    /// (`None` when empty) and its `model` as `default_model` (`None` when
    /// blank).
    pub fn default_provider(&self) -> ProviderConfig {
        ProviderConfig {
            name: DEFAULT_PROVIDER.to_string(),
            base_url: self.base_url.clone(),
            api_key: (!self.api_key.is_empty()).then(|| self.api_key.clone()),
            api_key_env: None,
            models: Vec::new(),
            default_model: (!self.model.trim().is_empty()).then(|| self.model.clone()),
            headers: BTreeMap::new(),
        }
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

/// Why [`validate_providers`] refused a list of providers. The `Display`
/// text names the provider's index and name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderCheckError {
    /// The provider at `index` failed [`ProviderConfig::validate`] (or its
    /// `api_key_env` could not be resolved); `reason` names the field.
    #[error("providers[{index}] ({name:?}): {reason}")]
    Invalid {
        /// Position in the list.
        index: usize,
        /// The provider's name.
        name: String,
        /// What is wrong, naming the field.
        reason: String,
    },
    /// The provider at `index` repeats an earlier provider's name.
    #[error("providers[{index}]: the name {name:?} is used twice; provider names must be unique")]
    Duplicate {
        /// Position in the list.
        index: usize,
        /// The repeated name.
        name: String,
    },
}

impl ProviderCheckError {
    /// The name of the provider at fault.
    pub fn name(&self) -> &str {
        match self {
            Self::Invalid { name, .. } | Self::Duplicate { name, .. } => name,
        }
    }

    /// What is wrong, without the index and name.
    pub fn reason(&self) -> String {
        match self {
            Self::Invalid { reason, .. } => reason.clone(),
            Self::Duplicate { .. } => "the name is used twice; provider names must be unique".to_string(),
        }
    }
}

/// The provider check for a whole list: every provider passes
/// [`ProviderConfig::validate`] and no name is used twice. Used by
/// [`super::Config::validate`] and by the LLM layer for configs built by
/// hand. Errors: the first [`ProviderCheckError`], in list order.
pub fn validate_providers(providers: &[ProviderConfig]) -> Result<(), ProviderCheckError> {
    let mut names = HashSet::new();
    for (index, provider) in providers.iter().enumerate() {
        provider.validate().map_err(|reason| ProviderCheckError::Invalid {
            index,
            name: provider.name.clone(),
            reason,
        })?;
        if !names.insert(provider.name.as_str()) {
            return Err(ProviderCheckError::Duplicate {
                index,
                name: provider.name.clone(),
            });
        }
    }
    Ok(())
}

impl ProviderConfig {
    /// Fills `api_key` from the variable named by `api_key_env`, looked up
    /// with `env`. Errors when both are set or the variable is not set.
    pub(super) fn resolve_api_key(
        &mut self,
        index: usize,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<(), ProviderCheckError> {
        let Some(var) = &self.api_key_env else {
            return Ok(());
        };
        let invalid = |reason: String| ProviderCheckError::Invalid {
            index,
            name: self.name.clone(),
            reason,
        };
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

    /// Checks one provider: a non-blank name, an `http(s)://` base URL, no
    /// blank model names, and valid extra headers ([`Self::header_map`]).
    /// Errors: a text that names the bad field.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("name must not be blank".into());
        }
        http_url("base_url", &self.base_url).map_err(|e| format!("{e}, got {:?}", self.base_url))?;
        if self.models.iter().any(|m| m.trim().is_empty()) {
            return Err("models must not contain a blank name".into());
        }
        if self.default_model.as_deref().is_some_and(|m| m.trim().is_empty()) {
            return Err("default_model must not be blank; leave it out instead".into());
        }
        self.header_map().map(drop)
    }

    /// The extra `headers` as sent upstream. Errors: a name or value that is
    /// not valid HTTP, a header chatd sets itself (`Content-Type`, `Host`,
    /// ...), or `Authorization` together with a non-empty `api_key`.
    pub fn header_map(&self) -> Result<HeaderMap, String> {
        let map = header_map(&self.headers, RESERVED_HEADERS, "chatd")?;
        let has_key = self.api_key.as_deref().is_some_and(|k| !k.is_empty());
        if has_key && map.contains_key(AUTHORIZATION) {
            return Err("headers: Authorization conflicts with api_key/api_key_env; set only one".into());
        }
        Ok(map)
    }
}
