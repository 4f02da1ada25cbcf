//! The SQLite backend (the default): one database file in WAL mode, read
//! through a pool of sqlx connections and written by a thread of its own
//! (the [`writer`], on rusqlite, for everything a chat writes).
//!
//! The schema lives in `migrations/` beside this file and is embedded into
//! the binary with `sqlx::migrate!`, so a fresh database file is created and
//! migrated at start. Ids are UUIDv7 strings, timestamps Unix epoch
//! milliseconds (UTC).
//!
//! - `conversations.rs`, `turns.rs`, `replays.rs`, `documents.rs` (FTS5),
//!   `usage.rs`: the queries of each store trait, on the sqlx pools;
//! - [`writer`]: new turns, reply events, snapshots and final replies.

mod conversations;
mod documents;
mod replays;
mod turns;
mod usage;
pub mod writer;

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use async_trait::async_trait;

use super::StoreError;
pub use documents::fts_query;
use writer::Writer;

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Db(Box::new(e))
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migrate(Box::new(e))
    }
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
pub struct SqliteStore {
    pool: SqlitePool,
    write: SqlitePool,
    writer: Writer,
}

/// Connections for reads (history, listings, searches, replays).
pub const READ_CONNECTIONS: u32 = 8;

/// How long a connection waits for SQLite's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

impl SqliteStore {
    /// Opens (creating if missing) the SQLite database at `url` with WAL,
    /// `synchronous = NORMAL`, a busy timeout and foreign keys on, applies
    /// pending migrations and starts the [`Writer`] thread, whose queue is
    /// full at `queue_events` writes (`chat.writer_queue_events`).
    ///
    /// Errors: [`StoreError::Db`] or [`StoreError::Migrate`] when the file
    /// cannot be opened or migrated; [`StoreError::Unsupported`] for an
    /// in-memory database (`sqlite::memory:`), which the writer's own
    /// connection could not see.
    pub async fn open(url: &str, queue_events: usize) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        // No checkpoint inside a commit: see `maintain`. Statement
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
        sqlx::migrate!("./src/store/sqlite/migrations").run(&write).await?;
        let writer = Writer::spawn(
            options.get_filename(),
            Duration::from_millis(writer::GATHER_MS),
            queue_events,
        )?;
        Ok(Self { pool, write, writer })
    }

    /// Applies the migrations embedded from `migrations/` (beside this file).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./src/store/sqlite/migrations").run(&self.write).await?;
        Ok(())
    }

    /// The single writer for streaming data (events, snapshots, final replies).
    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    /// The pool for reads (tests of this backend).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

#[async_trait]
impl super::Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Checkpoints the WAL into the database file from a read connection,
    /// in `PASSIVE` mode (it never blocks the writer or readers). By default
    /// SQLite checkpoints inside whichever commit takes the WAL past 1,000
    /// pages, fsync included: that commit, and every new chat queued behind
    /// it, took 5 to 10 ms longer. The write connections have
    /// auto-checkpoints off, so the app calls this every second.
    async fn maintain(&self) -> Result<(), StoreError> {
        sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod contract_tests {
    //! The store contract (`crate::store::contract`) on SQLite.

    use std::sync::Arc;

    use crate::store::Store;

    /// A fresh database file in a temp dir (kept alive by the first value).
    async fn fresh() -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("contract.db").display());
        let store = crate::store::open(&url, crate::store::contract::QUEUE_EVENTS)
            .await
            .expect("open");
        (dir, store)
    }

    crate::store::contract::store_contract!(fresh);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_run_with_the_documented_pragmas() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&format!("sqlite://{}", dir.path().join("p.db").display()), 1024)
            .await
            .expect("open");
        // The database runs with the documented pragmas.
        let mut conn = store.pool().acquire().await.expect("conn");
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await
            .expect("pragma");
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut *conn)
            .await
            .expect("pragma");
        let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(&mut *conn)
            .await
            .expect("pragma");
        let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
            .fetch_one(&mut *conn)
            .await
            .expect("pragma");
        assert_eq!((journal.as_str(), synchronous, foreign_keys), ("wal", 1, 1));
        assert!(busy >= 1000, "busy_timeout {busy} ms");
    }
}
