//! `stream_mode: "accumulated"` (issue 21, item 6): step events are
//! coalesced, so a reply costs about its own size on the wire, not its size
//! squared. Over real HTTP with the mock upstream and a real SQLite file;
//! the response bytes are read raw, so their size is what a client gets.

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use support::TestApp;
use support::mock::{self, MockUpstream, full_text};

/// One parsed SSE event: (id, event name, data).
type Event = (u64, String, Value);

/// Reads a whole SSE response raw, failing as soon as it passes `max_bytes`
/// (so that a quadratic stream fails fast instead of running for minutes).
async fn read_raw(response: reqwest::Response, max_bytes: usize) -> Vec<u8> {
    assert_eq!(response.status(), 200, "stream status");
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(20), chunks.next())
        .await
        .expect("the stream stalled")
    {
        body.extend_from_slice(&chunk.expect("body chunk"));
        assert!(
            body.len() <= max_bytes,
            "the stream passed {max_bytes} bytes (read {} so far)",
            body.len()
        );
    }
    body
}

/// [`read_raw`], then its size and its events.
async fn read_capped(response: reqwest::Response, max_bytes: usize) -> (usize, Vec<Event>) {
    let body = read_raw(response, max_bytes).await;
    (body.len(), parse(&body))
}

/// The events of an SSE body as chatd writes it (`id:`, `event:`, one
/// `data:` line, a blank line; comments are keep-alives).
fn parse(body: &[u8]) -> Vec<Event> {
    let text = std::str::from_utf8(body).expect("UTF-8 body");
    let mut events = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.is_empty()) {
        if block.starts_with(':') {
            continue;
        }
        let field = |name: &str| {
            block
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {block:?}"))
        };
        events.push((
            field("id: ").parse().expect("numeric id"),
            field("event: ").to_string(),
            serde_json::from_str(field("data: ")).expect("JSON data"),
        ));
    }
    events
}

/// GET `/api/chat/{id}/events` in accumulated mode after `last_event_id`.
async fn resume(app: &TestApp, message_id: &str, last_event_id: Option<u64>) -> reqwest::Response {
    let mut request = app
        .http
        .get(app.url(&format!("/api/chat/{message_id}/events?stream_mode=accumulated")));
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id.to_string());
    }
    request.send().await.expect("resume")
}

/// The events as (id, name, step type or "", `content` or "").
fn summary(events: &[Event]) -> Vec<(u64, &str, &str, &str)> {
    events
        .iter()
        .map(|(id, name, data)| {
            let field = |k: &str| data.get(k).and_then(Value::as_str).unwrap_or("");
            (*id, name.as_str(), field("type"), field("content"))
        })
        .collect()
}

/// `n` pieces of 250 bytes each (`{tag}{i:04}:`, filler, a space).
fn pieces(n: usize, tag: char) -> Vec<String> {
    (0..n).map(|i| format!("{tag}{i:04}:{} ", "x".repeat(243))).collect()
}

/// A round of `thinking` deltas then a calculator call, and a round of
/// `text` deltas; every chunk sent at once.
fn long_reply(upstream: &MockUpstream, thinking: &[String], text: &[String]) {
    let mut first: Vec<Value> = thinking.iter().map(|t| mock::reasoning_content(t)).collect();
    first.push(mock::tool_piece(Some(0), Some("c1"), Some("calculator"), ""));
    first.push(mock::tool_piece(Some(0), None, None, r#"{"expression":"6*7"}"#));
    first.push(mock::finish("tool_calls"));
    upstream.push(mock::sse(&first));
    let mut second: Vec<Value> = text.iter().map(|t| mock::content(t)).collect();
    second.push(mock::finish("stop"));
    upstream.push(mock::sse(&second));
}

/// A chatd whose upstream answers [`long_reply`] with 200 thinking and
/// 2,000 text pieces (550 KB), and that reply's whole thinking and text.
async fn long_app() -> (TestApp, String, String) {
    let (thinking, text) = (pieces(200, 't'), pieces(2_000, 'w'));
    let upstream = MockUpstream::start().await;
    long_reply(&upstream, &thinking, &text);
    let app = TestApp::start(&upstream.base_url).await;
    (app, thinking.concat(), text.concat())
}

/// The seqs of `long_reply`'s events: start 1, thinking 2..=T+1, tool call,
/// tool result, text deltas, done.
fn last_seqs(thinking: usize, text: usize) -> (u64, u64, u64) {
    let last_thinking = 1 + thinking as u64;
    let last_text = last_thinking + 2 + text as u64;
    (last_thinking, last_text, last_text + 1)
}

/// Checks a stream of `long_reply` that holds one event per step: start,
/// the whole thinking (id: its last delta), the tool call and its result,
/// the whole text (id: its last delta), done.
fn assert_one_event_per_step(events: &[Event], thinking: &str, text: &str, seqs: (u64, u64, u64)) {
    let (last_thinking, last_text, done) = seqs;
    let got = summary(events);
    let shape: Vec<(u64, &str, &str)> = got.iter().map(|(id, name, kind, _)| (*id, *name, *kind)).collect();
    assert_eq!(
        shape,
        [
            (1, "start", ""),
            (last_thinking, "process_step", "thinking"),
            (last_thinking + 1, "process_step", "tool_call"),
            (last_thinking + 2, "process_step", "tool_result"),
            (last_text, "process_step", "text"),
            (done, "done", ""),
        ]
    );
    assert_eq!(got[1].3, thinking, "the whole thinking");
    assert_eq!(got[4].3, text, "the whole text");
    assert_eq!(
        events[1].2,
        json!({"id": "step-0", "index": 0, "type": "thinking", "content": thinking})
    );
    assert_eq!(
        events[4].2,
        json!({"id": "step-3", "index": 3, "type": "text", "content": text})
    );
    assert_eq!(events[3].2["content"], "42");
}

/// A finished reply of 2,000 text deltas (about 500 KB) and 200 thinking
/// deltas, resumed in accumulated mode: one event per step with its whole
/// content, in less than twice the reply's size (the old stream sent every
/// delta with all the text before it: about 500 MB). Resumes from a seq
/// inside a step, and from a step's last delta, send the step whole or not
/// at all.
#[tokio::test]
async fn a_finished_reply_resumed_in_accumulated_mode_is_one_event_per_step() {
    let (app, thinking, text) = long_app().await;
    let live = app.chat(json!({"message": "long"})).await;
    let id = live[0].message_id();
    assert_eq!(app.wait_final(&id).await["status"], "complete");
    let size = thinking.len() + text.len();
    let seqs = last_seqs(200, 2_000);
    assert_eq!(live.len() as u64, seqs.2, "delta mode: every delta is an event");

    let (bytes, events) = read_capped(resume(&app, &id, None).await, 2 * size).await;
    assert_one_event_per_step(&events, &thinking, &text, seqs);
    assert!(bytes < size + 4_096, "{bytes} bytes for a {size}-byte reply");

    // Last-Event-ID inside the text: the text whole (the client throws away
    // the step's earlier content), then done.
    let (last_thinking, last_text, done) = seqs;
    let (_, events) = read_capped(resume(&app, &id, Some(last_text - 1_000)).await, 2 * size).await;
    assert_eq!(
        summary(&events),
        [
            (last_text, "process_step", "text", text.as_str()),
            (done, "done", "", "")
        ]
    );
    // At the thinking's last delta: the thinking is not sent again.
    let (_, events) = read_capped(resume(&app, &id, Some(last_thinking)).await, 2 * size).await;
    let ids: Vec<u64> = events.iter().map(|e| e.0).collect();
    assert_eq!(ids, [last_thinking + 1, last_thinking + 2, last_text, done]);
    // At the text's last delta: only done; after done, nothing.
    let (_, events) = read_capped(resume(&app, &id, Some(last_text)).await, 2 * size).await;
    assert_eq!(summary(&events), [(done, "done", "", "")]);
    let (bytes, _) = read_capped(resume(&app, &id, Some(done)).await, 2 * size).await;
    assert_eq!(bytes, 0);
}

/// The same reply streamed live from an upstream that sends every chunk at
/// once: each step comes in a few coalesced events (at most one per 100 ms,
/// plus its first and last), each a prefix of the next and named by its
/// last delta, the last one whole. A live stream's size depends on how long
/// it runs (each event carries the step so far), so the bound is the
/// coalescing rule's: at most that many events of at most the reply's size
/// (about 1.2 to 1.9 times the reply here; the old stream sent every delta
/// with all the text before it: about 500 MB).
#[tokio::test]
async fn a_fast_live_reply_in_accumulated_mode_costs_about_its_size() {
    let (app, thinking, text) = long_app().await;
    let size = thinking.len() + text.len();
    let began = Instant::now();
    let response = app
        .post_chat(&json!({"message": "long", "stream_mode": "accumulated"}))
        .await;
    let (bytes, events) = read_capped(response, 10 * size).await;
    let per_step = (began.elapsed().as_millis() as usize).div_ceil(100) + 2;
    assert!(
        bytes < per_step * size + 4_096,
        "{bytes} bytes for a {size}-byte reply, in at most {per_step} events a step"
    );
    let (last_thinking, last_text, done) = last_seqs(200, 2_000);

    let ids: Vec<u64> = events.iter().map(|e| e.0).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    assert_eq!(ids.first(), Some(&1));
    assert_eq!(ids.last(), Some(&done));
    for (kind, whole, first_seq, last_seq) in [
        ("thinking", &thinking, 2, last_thinking),
        ("text", &text, last_thinking + 3, last_text),
    ] {
        let steps: Vec<&Event> = events.iter().filter(|(_, _, data)| data["type"] == kind).collect();
        assert!(steps.len() <= per_step, "{} {kind} events", steps.len());
        for (id, _, data) in &steps {
            // The content is exactly the deltas up to the event's id.
            let pieces = (id - first_seq + 1) as usize;
            let content = data["content"].as_str().expect("content");
            assert_eq!(content.len(), pieces * 250, "{kind} event {id}");
            assert!(whole.starts_with(content), "{kind} event {id} is a prefix");
        }
        let last = steps.last().expect("a step event");
        assert_eq!((last.0, last.2["content"].as_str()), (last_seq, Some(whole.as_str())));
    }
}

/// A reply whose 40 deltas come 10 ms apart (and a keep-alive every 30 ms
/// on the same timer): at most one text event per 100 ms plus the first and
/// the last, each a prefix of the next and named by its last delta, the
/// last one the whole text.
#[tokio::test]
async fn a_slow_live_reply_in_accumulated_mode_sends_an_event_per_100_ms_at_most() {
    let upstream = MockUpstream::start().await;
    upstream.push(mock::slow_text(40, 10));
    let app = TestApp::start_tweaked(&upstream.base_url, |c| c.chat.keepalive_interval_ms = 30).await;
    let began = Instant::now();
    let response = app
        .post_chat(&json!({"message": "slow", "stream_mode": "accumulated"}))
        .await;
    let body = read_raw(response, 64 * 1024).await;
    let took = began.elapsed().as_millis() as usize;
    let events = parse(&body);

    let texts: Vec<&Event> = events.iter().filter(|(_, _, d)| d["type"] == "text").collect();
    assert!(
        texts.len() <= took.div_ceil(100) + 2,
        "{} text events in {took} ms",
        texts.len()
    );
    assert_text_events(&texts, 0);
    assert_eq!(texts.last().map(|t| t.0), Some(41));
    assert_eq!(events.last().map(|e| (e.0, e.1.as_str())), Some((42, "done")));
    let keepalives = body.windows(3).filter(|w| w == b"\n:\n").count();
    assert!(keepalives > 0, "keep-alive comments between the coalesced events");
}

/// Checks accumulated text events of a `slow_text` reply (deltas at seqs 2,
/// 3, ...): ids increase, each content is the words up to its id (so each
/// is a prefix of the next) and longer than `after`'s, the last is whole.
fn assert_text_events(texts: &[&Event], after: u64) {
    let mut previous = after;
    for (id, _, data) in texts {
        assert!(*id > previous, "ids increase: {previous} then {id}");
        assert_eq!(data["content"], full_text(*id as usize - 1), "event {id}");
        previous = *id;
    }
    assert_eq!(texts.last().map(|t| t.2["content"].clone()), Some(json!(full_text(40))));
}

/// Resuming with `Last-Event-ID` set to the id of a coalesced event while
/// the reply streams gets the rest of the text, none of it twice; once the
/// reply is over, the same resume gets the text as one event.
#[tokio::test]
async fn resuming_from_a_coalesced_event_mid_reply_gets_the_rest_exactly() {
    let upstream = MockUpstream::start().await;
    upstream.push(mock::slow_text(40, 10));
    let app = TestApp::start(&upstream.base_url).await;
    let mut first = app
        .stream_chat(json!({"message": "slow", "stream_mode": "accumulated"}))
        .await;
    let start = support::sse::next(&mut first).await;
    let id = start.message_id();
    // The first text event goes out at once, the second one once 100 ms
    // have passed: it holds several deltas.
    let one = support::sse::next(&mut first).await;
    let two = support::sse::next(&mut first).await;
    drop(first);
    let (one_id, two_id): (u64, u64) = (one.id.parse().expect("id"), two.id.parse().expect("id"));
    assert!(two_id > one_id + 1, "coalesced: {one_id} then {two_id}");
    assert_eq!(two.data["content"], full_text(two_id as usize - 1));

    let (_, rest) = read_capped(resume(&app, &id, Some(two_id)).await, 64 * 1024).await;
    let texts: Vec<&Event> = rest.iter().filter(|(_, _, d)| d["type"] == "text").collect();
    assert!(!texts.is_empty());
    assert_text_events(&texts, two_id);
    assert_eq!(rest.last().map(|e| (e.0, e.1.as_str())), Some((42, "done")));

    // After the end, the same resume: the whole text once, then done.
    let (_, again) = read_capped(resume(&app, &id, Some(two_id)).await, 64 * 1024).await;
    let again: Vec<(u64, &str, &str, &str)> = summary(&again);
    let whole = full_text(40);
    assert_eq!(
        again,
        [(41, "process_step", "text", whole.as_str()), (42, "done", "", "")]
    );
}

/// A reply past the replay retention is rebuilt from its stored message
/// (the compact replay, already one event per step): accumulated mode sends
/// it as delta mode does.
#[tokio::test]
async fn a_compact_replay_is_the_same_in_accumulated_mode() {
    let upstream = MockUpstream::start().await;
    upstream.push(mock::sse(&[
        mock::reasoning_content("hm"),
        mock::reasoning_content("m"),
        mock::content("4"),
        mock::content("2"),
        mock::finish("stop"),
    ]));
    let app = TestApp::start(&upstream.base_url).await;
    let id = app.chat(json!({"message": "answer?"})).await[0].message_id();
    app.wait_final(&id).await;
    let compacted = app.reopen(|c| c.chat.replay_retention_ms = 1).await;
    let delta = |app: &TestApp| {
        let request = app.http.get(app.url(&format!("/api/chat/{id}/events")));
        async move { read_capped(request.send().await.expect("resume"), 64 * 1024).await.1 }
    };
    let mut compact = Vec::new();
    for _ in 0..100 {
        compact = delta(&compacted).await;
        if compact.len() == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        summary(&compact)[1..3],
        [
            (2, "process_step", "thinking", "hmm"),
            (3, "process_step", "text", "42")
        ]
    );
    let (_, accumulated) = read_capped(resume(&compacted, &id, None).await, 64 * 1024).await;
    assert_eq!(accumulated, compact);
    let (_, tail) = read_capped(resume(&compacted, &id, Some(2)).await, 64 * 1024).await;
    assert_eq!(tail, compact[2..]);
}
