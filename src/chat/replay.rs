//! Replays of replies that are no longer in memory.
//!
//! While a reply's events are still in the `reply_event_batches` table (during the
//! retention window, also across a restart), the replay is exact: the same
//! events with the same ids. A reply that never got its terminal event
//! stored (the process died) gets one built from the message row. After the
//! window the replay is compact: `start`, one `process_step` per stored step
//! with its full `content`, and the terminal event.

use super::log::{frame, is_terminal};
use crate::domain::{ChatEvent, DoneEvent, ErrorEvent, StartEvent, UsageTotals};
use crate::domain::{Message, Status, StoredStep};
use crate::store::{Replays, StoreError};
use crate::wire::sse::Frame;

/// The events to replay for a reply that is no longer in memory.
pub async fn from_store(store: &dyn Replays, message: &Message) -> Result<Vec<Frame>, StoreError> {
    let rows = store.reply_events(message.id).await?;
    let contiguous = rows.iter().enumerate().all(|(i, (seq, _, _))| *seq == i as u64 + 1);
    if !rows.is_empty() && contiguous {
        let mut events = Vec::with_capacity(rows.len() + 1);
        for (seq, name, data) in rows {
            let Some(event) = ChatEvent::from_parts(&name, &data) else {
                tracing::warn!(message_id = %message.id, seq, "unreadable stored event; using a compact replay");
                return compact(store, message).await;
            };
            events.push(Frame::from_json(seq, event.name(), &data));
        }
        if !events.last().is_some_and(is_terminal) {
            events.push(frame(events.len() as u64 + 1, &terminal(message)));
        }
        return Ok(events);
    }
    compact(store, message).await
}

async fn compact(store: &dyn Replays, message: &Message) -> Result<Vec<Frame>, StoreError> {
    let user_message_id = store.user_message_before(message).await?.unwrap_or_default();
    let mut events = vec![ChatEvent::Start(StartEvent {
        conversation_id: message.conversation_id,
        user_message_id,
        message_id: message.id,
        model: message.model.clone().unwrap_or_default(),
    })];
    let steps: Vec<StoredStep> = message
        .steps
        .clone()
        .and_then(|steps| serde_json::from_value(steps).ok())
        .unwrap_or_default();
    events.extend(steps.into_iter().map(|s| ChatEvent::Step(s.step)));
    events.push(terminal(message));
    Ok(events
        .into_iter()
        .enumerate()
        .map(|(i, e)| frame(i as u64 + 1, &e))
        .collect())
}

/// The terminal event that matches a stored message's status.
fn terminal(message: &Message) -> ChatEvent {
    let usage = message
        .usage
        .as_ref()
        .and_then(|u| serde_json::from_value::<UsageTotals>(u.clone()).ok())
        .unwrap_or_default();
    let done = |finish_reason: String| {
        ChatEvent::Done(DoneEvent {
            conversation_id: message.conversation_id,
            message_id: message.id,
            finish_reason,
            usage,
            suggested_title: None,
        })
    };
    match message.status {
        Status::Complete => done(message.finish_reason.clone().unwrap_or_else(|| "stop".into())),
        Status::Cancelled => done("cancelled".into()),
        Status::Error => {
            let field = |k: &str| message.error.as_ref().and_then(|e| e.get(k)).and_then(|v| v.as_str());
            ChatEvent::Error(ErrorEvent::new(
                field("code").unwrap_or("internal"),
                field("message").unwrap_or("the reply failed"),
            ))
        }
        Status::Interrupted | Status::Streaming => ChatEvent::Error(ErrorEvent::new(
            "interrupted",
            "the server stopped while this reply was streaming; the partial reply is stored",
        )),
    }
}
