//! [`Replays`] on SQLite: a stored message, the user message a reply
//! answers, and a reply's stored events (`reply_event_batches`, one row per
//! reply and writer batch).

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use uuid::Uuid;

use super::SqliteStore;
use crate::domain::{Message, Role, Status};
use crate::store::error::{parse_id, parse_json};
use crate::store::{MessageQuery, Replays, StoreError};

/// A `messages` row (`SELECT *`, or with a NULL `steps`: no steps).
pub(super) fn from_row(row: &SqliteRow) -> Result<Message, StoreError> {
    let id: String = row.try_get("id")?;
    let conversation_id: String = row.try_get("conversation_id")?;
    let role: String = row.try_get("role")?;
    let status: String = row.try_get("status")?;
    let steps: Option<String> = row.try_get("steps")?;
    Ok(Message {
        id: parse_id(&id)?,
        conversation_id: parse_id(&conversation_id)?,
        role: Role::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("unknown role {role:?}")))?,
        content: row.try_get("content")?,
        reasoning: row.try_get("reasoning")?,
        steps: parse_json(steps)?,
        tool_calls: parse_json(row.try_get("tool_calls")?)?,
        usage: parse_json(row.try_get("usage")?)?,
        sources: parse_json(row.try_get("sources")?)?,
        status: Status::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("unknown status {status:?}")))?,
        finish_reason: row.try_get("finish_reason")?,
        error: parse_json(row.try_get("error")?)?,
        model: row.try_get("model")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// A page of a conversation's messages (see [`MessageQuery`]), oldest
/// first, in `(created_at, rowid)` order; `None` when `query.before` is not
/// a message of the conversation.
pub(super) async fn messages(
    store: &SqliteStore,
    conversation_id: Uuid,
    query: MessageQuery,
) -> Result<Option<Vec<Message>>, StoreError> {
    // No cursor: older than everything.
    let mut anchor = (i64::MAX, i64::MAX);
    if let Some(before) = query.before {
        let found: Option<(i64, i64)> =
            sqlx::query_as("SELECT created_at, rowid FROM messages WHERE id = ? AND conversation_id = ?")
                .bind(before.to_string())
                .bind(conversation_id.to_string())
                .fetch_optional(&store.pool)
                .await?;
        let Some(found) = found else { return Ok(None) };
        anchor = found;
    }
    // Without steps, the column is not read: NULL in its place.
    let rows = sqlx::query(
        "SELECT id, conversation_id, role, content, reasoning, CASE WHEN ? THEN steps END AS steps, tool_calls, \
         usage, sources, status, finish_reason, error, model, created_at, updated_at FROM messages \
         WHERE conversation_id = ? AND (created_at, rowid) < (?, ?) ORDER BY created_at DESC, rowid DESC LIMIT ?",
    )
    .bind(query.steps)
    .bind(conversation_id.to_string())
    .bind(anchor.0)
    .bind(anchor.1)
    .bind(i64::from(query.limit))
    .fetch_all(&store.pool)
    .await?;
    let mut page = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
    page.reverse();
    Ok(Some(page))
}

#[async_trait]
impl Replays for SqliteStore {
    async fn message(&self, id: Uuid) -> Result<Option<Message>, StoreError> {
        let row = sqlx::query("SELECT * FROM messages WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    async fn user_message_before(&self, reply: &Message) -> Result<Option<Uuid>, StoreError> {
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

    async fn reply_events(&self, message_id: Uuid) -> Result<Vec<(u64, String, String)>, StoreError> {
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT events FROM reply_event_batches WHERE message_id = ? ORDER BY first_seq")
                .bind(message_id.to_string())
                .fetch_all(&self.pool)
                .await?;
        super::writer::parse_event_rows(&rows)
    }

    async fn prune_events(&self, before_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM reply_event_batches WHERE message_id IN \
             (SELECT id FROM messages WHERE status != 'streaming' AND updated_at < ?)",
        )
        .bind(before_ms)
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected())
    }
}
