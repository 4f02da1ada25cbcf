//! One round of the model: the request (history, tools, settings), the
//! upstream stream turned into step events as it arrives, and the loop of
//! rounds until one asks for no tools.

use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::{Map, json};

use super::exposure::Exposure;
use super::{Begin, Generation, Round, Stop};
use crate::chat::assemble::{ToolCallAssembler, make_ids_unique};
use crate::chat::history;
use crate::chat::steps::StepRecorder;
use crate::chat::think::{Piece, ThinkSplitter};
use crate::config::ThinkingStyle;
use crate::domain::{ChatEvent, UsageTotals};
use crate::llm::{
    ChatRequest, FunctionDefinition, LlmError, RequestMessage, StreamItem, StreamOptions, ToolDefinition,
};

impl Generation {
    /// Runs the rounds on `base` (the history and the new user message) and
    /// gives `base` back unchanged, for the history cache. The messages are
    /// moved into each round's request and back, never copied: with 1,000
    /// earlier messages a copy cost about 0.2 ms.
    /// `begin` is the turn to commit while the first round opens.
    pub(super) async fn run_loop(
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

    pub(super) async fn rounds(
        &self,
        messages: &mut Vec<RequestMessage>,
        rec: &mut StepRecorder,
        usage: &mut UsageTotals,
        mut begin: Option<Box<Begin>>,
    ) -> Result<String, Stop> {
        let max_rounds = self.deps.config.chat.max_iterations;
        let tools = self.tool_definitions();
        // Every tool-call id of this reply so far: approvals, results and the
        // tool messages are keyed by id, so a reused id is renamed first.
        let mut call_ids = std::collections::HashSet::new();
        let mut exposure = Exposure::new(messages.len());

        for round in 0..max_rounds {
            rec.next_round(round);
            let mut request = self.request(std::mem::take(messages), tools.clone(), round);
            let outcome = self.stream_round(&request, rec, usage, begin.take()).await;
            *messages = std::mem::take(&mut request.messages);
            let Round {
                mut calls,
                finish_reason,
            } = outcome?;
            if calls.is_empty() {
                return Ok(finish_reason.unwrap_or_else(|| "stop".to_string()));
            }
            make_ids_unique(&mut calls, &mut call_ids);
            for call in &calls {
                let event = rec.tool_call(call);
                self.emit(rec, event);
            }
            messages.push(RequestMessage::Assistant {
                content: round_text(rec, round).unwrap_or_default(),
                reasoning_content: round_reasoning(rec, round),
                tool_calls: calls.clone(),
            });
            Box::pin(self.run_tools(&calls, rec, messages, &mut exposure)).await?;
        }
        Err(Stop::MaxIterations(max_rounds))
    }

    /// The tools offered to the model in this reply (OpenAI `tools[]`).
    pub(super) fn tool_definitions(&self) -> Vec<ToolDefinition> {
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
    pub(super) fn request(&self, messages: Vec<RequestMessage>, tools: Vec<ToolDefinition>, round: u32) -> ChatRequest {
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
    pub(super) async fn stream_round(
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
        let store = &self.deps.store;
        loop {
            // Backpressure: while the database writer's queue is full, read
            // no more of the upstream (its events would only queue up). One
            // atomic load per chunk when it is not.
            if store.queue_full() {
                tokio::select! {
                    biased;
                    _ = &mut cancelled => return Err(Stop::Cancelled),
                    _ = store.queue_room() => {}
                }
            }
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
            return Err(Stop::Llm(LlmError::upstream(
                "the stream ended before the reply finished (no finish_reason and no [DONE])",
            )));
        }
        Ok(Round {
            calls: calls.finish(),
            finish_reason,
        })
    }

    /// Sends a round's request through the route: retries with backoff and
    /// falls back to the next provider while nothing of the round has
    /// arrived; returns the stream once its first chunk is in.
    pub(super) async fn open(
        &self,
        request: &ChatRequest,
    ) -> Result<BoxStream<'static, Result<StreamItem, LlmError>>, LlmError> {
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

    pub(super) fn publish(&self, rec: &mut StepRecorder, piece: Piece) {
        let event = match piece {
            Piece::Thinking(t) => rec.thinking(&t),
            Piece::Text(t) => rec.text(&t),
        };
        self.emit(rec, event);
    }

    /// Publishes a step and, at most every `chat.flush_interval_ms`, writes
    /// the partial reply to its message row (what a crash can lose).
    pub(super) fn emit(&self, rec: &mut StepRecorder, event: ChatEvent) {
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
                .snapshot(self.reply.message_id, rec.content.clone(), reasoning, steps);
        }
    }
}

/// The text the model wrote in `round`, if any.
pub(super) fn round_text(rec: &StepRecorder, round: u32) -> Option<String> {
    round_blocks(rec, round, false)
}

/// The reasoning the model wrote in `round`, if any.
pub(super) fn round_reasoning(rec: &StepRecorder, round: u32) -> Option<String> {
    round_blocks(rec, round, true)
}

pub(super) fn round_blocks(rec: &StepRecorder, round: u32, thinking: bool) -> Option<String> {
    use crate::domain::StepKind;
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
