//! Rebuilds the message history sent upstream from stored rows.
//!
//! An assistant reply is stored as one row whose steps carry their round.
//! Each round with tool calls becomes an assistant message with `tool_calls`
//! (and its `reasoning_content`, which some providers require on tool-call
//! turns) followed by one `tool` message per call; the last round becomes a
//! plain assistant message. Reasoning of a plain final answer is not sent back
//! (providers such as DeepSeek reject it there). A call without a stored
//! result (the reply was interrupted) gets an error result, so the history
//! stays valid for strict providers.

use std::collections::BTreeMap;

use super::events::StepKind;
use super::steps::StoredStep;
use crate::llm::{FunctionCall, RequestMessage, ToolCall};
use crate::store::{MessageRow, Role};

/// Text sent as the result of a call whose result was never stored.
const MISSING_RESULT: &str = "Error: this tool call did not complete (the reply was interrupted).";

#[derive(Default)]
struct Round {
    text: String,
    reasoning: String,
    calls: Vec<ToolCall>,
    results: Vec<(String, String)>,
}

/// The upstream messages for `rows` (oldest first), after the system prompt.
pub fn build(system_prompt: Option<&str>, rows: &[MessageRow]) -> Vec<RequestMessage> {
    let mut out = Vec::with_capacity(rows.len() + 1);
    push_system(&mut out, system_prompt);
    for row in rows {
        match row.role {
            Role::User => out.push(RequestMessage::User {
                content: row.content.clone(),
            }),
            Role::Assistant => push_reply(&mut out, row),
        }
    }
    out
}

/// The upstream messages of a conversation's first turn: the system prompt
/// and the user's `message`; what [`build`] gives for its one stored row.
pub fn first_turn(system_prompt: Option<&str>, message: &str) -> Vec<RequestMessage> {
    let mut out = Vec::with_capacity(2);
    push_system(&mut out, system_prompt);
    out.push(RequestMessage::User {
        content: message.to_string(),
    });
    out
}

fn push_system(out: &mut Vec<RequestMessage>, system_prompt: Option<&str>) {
    if let Some(prompt) = system_prompt.filter(|p| !p.trim().is_empty()) {
        out.push(RequestMessage::System {
            content: prompt.to_string(),
        });
    }
}

fn push_reply(out: &mut Vec<RequestMessage>, row: &MessageRow) {
    let steps: Vec<StoredStep> = serde_json::from_value(row.steps.clone()).unwrap_or_default();
    if steps.is_empty() {
        if !row.content.is_empty() {
            out.push(RequestMessage::Assistant {
                content: row.content.clone(),
                reasoning_content: None,
                tool_calls: vec![],
            });
        }
        return;
    }
    let mut rounds: BTreeMap<u32, Round> = BTreeMap::new();
    for s in steps {
        let round = rounds.entry(s.round).or_default();
        match s.step.kind {
            StepKind::Thinking { content, delta } => round.reasoning.push_str(&content.or(delta).unwrap_or_default()),
            StepKind::Text { content, delta } => round.text.push_str(&content.or(delta).unwrap_or_default()),
            StepKind::ToolCall {
                id_ref,
                name,
                arguments,
            } => round.calls.push(ToolCall {
                id: id_ref,
                kind: "function".into(),
                function: FunctionCall { name, arguments },
            }),
            StepKind::ToolResult { id_ref, content, .. } => round.results.push((id_ref, content)),
            StepKind::ToolApproval { .. } => {}
        }
    }
    for round in rounds.into_values() {
        if round.calls.is_empty() {
            if !round.text.is_empty() {
                out.push(RequestMessage::Assistant {
                    content: round.text,
                    reasoning_content: None,
                    tool_calls: vec![],
                });
            }
            continue;
        }
        let results = round.results;
        let calls = round.calls;
        out.push(RequestMessage::Assistant {
            content: round.text,
            reasoning_content: (!round.reasoning.is_empty()).then_some(round.reasoning),
            tool_calls: calls.clone(),
        });
        for call in calls {
            let content = results
                .iter()
                .find(|(id, _)| *id == call.id)
                .map(|(_, c)| c.clone())
                .unwrap_or_else(|| MISSING_RESULT.to_string());
            out.push(RequestMessage::Tool {
                tool_call_id: call.id,
                content,
            });
        }
    }
}
