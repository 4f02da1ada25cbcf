//! The token-usage ledger: prompt and completion tokens per model and UTC day.

use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError};

/// One ledger row.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UsageRow {
    pub model: String,
    /// UTC day, `YYYY-MM-DD`.
    pub day: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// Today's UTC day as `YYYY-MM-DD`.
fn today() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%d").to_string()
}

/// Adds `prompt` and `completion` tokens to today's (UTC) row of `model`,
/// inside the writer's transaction.
///
/// Errors: the statement's SQLite error.
pub(super) fn add(tx: &rusqlite::Transaction<'_>, model: &str, prompt: u64, completion: u64) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO token_usage (model, day, prompt_tokens, completion_tokens) VALUES (?, ?, ?, ?) \
         ON CONFLICT (model, day) DO UPDATE SET prompt_tokens = prompt_tokens + excluded.prompt_tokens, \
         completion_tokens = completion_tokens + excluded.completion_tokens",
    )?
    .execute(rusqlite::params![
        model,
        today(),
        i64::try_from(prompt).unwrap_or(i64::MAX),
        i64::try_from(completion).unwrap_or(i64::MAX),
    ])?;
    Ok(())
}

impl Store {
    /// The whole ledger, newest day first.
    pub async fn usage(&self) -> Result<Vec<UsageRow>, StoreError> {
        let rows = sqlx::query("SELECT * FROM token_usage ORDER BY day DESC, model")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let p: i64 = r.try_get("prompt_tokens")?;
                let c: i64 = r.try_get("completion_tokens")?;
                Ok(UsageRow {
                    model: r.try_get("model")?,
                    day: r.try_get("day")?,
                    prompt_tokens: u64::try_from(p).unwrap_or(0),
                    completion_tokens: u64::try_from(c).unwrap_or(0),
                })
            })
            .collect()
    }
}
