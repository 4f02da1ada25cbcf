//! The per-reply event log.
//!
//! A reply's generation task appends events; any number of subscribers read
//! them from any position and then follow live, each at its own pace. The
//! generation never waits for a subscriber, and a subscriber that goes away
//! costs the generation nothing. Events are serialized once, when appended,
//! straight into their Server-Sent Events [`Frame`]: every subscriber, the
//! database writer and a replay share those bytes.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use futures::Stream;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::approvals::Approvals;
pub use super::approvals::{ApprovalError, Decision};
use crate::config::OnDisconnect;
use crate::domain::ChatEvent;
use crate::store::Turns;
use crate::wire::sse::Frame;

/// The frame of `event` at position `seq` (1-based within the reply).
pub fn frame(seq: u64, event: &ChatEvent) -> Frame {
    Frame::new(seq, event.name(), event)
}

/// The typed event of a frame, parsed back from its JSON (`None` if it does
/// not parse, which a frame chatd serialized always does).
pub fn event_of(frame: &Frame) -> Option<ChatEvent> {
    ChatEvent::from_parts(frame.name, frame.data())
}

/// Whether a frame holds the last event of a reply (`done` or `error`).
pub fn is_terminal(frame: &Frame) -> bool {
    ChatEvent::is_terminal_name(frame.name)
}

#[derive(Debug, Default)]
struct LogState {
    events: Vec<Frame>,
    finished: bool,
    /// Readers waiting for the next append, woken (and removed) by it.
    waiting: Vec<Waker>,
}

/// A running or recently finished reply: its event log and its cancel switch.
#[derive(Debug)]
pub struct Reply {
    pub message_id: Uuid,
    pub conversation_id: Uuid,
    state: Mutex<LogState>,
    /// Cancels the generation (upstream request and running tools).
    pub cancel: CancellationToken,
    subscribers: AtomicUsize,
    on_disconnect: OnDisconnect,
    /// Set before `cancel` when the server stops the reply (shutdown), so it
    /// is stored as `interrupted` rather than `cancelled`.
    interrupted: AtomicBool,
    /// Where events are also appended durably (the store's event writer).
    sink: Option<Arc<dyn Turns>>,
    /// Tool calls waiting for the user's decision.
    approvals: Approvals,
}

impl Reply {
    /// A new, empty reply log; with a `sink`, every event is also queued
    /// for the database.
    pub fn new(
        message_id: Uuid,
        conversation_id: Uuid,
        on_disconnect: OnDisconnect,
        sink: Option<Arc<dyn Turns>>,
    ) -> Self {
        Self {
            message_id,
            conversation_id,
            state: Mutex::new(LogState::default()),
            cancel: CancellationToken::new(),
            subscribers: AtomicUsize::new(0),
            on_disconnect,
            interrupted: AtomicBool::new(false),
            sink,
            approvals: Approvals::default(),
        }
    }

    /// A finished log holding `events` (a replay built from storage).
    pub fn replayed(message_id: Uuid, conversation_id: Uuid, events: Vec<Frame>) -> Self {
        let reply = Self::new(message_id, conversation_id, OnDisconnect::Continue, None);
        {
            let mut state = reply.state();
            state.finished = true;
            state.events = events;
        }
        reply
    }

    /// Registers a call that waits for approval; the receiver gets the
    /// decision.
    pub fn await_approval(&self, tool_call_id: &str) -> tokio::sync::oneshot::Receiver<Decision> {
        self.approvals.wait_for(tool_call_id)
    }

    /// Delivers the user's decision for a waiting call.
    pub fn decide(&self, tool_call_id: &str, decision: Decision) -> Result<(), ApprovalError> {
        self.approvals.decide(tool_call_id, decision)
    }

    /// Forgets a waiting call (its time ran out).
    pub fn forget_approval(&self, tool_call_id: &str) {
        self.approvals.forget(tool_call_id);
    }

    /// Stops the reply because the server is stopping: it is stored as
    /// `interrupted`.
    pub fn interrupt(&self) {
        self.interrupted.store(true, Ordering::SeqCst);
        self.cancel.cancel();
    }

    /// Whether [`Reply::interrupt`] was called.
    pub fn is_interrupted(&self) -> bool {
        self.interrupted.load(Ordering::SeqCst)
    }

    /// Number of events so far.
    pub fn len(&self) -> u64 {
        self.state().events.len() as u64
    }

    /// Whether no event was appended yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The terminal event, once appended.
    pub fn terminal(&self) -> Option<Frame> {
        let state = self.state();
        state.events.last().filter(|e| is_terminal(e)).cloned()
    }

    /// Waits until the terminal event is appended.
    pub async fn finished(&self) {
        std::future::poll_fn(|cx| {
            let mut state = self.state();
            if state.finished {
                return Poll::Ready(());
            }
            wait_for_append(&mut state, cx);
            Poll::Pending
        })
        .await;
    }

    /// The event at `index` (0-based: seq `index + 1`); `Ready(None)` when
    /// the log is finished and has no such event; `Pending` until it is
    /// appended (then `cx` is woken).
    pub fn poll_event(&self, index: usize, cx: &mut Context<'_>) -> Poll<Option<Frame>> {
        let mut state = self.state();
        if let Some(event) = state.events.get(index) {
            return Poll::Ready(Some(event.clone()));
        }
        if state.finished {
            return Poll::Ready(None);
        }
        wait_for_append(&mut state, cx);
        Poll::Pending
    }

    fn state(&self) -> MutexGuard<'_, LogState> {
        // A panic while holding this lock cannot leave the Vec inconsistent.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends `event`; returns its seq. Events after a terminal one are
    /// ignored (returns 0).
    pub fn push(&self, event: ChatEvent) -> u64 {
        let (seq, name, data) = {
            let mut state = self.state();
            if state.finished {
                return 0;
            }
            let logged = frame(state.events.len() as u64 + 1, &event);
            let sunk = (logged.seq, logged.name, self.sink.as_ref().map(|_| logged.data_bytes()));
            append(&mut state, logged);
            sunk
        };
        if let (Some(sink), Some(data)) = (&self.sink, data) {
            // A terminal event pushed here (not with the final state) is
            // the `internal` error after a failed final commit: urgent.
            sink.event(self.message_id, seq, name, data, ChatEvent::is_terminal_name(name));
        }
        seq
    }

    /// The seq the next appended event gets (1-based).
    pub fn next_seq(&self) -> u64 {
        self.len() + 1
    }

    /// Appends `event`, serialized earlier with [`frame`] at
    /// [`Reply::next_seq`] and already stored (the terminal event, which
    /// [`Turns::finish`] commits with the final state): it is not sent to
    /// the database again. An event whose seq is not the next one (only the
    /// reply's own generation appends, so this does not happen) is
    /// renumbered and stored like any other. Returns its seq, 0 after a
    /// terminal event.
    pub fn push_stored(&self, event: Frame) -> u64 {
        let mut state = self.state();
        if state.finished {
            return 0;
        }
        let seq = state.events.len() as u64 + 1;
        if event.seq != seq {
            drop(state);
            tracing::error!(
                expected = seq,
                got = event.seq,
                "a stored event out of order was renumbered"
            );
            return match event_of(&event) {
                Some(typed) => self.push(typed),
                None => 0,
            };
        }
        append(&mut state, event);
        seq
    }

    /// Whether the terminal event has been appended.
    pub fn is_finished(&self) -> bool {
        self.state().finished
    }

    /// Follows the log from the event after `after` (0 = from the start) to
    /// the terminal event. When the last subscriber of an unfinished reply is
    /// dropped and the policy is [`OnDisconnect::Cancel`], the reply is
    /// cancelled.
    pub fn subscribe(self: &Arc<Self>, after: u64) -> Subscription {
        Subscription {
            guard: SubscriberGuard::new(self.clone()),
            next: usize::try_from(after).unwrap_or(usize::MAX),
        }
    }

    /// Applies the disconnect policy now that no client follows the reply:
    /// with [`OnDisconnect::Cancel`], cancels it unless it has ended. Called
    /// when the last subscriber leaves, and when the client that sent the
    /// message goes away before its answer.
    pub fn no_client_left(&self) {
        if self.on_disconnect == OnDisconnect::Cancel && !self.is_finished() {
            tracing::info!(message_id = %self.message_id, "no client follows the reply; cancelling it");
            self.cancel.cancel();
        }
    }
}

/// Appends `logged` (its seq is the next one) and wakes the readers waiting
/// for it. They are woken under the lock, so the list keeps its capacity: a
/// wake only queues the reader's task.
fn append(state: &mut LogState, logged: Frame) {
    state.finished = is_terminal(&logged);
    state.events.push(logged);
    for waker in state.waiting.drain(..) {
        waker.wake();
    }
}

/// Registers `cx` to be woken by the next append (once, however often the
/// reader polls in between).
fn wait_for_append(state: &mut LogState, cx: &mut Context<'_>) {
    if !state.waiting.iter().any(|w| w.will_wake(cx.waker())) {
        state.waiting.push(cx.waker().clone());
    }
}

/// A reader of a reply's log (see [`Reply::subscribe`]): a stream of its
/// events in order, from where it started to the terminal event. It counts
/// as a subscriber until dropped.
pub struct Subscription {
    guard: SubscriberGuard,
    /// Index of the next event to read.
    next: usize,
}

impl Stream for Subscription {
    type Item = Frame;

    fn poll_next(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Frame>> {
        let this = self.get_mut();
        let event = std::task::ready!(this.guard.reply.poll_event(this.next, cx));
        if event.is_some() {
            this.next += 1;
        }
        Poll::Ready(event)
    }
}

/// Counts subscribers and applies the disconnect policy when the last leaves.
struct SubscriberGuard {
    reply: Arc<Reply>,
}

impl SubscriberGuard {
    fn new(reply: Arc<Reply>) -> Self {
        reply.subscribers.fetch_add(1, Ordering::SeqCst);
        Self { reply }
    }
}

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        let left = self.reply.subscribers.fetch_sub(1, Ordering::SeqCst) - 1;
        if left == 0 {
            self.reply.no_client_left();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ErrorEvent;
    use futures::StreamExt;

    fn error() -> ChatEvent {
        ChatEvent::Error(ErrorEvent {
            code: "internal".into(),
            message: "x".into(),
            retryable: false,
        })
    }

    #[test]
    fn events_are_rendered_once_as_their_sse_frame() {
        let logged = frame(7, &error());
        let data = r#"{"code":"internal","message":"x","retryable":false}"#;
        assert_eq!(logged.data(), data);
        assert_eq!(&logged.data_bytes()[..], data.as_bytes());
        assert_eq!(
            &logged.bytes()[..],
            format!("id: 7\nevent: error\ndata: {data}\n\n").as_bytes()
        );
        assert!(is_terminal(&logged));
        assert_eq!(event_of(&logged), Some(error()));
        // Stored JSON with raw line breaks still makes one `data:` line.
        let odd = Frame::from_json(2, "process_step", "{\"a\":\r\n1}");
        assert_eq!(&odd.bytes()[..], b"id: 2\nevent: process_step\ndata: {\"a\":  1}\n\n");
        assert_eq!(odd.data(), "{\"a\":  1}");
    }

    #[tokio::test]
    async fn subscribers_replay_then_follow() {
        let reply = Arc::new(Reply::new(Uuid::now_v7(), Uuid::now_v7(), OnDisconnect::Continue, None));
        reply.push(error());
        assert_eq!(reply.push(error()), 0, "nothing after a terminal event");
        let all: Vec<_> = reply.subscribe(0).collect().await;
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].seq, 1);
        let none: Vec<_> = reply.subscribe(1).collect().await;
        assert!(none.is_empty());
    }

    #[tokio::test]
    async fn a_stored_terminal_event_is_appended_as_serialized_and_renumbered_if_out_of_place() {
        let reply = Arc::new(Reply::new(Uuid::now_v7(), Uuid::now_v7(), OnDisconnect::Continue, None));
        assert_eq!(reply.next_seq(), 1);
        // Serialized at seq 1, as the generation does before its final commit.
        let stored = frame(reply.next_seq(), &error());
        assert_eq!(reply.push_stored(stored.clone()), 1);
        assert!(reply.is_finished());
        assert_eq!(reply.push_stored(stored), 0, "nothing after a terminal event");
        let all: Vec<_> = reply.subscribe(0).collect().await;
        assert_eq!(all.len(), 1);
        assert_eq!(&all[0].bytes()[..], &frame(1, &error()).bytes()[..]);

        // An event serialized for another seq gets the next one.
        let other = Arc::new(Reply::new(Uuid::now_v7(), Uuid::now_v7(), OnDisconnect::Continue, None));
        assert_eq!(other.push_stored(frame(5, &error())), 1);
        let all: Vec<_> = other.subscribe(0).collect().await;
        assert_eq!(&all[0].bytes()[..], &frame(1, &error()).bytes()[..]);
    }

    #[tokio::test]
    async fn last_subscriber_leaving_cancels_under_cancel_policy() {
        let reply = Arc::new(Reply::new(Uuid::now_v7(), Uuid::now_v7(), OnDisconnect::Cancel, None));
        let a = reply.subscribe(0);
        let b = reply.subscribe(0);
        drop(a);
        assert!(!reply.cancel.is_cancelled());
        drop(b);
        assert!(reply.cancel.is_cancelled());
    }
}
