//! [`ConversationService`]: the work behind the conversation routes (list,
//! create, read, patch, delete, messages) with its validation, over the
//! store's [`Conversations`] family.

use std::sync::Arc;

use uuid::Uuid;

use super::ChatError;
use super::input::{MAX_TITLE_BYTES, SettingsInput, validate_length, validate_project_id, validate_settings};
use super::registry::ReplyRegistry;
use super::service::cancel_and_wait;
use crate::domain::{Conversation, ConversationPatch, Message, NewConversation};
use crate::store::{MessageQuery, Store};

/// One page of conversations, most recently updated first.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationPage {
    pub conversations: Vec<Conversation>,
    /// The id to pass as `before` for the next page; `None` on the last.
    pub next_before: Option<Uuid>,
}

/// One page of a conversation's messages: the newest of those asked for,
/// oldest first.
#[derive(Debug, Clone)]
pub struct MessagePage {
    pub messages: Vec<Message>,
    /// The id to pass as `before` for the previous (older) page: the page's
    /// oldest message; `None` when no older message exists.
    pub next_before: Option<Uuid>,
}

/// Page size of a listing that names none.
pub const DEFAULT_PAGE: i64 = 50;
/// Largest page of a listing.
pub const MAX_PAGE: i64 = 200;

/// Conversations as the API sees them.
pub struct ConversationService {
    store: Arc<dyn Store>,
    /// The replies in memory, shared with [`super::ChatService`]: a delete
    /// cancels the conversation's running reply first.
    replies: Arc<ReplyRegistry>,
    /// `chat.max_tokens_ceiling`: the largest `max_tokens` a conversation
    /// may store.
    max_tokens_ceiling: u32,
}

impl ConversationService {
    /// A service over `store`, sharing the reply registry of the
    /// [`super::ChatService`] that made it (see
    /// [`super::ChatService::conversations`]); `max_tokens_ceiling` is
    /// `chat.max_tokens_ceiling`.
    pub(super) fn new(store: Arc<dyn Store>, replies: Arc<ReplyRegistry>, max_tokens_ceiling: u32) -> Self {
        Self {
            store,
            replies,
            max_tokens_ceiling,
        }
    }

    /// The page size for a requested `limit`: 1..=200, default 50.
    ///
    /// Errors: [`ChatError::Invalid`] for a `limit` out of range.
    pub fn page_size(limit: Option<i64>) -> Result<u32, ChatError> {
        let limit = limit.unwrap_or(DEFAULT_PAGE);
        u32::try_from(limit)
            .ok()
            .filter(|l| (1..=MAX_PAGE as u32).contains(l))
            .ok_or_else(|| ChatError::Invalid(format!("limit must be between 1 and {MAX_PAGE}, got {limit}")))
    }

    /// A page of at most `limit` conversations (see [`Self::page_size`])
    /// after the conversation `before`, most recently updated first.
    ///
    /// Errors: [`ChatError::CursorNotFound`] when `before` does not exist;
    /// [`ChatError::Store`].
    pub async fn list(&self, limit: u32, before: Option<Uuid>) -> Result<ConversationPage, ChatError> {
        let page = self
            .store
            .list_conversations(limit, before)
            .await?
            .ok_or(ChatError::CursorNotFound { what: "conversation" })?;
        let next_before = (page.len() == limit as usize)
            .then(|| page.last().map(|c| c.id))
            .flatten();
        Ok(ConversationPage {
            conversations: page,
            next_before,
        })
    }

    /// Creates a conversation with the given settings.
    ///
    /// Errors: [`ChatError::Invalid`] for out-of-range settings (see
    /// [`validate_settings`]) or a bad `project_id`; [`ChatError::Store`].
    pub async fn create(&self, new: NewConversation) -> Result<Conversation, ChatError> {
        validate_length("title", new.title.as_deref(), MAX_TITLE_BYTES)?;
        validate_settings(
            &SettingsInput {
                model: new.model.clone(),
                provider: new.provider.clone(),
                system_prompt: new.system_prompt.clone(),
                temperature: new.temperature,
                max_tokens: new.max_tokens,
                thinking: None,
            },
            self.max_tokens_ceiling,
        )?;
        if let Some(project) = &new.project_id {
            validate_project_id(project)?;
        }
        Ok(self.store.create_conversation(new).await?)
    }

    /// The conversation with `id`.
    ///
    /// Errors: [`ChatError::ConversationNotFound`]; [`ChatError::Store`].
    pub async fn get(&self, id: Uuid) -> Result<Conversation, ChatError> {
        self.store
            .conversation(id)
            .await?
            .ok_or(ChatError::ConversationNotFound(id))
    }

    /// Applies `patch` (a present `None` clears a field) and returns the
    /// updated conversation.
    ///
    /// Errors: [`ChatError::Invalid`] for out-of-range settings;
    /// [`ChatError::ConversationNotFound`]; [`ChatError::Store`].
    pub async fn patch(&self, id: Uuid, patch: ConversationPatch) -> Result<Conversation, ChatError> {
        validate_length("title", patch.title.clone().flatten().as_deref(), MAX_TITLE_BYTES)?;
        validate_settings(
            &SettingsInput {
                model: patch.model.clone().flatten(),
                provider: patch.provider.clone().flatten(),
                system_prompt: patch.system_prompt.clone().flatten(),
                temperature: patch.temperature.flatten(),
                max_tokens: patch.max_tokens.flatten(),
                thinking: None,
            },
            self.max_tokens_ceiling,
        )?;
        self.store
            .update_conversation(id, patch)
            .await?
            .ok_or(ChatError::ConversationNotFound(id))
    }

    /// Deletes the conversation and its messages. A reply still running in
    /// it is cancelled first, and the delete waits (up to 10 s) for it to
    /// end, so that no tool keeps running for a conversation that is gone.
    ///
    /// Errors: [`ChatError::ConversationNotFound`]; [`ChatError::Store`].
    pub async fn delete(&self, id: Uuid) -> Result<(), ChatError> {
        if let Some(reply) = self.replies.running_in(id) {
            cancel_and_wait(&reply).await;
        }
        if self.store.delete_conversation(id).await? {
            Ok(())
        } else {
            Err(ChatError::ConversationNotFound(id))
        }
    }

    /// A page of the conversation's messages: the newest `limit` (see
    /// [`Self::page_size`]) older than the message `before` (of all when
    /// `None`), oldest first, with their `steps` only when `steps` is true.
    /// Walking `next_before` back visits every message once.
    ///
    /// Errors: [`ChatError::ConversationNotFound`];
    /// [`ChatError::CursorNotFound`] when `before` is not a message of this
    /// conversation; [`ChatError::Store`].
    pub async fn messages(
        &self,
        id: Uuid,
        limit: u32,
        before: Option<Uuid>,
        steps: bool,
    ) -> Result<MessagePage, ChatError> {
        self.get(id).await?;
        // One more than the page: whether an older message exists.
        let query = MessageQuery {
            limit: limit.saturating_add(1),
            before,
            steps,
        };
        let mut messages = self.store.messages(id, query).await?.ok_or(ChatError::CursorNotFound {
            what: "message of this conversation",
        })?;
        let older = messages.len() > limit as usize;
        if older {
            messages.remove(0);
        }
        let next_before = older.then(|| messages.first().map(|m| m.id)).flatten();
        Ok(MessagePage { messages, next_before })
    }

    /// One message of the conversation, with its steps.
    ///
    /// Errors: [`ChatError::ConversationNotFound`];
    /// [`ChatError::MessageNotFound`] when the conversation has no message
    /// `message_id` (also when another conversation has);
    /// [`ChatError::Store`].
    pub async fn message(&self, id: Uuid, message_id: Uuid) -> Result<Message, ChatError> {
        match self.store.message(message_id).await? {
            Some(message) if message.conversation_id == id => Ok(message),
            _ => {
                self.get(id).await?;
                Err(ChatError::MessageNotFound(message_id))
            }
        }
    }
}
