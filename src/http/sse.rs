//! Frames a reply's event log as Server-Sent Events.
//!
//! Every event has `id:` (its 1-based position in the reply), `event:` (its
//! name) and `data:` (its JSON). A keep-alive comment follows each
//! configured interval without an event; `X-Accel-Buffering: no` keeps nginx
//! from buffering.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::HeaderValue;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::Response;
use bytes::Bytes;
use futures::Stream;
use hyper::body::Frame;
use serde::Deserialize;
use serde_json::json;
use tokio::time::Sleep;

use super::access::StreamSlot;
use crate::chat::log::{Reply, Subscription, event_of};
use crate::config::ChatConfig;
use crate::domain::{ChatEvent, StepKind};
use crate::wire::sse::{self, KEEP_ALIVE};

/// How thinking and text steps carry their text: `delta` (default) or
/// `accumulated`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum StreamMode {
    /// `delta`: only the new text.
    #[default]
    Delta,
    /// `content`: everything so far in that step.
    Accumulated,
}

/// Read from a string (`null` is the default), so that a value of the wrong
/// type is a data error (400 `invalid_request`), not a JSON syntax error.
impl<'de> Deserialize<'de> for StreamMode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Option::<String>::deserialize(deserializer)?.as_deref() {
            None | Some("delta") => Ok(Self::Delta),
            Some("accumulated") => Ok(Self::Accumulated),
            Some(other) => Err(serde::de::Error::unknown_variant(other, &["delta", "accumulated"])),
        }
    }
}

/// The SSE response for `reply`'s events after `after` (0: all of them).
/// In accumulated mode the skipped events still count toward `content`.
/// The body holds `slot` (the caller's `limits.concurrent_streams` count)
/// until it is dropped: at the stream's end or when the client goes away.
///
/// Delta frames are the bytes the log rendered when the event was appended
/// (no per-subscriber formatting). A keep-alive comment (`:` and a blank
/// line) follows every keep-alive interval in which nothing was sent, so a
/// silent upstream never lets a proxy time the stream out; one timer per
/// stream, not reset per event.
pub fn sse_response(
    reply: &Arc<Reply>,
    after: u64,
    mode: StreamMode,
    config: &ChatConfig,
    slot: StreamSlot,
) -> Response {
    let start = if mode == StreamMode::Accumulated { 0 } else { after };
    let period = Duration::from_millis(config.keepalive_interval_ms.max(1));
    let body = EventBody {
        events: reply.subscribe(start),
        after,
        so_far: (mode == StreamMode::Accumulated).then(HashMap::new),
        keepalive: Box::pin(tokio::time::sleep(period)),
        period,
        sent: false,
        _slot: slot,
    };
    let mut response = Response::new(Body::new(body));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// The body of an SSE response: one frame per event read from the log,
/// and keep-alive comments. It reads the log itself (one lock per event),
/// rather than through a chain of stream adapters: this runs once per
/// token per client.
struct EventBody {
    events: Subscription,
    /// Events up to this seq are read (accumulated mode) but not sent.
    after: u64,
    /// Accumulated mode: every step's text so far, by step id.
    so_far: Option<HashMap<String, String>>,
    keepalive: Pin<Box<Sleep>>,
    period: Duration,
    /// Whether an event was sent since the last keep-alive deadline.
    sent: bool,
    /// Released with the body.
    _slot: StreamSlot,
}

impl EventBody {
    /// The frame to send for `logged`, if any.
    fn frame(&mut self, logged: &sse::Frame) -> Option<Bytes> {
        // Accumulated mode reads every event, the skipped ones included.
        let data = self
            .so_far
            .as_mut()
            .and_then(|so_far| event_of(logged).and_then(|event| accumulate(so_far, &event)));
        (logged.seq > self.after).then(|| match data {
            Some(data) => sse::Frame::from_json(logged.seq, logged.name, &data).bytes(),
            None => logged.bytes(),
        })
    }
}

impl hyper::body::Body for EventBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        loop {
            match Pin::new(&mut this.events).poll_next(cx) {
                Poll::Ready(Some(logged)) => {
                    if let Some(frame) = this.frame(&logged) {
                        this.sent = true;
                        return Poll::Ready(Some(Ok(Frame::data(frame))));
                    }
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => break,
            }
        }
        while this.keepalive.as_mut().poll(cx).is_ready() {
            let next = tokio::time::Instant::now() + this.period;
            this.keepalive.as_mut().reset(next);
            if !std::mem::take(&mut this.sent) {
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(KEEP_ALIVE)))));
            }
        }
        Poll::Pending
    }
}

/// For a thinking or text delta, the step's JSON with `content` (all text so
/// far) in place of `delta`.
fn accumulate(so_far: &mut HashMap<String, String>, event: &ChatEvent) -> Option<String> {
    let ChatEvent::Step(step) = event else { return None };
    let (kind, delta) = match &step.kind {
        StepKind::Thinking { delta: Some(d), .. } => ("thinking", d),
        StepKind::Text { delta: Some(d), .. } => ("text", d),
        _ => return None,
    };
    let text = so_far.entry(step.id.clone()).or_default();
    text.push_str(delta);
    Some(json!({"id": step.id, "index": step.index, "type": kind, "content": text}).to_string())
}
