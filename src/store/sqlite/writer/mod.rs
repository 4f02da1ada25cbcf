//! The single writer for streaming data: new turns, reply events,
//! partial-reply snapshots and final replies go through one thread that
//! collects for up to [`GATHER_MS`] (less when someone waits) and applies
//! what it collected in one transaction, the events of each reply as one
//! row. Hundreds of replies streaming at once thus cost one SQLite write
//! transaction at a time, never a "database is locked", and neither a
//! transaction nor a row per token.
//!
//! The thread owns a synchronous SQLite connection (rusqlite, on the same
//! SQLite library as sqlx), so a transaction runs start to end without a
//! hand-off per statement. Through sqlx each statement was a round trip to
//! the connection's thread and back to a tokio worker; on a busy machine
//! each one waited to be scheduled, and a new chat's commit took 0.6 ms at
//! C=64 and a streaming batch 11 ms on average at C=512 (BENCHMARKS.md).
//!
//! The queue is bounded by backpressure, not by refusing writes (see
//! [`queue`]): at `chat.writer_queue_events` queued ops, streaming replies
//! wait before reading more of their upstream until a commit makes room.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::BUSY_TIMEOUT;
use crate::store::{FinalReply, NewTurn, StoreError, TerminalEvent};

mod apply;
mod queue;
#[cfg(test)]
mod tests;

pub(super) use apply::{FOR_TURN, INSERT_CONVERSATION, conversation_for_turn, parse_event_rows};
use apply::{apply, commit_turn_now};
use queue::{Queue, StopOnExit};

/// Most operations applied in one transaction. Large: when replies stream
/// faster than the writer commits, bigger batches cost less per event (one
/// row per streaming reply, whatever its number of events), so a writer
/// that falls behind catches up.
const MAX_BATCH: usize = 16_384;

/// One queued write.
#[derive(Debug)]
pub(super) enum Op {
    Begin {
        turn: Box<NewTurn>,
        done: oneshot::Sender<Result<bool, String>>,
    },
    Event {
        message_id: Uuid,
        seq: u64,
        name: &'static str,
        /// The event's JSON (UTF-8).
        data: Bytes,
        /// Committed at once rather than gathered (see [`is_urgent`]).
        urgent: bool,
    },
    Snapshot {
        message_id: Uuid,
        content: String,
        reasoning: Option<String>,
        steps: String,
    },
    Finish {
        message_id: Uuid,
        model: String,
        reply: Box<FinalReply>,
        /// The reply's terminal event, stored in the same transaction.
        terminal: TerminalEvent,
        done: oneshot::Sender<Result<(), String>>,
    },
    Flush(oneshot::Sender<()>),
}

/// Handle to the writer thread; cheap to clone. The thread stops when the
/// last handle is dropped, after committing what was queued.
#[derive(Debug, Clone)]
pub struct Writer {
    tx: mpsc::UnboundedSender<Op>,
    /// Woken when an urgent op is queued (someone waits for a commit).
    thread: std::thread::Thread,
    /// The writer's connection, held by the thread while it commits.
    conn: Arc<Mutex<Connection>>,
    /// Ops queued and not yet applied, against `chat.writer_queue_events`.
    queue: Arc<Queue>,
}

impl Writer {
    /// Opens a connection to the database file at `path` (which exists and
    /// is migrated) and starts the writer thread on it; events gather for up
    /// to `gather` (the store uses [`GATHER_MS`]), and streaming replies
    /// wait for room at `queue_events` queued ops (`chat.writer_queue_events`;
    /// see [`Writer::queue_full`]).
    ///
    /// Errors: [`StoreError::Sqlite`] when the file cannot be opened or
    /// configured; [`StoreError::Unsupported`] for an in-memory database,
    /// which a second connection could not see.
    pub(super) fn spawn(path: &Path, gather: Duration, queue_events: usize) -> Result<Self, StoreError> {
        let name = path.to_string_lossy();
        if name.is_empty() || name == ":memory:" || name.starts_with("file:sqlx-in-memory-") {
            return Err(StoreError::Unsupported(
                "an in-memory database: chatd writes through a connection of its own; \
                 set database_url to a file, e.g. sqlite://chatd.db"
                    .into(),
            ));
        }
        let conn = Arc::new(Mutex::new(open(path)?));
        // Unbounded as a channel: `event` is called synchronously from a
        // reply's log and never waits or drops; `queue` bounds it instead.
        let (tx, rx) = mpsc::unbounded_channel();
        let queue = Arc::new(Queue::new(queue_events));
        let thread_conn = conn.clone();
        let thread_queue = queue.clone();
        let handle = std::thread::Builder::new()
            .name("chatd-db-writer".into())
            .spawn(move || {
                let _release = StopOnExit(thread_queue.clone());
                run(&thread_conn, rx, gather, &thread_queue);
            })
            .map_err(|e| StoreError::Write(format!("could not start the writer thread: {e}")))?;
        Ok(Self {
            tx,
            thread: handle.thread().clone(),
            conn,
            queue,
        })
    }

    /// Queues `op` (never waits: see [`Writer::queue_room`]); wakes the
    /// thread for an urgent op, or when this op filled the queue.
    fn send(&self, op: Op) {
        let urgent = is_urgent(&op);
        let filled = self.queue.added();
        if self.tx.send(op).is_err() {
            self.queue.removed(1);
            tracing::error!("the database writer has stopped; a write was dropped");
        } else if urgent || filled {
            self.thread.unpark();
        }
    }

    /// Whether the queue is at its bound (`chat.writer_queue_events`): a
    /// streaming reply then awaits [`Writer::queue_room`] before it reads
    /// more of its upstream. One atomic load.
    pub fn queue_full(&self) -> bool {
        self.queue.is_full()
    }

    /// Waits until the queue is under its bound (at once when it is, or
    /// when the writer has stopped).
    pub async fn queue_room(&self) {
        self.queue.room().await;
    }

    /// Ops (events, snapshots, turns, final replies, flushes) queued and
    /// not yet applied.
    pub fn queue_depth(&self) -> usize {
        self.queue.depth()
    }

    /// Queues one reply event (`seq` is its SSE id); an `urgent` one is
    /// committed at once.
    pub fn event(&self, message_id: Uuid, seq: u64, name: &'static str, data: Bytes, urgent: bool) {
        self.send(Op::Event {
            message_id,
            seq,
            name,
            data,
            urgent,
        });
    }

    /// Queues the partial state of a streaming reply.
    pub fn snapshot(&self, message_id: Uuid, content: String, reasoning: Option<String>, steps: String) {
        self.send(Op::Snapshot {
            message_id,
            content,
            reasoning,
            steps,
        });
    }

    /// Writes a reply's final state and its terminal event (after every
    /// event queued before them), in one transaction, and waits until it is
    /// committed. The terminal event is thus stored if and only if the final
    /// state is, and costs no transaction of its own; a caller whose commit
    /// failed publishes a different terminal event (through [`Writer::event`]).
    ///
    /// Errors: [`StoreError::Write`] when the transaction failed or the
    /// writer has stopped.
    pub async fn finish(
        &self,
        message_id: Uuid,
        model: &str,
        reply: FinalReply,
        terminal: TerminalEvent,
    ) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.send(Op::Finish {
            message_id,
            model: model.to_string(),
            reply: Box::new(reply),
            terminal,
            done,
        });
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Write(e)),
            Err(_) => Err(StoreError::Write("the database writer has stopped".into())),
        }
    }

    /// Commits a turn (see [`Turns::begin_turn`](crate::store::Turns::begin_turn))
    /// at once; returns whether the conversation existed.
    ///
    /// When the connection is free (the thread is gathering, as it mostly
    /// is), the turn is committed right here: two small rows cost tens of
    /// microseconds, less than waking the thread and being woken back.
    /// When the thread is committing, or another connection holds SQLite's
    /// write lock, the turn is queued and committed by the thread ahead of
    /// what it gathered.
    pub(super) async fn begin(&self, turn: NewTurn) -> Result<bool, StoreError> {
        if let Some(outcome) = self.now(|conn| commit_turn_now(conn, &turn)).flatten() {
            return outcome;
        }
        let (done, wait) = oneshot::channel();
        self.send(Op::Begin {
            turn: Box::new(turn),
            done,
        });
        match wait.await {
            Ok(Ok(existed)) => Ok(existed),
            Ok(Err(e)) => Err(StoreError::Write(e)),
            Err(_) => Err(StoreError::Write("the database writer has stopped".into())),
        }
    }

    /// Runs `f` on the writer's connection right here when it is free (the
    /// thread is gathering, as it mostly is): a statement or two cost tens
    /// of microseconds, less than a hand-off to another thread and back.
    /// `None`, without running `f`, while the thread holds the connection.
    pub(super) fn now<T>(&self, f: impl FnOnce(&mut Connection) -> T) -> Option<T> {
        let mut conn = self.conn.try_lock().ok()?;
        Some(f(&mut conn))
    }

    /// Waits until everything queued so far is committed (or failed).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        self.send(Op::Flush(done));
        let _ = wait.await;
    }
}

/// How long the writer keeps collecting before it commits, unless someone
/// waits for the commit ([`Writer::finish`], [`Writer::flush`]): events
/// reach the database within about this long (ms). Waiting lets one row hold
/// many events of a reply and one transaction serve every streaming reply;
/// a reply's live subscribers and resumes read the log in memory and never
/// wait for it.
pub const GATHER_MS: u64 = 100;

/// Whether a queued op has someone waiting for its commit, or is an event
/// its sender marked urgent: a reply's terminal event queued on its own
/// (the `internal` error sent when the final commit failed; committed at
/// once, so that a replay after a crash has the real one rather than one
/// rebuilt from the message row). A terminal event normally comes with
/// [`Op::Finish`].
fn is_urgent(op: &Op) -> bool {
    match op {
        Op::Begin { .. } | Op::Finish { .. } | Op::Flush(_) => true,
        Op::Event { urgent, .. } => *urgent,
        Op::Snapshot { .. } => false,
    }
}

/// The writer connection: WAL (set on the file by the migrations),
/// `synchronous = NORMAL`, foreign keys on, the same busy timeout as the
/// pools, no checkpoint inside a commit (see `spawn_checkpoints`) and
/// statement journals in memory (not a temp file written per batch).
fn open(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
         PRAGMA wal_autocheckpoint = 0; PRAGMA temp_store = MEMORY;",
    )?;
    Ok(conn)
}

/// Waits for the first op, gathers for up to `gather` unless an urgent
/// op is queued, then applies everything queued in one transaction. While
/// it gathers it sleeps: events sent meanwhile wake nobody (one wake-up per
/// event, per token, was a measurable cost); an urgent op unparks it.
///
/// What someone waits for is committed on its own, ahead of what was
/// gathered: a new chat waits for its two rows, a finished reply for its
/// last events and final state, not for the events of every other
/// streaming reply (which keep gathering until their deadline). A reply's
/// ops stay together and in order; ops of different replies touch
/// different rows (a turn's reply has no other ops yet).
///
/// A full `queue` (see [`Writer::queue_full`]) is committed at once, whole:
/// replies wait for it.
fn run(conn: &Mutex<Connection>, mut rx: mpsc::UnboundedReceiver<Op>, gather: Duration, queue: &Queue) {
    let mut batch = Vec::with_capacity(1024);
    let mut deadline = None;
    loop {
        if batch.is_empty() {
            match rx.blocking_recv() {
                Some(op) => batch.push(op),
                None => return,
            }
        }
        let due = *deadline.get_or_insert_with(|| Instant::now() + gather);
        loop {
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let now = Instant::now();
            if now >= due || batch.len() >= MAX_BATCH || queue.is_full() || batch.iter().any(is_urgent) {
                break;
            }
            std::thread::park_timeout(due - now);
        }
        let whole = Instant::now() >= due
            || batch.len() >= MAX_BATCH
            || queue.is_full()
            || batch.iter().any(|op| matches!(op, Op::Flush(_)));
        if whole {
            commit(&mut lock(conn), &mut batch, queue);
            deadline = None;
            continue;
        }
        // Someone waits (a new turn, a final reply, a terminal event): commit
        // what is waited on with the rest of its reply, and let every other
        // reply's events gather on until `due`. Committing all of them on
        // each finish wrote a row per streaming reply per finished one.
        let mut waited = take_waited(&mut batch);
        commit(&mut lock(conn), &mut waited, queue);
        if batch.is_empty() {
            deadline = None;
        }
    }
}

/// The reply an op belongs to (a turn's reply for [`Op::Begin`]).
fn reply_of(op: &Op) -> Option<Uuid> {
    match op {
        Op::Begin { turn, .. } => Some(turn.assistant_message_id),
        Op::Event { message_id, .. } | Op::Snapshot { message_id, .. } | Op::Finish { message_id, .. } => {
            Some(*message_id)
        }
        Op::Flush(_) => None,
    }
}

/// Takes the urgent ops out of `batch` with every op of their replies, in
/// queue order: a reply's events are never committed after its final state.
fn take_waited(batch: &mut Vec<Op>) -> Vec<Op> {
    let waited: std::collections::HashSet<Uuid> =
        batch.iter().filter(|op| is_urgent(op)).filter_map(reply_of).collect();
    batch
        .extract_if(.., |op| reply_of(op).is_some_and(|id| waited.contains(&id)))
        .collect()
}

/// The connection, also after a panic while it was held (a transaction
/// that did not commit is rolled back when it is dropped).
fn lock(conn: &Mutex<Connection>) -> std::sync::MutexGuard<'_, Connection> {
    conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Applies `batch` in one transaction, answers whoever waits on one of its
/// ops and takes them off the `queue`'s depth; leaves `batch` empty.
fn commit(conn: &mut Connection, batch: &mut Vec<Op>, queue: &Queue) {
    let ops = batch.len();
    let started = Instant::now();
    let result = apply(conn, batch);
    metrics::histogram!("chatd_db_write_seconds").record(started.elapsed().as_secs_f64());
    if let Err(e) = &result {
        tracing::error!(error = %e, ops = batch.len(), "a database write batch failed");
    }
    // Before anyone is answered: a flush that returns finds the depth
    // without what it waited for.
    queue.removed(ops);
    let mut begun = result.as_ref().map(|b| b.iter()).ok();
    for op in batch.drain(..) {
        match op {
            Op::Begin { done, .. } => {
                let outcome = match (&result, begun.as_mut().and_then(Iterator::next)) {
                    (Ok(_), Some(existed)) => Ok(*existed),
                    (Ok(_), None) => Err("the turn was not written".to_string()),
                    (Err(e), _) => Err(e.to_string()),
                };
                let _ = done.send(outcome);
            }
            Op::Finish { done, .. } => {
                let _ = done.send(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
            }
            Op::Flush(done) => {
                let _ = done.send(());
            }
            _ => {}
        }
    }
}
