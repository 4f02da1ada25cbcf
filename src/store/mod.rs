//! SQLite persistence through sqlx: conversations, messages, the
//! token-usage ledger and the full-text index of project workspaces.
//!
//! The schema lives in `migrations/` and is embedded into the binary with
//! `sqlx::migrate!`, so a fresh database file is created and migrated at start.
//! Ids are UUIDv7 strings, timestamps Unix epoch milliseconds (UTC).

mod conversations;
mod documents;
mod messages;
mod usage;
mod writer;

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

pub use conversations::{Conversation, ConversationPatch, NewConversation};
pub use documents::{DocumentHit, FileStamp, IndexedFile};
pub use messages::{FinalReply, HistoryRow, MessageRow, NewTurn, Role, Status};
pub use usage::UsageRow;
pub use writer::{TerminalEvent, Writer};

/// Errors of the persistence layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed (I/O, lock timeout, constraint).
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// Applying the embedded migrations failed.
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The writer's connection failed (I/O, lock timeout, constraint).
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A batched write (through the [`Writer`]) failed.
    #[error("database write failed: {0}")]
    Write(String),
    /// The configuration asks for something the store cannot do.
    #[error("unsupported database: {0}")]
    Unsupported(String),
    /// A stored value could not be decoded (corrupt row or JSON column).
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// Handle to the database; cheap to clone (two connection pools and the
/// writer thread).
///
/// Reads go through a pool of [`READ_CONNECTIONS`]. Everything written while
/// chatting (new turns, reply events, snapshots, final replies) goes through
/// the [`Writer`]'s connection on its own thread; the rare other writes
/// (conversation edits and deletes, the workspace index, pruning) through a
/// second write connection, in order. SQLite lets one writer in at a time:
/// when those two meet, the later one sleeps in SQLite's busy handler (1, 2,
/// 5, ... ms), which is why chat traffic never uses the second one.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
    write: SqlitePool,
    writer: Writer,
}

/// Connections for reads (history, listings, searches, replays).
pub const READ_CONNECTIONS: u32 = 8;

/// How long a connection waits for SQLite's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

impl Store {
    /// Opens (creating if missing) the SQLite database at `url` with WAL,
    /// `synchronous = NORMAL`, a busy timeout and foreign keys on, applies
    /// pending migrations and starts the [`Writer`] thread.
    ///
    /// Errors: [`StoreError::Db`] or [`StoreError::Migrate`] when the file
    /// cannot be opened or migrated; [`StoreError::Unsupported`] for an
    /// in-memory database (`sqlite::memory:`), which the writer's own
    /// connection could not see.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        // No checkpoint inside a commit: see `spawn_checkpoints`. Statement
        // journals (multi-row inserts in a transaction) stay in memory, not
        // in a temp file written per batch.
        // No ping before each use (`test_before_acquire`): for SQLite it is
        // a round trip to the connection's thread, which under load costs
        // about as much as the statement after it. A broken connection
        // still fails that statement.
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_with(
                options
                    .clone()
                    .pragma("wal_autocheckpoint", "0")
                    .pragma("temp_store", "memory"),
            )
            .await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(READ_CONNECTIONS)
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations").run(&write).await?;
        let writer = Writer::spawn(options.get_filename(), Duration::from_millis(writer::GATHER_MS))?;
        let store = Self { pool, write, writer };
        spawn_checkpoints(store.pool.clone());
        Ok(store)
    }

    /// Applies the migrations embedded from `migrations/`.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations").run(&self.write).await?;
        Ok(())
    }

    /// The single writer for streaming data (events, snapshots, final replies).
    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    /// The pool for reads, for health checks and tests.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Runs `SELECT 1`; used by `/readyz`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// How often the WAL is checkpointed into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Checkpoints the WAL every [`CHECKPOINT_EVERY`] from a read connection, in
/// `PASSIVE` mode (it never blocks the writer or readers). By default SQLite
/// checkpoints inside whichever commit takes the WAL past 1,000 pages,
/// fsync included: that commit, and every new chat queued behind it, took
/// 5 to 10 ms longer. The write connection has auto-checkpoints off.
fn spawn_checkpoints(pool: SqlitePool) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(CHECKPOINT_EVERY).await;
            if pool.is_closed() {
                return;
            }
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&pool).await {
                tracing::warn!(error = %e, "WAL checkpoint failed");
            }
        }
    });
}

/// Current time as Unix epoch milliseconds.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Parses a stored id column.
fn parse_id(s: &str) -> Result<uuid::Uuid, StoreError> {
    uuid::Uuid::parse_str(s).map_err(|e| StoreError::Corrupt(format!("bad id {s:?}: {e}")))
}

/// Parses an optional JSON text column.
fn parse_json(s: Option<String>) -> Result<Option<serde_json::Value>, StoreError> {
    s.map(|text| serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("bad JSON column: {e}"))))
        .transpose()
}

/// Serializes Unix epoch ms as an RFC 3339 UTC string (API responses).
fn rfc3339<S: serde::Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    match jiff::Timestamp::from_millisecond(*ms) {
        Ok(t) => s.serialize_str(&format!("{t:.3}")),
        Err(_) => s.serialize_i64(*ms),
    }
}
