//! The values the store traits take and give that are the store's own
//! (the shared ones are in `crate::domain`).

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::domain::{Conversation, Role, Status};

/// The start of a turn: the user's message and the (empty) reply row.
#[derive(Debug, Clone)]
pub struct NewTurn {
    /// The conversation; when `create` is true it is inserted in the same
    /// transaction, otherwise it must already exist.
    pub conversation: Conversation,
    pub create: bool,
    pub user_message_id: Uuid,
    pub user_content: String,
    pub assistant_message_id: Uuid,
    pub model: String,
}

/// Which of a conversation's messages [`super::Conversations::messages`]
/// reads: the newest `limit` older than the message `before` (the newest
/// `limit` of all when `None`), ordered oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageQuery {
    /// Most messages to read (at least 1).
    pub limit: u32,
    /// A message of the conversation: only messages older than it.
    pub before: Option<Uuid>,
    /// Whether to read each message's `steps` (`None` on the messages
    /// otherwise; they are the bulk of a reply's row).
    pub steps: bool,
}

/// The end state of a reply.
#[derive(Debug, Clone)]
pub struct FinalReply {
    pub status: Status,
    pub content: String,
    pub reasoning: Option<String>,
    /// The stored steps, a JSON array.
    pub steps: Value,
    pub tool_calls: Option<Value>,
    /// Cited documents, JSON array.
    pub sources: Option<Value>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub finish_reason: Option<String>,
    /// `{code, message}` for status `error`.
    pub error: Option<Value>,
}

/// A reply's terminal event (`done` or `error`) as
/// [`Turns::finish`](super::Turns::finish) stores it with the final state:
/// its seq (SSE id), name and JSON data.
#[derive(Debug, Clone)]
pub struct TerminalEvent {
    pub seq: u64,
    pub name: &'static str,
    /// The event's JSON (UTF-8).
    pub data: Bytes,
}

/// What the upstream history needs of a stored message.
#[derive(Debug, Clone)]
pub struct HistoryRow {
    pub role: Role,
    pub content: String,
    /// The steps column: a JSON array text (see `domain::StoredStep`).
    pub steps: String,
}

/// One ledger row.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UsageRow {
    pub model: String,
    /// UTC day, `YYYY-MM-DD`.
    pub day: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// What the index knows of a file's version: enough to notice a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    /// Modification time, ns since the Unix epoch (negative before it).
    pub mtime_ns: i64,
    /// Size in bytes.
    pub size: u64,
}

/// One ranked match of [`Documents::search_documents`](super::Documents::search_documents).
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentHit {
    /// Path relative to the workspace, `/`-separated.
    pub path: String,
    /// The file's first Markdown heading, else its file name.
    pub title: String,
    /// The best matching passage, plain text; cut ends are marked with `…`.
    pub snippet: String,
    /// The backend's rank score; lower is better (SQLite: bm25, title
    /// matches weighted 4x the body, negative).
    pub score: f64,
}

/// A file the index has looked at
/// ([`Documents::indexed_files`](super::Documents::indexed_files)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedFile {
    /// Path relative to the workspace, `/`-separated.
    pub path: String,
    /// The version that was read.
    pub stamp: FileStamp,
    /// Whether it is in the full-text index (`false`: it was not UTF-8
    /// text and is skipped until it changes).
    pub indexed: bool,
}
