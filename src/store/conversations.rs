//! Conversation rows: create, read, list (newest first, cursor paging),
//! patch and delete.

use serde::Serialize;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use uuid::Uuid;

use super::{Store, StoreError, now_ms, parse_id};

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
    #[serde(serialize_with = "super::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    /// Last change (including a new message), Unix epoch ms (RFC 3339 in JSON).
    #[serde(serialize_with = "super::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: i64,
}

/// Fields of a new conversation.
#[derive(Debug, Clone, Default)]
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
#[derive(Debug, Clone, Default)]
pub struct ConversationPatch {
    pub title: Option<Option<String>>,
    pub model: Option<Option<String>>,
    pub provider: Option<Option<String>>,
    pub system_prompt: Option<Option<String>>,
    pub temperature: Option<Option<f64>>,
    pub max_tokens: Option<Option<u32>>,
    pub thinking: Option<Option<bool>>,
}

impl Conversation {
    pub(super) fn from_row(row: &SqliteRow) -> Result<Self, StoreError> {
        let id: String = row.try_get("id")?;
        let max_tokens: Option<i64> = row.try_get("max_tokens")?;
        Ok(Self {
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

    /// Applies `patch` to this value (used by [`Store::update_conversation`]).
    fn apply(&mut self, patch: ConversationPatch) {
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

pub(super) const INSERT_CONVERSATION: &str = "INSERT INTO conversations \
    (id, title, model, provider, project_id, system_prompt, temperature, max_tokens, thinking, created_at, updated_at) \
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

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

/// [`insert`] inside the writer's transaction.
///
/// Errors: the statement's SQLite error.
pub(super) fn insert_sync(tx: &rusqlite::Transaction<'_>, c: &Conversation) -> Result<(), StoreError> {
    tx.prepare_cached(INSERT_CONVERSATION)?.execute(rusqlite::params![
        c.id.to_string(),
        c.title,
        c.model,
        c.provider,
        c.project_id,
        c.system_prompt,
        c.temperature,
        c.max_tokens,
        c.thinking,
        c.created_at,
        c.updated_at,
    ])?;
    Ok(())
}

/// A conversation and its number of messages.
const FOR_TURN: &str = "SELECT c.*, (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id) \
    AS message_count FROM conversations c WHERE c.id = ?";

/// [`FOR_TURN`] on a rusqlite connection (see
/// [`Store::conversation_for_turn`]).
fn for_turn_now(conn: &mut rusqlite::Connection, id: Uuid) -> Result<Option<(Conversation, u64)>, StoreError> {
    let mut statement = conn.prepare_cached(FOR_TURN)?;
    let mut rows = statement.query([id.to_string()])?;
    let Some(row) = rows.next()? else {
        return Ok(None);
    };
    let stored_id: String = row.get("id")?;
    let max_tokens: Option<i64> = row.get("max_tokens")?;
    let count: i64 = row.get("message_count")?;
    let conversation = Conversation {
        id: parse_id(&stored_id)?,
        title: row.get("title")?,
        model: row.get("model")?,
        provider: row.get("provider")?,
        project_id: row.get("project_id")?,
        system_prompt: row.get("system_prompt")?,
        temperature: row.get("temperature")?,
        max_tokens: max_tokens.and_then(|v| u32::try_from(v).ok()),
        thinking: row.get("thinking")?,
        created_at: row.get("created_at")?,
        updated_at: row.get("updated_at")?,
    };
    Ok(Some((conversation, u64::try_from(count).unwrap_or(0))))
}

impl NewConversation {
    /// The row this creates now, with a fresh UUIDv7.
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

impl Store {
    /// Inserts a new conversation and returns it.
    pub async fn create_conversation(&self, new: NewConversation) -> Result<Conversation, StoreError> {
        let c = new.into_conversation();
        insert(&self.write, &c).await?;
        Ok(c)
    }

    /// The conversation with `id`, or `None`.
    pub async fn conversation(&self, id: Uuid) -> Result<Option<Conversation>, StoreError> {
        let row = sqlx::query("SELECT * FROM conversations WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Conversation::from_row).transpose()
    }

    /// The conversation with `id` and its number of messages, in one query
    /// (what a new turn checks first), or `None`.
    ///
    /// Read on the writer's connection when it is free, else through the
    /// read pool (the same query; WAL readers see every committed turn).
    pub async fn conversation_for_turn(&self, id: Uuid) -> Result<Option<(Conversation, u64)>, StoreError> {
        if let Some(found) = self.writer.now(|conn| for_turn_now(conn, id)) {
            return found;
        }
        let row = sqlx::query(FOR_TURN)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref()
            .map(|row| {
                let count: i64 = row.try_get("message_count")?;
                Ok((Conversation::from_row(row)?, u64::try_from(count).unwrap_or(0)))
            })
            .transpose()
    }

    pub async fn list_conversations(
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
        rows.iter()
            .map(Conversation::from_row)
            .collect::<Result<_, _>>()
            .map(Some)
    }

    /// Applies `patch`; returns the updated conversation or `None` if absent.
    pub async fn update_conversation(
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
        let mut c = Conversation::from_row(&row)?;
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
    pub async fn delete_conversation(&self, id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM conversations WHERE id = ?")
            .bind(id.to_string())
            .execute(&self.write)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
