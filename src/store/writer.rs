//! The single writer for streaming data: reply events, partial-reply
//! snapshots and final replies go through one task that applies whatever
//! has queued up in one transaction. Hundreds of replies streaming at once
//! thus cost one SQLite write transaction at a time, never a "database is
//! locked", and never one transaction per token.

use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::messages::FinalReply;
use super::{StoreError, now_ms};

/// Most operations applied in one transaction. Large: when replies stream
/// faster than the writer commits, bigger batches cost less per event (the
/// pages a transaction touches are mostly one per streaming reply, whatever
/// the number of events per reply), so a writer that falls behind catches up.
const MAX_BATCH: usize = 16_384;

/// One queued write.
#[derive(Debug)]
pub(super) enum Op {
    Event {
        message_id: Uuid,
        seq: u64,
        name: &'static str,
        data: Arc<str>,
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
}

impl Writer {
    /// Starts the writer task on `pool`.
    pub(super) fn spawn(pool: sqlx::SqlitePool) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(pool, rx));
        Self { tx }
    }

    fn send(&self, op: Op) {
        if self.tx.send(op).is_err() {
            tracing::error!("the database writer has stopped; a write was dropped");
        }
    }

    /// Queues one reply event (`seq` is its SSE id).
    pub fn event(&self, message_id: Uuid, seq: u64, name: &'static str, data: Arc<str>) {
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

    /// Waits until everything queued so far is committed (or failed).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        self.send(Op::Flush(done));
        let _ = wait.await;
    }
}

async fn run(pool: sqlx::SqlitePool, mut rx: mpsc::UnboundedReceiver<Op>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let started = std::time::Instant::now();
        let result = apply(&pool, &batch).await;
        metrics::histogram!("chatd_db_write_seconds").record(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            tracing::error!(error = %e, ops = batch.len(), "a database write batch failed");
        }
        for op in batch.drain(..) {
            match op {
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
}

async fn apply(pool: &sqlx::SqlitePool, batch: &[Op]) -> Result<(), StoreError> {
    if batch.iter().all(|op| matches!(op, Op::Flush(_))) {
        return Ok(());
    }
    let now = now_ms();
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    // Every event of the batch first, a chunk of rows per statement. Moving
    // them ahead of the updates below changes nothing in the committed
    // state: they go to another table, and the messages they reference were
    // committed before their replies started.
    let mut events: Vec<EventRow<'_>> = batch
        .iter()
        .filter_map(|op| match op {
            Op::Event {
                message_id,
                seq,
                name,
                data,
            } => Some(EventRow {
                message_id,
                seq: *seq,
                name,
                data,
            }),
            _ => None,
        })
        .collect();
    // In key order: each reply's rows go into its B-tree leaf one after the
    // other instead of hopping between the leaves of every streaming reply.
    // Stable, so that of two events queued with the same key the first still
    // wins (INSERT OR IGNORE).
    events.sort_by(|a, b| (a.message_id, a.seq).cmp(&(b.message_id, b.seq)));
    insert_events(&mut tx, &events).await?;
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
            Op::Event { .. } | Op::Flush(_) => {}
        }
    }
    tx.commit().await?;
    Ok(())
}

/// One `reply_events` row, borrowed from its queued op.
struct EventRow<'a> {
    message_id: &'a Uuid,
    seq: u64,
    name: &'static str,
    data: &'a str,
}

/// Rows per multi-row `INSERT` of reply events. Each statement is one round
/// trip to the connection's SQLite thread, so a chunk of rows costs about
/// what one row did; before, every event (every token) was a statement of its
/// own. Powers of two: a batch of any size uses few distinct statements,
/// which stay prepared in the connection's cache.
const EVENT_CHUNKS: [usize; 9] = [256, 128, 64, 32, 16, 8, 4, 2, 1];

/// `INSERT OR IGNORE ... VALUES (?, ?, ?, ?), ...` with `rows` rows (one of
/// [`EVENT_CHUNKS`]).
fn insert_events_sql(rows: usize) -> &'static str {
    static SQL: OnceLock<Vec<String>> = OnceLock::new();
    let all = SQL.get_or_init(|| {
        EVENT_CHUNKS
            .iter()
            .map(|&n| {
                let mut sql = String::from("INSERT OR IGNORE INTO reply_events (message_id, seq, event, data) VALUES ");
                for i in 0..n {
                    sql.push_str(if i == 0 { "(?, ?, ?, ?)" } else { ", (?, ?, ?, ?)" });
                }
                sql
            })
            .collect()
    });
    let i = EVENT_CHUNKS
        .iter()
        .position(|&n| n == rows)
        .unwrap_or(EVENT_CHUNKS.len() - 1);
    &all[i]
}

async fn insert_events(tx: &mut sqlx::SqliteConnection, events: &[EventRow<'_>]) -> Result<(), StoreError> {
    let mut rest = events;
    while !rest.is_empty() {
        let rows = EVENT_CHUNKS.iter().copied().find(|&n| n <= rest.len()).unwrap_or(1);
        let (chunk, tail) = rest.split_at(rows);
        let mut query = sqlx::query(insert_events_sql(rows));
        for row in chunk {
            query = query
                .bind(row.message_id.to_string())
                .bind(i64::try_from(row.seq).unwrap_or(i64::MAX))
                .bind(row.name)
                .bind(row.data);
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

    #[tokio::test]
    async fn events_are_stored_in_multi_row_chunks_with_the_updates_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("w.db").display());
        let store = Store::open(&url).await.expect("open");
        let turn = NewTurn {
            conversation: NewConversation::default().into_conversation(),
            create: true,
            user_message_id: Uuid::now_v7(),
            user_content: "hi".into(),
            assistant_message_id: Uuid::now_v7(),
            model: "m".into(),
        };
        assert!(store.begin_turn(&turn).await.expect("begin"));
        let id = turn.assistant_message_id;
        let writer = store.writer();
        // 1000 events (every chunk size used), snapshots in between, one
        // event queued twice.
        for seq in 1..=1000u64 {
            writer.event(id, seq, "process_step", Arc::from(format!("{{\"n\":{seq}}}")));
            if seq % 300 == 0 {
                writer.snapshot(id, format!("text {seq}"), None, "[]".into());
            }
        }
        writer.event(id, 5, "process_step", Arc::from("duplicate"));
        writer.flush().await;

        let events = store.reply_events(id).await.expect("events");
        assert_eq!(events.len(), 1000);
        for (i, (seq, name, data)) in events.iter().enumerate() {
            assert_eq!(*seq, i as u64 + 1);
            assert_eq!(name, "process_step");
            assert_eq!(data, &format!("{{\"n\":{seq}}}"));
        }
        let row = store.message(id).await.expect("load").expect("row");
        assert_eq!(row.content, "text 900", "the last snapshot wins");
    }

    #[test]
    fn chunk_statements_have_their_row_counts() {
        for n in EVENT_CHUNKS {
            assert_eq!(insert_events_sql(n).matches("(?, ?, ?, ?)").count(), n);
        }
    }
}
