//! The end of a turn: the final state and the terminal event, committed
//! together; the history cache; the reply's metrics.

use serde_json::{Value, json};

use super::{Generation, Stop};
use crate::chat::history;
use crate::chat::steps::StepRecorder;
use crate::domain::{ChatEvent, DoneEvent, ErrorEvent, Role, Status, UsageTotals};
use crate::llm::RequestMessage;
use crate::store::{FinalReply, HistoryRow, TerminalEvent};

impl Generation {
    /// Stores the reply's final state with its terminal event (or `internal`
    /// when that commit fails), updates the history cache, publishes the
    /// terminal event and records the reply's metrics. `base` is the history
    /// the rounds ran on (`None` when it could not be loaded); `active` the
    /// `chatd_replies_active` gauge this reply incremented.
    pub(super) async fn finish(
        self,
        result: Result<String, Stop>,
        base: Option<Vec<RequestMessage>>,
        rec: StepRecorder,
        usage: UsageTotals,
        started: std::time::Instant,
        active: metrics::Gauge,
    ) {
        let reply = self.reply.clone();
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
        let logged = crate::chat::log::frame(reply.next_seq(), &terminal);
        let stored_event = TerminalEvent {
            seq: logged.seq,
            name: logged.name,
            data: logged.data_bytes(),
        };
        let stored = Box::pin(self.deps.store.finish(
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
        // Configured names only: a request's free-form model name as a label
        // would let any client grow /metrics without bound.
        let model = if self.deps.providers.lists_model(&self.settings.model)
            || self.settings.model == self.deps.config.llm.model
        {
            self.settings.model.clone()
        } else {
            "other".to_string()
        };
        metrics::counter!("chatd_tokens_total", "model" => model.clone(), "direction" => "prompt")
            .increment(usage.prompt_tokens);
        metrics::counter!("chatd_tokens_total", "model" => model, "direction" => "completion")
            .increment(usage.completion_tokens);
        drop(self.guard);
        self.replies.expire(reply.message_id, self.retention);
        tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "reply finished");
    }
}
