//! The chat layer's one error type.

use uuid::Uuid;

use crate::store::StoreError;

/// Errors before a reply starts (after that, failures are `error` events).
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// A value is out of range or unusable; the text names the field.
    #[error("{0}")]
    Invalid(String),
    /// No conversation has that id.
    #[error("conversation {0} not found")]
    ConversationNotFound(Uuid),
    /// A listing's `before` cursor names nothing it lists: `what` says what
    /// it must name ("conversation", "message of this conversation").
    #[error("`before` must name a {what} (a previous page's `next_before`); no such {what} exists")]
    CursorNotFound { what: &'static str },
    /// No reply (assistant message) has that id.
    #[error("message {0} not found")]
    MessageNotFound(Uuid),
    /// The reply already ended (with the given status), so it cannot be
    /// cancelled.
    #[error("the reply already ended with status {status}; there is nothing to cancel")]
    AlreadyEnded { status: &'static str },
    /// No tool call with that id waits for approval in that reply.
    #[error("no tool call {0:?} is waiting for approval in this reply (never asked, already decided, or timed out)")]
    NoPendingApproval(String),
    /// The conversation has reached `limits.max_conversation_messages`.
    #[error("the conversation has reached its limit of {limit} messages; start a new conversation")]
    ConversationTooLong { limit: u32 },
    /// The server is shutting down and takes no new messages.
    #[error("the server is shutting down; send the message again in a moment")]
    ShuttingDown,
    /// The conversation already has a reply running.
    #[error("conversation {conversation_id} already has a reply running (message {message_id}); wait for it to finish")]
    Busy { conversation_id: Uuid, message_id: Uuid },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
