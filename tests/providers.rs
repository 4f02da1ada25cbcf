//! The llm layer's upstream-resilience pieces over real HTTP: provider routing,
//! retries and fallback, per-provider headers, first-chunk vs idle timeouts,
//! and the merged model list.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chatd::config::{Config, LlmConfig, ProviderConfig};
use chatd::llm::{
    ChatRequest, LlmClient, LlmError, NextStep, Providers, RequestMessage, RetryPolicy, RouteError, StreamItem,
};
use futures::StreamExt;
use serde_json::{Value, json};
use support::mock::{self, MockResponse, MockUpstream};
use support::{closed_port_url, provider};

fn request(model: &str) -> ChatRequest {
    ChatRequest {
        model: model.to_string(),
        messages: vec![RequestMessage::User {
            content: "hi".to_string(),
        }],
        stream: true,
        stream_options: None,
        temperature: None,
        max_tokens: None,
        tools: Vec::new(),
        tool_choice: None,
        extra: Default::default(),
    }
}

fn config_with(providers: Vec<ProviderConfig>) -> Config {
    let mut config = Config {
        providers,
        ..Config::default()
    };
    config.llm.retry_base_ms = 1;
    config.llm.retry_max_ms = 20;
    config.llm.first_chunk_timeout_ms = 5_000;
    config.llm.idle_timeout_ms = 5_000;
    config
}

/// Reads a whole stream: the text it carried and its error, if any.
async fn drain(
    mut stream: futures::stream::BoxStream<'static, Result<StreamItem, LlmError>>,
) -> (String, Option<LlmError>) {
    let mut text = String::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(StreamItem::Chunk(chunk)) => {
                for choice in &chunk.choices {
                    if let Some(content) = choice.delta.as_ref().and_then(|d| d.content.as_deref()) {
                        text.push_str(content);
                    }
                }
            }
            Ok(StreamItem::Done) => {}
            Err(e) => return (text, Some(e)),
        }
    }
    (text, None)
}

fn models_sent(upstream: &MockUpstream) -> Vec<String> {
    upstream
        .received()
        .iter()
        .map(|body| body["model"].as_str().unwrap_or("?").to_string())
        .collect()
}

// ---- a recording upstream: headers of every request, and GET /v1/models ----

#[derive(Default)]
struct Recorded {
    requests: Mutex<Vec<(String, HeaderMap)>>,
}

struct Recorder {
    base_url: String,
    recorded: Arc<Recorded>,
}

impl Recorder {
    fn requests(&self) -> Vec<(String, HeaderMap)> {
        self.recorded.requests.lock().expect("lock").clone()
    }
}

/// Serves `POST /v1/chat/completions` with a short text reply and
/// `GET /v1/models` with `models` (after `models_delay_ms`), recording the
/// headers of every request.
async fn start_recorder(models: Value, models_delay_ms: u64) -> Recorder {
    let recorded = Arc::new(Recorded::default());
    let app = Router::new()
        .route(
            "/v1/chat/completions",
            post(|State(r): State<Arc<Recorded>>, headers: HeaderMap| async move {
                r.requests
                    .lock()
                    .expect("lock")
                    .push(("POST /chat/completions".into(), headers));
                let body = format!(
                    "data: {}\n\ndata: {}\n\ndata: [DONE]\n\n",
                    mock::content("recorded"),
                    mock::finish("stop")
                );
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Body::from(body))
                    .expect("response")
            }),
        )
        .route(
            "/v1/models",
            get(move |State(r): State<Arc<Recorded>>, headers: HeaderMap| async move {
                r.requests.lock().expect("lock").push(("GET /models".into(), headers));
                tokio::time::sleep(Duration::from_millis(models_delay_ms)).await;
                (StatusCode::OK, axum::Json(models)).into_response()
            }),
        )
        .with_state(recorded.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Recorder {
        base_url: format!("http://{addr}/v1"),
        recorded,
    }
}

// ---- routing ----

#[tokio::test]
async fn a_model_listed_by_the_second_provider_is_served_there() {
    let (a, b, c) = (
        MockUpstream::start().await,
        MockUpstream::start().await,
        MockUpstream::start().await,
    );
    b.push(mock::text_reply(&["from ", "b"], 1, 2));
    let providers = Providers::from_config(&config_with(vec![
        provider("a", &a.base_url, &["alpha"]),
        provider("b", &b.base_url, &["beta", "shared"]),
        provider("c", &c.base_url, &["gamma"]),
    ]))
    .expect("providers");
    assert_eq!(providers.names(), ["a", "b", "c"]);

    let route = providers.route(None, Some("beta"), "alpha").expect("route");
    assert_eq!(route.model, "beta");
    let names: Vec<_> = route.candidates.iter().map(|c| c.provider.as_str()).collect();
    assert_eq!(names, ["b"]);

    let stream = route.candidates[0]
        .client
        .stream_chat(&request(&route.model))
        .await
        .expect("stream");
    let (text, error) = drain(stream).await;
    assert_eq!((text.as_str(), error), ("from b", None));
    assert_eq!(models_sent(&b), ["beta"]);
    assert!(a.received().is_empty() && c.received().is_empty(), "only b was called");
}

#[tokio::test]
async fn an_unknown_provider_is_an_error_that_lists_the_known_ones() {
    let a = MockUpstream::start().await;
    let providers = Providers::from_config(&config_with(vec![
        provider("local", &a.base_url, &[]),
        provider("cloud", &a.base_url, &[]),
    ]))
    .expect("providers");
    let err = providers
        .route(Some("clud"), Some("m"), "")
        .expect_err("unknown provider");
    assert_eq!(
        err,
        RouteError::UnknownProvider {
            name: "clud".into(),
            known: vec!["local".into(), "cloud".into()]
        }
    );
    assert_eq!(
        err.to_string(),
        "unknown provider \"clud\"; the configured providers are: local, cloud"
    );
}

#[tokio::test]
async fn fallbacks_follow_config_order_and_take_over_when_a_provider_fails() {
    let (a, b, c) = (
        MockUpstream::start().await,
        MockUpstream::start().await,
        MockUpstream::start().await,
    );
    let mut config = config_with(vec![
        provider("a", &a.base_url, &["m"]),
        provider("b", &b.base_url, &["other"]),
        provider("c", &c.base_url, &["m"]),
    ]);
    config.llm.max_attempts = 2;
    let providers = Providers::from_config(&config).expect("providers");
    let policy = providers.retry_policy();
    assert_eq!(policy.max_attempts, 2);

    // Named provider b; a and c list the model, in that order.
    let route = providers.route(Some("b"), Some("m"), "").expect("route");
    let names: Vec<_> = route.candidates.iter().map(|c| c.provider.as_str()).collect();
    assert_eq!(names, ["b", "a", "c"]);

    // b: 503 twice (gives up), a: 429 with a long Retry-After (gives up at once), c answers.
    let unavailable = || mock::status(503, &[], r#"{"error":{"message":"overloaded"}}"#);
    b.push(unavailable()).push(unavailable());
    a.push(mock::status(429, &[("retry-after", "60")], "slow down"));
    c.push(mock::text_reply(&["from c"], 1, 1));
    let mut log = Vec::new();
    let opened = route
        .open(&request("ignored: the route's model is sent"), &policy, |f| {
            let next = match f.next {
                NextStep::RetryAfter(d) => {
                    assert!(d <= Duration::from_millis(20), "{d:?}");
                    "retry".to_string()
                }
                NextStep::Fallback(to) => format!("fallback to {to}"),
                NextStep::GiveUp => "give up".to_string(),
            };
            log.push(format!("{} #{}: {} -> {next}", f.provider, f.attempt, f.error));
        })
        .await
        .expect("c serves the round");
    assert_eq!(
        log,
        [
            "b #1: upstream unavailable: HTTP 503 Service Unavailable: overloaded -> retry",
            "b #2: upstream unavailable: HTTP 503 Service Unavailable: overloaded -> fallback to a",
            "a #1: upstream rate limited: HTTP 429 Too Many Requests: slow down -> fallback to c",
        ]
    );
    assert_eq!((opened.provider.as_str(), opened.attempts), ("c", 4));
    let (text, error) = drain(opened.stream).await;
    assert_eq!((text.as_str(), error), ("from c", None));
    assert_eq!(models_sent(&b), ["m", "m"]);
    assert_eq!(models_sent(&a), ["m"]);
    assert_eq!(models_sent(&c), ["m"]);

    // A request error (400) is final: no retry, no fallback.
    a.push(mock::status(400, &[], r#"{"error":{"message":"bad request"}}"#));
    let route = providers.route(None, Some("m"), "").expect("route");
    let mut steps = Vec::new();
    let err = route
        .open(&request("m"), &policy, |f| steps.push(f.next == NextStep::GiveUp))
        .await
        .expect_err("400 is final");
    assert_eq!(
        err,
        LlmError::Upstream {
            detail: "HTTP 400 Bad Request: bad request".into(),
            public: "the model provider refused the request (HTTP 400): bad request".into(),
        }
    );
    assert_eq!(steps, [true]);
    assert_eq!(models_sent(&c).len(), 1, "c was not tried");

    // With fallback off, only the named provider is tried.
    config.llm.fallback = false;
    let providers = Providers::from_config(&config).expect("providers");
    let route = providers.route(Some("b"), Some("m"), "").expect("route");
    assert_eq!(route.candidates.len(), 1);
    b.push(unavailable()).push(unavailable());
    let err = route.open(&request("m"), &policy, |_| {}).await.expect_err("b fails");
    assert!(err.is_retryable(), "{err}");
    assert_eq!(models_sent(&b).len(), 4);
}

#[tokio::test]
async fn a_retry_after_within_the_cap_is_waited_then_the_same_provider_answers() {
    let a = MockUpstream::start().await;
    a.push(mock::status(429, &[("retry-after", "0.3")], ""));
    a.push(mock::text_reply(&["ok"], 1, 1));
    let providers = Providers::from_config(&config_with(vec![provider("a", &a.base_url, &[])])).expect("providers");
    let route = providers.route(None, None, "m").expect("route");
    let policy = RetryPolicy {
        max_attempts: 3,
        base_ms: 1,
        max_ms: 1_000,
    };
    let started = Instant::now();
    let mut delays = Vec::new();
    let opened = route
        .open(&request("m"), &policy, |f| match f.next {
            NextStep::RetryAfter(d) => delays.push(d),
            other => panic!("unexpected {other:?}"),
        })
        .await
        .expect("second attempt answers");
    assert_eq!(delays, [Duration::from_millis(300)]);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "the Retry-After was waited"
    );
    assert_eq!(opened.attempts, 2);
    assert_eq!(drain(opened.stream).await.0, "ok");
}

// ---- headers ----

#[tokio::test]
async fn extra_headers_and_the_key_from_api_key_env_reach_the_upstream() {
    let upstream = start_recorder(json!({"data": []}), 0).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("chatd.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[[providers]]
name = "router"
base_url = "{}"
api_key_env = "ROUTER_KEY"
default_model = "m"
headers = {{ "X-Title" = "chatd tests", "HTTP-Referer" = "https://example.com/chatd" }}
"#,
            upstream.base_url
        ),
    )
    .expect("write config");
    let config = Config::load_with_env(Some(&path), |name| {
        (name == "ROUTER_KEY").then(|| "sk-secret".to_string())
    })
    .expect("config loads");
    let providers = Providers::from_config(&config).expect("providers");
    let route = providers.route(None, None, "").expect("route");
    assert_eq!(route.model, "m");
    let stream = route.candidates[0]
        .client
        .stream_chat(&request("m"))
        .await
        .expect("stream");
    assert_eq!(drain(stream).await, ("recorded".to_string(), None));
    providers.list_models().await;

    let requests = upstream.requests();
    let kinds: Vec<_> = requests.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["POST /chat/completions", "GET /models"]);
    for (kind, headers) in &requests {
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        assert_eq!(get("x-title").as_deref(), Some("chatd tests"), "{kind}");
        assert_eq!(
            get("http-referer").as_deref(),
            Some("https://example.com/chatd"),
            "{kind}"
        );
        assert_eq!(get("authorization").as_deref(), Some("Bearer sk-secret"), "{kind}");
    }
    let (_, post) = &requests[0];
    assert_eq!(
        post.get("accept").and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    assert_eq!(
        post.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
}

// ---- timeouts ----

fn timeouts(first_chunk_ms: u64, idle_ms: u64) -> LlmConfig {
    LlmConfig {
        first_chunk_timeout_ms: first_chunk_ms,
        idle_timeout_ms: idle_ms,
        ..LlmConfig::default()
    }
}

async fn client_for(upstream: &MockUpstream, llm: LlmConfig) -> LlmClient {
    LlmClient::new(&LlmConfig {
        base_url: upstream.base_url.clone(),
        ..llm
    })
    .expect("client")
}

#[tokio::test]
async fn no_response_headers_is_a_first_chunk_timeout() {
    let upstream = MockUpstream::start().await;
    upstream.push(MockResponse::Hang);
    let client = client_for(&upstream, timeouts(300, 5_000)).await;
    let started = Instant::now();
    let Err(err) = client.stream_chat(&request("m")).await else {
        panic!("no headers must fail");
    };
    assert_eq!(err, LlmError::first_chunk_timeout(300));
    assert_eq!(err.to_string(), "upstream sent no first chunk within 300 ms");
    assert!(err.is_retryable());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
}

#[tokio::test]
async fn headers_without_a_first_event_is_a_first_chunk_timeout() {
    let upstream = MockUpstream::start().await;
    upstream.push(mock::timed(&[(2_000, mock::content("late"))]));
    // The idle timeout is shorter but does not apply before the first event.
    let client = client_for(&upstream, timeouts(400, 100)).await;
    let started = Instant::now();
    let stream = client.stream_chat(&request("m")).await.expect("headers arrive");
    let (text, error) = drain(stream).await;
    assert_eq!(text, "");
    let error = error.expect("times out");
    assert_eq!(error.to_string(), "upstream sent no first chunk within 400 ms");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_millis(1_500),
        "{waited:?}"
    );
}

#[tokio::test]
async fn a_slow_first_event_within_the_first_chunk_timeout_is_fine() {
    let upstream = MockUpstream::start().await;
    upstream.push(MockResponse::Stream(vec![
        (500, format!("data: {}\n\n", mock::content("slow start"))),
        (50, format!("data: {}\n\n", mock::finish("stop"))),
        (50, "data: [DONE]\n\n".to_string()),
    ]));
    let client = client_for(&upstream, timeouts(3_000, 200)).await;
    let stream = client.stream_chat(&request("m")).await.expect("stream");
    assert_eq!(drain(stream).await, ("slow start".to_string(), None));
}

#[tokio::test]
async fn silence_after_the_first_event_is_an_idle_timeout() {
    let upstream = MockUpstream::start().await;
    upstream.push(mock::timed(&[(0, mock::content("Hi")), (3_000, mock::content("late"))]));
    let client = client_for(&upstream, timeouts(5_000, 300)).await;
    let stream = client.stream_chat(&request("m")).await.expect("stream");
    let (text, error) = drain(stream).await;
    assert_eq!(text, "Hi");
    let error = error.expect("times out");
    assert_eq!(error, LlmError::idle_timeout(300));
    assert_eq!(error.to_string(), "upstream sent nothing for 300 ms");
}

#[tokio::test]
async fn a_first_chunk_timeout_is_retried_by_open() {
    let upstream = MockUpstream::start().await;
    upstream.push(MockResponse::Hang);
    upstream.push(mock::text_reply(&["second try"], 1, 1));
    let mut config = config_with(vec![provider("a", &upstream.base_url, &[])]);
    config.llm.first_chunk_timeout_ms = 200;
    let providers = Providers::from_config(&config).expect("providers");
    let route = providers.route(None, None, "m").expect("route");
    let mut errors = Vec::new();
    let opened = route
        .open(&request("m"), &providers.retry_policy(), |f| {
            errors.push(f.error.to_string())
        })
        .await
        .expect("second attempt");
    assert_eq!(errors, ["upstream sent no first chunk within 200 ms"]);
    assert_eq!(drain(opened.stream).await.0, "second try");
}

// ---- model lists ----

#[tokio::test]
async fn list_models_merges_config_and_upstream_lists_and_marks_unreachable_providers() {
    let listing = start_recorder(
        json!({"object": "list", "data": [{"id": "served-1", "object": "model"}, {"id": "configured-1"}, {"id": "served-2"}]}),
        0,
    )
    .await;
    let slow = start_recorder(json!({"data": [{"id": "too-late"}]}), 5_000).await;
    let no_models_route = MockUpstream::start().await;
    let closed = closed_port_url();

    let mut with_default = provider("listing", &listing.base_url, &["configured-1", "configured-2"]);
    with_default.default_model = Some("configured-default".into());
    let mut credentials = provider("closed", &closed, &["offline-model"]);
    credentials.base_url = closed.replace("http://", "http://user:pass@");
    let providers = Providers::from_config(&config_with(vec![
        with_default,
        credentials,
        provider("slow", &slow.base_url, &[]),
        provider("mock", &no_models_route.base_url, &["m"]),
    ]))
    .expect("providers");

    let started = Instant::now();
    let listed = providers.list_models_within(Duration::from_millis(800)).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "fetched concurrently: {:?}",
        started.elapsed()
    );
    let names: Vec<_> = listed.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["listing", "closed", "slow", "mock"]);

    let l = &listed[0];
    assert!(l.reachable && l.error.is_none(), "{l:?}");
    assert_eq!(l.configured, ["configured-1", "configured-2", "configured-default"]);
    assert_eq!(l.listed, ["served-1", "configured-1", "served-2"]);
    assert_eq!(
        l.models(),
        [
            "configured-1",
            "configured-2",
            "configured-default",
            "served-1",
            "served-2"
        ]
    );
    assert_eq!(l.base_url, listing.base_url);

    let c = &listed[1];
    assert!(!c.reachable, "{c:?}");
    assert!(
        c.error
            .as_deref()
            .is_some_and(|e| e == "the model provider could not be reached; try again later"),
        "{c:?}"
    );
    assert_eq!(c.models(), ["offline-model"], "configured models are still listed");
    assert_eq!(c.base_url, closed, "credentials are not shown");

    let s = &listed[2];
    assert!(!s.reachable, "{s:?}");
    assert_eq!(
        s.error.as_deref(),
        Some("the model provider could not be reached; try again later")
    );

    let m = &listed[3];
    assert!(!m.reachable, "{m:?}");
    assert!(m.error.as_deref().is_some_and(|e| e.contains("404")), "{m:?}");
    assert_eq!(m.models(), ["m"]);
}
