//! Frames a reply's event log as Server-Sent Events.
//!
//! Every event has `id:` (its 1-based position in the reply), `event:` (its
//! name) and `data:` (its JSON). A keep-alive comment follows each
//! configured interval without an event; `X-Accel-Buffering: no` keeps nginx
//! from buffering.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::HeaderValue;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;

use crate::chat::events::{ChatEvent, StepKind};
use crate::chat::log::{LoggedEvent, Reply};
use crate::config::ChatConfig;

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
///
/// Delta frames are the bytes the log rendered when the event was appended
/// (no per-subscriber formatting). A keep-alive comment (`:` and a blank
/// line) follows every keep-alive interval in which nothing was sent, so a
/// silent upstream never lets a proxy time the stream out; one timer per
/// stream, not reset per event.
pub fn sse_response(reply: &Arc<Reply>, after: u64, mode: StreamMode, config: &ChatConfig) -> Response {
    let start = if mode == StreamMode::Accumulated { 0 } else { after };
    let mut so_far: HashMap<String, String> = HashMap::new();
    let frames = reply.subscribe(start).filter_map(move |logged| {
        // Accumulated mode reads every event, the skipped ones included.
        let data = match mode {
            StreamMode::Delta => None,
            StreamMode::Accumulated => logged.event().and_then(|event| accumulate(&mut so_far, &event)),
        };
        let frame = (logged.seq > after).then(|| match data {
            Some(data) => LoggedEvent::from_json(logged.seq, logged.name, &data).frame(),
            None => logged.frame(),
        });
        std::future::ready(frame)
    });
    let period = Duration::from_millis(config.keepalive_interval_ms.max(1));
    let body = async_stream::stream! {
        tokio::pin!(frames);
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sent = false;
        loop {
            tokio::select! {
                biased;
                frame = frames.next() => match frame {
                    Some(frame) => {
                        sent = true;
                        yield Ok::<_, Infallible>(frame);
                    }
                    None => break,
                },
                _ = ticks.tick() => {
                    if !std::mem::take(&mut sent) {
                        yield Ok(Bytes::from_static(KEEP_ALIVE));
                    }
                }
            }
        }
    };
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// An SSE comment line and the blank line after it; clients ignore it.
const KEEP_ALIVE: &[u8] = b":\n\n";

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
