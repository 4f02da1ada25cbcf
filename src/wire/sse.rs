//! The Server-Sent Events frame format (WHATWG HTML, "Server-sent events"):
//! one event is `id: <seq>\nevent: <name>\ndata: <JSON>\n\n`, and a
//! keep-alive is the comment `:\n\n`.
//!
//! A reply's events are serialized once, when appended to its log, straight
//! into this frame: every subscriber, the database writer and a replay share
//! those bytes. Chat builds frames, http writes them to the socket, replay
//! rebuilds them from stored JSON; none of them formats SSE itself. Nothing
//! here knows axum or hyper.

use bytes::Bytes;
use serde::Serialize;

/// An SSE comment line and the blank line after it; clients ignore it.
pub const KEEP_ALIVE: &[u8] = b":\n\n";

/// One event with its position (`seq`, 1-based within the reply), its SSE
/// name and its JSON data, serialized into its frame. Only the frame is
/// kept: a reply's log is what a 20,000-token reply or 10,000 streams hold
/// in memory, and keeping the typed event beside it doubled that. Logs hold
/// frames by value and readers get clones (a reference count on the bytes):
/// no separate allocation per event.
#[derive(Debug, Clone)]
pub struct Frame {
    pub seq: u64,
    /// The SSE event name, e.g. `process_step`.
    pub name: &'static str,
    frame: Bytes,
    /// Where the JSON data is in `frame` (bytes).
    data_start: u32,
    data_end: u32,
}

/// About the JSON of one text delta: the first guess of a frame's size
/// (the frame is shrunk to fit once written).
const TYPICAL_DATA_BYTES: usize = 160;

impl Frame {
    /// Serializes `data` as the JSON of event `name` at position `seq`. A
    /// value that does not serialize (a bug) is logged and sent as `{}`.
    pub fn new(seq: u64, name: &'static str, data: &impl Serialize) -> Self {
        let mut frame = head(seq, name, TYPICAL_DATA_BYTES);
        let data_start = frame.len();
        if let Err(e) = serde_json::to_writer(&mut frame, data) {
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
        let mut frame = head(seq, name, data.len());
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
    pub fn bytes(&self) -> Bytes {
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
}

/// `id: <seq>\nevent: <name>\ndata: ` in a buffer with room for `data_len`
/// more bytes and the frame's end.
fn head(seq: u64, name: &str, data_len: usize) -> Vec<u8> {
    use std::io::Write as _;
    let mut frame = Vec::with_capacity(32 + name.len() + data_len);
    // Writing to a Vec cannot fail.
    let _ = write!(frame, "id: {seq}\nevent: {name}\ndata: ");
    frame
}
