//! chatd's own HTTP/1.1 connections to a cleartext upstream: kept and
//! reused between replies, replaced when the upstream closed them, kept
//! when the body's last chunk comes after `data: [DONE]`. The real router
//! over HTTP on 127.0.0.1; upstreams that are real servers (the axum mock,
//! and a raw HTTP/1.1 server that controls when connections close).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use support::TestApp;
use support::mock::{self, MockUpstream};
use support::sse::checked;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The terminal event's name and the reply's text.
fn outcome(events: &[support::sse::SseEvent]) -> (String, String) {
    let got = checked(events);
    let text: String = got
        .iter()
        .filter(|(name, data)| name == "process_step" && data["type"] == "text")
        .filter_map(|(_, data)| data["delta"].as_str())
        .collect();
    (got.last().map(|(name, _)| name.clone()).unwrap_or_default(), text)
}

fn done(text: &str) -> (String, String) {
    ("done".to_string(), text.to_string())
}

#[tokio::test]
async fn sequential_replies_share_one_upstream_connection() {
    let upstream = MockUpstream::start().await;
    for word in ["one", "two", "three"] {
        upstream.push(mock::text_reply(&[word], 3, 1));
    }
    let app = TestApp::start(&upstream.base_url).await;
    for word in ["one", "two", "three"] {
        let events = app.chat(json!({"message": "hi"})).await;
        assert_eq!(outcome(&events), done(word));
    }
    let peers = upstream.peers();
    assert_eq!(peers.len(), 3);
    assert!(
        peers.iter().all(|p| *p == peers[0]),
        "one connection for all three: {peers:?}"
    );
}

/// How the raw upstream ends each response.
#[derive(Clone, Copy, Debug)]
enum Ending {
    /// Keeps the connection for the next request; the body's last chunk
    /// (`0\r\n\r\n`) follows `data: [DONE]` after this many ms.
    KeepAlive { last_chunk_after_ms: u64 },
    /// Closes the connection after the response, without saying so.
    Close,
    /// Answers with `Connection: close`, then closes.
    ConnectionClose,
}

/// An OpenAI-compatible upstream written straight on TCP: every request is
/// answered with a one-word text reply, chunked, ended as `ending` says.
struct RawUpstream {
    base_url: String,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

impl RawUpstream {
    async fn start(ending: Ending) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (c, r) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(socket, ending, r.clone()));
            }
        });
        Self {
            base_url: format!("http://{addr}/v1"),
            connections,
            requests,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Reads one request (head and `Content-Length` body); `false` at the end
/// of the connection.
async fn read_request(socket: &mut TcpStream) -> bool {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if data.len() >= end + 4 + length {
                return true;
            }
        }
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
}

fn chunk(text: &str) -> String {
    format!("{:x}\r\n{text}\r\n", text.len())
}

async fn serve(mut socket: TcpStream, ending: Ending, requests: Arc<AtomicUsize>) {
    while read_request(&mut socket).await {
        let n = requests.fetch_add(1, Ordering::SeqCst) + 1;
        let close = matches!(ending, Ending::ConnectionClose);
        let mut head =
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n".to_string();
        if close {
            head.push_str("connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut body = String::new();
        for value in [mock::role(), mock::content(&format!("reply{n}")), mock::finish("stop")] {
            body.push_str(&chunk(&format!("data: {value}\n\n")));
        }
        body.push_str(&chunk("data: [DONE]\n\n"));
        if socket.write_all(format!("{head}{body}").as_bytes()).await.is_err() {
            return;
        }
        if let Ending::KeepAlive { last_chunk_after_ms } = ending {
            tokio::time::sleep(Duration::from_millis(last_chunk_after_ms)).await;
        }
        if socket.write_all(b"0\r\n\r\n").await.is_err() {
            return;
        }
        if !matches!(ending, Ending::KeepAlive { .. }) {
            let _ = socket.shutdown().await;
            return;
        }
    }
}

#[tokio::test]
async fn a_body_that_ends_after_done_still_keeps_its_connection() {
    // chatd stops reading at `data: [DONE]`; the body's last chunk comes
    // 150 ms later. The rest is read after the reply, and the connection
    // serves the next reply.
    let upstream = RawUpstream::start(Ending::KeepAlive {
        last_chunk_after_ms: 150,
    })
    .await;
    let app = TestApp::start(&upstream.base_url).await;
    let events = app.chat(json!({"message": "hi"})).await;
    assert_eq!(outcome(&events), done("reply1"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let events = app.chat(json!({"message": "again"})).await;
    assert_eq!(outcome(&events), done("reply2"));
    assert_eq!((upstream.requests(), upstream.connections()), (2, 1));
}

#[tokio::test]
async fn a_kept_connection_the_upstream_closed_is_replaced() {
    // The upstream closes every connection after its response without a
    // `Connection: close`, as a server whose keep-alive timeout passed.
    let upstream = RawUpstream::start(Ending::Close).await;
    let app = TestApp::start(&upstream.base_url).await;
    for n in 1..=3 {
        let events = app.chat(json!({"message": "hi"})).await;
        assert_eq!(outcome(&events), done(&format!("reply{n}")));
        // Lets the close reach chatd before the next reply.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!((upstream.requests(), upstream.connections()), (3, 3));
}

#[tokio::test]
async fn connection_close_is_honoured() {
    let upstream = RawUpstream::start(Ending::ConnectionClose).await;
    let app = TestApp::start(&upstream.base_url).await;
    for n in 1..=2 {
        let events = app.chat(json!({"message": "hi"})).await;
        assert_eq!(outcome(&events), done(&format!("reply{n}")));
    }
    assert_eq!((upstream.requests(), upstream.connections()), (2, 2));
}
