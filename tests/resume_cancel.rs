//! Resume, cancel, periodic snapshots and load on the SQLite store, over
//! real HTTP with the mock upstream.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use support::mock::{self, MockResponse, MockUpstream, full_text};
use support::sse::{SseEvent, next, read_events, rest, take};
use support::tools::{Sleeps, registry_with};
use support::{TestApp, step_types};

/// [`mock::slow_text`] with usage (5 prompt tokens, one a word).
fn slow_text(pieces: usize, delay_ms: u64) -> MockResponse {
    let mut chunks = mock::words(pieces);
    chunks.push(mock::usage(5, pieces as u64));
    mock::sse_with_delay(&chunks, delay_ms)
}

async fn resume(app: &TestApp, message_id: &str, last_event_id: Option<&str>, query: &str) -> Vec<SseEvent> {
    let mut req = app.http.get(app.url(&format!("/api/chat/{message_id}/events{query}")));
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let r = req.send().await.expect("resume");
    assert_eq!(r.status(), 200, "resume status");
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    read_events(r, usize::MAX).await
}

fn ids(events: &[SseEvent]) -> Vec<u64> {
    events.iter().map(|e| e.id.parse().expect("numeric id")).collect()
}

#[tokio::test]
async fn resume_mid_reply_with_last_event_id_loses_and_doubles_nothing() {
    let upstream = MockUpstream::start().await;
    upstream.push(slow_text(20, 25));
    let app = TestApp::start(&upstream.base_url).await;

    let first = take(&mut app.stream_chat(json!({"message": "long"})).await, 5).await;
    assert_eq!(ids(&first), [1, 2, 3, 4, 5]);
    let id = first[0].message_id();
    let rest = resume(&app, &id, Some("5"), "").await;
    assert_eq!(rest.first().map(|e| e.id.as_str()), Some("6"));
    assert_eq!(rest.last().map(|e| e.event.as_str()), Some("done"));

    let mut joined = first.clone();
    joined.extend(rest);
    assert_eq!(
        ids(&joined),
        (1..=joined.len() as u64).collect::<Vec<_>>(),
        "no event lost, none doubled"
    );
    // 1 start + 20 deltas + done
    assert_eq!(joined.len(), 22);
    let text: String = joined.iter().filter_map(|e| e.data["delta"].as_str()).collect();
    assert_eq!(text, full_text(20));

    // A replay from the start after the end is the same stream.
    let again = resume(&app, &id, None, "").await;
    assert_eq!(again, joined);
    // ?after= works too, and the header wins over it.
    let tail = resume(&app, &id, None, "?after=20").await;
    assert_eq!(ids(&tail), [21, 22]);
    let tail = resume(&app, &id, Some("21"), "?after=3").await;
    assert_eq!(ids(&tail), [22]);
}

#[tokio::test]
async fn accumulated_resume_counts_the_skipped_deltas() {
    let upstream = MockUpstream::start().await;
    upstream.push(slow_text(4, 0));
    let app = TestApp::start(&upstream.base_url).await;
    let all = app.chat(json!({"message": "acc"})).await;
    let id = all[0].message_id();
    let tail = resume(&app, &id, Some("3"), "?stream_mode=accumulated").await;
    // A finished reply is read at once: the step is one event, named by its
    // last delta, with all of its content.
    assert_eq!(ids(&tail), [5, 6]);
    assert_eq!(tail[0].data["content"], "w0 w1 w2 w3 ");
    assert_eq!(tail[1].event, "done");
}

#[tokio::test]
async fn resume_after_a_restart_replays_the_stored_events_then_compacts() {
    let upstream = MockUpstream::start().await;
    upstream.push(mock::tool_reply(
        &[("c1", "calculator", r#"{"expression":"2*21"}"#)],
        3,
        4,
    ));
    upstream.push(mock::sse(&[
        mock::reasoning_content("easy"),
        mock::content("42"),
        mock::finish("stop"),
    ]));
    let app = TestApp::start(&upstream.base_url).await;
    let original = app.chat(json!({"message": "answer?"})).await;
    let id = original[0].message_id();

    // A new process on the same file: nothing in memory, events from the table.
    let restarted = app.reopen(|_| {}).await;
    let replayed = resume(&restarted, &id, None, "").await;
    let strip = |events: &[SseEvent]| -> Vec<SseEvent> {
        events
            .iter()
            .cloned()
            .map(|mut e| {
                if let Some(d) = e.data.get_mut("duration_ms") {
                    *d = json!(0);
                }
                e
            })
            .collect()
    };
    assert_eq!(strip(&replayed), strip(&original), "exact replay after a restart");
    let tail = resume(&restarted, &id, Some("4"), "").await;
    assert_eq!(ids(&tail), [5, 6]);

    // After the retention window the rows are pruned and the replay is compact.
    let compacted = app.reopen(|c| c.chat.replay_retention_ms = 1).await;
    let mut compact = Vec::new();
    for _ in 0..100 {
        compact = resume(&compacted, &id, None, "").await;
        if compact.len() == 6 && compact[4].data.get("content").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let names: Vec<&str> = compact.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        names,
        [
            "start",
            "process_step",
            "process_step",
            "process_step",
            "process_step",
            "done"
        ]
    );
    assert_eq!(ids(&compact), [1, 2, 3, 4, 5, 6]);
    assert_eq!(compact[0].data, original[0].data, "start carries the same ids");
    assert_eq!(
        compact[3].data,
        json!({"id": "step-2", "index": 2, "type": "thinking", "content": "easy"})
    );
    assert_eq!(
        compact[4].data,
        json!({"id": "step-3", "index": 3, "type": "text", "content": "42"})
    );
    assert_eq!(compact[5].data["finish_reason"], "stop");
    assert_eq!(
        compact[5].data["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7})
    );
}

#[tokio::test]
async fn resume_errors_are_json() {
    let upstream = MockUpstream::start().await;
    upstream.push(mock::text_reply(&["hi"], 1, 1));
    let app = TestApp::start(&upstream.base_url).await;
    let events = app.chat(json!({"message": "x"})).await;
    let (status, body) = app.get(&format!("/api/chat/{}/events", uuid::Uuid::now_v7())).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")));
    let (status, body) = app.get("/api/chat/nope/events").await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_id")));
    // A user message is not a reply.
    let user_id = events[0].data["user_message_id"].as_str().expect("id");
    let (status, _) = app.get(&format!("/api/chat/{user_id}/events")).await;
    assert_eq!(status, 404);
    let r = app
        .http
        .get(app.url(&format!("/api/chat/{}/events", events[0].message_id())))
        .header("last-event-id", "abc")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "invalid_request");
}

async fn cancel(app: &TestApp, id: &str) -> (u16, Value) {
    app.send(reqwest::Method::POST, &format!("/api/chat/{id}/cancel"), None)
        .await
}

#[tokio::test]
async fn cancel_mid_text_keeps_the_partial_reply() {
    let upstream = MockUpstream::start().await;
    upstream.push(slow_text(100, 30));
    let app = TestApp::start(&upstream.base_url).await;
    let mut stream = app.stream_chat(json!({"message": "long"})).await;
    let id = next(&mut stream).await.message_id();
    for _ in 0..3 {
        assert_eq!(next(&mut stream).await.event, "process_step");
    }
    let (status, body) = cancel(&app, &id).await;
    assert_eq!((status, body), (200, json!({"message_id": id, "status": "cancelled"})));
    let tail = rest(&mut stream).await;
    let done = tail.last().expect("terminal event");
    assert_eq!(done.event, "done");
    assert_eq!(done.data["finish_reason"], "cancelled");
    assert!(tail.len() < 100, "the reply stopped early ({} more events)", tail.len());

    let row = app.message_row(&id).await;
    assert_eq!(row["status"], "cancelled");
    assert_eq!(row["finish_reason"], "cancelled");
    let content = row["content"].as_str().expect("content");
    assert!(
        content.starts_with("w0 w1 w2 ") && content.len() < full_text(100).len(),
        "{content:?}"
    );

    // Idempotent; and the upstream request was dropped (no more deltas).
    assert_eq!(cancel(&app, &id).await.0, 200);
    let replay = resume(&app, &id, None, "").await;
    assert_eq!(replay.last().map(|e| e.event.as_str()), Some("done"));
}

#[tokio::test]
async fn cancel_errors() {
    let upstream = MockUpstream::start().await;
    upstream.push(mock::text_reply(&["done"], 1, 1));
    let app = TestApp::start(&upstream.base_url).await;
    let events = app.chat(json!({"message": "x"})).await;
    let (status, body) = cancel(&app, &events[0].message_id()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("reply_finished")));
    assert!(body["error"]["message"].as_str().expect("message").contains("complete"));
    let (status, body) = cancel(&app, &uuid::Uuid::now_v7().to_string()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")));
    let (status, body) = cancel(&app, "123").await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_id")));
}

#[tokio::test]
async fn cancel_mid_tool_stops_the_running_tool() {
    let upstream = MockUpstream::start().await;
    upstream.push(mock::tool_reply(&[("t1", "sleeps", "{}")], 1, 1));
    upstream.push(mock::text_reply(&["next turn"], 1, 1));
    let dropped = Arc::new(AtomicBool::new(false));
    let tools = registry_with(vec![Arc::new(Sleeps(dropped.clone()))]);
    let app = TestApp::start_with(&upstream.base_url, |_| {}, tools).await;

    let mut stream = app.stream_chat(json!({"message": "block"})).await;
    let start = next(&mut stream).await;
    let id = start.message_id();
    let call = next(&mut stream).await;
    assert_eq!(call.data["type"], "tool_call");
    assert_eq!(cancel(&app, &id).await.0, 200);
    let tail = rest(&mut stream).await;
    assert_eq!(tail.len(), 1);
    assert_eq!(tail[0].data["finish_reason"], "cancelled");
    for _ in 0..100 {
        if dropped.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(dropped.load(Ordering::SeqCst), "the running tool was aborted");
    let row = app.message_row(&id).await;
    assert_eq!(row["status"], "cancelled");
    assert_eq!(step_types(&row), ["tool_call"]);

    // The next turn sends the unfinished call back with an error result.
    let conversation_id = start.data["conversation_id"].clone();
    app.chat(json!({"message": "again", "conversation_id": conversation_id}))
        .await;
    let messages = upstream.received().pop().expect("request")["messages"].clone();
    assert_eq!(
        messages[2],
        json!({"role": "tool", "tool_call_id": "t1", "content": "Error: this tool call did not complete (the reply was interrupted)."})
    );
}

#[tokio::test]
async fn a_streaming_reply_is_written_to_its_row_every_flush_interval() {
    let upstream = MockUpstream::start().await;
    upstream.push(slow_text(40, 25));
    let app = TestApp::start_tweaked(&upstream.base_url, |c| c.chat.flush_interval_ms = 100).await;
    let mut stream = app.stream_chat(json!({"message": "snap"})).await;
    let id = next(&mut stream).await.message_id();
    let mut seen_partial = None;
    for _ in 0..100 {
        let row = app.message_row(&id).await;
        let content = row["content"].as_str().unwrap_or_default().to_string();
        if row["status"] == "streaming" && !content.is_empty() {
            seen_partial = Some(content);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let partial = seen_partial.expect("partial text stored while streaming");
    assert!(full_text(40).starts_with(&partial), "{partial:?}");
    assert!(partial.len() < full_text(40).len());
    rest(&mut stream).await;
    assert_eq!(app.wait_final(&id).await["content"], full_text(40));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_replies_are_all_stored() {
    const N: usize = 200;
    let upstream = MockUpstream::start().await;
    for _ in 0..N {
        upstream.push(slow_text(10, 5));
    }
    let app = Arc::new(TestApp::start(&upstream.base_url).await);
    let mut tasks = Vec::new();
    for i in 0..N {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            app.chat(json!({"message": format!("m{i}")})).await
        }));
    }
    let mut done = 0;
    for task in tasks {
        let events = task.await.expect("task");
        let last = events.last().expect("events");
        assert_eq!(last.event, "done", "{:?}", last.data);
        done += 1;
    }
    assert_eq!(done, N);
    // Every stored message, read through the store's traits.
    let store = app.chat.store();
    let conversations = store
        .list_conversations(N as u32, None)
        .await
        .expect("list")
        .expect("page");
    let mut rows = Vec::new();
    for conversation in &conversations {
        let all = chatd::store::MessageQuery {
            limit: 200,
            before: None,
            steps: false,
        };
        let page = store.messages(conversation.id, all).await.expect("messages");
        rows.extend(page.expect("a page"));
    }
    assert_eq!(rows.len(), 2 * N);
    for row in &rows {
        assert_eq!(row.status, chatd::domain::Status::Complete);
        if row.role == chatd::domain::Role::Assistant {
            assert_eq!(row.content, full_text(10));
        }
    }
    app.chat.store().flush().await;
    let ids: Vec<String> = rows
        .iter()
        .filter(|m| m.role == chatd::domain::Role::Assistant)
        .map(|m| m.id.to_string())
        .collect();
    let mut events = 0;
    for id in ids {
        let stored = app
            .chat
            .store()
            .reply_events(id.parse().expect("uuid"))
            .await
            .expect("events");
        let seqs: Vec<u64> = stored.iter().map(|e| e.0).collect();
        assert_eq!(
            seqs,
            (1..=12).collect::<Vec<u64>>(),
            "every event of reply {id} stored once, in order"
        );
        events += stored.len();
    }
    assert_eq!(events, N * 12, "every event of every reply stored");
}
