//! Approval before a tool runs, and sources cited by a tool, over real HTTP.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chatd::tools::Approval;
use serde_json::json;
use support::mock::{self, MockUpstream};
use support::sse::{SseEvent, next, rest};
use support::tools::{Cite, Launch, registry_with};
use support::{TestApp, step_types};

async fn app(upstream: &MockUpstream, runs: Arc<AtomicUsize>, timeout_ms: u64) -> TestApp {
    let tools = registry_with(vec![Arc::new(Launch(runs)), Arc::new(Cite)]);
    TestApp::start_with(&upstream.base_url, |c| c.tools.approval_timeout_ms = timeout_ms, tools).await
}

async fn start_launch(app: &TestApp) -> (impl futures::Stream<Item = SseEvent> + Unpin, String) {
    let mut stream = app.stream_chat(json!({"message": "launch it"})).await;
    let id = next(&mut stream).await.message_id();
    let call = next(&mut stream).await;
    assert_eq!(call.data["type"], "tool_call");
    let ask = next(&mut stream).await;
    assert_eq!(
        ask.data,
        json!({"id": "step-1", "index": 1, "type": "tool_approval", "id_ref": "L1", "name": "launch",
               "arguments": "{\"target\":\"moon\"}"})
    );
    (stream, id)
}

fn script(upstream: &MockUpstream) {
    upstream.push(mock::tool_reply(&[("L1", "launch", r#"{"target":"moon"}"#)], 1, 1));
    upstream.push(mock::text_reply(&["ok"], 1, 1));
}

/// A mock upstream with [`script`], chatd with `timeout_ms` to approve, and
/// the count of `launch` runs.
async fn launching(timeout_ms: u64) -> (MockUpstream, Arc<AtomicUsize>, TestApp) {
    let upstream = MockUpstream::start().await;
    script(&upstream);
    let runs = Arc::new(AtomicUsize::new(0));
    let app = app(&upstream, runs.clone(), timeout_ms).await;
    (upstream, runs, app)
}

#[tokio::test]
async fn an_approved_call_runs() {
    let (_upstream, runs, app) = launching(10_000).await;
    let (mut stream, id) = start_launch(&app).await;
    assert_eq!(runs.load(Ordering::SeqCst), 0, "nothing runs before the approval");
    let (status, body) = app.approve(&id, json!({"tool_call_id": "L1", "approved": true})).await;
    assert_eq!(
        (status, body),
        (200, json!({"message_id": id, "tool_call_id": "L1", "approved": true}))
    );
    let tail = rest(&mut stream).await;
    assert_eq!(tail[0].data["type"], "tool_result");
    assert_eq!(
        (tail[0].data["content"].as_str(), tail[0].data["success"].as_bool()),
        (Some("launched moon"), Some(true))
    );
    assert_eq!(tail.last().map(|e| e.event.as_str()), Some("done"));
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // A decision for a call that is no longer waiting is a conflict.
    let (status, body) = app.approve(&id, json!({"tool_call_id": "L1", "approved": true})).await;
    assert_eq!(status, 404, "the reply is over: {body}");
    let (status, body) = app
        .approve(
            &uuid::Uuid::now_v7().to_string(),
            json!({"tool_call_id": "L1", "approved": true}),
        )
        .await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")));
    let (status, body) = app.approve(&id, json!({"tool_call_id": "L1"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_request")));
}

#[tokio::test]
async fn a_declined_call_becomes_a_failed_result_the_model_sees() {
    let (upstream, runs, app) = launching(10_000).await;
    let (mut stream, id) = start_launch(&app).await;
    let (status, _) = app
        .approve(&id, json!({"tool_call_id": "nope", "approved": true}))
        .await;
    assert_eq!(status, 409, "unknown tool call id");
    let (status, _) = app
        .approve(
            &id,
            json!({"tool_call_id": "L1", "approved": false, "reason": "not today"}),
        )
        .await;
    assert_eq!(status, 200);
    let tail = rest(&mut stream).await;
    let expected =
        "Error: the user declined to run this tool call. Their reason: not today Do not call it again unless asked.";
    assert_eq!(tail[0].data["content"], expected);
    assert_eq!(tail[0].data["success"], false);
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    let sent = upstream.received();
    assert_eq!(
        sent[1]["messages"][2],
        json!({"role": "tool", "tool_call_id": "L1", "content": expected})
    );
    let row = app.message_row(&id).await;
    assert_eq!(step_types(&row), ["tool_call", "tool_approval", "tool_result", "text"]);
}

#[tokio::test]
async fn no_answer_in_time_counts_as_a_denial() {
    let (_upstream, runs, app) = launching(200).await;
    let (mut stream, _) = start_launch(&app).await;
    let tail = rest(&mut stream).await;
    assert_eq!(
        tail[0].data["content"],
        "Error: the user did not approve this tool call within 200 ms, so it was not run."
    );
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn approval_policy_comes_from_the_config() {
    let upstream = MockUpstream::start().await;
    script(&upstream);
    let runs = Arc::new(AtomicUsize::new(0));
    let tools = registry_with(vec![Arc::new(Launch(runs.clone()))]);
    let app = TestApp::start_with(
        &upstream.base_url,
        |c| {
            c.tools.approval.insert("launch".into(), Approval::Auto);
            c.tools.approval.insert("calculator".into(), Approval::Ask);
        },
        tools,
    )
    .await;
    let (_, body) = app.get("/api/tools").await;
    let approval = |name: &str| {
        body["tools"]
            .as_array()
            .expect("tools")
            .iter()
            .find(|t| t["name"] == name)
            .expect("tool")["approval"]
            .clone()
    };
    assert_eq!(
        (approval("launch"), approval("calculator")),
        (json!("auto"), json!("ask"))
    );
    let events = app.chat(json!({"message": "go"})).await;
    let kinds: Vec<&str> = events.iter().filter_map(|e| e.data["type"].as_str()).collect();
    assert_eq!(kinds, ["tool_call", "tool_result", "text"]);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn sources_are_streamed_and_stored() {
    let upstream = MockUpstream::start().await;
    upstream.push(mock::tool_reply(&[("c1", "cite", "{}")], 1, 1));
    upstream.push(mock::tool_reply(&[("c2", "cite", "{}")], 1, 1));
    upstream.push(mock::text_reply(&["See [S1]."], 1, 1));
    let app = app(&upstream, Arc::new(AtomicUsize::new(0)), 1000).await;
    let events = app.chat(json!({"message": "cite"})).await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        names,
        [
            "start",
            "process_step",
            "process_step",
            "sources",
            "process_step",
            "process_step",
            "sources",
            "process_step",
            "done"
        ]
    );
    let source = |id: &str, path: &str| json!({"id": id, "title": format!("Title of {path}"), "path": path, "snippet": format!("from {path}")});
    assert_eq!(
        events[3].data,
        json!({"sources": [source("S1", "a.md"), source("S2", "b.md")]})
    );
    assert_eq!(
        events[6].data,
        json!({"sources": [source("S3", "a.md"), source("S4", "b.md")]})
    );
    let row = app
        .message_row(events[0].data["message_id"].as_str().expect("id"))
        .await;
    assert_eq!(
        row["sources"],
        json!([
            source("S1", "a.md"),
            source("S2", "b.md"),
            source("S3", "a.md"),
            source("S4", "b.md")
        ])
    );
}

#[tokio::test]
async fn duplicate_tool_call_ids_are_renamed_so_approvals_and_results_map_one_to_one() {
    let upstream = MockUpstream::start().await;
    // The model gives three calls the same id in one round, then reuses it
    // in the next round.
    upstream.push(mock::tool_reply(
        &[
            ("dup", "launch", r#"{"target":"moon"}"#),
            ("dup", "launch", r#"{"target":"mars"}"#),
            ("dup", "launch", r#"{"target":"venus"}"#),
        ],
        1,
        1,
    ));
    upstream.push(mock::tool_reply(&[("dup", "launch", r#"{"target":"io"}"#)], 1, 1));
    upstream.push(mock::text_reply(&["ok"], 1, 1));
    let runs = Arc::new(AtomicUsize::new(0));
    let app = app(&upstream, runs.clone(), 10_000).await;
    let mut stream = app.stream_chat(json!({"message": "launch them"})).await;
    let id = next(&mut stream).await.message_id();

    let mut asked = Vec::new();
    let mut results = Vec::new();
    let mut calls = Vec::new();
    loop {
        let event = next(&mut stream).await;
        if event.event == "done" || event.event == "error" {
            assert_eq!(event.event, "done", "{:?}", event.data);
            break;
        }
        match event.data["type"].as_str() {
            Some("tool_call") => calls.push(event.data["id"].to_string()),
            Some("tool_approval") => {
                let call_id = event.data["id_ref"].as_str().expect("id_ref").to_string();
                let target: serde_json::Value =
                    serde_json::from_str(event.data["arguments"].as_str().expect("arguments")).expect("json");
                asked.push((call_id.clone(), target["target"].as_str().expect("target").to_string()));
                // Approve the moon, mars and io; decline venus.
                let approved = target["target"] != "venus";
                let (status, body) = app
                    .approve(&id, json!({"tool_call_id": call_id, "approved": approved}))
                    .await;
                assert_eq!(status, 200, "{body}");
            }
            Some("tool_result") => results.push((
                event.data["id_ref"].as_str().expect("id_ref").to_string(),
                event.data["content"].as_str().expect("content").to_string(),
            )),
            _ => {}
        }
    }
    let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    };
    assert_eq!(
        asked,
        pairs(&[("dup", "moon"), ("dup_2", "mars"), ("dup_3", "venus"), ("dup_4", "io")])
    );
    let declined = "Error: the user declined to run this tool call. Do not call it again unless asked.";
    assert_eq!(
        results,
        pairs(&[
            ("dup", "launched moon"),
            ("dup_2", "launched mars"),
            ("dup_3", declined),
            ("dup_4", "launched io")
        ])
    );
    assert_eq!(runs.load(Ordering::SeqCst), 3);

    // The model gets the renamed ids back, each call with its own result.
    let sent = upstream.received();
    let second = &sent[1]["messages"];
    let ids: Vec<&str> = second[1]["tool_calls"]
        .as_array()
        .expect("tool_calls")
        .iter()
        .map(|c| c["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["dup", "dup_2", "dup_3"]);
    let answered: Vec<(&str, &str)> = second
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| {
            (
                m["tool_call_id"].as_str().expect("id"),
                m["content"].as_str().expect("content"),
            )
        })
        .collect();
    assert_eq!(
        answered,
        [
            ("dup", "launched moon"),
            ("dup_2", "launched mars"),
            ("dup_3", declined)
        ]
    );
    let third = sent[2]["messages"].as_array().expect("messages");
    let last_calls = third
        .iter()
        .rev()
        .find(|m| m["role"] == "assistant")
        .expect("assistant");
    assert_eq!(last_calls["tool_calls"][0]["id"], "dup_4");
    assert_eq!(third.last().map(|m| m["tool_call_id"].clone()), Some(json!("dup_4")));
}
