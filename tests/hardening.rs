//! Regression tests of issue 21 (hardening): what a hostile client or a
//! careless deletion could do to chatd, over real HTTP with the mock
//! upstream and a real SQLite file.

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use support::TestApp;
use support::mock::{self, MockUpstream, full_text, slow_text};
use support::sse::{next, rest, shape};

/// Item 1: deleting a conversation while its reply streams cancels that
/// reply, and costs none of the 29 other streaming replies a stored event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_streaming_conversation_cancels_it_and_every_other_reply_is_stored_exactly() {
    const N: usize = 30;
    let upstream = MockUpstream::start().await;
    for _ in 0..N {
        upstream.push(slow_text(40, 25));
    }
    let app = Arc::new(TestApp::start(&upstream.base_url).await);
    let mut streams = Vec::new();
    for i in 0..N {
        let mut stream = app.stream_chat(json!({"message": format!("m{i}")})).await;
        let start = next(&mut stream).await;
        assert_eq!(start.event, "start");
        streams.push((start, stream));
    }
    let (doomed_start, mut doomed_stream) = streams.remove(0);
    // Mid-stream: the doomed reply has sent some text.
    let first = next(&mut doomed_stream).await;
    assert_eq!(first.event, "process_step");
    let conversation_id = doomed_start.data["conversation_id"].as_str().expect("id").to_string();
    let (status, _) = app
        .send(
            reqwest::Method::DELETE,
            &format!("/api/conversations/{conversation_id}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    // The delete waited for the reply to end: it was cancelled.
    let tail = rest(&mut doomed_stream).await;
    let end = tail.last().expect("a terminal event");
    assert_eq!(
        (end.event.as_str(), &end.data["finish_reason"]),
        ("done", &json!("cancelled"))
    );
    assert_eq!(app.chat.running(), N - 1);
    let (status, body) = app.get(&format!("/api/conversations/{conversation_id}")).await;
    assert_eq!((status, &body["error"]["code"]), (404, &json!("not_found")));

    let mut lives = Vec::new();
    for (start, mut stream) in streams {
        let mut live = vec![start];
        live.extend(rest(&mut stream).await);
        assert_eq!(live.last().expect("end").event, "done");
        lives.push(live);
    }
    app.chat.store().flush().await;
    for live in lives {
        let id = live[0].message_id();
        assert_eq!(app.stored_events(&id).await, shape(&live), "reply {id}");
        assert_eq!(app.message_row(&id).await["content"], full_text(40));
    }
    assert!(app.stored_events(doomed_start.message_id().as_str()).await.is_empty());
}

/// Item 2: a request's model name and a model's tool name never become
/// metric labels unless configured or registered, and names are capped.
#[tokio::test]
async fn metric_labels_come_only_from_configured_models_and_registered_tools() {
    let upstream = MockUpstream::start().await;
    upstream.push(mock::tool_reply(&[("c1", "no_such_tool_4711", "{}")], 4, 2));
    upstream.push(mock::text_reply(&["ok"], 5, 1));
    let app = TestApp::start(&upstream.base_url).await;

    let huge = "m".repeat(300_000);
    let r = app.post_chat(&json!({"message": "hi", "model": huge})).await;
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "validation_failed");
    assert_eq!(body["error"]["message"], "model must be at most 256 bytes, got 300000");
    let r = app
        .post_chat(&json!({"message": "hi", "provider": "p".repeat(257)}))
        .await;
    assert_eq!(r.status(), 422);

    let events = app
        .chat(json!({"message": "hi", "model": "free-form-model-4711"}))
        .await;
    assert_eq!(events.last().expect("end").event, "done");
    let text = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    assert!(!text.contains("free-form-model-4711"), "{text}");
    assert!(!text.contains("no_such_tool_4711"), "{text}");
    assert!(
        text.contains("chatd_tokens_total{model=\"other\",direction=\"prompt\"} 9"),
        "{text}"
    );
    assert!(
        text.contains("chatd_tool_calls_total{tool=\"unknown\",outcome=\"failure\"} 1"),
        "{text}"
    );
}

/// Item 7 (free text): titles, system prompts and approval reasons have
/// length caps with 422s that say what to fix.
#[tokio::test]
async fn free_text_fields_are_capped_with_422s() {
    let upstream = MockUpstream::start().await;
    let app = TestApp::start(&upstream.base_url).await;
    let long_title = "t".repeat(1025);
    let (status, body) = app
        .send(
            reqwest::Method::POST,
            "/api/conversations",
            Some(json!({"title": long_title})),
        )
        .await;
    assert_eq!(
        (status, &body["error"]["message"]),
        (422, &json!("title must be at most 1024 bytes, got 1025"))
    );
    let (status, body) = app
        .send(
            reqwest::Method::POST,
            "/api/conversations",
            Some(json!({"system_prompt": "s".repeat(65 * 1024)})),
        )
        .await;
    assert_eq!((status, &body["error"]["code"]), (422, &json!("validation_failed")));
    let (status, created) = app
        .send(
            reqwest::Method::POST,
            "/api/conversations",
            Some(json!({"title": "ok"})),
        )
        .await;
    assert_eq!(status, 201);
    let id = created["id"].as_str().expect("id");
    let (status, _) = app
        .send(
            reqwest::Method::PATCH,
            &format!("/api/conversations/{id}"),
            Some(json!({"system_prompt": "s".repeat(65 * 1024)})),
        )
        .await;
    assert_eq!(status, 422);
    let r = app
        .post_chat(&json!({"message": "hi", "system_prompt": "s".repeat(65 * 1024)}))
        .await;
    assert_eq!(r.status(), 422);
    let (status, body) = app
        .approve(
            &uuid::Uuid::now_v7().to_string(),
            json!({"tool_call_id": "c1", "approved": false, "reason": "r".repeat(5000)}),
        )
        .await;
    assert_eq!((status, &body["error"]["code"]), (422, &json!("validation_failed")));
    // Nothing was stored by the refused requests.
    let (_, list) = app.get("/api/conversations").await;
    assert_eq!(list["conversations"].as_array().expect("list").len(), 1);
}

/// Reads from `tcp` until the server closes the connection; what was read.
/// Panics if the connection is still open after `within`.
async fn read_until_closed(tcp: &mut tokio::net::TcpStream, within: Duration) -> String {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let closed = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&seen).to_string();
    assert!(
        closed.is_ok(),
        "the connection was still open after {within:?}; read {text:?}"
    );
    text
}

async fn connect(app: &TestApp) -> tokio::net::TcpStream {
    let addr = app.base.trim_start_matches("http://");
    tokio::net::TcpStream::connect(addr).await.expect("connect")
}

/// Item 3: an incomplete request head is cut at the header read timeout; a
/// trickled body gets 408 at the body timeout; an idle keep-alive
/// connection is closed, but a live SSE stream longer than that timeout is
/// not cut.
#[tokio::test]
async fn slow_heads_trickled_bodies_and_idle_connections_are_closed_but_streams_are_not() {
    use tokio::io::AsyncWriteExt;
    let upstream = MockUpstream::start().await;
    upstream.push(slow_text(20, 50));
    let app = TestApp::start_tweaked(&upstream.base_url, |c| {
        c.http.header_read_timeout_ms = 400;
        c.http.keep_alive_timeout_ms = 300;
        c.http.body_timeout_ms = 400;
    })
    .await;

    let mut slow_head = connect(&app).await;
    slow_head
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    read_until_closed(&mut slow_head, Duration::from_secs(3)).await;

    let mut trickle = connect(&app).await;
    trickle
        .write_all(
            b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"message\":",
        )
        .await
        .expect("write");
    let answer = read_until_closed(&mut trickle, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");

    let mut idle = connect(&app).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let answer = read_until_closed(&mut idle, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // 20 pieces 50 ms apart: a stream three times the keep-alive timeout.
    let events = app.chat(json!({"message": "long"})).await;
    assert_eq!(events.last().expect("end").event, "done");
    let id = events[0].message_id();
    assert_eq!(app.wait_final(&id).await["content"], full_text(20));
}

/// Item 3: past `http.max_connections`, a new connection waits until an
/// open one closes.
#[tokio::test]
async fn connections_past_the_cap_wait_for_a_free_slot() {
    use tokio::io::AsyncWriteExt;
    let upstream = MockUpstream::start().await;
    let app = TestApp::start_tweaked(&upstream.base_url, |c| c.http.max_connections = 2).await;
    let first = connect(&app).await;
    let _second = connect(&app).await;
    let mut third = connect(&app).await;
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(500), async {
        use tokio::io::AsyncReadExt;
        third.read(&mut buf).await
    })
    .await;
    assert!(early.is_err(), "the third connection was served past the cap");
    drop(first);
    let answer = read_until_closed(&mut third, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// Item 10: a client's `x-request-id` is echoed only when it is a short
/// token of safe characters; anything else is replaced by a fresh UUID.
#[tokio::test]
async fn forged_request_ids_are_replaced() {
    let upstream = MockUpstream::start().await;
    let app = TestApp::start(&upstream.base_url).await;
    let echoed = |value: &'static str| {
        let request = app.http.get(app.url("/healthz")).header("x-request-id", value);
        async move {
            let r = request.send().await.expect("get");
            r.headers()["x-request-id"].to_str().expect("id").to_string()
        }
    };
    assert_eq!(echoed("trace-01.a_b:c").await, "trace-01.a_b:c");
    for forged in [
        "id\" level=ERROR msg=\"forged",
        "a b",
        "x;y",
        Box::leak("z".repeat(65).into_boxed_str()),
    ] {
        let id = echoed(forged).await;
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{forged:?} became {id:?}");
    }
}

/// Item 11: the `Bearer` scheme in any letter case (RFC 7235).
#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    const KEY: &str = "test-key-0123456789abcdef";
    let upstream = MockUpstream::start().await;
    let app = TestApp::start_tweaked(&upstream.base_url, |c| c.api_keys = vec![KEY.into()]).await;
    for (authorization, status) in [
        (format!("Bearer {KEY}"), 200),
        (format!("bearer {KEY}"), 200),
        (format!("BEARER  {KEY}"), 200),
        (format!("Basic {KEY}"), 401),
        (KEY.to_string(), 401),
    ] {
        let r = app
            .http
            .get(app.url("/api/conversations"))
            .header("authorization", &authorization)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), status, "{authorization}");
    }
}

/// Item 11: the real binary warns at start when authentication is off.
#[tokio::test]
async fn the_binary_warns_when_authentication_is_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = support::closed_port();
    let config = dir.path().join("chatd.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndatabase_url = \"sqlite://{}\"\n",
            dir.path().join("chatd.db").display()
        ),
    )
    .expect("config");
    let log = dir.path().join("chatd.log");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_chatd"))
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env("RUST_LOG", "warn")
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn chatd");
    let http = support::http_client();
    let mut up = false;
    for _ in 0..200 {
        if http
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let _ = child.kill().await;
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(up, "chatd did not start: {text}");
    assert!(text.contains("authentication is off"), "{text}");
}

/// `GET /api/chat/{message_id}/events` with `key`; the status is the
/// caller's to check.
async fn resume_with(app: &TestApp, key: &str, message_id: &str) -> reqwest::Response {
    app.http
        .get(app.url(&format!("/api/chat/{message_id}/events")))
        .bearer_auth(key)
        .send()
        .await
        .expect("resume")
}

/// Checks a 429 `too_many_streams` answer naming the limit, with `Retry-After`.
async fn assert_too_many_streams(r: reqwest::Response, limit: u32) {
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let body: Value = r.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "too_many_streams");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains(&format!("{limit} event streams open (limits.concurrent_streams)")),
        "{message}"
    );
}

/// Item 7: a key holds at most `limits.concurrent_streams` SSE responses
/// (its chat streams and resumes) at once; one more gets 429
/// `too_many_streams`, a refused chat starts no reply, a closed stream frees
/// its slot, and another key is not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sse_streams_per_key_are_capped() {
    const A: &str = "stream-key-a-0123456789";
    const B: &str = "stream-key-b-0123456789";
    let upstream = MockUpstream::start().await;
    upstream.push(slow_text(150, 20));
    let app = TestApp::start_tweaked(&upstream.base_url, |c| {
        c.api_keys = vec![A.into(), B.into()];
        c.limits.concurrent_streams = 3;
    })
    .await;
    let chat = app.post_chat_as(A, &json!({"message": "slow"})).await;
    assert_eq!(chat.status(), 200);
    let mut chat = support::sse::events_of(chat);
    let start = next(&mut chat).await;
    let message_id = start.message_id();
    // The chat stream and two resumes: three streams of key A.
    let mut resumes = Vec::new();
    for _ in 0..2 {
        let r = resume_with(&app, A, &message_id).await;
        assert_eq!(r.status(), 200);
        let mut events = support::sse::events_of(r);
        assert_eq!(next(&mut events).await.event, "start");
        resumes.push(events);
    }
    assert_too_many_streams(resume_with(&app, A, &message_id).await, 3).await;
    // A refused chat commits no turn and asks the upstream nothing.
    assert_too_many_streams(app.post_chat_as(A, &json!({"message": "one too many"})).await, 3).await;
    let messages: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM messages")
        .fetch_one(&app.db().await)
        .await
        .expect("count");
    assert_eq!(messages, 2);
    assert_eq!(upstream.received().len(), 1);
    // Another key has its own streams.
    let r = resume_with(&app, B, &message_id).await;
    assert_eq!(r.status(), 200);
    let mut other = support::sse::events_of(r);
    assert_eq!(next(&mut other).await.event, "start");
    // Closing one of A's streams frees its slot once the server sees it gone
    // (at its next write: a token every 20 ms).
    drop(resumes.pop());
    let mut accepted = None;
    for _ in 0..250 {
        let r = resume_with(&app, A, &message_id).await;
        if r.status() == 200 {
            accepted = Some(r);
            break;
        }
        assert_too_many_streams(r, 3).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut again = support::sse::events_of(accepted.expect("a slot freed by the closed stream"));
    assert_eq!(next(&mut again).await.event, "start");
    assert_too_many_streams(resume_with(&app, A, &message_id).await, 3).await;
    // Every stream still reads the whole reply.
    let end = rest(&mut again).await;
    assert_eq!(end.last().expect("end").event, "done");
}
