//! Step accounting: numbers the steps of a reply, turns deltas into
//! `process_step` events, and keeps the merged form that is stored.

use crate::domain::ToolCall;
use crate::domain::{ChatEvent, StepEvent, StepKind, StoredStep};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Thinking,
    Text,
}

/// Builds the steps of one reply.
#[derive(Debug, Default)]
pub struct StepRecorder {
    next_index: u32,
    round: u32,
    /// The open thinking/text block: its kind and position in `stored`.
    open: Option<(Block, usize)>,
    stored: Vec<StoredStep>,
    /// Every text delta of the reply, rounds separated by a blank line.
    pub content: String,
    /// Every thinking delta of the reply, rounds separated by a blank line.
    pub reasoning: String,
    content_round: Option<u32>,
    reasoning_round: Option<u32>,
    /// Every tool call of the reply, in order.
    pub tool_calls: Vec<ToolCall>,
    /// Every source cited in the reply, in order.
    pub sources: Vec<crate::domain::Source>,
    /// When the partial reply was last written to the database.
    last_snapshot: Option<std::time::Instant>,
    /// When the recorder was made (the reply started).
    created: Option<std::time::Instant>,
    /// Whether a thinking or text delta was reported as the first token.
    first_delta_seen: bool,
}

impl StepRecorder {
    /// Starts the next model round: the open block (if any) is closed.
    pub fn next_round(&mut self, round: u32) {
        self.round = round;
        self.open = None;
    }

    /// A reasoning delta; returns its `process_step` event.
    pub fn thinking(&mut self, delta: &str) -> ChatEvent {
        append_round(&mut self.reasoning, &mut self.reasoning_round, self.round, delta);
        self.block(Block::Thinking, delta)
    }

    /// A text delta; returns its `process_step` event.
    pub fn text(&mut self, delta: &str) -> ChatEvent {
        append_round(&mut self.content, &mut self.content_round, self.round, delta);
        self.block(Block::Text, delta)
    }

    fn block(&mut self, kind: Block, delta: &str) -> ChatEvent {
        let pos = match self.open {
            Some((open, pos)) if open == kind => pos,
            _ => {
                let kind_value = match kind {
                    Block::Thinking => StepKind::Thinking {
                        delta: None,
                        content: Some(String::new()),
                    },
                    Block::Text => StepKind::Text {
                        delta: None,
                        content: Some(String::new()),
                    },
                };
                let pos = self.push_stored(kind_value);
                self.open = Some((kind, pos));
                pos
            }
        };
        let step = &mut self.stored[pos].step;
        if let StepKind::Thinking { content: Some(c), .. } | StepKind::Text { content: Some(c), .. } = &mut step.kind {
            c.push_str(delta);
        }
        let delta = Some(delta.to_string());
        ChatEvent::Step(StepEvent {
            id: step.id.clone(),
            index: step.index,
            kind: match kind {
                Block::Thinking => StepKind::Thinking { delta, content: None },
                Block::Text => StepKind::Text { delta, content: None },
            },
        })
    }

    /// A fully assembled tool call; returns its event.
    pub fn tool_call(&mut self, call: &ToolCall) -> ChatEvent {
        self.tool_calls.push(call.clone());
        self.single(StepKind::ToolCall {
            id_ref: call.id.clone(),
            name: call.function.name.clone(),
            arguments: call.function.arguments.clone(),
        })
    }

    /// A call that waits for approval, with `reason` when its tool does not
    /// usually ask; returns its event.
    pub fn tool_approval(&mut self, call: &ToolCall, reason: Option<String>) -> ChatEvent {
        self.single(StepKind::ToolApproval {
            id_ref: call.id.clone(),
            name: call.function.name.clone(),
            arguments: call.function.arguments.clone(),
            reason,
        })
    }

    /// Sources a tool cited: numbered `S1`, `S2`, ... across the reply and
    /// kept for the stored message; returns the `sources` event.
    ///
    /// Returns the event and the `(old id, new id)` pairs, so the tool's text
    /// can be made to cite the same ids.
    pub fn sources(&mut self, found: Vec<crate::domain::Source>) -> (ChatEvent, Vec<(String, String)>) {
        let mut renamed = Vec::new();
        let numbered: Vec<crate::domain::Source> = found
            .into_iter()
            .map(|mut s| {
                let new_id = format!("S{}", self.sources.len() + 1);
                renamed.push((std::mem::replace(&mut s.id, new_id), s.id.clone()));
                self.sources.push(s.clone());
                s
            })
            .collect();
        (
            ChatEvent::Sources(crate::domain::SourcesEvent { sources: numbered }),
            renamed,
        )
    }

    /// A tool result; returns its event.
    pub fn tool_result(&mut self, call: &ToolCall, content: String, success: bool, duration_ms: u64) -> ChatEvent {
        self.single(StepKind::ToolResult {
            id_ref: call.id.clone(),
            name: call.function.name.clone(),
            content,
            success,
            duration_ms,
        })
    }

    fn single(&mut self, kind: StepKind) -> ChatEvent {
        self.open = None;
        let pos = self.push_stored(kind);
        ChatEvent::Step(self.stored[pos].step.clone())
    }

    fn push_stored(&mut self, kind: StepKind) -> usize {
        let index = self.next_index;
        self.next_index += 1;
        if self.stored.is_empty() {
            // Most replies have one step (their text): room for one, not
            // the four a first push reserves (about 100 bytes each).
            self.stored.reserve_exact(1);
        }
        self.stored.push(StoredStep {
            round: self.round,
            step: StepEvent {
                id: format!("step-{index}"),
                index,
                kind,
            },
        });
        self.stored.len() - 1
    }

    /// True once: on the first call after the first thinking or text delta
    /// (for the time-to-first-token metric).
    pub fn first_delta_pending(&mut self) -> bool {
        if self.first_delta_seen || (self.content.is_empty() && self.reasoning.is_empty()) {
            return false;
        }
        self.first_delta_seen = true;
        true
    }

    /// A recorder whose clock (for [`StepRecorder::since_start`]) starts now.
    pub fn started() -> Self {
        Self {
            created: Some(std::time::Instant::now()),
            ..Self::default()
        }
    }

    /// Time since [`StepRecorder::started`] (zero for a default recorder).
    pub fn since_start(&self) -> std::time::Duration {
        self.created.map(|c| c.elapsed()).unwrap_or_default()
    }

    /// Whether `interval` has passed since the last snapshot (the first call
    /// starts the clock); resets the clock when it returns true.
    pub fn snapshot_due(&mut self, interval: std::time::Duration) -> bool {
        let now = std::time::Instant::now();
        match self.last_snapshot {
            Some(last) if now.duration_since(last) < interval => false,
            Some(_) => {
                self.last_snapshot = Some(now);
                true
            }
            None => {
                self.last_snapshot = Some(now);
                false
            }
        }
    }

    /// The stored steps so far.
    pub fn stored(&self) -> &[StoredStep] {
        &self.stored
    }
}

/// Appends `delta` to `buf`, with a blank line between rounds.
fn append_round(buf: &mut String, last_round: &mut Option<u32>, round: u32, delta: &str) {
    if let Some(last) = *last_round
        && last != round
        && !buf.is_empty()
    {
        buf.push_str("\n\n");
    }
    *last_round = Some(round);
    buf.push_str(delta);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::FunctionCall;

    #[test]
    fn blocks_share_ids_and_indices_increase() {
        let mut r = StepRecorder::default();
        let e1 = r.thinking("a");
        let e2 = r.thinking("b");
        let e3 = r.text("c");
        let call = ToolCall {
            id: "c1".into(),
            kind: "function".into(),
            function: FunctionCall {
                name: "f".into(),
                arguments: "{}".into(),
            },
        };
        let e4 = r.tool_call(&call);
        let e5 = r.tool_result(&call, "ok".into(), true, 3);
        r.next_round(1);
        let e6 = r.text("d");
        let ids: Vec<String> = [e1, e2, e3, e4, e5, e6]
            .iter()
            .map(|e| match e {
                ChatEvent::Step(s) => s.id.clone(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(ids, ["step-0", "step-0", "step-1", "step-2", "step-3", "step-4"]);
        assert_eq!(r.content, "c\n\nd");
        assert_eq!(r.reasoning, "ab");
        assert_eq!(
            r.stored()[0].step.kind,
            StepKind::Thinking {
                delta: None,
                content: Some("ab".into())
            }
        );
        assert_eq!(r.stored()[4].round, 1);
    }
}
