//! Wires the layers together: store, upstream client, tools, chat service
//! and router.

use std::sync::Arc;
use std::time::Duration;

use crate::chat::ChatService;
use crate::config::Config;
use crate::llm::{LlmError, ProviderError, Providers};
use crate::store::{Store, StoreError};
use crate::tools::ToolRegistry;

/// Errors while starting chatd.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Llm(#[from] LlmError),
    #[error(transparent)]
    Providers(#[from] ProviderError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Serve(std::io::Error),
}

/// A ready-to-serve chatd.
pub struct App {
    pub chat: Arc<ChatService>,
    pub router: axum::Router,
    /// The MCP servers' connections; dropping it stops them.
    pub mcp: crate::tools::mcp::McpManager,
}

impl App {
    /// Opens and migrates the database, marks replies left `streaming` by a
    /// previous process as `interrupted`, and builds the router with every
    /// built-in tool ([`ToolRegistry::standard`]) and the configured MCP
    /// servers.
    pub async fn build(config: Config) -> Result<Self, AppError> {
        Self::build_with_tools(config, ToolRegistry::standard()).await
    }

    /// Like [`App::build`] with a caller-supplied tool registry.
    pub async fn build_with_tools(config: Config, tools: ToolRegistry) -> Result<Self, AppError> {
        let store = Store::open(&config.database_url).await?;
        let interrupted = store.mark_interrupted().await?;
        if interrupted > 0 {
            tracing::warn!(
                count = interrupted,
                "marked replies left streaming by the last run as interrupted"
            );
        }
        spawn_pruning(store.clone(), Duration::from_millis(config.chat.replay_retention_ms));
        let providers = Providers::from_config(&config)?;
        let tools = tools.with_approval(config.tools.approval.clone());
        let chat = Arc::new(ChatService::new(store, providers, Arc::new(tools), Arc::new(config)));
        let router = crate::http::router(chat.clone());
        let mcp = crate::tools::mcp::start_mcp(&chat.config().mcp_servers, chat.tool_registry().clone()).await;
        Ok(Self { chat, router, mcp })
    }
}

/// Deletes stored events of final replies older than `retention`, once at
/// start and then every minute (or every `retention`, if shorter).
fn spawn_pruning(store: Store, retention: Duration) {
    let every = retention.clamp(Duration::from_millis(100), Duration::from_secs(60));
    tokio::spawn(async move {
        loop {
            let cutoff = crate::store::now_ms() - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
            match store.prune_events(cutoff).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(rows = n, "pruned replay events"),
                Err(e) => tracing::warn!(error = %e, "could not prune replay events"),
            }
            tokio::time::sleep(every).await;
        }
    });
}
