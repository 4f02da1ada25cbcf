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

/// The statement that adds tokens to today's row of a model (parameters:
/// see [`bind_add`]), as a literal for `concat!`.
macro_rules! add_sql {
    () => {
        "INSERT INTO token_usage (model, day, prompt_tokens, completion_tokens) VALUES (?, ?, ?, ?) \
         ON CONFLICT (model, day) DO UPDATE SET prompt_tokens = prompt_tokens + excluded.prompt_tokens, \
         completion_tokens = completion_tokens + excluded.completion_tokens;"
    };
}
pub(super) use add_sql;

/// Binds the parameters of `add_sql!()` (`model`, today, `prompt` and
/// `completion` tokens) to `query`, whose SQL ends with it.
pub(super) fn bind_add<'q>(
    query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    model: &'q str,
    prompt: u64,
    completion: u64,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
    query
        .bind(model)
        .bind(today())
        .bind(i64::try_from(prompt).unwrap_or(i64::MAX))
        .bind(i64::try_from(completion).unwrap_or(i64::MAX))
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
