//! The `accumulated` stream mode: thinking and text steps sent as their
//! whole `content` so far, coalesced so that the bytes sent stay close to
//! the reply's size.
//!
//! A delta is not sent when read: its step's content is held. The held step
//! is sent (one event, `id:` the seq of the last delta it includes):
//! - before any other event (another step, a tool call, `sources`, `done`,
//!   `error`...), in the same write;
//! - when the reader has caught up with the log, if the step was not sent
//!   within the last [`INTERVAL`]; otherwise once that interval has passed
//!   (the response arms its timer for [`Accumulator::caught_up`]'s deadline);
//! - when the log ends.
//!
//! A backlog (events already in the log when read: a resume, a replay) is
//! read without stopping, so each of its steps becomes exactly one event
//! with its full content. Events up to the resume point (`after`) are read
//! but not sent: a step whose last delta is at or before it is not sent
//! again, and one that goes on past it is sent with its full content.

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use tokio::time::Instant;

use crate::chat::log::event_of;
use crate::domain::{ChatEvent, StepKind};
use crate::wire::sse::Frame;

/// The shortest time between two events of one step while it streams live
/// (100 ms).
pub const INTERVAL: Duration = Duration::from_millis(100);

/// One response's accumulated-mode state: every step's content so far and
/// the step whose newest content is held.
#[derive(Debug)]
pub struct Accumulator {
    /// Events up to this seq are read but not sent.
    after: u64,
    /// Every thinking and text step read so far, by step id.
    steps: HashMap<String, StepText>,
    /// The step (id) whose newest content is not sent yet.
    held: Option<String>,
}

/// A thinking or text step's content so far.
#[derive(Debug)]
struct StepText {
    index: u32,
    /// `thinking` or `text`.
    kind: &'static str,
    content: String,
    /// The seq of its last delta read.
    last_seq: u64,
    /// When an event of it was last sent.
    sent_at: Option<Instant>,
}

/// The JSON of an accumulated step event: the step's fields with `content`
/// in place of `delta`.
#[derive(Serialize)]
struct Accumulated<'a> {
    id: &'a str,
    index: u32,
    #[serde(rename = "type")]
    kind: &'a str,
    content: &'a str,
}

impl Accumulator {
    /// A reader of a log from its start that sends only the events after
    /// seq `after` (0: all of them).
    pub fn new(after: u64) -> Self {
        Self {
            after,
            steps: HashMap::new(),
            held: None,
        }
    }

    /// Reads the next event of the log at time `now`; returns the bytes to
    /// send now (one or two SSE events), if any. A thinking or text delta is
    /// held (it sends the held step first if that is another step); any
    /// other event sends the held step, then itself.
    pub fn read(&mut self, logged: &Frame, now: Instant) -> Option<Bytes> {
        if logged.name == "process_step"
            && let Some(ChatEvent::Step(step)) = event_of(logged)
        {
            let (kind, delta) = match step.kind {
                StepKind::Thinking { delta: Some(d), .. } => ("thinking", d),
                StepKind::Text { delta: Some(d), .. } => ("text", d),
                _ => return self.then(logged, now),
            };
            let earlier = match self.held.as_deref() {
                Some(held) if held == step.id => None,
                _ => self.flush(now),
            };
            let text = self.steps.entry(step.id.clone()).or_insert_with(|| StepText {
                index: step.index,
                kind,
                content: String::new(),
                last_seq: 0,
                sent_at: None,
            });
            text.content.push_str(&delta);
            text.last_seq = logged.seq;
            self.held = Some(step.id);
            return earlier;
        }
        self.then(logged, now)
    }

    /// The held step's event (if any), then `logged` as it was logged.
    fn then(&mut self, logged: &Frame, now: Instant) -> Option<Bytes> {
        let earlier = self.flush(now);
        let this = (logged.seq > self.after).then(|| logged.bytes());
        match (earlier, this) {
            (Some(a), Some(b)) => {
                let mut both = BytesMut::with_capacity(a.len() + b.len());
                both.extend_from_slice(&a);
                both.extend_from_slice(&b);
                Some(both.freeze())
            }
            (a, b) => a.or(b),
        }
    }

    /// The reader has caught up with the log at `now`: `Ok` with the held
    /// step's event if it is due (not sent within [`INTERVAL`]), `Ok(None)`
    /// when nothing is held, `Err` with the time it is due otherwise.
    pub fn caught_up(&mut self, now: Instant) -> Result<Option<Bytes>, Instant> {
        let Some(held) = self.held.as_deref() else {
            return Ok(None);
        };
        let due = self
            .steps
            .get(held)
            .and_then(|step| step.sent_at)
            .map(|sent| sent + INTERVAL);
        match due {
            Some(due) if due > now => Err(due),
            _ => Ok(self.flush(now)),
        }
    }

    /// The held step's event, sent at `now`, unless its last delta is at or
    /// before the resume point; nothing is held afterwards.
    pub fn flush(&mut self, now: Instant) -> Option<Bytes> {
        let id = self.held.take()?;
        let step = self.steps.get_mut(&id)?;
        if step.last_seq <= self.after {
            return None;
        }
        step.sent_at = Some(now);
        let data = Accumulated {
            id: &id,
            index: step.index,
            kind: step.kind,
            content: &step.content,
        };
        Some(Frame::new(step.last_seq, "process_step", &data).bytes())
    }
}
