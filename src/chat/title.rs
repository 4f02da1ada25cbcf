//! Conversation titles from the first user message.

/// Longest title, in characters.
pub const TITLE_MAX_CHARS: usize = 50;

/// The first non-blank line of `message`, trimmed, at most
/// [`TITLE_MAX_CHARS`] characters (cut on a character boundary).
///
/// ```
/// use chatd::chat::title::from_message;
/// assert_eq!(from_message("\n  Plan a trip to Lisbon \nin May"), "Plan a trip to Lisbon");
/// assert_eq!(from_message(&"ü".repeat(80)).chars().count(), 50);
/// ```
pub fn from_message(message: &str) -> String {
    let line = message
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    match line.char_indices().nth(TITLE_MAX_CHARS) {
        Some((cut, _)) => line[..cut].trim_end().to_string(),
        None => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_line_cut_on_char_boundary() {
        assert_eq!(from_message("\n  Hello there \nsecond"), "Hello there");
        let long = "é".repeat(60);
        assert_eq!(from_message(&long).chars().count(), 50);
        assert_eq!(from_message(&long), "é".repeat(50));
    }
}
