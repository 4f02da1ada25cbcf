//! Regression tests of issue 21, item 7 (unbounded work): the `max_tokens`
//! ceiling, the wall-clock limit per reply and the writer queue's gauge,
//! over real HTTP with the mock upstream and a real SQLite file.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use reqwest::Method;
use serde_json::{Value, json};
use support::TestApp;
use support::mock::{self, MockUpstream};
use support::sse::{SseEvent, rest, shape};
use support::tools::{Launch, Sleeps, registry_with};

fn start_event(events: &[SseEvent]) -> (String, String, Value) {
    let start = &events[0];
    assert_eq!(start.event, "start");
    ("1".into(), "start".into(), start.data.clone())
}

fn timeout_error(id: usize, limit_ms: u64) -> (String, String, Value) {
    (
        id.to_string(),
        "error".into(),
        json!({"code": "reply_timeout", "retryable": false, "message": format!(
            "the reply ran longer than the server's limit of {limit_ms} ms (chat.max_reply_ms) and was stopped; \
             the partial reply is stored")}),
    )
}

/// A reply still streaming at `chat.max_reply_ms` is stopped: its events
/// end with `error` `reply_timeout`, and it is stored with status `error`,
/// the error and the text produced so far.
#[tokio::test]
async fn a_reply_past_max_reply_ms_ends_with_reply_timeout_and_keeps_its_partial_text() {
    let upstream = MockUpstream::start().await;
    // Two pieces at once, then an upstream that stays silent for 30 s
    // (within its idle timeout of 60 s).
    upstream.push(mock::timed(&[
        (0, mock::content("Hel")),
        (0, mock::content("lo")),
        (30_000, mock::finish("stop")),
    ]));
    let app = TestApp::start_tweaked(&upstream.base_url, |c| {
        c.chat.max_reply_ms = 500;
        c.llm.idle_timeout_ms = 60_000;
    })
    .await;
    let started = std::time::Instant::now();
    let events = app.chat(json!({"message": "hi", "tools": false})).await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "stopped at the limit"
    );
    let id = events[0].message_id();
    let text = |delta: &str| json!({"id": "step-0", "index": 0, "type": "text", "delta": delta});
    let expected = vec![
        start_event(&events),
        ("2".into(), "process_step".into(), text("Hel")),
        ("3".into(), "process_step".into(), text("lo")),
        timeout_error(4, 500),
    ];
    assert_eq!(shape(&events), expected);

    let row = app.wait_final(&id).await;
    assert_eq!(row["status"], "error");
    assert_eq!(row["content"], "Hello");
    assert_eq!(
        row["error"],
        json!({"code": "reply_timeout", "message": expected[3].2["message"]})
    );
    assert_eq!(app.stored_events(&id).await, expected);
}

/// A running tool counts toward the limit, and is stopped as a cancel
/// stops it (its future is dropped).
#[tokio::test]
async fn a_running_tool_counts_toward_max_reply_ms_and_is_stopped() {
    let upstream = MockUpstream::start().await;
    upstream.push(mock::tool_reply(&[("S1", "sleeps", "{}")], 1, 1));
    let dropped = Arc::new(AtomicBool::new(false));
    let tools = registry_with(vec![Arc::new(Sleeps(dropped.clone()))]);
    let app = TestApp::start_with(&upstream.base_url, |c| c.chat.max_reply_ms = 500, tools).await;
    let events = app.chat(json!({"message": "sleep", "tools": ["sleeps"]})).await;
    let id = events[0].message_id();
    let call = json!({"id": "step-0", "index": 0, "type": "tool_call", "id_ref": "S1", "name": "sleeps",
                      "arguments": "{}"});
    let expected = vec![
        start_event(&events),
        ("2".into(), "process_step".into(), call),
        timeout_error(3, 500),
    ];
    assert_eq!(shape(&events), expected);
    assert!(dropped.load(Ordering::SeqCst), "the tool call was dropped");
    let row = app.wait_final(&id).await;
    assert_eq!(
        (row["status"].as_str(), row["error"]["code"].as_str()),
        (Some("error"), Some("reply_timeout"))
    );
    assert_eq!(upstream.received().len(), 1, "no round after the limit");
}

/// Waiting for the user's approval counts toward the limit too: the reply
/// does not wait out `tools.approval_timeout_ms`.
#[tokio::test]
async fn a_wait_for_approval_counts_toward_max_reply_ms() {
    let upstream = MockUpstream::start().await;
    upstream.push(mock::tool_reply(&[("L1", "launch", r#"{"target":"moon"}"#)], 1, 1));
    let runs = Arc::new(AtomicUsize::new(0));
    let tools = registry_with(vec![Arc::new(Launch(runs.clone()))]);
    let app = TestApp::start_with(
        &upstream.base_url,
        |c| {
            c.chat.max_reply_ms = 500;
            c.tools.approval_timeout_ms = 60_000;
        },
        tools,
    )
    .await;
    let events = app.chat(json!({"message": "launch it"})).await;
    let kinds: Vec<(&str, Option<&str>)> = events
        .iter()
        .map(|e| (e.event.as_str(), e.data["type"].as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("start", None),
            ("process_step", Some("tool_call")),
            ("process_step", Some("tool_approval")),
            ("error", None)
        ]
    );
    assert_eq!(shape(&events)[3], timeout_error(4, 500));
    assert_eq!(runs.load(Ordering::SeqCst), 0, "never approved, never run");
    let id = events[0].message_id();
    let (status, body) = app.approve(&id, json!({"tool_call_id": "L1", "approved": true})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
}

/// `max_tokens` above `chat.max_tokens_ceiling` is a 422 on every route
/// that takes it; at the ceiling it is accepted and sent upstream.
#[tokio::test]
async fn max_tokens_above_the_ceiling_is_a_422_naming_both_numbers() {
    let upstream = MockUpstream::start().await;
    let app = TestApp::start_tweaked(&upstream.base_url, |c| c.chat.max_tokens_ceiling = 1000).await;
    let expected =
        json!({"error": {"code": "validation_failed", "message": "max_tokens must be at most 1000, got 1001"}});

    let r = app.post_chat(&json!({"message": "hi", "max_tokens": 1001})).await;
    assert_eq!(r.status(), 422);
    assert_eq!(r.json::<Value>().await.expect("JSON"), expected);
    let (status, body) = app
        .send(Method::POST, "/api/conversations", Some(json!({"max_tokens": 1001})))
        .await;
    assert_eq!((status, &body), (422, &expected));
    let (status, c) = app
        .send(Method::POST, "/api/conversations", Some(json!({"max_tokens": 1000})))
        .await;
    assert_eq!(status, 201, "{c}");
    let path = format!("/api/conversations/{}", c["id"].as_str().expect("id"));
    let (status, body) = app.send(Method::PATCH, &path, Some(json!({"max_tokens": 1001}))).await;
    assert_eq!((status, &body), (422, &expected));
    assert!(upstream.received().is_empty());

    upstream.push(mock::text_reply(&["ok"], 1, 1));
    let events = app.chat(json!({"message": "hi", "max_tokens": 1000})).await;
    assert_eq!(events.last().map(|e| e.event.as_str()), Some("done"));
    assert_eq!(upstream.received()[0]["max_tokens"], 1000);
}

/// Without `max_tokens` anywhere, none is sent (the default) or
/// `chat.default_max_tokens`; a conversation's value stored before the
/// ceiling was lowered is sent as the ceiling.
#[tokio::test]
async fn max_tokens_sent_upstream_is_the_default_or_at_most_the_ceiling() {
    let upstream = MockUpstream::start().await;
    let app = TestApp::start(&upstream.base_url).await;
    upstream.push(mock::text_reply(&["ok"], 1, 1));
    app.chat(json!({"message": "hi"})).await;
    let sent = upstream.received();
    assert!(sent[0].get("max_tokens").is_none(), "{}", sent[0]);
    let (status, c) = app
        .send(Method::POST, "/api/conversations", Some(json!({"max_tokens": 5000})))
        .await;
    assert_eq!(status, 201, "{c}");
    let conversation = c["id"].as_str().expect("id").to_string();

    // The same database with a lower ceiling and a default.
    let lowered = app
        .reopen(|c| {
            c.chat.max_tokens_ceiling = 2000;
            c.chat.default_max_tokens = Some(300);
        })
        .await;
    upstream.push(mock::text_reply(&["ok"], 1, 1));
    lowered
        .chat(json!({"message": "hi", "conversation_id": conversation}))
        .await;
    upstream.push(mock::text_reply(&["ok"], 1, 1));
    lowered.chat(json!({"message": "hi"})).await;
    let sent = upstream.received();
    assert_eq!(
        (&sent[1]["max_tokens"], &sent[2]["max_tokens"]),
        (&json!(2000), &json!(300))
    );
}

/// `GET /metrics` as text.
async fn metrics_page(app: &TestApp) -> String {
    let r = app.http.get(app.url("/metrics")).send().await.expect("GET /metrics");
    r.text().await.expect("text")
}

/// The value of the unlabelled metric `name` in a `/metrics` page.
fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// While the database is locked by another connection, a streaming reply
/// waits at `chat.writer_queue_events` queued writes: `/metrics` shows the
/// queue depth at the bound and a backpressure wait. Once the lock is
/// gone, the reply ends and every event is stored exactly as streamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_database_slows_the_reply_at_the_queue_bound_and_metrics_show_it() {
    const BOUND: f64 = 4.0;
    let upstream = MockUpstream::start().await;
    upstream.push(mock::slow_text(30, 10));
    let app = TestApp::start_tweaked(&upstream.base_url, |c| c.chat.writer_queue_events = BOUND as usize).await;
    let page = metrics_page(&app).await;
    assert_eq!(metric(&page, "chatd_store_queue_depth"), Some(0.0), "{page}");

    let mut stream = app.stream_chat(json!({"message": "hi", "tools": false})).await;
    let start = support::sse::next(&mut stream).await;
    let id = start.message_id();
    let db = app.db().await;
    let mut lock = db.acquire().await.expect("connection");
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *lock).await.expect("lock");
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let page = metrics_page(&app).await;
    let depth = metric(&page, "chatd_store_queue_depth").expect("gauge");
    // The bound, plus at most the one event of the chunk read before the
    // reply saw the queue full.
    assert!((BOUND..=BOUND + 1.0).contains(&depth), "depth {depth}");
    assert!(
        metric(&page, "chatd_store_backpressure_waits_total").is_some_and(|n| n >= 1.0),
        "{page}"
    );
    assert_eq!(app.message_row(&id).await["status"], "streaming");

    sqlx::query("COMMIT").execute(&mut *lock).await.expect("unlock");
    let mut live = vec![start];
    live.extend(rest(&mut stream).await);
    assert_eq!(live.last().map(|e| e.event.as_str()), Some("done"));
    assert_eq!(live.len(), 32, "start, 30 deltas, done");
    let row = app.wait_final(&id).await;
    assert_eq!(row["content"], mock::full_text(30));
    assert_eq!(app.stored_events(&id).await, shape(&live));
}
