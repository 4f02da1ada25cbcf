//! POST /api/chat end to end: the real router over HTTP on 127.0.0.1, a mock
//! OpenAI-compatible upstream, a real SQLite file. Every test asserts the
//! exact events, what the upstream received and the stored rows.

mod support;

use std::sync::Arc;
use std::time::Duration;

use chatd::domain::{Role, Status};
use serde_json::{Value, json};
use support::TestApp;
use support::mock::{self, MockResponse, MockUpstream, full_text, slow_text};
use support::sse::{SseEvent, checked, read_events};
use support::tools::{Panics, Sleeps, WaitPair, registry_with};

/// Replaces the run-dependent ids and durations so events compare exactly.
fn normalize(events: &[(String, Value)]) -> Vec<(String, Value)> {
    events
        .iter()
        .map(|(name, data)| {
            let mut data = data.clone();
            if let Some(obj) = data.as_object_mut() {
                for key in ["conversation_id", "user_message_id", "message_id"] {
                    if let Some(v) = obj.get_mut(key) {
                        assert!(
                            uuid::Uuid::parse_str(v.as_str().unwrap_or("")).is_ok(),
                            "{key} is a UUID: {v}"
                        );
                        *v = json!(key);
                    }
                }
                if let Some(v) = obj.get_mut("duration_ms") {
                    assert!(v.is_u64(), "duration_ms is a whole number: {v}");
                    *v = json!(0);
                }
            }
            (name.clone(), data)
        })
        .collect()
}

fn start() -> (String, Value) {
    (
        "start".into(),
        json!({"conversation_id": "conversation_id", "user_message_id": "user_message_id",
               "message_id": "message_id", "model": "mock-model"}),
    )
}

fn step(index: u32, kind: &str, delta: &str) -> (String, Value) {
    (
        "process_step".into(),
        json!({"id": format!("step-{index}"), "index": index, "type": kind, "delta": delta}),
    )
}

fn tool_call(index: u32, id: &str, name: &str, arguments: &str) -> (String, Value) {
    (
        "process_step".into(),
        json!({"id": format!("step-{index}"), "index": index, "type": "tool_call",
               "id_ref": id, "name": name, "arguments": arguments}),
    )
}

fn tool_result(index: u32, id: &str, name: &str, content: &str, success: bool) -> (String, Value) {
    (
        "process_step".into(),
        json!({"id": format!("step-{index}"), "index": index, "type": "tool_result", "id_ref": id,
               "name": name, "content": content, "success": success, "duration_ms": 0}),
    )
}

fn done(reason: &str, prompt: u64, completion: u64, title: Option<&str>) -> (String, Value) {
    (
        "done".into(),
        json!({"conversation_id": "conversation_id", "message_id": "message_id", "finish_reason": reason,
               "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
               "suggested_title": title}),
    )
}

fn error(code: &str, message: &str, retryable: bool) -> (String, Value) {
    (
        "error".into(),
        json!({"code": code, "message": message, "retryable": retryable}),
    )
}

async fn run(app: &TestApp, body: Value) -> (Vec<SseEvent>, Vec<(String, Value)>) {
    let events = app.chat(body).await;
    let normalized = normalize(&checked(&events));
    (events, normalized)
}

#[tokio::test]
async fn plain_reply_streams_and_is_stored() {
    let upstream = MockUpstream::start().await;
    upstream.push(mock::text_reply(&["Hel", "lo!"], 7, 2));
    let app = TestApp::start(&upstream.base_url).await;

    let (events, got) = run(&app, json!({"message": "Say hello\nplease"})).await;
    assert_eq!(
        got,
        vec![
            start(),
            step(0, "text", "Hel"),
            step(0, "text", "lo!"),
            done("stop", 7, 2, Some("Say hello"))
        ]
    );

    let sent = upstream.received();
    assert_eq!(sent.len(), 1);
    assert_eq!(upstream.versions(), [axum::http::Version::HTTP_11]);
    assert_eq!(sent[0]["model"], "mock-model");
    assert_eq!(sent[0]["stream"], true);
    assert_eq!(sent[0]["stream_options"], json!({"include_usage": true}));
    assert_eq!(
        sent[0]["messages"],
        json!([{"role": "user", "content": "Say hello\nplease"}])
    );
    let tools: Vec<&str> = sent[0]["tools"]
        .as_array()
        .expect("tools sent")
        .iter()
        .map(|t| t["function"]["name"].as_str().expect("name"))
        .collect();
    assert_eq!(tools, ["calculator", "get_current_time"]);
    assert!(sent[0].get("tool_choice").is_none());

    // The stored rows, read through the store's traits.
    let store = app.chat.store();
    let conv_id: uuid::Uuid = events[0].data["conversation_id"]
        .as_str()
        .expect("conversation id")
        .parse()
        .expect("uuid");
    let conversation = store
        .conversation(conv_id)
        .await
        .expect("read")
        .expect("conversation row");
    assert_eq!(conversation.title.as_deref(), Some("Say hello"));
    let all = chatd::store::MessageQuery {
        limit: 200,
        before: None,
        steps: true,
    };
    let rows = store.messages(conv_id, all).await.expect("messages").expect("a page");
    assert_eq!(rows.len(), 2);
    assert_eq!(
        rows[0].id.to_string(),
        events[0].data["user_message_id"].as_str().expect("id")
    );
    assert_eq!(rows[0].role, Role::User);
    assert_eq!(rows[0].content, "Say hello\nplease");
    assert_eq!(rows[0].status, Status::Complete);
    assert_eq!(rows[1].id.to_string(), events[0].message_id());
    assert_eq!(rows[1].role, Role::Assistant);
    assert_eq!(rows[1].content, "Hello!");
    assert_eq!(rows[1].status, Status::Complete);
    assert_eq!(rows[1].finish_reason.as_deref(), Some("stop"));
    assert_eq!(rows[1].model.as_deref(), Some("mock-model"));
    assert_eq!(
        rows[1].usage,
        Some(json!({"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}))
    );
    assert_eq!(
        rows[1].steps,
        Some(json!([{"round": 0, "id": "step-0", "index": 0, "type": "text", "content": "Hello!"}]))
    );
    let ledger = store.usage().await.expect("ledger");
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].model, "mock-model");
    assert_eq!(ledger[0].prompt_tokens, 7);
    assert_eq!(ledger[0].completion_tokens, 2);
}

#[tokio::test]
async fn reasoning_fields_then_text() {
    let upstream = MockUpstream::start().await;
    upstream.push(mock::sse(&[
        mock::role(),
        mock::reasoning_content("Let me"),
        mock::reasoning(" think."),
        mock::content("Four."),
        mock::finish("stop"),
        mock::usage(3, 4),
    ]));
    let app = TestApp::start(&upstream.base_url).await;
    let (events, got) = run(&app, json!({"message": "2+2?", "thinking": true})).await;
    assert_eq!(
        got,
        vec![
            start(),
            step(0, "thinking", "Let me"),
            step(0, "thinking", " think."),
            step(1, "text", "Four."),
            done("stop", 3, 4, Some("2+2?")),
        ]
    );
    assert_eq!(
        upstream.received()[0]["chat_template_kwargs"],
        json!({"enable_thinking": true})
    );
    let row = app.message_row(&events[0].message_id()).await;
    assert_eq!(row["reasoning"], "Let me think.");
    assert_eq!(row["content"], "Four.");
}

#[tokio::test]
async fn think_tags_in_content_become_thinking_steps() {
    let upstream = MockUpstream::start().await;
    upstream.push(mock::sse(&[
        mock::content("<think>plan"),
        mock::content("ning</th"),
        mock::content("ink>\n\nDone"),
        mock::content(" <b>ok</b>"),
        mock::finish("stop"),
    ]));
    let app = TestApp::start(&upstream.base_url).await;
    let (events, got) = run(&app, json!({"message": "go"})).await;
    assert_eq!(
        got,
        vec![
            start(),
            step(0, "thinking", "plan"),
            step(0, "thinking", "ning"),
            step(1, "text", "Done"),
            step(1, "text", " <b>ok</b>"),
            done("stop", 0, 0, Some("go")),
        ]
    );
    let row = app.message_row(&events[0].message_id()).await;
    assert_eq!(row["reasoning"], "planning");
    assert_eq!(row["content"], "Done <b>ok</b>");
}

#[tokio::test]
async fn split_tool_call_runs_then_second_round() {
    let upstream = MockUpstream::start().await;
    upstream.push(mock::tool_reply(
        &[("call_1", "calculator", r#"{"expression":"6*7"}"#)],
        10,
        5,
    ));
    upstream.push(mock::text_reply(&["It is ", "42."], 20, 3));
    let app = TestApp::start(&upstream.base_url).await;

    let (events, got) = run(&app, json!({"message": "What is 6*7?"})).await;
    assert_eq!(
        got,
        vec![
            start(),
            tool_call(0, "call_1", "calculator", r#"{"expression":"6*7"}"#),
            tool_result(1, "call_1", "calculator", "42", true),
            step(2, "text", "It is "),
            step(2, "text", "42."),
            done("stop", 30, 8, Some("What is 6*7?")),
        ]
    );

    let sent = upstream.received();
    assert_eq!(sent.len(), 2);
    assert_eq!(
        sent[1]["messages"],
        json!([
            {"role": "user", "content": "What is 6*7?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "calculator", "arguments": "{\"expression\":\"6*7\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "42"}
        ])
    );

    let row = app.message_row(&events[0].message_id()).await;
    assert_eq!(row["status"], "complete");
    assert_eq!(row["content"], "It is 42.");
    assert_eq!(
        row["tool_calls"],
        json!([{"id": "call_1", "type": "function", "function": {"name": "calculator", "arguments": "{\"expression\":\"6*7\"}"}}])
    );
    let rounds: Vec<u64> = row["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["round"].as_u64().expect("round"))
        .collect();
    assert_eq!(rounds, [0, 0, 1]);
    assert_eq!(
        row["usage"],
        json!({"prompt_tokens": 30, "completion_tokens": 8, "total_tokens": 38})
    );
}

#[tokio::test]
async fn two_calls_run_in_parallel() {
    let upstream = MockUpstream::start().await;
    upstream.push(mock::tool_reply(
        &[
            ("a", "wait_pair", r#"{"tag":"A"}"#),
            ("b", "wait_pair", r#"{"tag":"B"}"#),
        ],
        1,
        1,
    ));
    upstream.push(mock::text_reply(&["both"], 1, 1));
    let tools = registry_with(vec![Arc::new(WaitPair(Arc::new(tokio::sync::Barrier::new(2))))]);
    // Run one after the other, the first call would wait until its timeout.
    let app = TestApp::start_with(&upstream.base_url, |c| c.tools.timeout_ms = 3_000, tools).await;

    let (_, got) = run(&app, json!({"message": "pair"})).await;
    assert_eq!(
        got,
        vec![
            start(),
            tool_call(0, "a", "wait_pair", r#"{"tag":"A"}"#),
            tool_call(1, "b", "wait_pair", r#"{"tag":"B"}"#),
            tool_result(2, "a", "wait_pair", "paired A", true),
            tool_result(3, "b", "wait_pair", "paired B", true),
            step(4, "text", "both"),
            done("stop", 2, 2, Some("pair")),
        ]
    );
    let messages = upstream.received()[1]["messages"].clone();
    assert_eq!(
        messages[2],
        json!({"role": "tool", "tool_call_id": "a", "content": "paired A"})
    );
    assert_eq!(
        messages[3],
        json!({"role": "tool", "tool_call_id": "b", "content": "paired B"})
    );
}

#[tokio::test]
async fn failing_unknown_and_badly_called_tools_become_failed_results() {
    let upstream = MockUpstream::start().await;
    upstream.push(mock::tool_reply(
        &[
            ("c1", "calculator", r#"{"expression":"1/0"}"#),
            ("c2", "no_such_tool", "{}"),
            ("c3", "calculator", "{not json"),
            ("c4", "calculator", r#"{"expression":5}"#),
            ("c5", "panics", "{}"),
            ("c6", "sleeps", "{}"),
        ],
        1,
        1,
    ));
    upstream.push(mock::text_reply(&["sorry"], 1, 1));
    let tools = registry_with(vec![Arc::new(Panics), Arc::new(Sleeps::default())]);
    let app = TestApp::start_with(&upstream.base_url, |c| c.tools.timeout_ms = 300, tools).await;

    let (events, got) = run(&app, json!({"message": "break things"})).await;
    assert_eq!(got.len(), 1 + 6 + 6 + 1 + 1);
    let results: Vec<&Value> = got[7..13].iter().map(|(_, d)| d).collect();
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["type"], "tool_result");
        assert_eq!(r["success"], false, "result {i} fails: {r}");
        assert_eq!(r["index"], 6 + i);
    }
    let content = |i: usize| results[i]["content"].as_str().expect("content").to_string();
    assert_eq!(
        content(0),
        "Error: \"1/0\" has no finite value (division by zero or overflow)"
    );
    assert_eq!(
        content(1),
        "Error: unknown tool \"no_such_tool\". Available tools: calculator, get_current_time, panics, sleeps."
    );
    assert!(
        content(2).starts_with("Error: the arguments are not valid JSON"),
        "{}",
        content(2)
    );
    assert!(
        content(2).contains("\"expression\""),
        "the error shows the schema: {}",
        content(2)
    );
    assert!(
        content(3)
            .starts_with("Error: the arguments do not match the schema: /expression: 5 is not of type \"string\""),
        "{}",
        content(3)
    );
    assert_eq!(content(4), "Error: panics crashed while running.");
    assert_eq!(
        content(5),
        "Error: sleeps did not finish within 300 ms and was stopped."
    );
    assert_eq!(got[13], step(12, "text", "sorry"));
    assert_eq!(got[14], done("stop", 2, 2, Some("break things")));

    // The model saw every failure as a tool message and the loop went on.
    let messages = upstream.received()[1]["messages"].clone();
    assert_eq!(messages.as_array().expect("messages").len(), 1 + 1 + 6);
    assert_eq!(messages[3]["content"], content(1));
    let row = app.message_row(&events[0].message_id()).await;
    assert_eq!(row["status"], "complete");
}

async fn failing_upstream(
    response: MockResponse,
    tweak: impl FnOnce(&mut chatd::config::Config),
) -> (TestApp, Vec<(String, Value)>, Value) {
    let upstream = MockUpstream::start().await;
    upstream.push(response);
    let app = TestApp::start_tweaked(&upstream.base_url, tweak).await;
    let (events, got) = run(&app, json!({"message": "hi"})).await;
    let row = app.message_row(&events[0].message_id()).await;
    (app, got, row)
}

#[tokio::test]
async fn upstream_http_errors_map_to_error_events() {
    let (_, got, row) = failing_upstream(
        mock::status(500, &[], r#"{"error":{"message":"boom","type":"server_error"}}"#),
        |_| {},
    )
    .await;
    assert_eq!(
        got,
        vec![
            start(),
            error(
                "upstream_unavailable",
                "the model provider failed with HTTP 500; try again later",
                true
            )
        ]
    );
    assert_eq!(row["status"], "error");
    assert_eq!(
        row["error"],
        json!({"code": "upstream_unavailable", "message": "the model provider failed with HTTP 500; try again later"})
    );

    let (_, got, _) = failing_upstream(
        mock::status(429, &[("retry-after", "7")], r#"{"error":{"message":"slow down"}}"#),
        |_| {},
    )
    .await;
    assert_eq!(
        got,
        vec![
            start(),
            error(
                "rate_limited",
                "the model provider is rate limiting requests (HTTP 429); try again in 7 s",
                true
            )
        ]
    );

    let (_, got, _) = failing_upstream(mock::status(400, &[], "model not found\n"), |_| {}).await;
    assert_eq!(
        got,
        vec![
            start(),
            error(
                "upstream_error",
                "the model provider refused the request (HTTP 400)",
                false
            )
        ]
    );
}

#[tokio::test]
async fn connection_refused_is_upstream_unavailable() {
    let app = TestApp::start(&support::closed_port_url()).await;
    let (events, got) = run(&app, json!({"message": "hi"})).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].1["code"], "upstream_unavailable");
    assert_eq!(got[1].1["retryable"], true);
    let row = app.message_row(&events[0].message_id()).await;
    assert_eq!(row["status"], "error");
}

#[tokio::test]
async fn a_chunk_many_reads_long_arrives_whole_and_stored() {
    // chatd reads an HTTP/1.1 upstream 1 KiB at a time: a 40 KB delta (a
    // long tool argument or a model that sends a paragraph at once) spans
    // about 40 reads and must still be one event and one stored text.
    let long: String = (0..8_000).map(|i| format!("w{} ", i % 10)).collect();
    let upstream = mock::raw(&[
        &format!("data: {}\n\n", mock::content(&long)),
        &format!("data: {}\n\n", mock::finish("stop")),
        "data: [DONE]\n\n",
    ]);
    let (_, got, row) = failing_upstream(upstream, |_| {}).await;
    assert_eq!(got.len(), 3, "start, one text step, done");
    assert_eq!(got[1], step(0, "text", &long));
    assert_eq!(got[2].0, "done");
    assert_eq!(
        (row["status"].as_str(), row["content"].as_str()),
        (Some("complete"), Some(long.as_str()))
    );
}

#[tokio::test]
async fn cut_stream_and_mid_stream_error_keep_partial_text() {
    let cut = mock::raw(&[&format!("data: {}\n\n", mock::content("Hel"))]);
    let (_, got, row) = failing_upstream(cut, |_| {}).await;
    assert_eq!(
        got,
        vec![
            start(),
            step(0, "text", "Hel"),
            error(
                "upstream_error",
                "the stream ended before the reply finished (no finish_reason and no [DONE])",
                false
            ),
        ]
    );
    assert_eq!(
        (row["status"].as_str(), row["content"].as_str()),
        (Some("error"), Some("Hel"))
    );

    let mid = mock::raw(&[
        &format!("data: {}\n\n", mock::content("Par")),
        "data: {\"error\":{\"message\":\"model overloaded\",\"code\":503}}\n\n",
        &format!("data: {}\n\n", mock::content("never")),
    ]);
    let (_, got, row) = failing_upstream(mid, |_| {}).await;
    assert_eq!(
        got,
        vec![
            start(),
            step(0, "text", "Par"),
            error(
                "upstream_error",
                "the model provider reported an error: model overloaded",
                false
            )
        ]
    );
    assert_eq!(
        (row["status"].as_str(), row["content"].as_str()),
        (Some("error"), Some("Par"))
    );
}

#[tokio::test]
async fn silence_past_the_idle_timeout_fails_the_reply() {
    let slow = mock::timed(&[(0, mock::content("Hi")), (3_000, mock::content("late"))]);
    let (_, got, row) = failing_upstream(slow, |c| c.llm.idle_timeout_ms = 300).await;
    assert_eq!(
        got,
        vec![
            start(),
            step(0, "text", "Hi"),
            error("upstream_timeout", "upstream sent nothing for 300 ms", true)
        ]
    );
    assert_eq!(
        (row["status"].as_str(), row["content"].as_str()),
        (Some("error"), Some("Hi"))
    );

    // No response headers at all.
    let (_, got, _) = failing_upstream(MockResponse::Hang, |c| c.llm.first_chunk_timeout_ms = 300).await;
    assert_eq!(
        got,
        vec![
            start(),
            error("upstream_timeout", "upstream sent no first chunk within 300 ms", true)
        ]
    );
}

#[tokio::test]
async fn max_iterations_stops_a_model_that_keeps_calling_tools() {
    let upstream = MockUpstream::start().await;
    upstream.push(mock::tool_reply(
        &[("r1", "calculator", r#"{"expression":"1+1"}"#)],
        1,
        1,
    ));
    upstream.push(mock::tool_reply(
        &[("r2", "calculator", r#"{"expression":"2+2"}"#)],
        1,
        1,
    ));
    let app = TestApp::start_tweaked(&upstream.base_url, |c| c.chat.max_iterations = 2).await;
    let (events, got) = run(&app, json!({"message": "loop"})).await;
    assert_eq!(
        got,
        vec![
            start(),
            tool_call(0, "r1", "calculator", r#"{"expression":"1+1"}"#),
            tool_result(1, "r1", "calculator", "2", true),
            tool_call(2, "r2", "calculator", r#"{"expression":"2+2"}"#),
            tool_result(3, "r2", "calculator", "4", true),
            error(
                "max_iterations",
                "the model was still calling tools after 2 rounds; the reply was stopped",
                false
            ),
        ]
    );
    assert_eq!(upstream.received().len(), 2);
    let row = app.message_row(&events[0].message_id()).await;
    assert_eq!(row["status"], "error");
    assert_eq!(row["error"]["code"], "max_iterations");
}

/// Accumulated mode: each step's content so far, coalesced (see
/// tests/accumulated.rs): a step may come in several events, each a prefix
/// of the next and named by its last delta, and always ends whole.
#[tokio::test]
async fn accumulated_mode_sends_content_so_far() {
    let upstream = MockUpstream::start().await;
    upstream.push(mock::sse(&[
        mock::reasoning_content("a"),
        mock::reasoning_content("b"),
        mock::content("c"),
        mock::content("d"),
        mock::finish("stop"),
    ]));
    let app = TestApp::start(&upstream.base_url).await;
    let events = app.chat(json!({"message": "acc", "stream_mode": "accumulated"})).await;
    let got: Vec<(String, Value)> = events.iter().map(|e| (e.event.clone(), e.data.clone())).collect();
    let got = normalize(&got);
    let ids: Vec<u64> = events.iter().map(|e| e.id.parse().expect("id")).collect();
    // Each step's last event (earlier ones are prefixes of it).
    let mut last: Vec<(u64, (String, Value))> = Vec::new();
    for (id, event) in ids.into_iter().zip(got) {
        if let Some((earlier_id, earlier)) = last.last()
            && earlier.0 == "process_step"
            && earlier.1["id"] == event.1["id"]
        {
            assert!(*earlier_id < id);
            let (before, now) = (earlier.1["content"].as_str(), event.1["content"].as_str());
            assert!(
                now.zip(before).is_some_and(|(n, b)| n.starts_with(b)),
                "{before:?} then {now:?}"
            );
            last.pop();
        }
        last.push((id, event));
    }
    let content = |index: u32, kind: &str, content: &str| {
        (
            "process_step".to_string(),
            json!({"id": format!("step-{index}"), "index": index, "type": kind, "content": content}),
        )
    };
    assert_eq!(
        last,
        vec![
            (1, start()),
            (3, content(0, "thinking", "ab")),
            (5, content(1, "text", "cd")),
            (6, done("stop", 0, 0, Some("acc"))),
        ]
    );
}

#[tokio::test]
async fn a_client_that_disconnects_does_not_stop_the_reply() {
    let upstream = MockUpstream::start().await;
    upstream.push(slow_text(10, 30));
    let app = TestApp::start(&upstream.base_url).await;
    let first = read_events(app.post_chat(&json!({"message": "long"})).await, 3).await; // the response is dropped here
    assert_eq!(first.len(), 3);
    let row = app.wait_final(&first[0].message_id()).await;
    assert_eq!(row["status"], "complete");
    assert_eq!(row["content"], full_text(10));
}

#[tokio::test]
async fn on_disconnect_cancel_stores_a_cancelled_reply() {
    let upstream = MockUpstream::start().await;
    upstream.push(slow_text(50, 40));
    let app = TestApp::start_tweaked(&upstream.base_url, |c| {
        c.chat.on_disconnect = chatd::config::OnDisconnect::Cancel
    })
    .await;
    let first = read_events(app.post_chat(&json!({"message": "long"})).await, 3).await;
    let row = app.wait_final(&first[0].message_id()).await;
    assert_eq!(row["status"], "cancelled");
    assert_eq!(row["finish_reason"], "cancelled");
    let content = row["content"].as_str().expect("content");
    assert!(content.starts_with("w0 w1 "), "keeps what was produced: {content:?}");
    assert!(!content.contains("w49"), "stopped early: {content:?}");
}

#[tokio::test]
async fn second_turn_replays_history_with_tool_calls_and_reasoning() {
    let upstream = MockUpstream::start().await;
    upstream.push(mock::sse(&[
        mock::reasoning_content("need math"),
        mock::content("Let me check."),
        mock::tool_piece(Some(0), Some("call_9"), Some("calculator"), "{\"expression\":"),
        mock::tool_piece(Some(0), None, None, "\"6*7\"}"),
        mock::finish("tool_calls"),
    ]));
    upstream.push(mock::sse(&[
        mock::reasoning_content("easy"),
        mock::content("It is 42."),
        mock::finish("stop"),
    ]));
    upstream.push(mock::text_reply(&["You're welcome."], 1, 1));
    upstream.push(mock::text_reply(&["Bye."], 1, 1));
    let app = TestApp::start(&upstream.base_url).await;

    let (first, _) = run(
        &app,
        json!({"message": "What is 6*7?", "system_prompt": "Be brief.", "thinking": false}),
    )
    .await;
    let conversation_id = first[0].data["conversation_id"].clone();
    let (second, got) = run(&app, json!({"message": "Thanks", "conversation_id": conversation_id})).await;
    assert_eq!(
        got,
        vec![start(), step(0, "text", "You're welcome."), done("stop", 1, 1, None)]
    );
    assert_eq!(second[0].data["conversation_id"], conversation_id);

    let sent = upstream.received();
    assert_eq!(sent.len(), 3);
    assert_eq!(
        sent[2]["messages"],
        json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 6*7?"},
            {"role": "assistant", "content": "Let me check.", "reasoning_content": "need math", "tool_calls": [
                {"id": "call_9", "type": "function", "function": {"name": "calculator", "arguments": "{\"expression\":\"6*7\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_9", "content": "42"},
            {"role": "assistant", "content": "It is 42."},
            {"role": "user", "content": "Thanks"}
        ])
    );
    // Settings given on creation are stored on the conversation and reused.
    for request in &sent {
        assert_eq!(request["chat_template_kwargs"], json!({"enable_thinking": false}));
    }

    // The second turn's history came from memory (the history cache); after
    // a restart the third turn's comes from the database, and it continues
    // the second's exactly.
    let restarted = app.reopen(|_| {}).await;
    run(
        &restarted,
        json!({"message": "Bye", "conversation_id": conversation_id}),
    )
    .await;
    let sent = upstream.received();
    assert_eq!(sent.len(), 4);
    let mut expected = sent[2]["messages"].as_array().expect("messages").clone();
    expected.push(json!({"role": "assistant", "content": "You're welcome."}));
    expected.push(json!({"role": "user", "content": "Bye"}));
    assert_eq!(sent[3]["messages"], json!(expected));
}

#[tokio::test]
async fn real_world_stream_quirks_are_tolerated() {
    let upstream = MockUpstream::start().await;
    upstream.push(mock::raw(&[
        ": keep-alive comment\r\n\r\n",
        &format!("data:{}\r\n\r\n", mock::content("Hel")),
        "data: this is not json\n\n",
        &format!("data: {}\n", mock::content("lo")),
        "\n",
        &format!("data: {}\n\n", mock::finish("stop")),
        &format!("data: {}\n\n", mock::usage(3, 2)),
        // the stream ends without [DONE]
    ]));
    let app = TestApp::start(&upstream.base_url).await;
    let (_, got) = run(&app, json!({"message": "quirks"})).await;
    assert_eq!(
        got,
        vec![
            start(),
            step(0, "text", "Hel"),
            step(0, "text", "lo"),
            done("stop", 3, 2, Some("quirks"))
        ]
    );
}

#[tokio::test]
async fn a_second_message_while_a_reply_runs_gets_409() {
    let upstream = MockUpstream::start().await;
    upstream.push(slow_text(5, 100));
    let app = TestApp::start(&upstream.base_url).await;
    let first = read_events(app.post_chat(&json!({"message": "first"})).await, 1).await;
    let conversation_id = first[0].data["conversation_id"].clone();
    let (status, body) = app
        .send(
            reqwest::Method::POST,
            "/api/chat",
            Some(json!({"message": "second", "conversation_id": conversation_id})),
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(body["error"]["code"], "conversation_busy");
    let row = app.wait_final(&first[0].message_id()).await;
    assert_eq!(row["status"], "complete");
}

#[tokio::test]
async fn a_forced_tool_choice_applies_to_the_first_round_only() {
    let upstream = MockUpstream::start().await;
    upstream.push(mock::tool_reply(
        &[("c1", "calculator", r#"{"expression":"12*7"}"#)],
        1,
        1,
    ));
    upstream.push(mock::text_reply(&["84"], 1, 1));
    let app = TestApp::start(&upstream.base_url).await;
    let choice = json!({"type": "function", "function": {"name": "calculator"}});
    let (_, got) = run(
        &app,
        json!({"message": "12*7?", "tools": ["calculator"], "tool_choice": choice}),
    )
    .await;
    assert_eq!(got.last(), Some(&done("stop", 2, 2, Some("12*7?"))));
    let sent = upstream.received();
    assert_eq!(sent[0]["tool_choice"], choice);
    assert!(
        sent[1].get("tool_choice").is_none(),
        "later rounds leave the choice to the model: {}",
        sent[1]
    );
    let names: Vec<&str> = sent[0]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .map(|t| t["function"]["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["calculator"], "only the selected tools are offered");

    // tools: false sends neither tools nor tool_choice.
    upstream.push(mock::text_reply(&["ok"], 1, 1));
    run(&app, json!({"message": "no tools", "tools": false})).await;
    let last = upstream.received().pop().expect("request");
    assert!(
        last.get("tools").is_none() && last.get("tool_choice").is_none(),
        "{last}"
    );
}

#[tokio::test]
async fn http2_prior_knowledge_reaches_the_upstream_over_h2c() {
    let upstream = MockUpstream::start().await;
    upstream.push(mock::text_reply(&["over ", "h2"], 3, 2));
    upstream.push(mock::text_reply(&["again"], 3, 1));
    let app = TestApp::start_tweaked(&upstream.base_url, |c| c.llm.http2_prior_knowledge = true).await;
    let (_, got) = run(&app, json!({"message": "hi"})).await;
    assert_eq!(
        got,
        vec![
            start(),
            step(0, "text", "over "),
            step(0, "text", "h2"),
            done("stop", 3, 2, Some("hi"))
        ]
    );
    let (_, got) = run(&app, json!({"message": "and again"})).await;
    assert_eq!(got[1], step(0, "text", "again"));
    assert_eq!(
        upstream.versions(),
        [axum::http::Version::HTTP_2, axum::http::Version::HTTP_2]
    );
}

#[tokio::test]
async fn http2_streams_beyond_max_streams_per_connection_open_another_connection() {
    let upstream = MockUpstream::start().await;
    for _ in 0..4 {
        upstream.push(mock::sse_with_delay(
            &[mock::role(), mock::content("slow"), mock::finish("stop")],
            150,
        ));
    }
    let app = TestApp::start_tweaked(&upstream.base_url, |c| {
        c.llm.http2_prior_knowledge = true;
        c.llm.max_streams_per_connection = 2;
    })
    .await;
    // Four replies at once, two streams per connection: two connections,
    // and every reply streams to its end.
    let chats = (0..4).map(|i| run(&app, json!({"message": format!("chat {i}")})));
    for (_, got) in futures::future::join_all(chats).await {
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[1], step(0, "text", "slow"));
        assert_eq!(got[2].0, "done");
    }
    assert_eq!(upstream.versions(), [axum::http::Version::HTTP_2; 4]);
    let mut peers = upstream.peers();
    peers.sort();
    peers.dedup();
    assert_eq!(peers.len(), 2, "two streams on each of two connections: {peers:?}");
}

#[tokio::test]
async fn stream_headers_and_keep_alive_comments() {
    let upstream = MockUpstream::start().await;
    upstream.push(MockResponse::Stream(vec![
        (300, format!("data: {}\n\n", mock::content("late"))),
        (0, format!("data: {}\n\ndata: [DONE]\n\n", mock::finish("stop"))),
    ]));
    let app = TestApp::start_tweaked(&upstream.base_url, |c| c.chat.keepalive_interval_ms = 50).await;
    let response = app.post_chat(&json!({"message": "hi"})).await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-accel-buffering"], "no");
    let body = response.text().await.expect("body");
    let comments = body.lines().filter(|l| l.starts_with(':')).count();
    assert!(
        comments >= 2,
        "keep-alive comments while the upstream is silent: {body}"
    );
    assert!(body.contains("event: done"), "{body}");
}

#[tokio::test]
async fn the_turn_is_stored_when_start_arrives_though_the_upstream_hangs() {
    let upstream = MockUpstream::start().await;
    upstream.push(MockResponse::Hang);
    let app = TestApp::start(&upstream.base_url).await;
    let first = read_events(app.post_chat(&json!({"message": "kept"})).await, 1).await;
    // wait until the upstream has the request, then look at the rows
    for _ in 0..100 {
        if !upstream.received().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(upstream.received().len(), 1);
    assert_eq!(first[0].event, "start");
    let conversation = first[0].data["conversation_id"].as_str().expect("conversation id");
    assert_eq!(
        stored_turns(&app, conversation).await,
        [
            ("user".to_string(), "kept".to_string(), "complete".to_string()),
            ("assistant".to_string(), String::new(), "streaming".to_string())
        ]
    );
    assert_eq!(first[0].event, "start");

    // The database's pragmas are checked by the SQLite backend's own tests
    // (`store::sqlite::tests`).
}

/// The user messages and replies stored in `conversation`, oldest first,
/// as `GET /api/conversations/{id}/messages` gives them: (role, content,
/// status).
async fn stored_turns(app: &TestApp, conversation: &str) -> Vec<(String, String, String)> {
    let (status, body) = app
        .get(&format!("/api/conversations/{conversation}/messages?limit=200"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["next_before"], Value::Null, "one page holds them all");
    body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            let text = |k: &str| m[k].as_str().expect(k).to_string();
            (text("role"), text("content"), text("status"))
        })
        .collect()
}

#[tokio::test]
async fn a_turn_that_cannot_be_stored_gets_500_and_leaves_nothing_behind() {
    let upstream = MockUpstream::start().await;
    // The first turn, then the same answer twice: the refused turn's
    // request, sent while its commit ran, may or may not reach the mock
    // before it is dropped.
    for _ in 0..3 {
        upstream.push(mock::text_reply(&["Hi"], 3, 1));
    }
    let app = TestApp::start(&upstream.base_url).await;
    let events = app.chat(json!({"message": "first"})).await;
    let conversation = events[0].data["conversation_id"].as_str().expect("id").to_string();
    let db = app.db().await;
    sqlx::query(
        "CREATE TRIGGER refuse BEFORE INSERT ON messages WHEN NEW.content = 'refused' \
         BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
    )
    .execute(&db)
    .await
    .expect("trigger");

    // In a conversation, and in a new one: a JSON error, nothing stored.
    for body in [
        json!({"message": "refused", "conversation_id": conversation}),
        json!({"message": "refused"}),
    ] {
        let (status, error) = app.send(reqwest::Method::POST, "/api/chat", Some(body)).await;
        assert_eq!(status, 500, "{error}");
        assert_eq!(error["error"]["code"], "internal");
    }
    let conversations: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM conversations")
        .fetch_one(&db)
        .await
        .expect("count");
    assert_eq!(conversations, 1);

    // The conversation is not left busy, and the refused message is in
    // neither the stored history nor the next upstream request.
    sqlx::query("DROP TRIGGER refuse")
        .execute(&db)
        .await
        .expect("drop trigger");
    let events = app
        .chat(json!({"message": "again", "conversation_id": conversation}))
        .await;
    assert_eq!(events.last().expect("events").event, "done");
    let complete = |role: &str, content: &str| (role.to_string(), content.to_string(), "complete".to_string());
    assert_eq!(
        stored_turns(&app, &conversation).await,
        [
            complete("user", "first"),
            complete("assistant", "Hi"),
            complete("user", "again"),
            complete("assistant", "Hi"),
        ]
    );
    let again: Vec<Value> = upstream
        .received()
        .into_iter()
        .filter(|r| r["messages"].to_string().contains("again"))
        .collect();
    assert_eq!(again.len(), 1);
    assert_eq!(
        again[0]["messages"],
        json!([
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "Hi"},
            {"role": "user", "content": "again"},
        ])
    );
}

#[tokio::test]
async fn the_next_message_sent_as_soon_as_done_arrives_is_accepted() {
    let upstream = MockUpstream::start().await;
    let turns = 30;
    for i in 0..turns {
        upstream.push(mock::text_reply(&[&format!("r{i}")], 1, 1));
    }
    let app = TestApp::start(&upstream.base_url).await;
    let (first, _) = run(&app, json!({"message": "turn 0"})).await;
    let conversation_id = first[0].data["conversation_id"].clone();
    // `chat` asserts a 200: a reply still registered as running after its
    // `done` would make the next POST a 409 conversation_busy.
    for i in 1..turns {
        let (events, _) = run(
            &app,
            json!({"message": format!("turn {i}"), "conversation_id": conversation_id}),
        )
        .await;
        assert_eq!(events.last().map(|e| e.event.as_str()), Some("done"), "turn {i}");
    }
    let (_, messages) = app
        .get(&format!(
            "/api/conversations/{}/messages?limit=200",
            conversation_id.as_str().unwrap_or_default()
        ))
        .await;
    assert_eq!(messages["messages"].as_array().map(Vec::len), Some(2 * turns));
}
