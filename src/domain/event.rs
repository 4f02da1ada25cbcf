//! The typed events of one reply, in the order a client receives them:
//! `start`, any number of `process_step`, then exactly one `done` or `error`.
//!
//! Each event serializes to the JSON `data` of one SSE event whose name is
//! [`ChatEvent::name`]. The chat module never sees HTTP; the http module
//! frames these as SSE (the `wire` module's frame format).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::message::UsageTotals;

/// One event of a reply.
///
/// ```
/// use chatd::domain::{ChatEvent, StepEvent, StepKind};
/// let e = ChatEvent::Step(StepEvent {
///     id: "step-0".into(),
///     index: 0,
///     kind: StepKind::Text { delta: Some("Hi".into()), content: None },
/// });
/// assert_eq!(e.name(), "process_step");
/// assert_eq!(
///     serde_json::to_string(&e).unwrap(),
///     r#"{"id":"step-0","index":0,"type":"text","delta":"Hi"}"#
/// );
/// ```
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum ChatEvent {
    Start(StartEvent),
    Step(StepEvent),
    Sources(SourcesEvent),
    Done(DoneEvent),
    Error(ErrorEvent),
}

impl ChatEvent {
    /// The SSE event name: `start`, `process_step`, `done` or `error`.
    pub fn name(&self) -> &'static str {
        match self {
            ChatEvent::Start(_) => "start",
            ChatEvent::Step(_) => "process_step",
            ChatEvent::Sources(_) => "sources",
            ChatEvent::Done(_) => "done",
            ChatEvent::Error(_) => "error",
        }
    }

    /// Whether this is the last event of a reply (`done` or `error`).
    pub fn is_terminal(&self) -> bool {
        matches!(self, ChatEvent::Done(_) | ChatEvent::Error(_))
    }

    /// Whether `name` is the SSE name of a terminal event (`done` or
    /// `error`), for events held as frames.
    pub fn is_terminal_name(name: &str) -> bool {
        matches!(name, "done" | "error")
    }

    /// Parses a stored event back from its SSE name and JSON data; `None`
    /// for an unknown name or data that does not fit.
    pub fn from_parts(name: &str, data: &str) -> Option<Self> {
        Some(match name {
            "start" => ChatEvent::Start(serde_json::from_str(data).ok()?),
            "process_step" => ChatEvent::Step(serde_json::from_str(data).ok()?),
            "sources" => ChatEvent::Sources(serde_json::from_str(data).ok()?),
            "done" => ChatEvent::Done(serde_json::from_str(data).ok()?),
            "error" => ChatEvent::Error(serde_json::from_str(data).ok()?),
            _ => return None,
        })
    }
}

/// `start`: the reply has begun; its rows exist in the database.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct StartEvent {
    pub conversation_id: Uuid,
    pub user_message_id: Uuid,
    /// Id of the assistant message being generated.
    pub message_id: Uuid,
    pub model: String,
}

/// `process_step`: one step of the reply. Deltas of one thinking or text
/// block share `id` and `index`; every tool call and tool result is a step of
/// its own. `index` is unique and increases across every round of the loop;
/// `id` is `"step-{index}"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct StepEvent {
    pub id: String,
    pub index: u32,
    #[serde(flatten)]
    pub kind: StepKind,
}

/// What a step carries. Thinking and text carry either `delta` (the new text,
/// in events) or `content` (everything so far: stored steps and the
/// `accumulated` stream mode).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StepKind {
    Thinking {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delta: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<String>,
    },
    Text {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delta: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<String>,
    },
    /// A fully assembled tool call, sent before it runs.
    ToolCall {
        /// The tool call id (the upstream's, or `call_<uuid>` if it sent none).
        id_ref: String,
        name: String,
        /// The arguments as JSON text, exactly as the model produced them.
        arguments: String,
    },
    /// The call `id_ref` waits for the user's approval
    /// (`POST /api/chat/{message_id}/approve`).
    ToolApproval {
        id_ref: String,
        name: String,
        arguments: String,
        /// Why this call asks when its tool usually does not: e.g. a
        /// `fetch_url` to a host outside `tools.fetch.allow_hosts` after the
        /// reply read workspace or document data. Absent when the tool's
        /// policy is to ask.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The result of the tool call `id_ref`.
    ToolResult {
        id_ref: String,
        name: String,
        /// Output text, or an error text the model can act on.
        content: String,
        success: bool,
        /// Wall time of the call in ms.
        duration_ms: u64,
    },
}

/// `sources`: documents a tool cited, for the frontend to show as
/// citations. Ids (`S1`, `S2`, ...) are unique within the reply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct SourcesEvent {
    pub sources: Vec<super::tool::Source>,
}

/// `done`: the reply ended normally (or was cancelled) and is stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct DoneEvent {
    pub conversation_id: Uuid,
    pub message_id: Uuid,
    /// The last round's upstream finish_reason (`stop`, `length`, ...), or
    /// `cancelled`.
    pub finish_reason: String,
    pub usage: UsageTotals,
    /// The conversation's title when this reply created the conversation;
    /// `null` otherwise.
    pub suggested_title: Option<String>,
}

/// `error`: the reply failed; what was produced before is stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ErrorEvent {
    /// Stable code: `upstream_unavailable`, `rate_limited`,
    /// `upstream_timeout`, `upstream_error`, `max_iterations`,
    /// `reply_timeout` (the reply ran past `chat.max_reply_ms`),
    /// `interrupted` or `internal`.
    pub code: String,
    pub message: String,
    /// Whether sending the same message again may succeed.
    pub retryable: bool,
}

impl ErrorEvent {
    /// An error event; `retryable` follows from the code.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        let retryable = matches!(
            code,
            "upstream_unavailable" | "rate_limited" | "upstream_timeout" | "interrupted"
        );
        Self {
            code: code.to_string(),
            message: message.into(),
            retryable,
        }
    }
}
