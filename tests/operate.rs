//! Operating chatd: API keys, start-up refusal, CORS, rate limits, size
//! limits, request ids, /metrics, and the deployment files.

mod support;

use std::time::Duration;

use chatd::config::Config;
use serde_json::{Value, json};
use support::TestApp;
use support::mock::{self, MockUpstream};

const KEY: &str = "test-key-0123456789abcdef";

async fn keyed_app(upstream: &MockUpstream, tweak: impl FnOnce(&mut Config)) -> TestApp {
    TestApp::start_tweaked(&upstream.base_url, |c| {
        c.api_keys = vec![KEY.into()];
        tweak(c);
    })
    .await
}

/// POSTs `/api/chat` with `message` and the right key.
async fn keyed_chat(app: &TestApp, message: &str) -> reqwest::Response {
    app.post_chat_as(KEY, &json!({"message": message})).await
}

#[tokio::test]
async fn api_keys_guard_every_route_but_health() {
    let upstream = MockUpstream::start().await;
    upstream.push(mock::text_reply(&["hi"], 1, 1));
    let app = keyed_app(&upstream, |_| {}).await;
    let r = app.http.get(app.url("/api/conversations")).send().await.expect("get");
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "unauthorized");
    let r = app
        .http
        .get(app.url("/api/conversations"))
        .bearer_auth("wrong-key-0123456789")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 401);
    let r = app
        .http
        .get(app.url("/api/conversations"))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    for open in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            app.http.get(app.url(open)).send().await.expect("get").status(),
            200,
            "{open}"
        );
    }
    let r = app.post_chat(&json!({"message": "x"})).await;
    assert_eq!(r.status(), 401);
    assert!(upstream.received().is_empty());
    assert_eq!(keyed_chat(&app, "x").await.status(), 200);
}

#[test]
fn a_public_listen_address_needs_keys_or_auth_none() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| pairs.iter().find(|(name, _)| *name == k).map(|(_, v)| v.to_string())
    };
    let err = Config::load_with_env(None, env(&[("CHATD_LISTEN", "0.0.0.0:8080")])).expect_err("refused");
    assert!(err.to_string().contains("CHATD_API_KEYS"), "{err}");
    Config::load_with_env(None, env(&[("CHATD_LISTEN", "0.0.0.0:8080"), ("CHATD_AUTH", "none")])).expect("auth none");
    let c = Config::load_with_env(
        None,
        env(&[
            ("CHATD_LISTEN", "0.0.0.0:8080"),
            ("CHATD_API_KEYS", "aaaaaaaaaaaaaaaa1, bbbbbbbbbbbbbbbb2"),
        ]),
    )
    .expect("keys");
    assert_eq!(c.api_keys, ["aaaaaaaaaaaaaaaa1", "bbbbbbbbbbbbbbbb2"]);
    let err = Config::load_with_env(None, env(&[("CHATD_API_KEYS", "short")])).expect_err("short key");
    assert!(err.to_string().contains("16 characters"), "{err}");
}

#[test]
fn the_binary_refuses_to_start_on_a_public_address_without_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chatd"))
        .arg("serve")
        .env("CHATD_LISTEN", "0.0.0.0:0")
        .env(
            "CHATD_DATABASE_URL",
            format!("sqlite://{}", dir.path().join("x.db").display()),
        )
        .env_remove("CHATD_API_KEYS")
        .env_remove("CHATD_AUTH")
        .output()
        .expect("run chatd");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not a loopback address") && stderr.contains("auth = \"none\""),
        "{stderr}"
    );
}

#[tokio::test]
async fn cors_preflight_allows_the_configured_origin_only() {
    let upstream = MockUpstream::start().await;
    let app = TestApp::start_tweaked(&upstream.base_url, |c| {
        c.http.cors_origins = vec!["https://chat.example.com".into()]
    })
    .await;
    let preflight = |origin: &'static str| {
        app.http
            .request(reqwest::Method::OPTIONS, app.url("/api/chat"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type,authorization")
            .send()
    };
    let r = preflight("https://chat.example.com").await.expect("preflight");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], "https://chat.example.com");
    let methods = r.headers()["access-control-allow-methods"]
        .to_str()
        .expect("methods")
        .to_lowercase();
    assert!(methods.contains("post"), "{methods}");
    let allowed = r.headers()["access-control-allow-headers"]
        .to_str()
        .expect("headers")
        .to_lowercase();
    assert!(
        allowed.contains("authorization") && allowed.contains("content-type"),
        "{allowed}"
    );
    let r = preflight("https://evil.example.com").await.expect("preflight");
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn a_burst_past_the_rate_limit_gets_429_with_retry_after() {
    let upstream = MockUpstream::start().await;
    let app = keyed_app(&upstream, |c| c.limits.requests_per_minute = 3).await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..5 {
        let r = app
            .http
            .get(app.url("/api/tools"))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("get");
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().expect("ascii").to_string());
            let body: Value = r.json().await.expect("json");
            assert_eq!(body["error"]["code"], "rate_limited");
        }
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    let secs: u64 = retry_after.expect("Retry-After").parse().expect("seconds");
    assert!((1..=60).contains(&secs), "{secs}");
}

#[tokio::test]
async fn concurrent_replies_per_key_are_limited() {
    let upstream = MockUpstream::start().await;
    let mut chunks: Vec<Value> = (0..20).map(|i| mock::content(&format!("{i} "))).collect();
    chunks.push(mock::finish("stop"));
    upstream.push(mock::sse_with_delay(&chunks, 30));
    upstream.push(mock::text_reply(&["later"], 1, 1));
    let app = keyed_app(&upstream, |c| c.limits.concurrent_replies = 1).await;
    let first = keyed_chat(&app, "1").await;
    assert_eq!(first.status(), 200);
    let r = keyed_chat(&app, "2").await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "too_many_replies");
    // Once the first reply ends, the slot is free again.
    let _ = first.text().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(keyed_chat(&app, "3").await.status(), 200);
}

#[tokio::test]
async fn a_conversation_past_its_message_limit_gets_422() {
    let upstream = MockUpstream::start().await;
    upstream.push(mock::text_reply(&["one"], 1, 1));
    let app = TestApp::start_tweaked(&upstream.base_url, |c| c.limits.max_conversation_messages = 3).await;
    let events = app.chat(json!({"message": "first"})).await;
    let conversation_id = events[0].data["conversation_id"].clone();
    let (status, body) = app
        .send(
            reqwest::Method::POST,
            "/api/chat",
            Some(json!({"message": "second", "conversation_id": conversation_id})),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["code"], "conversation_too_long");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("3 messages")
    );
}

#[tokio::test]
async fn request_ids_go_in_and_out() {
    let upstream = MockUpstream::start().await;
    let app = TestApp::start(&upstream.base_url).await;
    let r = app.http.get(app.url("/healthz")).send().await.expect("get");
    let id = r.headers()["x-request-id"].to_str().expect("id").to_string();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    let r = app
        .http
        .get(app.url("/healthz"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .expect("get");
    assert_eq!(r.headers()["x-request-id"], "abc-123");
}

#[tokio::test]
async fn metrics_after_a_reply() {
    let upstream = MockUpstream::start().await;
    upstream.push(mock::tool_reply(
        &[("c1", "calculator", r#"{"expression":"1+1"}"#)],
        4,
        2,
    ));
    upstream.push(mock::text_reply(&["2"], 5, 1));
    // A configured model: only those label metrics (issue 21).
    let app = TestApp::start_tweaked(&upstream.base_url, |c| c.llm.model = "metrics-model".into()).await;
    app.chat(json!({"message": "sum", "model": "metrics-model"})).await;
    let r = app.http.get(app.url("/metrics")).send().await.expect("get");
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .expect("ct")
            .starts_with("text/plain")
    );
    let text = r.text().await.expect("body");
    for needle in [
        "chatd_http_requests_total{method=\"POST\",route=\"/api/chat\",status=\"200\"}",
        "chatd_replies_total{outcome=\"complete\"}",
        "chatd_tokens_total{model=\"metrics-model\",direction=\"prompt\"} 9",
        "chatd_tokens_total{model=\"metrics-model\",direction=\"completion\"} 3",
        "chatd_tool_calls_total{tool=\"calculator\",outcome=\"success\"}",
        "chatd_time_to_first_token_seconds_bucket",
        "chatd_reply_duration_seconds_bucket",
        "chatd_db_write_seconds_bucket",
        "chatd_replies_active",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
}

#[test]
fn the_compose_file_and_dockerfile_have_what_deployment_needs() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let compose: Value =
        serde_norway::from_str(&std::fs::read_to_string(root.join("docker-compose.yml")).expect("compose file"))
            .expect("compose parses");
    let chatd = &compose["services"]["chatd"];
    assert_eq!(chatd["build"], ".");
    assert_eq!(chatd["volumes"], json!(["chatd-data:/data"]));
    assert!(compose["volumes"].get("chatd-data").is_some());
    assert!(chatd["healthcheck"]["test"].to_string().contains("/healthz"));
    let env = chatd["environment"].as_object().expect("environment map");
    for key in [
        "CHATD_LISTEN",
        "CHATD_DATABASE_URL",
        "CHATD_API_KEYS",
        "CHATD_LLM_BASE_URL",
        "CHATD_LLM_MODEL",
    ] {
        assert!(env.contains_key(key), "{key} passed by environment");
    }
    assert_eq!(compose["services"]["ollama"]["profiles"], json!(["local-llm"]));

    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).expect("Dockerfile");
    assert_eq!(
        dockerfile.matches("\nFROM ").count() + usize::from(dockerfile.starts_with("FROM ")),
        2,
        "multi-stage"
    );
    for needle in [
        "USER chatd",
        "VOLUME [\"/data\"]",
        "HEALTHCHECK",
        "/healthz",
        "--locked",
    ] {
        assert!(dockerfile.contains(needle), "Dockerfile has {needle}");
    }
}

#[tokio::test]
async fn project_ids_are_checked_and_fixed_at_creation() {
    let upstream = MockUpstream::start().await;
    upstream.push(mock::text_reply(&["ok"], 1, 1));
    let app = TestApp::start(&upstream.base_url).await;
    for bad in ["../etc", "", "a b", "x".repeat(65).as_str()] {
        let (status, body) = app
            .send(
                reqwest::Method::POST,
                "/api/chat",
                Some(json!({"message": "hi", "project_id": bad})),
            )
            .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (422, Some("validation_failed")),
            "{bad:?}"
        );
    }
    let events = app.chat(json!({"message": "hi", "project_id": "alpha"})).await;
    let id = events[0].data["conversation_id"].clone();
    let (_, conversation) = app
        .get(&format!("/api/conversations/{}", id.as_str().expect("id")))
        .await;
    assert_eq!(conversation["project_id"], "alpha");
    let (status, body) = app
        .send(
            reqwest::Method::POST,
            "/api/chat",
            Some(json!({"message": "hi", "conversation_id": id, "project_id": "beta"})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
}
