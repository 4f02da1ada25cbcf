//! Message rows: a turn's user message and assistant reply are written
//! together before the reply's `start` event (while its first upstream
//! request opens); the reply is finished at its end.

use serde::Serialize;
use serde_json::Value;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use uuid::Uuid;

use super::conversations::{self, Conversation};
use super::{Store, StoreError, now_ms, parse_id, parse_json, usage};

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
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

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "user" => Ok(Role::User),
            "assistant" => Ok(Role::Assistant),
            other => Err(StoreError::Corrupt(format!("unknown role {other:?}"))),
        }
    }
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
    fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "complete" => Status::Complete,
            "streaming" => Status::Streaming,
            "error" => Status::Error,
            "cancelled" => Status::Cancelled,
            "interrupted" => Status::Interrupted,
            other => return Err(StoreError::Corrupt(format!("unknown status {other:?}"))),
        })
    }
}

/// A stored message as the API returns it. JSON columns are passed through.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Message)]
pub struct MessageRow {
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub role: Role,
    /// The text: the user's message, or the reply's text of every round.
    pub content: String,
    /// The reply's reasoning ("thinking") text, if any.
    pub reasoning: Option<String>,
    /// The reply's steps in order (see the chat module's `StoredStep`).
    #[schema(value_type = Vec<crate::chat::steps::StoredStep>)]
    pub steps: Value,
    /// The reply's tool calls, OpenAI `tool_calls` shape.
    #[schema(value_type = Option<Vec<crate::http::openapi::StoredToolCall>>)]
    pub tool_calls: Option<Value>,
    /// `{prompt_tokens, completion_tokens, total_tokens}` summed over rounds.
    #[schema(value_type = Option<crate::chat::events::UsageTotals>)]
    pub usage: Option<Value>,
    /// Documents the reply cited: `[{id, title, path, snippet}]`.
    #[schema(value_type = Option<Vec<crate::tools::Source>>)]
    pub sources: Option<Value>,
    pub status: Status,
    /// Upstream finish_reason of the last round, or `cancelled`.
    pub finish_reason: Option<String>,
    /// `{code, message}` when status is `error`.
    #[schema(value_type = Option<crate::http::error::ErrorDetail>)]
    pub error: Option<Value>,
    /// Model that produced the reply.
    pub model: Option<String>,
    /// Unix epoch ms (RFC 3339 in JSON).
    #[serde(serialize_with = "super::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    /// Unix epoch ms (RFC 3339 in JSON).
    #[serde(serialize_with = "super::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: i64,
}

impl MessageRow {
    fn from_row(row: &SqliteRow) -> Result<Self, StoreError> {
        let id: String = row.try_get("id")?;
        let conversation_id: String = row.try_get("conversation_id")?;
        let role: String = row.try_get("role")?;
        let status: String = row.try_get("status")?;
        let steps: String = row.try_get("steps")?;
        Ok(Self {
            id: parse_id(&id)?,
            conversation_id: parse_id(&conversation_id)?,
            role: Role::parse(&role)?,
            content: row.try_get("content")?,
            reasoning: row.try_get("reasoning")?,
            steps: parse_json(Some(steps))?.unwrap_or(Value::Null),
            tool_calls: parse_json(row.try_get("tool_calls")?)?,
            usage: parse_json(row.try_get("usage")?)?,
            sources: parse_json(row.try_get("sources")?)?,
            status: Status::parse(&status)?,
            finish_reason: row.try_get("finish_reason")?,
            error: parse_json(row.try_get("error")?)?,
            model: row.try_get("model")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

/// What the upstream history needs of a stored message.
#[derive(Debug, Clone)]
pub struct HistoryRow {
    pub role: Role,
    pub content: String,
    /// The steps column: a JSON array text (see the chat module's
    /// `StoredStep`).
    pub steps: String,
}

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

/// The end state of a reply.
#[derive(Debug, Clone)]
pub struct FinalReply {
    pub status: Status,
    pub content: String,
    pub reasoning: Option<String>,
    /// JSON array text.
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

/// Writes a reply's final state, touches its conversation's `updated_at`
/// and adds its tokens to the usage ledger, inside the writer's transaction.
///
/// Errors: the statement's SQLite error.
pub(super) fn write_final(
    tx: &rusqlite::Transaction<'_>,
    message_id: Uuid,
    model: &str,
    reply: &FinalReply,
    now: i64,
) -> Result<(), StoreError> {
    let usage = serde_json::json!({
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    });
    let id = message_id.to_string();
    tx.prepare_cached(FINAL_MESSAGE)?.execute(rusqlite::params![
        reply.status.as_str(),
        reply.content,
        reply.reasoning,
        reply.steps.to_string(),
        reply.tool_calls.as_ref().map(Value::to_string),
        reply.sources.as_ref().map(Value::to_string),
        usage.to_string(),
        reply.finish_reason,
        reply.error.as_ref().map(Value::to_string),
        now,
        id,
    ])?;
    tx.prepare_cached(TOUCH_CONVERSATION_OF)?
        .execute(rusqlite::params![now, id])?;
    if reply.prompt_tokens + reply.completion_tokens > 0 {
        usage::add(tx, model, reply.prompt_tokens, reply.completion_tokens)?;
    }
    Ok(())
}

/// A reply's final state (parameters in [`write_final`]'s order).
const FINAL_MESSAGE: &str = "UPDATE messages SET status = ?, content = ?, reasoning = ?, steps = ?, tool_calls = ?, \
    sources = ?, usage = ?, finish_reason = ?, error = ?, updated_at = ? WHERE id = ?";

/// The `updated_at` of the conversation a message belongs to.
const TOUCH_CONVERSATION_OF: &str = "UPDATE conversations SET updated_at = max(updated_at, ?) \
    WHERE id = (SELECT conversation_id FROM messages WHERE id = ?)";

/// Writes a turn inside the writer's transaction: the conversation (created,
/// or its `updated_at` touched), the user message and the empty `streaming`
/// reply. Returns `false`, writing nothing, when the conversation is gone.
///
/// Errors: the statement's SQLite error.
pub(super) fn write_turn(tx: &rusqlite::Transaction<'_>, turn: &NewTurn, now: i64) -> Result<bool, StoreError> {
    let conv_id = turn.conversation.id.to_string();
    if turn.create {
        conversations::insert_sync(tx, &turn.conversation)?;
    } else {
        let touched = tx
            .prepare_cached("UPDATE conversations SET updated_at = max(updated_at, ?) WHERE id = ?")?
            .execute(rusqlite::params![now, conv_id])?;
        if touched == 0 {
            return Ok(false);
        }
    }
    let mut insert = tx.prepare_cached(INSERT_MESSAGE)?;
    for (id, role, content, status) in [
        (
            turn.user_message_id,
            Role::User,
            turn.user_content.as_str(),
            Status::Complete,
        ),
        (turn.assistant_message_id, Role::Assistant, "", Status::Streaming),
    ] {
        insert.execute(rusqlite::params![
            id.to_string(),
            conv_id,
            role.as_str(),
            content,
            status.as_str(),
            turn.model,
            now,
            now,
        ])?;
    }
    Ok(true)
}

/// One message row (the user's first: rowid order is conversation order).
const INSERT_MESSAGE: &str = "INSERT INTO messages \
    (id, conversation_id, role, content, status, model, created_at, updated_at) \
    VALUES (?, ?, ?, ?, ?, ?, ?, ?)";

impl Store {
    /// Commits a turn's user message and its `streaming` assistant row in one
    /// transaction (creating the conversation if asked). Returns `Ok(false)`
    /// when the conversation does not exist (and `create` is false).
    ///
    /// Goes through the [`Writer`](super::Writer): turns that arrive while a
    /// transaction runs are committed together in the next one (group
    /// commit), so a burst of new chats costs one transaction, not one each
    /// queued behind the other.
    ///
    /// Errors: [`StoreError::Write`] when the transaction failed.
    pub async fn begin_turn(&self, turn: &NewTurn) -> Result<bool, StoreError> {
        self.writer.begin(turn.clone()).await
    }

    /// Every message of a conversation, oldest first.
    pub async fn messages(&self, conversation_id: Uuid) -> Result<Vec<MessageRow>, StoreError> {
        let rows = sqlx::query("SELECT * FROM messages WHERE conversation_id = ? ORDER BY created_at, rowid")
            .bind(conversation_id.to_string())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(MessageRow::from_row).collect()
    }

    /// A conversation's messages, oldest first, but `except` (the reply
    /// being generated), with only what the upstream history needs: four
    /// columns and no JSON parsed here. A 1,000-message conversation loads
    /// several times faster than through [`Store::messages`].
    pub async fn history(&self, conversation_id: Uuid, except: Uuid) -> Result<Vec<HistoryRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT role, content, steps FROM messages WHERE conversation_id = ? AND id != ? \
             ORDER BY created_at, rowid",
        )
        .bind(conversation_id.to_string())
        .bind(except.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let role: String = row.try_get("role")?;
                Ok(HistoryRow {
                    role: Role::parse(&role)?,
                    content: row.try_get("content")?,
                    steps: row.try_get("steps")?,
                })
            })
            .collect()
    }

    /// One message, or `None`.
    pub async fn message(&self, id: Uuid) -> Result<Option<MessageRow>, StoreError> {
        let row = sqlx::query("SELECT * FROM messages WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(MessageRow::from_row).transpose()
    }

    /// The id of the user message a reply answers (the user message just
    /// before it in its conversation).
    pub async fn user_message_before(&self, reply: &MessageRow) -> Result<Option<Uuid>, StoreError> {
        let id: Option<String> = sqlx::query_scalar(
            "SELECT id FROM messages WHERE conversation_id = ? AND role = 'user' \
             AND rowid < (SELECT rowid FROM messages WHERE id = ?) ORDER BY rowid DESC LIMIT 1",
        )
        .bind(reply.conversation_id.to_string())
        .bind(reply.id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        id.as_deref().map(parse_id).transpose()
    }

    /// The stored events of a reply, by seq: `(seq, event name, JSON data)`.
    ///
    /// Errors: [`StoreError::Corrupt`] for a stored line that does not parse.
    pub async fn reply_events(&self, message_id: Uuid) -> Result<Vec<(u64, String, String)>, StoreError> {
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT events FROM reply_event_batches WHERE message_id = ? ORDER BY first_seq")
                .bind(message_id.to_string())
                .fetch_all(&self.pool)
                .await?;
        super::writer::parse_event_rows(&rows)
    }

    /// Deletes the stored events of replies that are final and were last
    /// written before `before_ms`. Returns how many rows went.
    pub async fn prune_events(&self, before_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM reply_event_batches WHERE message_id IN \
             (SELECT id FROM messages WHERE status != 'streaming' AND updated_at < ?)",
        )
        .bind(before_ms)
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected())
    }

    /// Marks replies left `streaming` by a previous process as `interrupted`
    /// (keeping their partial content). Returns how many were marked.
    pub async fn mark_interrupted(&self) -> Result<u64, StoreError> {
        let done = sqlx::query("UPDATE messages SET status = 'interrupted', updated_at = ? WHERE status = 'streaming'")
            .bind(now_ms())
            .execute(&self.write)
            .await?;
        Ok(done.rows_affected())
    }
}
