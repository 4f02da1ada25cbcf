//! Several named upstreams: which one serves a request ([`Providers::route`]),
//! retrying and falling back between them ([`Route::open`]), and what models
//! they offer ([`Providers::list_models`]).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use serde::Serialize;

use super::retry::RetryPolicy;
use super::{ChatRequest, HttpPool, LlmClient, LlmError, StreamItem};
use crate::config::{Config, validate_providers};

/// How long [`Providers::list_models`] waits for each `GET /models`.
pub const MODEL_LIST_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors while building [`Providers`] from the configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The shared HTTP client could not be built (TLS setup failed).
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    /// A provider's settings are unusable (bad header, base URL, duplicate
    /// name); `message` names the field.
    #[error("provider {provider:?}: {message}")]
    Invalid { provider: String, message: String },
}

/// Why [`Providers::route`] found no provider or model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The request named a provider that is not configured.
    #[error("unknown provider {name:?}; the configured providers are: {}", known.join(", "))]
    UnknownProvider {
        /// The name asked for.
        name: String,
        /// Every configured provider, in order.
        known: Vec<String>,
    },
    /// Neither the request, the provider nor `llm.model` names a model.
    #[error(
        "no model for provider {provider:?}: name a model in the request, or set default_model on the provider or llm.model"
    )]
    NoModel {
        /// The provider that would have served the request.
        provider: String,
    },
}

/// One provider a route may use.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The provider's configured name.
    pub provider: String,
    /// Its client (shares the connection pool with the other providers).
    pub client: Arc<LlmClient>,
}

/// Where one model round goes: the model, and the providers to try in order
/// (the first is the primary; the rest are fallbacks). Cheap to clone and
/// `'static`, so a reply task can own it.
#[derive(Debug, Clone)]
pub struct Route {
    /// The model name sent upstream.
    pub model: String,
    /// Providers to try, in order; never empty when built by
    /// [`Providers::route`].
    pub candidates: Vec<Candidate>,
}

/// What [`Route::open`] does after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep<'a> {
    /// Try the same provider again after this delay.
    RetryAfter(Duration),
    /// Give up on this provider and try the named one.
    Fallback(&'a str),
    /// Give up: [`Route::open`] returns this attempt's error.
    GiveUp,
}

/// One failed attempt, reported to the `on_failure` callback of
/// [`Route::open`] (for logging or for telling the client).
#[derive(Debug, Clone, Copy)]
pub struct FailedAttempt<'a> {
    /// The provider that failed.
    pub provider: &'a str,
    /// Which attempt on that provider failed (1-based).
    pub attempt: u32,
    /// Why it failed.
    pub error: &'a LlmError,
    /// What happens next.
    pub next: NextStep<'a>,
}

/// A stream that has produced its first item, from [`Route::open`].
pub struct Opened {
    /// The provider serving the stream.
    pub provider: String,
    /// Attempts made in all, over every provider, the successful one
    /// included.
    pub attempts: u32,
    /// The upstream stream, starting with the item that arrived first.
    pub stream: BoxStream<'static, Result<StreamItem, LlmError>>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("provider", &self.provider)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl Route {
    /// Sends `request` (with its `model` set to [`Route::model`]) to the
    /// candidates in order until one yields a first stream item, and returns
    /// that stream with the item put back in front.
    ///
    /// A failure before the first item (connection error, HTTP error, first
    /// chunk timeout, an error object as the first event) is retried on the
    /// same provider as `policy` allows ([`RetryPolicy::delay`]); when the
    /// policy gives up on a retryable error, the next candidate is tried with
    /// a fresh attempt count. A non-retryable error ([`LlmError::Upstream`],
    /// e.g. HTTP 400) ends everything at once: another provider would most
    /// likely reject the same request. Errors after the first item are left
    /// to the caller, since output has been produced by then.
    ///
    /// `on_failure` is called after every failed attempt, before any wait.
    /// Dropping the returned future cancels the attempt in flight and any wait.
    ///
    /// Errors: the error of the last attempt; [`LlmError::Upstream`] if the
    /// route has no candidates.
    pub async fn open(
        &self,
        request: &ChatRequest,
        policy: &RetryPolicy,
        mut on_failure: impl FnMut(&FailedAttempt<'_>),
    ) -> Result<Opened, LlmError> {
        let mut total = 0u32;
        let mut last_error = None;
        for (i, candidate) in self.candidates.iter().enumerate() {
            let mut attempt = 1u32;
            loop {
                total = total.saturating_add(1);
                let error = match open_once(&candidate.client, request, &self.model).await {
                    Ok(stream) => {
                        return Ok(Opened {
                            provider: candidate.provider.clone(),
                            attempts: total,
                            stream,
                        });
                    }
                    Err(e) => e,
                };
                let next = match policy.delay(attempt, &error) {
                    Some(delay) => NextStep::RetryAfter(delay),
                    None => match self.candidates.get(i + 1) {
                        Some(next) if error.is_retryable() => NextStep::Fallback(&next.provider),
                        _ => NextStep::GiveUp,
                    },
                };
                on_failure(&FailedAttempt {
                    provider: &candidate.provider,
                    attempt,
                    error: &error,
                    next,
                });
                match next {
                    NextStep::RetryAfter(delay) => {
                        tokio::time::sleep(delay).await;
                        attempt = attempt.saturating_add(1);
                    }
                    NextStep::Fallback(_) => {
                        last_error = Some(error);
                        break;
                    }
                    NextStep::GiveUp => return Err(error),
                }
            }
        }
        Err(last_error.unwrap_or_else(|| LlmError::upstream("no provider to send the request to")))
    }
}

/// One attempt: the stream with its first item, or the error that came
/// instead.
async fn open_once(
    client: &LlmClient,
    request: &ChatRequest,
    model: &str,
) -> Result<BoxStream<'static, Result<StreamItem, LlmError>>, LlmError> {
    let mut stream = client.stream_chat_as(request, model).await?;
    match stream.next().await {
        Some(Err(e)) => Err(e),
        Some(Ok(first)) => Ok(futures::stream::iter([Ok(first)]).chain(stream).boxed()),
        None => Ok(futures::stream::empty().boxed()),
    }
}

/// What one provider offers, from [`Providers::list_models`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProviderModels {
    /// The provider's configured name.
    pub name: String,
    /// Its base URL, without any `user:password@` part.
    pub base_url: String,
    /// Its configured `models`, then its `default_model`, without duplicates.
    pub configured: Vec<String>,
    /// The ids `GET {base_url}/models` returned, in the server's order; empty
    /// when the fetch failed.
    pub listed: Vec<String>,
    /// Whether `GET /models` answered with a model list in time.
    pub reachable: bool,
    /// Why the fetch failed, when it did, as a client may see it
    /// ([`LlmError::client_message`]: no URL or address; the log has the
    /// detail).
    pub error: Option<String>,
}

impl ProviderModels {
    /// `configured`, then the `listed` ids not already in it.
    pub fn models(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::with_capacity(self.configured.len() + self.listed.len());
        for id in self.configured.iter().chain(&self.listed) {
            if !out.contains(&id.as_str()) {
                out.push(id);
            }
        }
        out
    }
}

/// One configured provider.
#[derive(Debug)]
struct Entry {
    name: String,
    client: Arc<LlmClient>,
    /// `models`, then `default_model`, without duplicates.
    models: Vec<String>,
    default_model: Option<String>,
}

impl Entry {
    fn serves(&self, model: &str) -> bool {
        self.models.iter().any(|m| m == model)
    }

    fn candidate(&self) -> Candidate {
        Candidate {
            provider: self.name.clone(),
            client: self.client.clone(),
        }
    }
}

/// Every configured upstream, in order of preference, each with its own
/// [`LlmClient`] over one shared connection pool.
#[derive(Debug)]
pub struct Providers {
    /// Never empty.
    entries: Vec<Entry>,
    fallback: bool,
    retry: RetryPolicy,
}

impl Providers {
    /// One client per entry of [`Config::effective_providers`] (the
    /// `[[providers]]` tables, or `[llm]` as the provider `"default"`), with
    /// `llm.fallback` and the retry policy of `[llm]`.
    ///
    /// Errors: [`ProviderError::Client`] when TLS cannot be set up;
    /// [`ProviderError::Invalid`] for a list that fails
    /// [`validate_providers`] (a duplicate name, a bad header or base URL,
    /// ...), the check [`Config::validate`] already made for loaded configs.
    pub fn from_config(config: &Config) -> Result<Self, ProviderError> {
        let http = HttpPool::new(&config.llm).map_err(|e| ProviderError::Client(e.to_string()))?;
        let providers = config.effective_providers();
        validate_providers(&providers).map_err(|e| ProviderError::Invalid {
            provider: e.name().to_string(),
            message: e.reason(),
        })?;
        let mut entries: Vec<Entry> = Vec::new();
        for provider in providers {
            let client = LlmClient::for_provider(http.clone(), &config.llm, &provider)?;
            let mut models: Vec<String> = Vec::new();
            for model in provider.models.iter().chain(&provider.default_model) {
                if !models.contains(model) {
                    models.push(model.clone());
                }
            }
            entries.push(Entry {
                name: provider.name,
                client: Arc::new(client),
                models,
                // Never blank: validate_providers refuses a blank default_model.
                default_model: provider.default_model,
            });
        }
        if entries.is_empty() {
            return Err(ProviderError::Invalid {
                provider: String::new(),
                message: "no provider is configured".to_string(),
            });
        }
        Ok(Self {
            entries,
            fallback: config.llm.fallback,
            retry: RetryPolicy::from_config(&config.llm),
        })
    }

    /// The provider names, in configuration order.
    pub fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|e| e.name.as_str()).collect()
    }

    /// Whether some provider lists `model` (in `models` or as its
    /// `default_model`): what may label a metric, where a request's free-form
    /// name may not.
    pub fn lists_model(&self, model: &str) -> bool {
        self.entries.iter().any(|e| e.serves(model))
    }

    /// The client of the provider called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<LlmClient>> {
        self.entries.iter().find(|e| e.name == name).map(|e| &e.client)
    }

    /// The client of the first provider (the one used when a request names
    /// neither provider nor a listed model).
    pub fn primary(&self) -> &Arc<LlmClient> {
        &self.entries[0].client
    }

    /// The retry policy of `[llm]` (`max_attempts`, `retry_base_ms`,
    /// `retry_max_ms`).
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// Whether `llm.fallback` is on.
    pub fn fallback_enabled(&self) -> bool {
        self.fallback
    }

    /// Picks the model and the providers for a request. Blank names count as
    /// not given; `default_model` is `llm.model` (blank: none).
    ///
    /// - `provider` named: it serves; the model is `model`, else its
    ///   `default_model`, else `default_model`, else the first of its
    ///   `models`.
    /// - only `model` named: the first provider that lists it (in `models` or
    ///   as `default_model`), or the first provider when none does (it is
    ///   sent any model name).
    /// - neither: the first provider, with its `default_model`, else
    ///   `default_model`.
    ///
    /// With `llm.fallback` on, the other providers that list the model follow
    /// the first candidate, in configuration order.
    ///
    /// Errors: [`RouteError::UnknownProvider`] (listing the known names);
    /// [`RouteError::NoModel`] when no model can be found.
    pub fn route(&self, provider: Option<&str>, model: Option<&str>, default_model: &str) -> Result<Route, RouteError> {
        let given = |s: Option<&str>| s.filter(|s| !s.trim().is_empty()).map(str::to_string);
        let global = given(Some(default_model));
        let model = given(model);
        let (primary, model) =
            match given(provider) {
                Some(name) => {
                    let index = self.entries.iter().position(|e| e.name == name).ok_or_else(|| {
                        RouteError::UnknownProvider {
                            name: name.clone(),
                            known: self.entries.iter().map(|e| e.name.clone()).collect(),
                        }
                    })?;
                    let entry = &self.entries[index];
                    let model = model
                        .or_else(|| entry.default_model.clone())
                        .or(global)
                        .or_else(|| entry.models.first().cloned())
                        .ok_or(RouteError::NoModel { provider: name })?;
                    (index, model)
                }
                None => match model {
                    Some(model) => (self.entries.iter().position(|e| e.serves(&model)).unwrap_or(0), model),
                    None => {
                        let first = &self.entries[0];
                        let model = first
                            .default_model
                            .clone()
                            .or(global)
                            .ok_or_else(|| RouteError::NoModel {
                                provider: first.name.clone(),
                            })?;
                        (0, model)
                    }
                },
            };
        let mut candidates = vec![self.entries[primary].candidate()];
        if self.fallback {
            candidates.extend(
                self.entries
                    .iter()
                    .enumerate()
                    .filter(|(i, e)| *i != primary && e.serves(&model))
                    .map(|(_, e)| e.candidate()),
            );
        }
        Ok(Route { model, candidates })
    }

    /// For each provider, in order: its configured models and the ids of its
    /// `GET /models`, fetched concurrently with a [`MODEL_LIST_TIMEOUT`] (2 s)
    /// limit each. Never fails: a provider whose fetch failed has
    /// `reachable: false` and the reason in `error`.
    pub async fn list_models(&self) -> Vec<ProviderModels> {
        self.list_models_within(MODEL_LIST_TIMEOUT).await
    }

    /// [`Providers::list_models`] with `limit` instead of 2 s per fetch.
    pub async fn list_models_within(&self, limit: Duration) -> Vec<ProviderModels> {
        let fetches = self.entries.iter().map(|entry| async move {
            let fetched = entry.client.list_models(limit).await;
            if let Err(e) = &fetched {
                tracing::warn!(provider = %entry.name, error = %e, "GET /models failed");
            }
            let (listed, error) = match fetched {
                Ok(ids) => (ids, None),
                Err(e) => (Vec::new(), Some(e.client_message())),
            };
            ProviderModels {
                name: entry.name.clone(),
                base_url: without_credentials(entry.client.base_url()),
                configured: entry.models.clone(),
                listed,
                reachable: error.is_none(),
                error,
            }
        });
        futures::future::join_all(fetches).await
    }
}

/// `url` without a `user:password@` part, for display.
fn without_credentials(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
            // Both only fail for URLs that cannot have credentials at all.
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string().trim_end_matches('/').to_string()
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProviderConfig;

    fn provider(name: &str, models: &[&str], default_model: Option<&str>) -> ProviderConfig {
        ProviderConfig {
            name: name.to_string(),
            base_url: format!("http://127.0.0.1:9/{name}"),
            api_key: None,
            api_key_env: None,
            models: models.iter().map(|m| m.to_string()).collect(),
            default_model: default_model.map(str::to_string),
            headers: Default::default(),
        }
    }

    fn providers(list: Vec<ProviderConfig>, fallback: bool) -> Providers {
        let mut config = Config {
            providers: list,
            ..Config::default()
        };
        config.llm.fallback = fallback;
        Providers::from_config(&config).expect("providers build")
    }

    fn names(route: &Route) -> Vec<&str> {
        route.candidates.iter().map(|c| c.provider.as_str()).collect()
    }

    fn three(fallback: bool) -> Providers {
        providers(
            vec![
                provider("a", &["m1"], Some("a-default")),
                provider("b", &["m1", "m2"], None),
                provider("c", &["m2", "m3"], Some("m3")),
            ],
            fallback,
        )
    }

    #[test]
    fn a_named_provider_serves_with_fallbacks_that_list_the_model() {
        let p = three(true);
        let r = p.route(Some("b"), Some("m1"), "").expect("route");
        assert_eq!((r.model.as_str(), names(&r)), ("m1", vec!["b", "a"]));
        let r = p.route(Some("b"), Some("m2"), "").expect("route");
        assert_eq!((r.model.as_str(), names(&r)), ("m2", vec!["b", "c"]));
        let r = p.route(Some("a"), None, "global").expect("route");
        assert_eq!(
            (r.model.as_str(), names(&r)),
            ("a-default", vec!["a"]),
            "provider default first"
        );
        let r = p.route(Some("b"), None, "global").expect("route");
        assert_eq!(r.model, "global", "then the global default");
        let r = p.route(Some("b"), Some(" "), "").expect("route");
        assert_eq!(r.model, "m1", "then the provider's first model; blank means not given");
        let r = p.route(Some("c"), None, "").expect("route");
        assert_eq!((r.model.as_str(), names(&r)), ("m3", vec!["c"]));

        let without_fallback = three(false);
        let r = without_fallback.route(Some("b"), Some("m1"), "").expect("route");
        assert_eq!(names(&r), ["b"]);
    }

    #[test]
    fn unknown_providers_and_missing_models_are_errors() {
        let p = three(true);
        let err = p.route(Some("zzz"), Some("m1"), "").expect_err("unknown");
        assert_eq!(
            err,
            RouteError::UnknownProvider {
                name: "zzz".into(),
                known: vec!["a".into(), "b".into(), "c".into()]
            }
        );
        assert!(err.to_string().contains("a, b, c"), "{err}");

        let bare = providers(vec![provider("x", &[], None), provider("y", &["m"], None)], true);
        let no_model = RouteError::NoModel { provider: "x".into() };
        assert_eq!(bare.route(Some("x"), None, "").expect_err("no model"), no_model);
        assert_eq!(bare.route(None, None, " ").expect_err("no model"), no_model);
        let r = bare.route(None, None, "g").expect("global default");
        assert_eq!((r.model.as_str(), names(&r)), ("g", vec!["x"]));
    }

    #[test]
    fn a_model_alone_goes_to_the_providers_that_list_it() {
        let p = three(true);
        let r = p.route(None, Some("m2"), "").expect("route");
        assert_eq!(names(&r), ["b", "c"]);
        let r = p.route(None, Some("m3"), "").expect("route");
        assert_eq!(names(&r), ["c"], "a default_model counts as listed");
        let r = p.route(None, Some("unlisted"), "").expect("route");
        assert_eq!(
            (r.model.as_str(), names(&r)),
            ("unlisted", vec!["a"]),
            "the first provider alone"
        );
        let r = three(false).route(None, Some("m2"), "").expect("route");
        assert_eq!(names(&r), ["b"]);

        let r = p.route(None, None, "m2").expect("route");
        assert_eq!(
            (r.model.as_str(), names(&r)),
            ("a-default", vec!["a"]),
            "neither: the first provider with its default_model"
        );
    }

    #[test]
    fn without_providers_llm_is_the_single_default_provider() {
        let mut config = Config::default();
        config.llm.model = "llm-model".into();
        let p = Providers::from_config(&config).expect("build");
        assert_eq!(p.names(), ["default"]);
        let r = p.route(None, None, &config.llm.model).expect("route");
        assert_eq!((r.model.as_str(), names(&r)), ("llm-model", vec!["default"]));
        let r = p.route(None, Some("other"), &config.llm.model).expect("route");
        assert_eq!((r.model.as_str(), names(&r)), ("other", vec!["default"]));
        assert_eq!(p.primary().base_url(), "http://127.0.0.1:11434/v1");
        assert!(p.get("default").is_some() && p.get("nope").is_none());
    }

    #[test]
    fn duplicate_names_and_bad_headers_are_rejected() {
        let mut config = Config {
            providers: vec![provider("a", &[], None), provider("a", &[], None)],
            ..Config::default()
        };
        assert!(matches!(
            Providers::from_config(&config),
            Err(ProviderError::Invalid { .. })
        ));
        let mut bad = provider("h", &[], None);
        bad.headers.insert("bad name".into(), "v".into());
        config.providers = vec![bad];
        let err = Providers::from_config(&config).expect_err("bad header");
        assert!(err.to_string().contains("header"), "{err}");
    }

    #[test]
    fn credentials_are_hidden_and_models_merged() {
        assert_eq!(
            without_credentials("https://u:p@example.com/v1"),
            "https://example.com/v1"
        );
        assert_eq!(without_credentials("http://127.0.0.1:1/v1/"), "http://127.0.0.1:1/v1/");
        let m = ProviderModels {
            name: "a".into(),
            base_url: String::new(),
            configured: vec!["x".into(), "y".into()],
            listed: vec!["y".into(), "z".into()],
            reachable: true,
            error: None,
        };
        assert_eq!(m.models(), ["x", "y", "z"]);
    }
}
