//! Reading chatd's SSE streams: every event parsed into an [`SseEvent`],
//! read one at a time from a live stream or all at once, and the check that
//! a reply's ids count 1, 2, 3...

use std::time::Duration;

use eventsource_stream::{Event, Eventsource};
use futures::{Stream, StreamExt};
use serde_json::Value;

/// How long any one event may take to arrive.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

/// One received SSE event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub id: String,
    pub event: String,
    pub data: Value,
}

impl SseEvent {
    fn parse(event: Event) -> Self {
        Self {
            id: event.id,
            event: event.event,
            data: serde_json::from_str(&event.data).expect("event data is JSON"),
        }
    }

    /// The assistant message id a `start` event carries.
    pub fn message_id(&self) -> String {
        self.data["message_id"].as_str().expect("message_id").to_string()
    }
}

/// Each event as `(id, event, data)`: the shape
/// [`crate::support::TestApp::stored_events`] reads back from storage.
pub fn shape(events: &[SseEvent]) -> Vec<(String, String, Value)> {
    events
        .iter()
        .map(|e| (e.id.clone(), e.event.clone(), e.data.clone()))
        .collect()
}

/// A live SSE stream, read with [`next`], [`take`] or [`rest`]; a broken
/// stream or an event that does not parse is a panic.
pub fn events_of(response: reqwest::Response) -> impl Stream<Item = SseEvent> + Unpin {
    Box::pin(
        response
            .bytes_stream()
            .eventsource()
            .map(|e| SseEvent::parse(e.expect("SSE parse"))),
    )
}

/// A live SSE stream that ends quietly where the connection breaks (as when
/// the server is killed) instead of panicking; event data must still be JSON.
pub fn events_until_error(response: reqwest::Response) -> impl Stream<Item = SseEvent> + Unpin {
    Box::pin(
        response
            .bytes_stream()
            .eventsource()
            .take_while(|e| std::future::ready(e.is_ok()))
            .map(|e| SseEvent::parse(e.expect("checked by take_while"))),
    )
}

/// The next event of a live stream (20 s limit); the stream must not end.
pub async fn next(stream: &mut (impl Stream<Item = SseEvent> + Unpin)) -> SseEvent {
    tokio::time::timeout(EVENT_TIMEOUT, stream.next())
        .await
        .expect("an event in time")
        .expect("an event")
}

/// The next `max` events of a live stream, or fewer if it ends first (20 s
/// limit per event).
pub async fn take(stream: &mut (impl Stream<Item = SseEvent> + Unpin), max: usize) -> Vec<SseEvent> {
    let mut out = Vec::new();
    while out.len() < max {
        let next = tokio::time::timeout(EVENT_TIMEOUT, stream.next())
            .await
            .expect("SSE stalled");
        let Some(event) = next else { break };
        out.push(event);
    }
    out
}

/// Every remaining event of a live stream, until it ends (20 s limit per
/// event).
pub async fn rest(stream: &mut (impl Stream<Item = SseEvent> + Unpin)) -> Vec<SseEvent> {
    take(stream, usize::MAX).await
}

/// Reads SSE events from `response` until the stream ends or `max` events
/// (the response is dropped then).
pub async fn read_events(response: reqwest::Response, max: usize) -> Vec<SseEvent> {
    take(&mut events_of(response), max).await
}

/// The events as (name, data) pairs with the ids checked to count 1, 2, 3...
pub fn checked(events: &[SseEvent]) -> Vec<(String, Value)> {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.id, (i + 1).to_string(), "event ids count from 1: {events:#?}");
    }
    events.iter().map(|e| (e.event.clone(), e.data.clone())).collect()
}

/// The `tool_result` of call `id` among `events`: (content, success).
pub fn tool_result(events: &[SseEvent], id: &str) -> (String, bool) {
    let step = events
        .iter()
        .find(|e| e.data["type"] == "tool_result" && e.data["id_ref"] == id)
        .unwrap_or_else(|| panic!("no tool_result for {id}: {events:#?}"));
    (
        step.data["content"].as_str().expect("content").to_string(),
        step.data["success"].as_bool().expect("success"),
    )
}
