//! Tool-call records: the calls a model made, the documents a tool cited,
//! and whether a call waits for the user's approval.

use serde::{Deserialize, Serialize};

/// A tool call of a stored reply (OpenAI `tool_calls` item).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[schema(as = StoredToolCall)]
pub struct ToolCall {
    pub id: String,
    /// `function`.
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionCall,
}

/// The function part of a [`StoredToolCall`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[schema(as = StoredFunctionCall)]
pub struct FunctionCall {
    pub name: String,
    /// The arguments as JSON text, exactly as the model produced them.
    pub arguments: String,
}

/// A document a tool used, shown to the user as a citation (the `sources`
/// event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Source {
    /// Stable within the reply, e.g. `"S1"`.
    pub id: String,
    pub title: String,
    /// Path relative to the project workspace, or a URL.
    pub path: String,
    /// The matching passage, plain text.
    pub snippet: String,
}

/// Whether a call runs right away or waits for the user's approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Approval {
    /// Runs without asking (tools without side effects).
    Auto,
    /// The reply emits a `tool_approval` step and waits for
    /// `POST /api/chat/{message_id}/approve`.
    Ask,
}
