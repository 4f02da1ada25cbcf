//! The single writer for streaming data: reply events, partial-reply
//! snapshots and final replies go through one task that applies whatever
//! has queued up in one transaction. Hundreds of replies streaming at once
//! thus cost one SQLite write transaction at a time, never a "database is
//! locked", and never one transaction per token.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::messages::FinalReply;
use super::{StoreError, now_ms};

/// Most operations applied in one transaction.
const MAX_BATCH: usize = 2048;

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
    for op in batch {
        match op {
            Op::Event {
                message_id,
                seq,
                name,
                data,
            } => {
                sqlx::query("INSERT OR IGNORE INTO reply_events (message_id, seq, event, data) VALUES (?, ?, ?, ?)")
                    .bind(message_id.to_string())
                    .bind(i64::try_from(*seq).unwrap_or(i64::MAX))
                    .bind(*name)
                    .bind(&**data)
                    .execute(&mut *tx)
                    .await?;
            }
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
            Op::Flush(_) => {}
        }
    }
    tx.commit().await?;
    Ok(())
}
