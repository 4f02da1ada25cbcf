//! A round's tool calls: approvals first, then the calls in parallel, each
//! result (and its sources) published in call order and added to the
//! history.

use futures::StreamExt;

use super::exposure::Exposure;
use super::{Generation, Stop};
use crate::chat::log::Decision;
use crate::chat::steps::StepRecorder;
use crate::domain::Approval;
use crate::llm::{RequestMessage, ToolCall};
use crate::tools::ToolContext;
use crate::tools::executor::{self, Limits, ToolOutcome};

impl Generation {
    /// Runs a round's calls, publishing each result (in call order) and
    /// appending it to the history. Calls whose tool asks for approval first
    /// emit a `tool_approval` step and wait for the user's decision (a denial
    /// or no answer in time becomes a failed result); so do calls that could
    /// carry private data out once the model has seen some (`exposure`; a
    /// `fetch_url` to an untrusted host), with the reason in the step.
    /// Cancelling drops (and so aborts) the calls still running.
    pub(super) async fn run_tools(
        &self,
        calls: &[ToolCall],
        rec: &mut StepRecorder,
        messages: &mut Vec<RequestMessage>,
        exposure: &mut Exposure,
    ) -> Result<(), Stop> {
        let config = &self.deps.config.tools;
        let mut outcomes: Vec<Option<ToolOutcome>> = vec![None; calls.len()];
        let mut approved = Vec::new();
        let mut waiting = Vec::new();
        for (i, call) in calls.iter().enumerate() {
            let asks = self.approval_needed(call, messages, exposure);
            if let Some(reason) = asks {
                let rx = self.reply.await_approval(&call.id);
                let event = rec.tool_approval(call, reason);
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
                exposure.note(&self.deps.tools, &calls[next_to_emit].function.name, outcome.success);
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

    /// Whether `call` waits for approval: `None` when it runs at once,
    /// `Some(None)` when its tool's policy is to ask, `Some(Some(reason))`
    /// when it could carry out private data the model has seen.
    fn approval_needed(
        &self,
        call: &ToolCall,
        messages: &[RequestMessage],
        exposure: &mut Exposure,
    ) -> Option<Option<String>> {
        let name = &call.function.name;
        if !self.enabled_tools.contains(name) {
            return None;
        }
        let tools = &self.deps.tools;
        if tools.approval(name) == Approval::Ask {
            return Some(None);
        }
        let reason = tools.asks_after_private_read(name, &call.function.arguments, &self.deps.config.tools)?;
        exposure.seen(tools, messages).then_some(Some(reason))
    }

    /// Emits one tool result (and its sources) and adds it to the history.
    pub(super) fn publish_result(
        &self,
        call: &ToolCall,
        outcome: ToolOutcome,
        rec: &mut StepRecorder,
        messages: &mut Vec<RequestMessage>,
    ) {
        let outcome_label = if outcome.success { "success" } else { "failure" };
        // Registered tools only: the model may emit any name.
        let tool = if self.deps.tools.contains(&call.function.name) {
            call.function.name.clone()
        } else {
            "unknown".to_string()
        };
        metrics::counter!("chatd_tool_calls_total", "tool" => tool, "outcome" => outcome_label).increment(1);
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
