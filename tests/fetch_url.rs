//! `fetch_url` end to end: the model (a mock upstream) calls the tool through
//! chatd's real router, and the tool fetches from a real HTTP server on
//! 127.0.0.1. Only loopback traffic; the SSRF guard is exercised with
//! loopback addresses and with refusals that never connect.

mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use chatd::config::Config;
use chatd::tools::FetchUrl;
use serde_json::{Value, json};
use support::TestApp;
use support::mock::{self, MockUpstream};
use support::sse::checked;
use support::tools::registry_with;

const PAGE: &str = r#"<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<title>Fetch &amp; Test Page</title>
<style>body { font-family: sans-serif } .style-secret { display: none }</style>
<script>window.headSecret = "do-not-leak";</script>
</head>
<body>
<h1>Welcome</h1>
<p>This is the <b>readable</b> part.</p>
<script type="text/javascript">console.log("inline-script-secret");</script>
<ul><li>One</li><li>Two</li></ul>
<p>See <a href="/other">the other page</a>.</p>
</body>
</html>
"#;

/// What the tool makes of [`PAGE`].
const PAGE_TEXT: &str =
    "# Welcome\n\nThis is the **readable** part.\n* One\n* Two\n\nSee [the other page][1].\n\n[1]: /other";

/// Size of the `/large` body in bytes.
const LARGE_BYTES: usize = 100_000;

struct SiteState {
    port: u16,
    /// Requests received, by path.
    hits: Mutex<BTreeMap<String, u32>>,
}

/// A small web site on 127.0.0.1 for the tool to fetch.
struct Site {
    port: u16,
    state: Arc<SiteState>,
}

impl Site {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind site");
        let port = listener.local_addr().expect("site addr").port();
        let state = Arc::new(SiteState {
            port,
            hits: Mutex::new(BTreeMap::new()),
        });
        let app = Router::new().fallback(serve).with_state(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { port, state }
    }

    /// `http://<host>:<port><path>`
    fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.port)
    }

    fn hits(&self) -> BTreeMap<String, u32> {
        self.state.hits.lock().expect("hits lock").clone()
    }
}

/// Elements nested in [`deep_page`].
const DEEP_LEVELS: usize = 45_000;

/// About 500 KB of HTML nested [`DEEP_LEVELS`] deep, text at the bottom.
fn deep_page() -> String {
    format!(
        "<html><head><title>Deep</title></head><body>{}the bottom of the page{}</body></html>",
        "<div>".repeat(DEEP_LEVELS),
        "</div>".repeat(DEEP_LEVELS)
    )
}

fn large_body() -> String {
    (0..LARGE_BYTES / 10).map(|i| format!("line {i:04}\n")).collect()
}

async fn serve(State(state): State<Arc<SiteState>>, uri: Uri) -> Response {
    let path = uri.path().to_string();
    *state.hits.lock().expect("hits lock").entry(path.clone()).or_default() += 1;
    let reply = |status: u16, content_type: &str, body: Body| {
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(body)
            .expect("response")
    };
    let redirect = |location: String| {
        Response::builder()
            .status(StatusCode::FOUND)
            .header("location", location)
            .body(Body::empty())
            .expect("response")
    };
    match path.as_str() {
        "/page" => reply(200, "text/html; charset=utf-8", Body::from(PAGE)),
        "/redirect" => redirect("/page".into()),
        "/to-loopback" => redirect(format!("http://127.0.0.1:{}/page", state.port)),
        "/to-file" => redirect("file:///etc/passwd".into()),
        "/loop" => redirect("/loop".into()),
        "/data.json" => reply(
            200,
            "application/json",
            Body::from(r#"{"a": [1, 2], "b": "<not html>"}"#),
        ),
        "/image.png" => reply(200, "image/png", Body::from(vec![0x89, b'P', b'N', b'G'])),
        "/large" => reply(200, "text/plain", Body::from(large_body())),
        "/deep" => reply(200, "text/html", Body::from(deep_page())),
        "/slow" => {
            let stream = async_stream::stream! {
                yield Ok::<_, Infallible>(Bytes::from("the start arrives at once\n"));
                tokio::time::sleep(Duration::from_secs(5)).await;
                yield Ok::<_, Infallible>(Bytes::from("the rest comes too late\n"));
            };
            reply(200, "text/plain", Body::from_stream(stream))
        }
        _ => reply(404, "text/plain", Body::from("no such page")),
    }
}

/// One `tool_result` step and the `sources` event that followed it, if any.
#[derive(Debug)]
struct Result {
    content: String,
    success: bool,
    duration_ms: u64,
    sources: Option<Value>,
}

/// Runs one chat in which the model calls `fetch_url` once per URL (all in
/// one round), with `tweak` applied to chatd's config; returns the results in
/// call order.
async fn fetch_all(tweak: impl FnOnce(&mut Config), urls: &[&str]) -> Vec<Result> {
    let upstream = MockUpstream::start().await;
    let ids: Vec<String> = (0..urls.len()).map(|i| format!("call_{i}")).collect();
    let args: Vec<String> = urls.iter().map(|u| json!({"url": u}).to_string()).collect();
    let calls: Vec<(&str, &str, &str)> = ids
        .iter()
        .zip(&args)
        .map(|(id, a)| (id.as_str(), "fetch_url", a.as_str()))
        .collect();
    upstream.push(mock::tool_reply(&calls, 5, 5));
    upstream.push(mock::text_reply(&["ok"], 5, 1));
    let tools = registry_with(vec![Arc::new(FetchUrl)]);
    let app = TestApp::start_with(&upstream.base_url, tweak, tools).await;

    let events = app.chat(json!({"message": "fetch these"})).await;
    let events = checked(&events);
    assert_eq!(
        events.last().map(|(name, _)| name.as_str()),
        Some("done"),
        "{events:#?}"
    );
    let mut results: Vec<Result> = Vec::new();
    for (name, data) in &events {
        if name == "process_step" && data["type"] == "tool_result" {
            assert_eq!(data["name"], "fetch_url");
            assert_eq!(
                data["id_ref"],
                ids[results.len()].as_str(),
                "results come in call order"
            );
            results.push(Result {
                content: data["content"].as_str().expect("content").to_string(),
                success: data["success"].as_bool().expect("success"),
                duration_ms: data["duration_ms"].as_u64().expect("duration_ms"),
                sources: None,
            });
        } else if name == "sources" {
            let last = results.last_mut().expect("sources follow a tool result");
            last.sources = Some(data["sources"].clone());
        }
    }
    assert_eq!(results.len(), urls.len());

    // The model got exactly the same texts back.
    let sent = upstream.received();
    assert_eq!(sent.len(), 2);
    let tool_messages: Vec<&Value> = sent[1]["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["role"] == "tool")
        .collect();
    assert_eq!(tool_messages.len(), urls.len());
    for (message, result) in tool_messages.iter().zip(&results) {
        assert_eq!(message["content"], result.content.as_str());
    }
    results
}

fn allow(hosts: &[&str]) -> impl FnOnce(&mut Config) {
    let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
    move |c: &mut Config| c.tools.fetch.allow_hosts = hosts
}

fn assert_failed(result: &Result, content: &str) {
    assert_eq!(result.content, content);
    assert!(!result.success, "{result:?}");
    assert_eq!(result.sources, None);
}

fn source(title: &str, url: &str, snippet: &str) -> Value {
    json!([{"id": "S?", "title": title, "path": url, "snippet": snippet}])
}

/// The sources of `result` with the reply-wide id replaced by `S?`.
fn sources_of(result: &Result) -> Value {
    let mut sources = result.sources.clone().expect("a sources event");
    for s in sources.as_array_mut().expect("array") {
        assert!(s["id"].as_str().is_some_and(|id| id.starts_with('S')), "{s}");
        s["id"] = json!("S?");
    }
    sources
}

#[tokio::test]
async fn loopback_metadata_and_other_schemes_are_refused_by_default() {
    let site = Site::start().await;
    let page = |host: &str| site.url(host, "/page");
    let results = fetch_all(
        |_| {},
        &[
            &page("127.0.0.1"),
            &page("localhost"),
            &page("[::1]"),
            &page("[::ffff:127.0.0.1]"),
            &page("127.1"),
            "file:///etc/passwd",
            "ftp://127.0.0.1/pub/file.txt",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/latest/meta-data/",
            "http://10.0.0.1/",
            "not a url",
        ],
    )
    .await;
    let only_public = "; only public addresses can be fetched";
    let expected = [
        format!("Error: refused: 127.0.0.1 is a loopback address{only_public}"),
        format!("Error: refused: localhost resolves to 127.0.0.1, a loopback address{only_public}"),
        format!("Error: refused: ::1 is a loopback address{only_public}"),
        format!("Error: refused: ::ffff:127.0.0.1 is a loopback address{only_public}"),
        format!("Error: refused: 127.0.0.1 is a loopback address{only_public}"),
        "Error: invalid arguments: only http:// and https:// URLs can be fetched, not file://".to_string(),
        "Error: invalid arguments: only http:// and https:// URLs can be fetched, not ftp://".to_string(),
        format!("Error: refused: metadata.google.internal is a cloud metadata host{only_public}"),
        format!("Error: refused: 169.254.169.254 is a cloud metadata address{only_public}"),
        format!("Error: refused: fd00:ec2::254 is a cloud metadata address{only_public}"),
        format!("Error: refused: 10.0.0.1 is a private address{only_public}"),
        "Error: invalid arguments: \"not a url\" is not a valid URL (relative URL without a base); give an \
         absolute http:// or https:// URL"
            .to_string(),
    ];
    for (result, content) in results.iter().zip(&expected) {
        assert_failed(result, content);
    }
    // Nothing was sent anywhere: every refusal came before connecting.
    assert_eq!(site.hits(), BTreeMap::new());
}

#[tokio::test]
async fn an_allowed_host_is_fetched_as_readable_text() {
    let site = Site::start().await;
    let url = |path: &str| site.url("127.0.0.1", path);
    let results = fetch_all(
        allow(&["127.0.0.1"]),
        &[
            &url("/page"),
            &url("/redirect"),
            &url("/data.json"),
            &url("/missing"),
            &url("/image.png"),
        ],
    )
    .await;

    let page = url("/page");
    assert_eq!(results[0].content, format!("URL: {page}\nStatus: 200\n\n{PAGE_TEXT}"));
    assert!(results[0].success);
    for secret in [
        "do-not-leak",
        "inline-script-secret",
        "style-secret",
        "font-family",
        "<",
    ] {
        assert!(
            !results[0].content.contains(secret),
            "{secret} leaked: {}",
            results[0].content
        );
    }
    let snippet = "# Welcome This is the **readable** part. * One * Two See [the other page][1]. [1]: /other";
    assert_eq!(sources_of(&results[0]), source("Fetch & Test Page", &page, snippet));

    // A redirect ends on the page, which the output names.
    assert_eq!(results[1].content, results[0].content);
    assert!(results[1].success);
    assert_eq!(sources_of(&results[1]), source("Fetch & Test Page", &page, snippet));

    let json_url = url("/data.json");
    let json_text = r#"{"a": [1, 2], "b": "<not html>"}"#;
    assert_eq!(
        results[2].content,
        format!("URL: {json_url}\nStatus: 200\n\n{json_text}")
    );
    assert!(results[2].success);
    assert_eq!(sources_of(&results[2]), source(&json_url, &json_url, json_text));

    // An HTTP error status is reported with its page, not as a failure.
    let missing = url("/missing");
    assert_eq!(
        results[3].content,
        format!("URL: {missing}\nStatus: 404\n\nno such page")
    );
    assert!(results[3].success);

    assert_failed(
        &results[4],
        &format!(
            "Error: {} returned image/png content; only HTML, text/* and JSON can be fetched",
            url("/image.png")
        ),
    );
    let hits = site.hits();
    assert_eq!(hits.get("/page"), Some(&2));
    assert_eq!(hits.get("/redirect"), Some(&1));
}

#[tokio::test]
async fn every_redirect_hop_is_checked_again() {
    let site = Site::start().await;
    let url = |path: &str| site.url("localhost", path);
    let results = fetch_all(
        |c| {
            c.tools.fetch.allow_hosts = vec!["LocalHost".into()];
            c.tools.fetch.max_redirects = 3;
        },
        &[&url("/redirect"), &url("/to-loopback"), &url("/to-file"), &url("/loop")],
    )
    .await;

    // Same allowed host: followed.
    assert_eq!(
        results[0].content,
        format!("URL: {}\nStatus: 200\n\n{PAGE_TEXT}", url("/page"))
    );
    assert!(results[0].success);
    // The allowed host redirects to a loopback address that is not allowed.
    assert_failed(
        &results[1],
        &format!(
            "Error: refused: {} redirected to {}; 127.0.0.1 is a loopback address; only public addresses can be \
             fetched",
            url("/to-loopback"),
            site.url("127.0.0.1", "/page")
        ),
    );
    assert_failed(
        &results[2],
        &format!(
            "Error: refused: {} redirected to file:///etc/passwd; only http:// and https:// URLs can be fetched",
            url("/to-file")
        ),
    );
    assert_failed(
        &results[3],
        &format!(
            "Error: stopped after 3 redirects; the next one pointed to {}",
            url("/loop")
        ),
    );
    let hits = site.hits();
    // /page only through the first redirect, never through /to-loopback.
    assert_eq!(hits.get("/page"), Some(&1));
    assert_eq!(hits.get("/to-loopback"), Some(&1));
    assert_eq!(hits.get("/loop"), Some(&4));
}

#[tokio::test]
async fn a_large_body_is_cut_at_max_bytes() {
    let site = Site::start().await;
    let large = site.url("127.0.0.1", "/large");
    let results = fetch_all(
        |c| {
            c.tools.fetch.allow_hosts = vec!["127.0.0.1".into()];
            c.tools.fetch.max_bytes = 1_000;
        },
        &[&large],
    )
    .await;
    let body = large_body();
    assert_eq!(
        results[0].content,
        format!(
            "URL: {large}\nStatus: 200\n\n{}\n\n[cut: the body is longer than 1000 bytes; only the first 1000 bytes \
             were read]",
            body[..1_000].trim_end()
        )
    );
    assert!(results[0].success);
}

#[tokio::test]
async fn a_slow_body_times_out() {
    let site = Site::start().await;
    let slow = site.url("127.0.0.1", "/slow");
    let results = fetch_all(
        |c| {
            c.tools.fetch.allow_hosts = vec!["127.0.0.1".into()];
            c.tools.fetch.timeout_ms = 500;
        },
        &[&slow],
    )
    .await;
    assert_failed(
        &results[0],
        &format!("Error: fetching {slow} did not finish within 500 ms"),
    );
    assert!(
        (400..3_000).contains(&results[0].duration_ms),
        "stopped near the limit: {} ms",
        results[0].duration_ms
    );
    assert_eq!(site.hits().get("/slow"), Some(&1));
}

#[tokio::test]
async fn ipv6_forms_carrying_a_loopback_ipv4_and_special_ranges_are_refused() {
    let site = Site::start().await;
    let page = |host: &str| site.url(host, "/page");
    let hosts = [
        ("[2002:7f00:1::]", "2002:7f00:1:: is a loopback address"),
        (
            "[2001:0:808:808::80ff:fffe]",
            "2001:0:808:808::80ff:fffe is a loopback address",
        ),
        ("[64:ff9b::7f00:1]", "64:ff9b::7f00:1 is a loopback address"),
        ("[64:ff9b:1::7f00:1]", "64:ff9b:1::7f00:1 is a loopback address"),
        ("[::ffff:0:7f00:1]", "::ffff:0:7f00:1 is a loopback address"),
        ("[::7f00:1]", "::7f00:1 is a loopback address"),
        ("[100::1]", "100::1 is a reserved address"),
        ("[2001:db8::1]", "2001:db8::1 is a reserved address"),
        ("[3fff::1]", "3fff::1 is a reserved address"),
        ("[fe00::1]", "fe00::1 is a reserved address"),
        ("192.0.2.1", "192.0.2.1 is a reserved address"),
        ("198.51.100.1", "198.51.100.1 is a reserved address"),
        ("203.0.113.1", "203.0.113.1 is a reserved address"),
    ];
    let urls: Vec<String> = hosts.iter().map(|(host, _)| page(host)).collect();
    let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
    let results = fetch_all(|_| {}, &refs).await;
    for (result, (_, subject)) in results.iter().zip(&hosts) {
        assert_failed(
            result,
            &format!("Error: refused: {subject}; only public addresses can be fetched"),
        );
    }
    // Refused before connecting: nothing reached the loopback site.
    assert_eq!(site.hits(), BTreeMap::new());
}

#[tokio::test]
async fn a_deeply_nested_page_is_converted_within_the_timeout_and_chatd_stays_responsive() {
    let site = Site::start().await;
    let deep = site.url("127.0.0.1", "/deep");
    assert!((450_000..=512 * 1024).contains(&deep_page().len()));
    // Three at once: more than the conversions allowed to run together.
    let upstream = MockUpstream::start().await;
    let args = json!({"url": deep}).to_string();
    upstream.push(mock::tool_reply(
        &[
            ("d1", "fetch_url", &args),
            ("d2", "fetch_url", &args),
            ("d3", "fetch_url", &args),
        ],
        5,
        5,
    ));
    upstream.push(mock::text_reply(&["ok"], 5, 1));
    let tools = registry_with(vec![Arc::new(FetchUrl)]);
    let app = TestApp::start_with(
        &upstream.base_url,
        |c| {
            c.tools.fetch.allow_hosts = vec!["127.0.0.1".into()];
            c.tools.fetch.timeout_ms = 10_000;
            c.tools.timeout_ms = 15_000;
        },
        tools,
    )
    .await;

    let started = std::time::Instant::now();
    let chat = {
        let (http, url) = (app.http.clone(), app.url("/api/chat"));
        tokio::spawn(async move {
            let response = http
                .post(url)
                .json(&json!({"message": "fetch the deep page"}))
                .send()
                .await
                .expect("POST /api/chat");
            support::sse::rest(&mut support::sse::events_of(response)).await
        })
    };
    // While the pages are converted, chatd answers at once.
    let mut slowest = Duration::ZERO;
    while !chat.is_finished() {
        let asked = std::time::Instant::now();
        let (status, _) = app.get("/healthz").await;
        assert_eq!(status, 200);
        slowest = slowest.max(asked.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events = chat.await.expect("chat task");
    let elapsed = started.elapsed();
    assert!(slowest < Duration::from_secs(1), "a health check took {slowest:?}");
    assert_eq!(events.last().map(|e| e.event.as_str()), Some("done"), "{events:#?}");
    let results: Vec<&Value> = events
        .iter()
        .filter(|e| e.data["type"] == "tool_result")
        .map(|e| &e.data)
        .collect();
    assert_eq!(results.len(), 3);
    for result in results {
        assert_eq!(result["success"], true, "{result}");
        let content = result["content"].as_str().expect("content");
        assert!(
            content.starts_with(&format!("URL: {deep}\nStatus: 200\n\n")) && content.contains("the bottom of the page"),
            "{content}"
        );
        assert!(result["duration_ms"].as_u64().expect("duration") < 10_000, "{result}");
    }
    assert!(elapsed < Duration::from_secs(15), "{elapsed:?}");
    assert_eq!(site.hits().get("/deep"), Some(&3));
}
