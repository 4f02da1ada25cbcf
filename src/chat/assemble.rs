//! Assembles streamed tool-call pieces into complete tool calls.
//!
//! Servers differ: OpenAI sends the id and name in the first piece and only
//! `index` + argument text after; some repeat the id in every piece; some
//! send no id or no index at all. Pieces are matched by id (at the same
//! index), then by index, then to the latest call; calls still without an id
//! get `call_<uuid>`. Some models give two calls the same id:
//! [`make_ids_unique`] renames the later ones before anything is keyed by id.

use std::collections::HashSet;

use crate::llm::{FunctionCall, ToolCall, ToolCallDelta};

#[derive(Debug, Default)]
struct Partial {
    id: Option<String>,
    index: Option<u32>,
    name: String,
    arguments: String,
}

/// Collects the tool-call pieces of one round.
#[derive(Debug, Default)]
pub struct ToolCallAssembler {
    calls: Vec<Partial>,
}

impl ToolCallAssembler {
    /// Adds one piece.
    pub fn push(&mut self, piece: &ToolCallDelta) {
        let id = piece.id.as_deref().filter(|s| !s.is_empty());
        let name = piece
            .function
            .as_ref()
            .and_then(|f| f.name.as_deref())
            .filter(|s| !s.is_empty());
        let slot = self.find(id, piece.index, name.is_some());
        let call = match slot {
            Some(i) => &mut self.calls[i],
            None => {
                self.calls.push(Partial {
                    index: piece.index,
                    ..Partial::default()
                });
                let last = self.calls.len() - 1;
                &mut self.calls[last]
            }
        };
        if call.id.is_none() {
            call.id = id.map(str::to_string);
        }
        if let Some(name) = name {
            // Some servers repeat the full name in every piece.
            if call.name != name {
                call.name.push_str(name);
            }
        }
        if let Some(args) = piece.function.as_ref().and_then(|f| f.arguments.as_deref()) {
            call.arguments.push_str(args);
        }
    }

    fn find(&self, id: Option<&str>, index: Option<u32>, has_name: bool) -> Option<usize> {
        // The same id at another index is another call (a model reusing an
        // id), not more of this one.
        let same_slot = |c: &Partial| !matches!((c.index, index), (Some(a), Some(b)) if a != b);
        if let Some(id) = id
            && let Some(i) = self
                .calls
                .iter()
                .rposition(|c| c.id.as_deref() == Some(id) && same_slot(c))
        {
            return Some(i);
        }
        if let Some(index) = index {
            // A new id at a known index is a new call only if it also names a
            // function; otherwise it is a server repeating a fresh id.
            let pos = self.calls.iter().rposition(|c| c.index == Some(index));
            return match pos {
                Some(i) if id.is_none() || !has_name || self.calls[i].id.is_none() => Some(i),
                _ => None,
            };
        }
        if id.is_none() && !has_name {
            return self.calls.len().checked_sub(1);
        }
        None
    }

    /// The complete calls in arrival order.
    pub fn finish(self) -> Vec<ToolCall> {
        self.calls
            .into_iter()
            .map(|c| ToolCall {
                id: c
                    .id
                    .unwrap_or_else(|| format!("call_{}", uuid::Uuid::new_v4().simple())),
                kind: "function".to_string(),
                function: FunctionCall {
                    name: c.name,
                    arguments: c.arguments,
                },
            })
            .collect()
    }
}

/// Renames the calls whose id is already in `taken` (an earlier call of the
/// reply, or of this round) to `<id>_<n>`, the smallest `n >= 2` that is
/// neither taken nor the id of another call of `calls`, and adds every
/// resulting id to `taken`. Deterministic: the first call keeps its id, the
/// second of the same id becomes `<id>_2`, and so on, so approvals, tool
/// results and the tool messages sent back map one-to-one to the calls.
pub fn make_ids_unique(calls: &mut [ToolCall], taken: &mut HashSet<String>) {
    let original: HashSet<String> = calls.iter().map(|c| c.id.clone()).collect();
    for call in calls.iter_mut() {
        if taken.contains(&call.id) {
            let free = (2u64..)
                .map(|n| format!("{}_{n}", call.id))
                .find(|candidate| !taken.contains(candidate) && !original.contains(candidate));
            if let Some(free) = free {
                call.id = free;
            }
        }
        taken.insert(call.id.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::FunctionDelta;

    fn piece(index: Option<u32>, id: Option<&str>, name: Option<&str>, args: &str) -> ToolCallDelta {
        ToolCallDelta {
            index,
            id: id.map(str::to_string),
            function: Some(FunctionDelta {
                name: name.map(str::to_string),
                arguments: Some(args.to_string()),
            }),
        }
    }

    #[test]
    fn openai_style_pieces() {
        let mut a = ToolCallAssembler::default();
        a.push(&piece(Some(0), Some("c1"), Some("calculator"), ""));
        a.push(&piece(Some(1), Some("c2"), Some("get_current_time"), "{}"));
        a.push(&piece(Some(0), None, None, "{\"expression\":"));
        a.push(&piece(Some(0), None, None, "\"1+1\"}"));
        let calls = a.finish();
        assert_eq!(calls.len(), 2);
        assert_eq!(
            (calls[0].id.as_str(), calls[0].function.arguments.as_str()),
            ("c1", "{\"expression\":\"1+1\"}")
        );
        assert_eq!(
            (calls[1].id.as_str(), calls[1].function.name.as_str()),
            ("c2", "get_current_time")
        );
    }

    #[test]
    fn no_ids_and_repeated_ids() {
        let mut a = ToolCallAssembler::default();
        a.push(&piece(None, None, Some("calculator"), "{\"expression\""));
        a.push(&piece(None, None, None, ":\"2\"}"));
        let calls = a.finish();
        assert_eq!(calls.len(), 1);
        assert!(calls[0].id.starts_with("call_"));
        assert_eq!(calls[0].function.arguments, "{\"expression\":\"2\"}");

        let mut a = ToolCallAssembler::default();
        a.push(&piece(Some(0), Some("x"), Some("calculator"), "{"));
        a.push(&piece(Some(0), Some("x"), Some("calculator"), "}"));
        let calls = a.finish();
        assert_eq!(calls.len(), 1);
        assert_eq!(
            (calls[0].function.name.as_str(), calls[0].function.arguments.as_str()),
            ("calculator", "{}")
        );
    }

    #[test]
    fn a_reused_id_at_another_index_is_another_call() {
        let mut a = ToolCallAssembler::default();
        a.push(&piece(Some(0), Some("dup"), Some("calculator"), ""));
        a.push(&piece(Some(0), None, None, "{\"expression\":\"1\"}"));
        a.push(&piece(Some(1), Some("dup"), Some("get_current_time"), ""));
        a.push(&piece(Some(1), Some("dup"), None, "{}"));
        let calls = a.finish();
        let got: Vec<(&str, &str, &str)> = calls
            .iter()
            .map(|c| (c.id.as_str(), c.function.name.as_str(), c.function.arguments.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("dup", "calculator", "{\"expression\":\"1\"}"),
                ("dup", "get_current_time", "{}")
            ]
        );
    }

    #[test]
    fn duplicate_ids_are_renamed_deterministically() {
        let call = |id: &str| ToolCall {
            id: id.into(),
            kind: "function".into(),
            function: FunctionCall {
                name: "calculator".into(),
                arguments: "{}".into(),
            },
        };
        let mut taken = HashSet::new();
        let mut round = vec![call("a"), call("a"), call("b"), call("a"), call("a_2")];
        make_ids_unique(&mut round, &mut taken);
        let ids: Vec<&str> = round.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["a", "a_3", "b", "a_4", "a_2"]);
        // A later round of the same reply reusing ids is renamed too.
        let mut next = vec![call("b"), call("c")];
        make_ids_unique(&mut next, &mut taken);
        let ids: Vec<&str> = next.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["b_2", "c"]);
    }
}
