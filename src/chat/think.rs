//! Splits `<think>...</think>` reasoning out of streamed content.
//!
//! Some servers (DeepSeek-R1 and Qwen3 served raw, many llama.cpp setups)
//! stream reasoning inline in `content`, wrapped in think tags. Tags may be
//! split across chunks, so a possible partial tag is held back until the next
//! piece decides it.

/// A run of text from [`ThinkSplitter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Thinking(String),
    Text(String),
}

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// Streaming state: inside or outside a think block, plus held-back bytes.
#[derive(Debug, Default)]
pub struct ThinkSplitter {
    in_think: bool,
    pending: String,
    /// Drop line breaks at the start of the text right after `</think>`.
    trim_text_start: bool,
}

impl ThinkSplitter {
    /// Feeds one content delta; returns the pieces it completes, tags removed.
    pub fn push(&mut self, delta: &str) -> Vec<Piece> {
        let mut buf = std::mem::take(&mut self.pending);
        buf.push_str(delta);
        let mut out = Vec::new();
        let mut rest = buf.as_str();
        loop {
            let tag = if self.in_think { CLOSE } else { OPEN };
            if let Some(at) = rest.find(tag) {
                self.emit(&rest[..at], &mut out);
                rest = &rest[at + tag.len()..];
                self.in_think = !self.in_think;
                if !self.in_think {
                    self.trim_text_start = true;
                }
                continue;
            }
            let keep = partial_suffix(rest, tag);
            self.emit(&rest[..rest.len() - keep], &mut out);
            self.pending = rest[rest.len() - keep..].to_string();
            break;
        }
        out
    }

    /// Flushes held-back bytes at the end of the stream.
    pub fn finish(&mut self) -> Vec<Piece> {
        let rest = std::mem::take(&mut self.pending);
        let mut out = Vec::new();
        self.emit(&rest, &mut out);
        out
    }

    fn emit(&mut self, text: &str, out: &mut Vec<Piece>) {
        let mut text = text;
        if !self.in_think && self.trim_text_start {
            text = text.trim_start_matches(['\n', '\r']);
            if text.is_empty() {
                return;
            }
            self.trim_text_start = false;
        }
        if text.is_empty() {
            return;
        }
        out.push(if self.in_think {
            Piece::Thinking(text.to_string())
        } else {
            Piece::Text(text.to_string())
        });
    }
}

/// Length of the longest suffix of `s` that is a proper prefix of `tag`.
fn partial_suffix(s: &str, tag: &str) -> usize {
    (1..tag.len())
        .rev()
        .find(|&n| s.len() >= n && s.is_char_boundary(s.len() - n) && tag.starts_with(&s[s.len() - n..]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(parts: &[&str]) -> Vec<Piece> {
        let mut s = ThinkSplitter::default();
        let mut out: Vec<Piece> = parts.iter().flat_map(|p| s.push(p)).collect();
        out.extend(s.finish());
        // merge neighbours of the same kind for easy comparison
        let mut merged: Vec<Piece> = Vec::new();
        for p in out {
            match (merged.last_mut(), p) {
                (Some(Piece::Thinking(a)), Piece::Thinking(b)) => a.push_str(&b),
                (Some(Piece::Text(a)), Piece::Text(b)) => a.push_str(&b),
                (_, p) => merged.push(p),
            }
        }
        merged
    }

    #[test]
    fn tags_split_across_chunks() {
        assert_eq!(
            run(&["<th", "ink>Let me", " see</th", "ink>\n\nHello", " <b>world</b>"]),
            vec![
                Piece::Thinking("Let me see".into()),
                Piece::Text("Hello <b>world</b>".into())
            ]
        );
        assert_eq!(run(&["a < b", " and c<"]), vec![Piece::Text("a < b and c<".into())]);
        assert_eq!(run(&["<think>unfinished"]), vec![Piece::Thinking("unfinished".into())]);
        assert_eq!(run(&["héllo<", "/think>é"]), vec![Piece::Text("héllo</think>é".into())]);
    }
}
