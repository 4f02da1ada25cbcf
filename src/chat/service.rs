//! [`ChatService`]: starts replies as their own tasks, resumes, cancels and
//! approves them, and drains them at shutdown.

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::history;
use super::input::{
    ChatInput, Settings, SettingsInput, ToolChoice, ToolSelection, validate_project_id, validate_settings,
};
use super::log::{self, Reply};
use super::registry::ReplyRegistry;
use super::turn::{Begin, Earlier, Generation};
use super::{ChatError, ConversationService, replay, title};
use crate::config::Config;
use crate::domain::{Conversation, Message, NewConversation, Role, Status};
use crate::llm::{Providers, Route, RouteError};
use crate::store::{NewTurn, Store, StoreError};
use crate::tools::{ToolInfo, ToolRegistry};

/// What the generation task needs; shared by every reply.
pub struct Deps {
    pub store: Arc<dyn Store>,
    pub providers: Arc<Providers>,
    pub tools: Arc<ToolRegistry>,
    pub config: Arc<Config>,
    /// `config.tools`, shared with every tool call.
    pub tools_config: Arc<crate::config::ToolsConfig>,
    /// The upstream history of recently active conversations.
    pub history: history::HistoryCache,
}

/// Starts replies and finds running ones.
pub struct ChatService {
    deps: Arc<Deps>,
    replies: Arc<ReplyRegistry>,
    draining: std::sync::atomic::AtomicBool,
}

/// The reply whose commit [`ChatService::start`] waits for. If the wait is
/// dropped (the client went away before its answer), the reply runs on as
/// if its last client had left ([`Reply::no_client_left`]).
struct Waiting(Option<Arc<Reply>>);

impl Waiting {
    fn defuse(mut self) {
        self.0 = None;
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(reply) = self.0.take() {
            reply.no_client_left();
        }
    }
}

/// How long a cancel waits for the reply to store its final state.
const CANCEL_WAIT: Duration = Duration::from_secs(10);

/// Cancels `reply` and waits (up to [`CANCEL_WAIT`], 10 s) until its
/// terminal event is appended; logs a warning when it is not in time.
pub(super) async fn cancel_and_wait(reply: &Reply) {
    reply.cancel.cancel();
    if tokio::time::timeout(CANCEL_WAIT, reply.finished()).await.is_err() {
        tracing::warn!(message_id = %reply.message_id, "cancelled reply did not finish in time");
    }
}

/// How long a finished reply's events stay in memory (or
/// `chat.replay_retention_ms`, if shorter). Clients that reconnect right
/// after the end are served from memory; later resumes within the retention
/// window read the same events, exactly, from the database. Holding every
/// reply for the whole window (10 minutes by default) made memory grow with
/// the reply rate: 100 replies a second of 1,000 tokens would have kept some
/// 20 GB of events.
pub const MEMORY_RETENTION: Duration = Duration::from_secs(60);

impl ChatService {
    /// A service over the given store, upstream client, tools and config.
    pub fn new(
        store: Arc<dyn Store>,
        providers: Arc<Providers>,
        tools: Arc<ToolRegistry>,
        config: Arc<Config>,
    ) -> Self {
        Self {
            deps: Arc::new(Deps {
                store,
                providers,
                tools,
                tools_config: Arc::new(config.tools.clone()),
                config,
                history: history::HistoryCache::default(),
            }),
            replies: Arc::new(ReplyRegistry::default()),
            draining: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The conversation routes' service over the same store and replies.
    pub fn conversations(&self) -> ConversationService {
        ConversationService::new(
            self.deps.store.clone(),
            self.replies.clone(),
            self.deps.config.chat.max_tokens_ceiling,
        )
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.deps.store
    }

    /// Whether the database answers (`/readyz`).
    ///
    /// Errors: [`ChatError::Store`] when it does not.
    pub async fn ready(&self) -> Result<(), ChatError> {
        Ok(self.deps.store.ping().await?)
    }

    /// Writes queued for the database and not yet committed (the
    /// `chatd_store_queue_depth` gauge).
    pub fn store_queue_depth(&self) -> u64 {
        self.deps.store.queue_depth()
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.deps.config
    }

    /// The configured upstream providers.
    pub fn providers(&self) -> &Providers {
        &self.deps.providers
    }

    /// Every registered tool.
    pub fn tools(&self) -> Vec<ToolInfo> {
        self.deps.tools.list()
    }

    /// The state of every tool source (MCP server).
    pub fn tool_sources(&self) -> Vec<crate::tools::SourceStatus> {
        self.deps.tools.source_statuses()
    }

    /// The tool registry (MCP servers add their tools to it at run time).
    pub fn tool_registry(&self) -> &Arc<ToolRegistry> {
        &self.deps.tools
    }

    /// The reply with that assistant message id, while it is in memory.
    pub fn reply(&self, message_id: Uuid) -> Option<Arc<Reply>> {
        self.replies.get(message_id)
    }

    /// Validates `input`, starts the reply as its own task and returns it
    /// once that task has committed the user message and an empty assistant
    /// message; the reply's log then holds the `start` event. The task sends
    /// the first round's upstream request while the commit runs (see
    /// `Generation::run`); when the commit fails, that request is dropped
    /// and the error is returned here.
    ///
    /// Errors: [`ChatError::Invalid`] for a blank or over-long message,
    /// out-of-range settings, unknown tools or a missing model;
    /// [`ChatError::ConversationNotFound`]; [`ChatError::Busy`] when the
    /// conversation already has a reply running; [`ChatError::Store`].
    pub async fn start(&self, input: ChatInput) -> Result<Arc<Reply>, ChatError> {
        let config = &self.deps.config;
        if input.message.trim().is_empty() {
            return Err(ChatError::Invalid("message must not be blank".into()));
        }
        let chars = input.message.chars().count();
        if chars > config.chat.max_message_chars {
            return Err(ChatError::Invalid(format!(
                "message is {chars} characters long; the limit is {}",
                config.chat.max_message_chars
            )));
        }
        validate_settings(&input.settings, config.chat.max_tokens_ceiling)?;
        let enabled = self.enabled_tools(&input.tools)?;
        if let Some(ToolChoice::Function(name)) = &input.tool_choice
            && !enabled.contains(name)
        {
            return Err(ChatError::Invalid(format!(
                "tool_choice names {name:?}, which is not among the enabled tools ({})",
                enabled.join(", ")
            )));
        }

        if let Some(project) = &input.project_id {
            validate_project_id(project)?;
        }
        let (conversation, create, earlier, earlier_count) = match input.conversation_id {
            Some(id) => {
                let (c, count) = self
                    .deps
                    .store
                    .conversation_for_turn(id)
                    .await?
                    .ok_or(ChatError::ConversationNotFound(id))?;
                if input.project_id.is_some() && input.project_id != c.project_id {
                    return Err(ChatError::Invalid(
                        "project_id is set when a conversation is created and cannot change; leave it out".into(),
                    ));
                }
                let limit = config.limits.max_conversation_messages;
                if count + 2 > u64::from(limit) {
                    return Err(ChatError::ConversationTooLong { limit });
                }
                let earlier = match self.deps.history.take(id, count) {
                    Some(cached) => Earlier::Cached(cached),
                    None => Earlier::Load,
                };
                (c, false, earlier, count)
            }
            None => {
                let s = &input.settings;
                let new = NewConversation {
                    title: Some(title::from_message(&input.message)),
                    model: s.model.clone(),
                    provider: s.provider.clone(),
                    project_id: input.project_id.clone(),
                    system_prompt: s.system_prompt.clone(),
                    temperature: s.temperature,
                    max_tokens: s.max_tokens,
                    thinking: s.thinking,
                };
                (new.into_conversation(), true, Earlier::None, 0)
            }
        };
        let (settings, route) = self.effective(&conversation, &input.settings)?;

        let message_id = Uuid::now_v7();
        if self.draining.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ChatError::ShuttingDown);
        }
        let reply = Arc::new(Reply::new(
            message_id,
            conversation.id,
            config.chat.on_disconnect,
            Some(self.deps.store.clone()),
        ));
        if let Some(running) = self.replies.insert_if_idle(reply.clone()) {
            return Err(ChatError::Busy {
                conversation_id: conversation.id,
                message_id: running.message_id,
            });
        }
        let turn = NewTurn {
            conversation: conversation.clone(),
            create,
            user_message_id: Uuid::now_v7(),
            user_content: input.message,
            assistant_message_id: message_id,
            model: settings.model.clone(),
        };
        let (committed, begun) = tokio::sync::oneshot::channel();
        let generation = Generation {
            deps: self.deps.clone(),
            reply: reply.clone(),
            replies: self.replies.clone(),
            user_message_id: turn.user_message_id,
            settings,
            route,
            project_id: conversation.project_id.clone(),
            guard: input.guard,
            enabled_tools: Arc::new(enabled),
            tool_choice: input.tool_choice.as_ref().map(ToolChoice::to_json),
            suggested_title: if create { conversation.title.clone() } else { None },
            user_content: turn.user_content.clone(),
            earlier,
            earlier_count,
            retention: Duration::from_millis(config.chat.replay_retention_ms).min(MEMORY_RETENTION),
            begin: Some(Box::new(Begin { turn, committed })),
        };
        let span = tracing::info_span!("reply", conversation_id = %conversation.id, message_id = %message_id);
        // The reply's task commits the turn itself, so that the first
        // round's upstream request is sent while the commit runs, and a
        // client that goes away while we wait does not leave the commit
        // half done (the reply then runs on; it can be resumed).
        tokio::spawn(tracing::Instrument::instrument(generation.run(), span));
        let waiting = Waiting(Some(reply.clone()));
        let begun = begun.await;
        waiting.defuse();
        match begun {
            Ok(Ok(())) => Ok(reply),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ChatError::Store(StoreError::Write(
                "the reply's task ended before the message was stored".into(),
            ))),
        }
    }

    /// The events of a reply for a client that resumes: live from memory
    /// while the reply runs or was recently finished, else replayed from the
    /// database (exact while its events are stored, compact after).
    ///
    /// Errors: [`ChatError::MessageNotFound`] when no assistant message has
    /// that id; [`ChatError::Store`].
    pub async fn reply_for_resume(&self, message_id: Uuid) -> Result<Arc<Reply>, ChatError> {
        if let Some(reply) = self.replies.get(message_id) {
            return Ok(reply);
        }
        let message = self.stored_reply(message_id).await?;
        let events = replay::from_store(self.deps.store.as_ref(), &message).await?;
        Ok(Arc::new(Reply::replayed(message.id, message.conversation_id, events)))
    }

    /// The stored assistant message `message_id`.
    ///
    /// Errors: [`ChatError::MessageNotFound`] when no assistant message has
    /// that id; [`ChatError::Store`].
    async fn stored_reply(&self, message_id: Uuid) -> Result<Message, ChatError> {
        self.deps
            .store
            .message(message_id)
            .await?
            .filter(|m| m.role == Role::Assistant)
            .ok_or(ChatError::MessageNotFound(message_id))
    }

    /// Cancels a running reply and waits (up to 10 s) until it is stored
    /// with status `cancelled`. Cancelling a reply that was already cancelled
    /// succeeds again.
    ///
    /// Errors: [`ChatError::MessageNotFound`]; [`ChatError::AlreadyEnded`]
    /// when it ended otherwise (complete, error, interrupted);
    /// [`ChatError::Store`].
    pub async fn cancel(&self, message_id: Uuid) -> Result<(), ChatError> {
        if let Some(reply) = self.replies.get(message_id)
            && !reply.is_finished()
        {
            cancel_and_wait(&reply).await;
        }
        let message = self.stored_reply(message_id).await?;
        match message.status {
            Status::Cancelled => Ok(()),
            other => Err(ChatError::AlreadyEnded { status: other.as_str() }),
        }
    }

    /// Stops taking new messages, lets running replies finish for up to
    /// `drain`, then interrupts the rest (stored as `interrupted`) and waits
    /// until every reply and every queued write is stored.
    pub async fn shutdown(&self, drain: Duration) {
        self.draining.store(true, std::sync::atomic::Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + drain;
        loop {
            let running = self.replies.running();
            if running.is_empty() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    count = running.len(),
                    "drain timeout: interrupting the replies still running"
                );
                for reply in &running {
                    reply.interrupt();
                }
                for reply in running {
                    let _ = tokio::time::timeout(CANCEL_WAIT, reply.finished()).await;
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.deps.store.flush().await;
    }

    /// Delivers the user's decision on a tool call that waits for approval.
    ///
    /// Errors: [`ChatError::Invalid`] for a `reason` over 4096 bytes;
    /// [`ChatError::MessageNotFound`] when no running reply has that id;
    /// [`ChatError::NoPendingApproval`] when that call is not waiting.
    pub fn approve(
        &self,
        message_id: Uuid,
        tool_call_id: &str,
        approved: bool,
        reason: Option<String>,
    ) -> Result<(), ChatError> {
        super::input::validate_length("reason", reason.as_deref(), super::input::MAX_REASON_BYTES)?;
        let reply = self
            .replies
            .get(message_id)
            .filter(|r| !r.is_finished())
            .ok_or(ChatError::MessageNotFound(message_id))?;
        reply
            .decide(tool_call_id, log::Decision { approved, reason })
            .map_err(|_| ChatError::NoPendingApproval(tool_call_id.to_string()))
    }

    /// Number of replies running now.
    pub fn running(&self) -> usize {
        self.replies.running().len()
    }

    fn enabled_tools(&self, selection: &ToolSelection) -> Result<Vec<String>, ChatError> {
        let registry = &self.deps.tools;
        match selection {
            ToolSelection::All => Ok(registry.names()),
            ToolSelection::None => Ok(Vec::new()),
            ToolSelection::Only(names) => {
                if let Some(unknown) = names.iter().find(|n| !registry.contains(n)) {
                    return Err(ChatError::Invalid(format!(
                        "tools names {unknown:?}, which is not a registered tool (known: {})",
                        registry.names().join(", ")
                    )));
                }
                let mut names = names.clone();
                names.dedup();
                Ok(names)
            }
        }
    }

    /// Request settings override the conversation's, which override the
    /// configured defaults; the provider and model pick the route (and the
    /// model, when none is named anywhere, comes from the provider). A
    /// conversation's `max_tokens` above `chat.max_tokens_ceiling` (stored
    /// before the ceiling was lowered) is sent as the ceiling; without one,
    /// `chat.default_max_tokens` is sent, if set.
    fn effective(&self, c: &Conversation, s: &SettingsInput) -> Result<(Settings, Route), ChatError> {
        let chat = &self.deps.config.chat;
        let model = s.model.clone().or_else(|| c.model.clone());
        let provider = s.provider.clone().or_else(|| c.provider.clone());
        let route = self
            .deps
            .providers
            .route(provider.as_deref(), model.as_deref(), &self.deps.config.llm.model)
            .map_err(|e| match e {
                RouteError::NoModel { .. } => ChatError::Invalid(
                    "no model: pass \"model\" in the request, or set CHATD_LLM_MODEL (llm.model) or a provider's \
                     default_model"
                        .into(),
                ),
                other => ChatError::Invalid(other.to_string()),
            })?;
        let settings = Settings {
            model: route.model.clone(),
            provider,
            system_prompt: s.system_prompt.clone().or_else(|| c.system_prompt.clone()),
            temperature: s.temperature.or(c.temperature),
            max_tokens: s
                .max_tokens
                .or(c.max_tokens.map(|n| n.min(chat.max_tokens_ceiling)))
                .or(chat.default_max_tokens),
            thinking: s.thinking.or(c.thinking),
        };
        Ok((settings, route))
    }
}
