//! Whether the model has seen the user's private data (workspace files,
//! indexed documents) by the time it asks for a round's tool calls: then a
//! call that could carry that data out (a `fetch_url` to an untrusted host)
//! waits for approval (see `tools.fetch.approve_after_private_read`).
//!
//! Two sources: a successful call of a tool whose results are private
//! ([`crate::tools::Tool::reads_private_data`]) in an earlier round of this
//! reply, and any call of such a tool in the history sent upstream (earlier
//! turns' results are replayed to the model, which sees that text too; the
//! history does not keep whether they succeeded, so every call counts). The
//! history is only looked at when a call would ask, and once per reply.

use serde::Deserialize;

use crate::llm::RequestMessage;
use crate::tools::ToolRegistry;

/// What one reply's model has seen, built per reply.
#[derive(Debug)]
pub(super) struct Exposure {
    /// How many of the reply's messages came before it (system prompt,
    /// history, the new user message).
    earlier_len: usize,
    /// Whether those hold a call of a private-reading tool; looked up once,
    /// when first needed.
    earlier: Option<bool>,
    /// A private-reading call of this reply succeeded.
    in_reply: bool,
}

impl Exposure {
    /// For a reply whose first `earlier_len` messages are from before it.
    pub(super) fn new(earlier_len: usize) -> Self {
        Self {
            earlier_len,
            earlier: None,
            in_reply: false,
        }
    }

    /// Whether the model has seen private data: in this reply, or in
    /// `messages` (the reply's messages, of which the first `earlier_len`
    /// are scanned, once).
    pub(super) fn seen(&mut self, tools: &ToolRegistry, messages: &[RequestMessage]) -> bool {
        if self.in_reply {
            return true;
        }
        let earlier = &messages[..self.earlier_len.min(messages.len())];
        *self
            .earlier
            .get_or_insert_with(|| history_reads_private(tools, earlier))
    }

    /// Notes a finished call of tool `name` in this reply.
    pub(super) fn note(&mut self, tools: &ToolRegistry, name: &str, success: bool) {
        if success && tools.reads_private_data(name) {
            self.in_reply = true;
        }
    }
}

/// The calls of an assistant message kept as JSON text.
#[derive(Deserialize)]
struct Calls {
    #[serde(default)]
    tool_calls: Vec<NamedCall>,
}

#[derive(Deserialize)]
struct NamedCall {
    function: Named,
}

#[derive(Deserialize)]
struct Named {
    name: String,
}

/// Whether any assistant message of `messages` called a tool whose results
/// are private.
fn history_reads_private(tools: &ToolRegistry, messages: &[RequestMessage]) -> bool {
    messages.iter().any(|message| match message {
        RequestMessage::Assistant { tool_calls, .. } => {
            tool_calls.iter().any(|c| tools.reads_private_data(&c.function.name))
        }
        // Cached history: only assistant messages with calls are parsed.
        RequestMessage::Json(raw) if raw.get().contains("\"tool_calls\"") => serde_json::from_str::<Calls>(raw.get())
            .is_ok_and(|m| m.tool_calls.iter().any(|c| tools.reads_private_data(&c.function.name))),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{FunctionCall, ToolCall};

    fn assistant(names: &[&str]) -> RequestMessage {
        RequestMessage::Assistant {
            content: String::new(),
            reasoning_content: None,
            tool_calls: names
                .iter()
                .map(|n| ToolCall {
                    id: format!("id-{n}"),
                    kind: "function".into(),
                    function: FunctionCall {
                        name: n.to_string(),
                        arguments: "{}".into(),
                    },
                })
                .collect(),
        }
    }

    #[test]
    fn history_read_from_the_database_or_the_cache_counts() {
        let tools = ToolRegistry::standard();
        let user = || RequestMessage::User { content: "hi".into() };
        for private in [false, true] {
            let names: &[&str] = if private {
                &["calculator", "search_files"]
            } else {
                &["calculator"]
            };
            let typed = vec![user(), assistant(names), user()];
            let cached: Vec<RequestMessage> = typed.iter().cloned().map(RequestMessage::into_json).collect();
            for messages in [typed, cached] {
                assert_eq!(Exposure::new(messages.len()).seen(&tools, &messages), private);
            }
        }
        // Messages of this reply (past `earlier_len`) do not count as history.
        let messages = vec![user(), assistant(&["read_file"])];
        let mut exposure = Exposure::new(1);
        assert!(!exposure.seen(&tools, &messages));
        exposure.note(&tools, "read_file", false);
        assert!(!exposure.seen(&tools, &messages));
        exposure.note(&tools, "read_file", true);
        assert!(exposure.seen(&tools, &messages));
    }
}
