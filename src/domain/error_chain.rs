//! An error and its chain of sources as one line of text, for logs and for
//! error values that keep the full reason (an upstream's, a fetch's).

/// `e` and its sources, `: `-separated ("client error (Connect): tcp
/// connect error: Connection refused (os error 111)"). The text may name
/// URLs and addresses: it is for the log, or for a caller that decides what
/// to pass on.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn sources_follow_the_error() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(error_chain(&e), "outer: inner");
    }
}
