//! One reply, run as its own task: the phases of a turn.
//!
//! A turn begins by committing the user's message and the reply's row
//! (`begin.rs`), while the first round's upstream request opens. Each round
//! streams the model's answer, turning deltas into events as they arrive
//! (`round.rs`). If the round asked for tools, the calls run (in parallel,
//! with timeouts and approvals), their results join the history and the next
//! round starts (`tools.rs`); a round without tool calls ends the reply. The
//! final state is written to the store before the terminal event is
//! published, so a client that saw `done` can read the stored message
//! (`finish.rs`).

mod begin;
mod exposure;
mod finish;
mod round;
mod tools;

use std::sync::Arc;

use serde_json::Value;
use uuid::Uuid;

use super::log::Reply;
use super::registry::ReplyRegistry;
use super::steps::StepRecorder;
use super::{ChatError, Deps, Settings};
use crate::domain::{ErrorEvent, UsageTotals};
use crate::llm::{LlmError, RequestMessage, Route, ToolCall};
use crate::store::NewTurn;
use tokio::sync::oneshot;

/// Why a reply stopped before a normal end.
#[derive(Debug)]
pub(super) enum Stop {
    Cancelled,
    Llm(LlmError),
    MaxIterations(u32),
    /// The reply ran past `chat.max_reply_ms` (the limit, in ms).
    ReplyTimeout(u64),
    Internal(String),
    /// The turn could not be committed: the handler answered with the
    /// error, and there is nothing to store or publish.
    NotBegun,
}

impl Stop {
    /// The `error` event for this stop; `None` for a cancel (which ends with
    /// `done`).
    pub(super) fn event(&self, interrupted: bool) -> Option<ErrorEvent> {
        Some(match self {
            Stop::Cancelled if interrupted => ErrorEvent::new(
                "interrupted",
                "the server is shutting down; the partial reply is stored",
            ),
            Stop::Cancelled | Stop::NotBegun => return None,
            // The client gets the code and a message without URLs,
            // addresses or upstream bodies; the log has the detail.
            Stop::Llm(e) => ErrorEvent::new(upstream_code(e), e.client_message()),
            Stop::MaxIterations(n) => ErrorEvent::new(
                "max_iterations",
                format!("the model was still calling tools after {n} rounds; the reply was stopped"),
            ),
            Stop::ReplyTimeout(ms) => ErrorEvent::new(
                "reply_timeout",
                format!(
                    "the reply ran longer than the server's limit of {ms} ms (chat.max_reply_ms) and was stopped; \
                     the partial reply is stored"
                ),
            ),
            Stop::Internal(m) => ErrorEvent::new("internal", m.clone()),
        })
    }
}

/// The `kind` label of `chatd_upstream_errors_total`.
pub(super) fn upstream_kind(e: &LlmError) -> &'static str {
    match e {
        LlmError::Unavailable { .. } => "unavailable",
        LlmError::RateLimited { .. } => "rate_limited",
        LlmError::Timeout { .. } => "timeout",
        LlmError::Upstream { .. } => "upstream_error",
    }
}

/// The `error` event code of an upstream failure.
fn upstream_code(e: &LlmError) -> &'static str {
    match e {
        LlmError::Unavailable { .. } => "upstream_unavailable",
        LlmError::RateLimited { .. } => "rate_limited",
        LlmError::Timeout { .. } => "upstream_timeout",
        LlmError::Upstream { .. } => "upstream_error",
    }
}

/// What one round of the model produced.
pub(super) struct Round {
    pub calls: Vec<ToolCall>,
    pub finish_reason: Option<String>,
}

/// Everything one reply needs; consumed by [`Generation::run`].
pub(in crate::chat) struct Generation {
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
pub(in crate::chat) struct Begin {
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
                let (base, result) = self.run_in_time(base, &mut rec, &mut usage, begin, started).await;
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
        Box::pin(self.finish(result, base, rec, usage, started, active)).await;
    }

    /// [`Generation::run_loop`] within `chat.max_reply_ms` of `started`.
    /// When the time runs out, the reply is cancelled as a cancel does it
    /// (the upstream request and running tools are dropped, a wait for
    /// approval ends), and that cancel is reported as
    /// [`Stop::ReplyTimeout`]. A reply cancelled or interrupted before the
    /// limit stays so.
    async fn run_in_time(
        &self,
        base: Vec<RequestMessage>,
        rec: &mut StepRecorder,
        usage: &mut UsageTotals,
        begin: Option<Box<Begin>>,
        started: std::time::Instant,
    ) -> (Vec<RequestMessage>, Result<String, Stop>) {
        let limit_ms = self.deps.config.chat.max_reply_ms;
        let deadline = tokio::time::Instant::from_std(started) + std::time::Duration::from_millis(limit_ms);
        // Boxed: a timer is large, and the reply's task keeps this future's
        // size for the whole reply (see `run`).
        let timer = Box::pin(tokio::time::sleep_until(deadline));
        let work = self.run_loop(base, rec, usage, begin);
        tokio::pin!(work);
        let mut timed_out = false;
        let (base, result) = tokio::select! {
            biased;
            out = &mut work => out,
            _ = timer => {
                timed_out = !self.reply.cancel.is_cancelled();
                self.reply.cancel.cancel();
                work.await
            }
        };
        match result {
            Err(Stop::Cancelled) if timed_out && !self.reply.is_interrupted() => {
                (base, Err(Stop::ReplyTimeout(limit_ms)))
            }
            other => (base, other),
        }
    }
}
