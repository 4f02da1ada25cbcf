//! [`Models`]: what `GET /api/models` shows, the models every configured
//! provider offers and whether each provider answered.

use serde::Serialize;

use std::sync::Arc;

use crate::llm::Providers;

/// A model and the provider that serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelInfo {
    pub id: String,
    /// A `[[providers]]` name (`default` for `[llm]`).
    pub provider: String,
}

/// Whether a provider answered its `GET /models`.
///
/// No base URL: every caller sees this, and a provider's address is the
/// operator's business. (Issue 23: once users have roles, an admin view can
/// add `ProviderModels::base_url` back.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProviderInfo {
    pub name: String,
    pub reachable: bool,
    /// Why it was not reachable, without URLs or addresses (the log has the
    /// detail); `None` when it was.
    pub error: Option<String>,
}

/// Every provider's models, in provider order, and every provider's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelsListing {
    /// A model served by two providers is listed once per provider.
    pub models: Vec<ModelInfo>,
    pub providers: Vec<ProviderInfo>,
}

/// The models facade over the configured providers.
#[derive(Debug, Clone)]
pub struct Models {
    providers: Arc<Providers>,
}

impl Models {
    /// A facade over `providers`.
    pub fn new(providers: Arc<Providers>) -> Self {
        Self { providers }
    }

    /// Each provider's configured `models` and `default_model`, then the
    /// ids its `GET /models` returned, without duplicates. The upstream lists
    /// are fetched concurrently, at most 2 s each; a provider that did not
    /// answer in time, or answered with an error, is `reachable: false` with
    /// the reason, and lists only its configured models. Never fails.
    pub async fn list(&self) -> ModelsListing {
        let listed = self.providers.list_models().await;
        let models = listed
            .iter()
            .flat_map(|p| {
                p.models().into_iter().map(|id| ModelInfo {
                    id: id.to_string(),
                    provider: p.name.clone(),
                })
            })
            .collect();
        let providers = listed
            .into_iter()
            .map(|p| ProviderInfo {
                name: p.name,
                reachable: p.reachable,
                error: p.error,
            })
            .collect();
        ModelsListing { models, providers }
    }
}
