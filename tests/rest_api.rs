mod support;

// REST routes of chatd: health, tools, conversations, messages, and every
// bad-input answer of `POST /api/chat` (each one given before any streaming
// and without storing anything).

use std::collections::BTreeSet;

use chatd::config::Config;
use reqwest::Method;
use serde_json::{Value, json};
use support::TestApp;
use support::mock::{self, MockUpstream};

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

/// A response as the tests look at it.
#[derive(Debug)]
struct Resp {
    status: u16,
    content_type: String,
    text: String,
    json: Value,
}

/// Starts a mock upstream and chatd with the default test config.
async fn start() -> (MockUpstream, TestApp) {
    start_with(|_| {}).await
}

/// Starts a mock upstream and chatd with `tweak` applied to the config.
async fn start_with(tweak: impl FnOnce(&mut Config)) -> (MockUpstream, TestApp) {
    let mock = MockUpstream::start().await;
    let app = TestApp::start_tweaked(&mock.base_url, tweak).await;
    (mock, app)
}

/// Sends `method path` with an optional raw body and content type.
async fn request(app: &TestApp, method: Method, path: &str, content_type: Option<&str>, body: Option<Vec<u8>>) -> Resp {
    let mut req = app.http.request(method, app.url(path));
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    if let Some(body) = body {
        req = req.body(body);
    }
    let r = req.send().await.expect("request is answered");
    let status = r.status().as_u16();
    let content_type = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().expect("ascii content type").to_string())
        .unwrap_or_default();
    let text = r.text().await.expect("response body");
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Resp {
        status,
        content_type,
        text,
        json,
    }
}

/// Sends `body` as `application/json`.
async fn send_json(app: &TestApp, method: Method, path: &str, body: &Value) -> Resp {
    request(
        app,
        method,
        path,
        Some("application/json"),
        Some(body.to_string().into_bytes()),
    )
    .await
}

async fn get(app: &TestApp, path: &str) -> Resp {
    request(app, Method::GET, path, None, None).await
}

async fn post_chat(app: &TestApp, body: &Value) -> Resp {
    send_json(app, Method::POST, "/api/chat", body).await
}

/// Asserts a JSON success response with `status`; returns its body.
fn ok_json(r: &Resp, status: u16) -> Value {
    assert_eq!(r.status, status, "unexpected status; body: {}", r.text);
    assert!(
        r.content_type.starts_with("application/json"),
        "content type {:?}",
        r.content_type
    );
    r.json.clone()
}

/// Asserts the exact error shape `{"error":{"code","message"}}` with the
/// given status and code, as JSON; returns the message.
fn assert_error(r: &Resp, status: u16, code: &str) -> String {
    assert_eq!(r.status, status, "unexpected status; body: {}", r.text);
    assert!(
        r.content_type.starts_with("application/json"),
        "error content type is {:?}; body: {}",
        r.content_type,
        r.text
    );
    let top = r
        .json
        .as_object()
        .unwrap_or_else(|| panic!("error body is not a JSON object: {}", r.text));
    assert_eq!(keys(&r.json), set(&["error"]), "top-level keys: {}", r.text);
    let error = &top["error"];
    assert_eq!(keys(error), set(&["code", "message"]), "error keys: {}", r.text);
    assert_eq!(error["code"], code, "error code; body: {}", r.text);
    let message = error["message"].as_str().expect("message is a string");
    assert!(!message.trim().is_empty(), "empty error message");
    message.to_string()
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().expect("a JSON object").keys().cloned().collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn assert_uuid(v: &Value) -> String {
    let s = v.as_str().unwrap_or_else(|| panic!("{v} is not a string"));
    uuid::Uuid::parse_str(s).unwrap_or_else(|e| panic!("{s:?} is not a UUID: {e}"));
    s.to_string()
}

fn assert_rfc3339(v: &Value) -> jiff::Timestamp {
    let s = v.as_str().unwrap_or_else(|| panic!("{v} is not a string"));
    assert!(s.contains('T') && s.ends_with('Z'), "{s:?} is not RFC 3339 UTC");
    s.parse().unwrap_or_else(|e| panic!("{s:?} is not RFC 3339: {e}"))
}

/// `SELECT COUNT(*)` of `table`, read from the database file.
async fn count(app: &TestApp, table: &str) -> i64 {
    let sql = match table {
        "messages" => "SELECT COUNT(*) FROM messages",
        "conversations" => "SELECT COUNT(*) FROM conversations",
        other => panic!("no count query for table {other:?}"),
    };
    let pool = app.db().await;
    let n: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await.expect("count rows");
    pool.close().await;
    n
}

async fn count_messages_of(app: &TestApp, conversation_id: &str) -> i64 {
    let pool = app.db().await;
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM messages WHERE conversation_id = ?")
        .bind(conversation_id)
        .fetch_one(&pool)
        .await
        .expect("count messages");
    pool.close().await;
    n
}

/// Sets a conversation's `updated_at` directly, for deterministic ordering.
async fn set_updated_at(app: &TestApp, id: &str, ms: i64) {
    let pool = app.db().await;
    let done = sqlx::query("UPDATE conversations SET updated_at = ? WHERE id = ?")
        .bind(ms)
        .bind(id)
        .execute(&pool)
        .await
        .expect("update updated_at");
    assert_eq!(done.rows_affected(), 1);
    pool.close().await;
}

/// Nothing was stored and the upstream was never called.
async fn assert_nothing_happened(app: &TestApp, mock: &MockUpstream) {
    assert_eq!(count(app, "messages").await, 0, "a rejected chat stored messages");
    assert_eq!(
        count(app, "conversations").await,
        0,
        "a rejected chat stored a conversation"
    );
    assert!(
        mock.received().is_empty(),
        "the upstream was called: {:?}",
        mock.received()
    );
}

/// POSTs each body to `/api/chat`, expecting the error `status`/`code`.
async fn reject_chat_all(app: &TestApp, mock: &MockUpstream, bodies: &[Value], status: u16, code: &str) {
    for body in bodies {
        let r = post_chat(app, body).await;
        assert_ne!(r.content_type, "text/event-stream", "{body} started a stream");
        assert_error(&r, status, code);
        assert_nothing_happened(app, mock).await;
    }
}

/// Creates a conversation through the API; returns its JSON.
async fn create_conversation(app: &TestApp, body: Value) -> Value {
    let r = send_json(app, Method::POST, "/api/conversations", &body).await;
    ok_json(&r, 201)
}

/// Runs one chat turn answered with `reply`; returns the `done` event data.
async fn chat_turn(app: &TestApp, mock: &MockUpstream, body: Value, reply: &[&str]) -> Value {
    mock.push(mock::text_reply(reply, 5, 2));
    let events = support::sse::checked(&app.chat(body).await);
    let (name, data) = events.last().expect("events").clone();
    assert_eq!(name, "done", "the reply failed: {events:#?}");
    data
}

fn full_settings() -> Value {
    json!({
        "title": "Trip planning",
        "model": "planner-model",
        "system_prompt": "You are a travel agent.",
        "temperature": 0.7,
        "max_tokens": 256,
        "thinking": true
    })
}

const CONVERSATION_KEYS: &[&str] = &[
    "id",
    "title",
    "model",
    "provider",
    "project_id",
    "system_prompt",
    "temperature",
    "max_tokens",
    "thinking",
    "created_at",
    "updated_at",
];

const MESSAGE_KEYS: &[&str] = &[
    "id",
    "conversation_id",
    "role",
    "content",
    "reasoning",
    "steps",
    "tool_calls",
    "usage",
    "sources",
    "status",
    "finish_reason",
    "error",
    "model",
    "created_at",
    "updated_at",
];

// ---------------------------------------------------------------------------
// health, tools, routing
// ---------------------------------------------------------------------------

#[tokio::test]
async fn healthz_and_readyz_answer_ok() {
    let (_mock, app) = start().await;
    assert_eq!(ok_json(&get(&app, "/healthz").await, 200), json!({"status": "ok"}));
    assert_eq!(ok_json(&get(&app, "/readyz").await, 200), json!({"status": "ready"}));
}

#[tokio::test]
async fn tools_lists_the_builtins_sorted_with_schemas() {
    let (_mock, app) = start().await;
    let body = ok_json(&get(&app, "/api/tools").await, 200);
    assert_eq!(keys(&body), set(&["tools", "sources"]));
    assert_eq!(body["sources"], json!([]));
    let tools = body["tools"].as_array().expect("tools array");
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().expect("name")).collect();
    assert_eq!(names, ["calculator", "get_current_time"]);
    for tool in tools {
        assert_eq!(
            keys(tool),
            set(&["name", "description", "parameters", "origin", "approval"]),
            "{tool}"
        );
        assert_eq!(
            (tool["origin"].as_str(), tool["approval"].as_str()),
            (Some("builtin"), Some("auto"))
        );
        assert!(!tool["description"].as_str().expect("description").is_empty());
        assert_eq!(tool["parameters"]["type"], "object", "{tool}");
        assert!(tool["parameters"]["properties"].is_object(), "{tool}");
    }
    assert_eq!(tools[0]["parameters"]["required"], json!(["expression"]));
}

#[tokio::test]
async fn unknown_route_is_a_json_404() {
    let (_mock, app) = start().await;
    for path in ["/nope", "/api/chats", "/api/conversations/a/b/c"] {
        assert_error(&get(&app, path).await, 404, "not_found");
    }
    let r = send_json(&app, Method::POST, "/api/nothing", &json!({})).await;
    assert_error(&r, 404, "not_found");
}

#[tokio::test]
async fn wrong_method_is_a_json_405() {
    let (_mock, app) = start().await;
    let cases = [
        (Method::DELETE, "/api/chat"),
        (Method::GET, "/api/chat"),
        (Method::PUT, "/api/conversations"),
        (Method::POST, "/healthz"),
        (Method::DELETE, "/api/tools"),
    ];
    for (method, path) in cases {
        let r = request(&app, method.clone(), path, None, None).await;
        let message = assert_error(&r, 405, "method_not_allowed");
        assert!(message.contains(method.as_str()), "{method} {path}: {message}");
    }
}

// ---------------------------------------------------------------------------
// POST /api/chat: bad input
// ---------------------------------------------------------------------------

#[tokio::test]
async fn chat_malformed_json_is_400_invalid_json() {
    let (mock, app) = start().await;
    for body in [r#"{"message": "hi""#, "not json", r#"{"message": "hi"} trailing"#, ""] {
        let r = request(
            &app,
            Method::POST,
            "/api/chat",
            Some("application/json"),
            Some(body.as_bytes().to_vec()),
        )
        .await;
        assert_error(&r, 400, "invalid_json");
        assert_nothing_happened(&app, &mock).await;
    }
}

#[tokio::test]
async fn chat_wrong_types_are_400_invalid_request() {
    let (mock, app) = start().await;
    let bodies = [
        json!({"message": 5}),
        json!({"message": "hi", "temperature": "hot"}),
        json!({"message": "hi", "max_tokens": "many"}),
        json!({"message": "hi", "thinking": "yes"}),
        json!({"message": "hi", "model": 7}),
        json!({"message": null}),
        json!(["hi"]),
        json!("hi"),
    ];
    reject_chat_all(&app, &mock, &bodies, 400, "invalid_request").await;
}

#[tokio::test]
async fn chat_missing_message_is_400_invalid_request() {
    let (mock, app) = start().await;
    let bodies = [json!({}), json!({"model": "mock-model"})];
    reject_chat_all(&app, &mock, &bodies, 400, "invalid_request").await;
}

#[tokio::test]
async fn chat_unknown_field_is_400_naming_it() {
    let (mock, app) = start().await;
    for (body, field) in [
        (json!({"mesage": "hi"}), "mesage"),
        (json!({"message": "hi", "temprature": 1}), "temprature"),
    ] {
        let r = post_chat(&app, &body).await;
        let message = assert_error(&r, 400, "invalid_request");
        assert!(message.contains(field), "message does not name {field:?}: {message}");
    }
    assert_nothing_happened(&app, &mock).await;
}

#[tokio::test]
async fn chat_bad_conversation_uuid_is_400() {
    let (mock, app) = start().await;
    let bodies = [
        json!({"message": "hi", "conversation_id": "not-a-uuid"}),
        json!({"message": "hi", "conversation_id": 42}),
    ];
    reject_chat_all(&app, &mock, &bodies, 400, "invalid_request").await;
}

#[tokio::test]
async fn chat_unknown_conversation_is_404() {
    let (mock, app) = start().await;
    let unknown = uuid::Uuid::now_v7().to_string();
    let r = post_chat(&app, &json!({"message": "hi", "conversation_id": unknown})).await;
    let message = assert_error(&r, 404, "not_found");
    assert!(message.contains(&unknown), "{message}");
    assert_nothing_happened(&app, &mock).await;
}

#[tokio::test]
async fn chat_body_over_the_configured_limit_is_413() {
    let (mock, app) = start_with(|c| c.http.max_body_bytes = 64).await;
    let body = json!({"message": "x".repeat(100)});
    reject_chat_all(&app, &mock, &[body], 413, "payload_too_large").await;
    // The same limit applies to the conversation routes.
    let r = send_json(
        &app,
        Method::POST,
        "/api/conversations",
        &json!({"title": "t".repeat(100)}),
    )
    .await;
    assert_error(&r, 413, "payload_too_large");
    assert_eq!(count(&app, "conversations").await, 0);
}

#[tokio::test]
async fn chat_body_over_the_default_1_mib_is_413() {
    let (mock, app) = start().await;
    let body = json!({"message": "x".repeat(1024 * 1024 + 1)});
    reject_chat_all(&app, &mock, &[body], 413, "payload_too_large").await;
}

#[tokio::test]
async fn chat_without_a_json_content_type_is_415() {
    let (mock, app) = start().await;
    let body = json!({"message": "hi"}).to_string().into_bytes();
    for content_type in [Some("text/plain"), None, Some("application/x-www-form-urlencoded")] {
        let r = request(&app, Method::POST, "/api/chat", content_type, Some(body.clone())).await;
        assert_error(&r, 415, "unsupported_media_type");
        assert_nothing_happened(&app, &mock).await;
    }
}

#[tokio::test]
async fn chat_blank_message_is_422() {
    let (mock, app) = start().await;
    let bodies = [
        json!({"message": "   "}),
        json!({"message": ""}),
        json!({"message": "\n\t "}),
    ];
    reject_chat_all(&app, &mock, &bodies, 422, "validation_failed").await;
}

#[tokio::test]
async fn chat_message_over_max_chars_is_422_and_at_the_limit_is_accepted() {
    let (mock, app) = start_with(|c| c.chat.max_message_chars = 10).await;
    // Characters, not bytes: "é" is two bytes.
    let bodies = [json!({"message": "é".repeat(11)}), json!({"message": "a".repeat(11)})];
    reject_chat_all(&app, &mock, &bodies, 422, "validation_failed").await;

    let done = chat_turn(&app, &mock, json!({"message": "é".repeat(10)}), &["ok"]).await;
    let id = assert_uuid(&done["conversation_id"]);
    let body = ok_json(&get(&app, &format!("/api/conversations/{id}/messages")).await, 200);
    assert_eq!(body["messages"][0]["content"], "é".repeat(10));
    assert_eq!(count(&app, "messages").await, 2);
}

#[tokio::test]
async fn chat_out_of_range_settings_are_422() {
    let (mock, app) = start().await;
    let bodies = [
        json!({"message": "hi", "temperature": 2.5}),
        json!({"message": "hi", "temperature": -0.1}),
        json!({"message": "hi", "max_tokens": 0}),
        json!({"message": "hi", "max_tokens": -3}),
        json!({"message": "hi", "model": "  "}),
        json!({"message": "hi", "model": ""}),
    ];
    reject_chat_all(&app, &mock, &bodies, 422, "validation_failed").await;
}

#[tokio::test]
async fn chat_bad_tools_tool_choice_and_stream_mode() {
    let (mock, app) = start().await;
    let unprocessable = [
        json!({"message": "hi", "tools": ["nope"]}),
        json!({"message": "hi", "tools": ["calculator", "nope"]}),
        json!({"message": "hi", "tools": ["calculator"],
               "tool_choice": {"type": "function", "function": {"name": "get_current_time"}}}),
        json!({"message": "hi", "tools": false,
               "tool_choice": {"type": "function", "function": {"name": "calculator"}}}),
        json!({"message": "hi", "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
    ];
    reject_chat_all(&app, &mock, &unprocessable, 422, "validation_failed").await;

    let bad_request = [
        json!({"message": "hi", "tools": 5}),
        json!({"message": "hi", "tools": "calculator"}),
        json!({"message": "hi", "tools": [1]}),
        json!({"message": "hi", "tool_choice": "sometimes"}),
        json!({"message": "hi", "tool_choice": 1}),
        json!({"message": "hi", "tool_choice": {"type": "function"}}),
        json!({"message": "hi", "stream_mode": "weird"}),
        json!({"message": "hi", "stream_mode": 1}),
    ];
    reject_chat_all(&app, &mock, &bad_request, 400, "invalid_request").await;

    // The boundary: an enabled function and a null stream_mode are accepted.
    let body = json!({"message": "hi", "tools": ["calculator"], "stream_mode": null,
                      "tool_choice": {"type": "function", "function": {"name": "calculator"}}});
    chat_turn(&app, &mock, body, &["ok"]).await;
    let sent = mock.received();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0]["tool_choice"],
        json!({"type": "function", "function": {"name": "calculator"}})
    );
}

#[tokio::test]
async fn chat_without_any_model_is_422_naming_the_env_var() {
    let (mock, app) = start_with(|c| c.llm.model = String::new()).await;
    let r = post_chat(&app, &json!({"message": "hi"})).await;
    let message = assert_error(&r, 422, "validation_failed");
    assert!(message.contains("CHATD_LLM_MODEL"), "{message}");
    assert_nothing_happened(&app, &mock).await;

    // A conversation without a model does not help either.
    let c = create_conversation(&app, json!({"title": "no model"})).await;
    let r = post_chat(&app, &json!({"message": "hi", "conversation_id": c["id"]})).await;
    let message = assert_error(&r, 422, "validation_failed");
    assert!(message.contains("CHATD_LLM_MODEL"), "{message}");
    assert_eq!(count(&app, "messages").await, 0);
    assert!(mock.received().is_empty());
}

// ---------------------------------------------------------------------------
// conversations: create, read
// ---------------------------------------------------------------------------

#[tokio::test]
async fn create_conversation_is_201_with_every_field() {
    let (_mock, app) = start().await;
    let c = create_conversation(&app, full_settings()).await;
    assert_eq!(keys(&c), set(CONVERSATION_KEYS));
    let id = assert_uuid(&c["id"]);
    for field in [
        "title",
        "model",
        "system_prompt",
        "temperature",
        "max_tokens",
        "thinking",
    ] {
        assert_eq!(c[field], full_settings()[field], "{field}");
    }
    let created = assert_rfc3339(&c["created_at"]);
    assert_eq!(assert_rfc3339(&c["updated_at"]), created);

    let pool = app.db().await;
    let (title, model, temperature, max_tokens, thinking): (String, String, f64, i64, bool) =
        sqlx::query_as("SELECT title, model, temperature, max_tokens, thinking FROM conversations WHERE id = ?")
            .bind(&id)
            .fetch_one(&pool)
            .await
            .expect("stored row");
    assert_eq!(
        (title.as_str(), model.as_str(), temperature, max_tokens, thinking),
        ("Trip planning", "planner-model", 0.7, 256, true)
    );

    // Every field is optional.
    let empty = create_conversation(&app, json!({})).await;
    for field in [
        "title",
        "model",
        "system_prompt",
        "temperature",
        "max_tokens",
        "thinking",
    ] {
        assert_eq!(empty[field], Value::Null, "{field}");
    }
    assert_ne!(empty["id"], c["id"]);

    // The range bounds are inclusive; a charset parameter is fine.
    for body in [json!({"temperature": 0, "max_tokens": 1}), json!({"temperature": 2})] {
        let r = request(
            &app,
            Method::POST,
            "/api/conversations",
            Some("application/json; charset=utf-8"),
            Some(body.to_string().into_bytes()),
        )
        .await;
        assert_eq!(ok_json(&r, 201)["temperature"].as_f64(), body["temperature"].as_f64());
    }
    assert_eq!(count(&app, "conversations").await, 4);
}

#[tokio::test]
async fn create_conversation_rejects_bad_input() {
    let (_mock, app) = start().await;
    let path = "/api/conversations";
    let r = send_json(&app, Method::POST, path, &json!({"title": "x", "colour": "red"})).await;
    let message = assert_error(&r, 400, "invalid_request");
    assert!(message.contains("colour"), "{message}");
    let r = send_json(&app, Method::POST, path, &json!({"title": 5})).await;
    assert_error(&r, 400, "invalid_request");
    let r = send_json(&app, Method::POST, path, &json!({"max_tokens": -3})).await;
    assert_error(&r, 400, "invalid_request");
    for body in [json!([]), json!(["title"]), json!(null), json!(1)] {
        let r = send_json(&app, Method::POST, path, &body).await;
        assert_error(&r, 400, "invalid_request");
    }
    for body in [
        json!({"temperature": 3}),
        json!({"temperature": -1}),
        json!({"max_tokens": 0}),
        json!({"model": " "}),
    ] {
        let r = send_json(&app, Method::POST, path, &body).await;
        assert_error(&r, 422, "validation_failed");
    }
    let r = request(&app, Method::POST, path, Some("application/json"), Some(b"{".to_vec())).await;
    assert_error(&r, 400, "invalid_json");
    let r = request(&app, Method::POST, path, Some("text/plain"), Some(b"{}".to_vec())).await;
    assert_error(&r, 415, "unsupported_media_type");
    assert_eq!(count(&app, "conversations").await, 0);
}

#[tokio::test]
async fn get_conversation_returns_the_created_object() {
    let (_mock, app) = start().await;
    let c = create_conversation(&app, full_settings()).await;
    let id = c["id"].as_str().expect("id");
    let got = ok_json(&get(&app, &format!("/api/conversations/{id}")).await, 200);
    assert_eq!(got, c);

    let message = assert_error(&get(&app, "/api/conversations/abc").await, 400, "invalid_id");
    assert!(message.contains("abc"), "{message}");
    // A segment that is not even UTF-8 gets the same JSON answer.
    assert_error(&get(&app, "/api/conversations/%FF").await, 400, "invalid_id");
    assert_error(&get(&app, "/api/conversations/%FF/messages").await, 400, "invalid_id");
    let r = send_json(&app, Method::PATCH, "/api/conversations/%FF", &json!({})).await;
    assert_error(&r, 400, "invalid_id");
    let r = request(&app, Method::DELETE, "/api/conversations/%FF", None, None).await;
    assert_error(&r, 400, "invalid_id");
    let unknown = uuid::Uuid::now_v7();
    let message = assert_error(
        &get(&app, &format!("/api/conversations/{unknown}")).await,
        404,
        "not_found",
    );
    assert!(message.contains(&unknown.to_string()), "{message}");
}

// ---------------------------------------------------------------------------
// conversations: patch, delete
// ---------------------------------------------------------------------------

#[tokio::test]
async fn patch_sets_present_fields_clears_nulls_and_leaves_absent_ones() {
    let (_mock, app) = start().await;
    let c = create_conversation(&app, full_settings()).await;
    let id = c["id"].as_str().expect("id");
    let path = format!("/api/conversations/{id}");

    let patch = json!({"title": "Renamed", "model": null, "temperature": 1.5, "thinking": null});
    let patched = ok_json(&send_json(&app, Method::PATCH, &path, &patch).await, 200);
    let mut expected = c.clone();
    expected["title"] = json!("Renamed");
    expected["model"] = Value::Null;
    expected["temperature"] = json!(1.5);
    expected["thinking"] = Value::Null;
    expected["updated_at"] = patched["updated_at"].clone();
    assert_eq!(patched, expected);
    assert!(assert_rfc3339(&patched["updated_at"]) >= assert_rfc3339(&c["updated_at"]));
    assert_eq!(ok_json(&get(&app, &path).await, 200), patched);

    // An empty patch changes nothing.
    let same = ok_json(&send_json(&app, Method::PATCH, &path, &json!({})).await, 200);
    for field in [
        "id",
        "title",
        "model",
        "system_prompt",
        "temperature",
        "max_tokens",
        "thinking",
        "created_at",
    ] {
        assert_eq!(same[field], patched[field], "{field}");
    }

    // Clearing everything, then setting again.
    let clear = json!({"title": null, "system_prompt": null, "temperature": null, "max_tokens": null});
    let cleared = ok_json(&send_json(&app, Method::PATCH, &path, &clear).await, 200);
    for field in [
        "title",
        "model",
        "system_prompt",
        "temperature",
        "max_tokens",
        "thinking",
    ] {
        assert_eq!(cleared[field], Value::Null, "{field}");
    }
    let set_again = json!({"model": "m2", "max_tokens": 9, "thinking": false});
    let again = ok_json(&send_json(&app, Method::PATCH, &path, &set_again).await, 200);
    assert_eq!(
        (
            &again["model"],
            &again["max_tokens"],
            &again["thinking"],
            &again["title"]
        ),
        (&json!("m2"), &json!(9), &json!(false), &Value::Null)
    );

    let pool = app.db().await;
    let row: (Option<String>, Option<String>, Option<i64>, Option<bool>) =
        sqlx::query_as("SELECT title, model, max_tokens, thinking FROM conversations WHERE id = ?")
            .bind(id)
            .fetch_one(&pool)
            .await
            .expect("stored row");
    assert_eq!(row, (None, Some("m2".to_string()), Some(9), Some(false)));
}

#[tokio::test]
async fn patch_rejects_bad_input_and_leaves_the_row_alone() {
    let (_mock, app) = start().await;
    let c = create_conversation(&app, full_settings()).await;
    let path = format!("/api/conversations/{}", c["id"].as_str().expect("id"));

    for body in [
        json!({"temperature": 3}),
        json!({"temperature": -0.5}),
        json!({"max_tokens": 0}),
        json!({"model": "  "}),
    ] {
        let r = send_json(&app, Method::PATCH, &path, &body).await;
        assert_error(&r, 422, "validation_failed");
    }
    for body in [
        json!({"titel": "x"}),
        json!({"title": 5}),
        json!({"max_tokens": -1}),
        json!(["x"]),
    ] {
        let r = send_json(&app, Method::PATCH, &path, &body).await;
        assert_error(&r, 400, "invalid_request");
    }
    assert_eq!(
        ok_json(&get(&app, &path).await, 200),
        c,
        "a rejected patch changed the row"
    );

    let unknown = format!("/api/conversations/{}", uuid::Uuid::now_v7());
    let r = send_json(&app, Method::PATCH, &unknown, &json!({"title": "x"})).await;
    assert_error(&r, 404, "not_found");
    let r = send_json(&app, Method::PATCH, "/api/conversations/abc", &json!({"title": "x"})).await;
    assert_error(&r, 400, "invalid_id");
    assert_eq!(count(&app, "conversations").await, 1);
}

#[tokio::test]
async fn delete_conversation_is_204_then_404() {
    let (_mock, app) = start().await;
    let keep = create_conversation(&app, json!({"title": "keep"})).await;
    let c = create_conversation(&app, json!({"title": "drop"})).await;
    let path = format!("/api/conversations/{}", c["id"].as_str().expect("id"));

    let r = request(&app, Method::DELETE, &path, None, None).await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert_eq!(r.text, "");
    assert_error(&get(&app, &path).await, 404, "not_found");
    assert_error(
        &request(&app, Method::DELETE, &path, None, None).await,
        404,
        "not_found",
    );
    assert_error(
        &request(&app, Method::DELETE, "/api/conversations/abc", None, None).await,
        400,
        "invalid_id",
    );

    let keep_path = format!("/api/conversations/{}", keep["id"].as_str().expect("id"));
    assert_eq!(ok_json(&get(&app, &keep_path).await, 200), keep);
    assert_eq!(count(&app, "conversations").await, 1);
}

#[tokio::test]
async fn delete_conversation_removes_its_messages() {
    let (mock, app) = start().await;
    let dropped = chat_turn(&app, &mock, json!({"message": "first"}), &["one"]).await;
    let kept = chat_turn(&app, &mock, json!({"message": "second"}), &["two"]).await;
    let dropped_id = assert_uuid(&dropped["conversation_id"]);
    let kept_id = assert_uuid(&kept["conversation_id"]);
    assert_ne!(dropped_id, kept_id);
    assert_eq!(count_messages_of(&app, &dropped_id).await, 2);
    assert_eq!(count_messages_of(&app, &kept_id).await, 2);

    let r = request(
        &app,
        Method::DELETE,
        &format!("/api/conversations/{dropped_id}"),
        None,
        None,
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text);

    assert_eq!(count_messages_of(&app, &dropped_id).await, 0);
    assert_eq!(count_messages_of(&app, &kept_id).await, 2);
    assert_eq!(count(&app, "messages").await, 2);
    let r = get(&app, &format!("/api/conversations/{dropped_id}/messages")).await;
    assert_error(&r, 404, "not_found");
}

// ---------------------------------------------------------------------------
// conversations: list
// ---------------------------------------------------------------------------

fn ids(page: &Value) -> Vec<String> {
    page["conversations"]
        .as_array()
        .expect("conversations array")
        .iter()
        .map(|c| c["id"].as_str().expect("id").to_string())
        .collect()
}

#[tokio::test]
async fn list_is_newest_first_and_pages_with_next_before() {
    let (_mock, app) = start().await;
    let empty = ok_json(&get(&app, "/api/conversations").await, 200);
    assert_eq!(empty, json!({"conversations": [], "next_before": null}));

    // Created a, b, c; updated_at set so that the order is c, a, b.
    let mut made = Vec::new();
    for title in ["a", "b", "c"] {
        made.push(create_conversation(&app, json!({"title": title})).await);
    }
    let id = |i: usize| made[i]["id"].as_str().expect("id").to_string();
    set_updated_at(&app, &id(0), 2_000).await;
    set_updated_at(&app, &id(1), 1_000).await;
    set_updated_at(&app, &id(2), 3_000).await;

    let all = ok_json(&get(&app, "/api/conversations").await, 200);
    assert_eq!(keys(&all), set(&["conversations", "next_before"]));
    assert_eq!(ids(&all), [id(2), id(0), id(1)]);
    assert_eq!(all["next_before"], Value::Null);
    assert_eq!(all["conversations"][0]["title"], "c");
    assert_eq!(keys(&all["conversations"][0]), set(CONVERSATION_KEYS));
    assert_eq!(all["conversations"][0]["updated_at"], "1970-01-01T00:00:03.000Z");

    let first = ok_json(&get(&app, "/api/conversations?limit=2").await, 200);
    assert_eq!(ids(&first), [id(2), id(0)]);
    assert_eq!(first["next_before"], json!(id(0)));

    let second = ok_json(
        &get(&app, &format!("/api/conversations?limit=2&before={}", id(0))).await,
        200,
    );
    assert_eq!(ids(&second), [id(1)]);
    assert_eq!(second["next_before"], Value::Null);

    // A full last page still names a cursor; the page after it is empty.
    let exact = ok_json(
        &get(&app, &format!("/api/conversations?limit=1&before={}", id(0))).await,
        200,
    );
    assert_eq!(ids(&exact), [id(1)]);
    assert_eq!(exact["next_before"], json!(id(1)));
    let after = ok_json(&get(&app, &format!("/api/conversations?before={}", id(1))).await, 200);
    assert_eq!(after, json!({"conversations": [], "next_before": null}));

    // Updating a conversation moves it to the front.
    let path = format!("/api/conversations/{}", id(1));
    ok_json(
        &send_json(&app, Method::PATCH, &path, &json!({"title": "b2"})).await,
        200,
    );
    let all = ok_json(&get(&app, "/api/conversations").await, 200);
    assert_eq!(ids(&all), [id(1), id(2), id(0)]);
}

#[tokio::test]
async fn list_pages_through_ties_in_updated_at_without_gaps() {
    let (_mock, app) = start().await;
    let mut all_ids = BTreeSet::new();
    for i in 0..5 {
        let c = create_conversation(&app, json!({"title": format!("t{i}")})).await;
        let id = c["id"].as_str().expect("id").to_string();
        set_updated_at(&app, &id, 5_000).await;
        all_ids.insert(id);
    }
    let mut seen = Vec::new();
    let mut path = "/api/conversations?limit=2".to_string();
    loop {
        let page = ok_json(&get(&app, &path).await, 200);
        seen.extend(ids(&page));
        match page["next_before"].as_str() {
            Some(cursor) => path = format!("/api/conversations?limit=2&before={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), all_ids);
}

#[tokio::test]
async fn list_rejects_bad_queries() {
    let (_mock, app) = start().await;
    create_conversation(&app, json!({"title": "x"})).await;
    for query in ["limit=0", "limit=201", "limit=-1"] {
        let r = get(&app, &format!("/api/conversations?{query}")).await;
        assert_error(&r, 422, "validation_failed");
    }
    assert_eq!(
        ids(&ok_json(&get(&app, "/api/conversations?limit=200").await, 200)).len(),
        1
    );
    assert_eq!(
        ids(&ok_json(&get(&app, "/api/conversations?limit=1").await, 200)).len(),
        1
    );

    assert_error(&get(&app, "/api/conversations?limit=abc").await, 400, "invalid_request");
    assert_error(
        &get(&app, "/api/conversations?before=not-a-uuid").await,
        400,
        "invalid_id",
    );
    let unknown = uuid::Uuid::now_v7();
    let r = get(&app, &format!("/api/conversations?before={unknown}")).await;
    assert_error(&r, 404, "not_found");
    let message = assert_error(&get(&app, "/api/conversations?page=2").await, 400, "invalid_request");
    assert!(message.contains("page"), "{message}");
}

// ---------------------------------------------------------------------------
// messages and chat-created conversations
// ---------------------------------------------------------------------------

#[tokio::test]
async fn messages_after_a_chat_turn_are_user_then_assistant() {
    let (mock, app) = start().await;
    let done = chat_turn(&app, &mock, json!({"message": "Hello"}), &["Hi", " there"]).await;
    let conversation_id = assert_uuid(&done["conversation_id"]);
    let assistant_id = assert_uuid(&done["message_id"]);

    let body = ok_json(
        &get(&app, &format!("/api/conversations/{conversation_id}/messages")).await,
        200,
    );
    assert_eq!(keys(&body), set(&["messages", "next_before"]));
    assert_eq!(body["next_before"], Value::Null);
    let messages = body["messages"].as_array().expect("messages array");
    assert_eq!(messages.len(), 2, "{body:#}");
    let (user, assistant) = (&messages[0], &messages[1]);
    let listed_keys: Vec<&str> = MESSAGE_KEYS.iter().copied().filter(|k| *k != "steps").collect();
    for m in messages {
        assert_eq!(keys(m), set(&listed_keys), "a listed message has no steps: {m}");
        assert_eq!(m["conversation_id"], json!(conversation_id));
        assert_uuid(&m["id"]);
        assert_rfc3339(&m["created_at"]);
        assert_rfc3339(&m["updated_at"]);
    }

    assert_eq!(user["role"], "user");
    assert_eq!(user["content"], "Hello");
    assert_eq!(user["status"], "complete");
    assert_eq!(user["usage"], Value::Null);
    assert!(assert_rfc3339(&user["created_at"]) <= assert_rfc3339(&assistant["created_at"]));

    assert_eq!(assistant["id"], json!(assistant_id));
    assert_eq!(assistant["role"], "assistant");
    assert_eq!(assistant["content"], "Hi there");
    assert_eq!(assistant["status"], "complete");
    assert_eq!(assistant["finish_reason"], "stop");
    assert_eq!(assistant["model"], "mock-model");
    assert_eq!(
        assistant["usage"],
        json!({"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7})
    );
    assert_eq!(
        (&assistant["reasoning"], &assistant["tool_calls"], &assistant["error"]),
        (&Value::Null, &Value::Null, &Value::Null)
    );

    // With ?steps=true, and on the single-message route, the steps are there.
    let stepped = ok_json(
        &get(
            &app,
            &format!("/api/conversations/{conversation_id}/messages?steps=true"),
        )
        .await,
        200,
    );
    let reply_steps = json!([{"id": "step-0", "index": 0, "type": "text", "content": "Hi there", "round": 0}]);
    let stepped = stepped["messages"].as_array().expect("messages array");
    for (listed, with_steps) in messages.iter().zip(stepped) {
        let mut with_steps = with_steps.clone();
        let steps = with_steps.as_object_mut().expect("object").remove("steps");
        let expected = if listed["role"] == "user" {
            json!([])
        } else {
            reply_steps.clone()
        };
        assert_eq!(steps, Some(expected));
        assert_eq!(&with_steps, listed, "the same message otherwise");
    }
    let user_id = user["id"].as_str().expect("id");
    let one = ok_json(
        &get(
            &app,
            &format!("/api/conversations/{conversation_id}/messages/{assistant_id}"),
        )
        .await,
        200,
    );
    assert_eq!(keys(&one), set(MESSAGE_KEYS));
    assert_eq!(one, stepped[1]);
    let one = ok_json(
        &get(
            &app,
            &format!("/api/conversations/{conversation_id}/messages/{user_id}"),
        )
        .await,
        200,
    );
    assert_eq!(one, stepped[0]);

    let unknown = uuid::Uuid::now_v7();
    assert_error(
        &get(&app, &format!("/api/conversations/{unknown}/messages")).await,
        404,
        "not_found",
    );
    assert_error(&get(&app, "/api/conversations/abc/messages").await, 400, "invalid_id");
    assert_error(
        &get(
            &app,
            &format!("/api/conversations/{conversation_id}/messages?steps=yes"),
        )
        .await,
        400,
        "invalid_request",
    );
    // One message: of this conversation only.
    let other = create_conversation(&app, json!({})).await;
    let other_id = other["id"].as_str().expect("id");
    for path in [
        format!("/api/conversations/{other_id}/messages/{assistant_id}"),
        format!("/api/conversations/{conversation_id}/messages/{unknown}"),
        format!("/api/conversations/{unknown}/messages/{assistant_id}"),
    ] {
        assert_error(&get(&app, &path).await, 404, "not_found");
    }
    assert_error(
        &get(&app, &format!("/api/conversations/{conversation_id}/messages/nope")).await,
        400,
        "invalid_id",
    );
}

/// What identifies a listed message: a user message by its text, a reply by its id.
fn message_key(m: &Value) -> String {
    match m["role"].as_str() {
        Some("user") => m["content"].as_str().expect("content").to_string(),
        _ => m["id"].as_str().expect("id").to_string(),
    }
}

#[tokio::test]
async fn messages_come_newest_page_first_and_walk_back_to_the_first() {
    let (mock, app) = start().await;
    let first = chat_turn(&app, &mock, json!({"message": "m000"}), &["r"]).await;
    let id = assert_uuid(&first["conversation_id"]);
    let mut expected = vec!["m000".to_string(), assert_uuid(&first["message_id"])];
    for i in 1..60 {
        let text = format!("m{i:03}");
        let done = chat_turn(&app, &mock, json!({"message": text, "conversation_id": id}), &["r"]).await;
        expected.extend([text, assert_uuid(&done["message_id"])]);
    }
    assert_eq!(expected.len(), 120);
    let path = format!("/api/conversations/{id}/messages");

    // The default page: the newest 50, oldest first; walking `next_before`
    // back gives 50, 50 and 20, with neither overlap nor gap.
    let mut pages: Vec<Vec<String>> = Vec::new();
    let mut cursors = Vec::new();
    let mut query = String::new();
    loop {
        let page = ok_json(&get(&app, &format!("{path}{query}")).await, 200);
        let messages = page["messages"].as_array().expect("messages");
        assert!(messages.iter().all(|m| m.get("steps").is_none()), "no steps by default");
        pages.push(messages.iter().map(message_key).collect());
        match page["next_before"].as_str() {
            Some(before) => {
                assert_eq!(before, messages[0]["id"], "next_before is the page's oldest message");
                cursors.push(before.to_string());
                query = format!("?before={before}");
            }
            None => break,
        }
        assert!(pages.len() < 10, "next_before never ran out");
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [50, 50, 20]);
    assert_eq!(pages[0], expected[70..]);
    assert_eq!(pages[1], expected[20..70]);
    assert_eq!(pages[2], expected[..20]);
    assert_eq!(cursors.len(), 2);

    // Named limits, with the same cursor, and with the steps.
    let page = ok_json(&get(&app, &format!("{path}?limit=200")).await, 200);
    assert_eq!(page["messages"].as_array().expect("messages").len(), 120);
    assert_eq!(page["next_before"], Value::Null);
    let page = ok_json(&get(&app, &format!("{path}?limit=1&before={}", cursors[1])).await, 200);
    let messages = page["messages"].as_array().expect("messages");
    assert_eq!(messages.iter().map(message_key).collect::<Vec<_>>(), expected[19..20]);
    assert_eq!(page["next_before"], messages[0]["id"]);
    let page = ok_json(&get(&app, &format!("{path}?limit=2&steps=true")).await, 200);
    let messages = page["messages"].as_array().expect("messages");
    assert_eq!(messages[0]["steps"], json!([]));
    assert_eq!(
        messages[1]["steps"],
        json!([{"id": "step-0", "index": 0, "type": "text", "content": "r", "round": 0}])
    );

    // Bad values: the answers of the conversations list.
    for limit in ["0", "201", "-1"] {
        let message = assert_error(
            &get(&app, &format!("{path}?limit={limit}")).await,
            422,
            "validation_failed",
        );
        assert_eq!(message, format!("limit must be between 1 and 200, got {limit}"));
    }
    assert_error(&get(&app, &format!("{path}?limit=ten")).await, 400, "invalid_request");
    assert_error(&get(&app, &format!("{path}?before=nope")).await, 400, "invalid_id");
    assert_error(&get(&app, &format!("{path}?page=2")).await, 400, "invalid_request");
    let unknown = uuid::Uuid::now_v7();
    let message = assert_error(&get(&app, &format!("{path}?before={unknown}")).await, 404, "not_found");
    assert!(message.contains("message of this conversation"), "{message}");
    // A message of another conversation is no cursor here.
    let other = chat_turn(&app, &mock, json!({"message": "elsewhere"}), &["r"]).await;
    let foreign = assert_uuid(&other["message_id"]);
    assert_error(&get(&app, &format!("{path}?before={foreign}")).await, 404, "not_found");
}

#[tokio::test]
async fn messages_of_a_conversation_without_turns_is_empty() {
    let (_mock, app) = start().await;
    let c = create_conversation(&app, json!({})).await;
    let path = format!("/api/conversations/{}/messages", c["id"].as_str().expect("id"));
    assert_eq!(
        ok_json(&get(&app, &path).await, 200),
        json!({"messages": [], "next_before": null})
    );
}

#[tokio::test]
async fn chat_created_conversation_is_titled_from_the_first_line() {
    let (mock, app) = start().await;
    let done = chat_turn(&app, &mock, json!({"message": "Hello there\nsecond line"}), &["a"]).await;
    let c = ok_json(
        &get(
            &app,
            &format!("/api/conversations/{}", done["conversation_id"].as_str().expect("id")),
        )
        .await,
        200,
    );
    assert_eq!(c["title"], "Hello there");
    assert_eq!(done["suggested_title"], "Hello there");

    let long_line = "abcdefghij".repeat(6);
    let done = chat_turn(&app, &mock, json!({"message": format!("{long_line}\nmore")}), &["b"]).await;
    let c = ok_json(
        &get(
            &app,
            &format!("/api/conversations/{}", done["conversation_id"].as_str().expect("id")),
        )
        .await,
        200,
    );
    assert_eq!(c["title"], json!(&long_line[..50]));
}

#[tokio::test]
async fn chat_stores_request_settings_on_a_new_conversation() {
    let (mock, app) = start().await;
    let body = json!({"message": "hi", "model": "other-model", "system_prompt": "Be brief.",
                      "temperature": 0.5, "max_tokens": 64, "thinking": false});
    let done = chat_turn(&app, &mock, body, &["ok"]).await;
    let c = ok_json(
        &get(
            &app,
            &format!("/api/conversations/{}", done["conversation_id"].as_str().expect("id")),
        )
        .await,
        200,
    );
    assert_eq!(
        (
            &c["model"],
            &c["system_prompt"],
            &c["temperature"],
            &c["max_tokens"],
            &c["thinking"]
        ),
        (
            &json!("other-model"),
            &json!("Be brief."),
            &json!(0.5),
            &json!(64),
            &json!(false)
        )
    );
    let sent = mock.received();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["model"], "other-model");
    assert_eq!(
        sent[0]["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
}

#[tokio::test]
async fn chat_uses_the_conversation_settings_and_a_request_model_overrides_once() {
    let (mock, app) = start().await;
    let c = create_conversation(
        &app,
        json!({"model": "conv-model", "system_prompt": "Speak like a pirate."}),
    )
    .await;
    let id = c["id"].as_str().expect("id");

    let done = chat_turn(
        &app,
        &mock,
        json!({"message": "Hello", "conversation_id": id}),
        &["Arr"],
    )
    .await;
    assert_eq!(done["conversation_id"], json!(id));
    assert_eq!(done["suggested_title"], Value::Null);
    let sent = mock.received();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["model"], "conv-model");
    assert_eq!(
        sent[0]["messages"][0],
        json!({"role": "system", "content": "Speak like a pirate."})
    );
    assert_eq!(sent[0]["messages"][1], json!({"role": "user", "content": "Hello"}));

    let body = json!({"message": "Again", "conversation_id": id, "model": "override-model"});
    chat_turn(&app, &mock, body, &["Aye"]).await;
    let sent = mock.received();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1]["model"], "override-model");
    assert_eq!(
        sent[1]["messages"][0],
        json!({"role": "system", "content": "Speak like a pirate."})
    );

    let stored = ok_json(&get(&app, &format!("/api/conversations/{id}")).await, 200);
    assert_eq!(stored["model"], "conv-model");
    assert_eq!(stored["system_prompt"], "Speak like a pirate.");
    assert_eq!(
        stored["title"],
        Value::Null,
        "a chat does not retitle an existing conversation"
    );

    let messages = ok_json(&get(&app, &format!("/api/conversations/{id}/messages")).await, 200);
    let models: Vec<&Value> = messages["messages"]
        .as_array()
        .expect("array")
        .iter()
        .map(|m| &m["model"])
        .collect();
    assert_eq!(models[1], &json!("conv-model"));
    assert_eq!(models[3], &json!("override-model"));
    assert_eq!(count_messages_of(&app, id).await, 4);
}
