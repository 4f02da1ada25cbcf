//! One reply, run as its own task: the tool loop.
//!
//! Each round streams the model's answer, turning deltas into events as they
//! arrive. If the round asked for tools, the calls run (in parallel, with
//! timeouts), their results join the history and the next round starts; a
//! round without tool calls ends the reply. The final state is written to the
//! store before the terminal event is published, so a client that saw `done`
//! can read the stored message.

use std::sync::Arc;

use futures::StreamExt;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::assemble::ToolCallAssembler;
use super::events::{ChatEvent, DoneEvent, ErrorEvent, StartEvent, UsageTotals};
use super::history;
use super::log::Decision;
use super::log::{LoggedEvent, Reply, ReplyRegistry};
use super::steps::StepRecorder;
use super::think::{Piece, ThinkSplitter};
use super::{ChatError, Deps, Settings};
use crate::config::ThinkingStyle;
use crate::llm::{
    ChatRequest, FunctionDefinition, LlmError, RequestMessage, Route, StreamItem, StreamOptions, ToolCall,
    ToolDefinition,
};
use crate::store::{FinalReply, HistoryRow, NewTurn, Role, Status, TerminalEvent};
use crate::tools::executor::{self, Limits, ToolOutcome};
use crate::tools::{Approval, ToolContext};
use futures::stream::BoxStream;
use tokio::sync::oneshot;

/// Why a reply stopped before a normal end.
#[derive(Debug)]
enum Stop {
    Cancelled,
    Llm(LlmError),
    MaxIterations(u32),
    Internal(String),
    /// The turn could not be committed: the handler answered with the
    /// error, and there is nothing to store or publish.
    NotBegun,
}

impl Stop {
    /// The `error` event for this stop; `None` for a cancel (which ends with
    /// `done`).
    fn event(&self, interrupted: bool) -> Option<ErrorEvent> {
        Some(match self {
            Stop::Cancelled if interrupted => ErrorEvent::new(
                "interrupted",
                "the server is shutting down; the partial reply is stored",
            ),
            Stop::Cancelled | Stop::NotBegun => return None,
            Stop::Llm(e @ LlmError::Unavailable(_)) => ErrorEvent::new("upstream_unavailable", upstream_text(e)),
            Stop::Llm(e @ LlmError::RateLimited { .. }) => ErrorEvent::new("rate_limited", e.to_string()),
            Stop::Llm(e @ LlmError::Timeout { .. }) => ErrorEvent::new("upstream_timeout", e.to_string()),
            Stop::Llm(e @ LlmError::Upstream(_)) => ErrorEvent::new("upstream_error", upstream_text(e)),
            Stop::MaxIterations(n) => ErrorEvent::new(
                "max_iterations",
                format!("the model was still calling tools after {n} rounds; the reply was stopped"),
            ),
            Stop::Internal(m) => ErrorEvent::new("internal", m.clone()),
        })
    }
}

/// The `kind` label of `chatd_upstream_errors_total`.
fn upstream_kind(e: &LlmError) -> &'static str {
    match e {
        LlmError::Unavailable(_) => "unavailable",
        LlmError::RateLimited { .. } => "rate_limited",
        LlmError::Timeout { .. } => "timeout",
        LlmError::Upstream(_) => "upstream_error",
    }
}

/// The upstream's own words for unavailable/upstream errors (no prefix).
fn upstream_text(e: &LlmError) -> String {
    match e {
        LlmError::Unavailable(m) | LlmError::Upstream(m) => m.clone(),
        other => other.to_string(),
    }
}

/// What one round of the model produced.
struct Round {
    calls: Vec<ToolCall>,
    finish_reason: Option<String>,
}

/// Everything one reply needs; consumed by [`Generation::run`].
pub(super) struct Generation {
    pub deps: Arc<Deps>,
    pub reply: Arc<Reply>,
    /// Where the reply is registered as its conversation's running one.
    pub replies: Arc<ReplyRegistry>,
    pub user_message_id: Uuid,
    pub settings: Settings,
    /// The providers that may serve this reply, in order.
    pub route: Route,
    /// The conversation's project (its workspace is where tools work).
    pub project_id: Option<String>,
    /// Dropped when the reply ends (releases the caller's reply slot).
    pub guard: Option<Box<dyn std::any::Any + Send + Sync>>,
    pub enabled_tools: Arc<Vec<String>>,
    pub tool_choice: Option<Value>,
    pub suggested_title: Option<String>,
    /// The user's message of this turn.
    pub user_content: String,
    /// Where the messages before this turn come from.
    pub earlier: Earlier,
    /// The conversation's number of stored messages before this turn.
    pub earlier_count: u64,
    /// How long the finished reply stays in memory for resuming clients.
    pub retention: std::time::Duration,
    /// The turn to commit first; `None` once committed. Boxed: it is needed
    /// for a moment and the task keeps its size for the whole reply.
    pub begin: Option<Box<Begin>>,
}

/// A turn the reply's task commits before anything else
/// ([`Generation::commit`]): the user's message and the reply's row.
pub(super) struct Begin {
    pub turn: NewTurn,
    /// Told whether the turn was stored; the handler of `POST /api/chat`
    /// waits for it to answer 200 or an error.
    pub committed: oneshot::Sender<Result<(), ChatError>>,
}

/// The messages of a conversation before a turn (upstream shape, without
/// the system prompt).
#[derive(Debug, Clone)]
pub enum Earlier {
    /// None: the turn created the conversation.
    None,
    /// From the [`history::HistoryCache`].
    Cached(Vec<RequestMessage>),
    /// Read from the database.
    Load,
}

impl Generation {
    /// Runs the reply to its end and publishes every event, the terminal one
    /// last.
    ///
    /// The steps that last a moment (loading the history, opening the
    /// upstream request with its retries, running tools, the final commit)
    /// are awaited boxed: a future is as large as its largest step, and the
    /// reply's task keeps that size for the whole reply. Boxed, the task is
    /// 2.2 KB instead of 3.2 KB, about 8 MiB less at 10,000 streams
    /// (BENCHMARKS.md, fix 18). This future is what is spawned, with nothing
    /// around it but the reply's span: a wrapping `async` block would keep a
    /// second copy of the `Generation` (BENCHMARKS.md, fix 21).
    ///
    /// The reply starts by committing its turn. When the history is at hand
    /// (a new conversation, or one in the history cache), the first round's
    /// upstream request is sent while that commit runs, and `start` follows
    /// the commit; a history read from the database includes the new
    /// message, so it waits for the commit. If the commit fails, the
    /// upstream request is dropped, the reply is forgotten and nothing is
    /// published.
    ///
    /// Ends by scheduling the reply's removal from memory after `retention`.
    pub async fn run(mut self) {
        let reply = self.reply.clone();
        let started = std::time::Instant::now();
        let mut rec = StepRecorder::started();
        let mut usage = UsageTotals::default();
        let mut begin = self.begin.take();
        // The turn is committed on its own, before anything else, when the
        // history comes from the database (it must include the new message)
        // or when no round will run to commit it (`max_iterations = 0`,
        // which `Config::validate` refuses but the library does not check).
        let commit_first = matches!(self.earlier, Earlier::Load) || self.deps.config.chat.max_iterations == 0;
        if commit_first
            && let Some(turn) = begin.take()
            && !Box::pin(self.commit(*turn)).await
        {
            self.replies.remove(&reply);
            return;
        }
        let active = metrics::gauge!("chatd_replies_active");
        active.increment(1.0);
        let (base, result) = match Box::pin(self.history()).await {
            Ok(base) => {
                let (base, result) = self.run_loop(base, &mut rec, &mut usage, begin).await;
                (Some(base), result)
            }
            // Only a history read from the database fails, and that turn
            // was committed above.
            Err(stop) => (None, Err(stop)),
        };
        if let Err(Stop::NotBegun) = result {
            active.decrement(1.0);
            self.replies.remove(&reply);
            return;
        }
        if let Err(stop) = &result {
            tracing::warn!(message_id = %reply.message_id, reason = ?stop, "reply stopped");
            if let Stop::Llm(e) = stop {
                metrics::counter!("chatd_upstream_errors_total", "kind" => upstream_kind(e)).increment(1);
            }
        }

        let interrupted = reply.is_interrupted();
        let (status, finish_reason) = match &result {
            Ok(reason) => (Status::Complete, Some(reason.clone())),
            Err(Stop::Cancelled) if interrupted => (Status::Interrupted, None),
            Err(Stop::Cancelled) => (Status::Cancelled, Some("cancelled".to_string())),
            Err(_) => (Status::Error, None),
        };
        let error_event = result.as_ref().err().and_then(|stop| stop.event(interrupted));
        let final_reply = FinalReply {
            status,
            content: rec.content.clone(),
            reasoning: (!rec.reasoning.is_empty()).then(|| rec.reasoning.clone()),
            steps: serde_json::to_value(rec.stored()).unwrap_or(Value::Array(vec![])),
            tool_calls: (!rec.tool_calls.is_empty()).then(|| json!(rec.tool_calls)),
            sources: (!rec.sources.is_empty()).then(|| json!(rec.sources)),
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            finish_reason: finish_reason.clone(),
            error: error_event
                .as_ref()
                .filter(|_| status == Status::Error)
                .map(|e| json!({"code": e.code, "message": e.message})),
        };
        // The reply as the next turn's history will read it back.
        let next_history = base.map(|base| {
            let row = HistoryRow {
                role: Role::Assistant,
                content: final_reply.content.clone(),
                steps: final_reply.steps.to_string(),
            };
            (base, row)
        });
        // The terminal event is serialized now and committed with the final
        // state: stored together or not at all, in one transaction. If that
        // commit fails, `internal` is sent (and stored, if it can be) instead.
        let terminal = match (error_event, finish_reason) {
            (Some(error), _) => ChatEvent::Error(error),
            (None, reason) => ChatEvent::Done(DoneEvent {
                conversation_id: reply.conversation_id,
                message_id: reply.message_id,
                finish_reason: reason.unwrap_or_else(|| "stop".to_string()),
                usage,
                suggested_title: self.suggested_title.clone(),
            }),
        };
        let outcome = match &terminal {
            ChatEvent::Done(d) if d.finish_reason == "cancelled" => "cancelled",
            ChatEvent::Done(_) => "complete",
            ChatEvent::Error(e) if e.code == "interrupted" => "interrupted",
            _ => "error",
        };
        let logged = LoggedEvent::new(reply.next_seq(), terminal);
        let stored_event = TerminalEvent {
            seq: logged.seq,
            name: logged.name,
            data: logged.data_bytes(),
        };
        let stored = Box::pin(self.deps.store.writer().finish(
            reply.message_id,
            &self.settings.model,
            final_reply,
            stored_event,
        ))
        .await;
        let stored_ok = stored.is_ok();
        let (terminal, outcome) = match stored {
            Ok(()) => (Ok(logged), outcome),
            Err(e) => {
                tracing::error!(message_id = %reply.message_id, error = %e, "could not store the reply");
                let error = ChatEvent::Error(ErrorEvent::new("internal", "the reply could not be saved"));
                (Err(error), "error")
            }
        };
        match next_history {
            Some((mut messages, row)) if stored_ok => {
                history::push_row(&mut messages, &row);
                let count = self.earlier_count + 2;
                self.deps.history.put(reply.conversation_id, count, messages);
            }
            _ => self.deps.history.remove(reply.conversation_id),
        }
        // Before the terminal event: a client that sends the next message as
        // soon as it sees `done` must not find this reply still running
        // (409 conversation_busy).
        self.replies.finished(&reply);
        match terminal {
            Ok(stored) => reply.push_stored(stored),
            Err(event) => reply.push(event),
        };
        active.decrement(1.0);
        metrics::counter!("chatd_replies_total", "outcome" => outcome).increment(1);
        metrics::histogram!("chatd_reply_duration_seconds").record(started.elapsed().as_secs_f64());
        let model = self.settings.model.clone();
        metrics::counter!("chatd_tokens_total", "model" => model.clone(), "direction" => "prompt")
            .increment(usage.prompt_tokens);
        metrics::counter!("chatd_tokens_total", "model" => model, "direction" => "completion")
            .increment(usage.completion_tokens);
        drop(self.guard);
        self.replies.expire(reply.message_id, self.retention);
        tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "reply finished");
    }

    /// The conversation's messages up to this turn's user message (upstream
    /// shape, without the system prompt).
    async fn history(&mut self) -> Result<Vec<RequestMessage>, Stop> {
        let user = RequestMessage::User {
            content: self.user_content.clone(),
        };
        Ok(match std::mem::replace(&mut self.earlier, Earlier::Load) {
            Earlier::None => vec![user],
            Earlier::Cached(mut earlier) => {
                earlier.push(user);
                earlier
            }
            Earlier::Load => {
                let rows = self
                    .deps
                    .store
                    .history(self.reply.conversation_id, self.reply.message_id)
                    .await
                    .map_err(|e| Stop::Internal(format!("could not load the conversation: {e}")))?;
                history::from_rows(&rows)
            }
        })
    }

    /// Runs the rounds on `base` (the history and the new user message) and
    /// gives `base` back unchanged, for the history cache. The messages are
    /// moved into each round's request and back, never copied: with 1,000
    /// earlier messages a copy cost about 0.2 ms.
    /// `begin` is the turn to commit while the first round opens.
    async fn run_loop(
        &self,
        base: Vec<RequestMessage>,
        rec: &mut StepRecorder,
        usage: &mut UsageTotals,
        begin: Option<Box<Begin>>,
    ) -> (Vec<RequestMessage>, Result<String, Stop>) {
        let base_len = base.len();
        let mut messages = history::with_system(self.settings.system_prompt.as_deref(), base);
        let offset = messages.len() - base_len;
        let result = self.rounds(&mut messages, rec, usage, begin).await;
        messages.truncate(offset + base_len);
        messages.drain(..offset);
        (messages, result)
    }

    async fn rounds(
        &self,
        messages: &mut Vec<RequestMessage>,
        rec: &mut StepRecorder,
        usage: &mut UsageTotals,
        mut begin: Option<Box<Begin>>,
    ) -> Result<String, Stop> {
        let max_rounds = self.deps.config.chat.max_iterations;
        let tools = self.tool_definitions();

        for round in 0..max_rounds {
            rec.next_round(round);
            let mut request = self.request(std::mem::take(messages), tools.clone(), round);
            let outcome = self.stream_round(&request, rec, usage, begin.take()).await;
            *messages = std::mem::take(&mut request.messages);
            let Round { calls, finish_reason } = outcome?;
            if calls.is_empty() {
                return Ok(finish_reason.unwrap_or_else(|| "stop".to_string()));
            }
            for call in &calls {
                let event = rec.tool_call(call);
                self.emit(rec, event);
            }
            messages.push(RequestMessage::Assistant {
                content: round_text(rec, round).unwrap_or_default(),
                reasoning_content: round_reasoning(rec, round),
                tool_calls: calls.clone(),
            });
            Box::pin(self.run_tools(&calls, rec, messages)).await?;
        }
        Err(Stop::MaxIterations(max_rounds))
    }

    /// The tools offered to the model in this reply (OpenAI `tools[]`).
    fn tool_definitions(&self) -> Vec<ToolDefinition> {
        self.deps
            .tools
            .list_only(&self.enabled_tools)
            .into_iter()
            .map(|t| ToolDefinition {
                kind: "function",
                function: FunctionDefinition {
                    name: t.name,
                    description: t.description,
                    parameters: t.parameters,
                },
            })
            .collect()
    }

    /// Builds one round's upstream request. A forcing `tool_choice`
    /// (`required` or a named function) applies to the first round only and
    /// is left out afterwards (the API default, `auto`); otherwise a model
    /// that obeys it calls tools until `max_iterations`. The OpenAI Agents SDK
    /// resets it the same way. Leaving it out rather than sending `auto`
    /// matters: llama-cpp-python fails a streamed request with an explicit
    /// `auto`.
    fn request(&self, messages: Vec<RequestMessage>, tools: Vec<ToolDefinition>, round: u32) -> ChatRequest {
        let tool_choice = match &self.tool_choice {
            _ if tools.is_empty() => None,
            Some(choice) if round > 0 && choice != "none" && choice != "auto" => None,
            other => other.clone(),
        };
        let mut extra = Map::new();
        if let Some(on) = self.settings.thinking {
            match self.deps.config.llm.thinking_style {
                ThinkingStyle::ChatTemplateKwargs => {
                    extra.insert("chat_template_kwargs".into(), json!({ "enable_thinking": on }));
                }
                ThinkingStyle::ReasoningEffort => {
                    extra.insert("reasoning_effort".into(), json!(if on { "medium" } else { "low" }));
                }
                ThinkingStyle::None => {}
            }
        }
        ChatRequest {
            model: self.settings.model.clone(),
            messages,
            stream: true,
            stream_options: Some(StreamOptions { include_usage: true }),
            temperature: self.settings.temperature,
            max_tokens: self.settings.max_tokens,
            tool_choice,
            tools,
            extra,
        }
    }

    /// Streams one round, publishing thinking and text steps as they arrive.
    /// `begin`: the turn to commit while the request opens.
    async fn stream_round(
        &self,
        request: &ChatRequest,
        rec: &mut StepRecorder,
        usage: &mut UsageTotals,
        begin: Option<Box<Begin>>,
    ) -> Result<Round, Stop> {
        let cancel = &self.reply.cancel;
        let mut stream = match begin {
            Some(begin) => Box::pin(self.open_first(request, *begin)).await?,
            None => tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(Stop::Cancelled),
                opened = Box::pin(self.open(request)) => opened.map_err(Stop::Llm)?,
            },
        };
        let mut splitter = ThinkSplitter::default();
        let mut calls = ToolCallAssembler::default();
        let mut finish_reason = None;
        let mut round_usage = None;
        let mut saw_done = false;
        // One wait for the whole round, not a new one per chunk. The stream
        // is polled first: checking the token takes a lock, and this way it
        // is checked once per wake-up (when the stream has nothing more)
        // rather than twice per chunk. A cancel is still seen as soon as the
        // stream waits, or when tokio's budget makes it yield.
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        loop {
            let item = tokio::select! {
                biased;
                item = stream.next() => item,
                _ = &mut cancelled => return Err(Stop::Cancelled),
            };
            let chunk = match item {
                None => break,
                Some(Err(e)) => return Err(Stop::Llm(e)),
                Some(Ok(StreamItem::Done)) => {
                    saw_done = true;
                    break;
                }
                Some(Ok(StreamItem::Chunk(chunk))) => chunk,
            };
            if let Some(u) = chunk.usage {
                round_usage = Some(u);
            }
            for choice in chunk.choices.iter().filter(|c| c.index.unwrap_or(0) == 0) {
                if let Some(delta) = &choice.delta {
                    for reasoning in [&delta.reasoning_content, &delta.reasoning].into_iter().flatten() {
                        if !reasoning.is_empty() {
                            let event = rec.thinking(reasoning);
                            self.emit(rec, event);
                        }
                    }
                    if let Some(content) = delta.content.as_deref().filter(|c| !c.is_empty()) {
                        for piece in splitter.push(content) {
                            self.publish(rec, piece);
                        }
                    }
                    for piece in &delta.tool_calls {
                        calls.push(piece);
                    }
                }
                if let Some(reason) = choice.finish_reason.as_deref().filter(|r| !r.is_empty()) {
                    finish_reason = Some(reason.to_string());
                }
            }
        }
        for piece in splitter.finish() {
            self.publish(rec, piece);
        }
        if let Some(u) = round_usage {
            usage.prompt_tokens += u.prompt_tokens;
            usage.completion_tokens += u.completion_tokens;
            usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
        }
        if !saw_done && finish_reason.is_none() {
            return Err(Stop::Llm(LlmError::Upstream(
                "the stream ended before the reply finished (no finish_reason and no [DONE])".into(),
            )));
        }
        Ok(Round {
            calls: calls.finish(),
            finish_reason,
        })
    }

    /// Commits the turn while the first round's request opens: the
    /// upstream's time to first chunk and the commit overlap, where one
    /// used to wait for the other. The commit is not cancelled (the handler
    /// waits for it); once it is stored, a cancel stops the wait for the
    /// upstream as in any round.
    ///
    /// Errors: [`Stop::NotBegun`] when the commit failed (the request is
    /// dropped); [`Stop::Cancelled`]; [`Stop::Llm`] when the request failed.
    async fn open_first(
        &self,
        request: &ChatRequest,
        begin: Begin,
    ) -> Result<BoxStream<'static, Result<StreamItem, LlmError>>, Stop> {
        let opening = self.open(request);
        let commit = self.commit(begin);
        tokio::pin!(opening, commit);
        let mut opened = None;
        // The request first: it is sent on this first poll, and the
        // upstream works on it while the commit runs here.
        let stored = loop {
            tokio::select! {
                biased;
                result = &mut opening, if opened.is_none() => opened = Some(result),
                stored = &mut commit => break stored,
            }
        };
        if !stored {
            return Err(Stop::NotBegun);
        }
        let result = match opened {
            Some(result) => result,
            None => tokio::select! {
                biased;
                _ = self.reply.cancel.cancelled() => return Err(Stop::Cancelled),
                result = &mut opening => result,
            },
        };
        result.map_err(Stop::Llm)
    }

    /// Commits the turn (the user's message and this reply's row, and the
    /// conversation if new), publishes `start` when it is stored, and tells
    /// the waiting handler either way. Returns whether it was stored.
    async fn commit(&self, begin: Begin) -> bool {
        let Begin { turn, committed } = begin;
        let outcome = match self.deps.store.begin_turn(&turn).await {
            Ok(true) => Ok(()),
            // The conversation was deleted since the handler read it.
            Ok(false) => Err(ChatError::ConversationNotFound(turn.conversation.id)),
            Err(e) => Err(ChatError::Store(e)),
        };
        let stored = outcome.is_ok();
        if stored {
            self.reply.push(ChatEvent::Start(StartEvent {
                conversation_id: self.reply.conversation_id,
                user_message_id: self.user_message_id,
                message_id: self.reply.message_id,
                model: self.settings.model.clone(),
            }));
        }
        // The handler may be gone (its client disconnected): the reply
        // runs on and can be resumed.
        let _ = committed.send(outcome);
        stored
    }

    /// Sends a round's request through the route: retries with backoff and
    /// falls back to the next provider while nothing of the round has
    /// arrived; returns the stream once its first chunk is in.
    async fn open(&self, request: &ChatRequest) -> Result<BoxStream<'static, Result<StreamItem, LlmError>>, LlmError> {
        let policy = self.deps.providers.retry_policy();
        let message_id = self.reply.message_id;
        let opened = self
            .route
            .open(request, &policy, |failed| {
                tracing::warn!(
                    %message_id,
                    provider = failed.provider,
                    attempt = failed.attempt,
                    error = %failed.error,
                    next = ?failed.next,
                    "upstream attempt failed"
                );
            })
            .await?;
        if opened.attempts > 1 {
            tracing::info!(%message_id, provider = %opened.provider, attempts = opened.attempts, "upstream answered");
        }
        Ok(opened.stream)
    }

    fn publish(&self, rec: &mut StepRecorder, piece: Piece) {
        let event = match piece {
            Piece::Thinking(t) => rec.thinking(&t),
            Piece::Text(t) => rec.text(&t),
        };
        self.emit(rec, event);
    }

    /// Publishes a step and, at most every `chat.flush_interval_ms`, writes
    /// the partial reply to its message row (what a crash can lose).
    fn emit(&self, rec: &mut StepRecorder, event: ChatEvent) {
        if rec.first_delta_pending() {
            metrics::histogram!("chatd_time_to_first_token_seconds").record(rec.since_start().as_secs_f64());
        }
        self.reply.push(event);
        let interval = std::time::Duration::from_millis(self.deps.config.chat.flush_interval_ms);
        if rec.snapshot_due(interval) {
            let steps = serde_json::to_string(rec.stored()).unwrap_or_else(|_| "[]".into());
            let reasoning = (!rec.reasoning.is_empty()).then(|| rec.reasoning.clone());
            self.deps
                .store
                .writer()
                .snapshot(self.reply.message_id, rec.content.clone(), reasoning, steps);
        }
    }

    /// Runs a round's calls, publishing each result (in call order) and
    /// appending it to the history. Calls whose tool asks for approval first
    /// emit a `tool_approval` step and wait for the user's decision (a denial
    /// or no answer in time becomes a failed result). Cancelling drops (and
    /// so aborts) the calls still running.
    async fn run_tools(
        &self,
        calls: &[ToolCall],
        rec: &mut StepRecorder,
        messages: &mut Vec<RequestMessage>,
    ) -> Result<(), Stop> {
        let config = &self.deps.config.tools;
        let mut outcomes: Vec<Option<ToolOutcome>> = vec![None; calls.len()];
        let mut approved = Vec::new();
        let mut waiting = Vec::new();
        for (i, call) in calls.iter().enumerate() {
            let asks = self.enabled_tools.contains(&call.function.name)
                && self.deps.tools.approval(&call.function.name) == Approval::Ask;
            if asks {
                let rx = self.reply.await_approval(&call.id);
                let event = rec.tool_approval(call);
                self.emit(rec, event);
                waiting.push((i, rx));
            } else {
                approved.push(i);
            }
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(config.approval_timeout_ms);
        for (i, rx) in waiting {
            let decision = tokio::select! {
                biased;
                _ = self.reply.cancel.cancelled() => return Err(Stop::Cancelled),
                d = tokio::time::timeout_at(deadline, rx) => d,
            };
            match decision {
                Ok(Ok(Decision { approved: true, .. })) => approved.push(i),
                Ok(Ok(Decision {
                    approved: false,
                    reason,
                })) => {
                    let why = reason.map(|r| format!(" Their reason: {r}")).unwrap_or_default();
                    outcomes[i] = Some(declined(format!(
                        "Error: the user declined to run this tool call.{why} Do not call it again unless asked."
                    )));
                }
                Ok(Err(_)) | Err(_) => {
                    self.reply.forget_approval(&calls[i].id);
                    outcomes[i] = Some(declined(format!(
                        "Error: the user did not approve this tool call within {} ms, so it was not run.",
                        config.approval_timeout_ms
                    )));
                }
            }
        }
        approved.sort_unstable();

        let limits = Limits {
            timeout: std::time::Duration::from_millis(config.timeout_ms),
            concurrency: config.concurrency,
            max_output_bytes: config.max_output_bytes,
        };
        let ctx = ToolContext {
            conversation_id: self.reply.conversation_id,
            message_id: self.reply.message_id,
            workspace: self.project_id.as_ref().map(|p| config.workspace_root.join(p)),
            project_id: self.project_id.clone(),
            config: self.deps.tools_config.clone(),
            store: Some(self.deps.store.clone()),
        };
        let to_run: Vec<ToolCall> = approved.iter().map(|&i| calls[i].clone()).collect();
        let mut results = executor::run_calls(self.deps.tools.clone(), self.enabled_tools.clone(), ctx, to_run, limits);
        let mut next_to_emit = 0;
        loop {
            while let Some(Some(outcome)) = outcomes.get_mut(next_to_emit).map(Option::take) {
                self.publish_result(&calls[next_to_emit], outcome, rec, messages);
                next_to_emit += 1;
            }
            if next_to_emit == calls.len() {
                return Ok(());
            }
            let next = tokio::select! {
                biased;
                _ = self.reply.cancel.cancelled() => return Err(Stop::Cancelled),
                next = results.next() => next,
            };
            let Some((j, outcome)) = next else {
                return Err(Stop::Internal("a tool call produced no result".into()));
            };
            outcomes[approved[j]] = Some(outcome);
        }
    }

    /// Emits one tool result (and its sources) and adds it to the history.
    fn publish_result(
        &self,
        call: &ToolCall,
        outcome: ToolOutcome,
        rec: &mut StepRecorder,
        messages: &mut Vec<RequestMessage>,
    ) {
        let outcome_label = if outcome.success { "success" } else { "failure" };
        metrics::counter!("chatd_tool_calls_total", "tool" => call.function.name.clone(), "outcome" => outcome_label)
            .increment(1);
        let (sources, content) = if outcome.sources.is_empty() {
            (None, outcome.content)
        } else {
            let (event, renamed) = rec.sources(outcome.sources);
            (Some(event), renumber_citations(&outcome.content, &renamed))
        };
        messages.push(RequestMessage::Tool {
            tool_call_id: call.id.clone(),
            content: content.clone(),
        });
        let event = rec.tool_result(call, content, outcome.success, outcome.duration_ms);
        self.emit(rec, event);
        if let Some(event) = sources {
            self.emit(rec, event);
        }
    }
}

/// Rewrites `[S<n>]` citations in a tool's text to the reply-wide source
/// ids, in one pass (so `S1 -> S3` and `S3 -> S5` do not chain).
fn renumber_citations(text: &str, renamed: &[(String, String)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("[S") {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 1..];
        let digits = tail[1..].bytes().take_while(u8::is_ascii_digit).count();
        let id = &tail[..1 + digits];
        match renamed.iter().find(|(old, _)| old == id) {
            Some((_, new)) if digits > 0 && tail[1 + digits..].starts_with(']') => {
                out.push('[');
                out.push_str(new);
                rest = &tail[1 + digits..];
            }
            _ => {
                out.push_str("[S");
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The outcome of a call that was not run.
fn declined(content: String) -> ToolOutcome {
    ToolOutcome {
        content,
        success: false,
        duration_ms: 0,
        sources: Vec::new(),
    }
}

/// The text the model wrote in `round`, if any.
fn round_text(rec: &StepRecorder, round: u32) -> Option<String> {
    round_blocks(rec, round, false)
}

/// The reasoning the model wrote in `round`, if any.
fn round_reasoning(rec: &StepRecorder, round: u32) -> Option<String> {
    round_blocks(rec, round, true)
}

fn round_blocks(rec: &StepRecorder, round: u32, thinking: bool) -> Option<String> {
    use super::events::StepKind;
    let text: String = rec
        .stored()
        .iter()
        .filter(|s| s.round == round)
        .filter_map(|s| match (&s.step.kind, thinking) {
            (StepKind::Thinking { content, .. }, true) | (StepKind::Text { content, .. }, false) => content.as_deref(),
            _ => None,
        })
        .collect();
    (!text.is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::renumber_citations;

    #[test]
    fn citations_follow_the_reply_wide_ids() {
        let renamed = [
            ("S1".to_string(), "S3".to_string()),
            ("S3".to_string(), "S5".to_string()),
        ];
        assert_eq!(
            renumber_citations("[S1] a\n[S3] b [S2] [S", &renamed),
            "[S3] a\n[S5] b [S2] [S"
        );
        assert_eq!(renumber_citations("[S1x] [S]", &renamed), "[S1x] [S]");
    }
}
