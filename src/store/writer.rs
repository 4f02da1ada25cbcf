//! The single writer for streaming data: reply events, partial-reply
//! snapshots and final replies go through one task that collects for up to
//! [`GATHER_MS`] (less when someone waits) and applies what it collected in
//! one transaction, the events of each reply as one row. Hundreds of replies
//! streaming at once thus cost one SQLite write transaction at a time, never
//! a "database is locked", and neither a transaction nor a row per token.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tokio::sync::{Notify, mpsc, oneshot};
use uuid::Uuid;

use super::messages::{FinalReply, NewTurn};
use super::{StoreError, now_ms};

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
        done: oneshot::Sender<Result<(), String>>,
    },
    Flush(oneshot::Sender<()>),
}

/// Handle to the writer task; cheap to clone.
#[derive(Debug, Clone)]
pub struct Writer {
    tx: mpsc::UnboundedSender<Op>,
    /// Cuts the writer's gathering short: someone waits for a commit.
    urgent: Arc<Notify>,
}

impl Writer {
    /// Starts the writer task on `pool`.
    pub(super) fn spawn(pool: sqlx::SqlitePool) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let urgent = Arc::new(Notify::new());
        tokio::spawn(run(pool, rx, urgent.clone()));
        Self { tx, urgent }
    }

    fn send(&self, op: Op) {
        let urgent = is_urgent(&op);
        if self.tx.send(op).is_err() {
            tracing::error!("the database writer has stopped; a write was dropped");
        } else if urgent {
            self.urgent.notify_one();
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

    /// Writes a reply's final state (after every event queued before it) and
    /// waits until it is committed.
    pub async fn finish(&self, message_id: Uuid, model: &str, reply: FinalReply) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.send(Op::Finish {
            message_id,
            model: model.to_string(),
            reply: Box::new(reply),
            done,
        });
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Write(e)),
            Err(_) => Err(StoreError::Write("the database writer has stopped".into())),
        }
    }

    /// Commits a turn (see [`Store::begin_turn`](super::Store::begin_turn))
    /// with whatever else is queued, at once; returns whether the
    /// conversation existed.
    pub(super) async fn begin(&self, turn: NewTurn) -> Result<bool, StoreError> {
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
/// terminal event (committed at once, so that a replay after a crash has
/// the real one rather than one rebuilt from the message row).
fn is_urgent(op: &Op) -> bool {
    match op {
        Op::Begin { .. } | Op::Finish { .. } | Op::Flush(_) => true,
        Op::Event { name, .. } => matches!(*name, "done" | "error"),
        Op::Snapshot { .. } => false,
    }
}

/// Waits for the first op, gathers for up to [`GATHER_MS`] unless an urgent
/// op is queued, then applies everything queued in one transaction. While
/// it gathers it does not poll the queue: events sent meanwhile wake
/// nobody (one wake-up per event, per token, was a measurable cost); an
/// urgent op wakes it through `urgent`.
///
/// New turns are committed on their own, ahead of what was gathered: a new
/// chat waits for its two rows, not for the events of every other streaming
/// reply (which keep gathering until their deadline). Nothing queued before
/// a turn can depend on it: a reply's events and final state come after its
/// turn is committed.
async fn run(pool: sqlx::SqlitePool, mut rx: mpsc::UnboundedReceiver<Op>, urgent: Arc<Notify>) {
    let mut batch = Vec::with_capacity(1024);
    let mut deadline = None;
    loop {
        if batch.is_empty() && rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        let due =
            *deadline.get_or_insert_with(|| tokio::time::Instant::now() + std::time::Duration::from_millis(GATHER_MS));
        if !batch.iter().any(is_urgent) {
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = urgent.notified() => {}
            }
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        if batch.iter().any(|op| matches!(op, Op::Begin { .. })) {
            let mut turns: Vec<Op> = batch.extract_if(.., |op| matches!(op, Op::Begin { .. })).collect();
            commit(&pool, &mut turns).await;
            if batch.is_empty() {
                deadline = None;
                continue;
            }
            if !batch.iter().any(is_urgent) && tokio::time::Instant::now() < due {
                continue;
            }
        }
        commit(&pool, &mut batch).await;
        deadline = None;
    }
}

/// Applies `batch` in one transaction and answers whoever waits on one of
/// its ops; leaves `batch` empty.
async fn commit(pool: &sqlx::SqlitePool, batch: &mut Vec<Op>) {
    let started = std::time::Instant::now();
    let result = apply(pool, batch).await;
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
async fn apply(pool: &sqlx::SqlitePool, batch: &[Op]) -> Result<Vec<bool>, StoreError> {
    if batch.iter().all(|op| matches!(op, Op::Flush(_))) {
        return Ok(Vec::new());
    }
    let now = now_ms();
    let rows = event_rows(batch);
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let mut begun = Vec::new();
    for op in batch {
        if let Op::Begin { turn, .. } = op {
            begun.push(super::messages::write_turn(&mut tx, turn, now).await?);
        }
    }
    // Every event of the batch first. Moving them ahead of the updates below
    // changes nothing in the committed state: they go to another table, and
    // the messages they reference were committed before their replies
    // started.
    insert_event_rows(&mut tx, &rows).await?;
    for op in batch {
        match op {
            Op::Snapshot {
                message_id,
                content,
                reasoning,
                steps,
            } => {
                sqlx::query(
                    "UPDATE messages SET content = ?, reasoning = ?, steps = ?, updated_at = ? \
                     WHERE id = ? AND status = 'streaming'",
                )
                .bind(content)
                .bind(reasoning)
                .bind(steps)
                .bind(now)
                .bind(message_id.to_string())
                .execute(&mut *tx)
                .await?;
            }
            Op::Finish {
                message_id,
                model,
                reply,
                ..
            } => {
                super::messages::write_final(&mut tx, *message_id, model, reply, now).await?;
            }
            Op::Begin { .. } | Op::Event { .. } | Op::Flush(_) => {}
        }
    }
    tx.commit().await?;
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
        if let Op::Event {
            message_id,
            seq,
            name,
            data,
        } = op
        {
            by_reply.entry(*message_id).or_default().push((*seq, name, data));
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

/// Rows per multi-row `INSERT`. Each statement is one round trip to the
/// connection's SQLite thread, so a chunk of rows costs about what one row
/// did. Powers of two: a batch of any size uses few distinct statements,
/// which stay prepared in the connection's cache.
const ROW_CHUNKS: [usize; 8] = [128, 64, 32, 16, 8, 4, 2, 1];

/// `INSERT OR IGNORE ... VALUES (?, ?, ?, ?), ...` with `rows` rows (one of
/// [`ROW_CHUNKS`]).
fn insert_rows_sql(rows: usize) -> &'static str {
    static SQL: OnceLock<Vec<String>> = OnceLock::new();
    let all = SQL.get_or_init(|| {
        ROW_CHUNKS
            .iter()
            .map(|&n| {
                let mut sql = String::from(
                    "INSERT OR IGNORE INTO reply_event_batches (message_id, first_seq, last_seq, events) VALUES ",
                );
                for i in 0..n {
                    sql.push_str(if i == 0 { "(?, ?, ?, ?)" } else { ", (?, ?, ?, ?)" });
                }
                sql
            })
            .collect()
    });
    let i = ROW_CHUNKS
        .iter()
        .position(|&n| n == rows)
        .unwrap_or(ROW_CHUNKS.len() - 1);
    &all[i]
}

async fn insert_event_rows(tx: &mut sqlx::SqliteConnection, rows: &[EventRow]) -> Result<(), StoreError> {
    let mut rest = rows;
    while !rest.is_empty() {
        let n = ROW_CHUNKS.iter().copied().find(|&n| n <= rest.len()).unwrap_or(1);
        let (chunk, tail) = rest.split_at(n);
        let mut query = sqlx::query(insert_rows_sql(n));
        for row in chunk {
            query = query
                .bind(row.message_id.to_string())
                .bind(i64::try_from(row.first_seq).unwrap_or(i64::MAX))
                .bind(i64::try_from(row.last_seq).unwrap_or(i64::MAX))
                .bind(row.events.as_str());
        }
        query.execute(&mut *tx).await?;
        rest = tail;
    }
    Ok(())
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
        // 200 replies (every multi-row statement size used), 50 events each,
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

    #[test]
    fn chunk_statements_have_their_row_counts() {
        for n in ROW_CHUNKS {
            assert_eq!(insert_rows_sql(n).matches("(?, ?, ?, ?)").count(), n);
        }
    }
}
