//! Messages: who wrote them, their lifecycle, the stored steps of a reply
//! and its token usage.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::event::StepEvent;
use super::time::rfc3339;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

impl Role {
    /// The stored spelling: `user` or `assistant`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }

    /// The role spelled `s` ([`Role::as_str`]), or `None`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            _ => None,
        }
    }
}

/// Lifecycle of a stored message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = MessageStatus)]
pub enum Status {
    /// Written in full.
    Complete,
    /// The reply is being generated.
    Streaming,
    /// The reply ended with an error event; keeps what was produced.
    Error,
    /// The reply was cancelled; keeps what was produced.
    Cancelled,
    /// The server stopped while the reply ran; keeps what was produced.
    Interrupted,
}

impl Status {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Complete => "complete",
            Status::Streaming => "streaming",
            Status::Error => "error",
            Status::Cancelled => "cancelled",
            Status::Interrupted => "interrupted",
        }
    }

    /// The status spelled `s` ([`Status::as_str`]), or `None`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "complete" => Status::Complete,
            "streaming" => Status::Streaming,
            "error" => Status::Error,
            "cancelled" => Status::Cancelled,
            "interrupted" => Status::Interrupted,
            _ => return None,
        })
    }
}

/// A stored message as the API returns it. JSON columns are passed through.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Message {
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub role: Role,
    /// The text: the user's message, or the reply's text of every round.
    pub content: String,
    /// The reply's reasoning ("thinking") text, if any.
    pub reasoning: Option<String>,
    /// The reply's steps in order (see the chat module's `StoredStep`; a
    /// user message has none). Only on a message read on its own
    /// (`GET /api/conversations/{id}/messages/{message_id}`) or listed with
    /// `?steps=true`; absent from other listings.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Vec<StoredStep>, required = false)]
    pub steps: Option<Value>,
    /// The reply's tool calls, OpenAI `tool_calls` shape.
    #[schema(value_type = Option<Vec<super::tool::ToolCall>>)]
    pub tool_calls: Option<Value>,
    /// `{prompt_tokens, completion_tokens, total_tokens}` summed over rounds.
    #[schema(value_type = Option<UsageTotals>)]
    pub usage: Option<Value>,
    /// Documents the reply cited: `[{id, title, path, snippet}]`.
    #[schema(value_type = Option<Vec<super::tool::Source>>)]
    pub sources: Option<Value>,
    pub status: Status,
    /// Upstream finish_reason of the last round, or `cancelled`.
    pub finish_reason: Option<String>,
    /// `{code, message}` when status is `error`.
    #[schema(value_type = Option<ErrorInfo>)]
    pub error: Option<Value>,
    /// Model that produced the reply.
    pub model: Option<String>,
    /// Unix epoch ms (RFC 3339 in JSON).
    #[serde(serialize_with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    /// Unix epoch ms (RFC 3339 in JSON).
    #[serde(serialize_with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: i64,
}

/// A step as stored in `messages.steps`: thinking and text steps carry their
/// full `content`; `round` is the 0-based model round it belongs to, used to
/// rebuild the history sent upstream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct StoredStep {
    pub round: u32,
    #[serde(flatten)]
    pub step: StepEvent,
}

/// Token counts summed over every round of the reply (OpenAI `usage` shape).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct UsageTotals {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

/// What went wrong: a stable `code` and a message saying what to fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = ErrorDetail)]
pub struct ErrorInfo {
    /// Stable machine-readable code, e.g. `invalid_json`, `invalid_request`, `invalid_id`, `unauthorized`,
    /// `not_found`, `method_not_allowed`, `conversation_busy`, `not_pending`, `reply_finished`,
    /// `payload_too_large`, `unsupported_media_type`, `validation_failed`, `conversation_too_long`,
    /// `rate_limited`, `too_many_replies`, `too_many_streams`, `internal`, `shutting_down`, `not_ready`. On a stored message:
    /// the code of its `error` event.
    pub code: String,
    /// What went wrong and what to fix.
    pub message: String,
}
