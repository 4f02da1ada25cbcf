//! Persistence behind traits, one per family of queries, and one folder per
//! backend. Everything above the store names only these traits and
//! [`StoreError`]; [`open`] picks the backend from the database URL.
//!
//! - [`Conversations`]: create, read, list, patch, delete conversations and
//!   list their messages.
//! - [`Turns`]: a turn's rows and its reply's event writer (new turns,
//!   events, snapshots, final replies), and the history sent upstream.
//! - [`Replays`]: what a resume of a reply no longer in memory reads.
//! - [`Documents`]: the full-text index of project workspaces.
//! - [`Usage`]: the token-usage ledger.
//! - [`Store`]: all of them, plus health and housekeeping.
//!
//! Backends: [`sqlite`] (the default: one file, WAL, a writer thread).
//! Each backend keeps its own migrations next to its code. Ids are UUIDv7,
//! timestamps Unix epoch milliseconds (UTC).

mod error;
pub mod sqlite;
mod types;

#[cfg(test)]
pub(crate) mod contract;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use uuid::Uuid;

use crate::domain::{Conversation, ConversationPatch, Message, NewConversation};

pub use error::StoreError;
pub use types::{
    DocumentHit, FileStamp, FinalReply, HistoryRow, IndexedFile, MessageQuery, NewTurn, TerminalEvent, UsageRow,
};

/// Opens the database at `url`, creating and migrating it: `sqlite://PATH`
/// (the only backend so far). Streaming replies wait for room once
/// `queue_events` writes are queued (`chat.writer_queue_events`; see
/// [`Turns::queue_full`]).
///
/// Errors: [`StoreError::Unsupported`] for another scheme or an in-memory
/// SQLite database; [`StoreError::Db`] or [`StoreError::Migrate`] when the
/// database cannot be opened or migrated.
pub async fn open(url: &str, queue_events: usize) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        return Ok(Arc::new(sqlite::SqliteStore::open(url, queue_events).await?));
    }
    let scheme = url.split_once(':').map_or(url, |(scheme, _)| scheme);
    Err(StoreError::Unsupported(format!(
        "a {scheme:?} database URL: database_url must start with sqlite://, e.g. sqlite://chatd.db"
    )))
}

/// Every query family of one backend, plus health and housekeeping.
#[async_trait]
pub trait Store: Conversations + Turns + Replays + Documents + Usage + std::fmt::Debug {
    /// A trivial query; `Ok` when the database answers (`/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Housekeeping the backend wants done every second or so (SQLite: a
    /// passive WAL checkpoint). The app's background task calls it.
    async fn maintain(&self) -> Result<(), StoreError>;
}

/// Conversations and their messages.
#[async_trait]
pub trait Conversations: Send + Sync + std::fmt::Debug {
    /// Inserts a new conversation and returns it.
    async fn create_conversation(&self, new: NewConversation) -> Result<Conversation, StoreError>;

    /// The conversation with `id`, or `None`.
    async fn conversation(&self, id: Uuid) -> Result<Option<Conversation>, StoreError>;

    /// The conversation with `id` and its number of messages, in one query
    /// (what a new turn checks first), or `None`.
    async fn conversation_for_turn(&self, id: Uuid) -> Result<Option<(Conversation, u64)>, StoreError>;

    /// Up to `limit` conversations, most recently updated first, after the
    /// conversation `before` (a cursor); `None` when `before` does not exist.
    async fn list_conversations(
        &self,
        limit: u32,
        before: Option<Uuid>,
    ) -> Result<Option<Vec<Conversation>>, StoreError>;

    /// Applies `patch` (and touches `updated_at`); the updated conversation,
    /// or `None` if absent.
    async fn update_conversation(&self, id: Uuid, patch: ConversationPatch)
    -> Result<Option<Conversation>, StoreError>;

    /// Deletes the conversation with its messages; whether it existed.
    async fn delete_conversation(&self, id: Uuid) -> Result<bool, StoreError>;

    /// A page of a conversation's messages (see [`MessageQuery`]), oldest
    /// first; `None` when `query.before` is not a message of that
    /// conversation. Messages are ordered by creation, ties by insertion.
    async fn messages(&self, conversation_id: Uuid, query: MessageQuery) -> Result<Option<Vec<Message>>, StoreError>;
}

/// A turn's rows and its reply's writes, in the order a reply makes them:
/// [`Turns::begin_turn`], then any number of [`Turns::event`] and
/// [`Turns::snapshot`], then one [`Turns::finish`].
///
/// Events and snapshots are queued, not awaited: a backend gathers them and
/// writes many replies' at once (never a transaction per token). They reach
/// the database within about 100 ms, at once when `urgent`. The queue is
/// bounded by backpressure: queueing never waits or drops, but a streaming
/// reply checks [`Turns::queue_full`] before it reads its next upstream
/// chunk and, while it is full, awaits [`Turns::queue_room`].
#[async_trait]
pub trait Turns: Send + Sync + std::fmt::Debug {
    /// Commits a turn's user message and its `streaming` assistant row in one
    /// transaction (creating the conversation if asked). `Ok(false)` when the
    /// conversation does not exist (and `create` is false).
    ///
    /// Errors: [`StoreError::Write`] when the transaction failed.
    async fn begin_turn(&self, turn: &NewTurn) -> Result<bool, StoreError>;

    /// Queues one reply event: its `seq` (SSE id), name and JSON `data`.
    /// `urgent` (a terminal event sent on its own) is written at once.
    fn event(&self, message_id: Uuid, seq: u64, name: &'static str, data: Bytes, urgent: bool);

    /// Queues the partial state of a streaming reply (what a crash may
    /// keep): its text, reasoning and steps (a JSON array text).
    fn snapshot(&self, message_id: Uuid, content: String, reasoning: Option<String>, steps: String);

    /// Writes a reply's final state, its usage and its terminal event (after
    /// every event queued before them) in one transaction, and waits until
    /// it is committed: the terminal event is stored if and only if the
    /// final state is.
    ///
    /// Errors: [`StoreError::Write`] when the transaction failed or the
    /// writer has stopped.
    async fn finish(
        &self,
        message_id: Uuid,
        model: &str,
        reply: FinalReply,
        terminal: TerminalEvent,
    ) -> Result<(), StoreError>;

    /// Waits until everything queued so far is committed (or failed).
    async fn flush(&self);

    /// Whether the write queue is at its bound (`chat.writer_queue_events`
    /// queued writes): the caller should await [`Turns::queue_room`] before
    /// queueing more events. Cheap (an atomic load): called per upstream
    /// chunk.
    fn queue_full(&self) -> bool;

    /// Waits until the write queue is under its bound: at once when it is,
    /// else until a commit makes room (or the writer has stopped). Ops
    /// someone waits for ([`Turns::begin_turn`], [`Turns::finish`],
    /// [`Turns::flush`]) never wait for room.
    async fn queue_room(&self);

    /// Writes queued and not yet committed (the `chatd_store_queue_depth`
    /// gauge).
    fn queue_depth(&self) -> u64;

    /// A conversation's messages, oldest first, but `except` (the reply
    /// being generated), with only what the upstream history needs.
    async fn history(&self, conversation_id: Uuid, except: Uuid) -> Result<Vec<HistoryRow>, StoreError>;

    /// Marks replies left `streaming` by a previous process as `interrupted`
    /// (keeping their partial content). Returns how many were marked.
    async fn mark_interrupted(&self) -> Result<u64, StoreError>;
}

/// What a resume of a reply no longer in memory reads.
#[async_trait]
pub trait Replays: Send + Sync + std::fmt::Debug {
    /// One message with its steps, or `None`.
    async fn message(&self, id: Uuid) -> Result<Option<Message>, StoreError>;

    /// The id of the user message a reply answers (the user message just
    /// before it in its conversation).
    async fn user_message_before(&self, reply: &Message) -> Result<Option<Uuid>, StoreError>;

    /// The stored events of a reply, by seq: `(seq, event name, JSON data)`.
    ///
    /// Errors: [`StoreError::Corrupt`] for a stored event that does not parse.
    async fn reply_events(&self, message_id: Uuid) -> Result<Vec<(u64, String, String)>, StoreError>;

    /// Deletes the stored events of replies that are final and were last
    /// written before `before_ms` (Unix epoch ms). Returns how many rows went.
    async fn prune_events(&self, before_ms: i64) -> Result<u64, StoreError>;
}

/// The full-text index of project workspaces: one entry per file, with
/// the version of the file it was read from.
#[async_trait]
pub trait Documents: Send + Sync + std::fmt::Debug {
    /// Indexes (or re-indexes) the file `path` of `project_id` with its
    /// `title` and text `body`, and records `stamp` as the version read. One
    /// transaction; the previous entry of the file, if any, is replaced.
    async fn upsert_document(
        &self,
        project_id: &str,
        path: &str,
        title: &str,
        body: &str,
        stamp: FileStamp,
    ) -> Result<(), StoreError>;

    /// Records that the file at `stamp` is not indexed (not UTF-8 text),
    /// dropping an older entry; a rescan skips it until it changes.
    async fn mark_unindexed(&self, project_id: &str, path: &str, stamp: FileStamp) -> Result<(), StoreError>;

    /// Removes a file from the index; whether it was there.
    async fn remove_document(&self, project_id: &str, path: &str) -> Result<bool, StoreError>;

    /// The best `limit` documents of `project_id` that contain every one of
    /// `terms` (`any == false`) or any of them (`any == true`), best first.
    /// Terms are words, never query syntax: a backend quotes them.
    async fn search_documents(
        &self,
        project_id: &str,
        terms: &[String],
        any: bool,
        limit: u32,
    ) -> Result<Vec<DocumentHit>, StoreError>;

    /// Every file of `project_id` the index has looked at.
    async fn indexed_files(&self, project_id: &str) -> Result<Vec<IndexedFile>, StoreError>;
}

/// The token-usage ledger: prompt and completion tokens per model and UTC
/// day, added to by [`Turns::finish`].
#[async_trait]
pub trait Usage: Send + Sync + std::fmt::Debug {
    /// The whole ledger, newest day first.
    async fn usage(&self) -> Result<Vec<UsageRow>, StoreError>;
}
