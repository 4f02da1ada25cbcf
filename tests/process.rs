//! The real binary under signals: SIGKILL mid-stream loses no user message
//! and leaves every reply complete, interrupted (with its partial text) or
//! resumable; SIGTERM drains running replies and exits 0 in time.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use sqlx::SqlitePool;
use support::mock::{MockUpstream, full_text, slow_text};
use support::sse::{checked, events_until_error, read_events};
use tokio::process::{Child, Command};

const REPLIES: usize = 20;

struct Server {
    child: Child,
    base: String,
    http: reqwest::Client,
}

fn write_config(dir: &Path, upstream: &str, drain_ms: u64) -> PathBuf {
    let port = support::closed_port();
    let path = dir.join("chatd.toml");
    let db = dir.join("chatd.db");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndatabase_url = \"sqlite://{}\"\n\
             [llm]\nbase_url = \"{upstream}\"\nmodel = \"mock-model\"\n\
             [chat]\nflush_interval_ms = 200\ndrain_timeout_ms = {drain_ms}\n",
            db.display()
        ),
    )
    .expect("write config");
    path
}

async fn start(config: &Path) -> Server {
    let text = std::fs::read_to_string(config).expect("config");
    let listen = text
        .lines()
        .next()
        .and_then(|l| l.split('"').nth(1))
        .expect("listen line")
        .to_string();
    let log = std::fs::File::create(config.with_extension("log")).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_chatd"))
        .arg("--config")
        .arg(config)
        .arg("serve")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn chatd");
    let server = Server {
        child,
        base: format!("http://{listen}"),
        http: support::http_client(),
    };
    for _ in 0..200 {
        if let Ok(r) = server.http.get(format!("{}/healthz", server.base)).send().await
            && r.status() == 200
        {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "chatd did not start; log: {}",
        std::fs::read_to_string(config.with_extension("log")).unwrap_or_default()
    );
}

impl Server {
    async fn get(&self, path: &str) -> Value {
        let r = self.http.get(format!("{}{path}", self.base)).send().await.expect("GET");
        assert_eq!(r.status(), 200, "GET {path}");
        r.json().await.expect("json")
    }

    /// POSTs `/api/chat` with `message`; the returned future owns what it
    /// needs, so it can run in a task of its own.
    fn post_chat(&self, message: String) -> impl Future<Output = reqwest::Response> + use<> {
        let request = self
            .http
            .post(format!("{}/api/chat", self.base))
            .json(&json!({"message": message}));
        async move { request.send().await.expect("post") }
    }
}

/// Every conversation's (user message, assistant row) via the API.
async fn turns(server: &Server) -> Vec<(String, Value)> {
    let list = server.get("/api/conversations?limit=200").await;
    let mut out = Vec::new();
    for c in list["conversations"].as_array().expect("conversations") {
        let id = c["id"].as_str().expect("id");
        let messages = server.get(&format!("/api/conversations/{id}/messages")).await;
        let messages = messages["messages"].as_array().expect("messages").clone();
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert_eq!(messages[0]["role"], "user");
        out.push((
            messages[0]["content"].as_str().expect("content").to_string(),
            messages[1].clone(),
        ));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The database of the server whose config is in `dir`.
async fn open_db(dir: &Path) -> SqlitePool {
    SqlitePool::connect(&format!("sqlite://{}", dir.join("chatd.db").display()))
        .await
        .expect("open")
}

async fn integrity_ok(dir: &Path) {
    let pool = open_db(dir).await;
    let result: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&pool)
        .await
        .expect("check");
    assert_eq!(result, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_no_user_message_and_leaves_replies_resumable() {
    let upstream = MockUpstream::start().await;
    for _ in 0..REPLIES {
        upstream.push(slow_text(60, 50));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &upstream.base_url, 30_000);
    let mut server = start(&config).await;

    let mut tasks = Vec::new();
    for i in 0..REPLIES {
        let post = server.post_chat(format!("m{i:02}"));
        tasks.push(tokio::spawn(async move { read_events(post.await, 8).await }));
    }
    for task in tasks {
        assert_eq!(task.await.expect("task").len(), 8);
    }
    // Past at least one flush interval (200 ms), well before the replies end (3 s).
    tokio::time::sleep(Duration::from_millis(600)).await;
    server.child.start_kill().expect("SIGKILL");
    server.child.wait().await.expect("wait");

    let server = start(&config).await;
    let turns = turns(&server).await;
    let expected_users: Vec<String> = (0..REPLIES).map(|i| format!("m{i:02}")).collect();
    assert_eq!(
        turns.iter().map(|(u, _)| u.clone()).collect::<Vec<_>>(),
        expected_users,
        "every user message"
    );
    let mut interrupted = 0;
    for (_, reply) in &turns {
        let content = reply["content"].as_str().expect("content");
        match reply["status"].as_str() {
            Some("complete") => assert_eq!(content, full_text(60)),
            Some("interrupted") => {
                interrupted += 1;
                assert!(content.len() >= "w0 w1 w2 ".len(), "partial text kept: {content:?}");
                assert!(full_text(60).starts_with(content), "{content:?}");
                // resumable: the stored events replay, ending with `interrupted`
                let id = reply["id"].as_str().expect("id");
                let r = server
                    .http
                    .get(format!("{}/api/chat/{id}/events", server.base))
                    .send()
                    .await
                    .expect("resume");
                let events = read_events(r, usize::MAX).await;
                assert_eq!(events[0].event, "start");
                let last = events.last().expect("terminal");
                assert_eq!(
                    (last.event.as_str(), last.data["code"].as_str()),
                    ("error", Some("interrupted"))
                );
                checked(&events);
            }
            other => panic!("unexpected status {other:?}"),
        }
    }
    assert!(interrupted > 0, "the kill landed mid-stream");
    drop(server);
    integrity_ok(dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_running_replies_and_exits_zero_in_time() {
    const DRAIN_MS: u64 = 1_500;
    let upstream = MockUpstream::start().await;
    for i in 0..REPLIES {
        // half finish within the drain timeout, half do not
        upstream.push(if i % 2 == 0 {
            slow_text(10, 40)
        } else {
            slow_text(200, 40)
        });
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &upstream.base_url, DRAIN_MS);
    let mut server = start(&config).await;

    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(REPLIES);
    let mut tasks = Vec::new();
    for i in 0..REPLIES {
        let (post, ready) = (server.post_chat(format!("t{i:02}")), ready_tx.clone());
        tasks.push(tokio::spawn(async move {
            let mut stream = events_until_error(post.await);
            let mut events = Vec::new();
            while let Some(e) = stream.next().await {
                if events.is_empty() {
                    let _ = ready.send(()).await;
                }
                events.push((e.event, e.data));
            }
            events
        }));
    }
    for _ in 0..REPLIES {
        tokio::time::timeout(Duration::from_secs(20), ready_rx.recv())
            .await
            .expect("every reply starts in time")
            .expect("a reply started");
    }
    let pid = server.child.id().expect("pid");
    let sent = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_millis(DRAIN_MS + 5_000), server.child.wait())
        .await
        .expect("exits within the drain timeout")
        .expect("wait");
    let took = sent.elapsed();
    assert!(exit.success(), "exit status {exit:?}");
    assert!(took < Duration::from_millis(DRAIN_MS + 2_000), "took {took:?}");

    let mut outcomes = Vec::new();
    for task in tasks {
        let events = task.await.expect("task");
        let (name, data) = events.last().expect("a terminal event").clone();
        outcomes.push(match name.as_str() {
            "done" => "complete".to_string(),
            "error" => data["code"].as_str().expect("code").to_string(),
            other => panic!("stream ended on {other}"),
        });
    }
    assert_eq!(outcomes.iter().filter(|o| *o == "complete").count(), REPLIES / 2);
    assert_eq!(outcomes.iter().filter(|o| *o == "interrupted").count(), REPLIES / 2);

    let pool = open_db(dir.path()).await;
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT role, status FROM messages")
        .fetch_all(&pool)
        .await
        .expect("rows");
    assert_eq!(rows.iter().filter(|(r, _)| r == "user").count(), REPLIES);
    let statuses: Vec<&str> = rows
        .iter()
        .filter(|(r, _)| r == "assistant")
        .map(|(_, s)| s.as_str())
        .collect();
    assert_eq!(statuses.iter().filter(|s| **s == "complete").count(), REPLIES / 2);
    assert_eq!(statuses.iter().filter(|s| **s == "interrupted").count(), REPLIES / 2);
    integrity_ok(dir.path()).await;
}
