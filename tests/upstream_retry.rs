//! Upstream resilience through POST /api/chat: retries with backoff while
//! nothing of the round was sent, fallback to a second provider, timeouts,
//! and GET /api/models.

mod support;

use serde_json::{Value, json};
use support::mock::{self, MockResponse, MockUpstream};
use support::sse::checked;
use support::{TestApp, closed_port_url, provider};

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(n, _)| n.as_str()).collect()
}

#[tokio::test]
async fn retries_5xx_and_429_then_succeeds() {
    let upstream = MockUpstream::start().await;
    upstream.push(mock::status(500, &[], "boom"));
    upstream.push(mock::status(
        429,
        &[("retry-after", "0.05")],
        r#"{"error":{"message":"slow down"}}"#,
    ));
    upstream.push(mock::text_reply(&["third time lucky"], 2, 3));
    let app = TestApp::start_tweaked(&upstream.base_url, |c| c.llm.max_attempts = 3).await;
    let events = checked(&app.chat(json!({"message": "hi"})).await);
    assert_eq!(names(&events), ["start", "process_step", "done"]);
    assert_eq!(events[1].1["delta"], "third time lucky");
    assert_eq!(upstream.received().len(), 3, "two retries");
}

#[tokio::test]
async fn retries_exhausted_end_with_the_last_error() {
    let upstream = MockUpstream::start().await;
    upstream.push(mock::status(503, &[], "busy 1"));
    upstream.push(mock::status(503, &[], "busy 2"));
    let app = TestApp::start_tweaked(&upstream.base_url, |c| c.llm.max_attempts = 2).await;
    let events = checked(&app.chat(json!({"message": "hi"})).await);
    assert_eq!(names(&events), ["start", "error"]);
    assert_eq!(
        events[1].1,
        json!({
            "code": "upstream_unavailable",
            "message": "the model provider failed with HTTP 503; try again later",
            "retryable": true
        })
    );
    assert_eq!(upstream.received().len(), 2);
}

#[tokio::test]
async fn a_4xx_is_not_retried() {
    let upstream = MockUpstream::start().await;
    upstream.push(mock::status(400, &[], r#"{"error":{"message":"bad request"}}"#));
    let app = TestApp::start_tweaked(&upstream.base_url, |c| c.llm.max_attempts = 3).await;
    let events = checked(&app.chat(json!({"message": "hi"})).await);
    assert_eq!(events[1].1["code"], "upstream_error");
    assert_eq!(upstream.received().len(), 1);
}

#[tokio::test]
async fn no_retry_once_part_of_the_round_was_sent() {
    let upstream = MockUpstream::start().await;
    upstream.push(mock::timed(&[
        (0, mock::content("partial")),
        (5_000, mock::content("late")),
    ]));
    let app = TestApp::start_tweaked(&upstream.base_url, |c| {
        c.llm.max_attempts = 3;
        c.llm.idle_timeout_ms = 200;
    })
    .await;
    let events = checked(&app.chat(json!({"message": "hi"})).await);
    assert_eq!(names(&events), ["start", "process_step", "error"]);
    assert_eq!(events[2].1["code"], "upstream_timeout");
    assert_eq!(upstream.received().len(), 1, "the client already saw part of the round");
}

#[tokio::test]
async fn a_first_chunk_timeout_is_retried() {
    let upstream = MockUpstream::start().await;
    upstream.push(MockResponse::Hang);
    upstream.push(mock::text_reply(&["ok"], 1, 1));
    let app = TestApp::start_tweaked(&upstream.base_url, |c| {
        c.llm.max_attempts = 2;
        c.llm.first_chunk_timeout_ms = 200;
    })
    .await;
    let events = checked(&app.chat(json!({"message": "hi"})).await);
    assert_eq!(names(&events), ["start", "process_step", "done"]);
    assert_eq!(upstream.received().len(), 2);
}

#[tokio::test]
async fn an_unavailable_provider_falls_back_to_the_next_one_serving_the_model() {
    let second = MockUpstream::start().await;
    second.push(mock::text_reply(&["from b"], 1, 1));
    let dead = closed_port_url();
    let app = TestApp::start_tweaked(&second.base_url, |c| {
        c.llm.max_attempts = 2;
        c.llm.model = String::new();
        c.providers = vec![
            provider("a", &dead, &["shared-model"]),
            provider("b", &second.base_url, &["shared-model"]),
        ];
    })
    .await;
    let events = checked(&app.chat(json!({"message": "hi", "model": "shared-model"})).await);
    assert_eq!(names(&events), ["start", "process_step", "done"]);
    assert_eq!(events[0].1["model"], "shared-model");
    let sent = second.received();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["model"], "shared-model");

    // Without fallback the dead provider's error is final.
    let app = TestApp::start_tweaked(&second.base_url, |c| {
        c.llm.fallback = false;
        c.llm.model = String::new();
        c.providers = vec![
            provider("a", &dead, &["shared-model"]),
            provider("b", &second.base_url, &["shared-model"]),
        ];
    })
    .await;
    let events = checked(&app.chat(json!({"message": "hi", "model": "shared-model"})).await);
    assert_eq!(events[1].1["code"], "upstream_unavailable");
}

#[tokio::test]
async fn requests_route_by_provider_or_model() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    b.push(mock::text_reply(&["b by model"], 1, 1));
    b.push(mock::text_reply(&["b by name"], 1, 1));
    a.push(mock::text_reply(&["a by default"], 1, 1));
    let app = TestApp::start_tweaked(&a.base_url, |c| {
        c.llm.model = "default-model".into();
        c.providers = vec![
            provider("a", &a.base_url, &["model-a"]),
            provider("b", &b.base_url, &["model-b"]),
        ];
    })
    .await;
    app.chat(json!({"message": "1", "model": "model-b"})).await;
    let events = checked(&app.chat(json!({"message": "2", "provider": "b"})).await);
    // `b` has no default_model: the global default is used
    assert_eq!(events[0].1["model"], "default-model");
    app.chat(json!({"message": "3"})).await;
    assert_eq!(b.received().len(), 2);
    assert_eq!(b.received()[0]["model"], "model-b");
    assert_eq!(a.received().len(), 1);
    assert_eq!(a.received()[0]["model"], "default-model");

    let (code, body) = app
        .send(
            reqwest::Method::POST,
            "/api/chat",
            Some(json!({"message": "x", "provider": "nope"})),
        )
        .await;
    assert_eq!(code, 422);
    assert_eq!(body["error"]["code"], "validation_failed");
    assert!(
        body["error"]["message"].as_str().expect("message").contains("a, b"),
        "{body}"
    );

    // A conversation pinned to a provider keeps using it.
    let (code, conv) = app
        .send(
            reqwest::Method::POST,
            "/api/conversations",
            Some(json!({"provider": "b", "model": "model-b"})),
        )
        .await;
    assert_eq!(code, 201);
    assert_eq!(conv["provider"], "b");
    b.push(mock::text_reply(&["pinned"], 1, 1));
    app.chat(json!({"message": "4", "conversation_id": conv["id"]})).await;
    assert_eq!(b.received().len(), 3);
}

#[tokio::test]
async fn models_lists_every_provider() {
    let a = MockUpstream::start().await;
    let dead = closed_port_url();
    let app = TestApp::start_tweaked(&a.base_url, |c| {
        c.providers = vec![
            provider("a", &a.base_url, &["model-a"]),
            provider("dead", &dead, &["model-x"]),
        ];
    })
    .await;
    let (code, body) = app.get("/api/models").await;
    assert_eq!(code, 200);
    let models: Vec<(String, String)> = body["models"]
        .as_array()
        .expect("models")
        .iter()
        .map(|m| {
            (
                m["id"].as_str().expect("id").into(),
                m["provider"].as_str().expect("provider").into(),
            )
        })
        .collect();
    assert_eq!(
        models,
        [("model-a".into(), "a".into()), ("model-x".into(), "dead".into())]
    );
    let providers = body["providers"].as_array().expect("providers");
    assert_eq!(providers.len(), 2);
    assert_eq!(providers[1]["name"], "dead");
    assert_eq!(providers[1]["reachable"], false);
    assert!(providers[1]["error"].is_string());
}
