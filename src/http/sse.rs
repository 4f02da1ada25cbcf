//! Frames a reply's event log as Server-Sent Events.
//!
//! Every event has `id:` (its 1-based position in the reply), `event:` (its
//! name) and `data:` (its JSON). A keep-alive comment is sent at the
//! configured interval; `X-Accel-Buffering: no` keeps nginx from buffering.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;

use crate::chat::events::{ChatEvent, StepKind};
use crate::chat::log::Reply;
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
pub fn sse_response(reply: &Arc<Reply>, after: u64, mode: StreamMode, config: &ChatConfig) -> Response {
    let start = if mode == StreamMode::Accumulated { 0 } else { after };
    let mut so_far: HashMap<String, String> = HashMap::new();
    let frames = reply.subscribe(start).filter_map(move |logged| {
        let data = match mode {
            StreamMode::Delta => None,
            StreamMode::Accumulated => logged.event().and_then(|event| accumulate(&mut so_far, &event)),
        };
        let frame = (logged.seq > after).then(|| {
            Event::default()
                .id(logged.seq.to_string())
                .event(logged.name)
                .data(data.as_deref().unwrap_or(&logged.data))
        });
        std::future::ready(frame.map(Ok::<_, Infallible>))
    });
    let keep_alive = KeepAlive::new().interval(Duration::from_millis(config.keepalive_interval_ms));
    let mut response = Sse::new(frames).keep_alive(keep_alive).into_response();
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
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
