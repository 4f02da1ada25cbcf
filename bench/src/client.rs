//! The load client: runs chats against chatd (`POST /api/chat`, parsing its
//! typed SSE events) or straight against the mock upstream (parsing the
//! OpenAI chunk stream, and doing the tool round trip itself), and times
//! every text delta.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::mock::{ReplySpec, TOOL_RESULT, expected_text};

/// Most concurrent streams on one HTTP/2 connection (hyper's server allows
/// 200 by default).
const STREAMS_PER_H2_CONNECTION: usize = 150;

/// Where the load goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// chatd's `POST /api/chat`.
    Chatd,
    /// The mock's `POST /v1/chat/completions`: the floor.
    Direct,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Chatd => "chatd",
            Kind::Direct => "direct",
        }
    }
}

/// A server and the HTTP clients that talk to it.
pub struct Target {
    pub kind: Kind,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    clients: Vec<reqwest::Client>,
}

impl Target {
    /// HTTP/1.1 (one connection per concurrent stream), or with `h2c` HTTP/2
    /// over cleartext with prior knowledge: one client (connection) per 150
    /// workers.
    pub fn new(kind: Kind, addr: std::net::SocketAddr, concurrency: usize, h2c: bool) -> anyhow::Result<Self> {
        let count = if h2c {
            concurrency.div_ceil(STREAMS_PER_H2_CONNECTION).max(1)
        } else {
            1
        };
        let clients = (0..count)
            .map(|_| {
                let builder = reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(30))
                    .tcp_nodelay(true)
                    .no_proxy();
                let builder = if h2c {
                    builder.http2_prior_knowledge()
                } else {
                    builder.http1_only()
                };
                builder.build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            kind,
            base: format!("http://{addr}"),
            clients,
        })
    }

    /// The client of worker `worker`.
    pub fn client(&self, worker: usize) -> &reqwest::Client {
        &self.clients[worker % self.clients.len()]
    }
}

/// One chat.
#[derive(Debug, Clone)]
pub struct Job {
    pub spec: ReplySpec,
    pub message: String,
    /// chatd: continue this conversation.
    pub conversation_id: Option<Uuid>,
    /// Direct: the earlier messages (OpenAI shape) sent before the user's.
    pub history: Option<Arc<Vec<Value>>>,
}

impl Job {
    /// A chat in a new conversation.
    pub fn new(spec: ReplySpec, n: usize) -> Self {
        Self {
            spec,
            message: user_message(n),
            conversation_id: None,
            history: None,
        }
    }
}

/// A user message of about 100 characters.
pub fn user_message(n: usize) -> String {
    format!("Benchmark message {n}: tell me a short story about a quick brown fox and a lazy dog, please.")
}

/// What one chat delivered.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub ok: bool,
    pub error: Option<String>,
    /// From sending the request to chatd's `start` event (the turn is
    /// committed), or to the mock's response headers.
    pub start_us: Option<u64>,
    /// From sending the request to the first text delta.
    pub ttft_us: Option<u64>,
    /// Between consecutive text deltas.
    pub gaps_us: Vec<u32>,
    /// From the last text delta to the end of the reply (chatd's `done`, the
    /// mock's `[DONE]`).
    pub tail_us: Option<u64>,
    pub tokens: usize,
    pub expected_tokens: usize,
    pub text_bytes: usize,
    pub conversation_id: Option<Uuid>,
    pub message_id: Option<Uuid>,
}

impl Outcome {
    fn token(&mut self, started: Instant, last: &mut Option<Instant>, bytes: usize) {
        let now = Instant::now();
        match *last {
            None => self.ttft_us = Some(now.duration_since(started).as_micros() as u64),
            Some(prev) => self
                .gaps_us
                .push(u32::try_from(now.duration_since(prev).as_micros()).unwrap_or(u32::MAX)),
        }
        *last = Some(now);
        self.tokens += 1;
        self.text_bytes += bytes;
    }
}

/// Runs `job` against `target` with worker `worker`'s client.
pub async fn run_job(target: &Target, worker: usize, job: &Job) -> Outcome {
    let mut out = Outcome {
        expected_tokens: job.spec.tokens,
        gaps_us: Vec::with_capacity(job.spec.tokens),
        ..Outcome::default()
    };
    let client = target.client(worker);
    let limit = Duration::from_secs(60) + Duration::from_millis(job.spec.delay_ms * job.spec.tokens as u64 * 4);
    let run = async {
        match target.kind {
            Kind::Chatd => chatd_chat(client, &target.base, job, &mut out).await,
            Kind::Direct => direct_chat(client, &target.base, job, &mut out).await,
        }
    };
    let result = match tokio::time::timeout(limit, run).await {
        Ok(r) => r,
        Err(_) => Err(format!("no end within {} s", limit.as_secs())),
    };
    out.error = match result {
        Err(e) => Some(e),
        Ok(()) if out.tokens != job.spec.tokens => {
            Some(format!("got {} text deltas, expected {}", out.tokens, job.spec.tokens))
        }
        Ok(()) => None,
    };
    out.ok = out.error.is_none();
    out
}

/// An error with its sources, on one line.
fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

async fn check_status(response: reqwest::Response) -> Result<reqwest::Response, String> {
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    Err(format!("HTTP {status}: {}", body.chars().take(200).collect::<String>()))
}

#[derive(Deserialize)]
struct StartData {
    conversation_id: Uuid,
    message_id: Uuid,
}

#[derive(Deserialize)]
struct StepData<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    delta: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ErrorData {
    code: String,
    message: String,
}

async fn chatd_chat(client: &reqwest::Client, base: &str, job: &Job, out: &mut Outcome) -> Result<(), String> {
    let mut body = json!({
        "message": job.message,
        "model": job.spec.model(),
        "tools": if job.spec.tool { json!(["calculator"]) } else { json!(false) },
    });
    if let Some(id) = job.conversation_id {
        body["conversation_id"] = json!(id);
    }
    let started = Instant::now();
    let mut last = None;
    let response = client
        .post(format!("{base}/api/chat"))
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("send: {}", describe(&e)))?;
    let response = check_status(response).await?;
    let mut events = response.bytes_stream().eventsource();
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| format!("stream: {}", describe(&e)))?;
        if out.start_us.is_none() {
            out.start_us = Some(started.elapsed().as_micros() as u64);
        }
        match event.event.as_str() {
            "process_step" => {
                let step: StepData<'_> =
                    serde_json::from_str(&event.data).map_err(|e| format!("bad process_step: {e}"))?;
                if step.kind == "text"
                    && let Some(delta) = step.delta
                {
                    out.token(started, &mut last, delta.len());
                }
            }
            "start" => {
                let start: StartData = serde_json::from_str(&event.data).map_err(|e| format!("bad start: {e}"))?;
                out.conversation_id = Some(start.conversation_id);
                out.message_id = Some(start.message_id);
            }
            "done" => {
                out.tail_us = last.map(|l: Instant| l.elapsed().as_micros() as u64);
                return Ok(());
            }
            "error" => {
                let error: ErrorData = serde_json::from_str(&event.data).map_err(|e| format!("bad error: {e}"))?;
                return Err(format!("error event {}: {}", error.code, error.message));
            }
            _ => {}
        }
    }
    Err("the stream ended without a terminal event".into())
}

#[derive(Serialize)]
struct DirectRequest<'a> {
    model: String,
    messages: Vec<&'a Value>,
    stream: bool,
    stream_options: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<Value>,
}

#[derive(Deserialize)]
struct DirectChunk<'a> {
    #[serde(default, borrow)]
    choices: Vec<DirectChoice<'a>>,
}

#[derive(Deserialize)]
struct DirectChoice<'a> {
    #[serde(default, borrow)]
    delta: Option<DirectDelta<'a>>,
}

#[derive(Deserialize)]
struct DirectDelta<'a> {
    #[serde(default, borrow)]
    content: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    tool_calls: Vec<DirectToolPiece>,
}

#[derive(Deserialize)]
struct DirectToolPiece {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<DirectFunction>,
}

#[derive(Deserialize)]
struct DirectFunction {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

/// The calculator as a client would offer it (what chatd sends, roughly).
fn calculator_tool() -> Value {
    json!([{
        "type": "function",
        "function": {
            "name": "calculator",
            "description": "Evaluates an arithmetic expression.",
            "parameters": {
                "type": "object",
                "properties": {"expression": {"type": "string", "description": "e.g. (3 + 4) * 2 ^ 10"}},
                "required": ["expression"],
                "additionalProperties": false
            }
        }
    }])
}

async fn direct_chat(client: &reqwest::Client, base: &str, job: &Job, out: &mut Outcome) -> Result<(), String> {
    let mut messages: Vec<Value> = vec![json!({"role": "user", "content": job.message})];
    let empty = Vec::new();
    let history = job.history.as_deref().unwrap_or(&empty);
    let started = Instant::now();
    let mut last = None;
    for _round in 0..2 {
        let request = DirectRequest {
            model: job.spec.model(),
            messages: history.iter().chain(messages.iter()).collect(),
            stream: true,
            stream_options: json!({"include_usage": true}),
            tools: job.spec.tool.then(calculator_tool),
        };
        let response = client
            .post(format!("{base}/v1/chat/completions"))
            .json(&request)
            .send()
            .await
            .map_err(|e| format!("send: {}", describe(&e)))?;
        let response = check_status(response).await?;
        if out.start_us.is_none() {
            out.start_us = Some(started.elapsed().as_micros() as u64);
        }
        let mut events = response.bytes_stream().eventsource();
        let (mut call_id, mut call_name, mut call_args) = (None, None, String::new());
        let mut done = false;
        while let Some(event) = events.next().await {
            let event = event.map_err(|e| format!("stream: {}", describe(&e)))?;
            let data = event.data.trim();
            if data == "[DONE]" {
                out.tail_us = last.map(|l: Instant| l.elapsed().as_micros() as u64);
                done = true;
                break;
            }
            let chunk: DirectChunk<'_> = serde_json::from_str(data).map_err(|e| format!("bad chunk: {e}"))?;
            for delta in chunk.choices.into_iter().filter_map(|c| c.delta) {
                if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                    out.token(started, &mut last, text.len());
                }
                for piece in delta.tool_calls {
                    call_id = piece.id.or(call_id);
                    if let Some(f) = piece.function {
                        call_name = f.name.or(call_name);
                        call_args.push_str(f.arguments.as_deref().unwrap_or(""));
                    }
                }
            }
        }
        if !done {
            return Err("the stream ended without [DONE]".into());
        }
        let Some(id) = call_id else { return Ok(()) };
        // Run the "tool" and send its result back, as chatd does.
        messages.push(json!({
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": id, "type": "function",
                            "function": {"name": call_name.unwrap_or_default(), "arguments": call_args}}]
        }));
        messages.push(json!({"role": "tool", "tool_call_id": id, "content": TOOL_RESULT}));
    }
    Err("the model was still calling tools after 2 rounds".into())
}

/// How to run a load: `concurrency` workers, each running `jobs_per_worker`
/// chats one after the other; worker `w` starts at `ramp * w / concurrency`.
pub struct Plan {
    pub concurrency: usize,
    pub jobs_per_worker: usize,
    pub ramp: Duration,
    /// The `k`th job of worker `w`.
    pub job: Arc<dyn Fn(usize, usize) -> Job + Send + Sync>,
}

/// Every chat's outcome, the wall time of the whole load and the most
/// chats in flight at once.
pub struct LoadResult {
    pub outcomes: Vec<Outcome>,
    pub wall: Duration,
    pub peak_in_flight: usize,
}

/// Runs `plan` against `target`.
pub async fn run_load(target: Arc<Target>, plan: &Plan) -> LoadResult {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let start = tokio::time::Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for w in 0..plan.concurrency {
        let delay = plan.ramp.mul_f64(w as f64 / plan.concurrency as f64);
        let (target, make, in_flight, peak) = (target.clone(), plan.job.clone(), in_flight.clone(), peak.clone());
        let jobs = plan.jobs_per_worker;
        set.spawn(async move {
            tokio::time::sleep_until(start + delay).await;
            let mut outcomes = Vec::with_capacity(jobs);
            for k in 0..jobs {
                let job = make(w, k);
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                outcomes.push(run_job(&target, w, &job).await);
                in_flight.fetch_sub(1, Ordering::SeqCst);
            }
            outcomes
        });
    }
    let mut outcomes = Vec::with_capacity(plan.concurrency * plan.jobs_per_worker);
    while let Some(done) = set.join_next().await {
        match done {
            Ok(list) => outcomes.extend(list),
            Err(e) => outcomes.push(Outcome {
                error: Some(format!("worker panicked: {e}")),
                ..Outcome::default()
            }),
        }
    }
    LoadResult {
        outcomes,
        wall: start.elapsed(),
        peak_in_flight: peak.load(Ordering::SeqCst),
    }
}

/// Checks through chatd's API that every successful chat in `outcomes` is
/// stored: its assistant message is `complete` with exactly the text the
/// mock sent. Returns the number stored correctly and up to 5 problems.
pub async fn verify_stored(target: &Target, outcomes: &[Outcome]) -> (usize, Vec<String>) {
    let checks = futures::stream::iter(outcomes.iter().enumerate())
        .map(|(i, o)| async move {
            let (Some(conversation), Some(message)) = (o.conversation_id, o.message_id) else {
                return Err(format!("chat {i} has no ids ({:?})", o.error));
            };
            let url = format!("{}/api/conversations/{conversation}/messages", target.base);
            let body: Value = target
                .client(i)
                .get(url)
                .send()
                .await
                .map_err(|e| describe(&e))?
                .json()
                .await
                .map_err(|e| describe(&e))?;
            let stored = body["messages"]
                .as_array()
                .and_then(|m| m.iter().find(|m| m["id"] == json!(message)))
                .ok_or_else(|| format!("message {message} is not stored"))?;
            let want = expected_text(o.expected_tokens);
            if stored["status"] != "complete" || stored["content"] != json!(want) {
                return Err(format!(
                    "message {message}: status {}, {} content bytes (want complete, {})",
                    stored["status"],
                    stored["content"].as_str().map_or(0, str::len),
                    want.len()
                ));
            }
            Ok(())
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let ok = checks.iter().filter(|c| c.is_ok()).count();
    let problems = checks.into_iter().filter_map(Result::err).take(5).collect();
    (ok, problems)
}

/// A conversation's messages in the OpenAI shape (role and content), as
/// chatd would send them upstream: every page of
/// `GET /api/conversations/{id}/messages`, walked back from the newest.
pub async fn history(target: &Target, conversation: Uuid) -> anyhow::Result<Vec<Value>> {
    let mut pages: Vec<Vec<Value>> = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut url = format!("{}/api/conversations/{conversation}/messages?limit=200", target.base);
        if let Some(before) = &before {
            url.push_str(&format!("&before={before}"));
        }
        let body: Value = target
            .client(0)
            .get(url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let messages = body["messages"]
            .as_array()
            .ok_or_else(|| anyhow::anyhow!("no messages in {body}"))?;
        pages.push(
            messages
                .iter()
                .map(|m| json!({"role": m["role"], "content": m["content"]}))
                .collect(),
        );
        match body["next_before"].as_str() {
            Some(next) => before = Some(next.to_string()),
            None => break,
        }
    }
    Ok(pages.into_iter().rev().flatten().collect())
}
