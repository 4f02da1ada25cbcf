//! Shared test harness: chatd's real router served on 127.0.0.1 with a real
//! SQLite file in a temp dir, an SSE client, the mock upstream and the
//! test-only tools.
//!
//! Each test file is its own crate and uses only part of this: hence the
//! `allow(dead_code)` (it covers the submodules too).

#![allow(dead_code)]

pub mod mock;
pub mod sse;
pub mod tools;

use std::sync::Arc;
use std::time::Duration;

use chatd::app::App;
use chatd::chat::ChatService;
use chatd::config::{Config, ProviderConfig};
use chatd::tools::ToolRegistry;
use serde_json::Value;
use sqlx::SqlitePool;
use sse::{SseEvent, events_of, rest};

/// A plain HTTP client for tests (reqwest is built without a bundled TLS
/// crypto provider; install ring's first, as chatd does).
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
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

/// A provider `name` at `base_url` serving `models`, with no key or headers.
pub fn provider(name: &str, base_url: &str, models: &[&str]) -> ProviderConfig {
    ProviderConfig {
        name: name.to_string(),
        base_url: base_url.to_string(),
        api_key: None,
        api_key_env: None,
        models: models.iter().map(|m| m.to_string()).collect(),
        default_model: None,
        headers: Default::default(),
    }
}

/// A 127.0.0.1 port nothing listens on (bound, then let go).
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// An upstream base URL on a port nothing listens on.
pub fn closed_port_url() -> String {
    format!("http://127.0.0.1:{}/v1", closed_port())
}

/// The `type` of every step of a stored message row, in order.
pub fn step_types(row: &Value) -> Vec<&str> {
    row["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["type"].as_str().expect("type"))
        .collect()
}

impl TestApp {
    /// chatd with defaults, talking to `upstream`.
    pub async fn start(upstream: &str) -> Self {
        Self::start_tweaked(upstream, |_| {}).await
    }

    /// chatd with `tweak` applied to the config and the built-in tools.
    pub async fn start_tweaked(upstream: &str, tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start_with(upstream, tweak, ToolRegistry::with_builtins()).await
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
        let limits = chatd::http::serve::ServeLimits::from_config(&config.http);
        let app = App::build_with_tools(config, tools).await.expect("app builds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = app.router;
        tokio::spawn(async move {
            let _ = chatd::http::serve::serve(listener, router, limits, std::future::pending()).await;
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

    /// POSTs `/api/chat`; the status is the caller's to check.
    pub async fn post_chat(&self, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url("/api/chat"))
            .json(body)
            .send()
            .await
            .expect("POST /api/chat")
    }

    /// POSTs `/api/chat` with the API key `key`; the status is the
    /// caller's to check.
    pub async fn post_chat_as(&self, key: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url("/api/chat"))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("POST /api/chat")
    }

    /// POSTs `/api/chat`, checks the 200, and returns the live event stream
    /// (read it with [`sse::next`], [`sse::take`], [`sse::rest`]).
    pub async fn stream_chat(&self, body: Value) -> impl futures::Stream<Item = SseEvent> + Unpin {
        let response = self.post_chat(&body).await;
        assert_eq!(
            response.status(),
            200,
            "POST /api/chat failed: {:?}",
            response.text().await
        );
        events_of(response)
    }

    /// POSTs `/api/chat` and reads the whole event stream.
    pub async fn chat(&self, body: Value) -> Vec<SseEvent> {
        rest(&mut self.stream_chat(body).await).await
    }

    /// POSTs a decision on a tool call of reply `message_id` to its
    /// `/approve`; returns (status, JSON body).
    pub async fn approve(&self, message_id: &str, body: Value) -> (u16, Value) {
        self.send(
            reqwest::Method::POST,
            &format!("/api/chat/{message_id}/approve"),
            Some(body),
        )
        .await
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

    /// The stored events of reply `message_id` (what an exact replay reads),
    /// in the shape of [`sse::shape`]: `(id, event, data)` per event.
    pub async fn stored_events(&self, message_id: &str) -> Vec<(String, String, Value)> {
        self.chat
            .store()
            .reply_events(message_id.parse().expect("uuid"))
            .await
            .expect("stored events")
            .into_iter()
            .map(|(seq, name, data)| (seq.to_string(), name, serde_json::from_str(&data).expect("JSON")))
            .collect()
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
