//! Frames a reply's event log as Server-Sent Events.
//!
//! Every event has `id:` (its 1-based position in the reply; in accumulated
//! mode a coalesced step event has its last delta's), `event:` (its name)
//! and `data:` (its JSON). A keep-alive comment follows each configured
//! interval without an event; `X-Accel-Buffering: no` keeps nginx from
//! buffering.

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
use tokio::time::{Instant, Sleep};

use super::access::StreamSlot;
use super::accumulate::Accumulator;
use crate::chat::log::{Reply, Subscription};
use crate::config::ChatConfig;
use crate::wire::sse::KEEP_ALIVE;

/// How thinking and text steps carry their text: `delta` (default) or
/// `accumulated`.
///
/// In `accumulated` mode step events are coalesced, so that a reply costs
/// about its own size, not its size squared: at most one event per step
/// every 100 ms while the reply streams live, and always one with the
/// step's final content. A step's held content is sent before any other
/// event, and at once when the stream has caught up with the reply and the
/// step was not sent within the last 100 ms. Events already produced when
/// read (a resume, a replay of a finished reply) come as one event per
/// step with its full content. An event's `id` is the seq of the last
/// delta it includes, so `Last-Event-ID` resumes exactly: a step whose last
/// delta is at or before that id is not sent again, and one that goes on
/// past it is sent with its full content.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum StreamMode {
    /// `delta`: only the new text.
    #[default]
    Delta,
    /// `content`: everything so far in that step, coalesced (see above).
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
/// In accumulated mode the log is read from its start, so the skipped
/// events still count toward `content`, and step events are coalesced (see
/// [`super::accumulate`]). The body holds `slot` (the caller's
/// `limits.concurrent_streams` count) until it is dropped: at the stream's
/// end or when the client goes away.
///
/// Delta frames are the bytes the log rendered when the event was appended
/// (no per-subscriber formatting). A keep-alive comment (`:` and a blank
/// line) follows every keep-alive interval in which nothing was sent, so a
/// silent upstream never lets a proxy time the stream out. One timer per
/// stream, not reset per event: it runs to the keep-alive deadline, or to
/// the held step's deadline in accumulated mode when that is earlier.
pub fn sse_response(
    reply: &Arc<Reply>,
    after: u64,
    mode: StreamMode,
    config: &ChatConfig,
    slot: StreamSlot,
) -> Response {
    let accumulated = mode == StreamMode::Accumulated;
    let period = Duration::from_millis(config.keepalive_interval_ms.max(1));
    let keepalive_at = Instant::now() + period;
    let body = EventBody {
        events: reply.subscribe(if accumulated { 0 } else { after }),
        after,
        accumulated: accumulated.then(|| Accumulator::new(after)),
        timer: Box::pin(tokio::time::sleep_until(keepalive_at)),
        keepalive_at,
        held_until: None,
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

/// The body of an SSE response: one frame per event read from the log
/// (accumulated mode: per coalesced event), and keep-alive comments. It
/// reads the log itself (one lock per event), rather than through a chain
/// of stream adapters: this runs once per token per client.
struct EventBody {
    events: Subscription,
    /// Events up to this seq are not sent.
    after: u64,
    /// Accumulated mode: the steps' content and the held step.
    accumulated: Option<Accumulator>,
    /// The stream's one timer: due at `keepalive_at` or `held_until`,
    /// whichever is earlier.
    timer: Pin<Box<Sleep>>,
    keepalive_at: Instant,
    /// Accumulated mode: when the held step's event is due.
    held_until: Option<Instant>,
    period: Duration,
    /// Whether an event was sent since the last keep-alive deadline.
    sent: bool,
    /// Released with the body.
    _slot: StreamSlot,
}

impl EventBody {
    /// Points the timer at the earlier of its two deadlines.
    fn rearm(&mut self) {
        let at = self.held_until.map_or(self.keepalive_at, |h| h.min(self.keepalive_at));
        self.timer.as_mut().reset(at);
    }

    /// Accumulated mode, caught up with the log: the held step's event if
    /// it is due; otherwise the timer is armed for when it is.
    fn due(&mut self) -> Option<Bytes> {
        let accumulator = self.accumulated.as_mut()?;
        match accumulator.caught_up(Instant::now()) {
            Ok(frame) => {
                self.held_until = None;
                frame
            }
            Err(at) => {
                if self.held_until != Some(at) {
                    self.held_until = Some(at);
                    self.rearm();
                }
                None
            }
        }
    }

    fn send(&mut self, frame: Bytes) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.sent = true;
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }
}

impl hyper::body::Body for EventBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        // Whatever is in the log is read without yielding to the timer.
        loop {
            match Pin::new(&mut this.events).poll_next(cx) {
                Poll::Ready(Some(logged)) => {
                    let frame = match &mut this.accumulated {
                        None => (logged.seq > this.after).then(|| logged.bytes()),
                        Some(accumulator) => accumulator.read(&logged, Instant::now()),
                    };
                    if let Some(frame) = frame {
                        return this.send(frame);
                    }
                }
                Poll::Ready(None) => {
                    let last = this.accumulated.as_mut().and_then(|a| a.flush(Instant::now()));
                    return match last {
                        Some(frame) => this.send(frame),
                        None => Poll::Ready(None),
                    };
                }
                Poll::Pending => break,
            }
        }
        if let Some(frame) = this.due() {
            return this.send(frame);
        }
        while this.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now().max(this.timer.deadline());
            if now >= this.keepalive_at {
                this.keepalive_at = now + this.period;
                this.rearm();
                if !std::mem::take(&mut this.sent) {
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(KEEP_ALIVE)))));
                }
            } else {
                // The held step's deadline.
                this.held_until = None;
                this.rearm();
                if let Some(frame) = this.due() {
                    return this.send(frame);
                }
            }
        }
        Poll::Pending
    }
}
