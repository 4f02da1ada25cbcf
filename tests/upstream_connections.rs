//! chatd's own HTTP/1.1 connections to a cleartext upstream: kept and
//! reused between replies, replaced when the upstream closed them, kept
//! when the body's last chunk comes after `data: [DONE]`. The real router
//! over HTTP on 127.0.0.1; upstreams that are real servers (the axum mock,
//! and a raw HTTP/1.1 server that controls when connections close).

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatd::config::{LlmConfig, LlmTransport, ProviderConfig};
use chatd::llm::{ChatRequest, HttpPool, LlmClient, RequestMessage, StreamItem, TransportKind};
use futures::StreamExt;
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
    /// Every request as read from the socket, head and body.
    raw: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl RawUpstream {
    async fn start(ending: Ending) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let raw = Arc::new(Mutex::new(Vec::new()));
        let (c, r, w) = (connections.clone(), requests.clone(), raw.clone());
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(socket, ending, r.clone(), w.clone()));
            }
        });
        Self {
            base_url: format!("http://{addr}/v1"),
            connections,
            requests,
            raw,
        }
    }

    fn raw_requests(&self) -> Vec<Vec<u8>> {
        self.raw.lock().expect("raw lock").clone()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Reads one request (head and `Content-Length` body); `None` at the end
/// of the connection.
async fn read_request(socket: &mut TcpStream) -> Option<Vec<u8>> {
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
                return Some(data);
            }
        }
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
}

fn chunk(text: &str) -> String {
    format!("{:x}\r\n{text}\r\n", text.len())
}

async fn serve(mut socket: TcpStream, ending: Ending, requests: Arc<AtomicUsize>, raw: Arc<Mutex<Vec<Vec<u8>>>>) {
    while let Some(request) = read_request(&mut socket).await {
        raw.lock().expect("raw lock").push(request);
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

/// Streams one reply from `upstream` over a client with `transport`, an
/// API key and an extra header; returns the text, whether `[DONE]` came
/// and the transport the client took.
async fn stream_with(upstream: &RawUpstream, transport: LlmTransport) -> (String, bool, TransportKind) {
    let llm = LlmConfig {
        transport,
        ..LlmConfig::default()
    };
    let provider = ProviderConfig {
        name: "raw".to_string(),
        base_url: upstream.base_url.clone(),
        api_key: Some("sk-test".to_string()),
        api_key_env: None,
        models: Vec::new(),
        default_model: None,
        headers: [("X-Title".to_string(), "chatd tests".to_string())].into(),
    };
    let http = HttpPool::new(&llm).expect("pool");
    let client = LlmClient::for_provider(http, &llm, &provider).expect("client");
    let request = ChatRequest {
        model: "m".to_string(),
        messages: vec![RequestMessage::User {
            content: "hi".to_string(),
        }],
        stream: true,
        stream_options: None,
        temperature: Some(0.5),
        max_tokens: None,
        tools: Vec::new(),
        tool_choice: None,
        extra: Default::default(),
    };
    let mut stream = client.stream_chat(&request).await.expect("stream");
    let (mut text, mut done) = (String::new(), false);
    while let Some(item) = stream.next().await {
        match item.expect("item") {
            StreamItem::Chunk(chunk) => {
                for choice in chunk.choices {
                    if let Some(content) = choice.delta.and_then(|d| d.content) {
                        text.push_str(&content);
                    }
                }
            }
            StreamItem::Done => done = true,
        }
    }
    (text, done, client.transport())
}

fn proxy_in_env() -> bool {
    ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
}

#[tokio::test]
async fn both_transports_send_the_same_request_bytes() {
    let upstream = RawUpstream::start(Ending::ConnectionClose).await;
    let inline = stream_with(&upstream, LlmTransport::Auto).await;
    let reqwest = stream_with(&upstream, LlmTransport::Reqwest).await;
    let expected_inline = if proxy_in_env() {
        TransportKind::Reqwest
    } else {
        TransportKind::InlineH1
    };
    assert_eq!(inline, ("reply1".to_string(), true, expected_inline));
    assert_eq!(reqwest, ("reply2".to_string(), true, TransportKind::Reqwest));
    let raw = upstream.raw_requests();
    assert_eq!(raw.len(), 2);
    let text = String::from_utf8_lossy(&raw[0]).to_string();
    assert!(
        text.starts_with("POST /v1/chat/completions HTTP/1.1\r\naccept: text/event-stream\r\n"),
        "{text}"
    );
    assert!(text.contains("\r\nauthorization: Bearer sk-test\r\n"), "{text}");
    assert!(text.contains("\r\nx-title: chatd tests\r\n"), "{text}");
    assert_eq!(
        text,
        String::from_utf8_lossy(&raw[1]),
        "the same head and body over either transport"
    );
}

#[tokio::test]
async fn with_transport_reqwest_cleartext_replies_stream_without_the_inline_connections() {
    // As in a_body_that_ends_after_done_still_keeps_its_connection, the
    // body's last chunk comes 150 ms after `data: [DONE]`. chatd's inline
    // connections read that rest and keep the connection; reqwest (hyper's
    // pooled client) closes a connection whose body was dropped unread, so
    // the second reply comes on a new connection.
    let upstream = RawUpstream::start(Ending::KeepAlive {
        last_chunk_after_ms: 150,
    })
    .await;
    let app = TestApp::start_with(
        &upstream.base_url,
        |config| config.llm.transport = LlmTransport::Reqwest,
        chatd::tools::ToolRegistry::with_builtins(),
    )
    .await;
    let events = app.chat(json!({"message": "hi"})).await;
    assert_eq!(outcome(&events), done("reply1"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let events = app.chat(json!({"message": "again"})).await;
    assert_eq!(outcome(&events), done("reply2"));
    assert_eq!((upstream.requests(), upstream.connections()), (2, 2));
}
