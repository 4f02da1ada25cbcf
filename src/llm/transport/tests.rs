use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::config::ProviderConfig;
use crate::llm::{ChatRequest, LlmClient, StreamItem};

#[test]
fn auto_takes_the_inline_connections_only_for_cleartext_http1_without_a_proxy() {
    use LlmTransport::{Auto, Reqwest};
    let cases = [
        // (setting, base URL, prior knowledge, proxy) -> kind
        (
            (Auto, "http://127.0.0.1:11434/v1", false, false),
            TransportKind::InlineH1,
        ),
        (
            (Auto, "https://api.example.com/v1", false, false),
            TransportKind::Reqwest,
        ),
        ((Auto, "http://127.0.0.1:11434/v1", true, false), TransportKind::Reqwest),
        ((Auto, "http://127.0.0.1:11434/v1", false, true), TransportKind::Reqwest),
        (
            (Reqwest, "http://127.0.0.1:11434/v1", false, false),
            TransportKind::Reqwest,
        ),
        (
            (Reqwest, "https://api.example.com/v1", false, false),
            TransportKind::Reqwest,
        ),
    ];
    for ((setting, url, h2, proxy), kind) in cases {
        assert_eq!(
            TransportKind::choose(setting, url, h2, proxy),
            kind,
            "{setting:?} {url} h2={h2} proxy={proxy}"
        );
    }
}

fn llm(transport: LlmTransport, http2_prior_knowledge: bool) -> LlmConfig {
    LlmConfig {
        transport,
        http2_prior_knowledge,
        ..LlmConfig::default()
    }
}

#[test]
fn reqwest_streams_share_connections_only_over_http2() {
    let shared = |llm: &LlmConfig, url: &str| {
        let http = HttpPool::new(llm).expect("pool");
        match Transport::for_upstream(&http, llm, url) {
            Transport::Reqwest { shared_connections, .. } => Some(shared_connections),
            Transport::InlineH1(_) => None,
        }
    };
    let reqwest = llm(LlmTransport::Reqwest, false);
    assert_eq!(shared(&reqwest, "http://127.0.0.1:1/v1"), Some(false));
    assert_eq!(shared(&reqwest, "https://api.example.com/v1"), Some(true));
    assert_eq!(
        shared(&llm(LlmTransport::Auto, true), "http://127.0.0.1:1/v1"),
        Some(true)
    );
    assert_eq!(
        shared(&llm(LlmTransport::Auto, false), "https://api.example.com/v1"),
        Some(true)
    );
}

/// A cleartext upstream that answers every request on a connection with
/// a chunked SSE text reply (`[DONE]` and the body's end included) and
/// keeps the connection open. Returns its base URL.
async fn keep_alive_upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut data = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = socket.read(&mut buf).await else { return };
                    if n == 0 {
                        return;
                    }
                    data.extend_from_slice(&buf[..n]);
                    let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if data.len() < end + 4 + length {
                        continue;
                    }
                    data.drain(..end + 4 + length);
                    let mut response = String::from(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
                    );
                    let chunk = r#"{"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}]}"#;
                    for event in [format!("data: {chunk}\n\n"), "data: [DONE]\n\n".to_string()] {
                        response.push_str(&format!("{:x}\r\n{event}\r\n", event.len()));
                    }
                    response.push_str("0\r\n\r\n");
                    if socket.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}/v1")
}

/// Streams one reply from `base_url` with `transport`; returns the text,
/// whether `[DONE]` came, and the pool the client used.
async fn stream_once(base_url: &str, transport: LlmTransport) -> (String, bool, HttpPool, TransportKind) {
    let llm = llm(transport, false);
    let http = HttpPool::new(&llm).expect("pool");
    let provider = ProviderConfig {
        name: "p".to_string(),
        base_url: base_url.to_string(),
        api_key: Some("sk-test".to_string()),
        api_key_env: None,
        models: Vec::new(),
        default_model: None,
        headers: Default::default(),
    };
    let client = LlmClient::for_provider(http.clone(), &llm, &provider).expect("client");
    let request = ChatRequest::user("m", "hi");
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
    (text, done, http, client.transport())
}

/// Waits up to 2 s for `pool` to keep `n` inline connections.
async fn inline_connections_become(http: &HttpPool, n: usize) -> usize {
    for _ in 0..40 {
        if http.h1().idle_count() == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    http.h1().idle_count()
}

#[tokio::test]
async fn with_transport_reqwest_a_cleartext_stream_bypasses_the_inline_connections() {
    let base_url = keep_alive_upstream().await;
    let (text, done, http, kind) = stream_once(&base_url, LlmTransport::Reqwest).await;
    assert_eq!((text.as_str(), done, kind), ("hi", true, TransportKind::Reqwest));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(http.h1().idle_count(), 0, "no inline connection was made");

    let (text, done, http, kind) = stream_once(&base_url, LlmTransport::Auto).await;
    assert_eq!((text.as_str(), done), ("hi", true));
    if http.proxy_in_env() {
        assert_eq!(kind, TransportKind::Reqwest);
    } else {
        assert_eq!(kind, TransportKind::InlineH1);
        assert_eq!(
            inline_connections_become(&http, 1).await,
            1,
            "auto keeps the inline connection"
        );
    }
}
