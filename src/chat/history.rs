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

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use uuid::Uuid;

use crate::domain::{Role, StepKind, StoredStep};
use crate::llm::{FunctionCall, RequestMessage, ToolCall};
use crate::store::HistoryRow;

/// Text sent as the result of a call whose result was never stored.
const MISSING_RESULT: &str = "Error: this tool call did not complete (the reply was interrupted).";

#[derive(Default)]
struct Round {
    text: String,
    reasoning: String,
    calls: Vec<ToolCall>,
    results: Vec<(String, String)>,
}

/// The upstream messages for stored `rows` (oldest first), without the
/// system prompt.
pub fn from_rows(rows: &[HistoryRow]) -> Vec<RequestMessage> {
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        push_row(&mut out, row);
    }
    out
}

/// Appends the upstream messages of one stored row.
pub fn push_row(out: &mut Vec<RequestMessage>, row: &HistoryRow) {
    match row.role {
        Role::User => out.push(RequestMessage::User {
            content: row.content.clone(),
        }),
        Role::Assistant => push_reply(out, row),
    }
}

/// The system prompt (if any, and not blank) followed by `messages`.
pub fn with_system(system_prompt: Option<&str>, mut messages: Vec<RequestMessage>) -> Vec<RequestMessage> {
    if let Some(prompt) = system_prompt.filter(|p| !p.trim().is_empty()) {
        messages.insert(
            0,
            RequestMessage::System {
                content: prompt.to_string(),
            },
        );
    }
    messages
}

/// Conversations whose history is kept, at most.
const CACHED_CONVERSATIONS: usize = 256;

/// The upstream history (without the system prompt) of recently active
/// conversations, so that a turn in a long conversation neither reads nor
/// rebuilds every earlier message: with 1,000 earlier messages that was
/// 2.7 ms before the request could go upstream.
///
/// An entry is the history after a reply was stored, built by the same
/// [`push_row`] from the same content and steps that were written, and the
/// conversation's number of messages then. A turn uses it only when the
/// conversation still has exactly that many messages before the new one;
/// anything else (a restart, a failed write, another writer) falls back to
/// the database. A turn takes its entry out (one turn runs per conversation
/// at a time) and the finished reply puts the longer history back, so the
/// messages are moved, never copied. The least recently used entry goes
/// first.
#[derive(Debug, Default)]
pub struct HistoryCache {
    inner: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    map: HashMap<Uuid, CachedHistory>,
    /// Counts uses; an entry's `used` is the count at its last use.
    clock: u64,
}

#[derive(Debug)]
struct CachedHistory {
    messages: Vec<RequestMessage>,
    /// The conversation's number of stored messages these are built from.
    count: u64,
    used: u64,
}

impl HistoryCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes out the history of `conversation` if it was built from
    /// exactly `count` stored messages (an entry built from another count is
    /// stale and dropped).
    pub fn take(&self, conversation: Uuid, count: u64) -> Option<Vec<RequestMessage>> {
        let entry = self.lock().map.remove(&conversation)?;
        (entry.count == count).then_some(entry.messages)
    }

    /// Keeps `messages`, built from `count` stored messages of `conversation`.
    /// Messages not yet serialized are serialized here, once (usually the
    /// turn's two new ones): the next turns copy their JSON.
    pub fn put(&self, conversation: Uuid, count: u64, mut messages: Vec<RequestMessage>) {
        for message in messages.iter_mut().rev() {
            if matches!(message, RequestMessage::Json(_)) {
                // Older messages were serialized by an earlier put.
                break;
            }
            let typed = std::mem::replace(message, RequestMessage::User { content: String::new() });
            *message = typed.into_json();
        }
        let mut inner = self.lock();
        if inner.map.len() >= CACHED_CONVERSATIONS
            && !inner.map.contains_key(&conversation)
            && let Some(oldest) = inner.map.iter().min_by_key(|(_, e)| e.used).map(|(id, _)| *id)
        {
            inner.map.remove(&oldest);
        }
        inner.clock += 1;
        let used = inner.clock;
        inner.map.insert(conversation, CachedHistory { messages, count, used });
    }

    /// Forgets `conversation`.
    pub fn remove(&self, conversation: Uuid) {
        self.lock().map.remove(&conversation);
    }
}

fn push_reply(out: &mut Vec<RequestMessage>, row: &HistoryRow) {
    let steps: Vec<StoredStep> = serde_json::from_str(&row.steps).unwrap_or_default();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn user(text: &str) -> RequestMessage {
        RequestMessage::User { content: text.into() }
    }

    #[test]
    fn the_cache_answers_only_for_the_same_message_count_and_evicts_the_least_recently_used() {
        let cache = HistoryCache::default();
        let a = Uuid::now_v7();
        cache.put(a, 2, vec![user("hi"), user("there")]);
        assert_eq!(cache.take(a, 2).map(|m| m.len()), Some(2));
        assert!(cache.take(a, 2).is_none(), "taken out by the turn");
        cache.put(a, 2, vec![user("hi"), user("there")]);
        assert!(cache.take(a, 4).is_none(), "another count: the database has changed");
        assert!(cache.take(a, 2).is_none(), "and the stale entry is gone");
        cache.put(a, 2, vec![user("hi")]);
        cache.remove(a);
        assert!(cache.take(a, 2).is_none());

        let ids: Vec<Uuid> = (0..CACHED_CONVERSATIONS).map(|_| Uuid::now_v7()).collect();
        for id in &ids {
            cache.put(*id, 2, vec![user("x")]);
        }
        // A turn in ids[0]: taken, then put back longer (the most recent).
        let taken = cache.take(ids[0], 2).expect("cached");
        cache.put(ids[0], 4, taken);
        cache.put(Uuid::now_v7(), 2, vec![user("new")]);
        assert!(cache.take(ids[1], 2).is_none(), "the least recently used went");
        assert!(cache.take(ids[0], 4).is_some());
        assert!(cache.take(ids[2], 2).is_some());
    }

    #[test]
    fn cached_messages_are_kept_serialized_and_send_the_same_json() {
        let cache = HistoryCache::default();
        let a = Uuid::now_v7();
        let typed = vec![
            user("hi \"there\"\n"),
            RequestMessage::Assistant {
                content: String::new(),
                reasoning_content: Some("hm".into()),
                tool_calls: vec![ToolCall {
                    id: "c1".into(),
                    kind: "function".into(),
                    function: FunctionCall {
                        name: "calculator".into(),
                        arguments: "{\"expression\":\"1+1\"}".into(),
                    },
                }],
            },
            RequestMessage::Tool {
                tool_call_id: "c1".into(),
                content: "2".into(),
            },
        ];
        cache.put(a, 3, typed.clone());
        let mut cached = cache.take(a, 3).expect("cached");
        assert!(cached.iter().all(|m| matches!(m, RequestMessage::Json(_))));
        let json = |m: &[RequestMessage]| serde_json::to_string(m).expect("serializes");
        assert_eq!(json(&cached), json(&typed));
        // The next turn adds typed messages after the serialized ones.
        cached.push(user("next"));
        let expected = json(&cached);
        cache.put(a, 4, cached);
        let again = cache.take(a, 4).expect("cached");
        assert!(matches!(again.last(), Some(RequestMessage::Json(_))));
        assert_eq!(json(&again), expected);
    }

    #[test]
    fn rows_become_upstream_messages_with_tool_rounds() {
        let steps = r#"[{"round":0,"id":"s0","index":0,"type":"tool_call","id_ref":"c1","name":"calculator","arguments":"{}"},
                        {"round":0,"id":"s1","index":1,"type":"tool_result","id_ref":"c1","name":"calculator","content":"42","success":true,"duration_ms":1},
                        {"round":1,"id":"s2","index":2,"type":"text","content":"It is 42."}]"#;
        let rows = vec![
            HistoryRow {
                role: Role::User,
                content: "6*7?".into(),
                steps: "[]".into(),
            },
            HistoryRow {
                role: Role::Assistant,
                content: "It is 42.".into(),
                steps: steps.into(),
            },
        ];
        let out = with_system(Some("Be brief."), from_rows(&rows));
        let json = serde_json::to_value(&out).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!([
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "6*7?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "calculator", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
                {"role": "assistant", "content": "It is 42."}
            ])
        );
    }
}
