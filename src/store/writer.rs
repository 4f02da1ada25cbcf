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

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::messages::{FinalReply, NewTurn};
use super::{BUSY_TIMEOUT, StoreError, now_ms};

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

/// A reply's terminal event (`done` or `error`) as [`Writer::finish`]
/// stores it with the final state: its seq (SSE id), name and JSON data.
#[derive(Debug, Clone)]
pub struct TerminalEvent {
    pub seq: u64,
    pub name: &'static str,
    /// The event's JSON (UTF-8).
    pub data: Bytes,
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
}

impl Writer {
    /// Opens a connection to the database file at `path` (which exists and
    /// is migrated) and starts the writer thread on it; events gather for up
    /// to `gather` (the store uses [`GATHER_MS`]).
    ///
    /// Errors: [`StoreError::Sqlite`] when the file cannot be opened or
    /// configured; [`StoreError::Unsupported`] for an in-memory database,
    /// which a second connection could not see.
    pub(super) fn spawn(path: &Path, gather: Duration) -> Result<Self, StoreError> {
        let name = path.to_string_lossy();
        if name.is_empty() || name == ":memory:" || name.starts_with("file:sqlx-in-memory-") {
            return Err(StoreError::Unsupported(
                "an in-memory database: chatd writes through a connection of its own; \
                 set database_url to a file, e.g. sqlite://chatd.db"
                    .into(),
            ));
        }
        let conn = Arc::new(Mutex::new(open(path)?));
        let (tx, rx) = mpsc::unbounded_channel();
        let thread_conn = conn.clone();
        let handle = std::thread::Builder::new()
            .name("chatd-db-writer".into())
            .spawn(move || run(&thread_conn, rx, gather))
            .map_err(|e| StoreError::Write(format!("could not start the writer thread: {e}")))?;
        Ok(Self {
            tx,
            thread: handle.thread().clone(),
            conn,
        })
    }

    fn send(&self, op: Op) {
        let urgent = is_urgent(&op);
        if self.tx.send(op).is_err() {
            tracing::error!("the database writer has stopped; a write was dropped");
        } else if urgent {
            self.thread.unpark();
        }
    }

    /// Queues one reply event (`seq` is its SSE id).
    pub fn event(&self, message_id: Uuid, seq: u64, name: &'static str, data: Bytes) {
        self.send(Op::Event {
            message_id,
            seq,
            name,
            data,
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

    /// Commits a turn (see [`Store::begin_turn`](super::Store::begin_turn))
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

/// Whether a queued op has someone waiting for its commit, or is a reply's
/// terminal event queued on its own (the `internal` error sent when the
/// final commit failed; committed at once, so that a replay after a crash
/// has the real one rather than one rebuilt from the message row). A
/// terminal event normally comes with [`Op::Finish`].
fn is_urgent(op: &Op) -> bool {
    match op {
        Op::Begin { .. } | Op::Finish { .. } | Op::Flush(_) => true,
        Op::Event { name, .. } => matches!(*name, "done" | "error"),
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
fn run(conn: &Mutex<Connection>, mut rx: mpsc::UnboundedReceiver<Op>, gather: Duration) {
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
            if now >= due || batch.len() >= MAX_BATCH || batch.iter().any(is_urgent) {
                break;
            }
            std::thread::park_timeout(due - now);
        }
        let whole =
            Instant::now() >= due || batch.len() >= MAX_BATCH || batch.iter().any(|op| matches!(op, Op::Flush(_)));
        if whole {
            commit(&mut lock(conn), &mut batch);
            deadline = None;
            continue;
        }
        // Someone waits (a new turn, a final reply, a terminal event): commit
        // what is waited on with the rest of its reply, and let every other
        // reply's events gather on until `due`. Committing all of them on
        // each finish wrote a row per streaming reply per finished one.
        let mut waited = take_waited(&mut batch);
        commit(&mut lock(conn), &mut waited);
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

/// Commits one turn on `conn` without waiting for SQLite's write lock;
/// `None` when another connection holds it (nothing was written).
fn commit_turn_now(conn: &mut Connection, turn: &NewTurn) -> Option<Result<bool, StoreError>> {
    let started = Instant::now();
    if conn.busy_timeout(Duration::ZERO).is_err() {
        return None;
    }
    let result = (|| {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let existed = super::messages::write_turn(&tx, turn, now_ms())?;
        tx.commit()?;
        Ok::<_, StoreError>(existed)
    })();
    if conn.busy_timeout(BUSY_TIMEOUT).is_err() {
        tracing::warn!("could not restore the writer's busy timeout");
    }
    match result {
        Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)))
            if e.code == rusqlite::ErrorCode::DatabaseBusy =>
        {
            None
        }
        result => {
            metrics::histogram!("chatd_db_write_seconds").record(started.elapsed().as_secs_f64());
            Some(result)
        }
    }
}

/// The connection, also after a panic while it was held (a transaction
/// that did not commit is rolled back when it is dropped).
fn lock(conn: &Mutex<Connection>) -> std::sync::MutexGuard<'_, Connection> {
    conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Applies `batch` in one transaction and answers whoever waits on one of
/// its ops; leaves `batch` empty.
fn commit(conn: &mut Connection, batch: &mut Vec<Op>) {
    let started = Instant::now();
    let result = apply(conn, batch);
    metrics::histogram!("chatd_db_write_seconds").record(started.elapsed().as_secs_f64());
    if let Err(e) = &result {
        tracing::error!(error = %e, ops = batch.len(), "a database write batch failed");
    }
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

/// Applies a batch in one transaction: the turns first (their replies have
/// no other ops yet), then the events, then snapshots and final replies in
/// queue order. Returns, per queued turn in order, whether its conversation
/// existed.
fn apply(conn: &mut Connection, batch: &[Op]) -> Result<Vec<bool>, StoreError> {
    if batch.iter().all(|op| matches!(op, Op::Flush(_))) {
        return Ok(Vec::new());
    }
    let now = now_ms();
    let rows = event_rows(batch);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut begun = Vec::new();
    for op in batch {
        if let Op::Begin { turn, .. } = op {
            begun.push(super::messages::write_turn(&tx, turn, now)?);
        }
    }
    // Every event of the batch first. Moving them ahead of the updates below
    // changes nothing in the committed state: they go to another table, and
    // the messages they reference were committed before their replies
    // started.
    {
        let mut insert = tx.prepare_cached(
            "INSERT OR IGNORE INTO reply_event_batches (message_id, first_seq, last_seq, events) \
             VALUES (?, ?, ?, ?)",
        )?;
        for row in &rows {
            insert.execute(rusqlite::params![
                row.message_id.to_string(),
                i64::try_from(row.first_seq).unwrap_or(i64::MAX),
                i64::try_from(row.last_seq).unwrap_or(i64::MAX),
                row.events,
            ])?;
        }
    }
    for op in batch {
        match op {
            Op::Snapshot {
                message_id,
                content,
                reasoning,
                steps,
            } => {
                tx.prepare_cached(
                    "UPDATE messages SET content = ?, reasoning = ?, steps = ?, updated_at = ? \
                     WHERE id = ? AND status = 'streaming'",
                )?
                .execute(rusqlite::params![
                    content,
                    reasoning,
                    steps,
                    now,
                    message_id.to_string()
                ])?;
            }
            Op::Finish {
                message_id,
                model,
                reply,
                ..
            } => {
                super::messages::write_final(&tx, *message_id, model, reply, now)?;
            }
            Op::Begin { .. } | Op::Event { .. } | Op::Flush(_) => {}
        }
    }
    tx.commit()?;
    Ok(begun)
}

/// One `reply_event_batches` row: the events of one reply in a batch.
struct EventRow {
    message_id: Uuid,
    first_seq: u64,
    last_seq: u64,
    /// `"<seq> <event> <data>\n"` per event; serde_json never writes a raw
    /// newline, so each event is one line.
    events: String,
}

/// A queued event's seq, name and JSON.
type QueuedEvent<'a> = (u64, &'static str, &'a [u8]);

/// Groups the batch's events by reply, in seq order; of two events queued
/// with the same seq the first wins.
fn event_rows(batch: &[Op]) -> Vec<EventRow> {
    let mut by_reply: std::collections::BTreeMap<Uuid, Vec<QueuedEvent<'_>>> = Default::default();
    for op in batch {
        match op {
            Op::Event {
                message_id,
                seq,
                name,
                data,
            } => by_reply.entry(*message_id).or_default().push((*seq, name, data)),
            Op::Finish {
                message_id,
                terminal: t,
                ..
            } => by_reply.entry(*message_id).or_default().push((t.seq, t.name, &t.data)),
            _ => {}
        }
    }
    by_reply
        .into_iter()
        .filter_map(|(message_id, mut events)| {
            // Stable: the first queued of equal seqs stays first.
            events.sort_by_key(|e| e.0);
            events.dedup_by_key(|e| e.0);
            let (first_seq, last_seq) = (events.first()?.0, events.last()?.0);
            let mut text = String::with_capacity(events.iter().map(|e| e.2.len() + 24).sum());
            for (seq, name, data) in events {
                use std::fmt::Write as _;
                let _ = writeln!(text, "{seq} {name} {}", String::from_utf8_lossy(data));
            }
            Some(EventRow {
                message_id,
                first_seq,
                last_seq,
                events: text,
            })
        })
        .collect()
}

/// Parses the `events` column of `reply_event_batches` rows (in `first_seq`
/// order) into `(seq, event name, JSON data)`, in seq order, each seq once.
pub(super) fn parse_event_rows(rows: &[String]) -> Result<Vec<(u64, String, String)>, StoreError> {
    let mut out: Vec<(u64, String, String)> = Vec::new();
    for text in rows {
        for line in text.lines() {
            let parsed = line.split_once(' ').and_then(|(seq, rest)| {
                let (name, data) = rest.split_once(' ')?;
                Some((seq.parse::<u64>().ok()?, name, data))
            });
            let Some((seq, name, data)) = parsed else {
                return Err(StoreError::Corrupt(format!("bad stored event line {line:?}")));
            };
            if out.last().is_some_and(|last| last.0 >= seq) {
                continue;
            }
            out.push((seq, name.to_string(), data.to_string()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewConversation, NewTurn, Store};

    /// A turn in a new conversation (`create`) or in one never stored.
    fn turn(create: bool) -> NewTurn {
        NewTurn {
            conversation: NewConversation::default().into_conversation(),
            create,
            user_message_id: Uuid::now_v7(),
            user_content: "hi".into(),
            assistant_message_id: Uuid::now_v7(),
            model: "m".into(),
        }
    }

    async fn begin(store: &Store) -> Uuid {
        let turn = turn(true);
        assert!(store.begin_turn(&turn).await.expect("begin"));
        turn.assistant_message_id
    }

    #[tokio::test]
    async fn events_are_stored_one_row_per_reply_and_batch_with_the_updates_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("w.db").display());
        let store = Store::open(&url).await.expect("open");
        // 200 replies, 50 events each,
        // queued interleaved, snapshots in between, one event queued twice.
        let mut ids = Vec::new();
        for _ in 0..200 {
            ids.push(begin(&store).await);
        }
        let writer = store.writer();
        for seq in 1..=50u64 {
            for id in &ids {
                writer.event(
                    *id,
                    seq,
                    "process_step",
                    Bytes::from(format!("{{\"n\":{seq},\"t\":\"a b\\nc\"}}")),
                );
            }
            if seq % 20 == 0 {
                writer.snapshot(ids[0], format!("text {seq}"), None, "[]".into());
            }
        }
        writer.event(ids[0], 5, "process_step", Bytes::from("duplicate"));
        writer.flush().await;
        // The same seq again in a later batch: the stored one stays.
        writer.event(ids[0], 7, "process_step", Bytes::from("late duplicate"));
        writer.event(ids[0], 51, "done", Bytes::from("{}"));
        writer.flush().await;

        for id in &ids {
            let events = store.reply_events(*id).await.expect("events");
            let expected = if *id == ids[0] { 51 } else { 50 };
            assert_eq!(events.len(), expected);
            for (i, (seq, name, data)) in events.iter().take(50).enumerate() {
                assert_eq!(*seq, i as u64 + 1);
                assert_eq!(name, "process_step");
                assert_eq!(data, &format!("{{\"n\":{seq},\"t\":\"a b\\nc\"}}"));
            }
        }
        let last = store.reply_events(ids[0]).await.expect("events").pop().expect("last");
        assert_eq!(last, (51, "done".to_string(), "{}".to_string()));
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM reply_event_batches")
            .fetch_one(store.pool())
            .await
            .expect("count");
        assert_eq!(rows, 201, "one row per reply for the first batch, one for the second");
        let row = store.message(ids[0]).await.expect("load").expect("row");
        assert_eq!(row.content, "text 40", "the last snapshot wins");
    }

    #[tokio::test]
    async fn a_new_turn_commits_ahead_of_gathered_events_and_nothing_is_lost() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("w.db").display());
        let store = Store::open(&url).await.expect("open");
        let a = begin(&store).await;
        let writer = store.writer();
        for seq in 1..=10u64 {
            writer.event(a, seq, "process_step", Bytes::from(format!("{{\"n\":{seq}}}")));
        }
        writer.snapshot(a, "partial".into(), None, "[]".into());
        // New chats arrive while those events gather: each is committed
        // when its begin returns, and a missing conversation is reported.
        let b = begin(&store).await;
        let row = store.message(b).await.expect("load").expect("committed");
        assert_eq!(row.content, "");
        assert!(!store.begin_turn(&turn(false)).await.expect("begin"));
        writer.event(a, 11, "done", Bytes::from("{}"));
        writer.flush().await;
        let events = store.reply_events(a).await.expect("events");
        let seqs: Vec<u64> = events.iter().map(|e| e.0).collect();
        assert_eq!(seqs, (1..=11).collect::<Vec<_>>());
        assert_eq!(events[0].2, "{\"n\":1}");
        let row = store.message(a).await.expect("load").expect("row");
        assert_eq!(row.content, "partial");
        assert!(store.reply_events(b).await.expect("events").is_empty());
    }

    fn final_reply(content: &str) -> FinalReply {
        FinalReply {
            status: crate::store::Status::Complete,
            content: content.into(),
            reasoning: None,
            steps: serde_json::json!([]),
            tool_calls: None,
            sources: None,
            prompt_tokens: 3,
            completion_tokens: 4,
            finish_reason: Some("stop".into()),
            error: None,
        }
    }

    #[tokio::test]
    async fn what_is_waited_on_commits_at_once_and_other_replies_keep_gathering() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.db");
        let store = Store::open(&format!("sqlite://{}", path.display()))
            .await
            .expect("open");
        // A writer that would gather for a minute: only what someone waits
        // for can be committed before the flush below.
        let writer = Writer::spawn(&path, std::time::Duration::from_secs(60)).expect("writer");
        let (ta, tb) = (turn(true), turn(true));
        assert!(writer.begin(ta.clone()).await.expect("begin a"));
        assert!(writer.begin(tb.clone()).await.expect("begin b"));
        let (a, b) = (ta.assistant_message_id, tb.assistant_message_id);
        for seq in 1..=3u64 {
            writer.event(a, seq, "process_step", Bytes::from(format!("{{\"a\":{seq}}}")));
            writer.event(b, seq, "process_step", Bytes::from(format!("{{\"b\":{seq}}}")));
        }
        writer.snapshot(a, "partial a".into(), None, "[]".into());
        writer.snapshot(b, "partial b".into(), None, "[]".into());
        let done = TerminalEvent {
            seq: 4,
            name: "done",
            data: Bytes::from_static(b"{\"a\":4}"),
        };
        writer
            .finish(a, "m", final_reply("all of a"), done)
            .await
            .expect("finish a");

        // a: its events, its terminal event, its final state and its tokens,
        // in one commit.
        let events: Vec<(u64, String)> = store
            .reply_events(a)
            .await
            .expect("events")
            .into_iter()
            .map(|e| (e.0, e.1))
            .collect();
        let names = ["process_step", "process_step", "process_step", "done"];
        assert_eq!(events, (1..=4).zip(names.map(String::from)).collect::<Vec<_>>());
        let row = store.message(a).await.expect("load").expect("row");
        assert_eq!(
            (row.content.as_str(), row.status),
            ("all of a", crate::store::Status::Complete)
        );
        let usage = store.usage().await.expect("usage");
        assert_eq!(usage.len(), 1);
        assert_eq!((usage[0].prompt_tokens, usage[0].completion_tokens), (3, 4));
        // b: still gathering.
        assert!(store.reply_events(b).await.expect("events").is_empty());
        assert_eq!(store.message(b).await.expect("load").expect("row").content, "");

        writer.flush().await;
        assert_eq!(store.reply_events(b).await.expect("events").len(), 3);
        assert_eq!(store.message(b).await.expect("load").expect("row").content, "partial b");
    }

    #[tokio::test]
    async fn a_turn_waits_for_a_write_lock_held_elsewhere_without_blocking_the_caller() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("w.db").display());
        let store = Store::open(&url).await.expect("open");
        // Another connection holds SQLite's write lock: the turn cannot be
        // committed in place, so it is queued for the writer thread, which
        // waits in SQLite's busy handler until the lock is released.
        let mut other = store.pool().acquire().await.expect("connection");
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *other).await.expect("lock");
        let t = turn(true);
        let pending = tokio::spawn({
            let store = store.clone();
            let t = t.clone();
            async move { store.begin_turn(&t).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!pending.is_finished(), "the turn cannot commit while the lock is held");
        sqlx::query("COMMIT").execute(&mut *other).await.expect("unlock");
        assert!(pending.await.expect("task").expect("begin"));
        let row = store.message(t.assistant_message_id).await.expect("load").expect("row");
        assert_eq!(row.status, crate::store::Status::Streaming);
        // With the lock free again, the next turn commits in place.
        let next = turn(true);
        assert!(store.begin_turn(&next).await.expect("begin"));
        assert!(store.message(next.user_message_id).await.expect("load").is_some());
    }

    #[tokio::test]
    // The guard is held across the read on purpose: the writer's connection
    // must look busy, and the read under test does not take it.
    #[allow(clippy::await_holding_lock)]
    async fn a_turn_reads_its_conversation_the_same_on_either_connection() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("w.db").display());
        let store = Store::open(&url).await.expect("open");
        let mut first = turn(true);
        first.conversation.system_prompt = Some("be brief".into());
        first.conversation.temperature = Some(0.5);
        first.conversation.max_tokens = Some(64);
        first.conversation.thinking = Some(true);
        assert!(store.begin_turn(&first).await.expect("begin"));
        let id = first.conversation.id;
        let next = NewTurn {
            create: false,
            user_message_id: Uuid::now_v7(),
            assistant_message_id: Uuid::now_v7(),
            ..first.clone()
        };
        assert!(store.begin_turn(&next).await.expect("begin"));

        // The writer's connection is free: read there.
        let (fast, count) = store.conversation_for_turn(id).await.expect("read").expect("found");
        assert_eq!(count, 4);
        let expected = crate::store::Conversation {
            updated_at: fast.updated_at,
            ..first.conversation.clone()
        };
        assert_eq!(fast, expected, "every column, updated_at touched by the second turn");
        assert!(fast.updated_at >= first.conversation.updated_at);
        // The thread holds it: the read pool answers the same.
        let held = store.writer.conn.lock().expect("lock");
        let (pooled, pooled_count) = store.conversation_for_turn(id).await.expect("read").expect("found");
        drop(held);
        assert_eq!((pooled, pooled_count), (fast, count));
        assert!(
            store
                .conversation_for_turn(Uuid::now_v7())
                .await
                .expect("read")
                .is_none()
        );
    }

    #[tokio::test]
    async fn an_in_memory_database_is_refused_with_a_clear_error() {
        let err = Store::open("sqlite::memory:").await.expect_err("in-memory");
        assert!(matches!(err, StoreError::Unsupported(_)), "{err:?}");
        assert!(err.to_string().contains("set database_url to a file"), "{err}");
    }

    #[test]
    fn stored_event_lines_parse_back_and_bad_ones_are_corrupt() {
        let rows = vec![
            "1 start {\"a\":1}\n2 process_step {\"b\":\"x y\"}\n".to_string(),
            "2 x {}\n3 done {}\n".into(),
        ];
        let parsed = parse_event_rows(&rows).expect("parses");
        assert_eq!(
            parsed,
            vec![
                (1, "start".to_string(), "{\"a\":1}".to_string()),
                (2, "process_step".to_string(), "{\"b\":\"x y\"}".to_string()),
                (3, "done".to_string(), "{}".to_string()),
            ]
        );
        assert!(matches!(
            parse_event_rows(&["nonsense\n".to_string()]),
            Err(StoreError::Corrupt(_))
        ));
    }
}
