//! [`Conversations`] on SQLite: create, read, list (newest first, cursor
//! paging), patch and delete, and a conversation's messages.

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use uuid::Uuid;

use super::SqliteStore;
use super::writer::{FOR_TURN, INSERT_CONVERSATION};
use crate::domain::{Conversation, ConversationPatch, Message, NewConversation, now_ms};
use crate::store::error::parse_id;
use crate::store::{Conversations, MessageQuery, StoreError};

/// A `conversations` row (`SELECT *`).
pub(super) fn from_row(row: &SqliteRow) -> Result<Conversation, StoreError> {
    let id: String = row.try_get("id")?;
    let max_tokens: Option<i64> = row.try_get("max_tokens")?;
    Ok(Conversation {
        id: parse_id(&id)?,
        title: row.try_get("title")?,
        model: row.try_get("model")?,
        provider: row.try_get("provider")?,
        project_id: row.try_get("project_id")?,
        system_prompt: row.try_get("system_prompt")?,
        temperature: row.try_get("temperature")?,
        max_tokens: max_tokens.and_then(|v| u32::try_from(v).ok()),
        thinking: row.try_get("thinking")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Binds a conversation's columns in `INSERT_CONVERSATION` order and runs it.
async fn insert<'c, E>(exec: E, c: &Conversation) -> Result<(), StoreError>
where
    E: sqlx::Executor<'c, Database = sqlx::Sqlite>,
{
    sqlx::query(INSERT_CONVERSATION)
        .bind(c.id.to_string())
        .bind(&c.title)
        .bind(&c.model)
        .bind(&c.provider)
        .bind(&c.project_id)
        .bind(&c.system_prompt)
        .bind(c.temperature)
        .bind(c.max_tokens.map(i64::from))
        .bind(c.thinking)
        .bind(c.created_at)
        .bind(c.updated_at)
        .execute(exec)
        .await?;
    Ok(())
}

#[async_trait]
impl Conversations for SqliteStore {
    async fn create_conversation(&self, new: NewConversation) -> Result<Conversation, StoreError> {
        let c = new.into_conversation();
        insert(&self.write, &c).await?;
        Ok(c)
    }

    /// The conversation with `id`, or `None`.
    async fn conversation(&self, id: Uuid) -> Result<Option<Conversation>, StoreError> {
        let row = sqlx::query("SELECT * FROM conversations WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// The conversation with `id` and its number of messages, in one query
    /// (what a new turn checks first), or `None`.
    ///
    /// Read on the writer's connection when it is free, else through the
    /// read pool (the same query; WAL readers see every committed turn).
    async fn conversation_for_turn(&self, id: Uuid) -> Result<Option<(Conversation, u64)>, StoreError> {
        if let Some(found) = self.writer.now(|conn| super::writer::conversation_for_turn(conn, id)) {
            return found;
        }
        let row = sqlx::query(FOR_TURN)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref()
            .map(|row| {
                let count: i64 = row.try_get("message_count")?;
                Ok((from_row(row)?, u64::try_from(count).unwrap_or(0)))
            })
            .transpose()
    }

    async fn list_conversations(
        &self,
        limit: u32,
        before: Option<Uuid>,
    ) -> Result<Option<Vec<Conversation>>, StoreError> {
        let rows = match before {
            None => {
                sqlx::query("SELECT * FROM conversations ORDER BY updated_at DESC, id DESC LIMIT ?")
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?
            }
            Some(cursor) => {
                let Some(anchor) = self.conversation(cursor).await? else {
                    return Ok(None);
                };
                sqlx::query(
                    "SELECT * FROM conversations WHERE (updated_at, id) < (?, ?) \
                     ORDER BY updated_at DESC, id DESC LIMIT ?",
                )
                .bind(anchor.updated_at)
                .bind(anchor.id.to_string())
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(from_row).collect::<Result<_, _>>().map(Some)
    }

    /// Applies `patch`; returns the updated conversation or `None` if absent.
    async fn update_conversation(
        &self,
        id: Uuid,
        patch: ConversationPatch,
    ) -> Result<Option<Conversation>, StoreError> {
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
        let row = sqlx::query("SELECT * FROM conversations WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut c = from_row(&row)?;
        c.apply(patch);
        c.updated_at = now_ms().max(c.updated_at);
        sqlx::query(
            "UPDATE conversations SET title = ?, model = ?, provider = ?, system_prompt = ?, temperature = ?, \
             max_tokens = ?, thinking = ?, updated_at = ? WHERE id = ?",
        )
        .bind(&c.title)
        .bind(&c.model)
        .bind(&c.provider)
        .bind(&c.system_prompt)
        .bind(c.temperature)
        .bind(c.max_tokens.map(i64::from))
        .bind(c.thinking)
        .bind(c.updated_at)
        .bind(c.id.to_string())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(c))
    }

    /// Deletes the conversation and (by cascade) its messages. Returns
    /// whether it existed.
    async fn delete_conversation(&self, id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM conversations WHERE id = ?")
            .bind(id.to_string())
            .execute(&self.write)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn messages(&self, conversation_id: Uuid, query: MessageQuery) -> Result<Option<Vec<Message>>, StoreError> {
        super::replays::messages(self, conversation_id, query).await
    }
}
