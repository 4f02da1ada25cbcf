//! Issue 21, item 9: what a client learns of a failing upstream. The SSE
//! `error` event, the stored message's error and `GET /api/models` carry the
//! stable code and a generic message, never the provider's URL, address,
//! port or the body it answered with (the log keeps those).

mod support;

use chatd::config::LlmTransport;
use serde_json::{Value, json};
use support::mock::{self, MockUpstream};
use support::{TestApp, closed_port, provider};

/// A secret-looking string an upstream puts in its error bodies.
const SECRET: &str = "sk-live-7f3a9c0d1e2b";

/// Checks that `text` names none of `forbidden` and no URL.
fn assert_clean(text: &str, forbidden: &[&str]) {
    for f in forbidden
        .iter()
        .chain(&["http://", "https://", "127.0.0.1", SECRET, "10.9.8.7"])
    {
        assert!(!text.contains(f), "{text:?} contains {f:?}");
    }
}

/// The port of `http://127.0.0.1:PORT/...`.
fn port_of(url: &str) -> String {
    url.rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .expect("port")
        .to_string()
}

/// One chat whose reply fails: the `error` event's data and the failed
/// message's `error` as `GET /api/conversations/{id}/messages` returns it,
/// after checking the events are `start`, `error`.
async fn failed_reply(app: &TestApp) -> (Value, Value) {
    let events = app.chat(json!({"message": "hi"})).await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["start", "error"]);
    let message_id = events[0].message_id();
    app.wait_final(&message_id).await;
    let conversation_id = events[0].data["conversation_id"].as_str().expect("conversation_id");
    let (code, body) = app.get(&format!("/api/conversations/{conversation_id}/messages")).await;
    assert_eq!(code, 200);
    let stored = body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .find(|m| m["id"] == message_id.as_str())
        .expect("the failed reply is listed")
        .clone();
    assert_eq!(stored["status"], "error");
    (events[1].data.clone(), stored["error"].clone())
}

#[tokio::test]
async fn an_unreachable_provider_is_named_by_neither_the_event_nor_the_stored_error() {
    for transport in [LlmTransport::Auto, LlmTransport::Reqwest] {
        let port = closed_port();
        let url = format!("http://127.0.0.1:{port}/v1");
        let app = TestApp::start_tweaked(&url, |c| c.llm.transport = transport).await;
        let (event, stored) = failed_reply(&app).await;
        let message = "the model provider could not be reached; try again later";
        assert_eq!(
            event,
            json!({"code": "upstream_unavailable", "message": message, "retryable": true}),
            "{transport:?}"
        );
        assert_eq!(stored, json!({"code": "upstream_unavailable", "message": message}));
        assert_clean(&event.to_string(), &[&port.to_string()]);
    }
}

#[tokio::test]
async fn upstream_error_bodies_reach_no_client() {
    let upstream = MockUpstream::start().await;
    let port = port_of(&upstream.base_url);
    let app = TestApp::start(&upstream.base_url).await;
    let cases = [
        (
            mock::status(500, &[], &format!("Traceback: key {SECRET} at http://10.9.8.7:8080/v1")),
            json!({"code": "upstream_unavailable", "message": "the model provider failed with HTTP 500; try again later"}),
        ),
        (
            mock::status(
                502,
                &[],
                &format!(r#"{{"error":{{"message":"bad gateway to http://10.9.8.7:8080 with {SECRET}"}}}}"#),
            ),
            json!({"code": "upstream_unavailable", "message": "the model provider failed with HTTP 502; try again later"}),
        ),
        (
            mock::status(
                401,
                &[],
                &format!(r#"{{"error":{{"message":"Incorrect API key provided: {SECRET}"}}}}"#),
            ),
            json!({
                "code": "upstream_error",
                "message": "the model provider refused chatd's credentials (HTTP 401); the server's operator must \
                    check the provider's API key"
            }),
        ),
        (
            mock::status(
                404,
                &[],
                r#"{"error":{"message":"The model `x` does not exist at https://10.9.8.7:8443/v1"}}"#,
            ),
            json!({
                "code": "upstream_error",
                "message": "the model provider refused the request (HTTP 404): The model `x` does not exist at [address]"
            }),
        ),
        (
            mock::status(429, &[], &format!("slow down, {SECRET}")),
            json!({
                "code": "rate_limited",
                "message": "the model provider is rate limiting requests (HTTP 429); try again later"
            }),
        ),
    ];
    for (response, expected) in cases {
        upstream.push(response);
        let (event, stored) = failed_reply(&app).await;
        assert_eq!(stored, expected);
        assert_eq!(event["code"], expected["code"]);
        assert_eq!(event["message"], expected["message"]);
        assert_clean(&event.to_string(), &[&port]);
    }
}

#[tokio::test]
async fn the_models_list_shows_no_base_url_or_address() {
    let listing = MockUpstream::start().await;
    let listing_port = port_of(&listing.base_url);
    let port = closed_port();
    let dead = format!("http://user:pw@127.0.0.1:{port}/v1");
    let app = TestApp::start_tweaked(&listing.base_url, |c| {
        c.providers = vec![
            provider("up", &listing.base_url, &["model-a"]),
            provider("dead", &dead, &["model-x"]),
        ];
    })
    .await;
    let (code, body) = app.get("/api/models").await;
    assert_eq!(code, 200);
    // The mock upstream has no `GET /models`: it answers 404.
    assert_eq!(
        body["providers"],
        json!([
            {"name": "up", "reachable": false, "error": "the model provider refused the request (HTTP 404)"},
            {"name": "dead", "reachable": false, "error": "the model provider could not be reached; try again later"},
        ])
    );
    assert_clean(&body.to_string(), &[&port.to_string(), &listing_port, "user:pw"]);
}
