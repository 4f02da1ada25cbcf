//! [`Turns`] on SQLite: every write goes through the [`Writer`] thread
//! (group commit, one row per reply per batch); the history is read from
//! the pool.

use async_trait::async_trait;
use bytes::Bytes;
use sqlx::Row;
use uuid::Uuid;

use super::SqliteStore;
use super::writer::Writer;
use crate::domain::{Role, now_ms};
use crate::store::{FinalReply, HistoryRow, NewTurn, StoreError, TerminalEvent, Turns};

#[async_trait]
impl Turns for SqliteStore {
    /// Goes through the [`Writer`]: turns that arrive while a transaction
    /// runs are committed together in the next one (group commit), so a
    /// burst of new chats costs one transaction, not one each queued behind
    /// the other.
    async fn begin_turn(&self, turn: &NewTurn) -> Result<bool, StoreError> {
        self.writer.begin(turn.clone()).await
    }

    fn event(&self, message_id: Uuid, seq: u64, name: &'static str, data: Bytes, urgent: bool) {
        self.writer.event(message_id, seq, name, data, urgent);
    }

    fn snapshot(&self, message_id: Uuid, content: String, reasoning: Option<String>, steps: String) {
        self.writer.snapshot(message_id, content, reasoning, steps);
    }

    async fn finish(
        &self,
        message_id: Uuid,
        model: &str,
        reply: FinalReply,
        terminal: TerminalEvent,
    ) -> Result<(), StoreError> {
        Writer::finish(&self.writer, message_id, model, reply, terminal).await
    }

    async fn flush(&self) {
        self.writer.flush().await;
    }

    fn queue_full(&self) -> bool {
        self.writer.queue_full()
    }

    async fn queue_room(&self) {
        self.writer.queue_room().await;
    }

    fn queue_depth(&self) -> u64 {
        self.writer.queue_depth() as u64
    }

    /// Four columns and no JSON parsed here: a 1,000-message conversation
    /// loads several times faster than through `messages`.
    async fn history(&self, conversation_id: Uuid, except: Uuid) -> Result<Vec<HistoryRow>, StoreError> {
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
                    role: Role::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("unknown role {role:?}")))?,
                    content: row.try_get("content")?,
                    steps: row.try_get("steps")?,
                })
            })
            .collect()
    }

    async fn mark_interrupted(&self) -> Result<u64, StoreError> {
        let done = sqlx::query("UPDATE messages SET status = 'interrupted', updated_at = ? WHERE status = 'streaming'")
            .bind(now_ms())
            .execute(&self.write)
            .await?;
        Ok(done.rows_affected())
    }
}
