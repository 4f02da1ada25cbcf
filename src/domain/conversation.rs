//! A conversation and its per-conversation settings.

use serde::Serialize;
use uuid::Uuid;

use super::time::{now_ms, rfc3339};

/// A stored conversation and its per-conversation settings.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Conversation {
    /// UUIDv7.
    pub id: Uuid,
    /// Title; set from the first user message when the conversation is
    /// created by `POST /api/chat`.
    pub title: Option<String>,
    /// Model name sent upstream; `None` uses the configured default.
    pub model: Option<String>,
    /// Provider (a `[[providers]]` name) the conversation is pinned to;
    /// `None` routes by model.
    pub provider: Option<String>,
    /// Project whose workspace the tools work in; set on creation only.
    pub project_id: Option<String>,
    /// System prompt sent first on every turn.
    pub system_prompt: Option<String>,
    /// Sampling temperature, 0..=2.
    pub temperature: Option<f64>,
    /// Most completion tokens per model round.
    #[schema(format = Int64, maximum = 4294967295_i64)]
    pub max_tokens: Option<u32>,
    /// Reasoning switch; `None` leaves the provider's default.
    pub thinking: Option<bool>,
    /// Creation time, Unix epoch ms (RFC 3339 in JSON).
    #[serde(serialize_with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    /// Last change (including a new message), Unix epoch ms (RFC 3339 in JSON).
    #[serde(serialize_with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: i64,
}

/// Fields of a new conversation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewConversation {
    pub title: Option<String>,
    pub model: Option<String>,
    pub provider: Option<String>,
    pub project_id: Option<String>,
    pub system_prompt: Option<String>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    pub thinking: Option<bool>,
}

/// A partial update: `None` leaves a field alone, `Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConversationPatch {
    pub title: Option<Option<String>>,
    pub model: Option<Option<String>>,
    pub provider: Option<Option<String>>,
    pub system_prompt: Option<Option<String>>,
    pub temperature: Option<Option<f64>>,
    pub max_tokens: Option<Option<u32>>,
    pub thinking: Option<Option<bool>>,
}

impl NewConversation {
    /// The conversation this creates now, with a fresh UUIDv7 and both
    /// timestamps set to now.
    pub fn into_conversation(self) -> Conversation {
        let now = now_ms();
        Conversation {
            id: Uuid::now_v7(),
            title: self.title,
            model: self.model,
            provider: self.provider,
            project_id: self.project_id,
            system_prompt: self.system_prompt,
            temperature: self.temperature,
            max_tokens: self.max_tokens,
            thinking: self.thinking,
            created_at: now,
            updated_at: now,
        }
    }
}

impl Conversation {
    /// Applies `patch` to this value (the fields it names; `updated_at` is
    /// the caller's to set).
    pub fn apply(&mut self, patch: ConversationPatch) {
        if let Some(v) = patch.title {
            self.title = v;
        }
        if let Some(v) = patch.model {
            self.model = v;
        }
        if let Some(v) = patch.provider {
            self.provider = v;
        }
        if let Some(v) = patch.system_prompt {
            self.system_prompt = v;
        }
        if let Some(v) = patch.temperature {
            self.temperature = v;
        }
        if let Some(v) = patch.max_tokens {
            self.max_tokens = v;
        }
        if let Some(v) = patch.thinking {
            self.thinking = v;
        }
    }
}
