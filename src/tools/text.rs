//! Small text helpers the tools share for the one-line snippets and titles
//! they show.

/// `text` with every run of whitespace replaced by one space, trimmed.
pub(super) fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// At most `max` characters (not bytes) of `text`, with `…` appended when it
/// was longer.
pub(super) fn first_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippets_are_cut_on_characters() {
        assert_eq!(first_chars("héllo", 2), "hé…");
        assert_eq!(first_chars("hé", 2), "hé");
        assert_eq!(collapse_whitespace("  a\n\n b\tc "), "a b c");
    }
}
