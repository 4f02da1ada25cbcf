//! [`Usage`] on SQLite: the `token_usage` ledger, prompt and completion
//! tokens per model and UTC day (added to by the writer).

use async_trait::async_trait;
use sqlx::Row;

use super::SqliteStore;
use crate::store::{StoreError, Usage, UsageRow};

#[async_trait]
impl Usage for SqliteStore {
    async fn usage(&self) -> Result<Vec<UsageRow>, StoreError> {
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
