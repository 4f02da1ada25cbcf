//! What the writer's transactions write, in SQL on its rusqlite connection:
//! a turn's rows, the events of a batch (one `reply_event_batches` row per
//! reply), snapshots and final replies with their usage; and the
//! conversation read a new turn makes on the same connection.

use std::time::{Duration, Instant};

use rusqlite::{Connection, TransactionBehavior};
use serde_json::Value;
use uuid::Uuid;

use super::{BUSY_TIMEOUT, Op};
use crate::domain::time::today;
use crate::domain::{Conversation, Role, Status, now_ms};
use crate::store::error::parse_id;
use crate::store::{FinalReply, NewTurn, StoreError};

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Db(Box::new(e))
    }
}

/// Commits one turn on `conn` without waiting for SQLite's write lock;
/// `None` when another connection holds it (nothing was written).
pub(super) fn commit_turn_now(conn: &mut Connection, turn: &NewTurn) -> Option<Result<bool, StoreError>> {
    let started = Instant::now();
    if conn.busy_timeout(Duration::ZERO).is_err() {
        return None;
    }
    let result = (|| {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let existed = write_turn(&tx, turn, now_ms())?;
        tx.commit()?;
        Ok::<_, rusqlite::Error>(existed)
    })();
    if conn.busy_timeout(BUSY_TIMEOUT).is_err() {
        tracing::warn!("could not restore the writer's busy timeout");
    }
    match result {
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::DatabaseBusy => None,
        result => {
            metrics::histogram!("chatd_db_write_seconds").record(started.elapsed().as_secs_f64());
            Some(result.map_err(StoreError::from))
        }
    }
}

/// Applies a batch in one transaction: the turns first (their replies have
/// no other ops yet), then the events, then snapshots and final replies in
/// queue order. Returns, per queued turn in order, whether its conversation
/// existed.
pub(super) fn apply(conn: &mut Connection, batch: &[Op]) -> Result<Vec<bool>, StoreError> {
    if batch.iter().all(|op| matches!(op, Op::Flush(_))) {
        return Ok(Vec::new());
    }
    let now = now_ms();
    let rows = event_rows(batch);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut begun = Vec::new();
    for op in batch {
        if let Op::Begin { turn, .. } = op {
            begun.push(write_turn(&tx, turn, now)?);
        }
    }
    // Every event of the batch first. Moving them ahead of the updates below
    // changes nothing in the committed state: they go to another table, and
    // the messages they reference were committed before their replies
    // started.
    {
        // Conditional: the events of a reply whose message is gone (its
        // conversation was deleted mid-stream) are dropped here instead of
        // failing the foreign key, which would roll back every other
        // reply's events of the batch.
        let mut insert = tx.prepare_cached(
            "INSERT OR IGNORE INTO reply_event_batches (message_id, first_seq, last_seq, events) \
             SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM messages WHERE id = ?1)",
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
                write_final(&tx, *message_id, model, reply, now)?;
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
                ..
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
pub(in crate::store::sqlite) fn parse_event_rows(rows: &[String]) -> Result<Vec<(u64, String, String)>, StoreError> {
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

/// Writes a reply's final state, touches its conversation's `updated_at`
/// and adds its tokens to the usage ledger, inside the writer's transaction.
///
/// Errors: the statement's SQLite error.
fn write_final(
    tx: &rusqlite::Transaction<'_>,
    message_id: Uuid,
    model: &str,
    reply: &FinalReply,
    now: i64,
) -> rusqlite::Result<()> {
    let usage = serde_json::json!({
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    });
    let id = message_id.to_string();
    tx.prepare_cached(FINAL_MESSAGE)?.execute(rusqlite::params![
        reply.status.as_str(),
        reply.content,
        reply.reasoning,
        reply.steps.to_string(),
        reply.tool_calls.as_ref().map(Value::to_string),
        reply.sources.as_ref().map(Value::to_string),
        usage.to_string(),
        reply.finish_reason,
        reply.error.as_ref().map(Value::to_string),
        now,
        id,
    ])?;
    tx.prepare_cached(TOUCH_CONVERSATION_OF)?
        .execute(rusqlite::params![now, id])?;
    if reply.prompt_tokens + reply.completion_tokens > 0 {
        add_usage(tx, model, reply.prompt_tokens, reply.completion_tokens)?;
    }
    Ok(())
}

/// A reply's final state (parameters in [`write_final`]'s order).
const FINAL_MESSAGE: &str = "UPDATE messages SET status = ?, content = ?, reasoning = ?, steps = ?, tool_calls = ?, \
    sources = ?, usage = ?, finish_reason = ?, error = ?, updated_at = ? WHERE id = ?";

/// The `updated_at` of the conversation a message belongs to.
const TOUCH_CONVERSATION_OF: &str = "UPDATE conversations SET updated_at = max(updated_at, ?) \
    WHERE id = (SELECT conversation_id FROM messages WHERE id = ?)";

/// Writes a turn inside the writer's transaction: the conversation (created,
/// or its `updated_at` touched), the user message and the empty `streaming`
/// reply. Returns `false`, writing nothing, when the conversation is gone.
///
/// Errors: the statement's SQLite error.
fn write_turn(tx: &rusqlite::Transaction<'_>, turn: &NewTurn, now: i64) -> rusqlite::Result<bool> {
    let conv_id = turn.conversation.id.to_string();
    if turn.create {
        insert_conversation(tx, &turn.conversation)?;
    } else {
        let touched = tx
            .prepare_cached("UPDATE conversations SET updated_at = max(updated_at, ?) WHERE id = ?")?
            .execute(rusqlite::params![now, conv_id])?;
        if touched == 0 {
            return Ok(false);
        }
    }
    let mut insert = tx.prepare_cached(INSERT_MESSAGE)?;
    for (id, role, content, status) in [
        (
            turn.user_message_id,
            Role::User,
            turn.user_content.as_str(),
            Status::Complete,
        ),
        (turn.assistant_message_id, Role::Assistant, "", Status::Streaming),
    ] {
        insert.execute(rusqlite::params![
            id.to_string(),
            conv_id,
            role.as_str(),
            content,
            status.as_str(),
            turn.model,
            now,
            now,
        ])?;
    }
    Ok(true)
}

/// One message row (the user's first: rowid order is conversation order).
const INSERT_MESSAGE: &str = "INSERT INTO messages \
    (id, conversation_id, role, content, status, model, created_at, updated_at) \
    VALUES (?, ?, ?, ?, ?, ?, ?, ?)";

/// Adds `prompt` and `completion` tokens to today's (UTC) row of `model`,
/// inside the writer's transaction.
///
/// Errors: the statement's SQLite error.
fn add_usage(tx: &rusqlite::Transaction<'_>, model: &str, prompt: u64, completion: u64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO token_usage (model, day, prompt_tokens, completion_tokens) VALUES (?, ?, ?, ?) \
         ON CONFLICT (model, day) DO UPDATE SET prompt_tokens = prompt_tokens + excluded.prompt_tokens, \
         completion_tokens = completion_tokens + excluded.completion_tokens",
    )?
    .execute(rusqlite::params![
        model,
        today(),
        i64::try_from(prompt).unwrap_or(i64::MAX),
        i64::try_from(completion).unwrap_or(i64::MAX),
    ])?;
    Ok(())
}

/// One conversation row.
pub(in crate::store::sqlite) const INSERT_CONVERSATION: &str = "INSERT INTO conversations \
    (id, title, model, provider, project_id, system_prompt, temperature, max_tokens, thinking, created_at, updated_at) \
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

/// Inserts a conversation inside the writer's transaction.
///
/// Errors: the statement's SQLite error.
fn insert_conversation(tx: &rusqlite::Transaction<'_>, c: &Conversation) -> rusqlite::Result<()> {
    tx.prepare_cached(INSERT_CONVERSATION)?.execute(rusqlite::params![
        c.id.to_string(),
        c.title,
        c.model,
        c.provider,
        c.project_id,
        c.system_prompt,
        c.temperature,
        c.max_tokens,
        c.thinking,
        c.created_at,
        c.updated_at,
    ])?;
    Ok(())
}

/// A conversation and its number of messages.
pub(in crate::store::sqlite) const FOR_TURN: &str = "SELECT c.*, (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id) \
    AS message_count FROM conversations c WHERE c.id = ?";

/// [`FOR_TURN`] on the writer's connection (see the SQLite
/// `Conversations::conversation_for_turn`).
///
/// Errors: [`StoreError::Db`]; [`StoreError::Corrupt`] for a bad id.
pub(in crate::store::sqlite) fn conversation_for_turn(
    conn: &mut rusqlite::Connection,
    id: Uuid,
) -> Result<Option<(Conversation, u64)>, StoreError> {
    let mut statement = conn.prepare_cached(FOR_TURN)?;
    let mut rows = statement.query([id.to_string()])?;
    let Some(row) = rows.next()? else {
        return Ok(None);
    };
    let stored_id: String = row.get("id")?;
    let max_tokens: Option<i64> = row.get("max_tokens")?;
    let count: i64 = row.get("message_count")?;
    let conversation = Conversation {
        id: parse_id(&stored_id)?,
        title: row.get("title")?,
        model: row.get("model")?,
        provider: row.get("provider")?,
        project_id: row.get("project_id")?,
        system_prompt: row.get("system_prompt")?,
        temperature: row.get("temperature")?,
        max_tokens: max_tokens.and_then(|v| u32::try_from(v).ok()),
        thinking: row.get("thinking")?,
        created_at: row.get("created_at")?,
        updated_at: row.get("updated_at")?,
    };
    Ok(Some((conversation, u64::try_from(count).unwrap_or(0))))
}
