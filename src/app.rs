//! Wires the layers together and owns what runs in the background.
//!
//! [`App::build`] opens the store (the backend is picked from the database
//! URL by [`crate::store::open`]), builds the upstream providers, the tool
//! registry and the services (chat, conversations, models), the router over
//! them, and starts the background tasks; [`App::shutdown`] stops them in
//! order.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::chat::{ChatService, Models};
use crate::config::Config;
use crate::domain::now_ms;
use crate::http::AppState;
use crate::http::access::Access;
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
    /// The store the services share (tests read state through its traits).
    pub store: Arc<dyn Store>,
    pub router: axum::Router,
    /// The MCP servers' connections; dropping it stops them.
    pub mcp: crate::tools::mcp::McpManager,
    /// Every background task of the app (not the replies: those belong to
    /// the chat service), stopped by `stop`.
    tasks: TaskTracker,
    stop: CancellationToken,
}

/// How often idle rate-limit state is forgotten.
const ACCESS_PRUNE_EVERY: Duration = Duration::from_secs(60);

/// How often the store's housekeeping runs ([`Store::maintain`]).
const MAINTAIN_EVERY: Duration = Duration::from_secs(1);

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
        let store = crate::store::open(&config.database_url, config.chat.writer_queue_events).await?;
        let interrupted = store.mark_interrupted().await?;
        if interrupted > 0 {
            tracing::warn!(
                count = interrupted,
                "marked replies left streaming by the last run as interrupted"
            );
        }
        let providers = Arc::new(Providers::from_config(&config)?);
        let tools = tools.with_approval(config.tools.approval.clone());
        let access = Arc::new(Access::new(&config));
        let retention = Duration::from_millis(config.chat.replay_retention_ms);
        let chat = Arc::new(ChatService::new(
            store.clone(),
            providers.clone(),
            Arc::new(tools),
            Arc::new(config),
        ));
        let state = AppState {
            chat: chat.clone(),
            conversations: Arc::new(chat.conversations()),
            models: Arc::new(Models::new(providers)),
            access: access.clone(),
        };
        let router = crate::http::router(state);
        let mcp = crate::tools::mcp::start_mcp(&chat.config().mcp_servers, chat.tool_registry().clone()).await;
        let app = Self {
            chat,
            store,
            router,
            mcp,
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
        };
        app.spawn_pruning(retention);
        let maintained = app.store.clone();
        app.every(MAINTAIN_EVERY, move || {
            let store = maintained.clone();
            async move {
                if let Err(e) = store.maintain().await {
                    tracing::warn!(error = %e, "store housekeeping (WAL checkpoint) failed");
                }
            }
        });
        app.every(ACCESS_PRUNE_EVERY, move || {
            let access = access.clone();
            async move { access.retain_recent() }
        });
        Ok(app)
    }

    /// Stops what the app runs, in order, once the server has stopped and
    /// the chat service has drained: waits until every queued write is
    /// stored, closes the MCP servers, then stops the background tasks and
    /// waits for them.
    pub async fn shutdown(&self) {
        self.store.flush().await;
        self.mcp.shutdown().await;
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Runs `work` every `period` (the first time after one period) until
    /// [`App::shutdown`].
    fn every<F, Fut>(&self, period: Duration, work: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(period) => work().await,
                }
            }
        });
    }

    /// Deletes stored events of final replies older than `retention`, once at
    /// start and then every minute (or every `retention`, if shorter).
    fn spawn_pruning(&self, retention: Duration) {
        let every = retention.clamp(Duration::from_millis(100), Duration::from_secs(60));
        let store = self.store.clone();
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            loop {
                let cutoff = now_ms() - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
                match store.prune_events(cutoff).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(rows = n, "pruned replay events"),
                    Err(e) => tracing::warn!(error = %e, "could not prune replay events"),
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        });
    }
}
