//! The per-reply event log.
//!
//! A reply's generation task appends events; any number of subscribers read
//! them from any position and then follow live, each at its own pace. The
//! generation never waits for a subscriber, and a subscriber that goes away
//! costs the generation nothing. Events are serialized once, when appended,
//! straight into their Server-Sent Events frame: every subscriber, the
//! database writer and a replay share those bytes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::events::ChatEvent;
use crate::config::OnDisconnect;
use crate::store::Writer;

/// One event with its position (`seq`, 1-based within the reply), its SSE
/// name and its JSON data, serialized once into its SSE frame
/// (`id: <seq>\nevent: <name>\ndata: <JSON>\n\n`). Only the frame is kept:
/// a reply's log is what a 20,000-token reply or 10,000 streams hold in
/// memory, and keeping the typed event beside it doubled that. The log holds
/// these by value and subscribers get clones (a reference count on the
/// frame): no separate allocation per event.
#[derive(Debug, Clone)]
pub struct LoggedEvent {
    pub seq: u64,
    /// `start`, `process_step`, `sources`, `done` or `error`.
    pub name: &'static str,
    frame: Bytes,
    /// Where the JSON data is in `frame` (bytes).
    data_start: u32,
    data_end: u32,
}

impl LoggedEvent {
    /// Serializes `event` at position `seq`.
    pub fn new(seq: u64, event: ChatEvent) -> Self {
        let name = event.name();
        let mut frame = frame_head(seq, name, TYPICAL_DATA_BYTES);
        let data_start = frame.len();
        if let Err(e) = serde_json::to_writer(&mut frame, &event) {
            tracing::error!(error = %e, "event did not serialize");
            frame.truncate(data_start);
            frame.extend_from_slice(b"{}");
        }
        Self::finish(seq, name, frame, data_start)
    }

    /// The event `name` at `seq` with `data`, JSON serialized earlier (read
    /// back from the database, or rewritten for a subscriber). An SSE
    /// `data:` line cannot hold a line break. chatd's JSON never has one;
    /// one that somehow did is sent as a space, which in valid JSON can only
    /// have been whitespace between tokens.
    pub fn from_json(seq: u64, name: &'static str, data: &str) -> Self {
        let mut frame = frame_head(seq, name, data.len());
        let data_start = frame.len();
        frame.extend(data.bytes().map(|b| if b == b'\n' || b == b'\r' { b' ' } else { b }));
        Self::finish(seq, name, frame, data_start)
    }

    fn finish(seq: u64, name: &'static str, mut frame: Vec<u8>, data_start: usize) -> Self {
        let data_end = frame.len();
        frame.extend_from_slice(b"\n\n");
        // Frames are far below 4 GiB (a request body is at most megabytes).
        let to_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Self {
            seq,
            name,
            // Exact size: logs are held for minutes, and a boxed slice
            // becomes `Bytes` without a separate reference-count block.
            frame: Bytes::from(frame.into_boxed_slice()),
            data_start: to_u32(data_start),
            data_end: to_u32(data_end),
        }
    }

    /// The SSE frame, ready to write: `id:`, `event:` and `data:` lines and
    /// the blank line that ends an event.
    pub fn frame(&self) -> Bytes {
        self.frame.clone()
    }

    /// The JSON data (a view of the frame, no copy).
    pub fn data_bytes(&self) -> Bytes {
        self.frame.slice(self.data_start as usize..self.data_end as usize)
    }

    /// The JSON data.
    pub fn data(&self) -> &str {
        // Written from a `&str` or by serde_json: always UTF-8.
        std::str::from_utf8(&self.frame[self.data_start as usize..self.data_end as usize]).unwrap_or("{}")
    }

    /// Whether this is the last event of a reply (`done` or `error`).
    pub fn is_terminal(&self) -> bool {
        matches!(self.name, "done" | "error")
    }

    /// The typed event, parsed back from its JSON (`None` if it does not
    /// parse, which an event chatd serialized always does).
    pub fn event(&self) -> Option<ChatEvent> {
        ChatEvent::from_parts(self.name, self.data())
    }
}

/// About the JSON of one text delta: the first guess of a frame's size
/// (the frame is shrunk to fit once written).
const TYPICAL_DATA_BYTES: usize = 160;

/// `id: <seq>\nevent: <name>\ndata: ` in a buffer with room for `data_len`
/// more bytes and the frame's end.
fn frame_head(seq: u64, name: &str, data_len: usize) -> Vec<u8> {
    use std::io::Write as _;
    let mut frame = Vec::with_capacity(32 + name.len() + data_len);
    // Writing to a Vec cannot fail.
    let _ = write!(frame, "id: {seq}\nevent: {name}\ndata: ");
    frame
}

#[derive(Debug, Default)]
struct LogState {
    events: Vec<LoggedEvent>,
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
    /// Where events are also appended durably (the `reply_event_batches` table).
    sink: Option<Writer>,
    /// Tool calls waiting for the user's decision, by tool call id.
    approvals: Mutex<HashMap<String, tokio::sync::oneshot::Sender<Decision>>>,
}

/// The user's answer to a `tool_approval` step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub approved: bool,
    /// Why, in the user's words (passed to the model on a denial).
    pub reason: Option<String>,
}

/// Why an approval could not be delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalError {
    /// No call with that id is waiting (never asked, or already decided).
    NotPending,
}

impl Reply {
    /// A new, empty reply log; with a `sink`, every event is also queued
    /// for the database.
    pub fn new(message_id: Uuid, conversation_id: Uuid, on_disconnect: OnDisconnect, sink: Option<Writer>) -> Self {
        Self {
            message_id,
            conversation_id,
            state: Mutex::new(LogState::default()),
            cancel: CancellationToken::new(),
            subscribers: AtomicUsize::new(0),
            on_disconnect,
            interrupted: AtomicBool::new(false),
            sink,
            approvals: Mutex::new(HashMap::new()),
        }
    }

    /// A finished log holding `events` (a replay built from storage).
    pub fn replayed(message_id: Uuid, conversation_id: Uuid, events: Vec<LoggedEvent>) -> Self {
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
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.approvals
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(tool_call_id.to_string(), tx);
        rx
    }

    /// Delivers the user's decision for a waiting call.
    pub fn decide(&self, tool_call_id: &str, decision: Decision) -> Result<(), ApprovalError> {
        let waiting = self
            .approvals
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(tool_call_id);
        match waiting {
            Some(tx) => tx.send(decision).map_err(|_| ApprovalError::NotPending),
            None => Err(ApprovalError::NotPending),
        }
    }

    /// Forgets a waiting call (its time ran out).
    pub fn forget_approval(&self, tool_call_id: &str) {
        self.approvals
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(tool_call_id);
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
    pub fn terminal(&self) -> Option<LoggedEvent> {
        let state = self.state();
        state.events.last().filter(|e| e.is_terminal()).cloned()
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
    pub fn poll_event(&self, index: usize, cx: &mut Context<'_>) -> Poll<Option<LoggedEvent>> {
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
            let logged = LoggedEvent::new(state.events.len() as u64 + 1, event);
            let sunk = (logged.seq, logged.name, self.sink.as_ref().map(|_| logged.data_bytes()));
            append(&mut state, logged);
            sunk
        };
        if let (Some(sink), Some(data)) = (&self.sink, data) {
            sink.event(self.message_id, seq, name, data);
        }
        seq
    }

    /// The seq the next appended event gets (1-based).
    pub fn next_seq(&self) -> u64 {
        self.len() + 1
    }

    /// Appends `event`, serialized earlier with [`LoggedEvent::new`] at
    /// [`Reply::next_seq`] and already stored (the terminal event, which
    /// [`Writer::finish`] commits with the final state): it is not sent to
    /// the database again. An event whose seq is not the next one (only the
    /// reply's own generation appends, so this does not happen) is
    /// renumbered and stored like any other. Returns its seq, 0 after a
    /// terminal event.
    pub fn push_stored(&self, event: LoggedEvent) -> u64 {
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
            return match event.event() {
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
fn append(state: &mut LogState, logged: LoggedEvent) {
    state.finished = logged.is_terminal();
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
    type Item = LoggedEvent;

    fn poll_next(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<LoggedEvent>> {
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

/// Replies by assistant message id: running ones, and finished ones for the
/// retention window; plus which conversation has a reply running.
#[derive(Debug, Default)]
pub struct ReplyRegistry {
    inner: Mutex<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    replies: HashMap<Uuid, Arc<Reply>>,
    /// conversation id -> running reply
    running: HashMap<Uuid, Arc<Reply>>,
}

impl ReplyRegistry {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers `reply` as running unless its conversation already has a
    /// running reply, which is returned instead.
    pub fn insert_if_idle(&self, reply: Arc<Reply>) -> Option<Arc<Reply>> {
        let mut inner = self.lock();
        if let Some(running) = inner.running.get(&reply.conversation_id) {
            return Some(running.clone());
        }
        inner.running.insert(reply.conversation_id, reply.clone());
        inner.replies.insert(reply.message_id, reply);
        None
    }

    /// Marks a reply as no longer running (it stays replayable).
    pub fn finished(&self, reply: &Reply) {
        let mut inner = self.lock();
        if inner
            .running
            .get(&reply.conversation_id)
            .is_some_and(|r| r.message_id == reply.message_id)
        {
            inner.running.remove(&reply.conversation_id);
        }
    }

    /// Forgets a reply now.
    pub fn remove(&self, reply: &Reply) {
        self.finished(reply);
        self.lock().replies.remove(&reply.message_id);
    }

    /// The reply with that message id, if still in memory.
    pub fn get(&self, message_id: Uuid) -> Option<Arc<Reply>> {
        self.lock().replies.get(&message_id).cloned()
    }

    /// Every running reply.
    pub fn running(&self) -> Vec<Arc<Reply>> {
        self.lock().running.values().cloned().collect()
    }

    /// Forgets the reply after `retention`.
    pub fn expire(self: &Arc<Self>, message_id: Uuid, retention: Duration) {
        let registry = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(retention).await;
            if let Some(registry) = registry.upgrade() {
                registry.lock().replies.remove(&message_id);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::events::ErrorEvent;
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
        let logged = LoggedEvent::new(7, error());
        let data = r#"{"code":"internal","message":"x","retryable":false}"#;
        assert_eq!(logged.data(), data);
        assert_eq!(&logged.data_bytes()[..], data.as_bytes());
        assert_eq!(
            &logged.frame()[..],
            format!("id: 7\nevent: error\ndata: {data}\n\n").as_bytes()
        );
        assert!(logged.is_terminal());
        assert_eq!(logged.event(), Some(error()));
        // Stored JSON with raw line breaks still makes one `data:` line.
        let odd = LoggedEvent::from_json(2, "process_step", "{\"a\":\r\n1}");
        assert_eq!(&odd.frame()[..], b"id: 2\nevent: process_step\ndata: {\"a\":  1}\n\n");
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
        let stored = LoggedEvent::new(reply.next_seq(), error());
        assert_eq!(reply.push_stored(stored.clone()), 1);
        assert!(reply.is_finished());
        assert_eq!(reply.push_stored(stored), 0, "nothing after a terminal event");
        let all: Vec<_> = reply.subscribe(0).collect().await;
        assert_eq!(all.len(), 1);
        assert_eq!(&all[0].frame()[..], &LoggedEvent::new(1, error()).frame()[..]);

        // An event serialized for another seq gets the next one.
        let other = Arc::new(Reply::new(Uuid::now_v7(), Uuid::now_v7(), OnDisconnect::Continue, None));
        assert_eq!(other.push_stored(LoggedEvent::new(5, error())), 1);
        let all: Vec<_> = other.subscribe(0).collect().await;
        assert_eq!(&all[0].frame()[..], &LoggedEvent::new(1, error()).frame()[..]);
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
