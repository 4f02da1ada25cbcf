//! Shared test harness: chatd's real router served on 127.0.0.1 with a real
//! SQLite file in a temp dir, an SSE client, and the mock upstream.

#![allow(dead_code)]

pub mod mock;

use std::sync::Arc;
use std::time::Duration;

use chatd::app::App;
use chatd::chat::ChatService;
use chatd::config::Config;
use chatd::tools::ToolRegistry;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::Value;
use sqlx::SqlitePool;

/// A plain HTTP client for tests (reqwest is built without a bundled TLS
/// crypto provider; install ring's first, as chatd does).
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// One received SSE event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub id: String,
    pub event: String,
    pub data: Value,
}

/// A running chatd on an ephemeral port.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub http: reqwest::Client,
    pub chat: Arc<ChatService>,
    pub db_path: std::path::PathBuf,
    upstream: String,
    dir: Arc<tempfile::TempDir>,
}

/// A config pointing at `upstream` with a fresh database in `dir`.
pub fn test_config(upstream: &str, dir: &tempfile::TempDir) -> Config {
    let mut config = Config::default();
    config.llm.base_url = upstream.to_string();
    config.llm.model = "mock-model".to_string();
    config.llm.idle_timeout_ms = 5_000;
    // One attempt: tests of error events expect the first failure to count.
    // Retry tests raise this.
    config.llm.max_attempts = 1;
    config.llm.retry_base_ms = 10;
    config.llm.retry_max_ms = 2_000;
    config.database_url = format!("sqlite://{}", dir.path().join("chatd.db").display());
    config
}

impl TestApp {
    /// chatd with defaults, talking to `upstream`.
    pub async fn start(upstream: &str) -> Self {
        Self::start_with(upstream, |_| {}, ToolRegistry::with_builtins()).await
    }

    /// chatd with `tweak` applied to the config and the given tools.
    pub async fn start_with(upstream: &str, tweak: impl FnOnce(&mut Config), tools: ToolRegistry) -> Self {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        Self::start_in(upstream, dir, tweak, tools).await
    }

    /// A second chatd on the same database file, as after a restart (this
    /// one keeps running; its memory is not shared). What this one queued
    /// for the database is committed first, as its shutdown would (`chatd
    /// serve` flushes the writer before it exits).
    pub async fn reopen(&self, tweak: impl FnOnce(&mut Config)) -> Self {
        self.chat.store().flush().await;
        Self::start_in(&self.upstream, self.dir.clone(), tweak, ToolRegistry::with_builtins()).await
    }

    async fn start_in(
        upstream: &str,
        dir: Arc<tempfile::TempDir>,
        tweak: impl FnOnce(&mut Config),
        tools: ToolRegistry,
    ) -> Self {
        let mut config = test_config(upstream, &dir);
        tweak(&mut config);
        let db_path = dir.path().join("chatd.db");
        let app = App::build_with_tools(config, tools).await.expect("app builds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = app.router;
        tokio::spawn(async move {
            let _ = axum::serve(chatd::http::listener(listener), router).await;
        });
        Self {
            base: format!("http://{addr}"),
            http: http_client(),
            chat: app.chat,
            db_path,
            upstream: upstream.to_string(),
            dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs `/api/chat` and reads the whole event stream.
    pub async fn chat(&self, body: Value) -> Vec<SseEvent> {
        let response = self
            .http
            .post(self.url("/api/chat"))
            .json(&body)
            .send()
            .await
            .expect("POST /api/chat");
        assert_eq!(
            response.status(),
            200,
            "POST /api/chat failed: {:?}",
            response.text().await
        );
        read_events(response, usize::MAX).await
    }

    /// GET returning (status, JSON body).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.expect("GET");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Sends `method` with a JSON body; returns (status, JSON body).
    pub async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, self.url(path));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let r = req.send().await.expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A separate connection pool on the same database file, for row checks.
    pub async fn db(&self) -> SqlitePool {
        SqlitePool::connect(&format!("sqlite://{}", self.db_path.display()))
            .await
            .expect("open db")
    }

    /// Waits until the message is no longer `streaming`; returns its row as JSON.
    pub async fn wait_final(&self, message_id: &str) -> Value {
        for _ in 0..200 {
            let row = self.message_row(message_id).await;
            if row["status"] != "streaming" {
                return row;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("message {message_id} still streaming");
    }

    /// The stored message with `id` as the API shows it (via the store).
    pub async fn message_row(&self, id: &str) -> Value {
        let id = uuid::Uuid::parse_str(id).expect("uuid");
        let row = self
            .chat
            .store()
            .message(id)
            .await
            .expect("query")
            .expect("message exists");
        serde_json::to_value(row).expect("json")
    }
}

/// Reads SSE events from `response` until the stream ends or `max` events.
pub async fn read_events(response: reqwest::Response, max: usize) -> Vec<SseEvent> {
    let mut stream = response.bytes_stream().eventsource();
    let mut out = Vec::new();
    while out.len() < max {
        let next = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("SSE stalled");
        let Some(event) = next else { break };
        let event = event.expect("SSE parse");
        out.push(SseEvent {
            id: event.id,
            event: event.event,
            data: serde_json::from_str(&event.data).expect("event data is JSON"),
        });
    }
    out
}

/// A live SSE stream read event by event (with [`next`] and [`rest`]).
pub fn events_of(response: reqwest::Response) -> impl futures::Stream<Item = SseEvent> + Unpin {
    Box::pin(response.bytes_stream().eventsource().map(|e| {
        let e = e.expect("SSE parse");
        SseEvent {
            id: e.id,
            event: e.event,
            data: serde_json::from_str(&e.data).expect("event data is JSON"),
        }
    }))
}

/// The next event of a live stream (20 s limit).
pub async fn next(stream: &mut (impl futures::Stream<Item = SseEvent> + Unpin)) -> SseEvent {
    tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("an event in time")
        .expect("an event")
}

/// Every remaining event of a live stream, until it ends (20 s limit per
/// event).
pub async fn rest(stream: &mut (impl futures::Stream<Item = SseEvent> + Unpin)) -> Vec<SseEvent> {
    let mut out = Vec::new();
    while let Some(e) = tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("the stream ends in time")
    {
        out.push(e);
    }
    out
}

/// The events as (name, data) pairs with the ids checked to count 1, 2, 3...
pub fn checked(events: &[SseEvent]) -> Vec<(String, Value)> {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.id, (i + 1).to_string(), "event ids count from 1: {events:#?}");
    }
    events.iter().map(|e| (e.event.clone(), e.data.clone())).collect()
}
