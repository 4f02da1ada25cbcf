//! HTML to text under limits ([`convert`]): bounded input, bounded nesting,
//! a small concurrency limit, and a stop when the caller gives up.
//!
//! The conversion (`html2text`) is CPU-bound and cannot be interrupted
//! midway, so what it is given is bounded instead: at most
//! [`MAX_HTML_BYTES`] bytes, nested at most [`MAX_DEPTH`] deep
//! ([`super::nesting::flatten`]). It runs on the blocking pool, at most
//! [`MAX_CONVERSIONS`] at a time in the whole process; the permit is held by
//! the blocking task itself, so a conversion whose caller timed out still
//! counts until it really ends. A caller that drops the future (the fetch
//! deadline passed, the tool call timed out, the reply was cancelled) sets
//! a flag that stops the conversion at its next stage.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Semaphore;

use super::nesting;
use crate::tools::text::{collapse_whitespace, first_chars};

/// Most bytes of HTML converted; the rest of the body is left out.
pub(super) const MAX_HTML_BYTES: usize = 512 * 1024;

/// Deepest nesting of elements the converter sees; deeper elements are
/// flattened into their ancestor at this depth (their text is kept).
pub(super) const MAX_DEPTH: usize = 64;

/// Most HTML conversions running at once in the process.
pub(super) const MAX_CONVERSIONS: usize = 2;

/// Column width the HTML text is wrapped at.
const HTML_WIDTH: usize = 100;

/// Longest page title kept, in characters.
const TITLE_CHARS: usize = 200;

static CONVERSIONS: Semaphore = Semaphore::const_new(MAX_CONVERSIONS);

/// An HTML page as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Converted {
    /// The readable text (scripts, styles and `<head>` dropped).
    pub(super) text: String,
    /// The page's `<title>`, if it has a non-blank one.
    pub(super) title: Option<String>,
    /// Only the first [`MAX_HTML_BYTES`] bytes were converted.
    pub(super) cut: bool,
}

/// Converts `html` on the blocking pool, waiting for one of the
/// [`MAX_CONVERSIONS`] slots first. Dropping the future stops the
/// conversion at its next stage. Errors: the converter's reason as text
/// (also when it crashed).
pub(super) async fn convert(html: Vec<u8>) -> Result<Converted, String> {
    let permit = CONVERSIONS
        .acquire()
        .await
        .map_err(|_| "the converter is shut down".to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(stop.clone());
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        html_to_text(&html, &stop)
    })
    .await
    .map_err(|_| "the converter crashed".to_string())?
}

/// Sets the flag when dropped: the caller no longer waits.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The conversion itself (blocking): cut, flatten, parse, render, checking
/// `stop` between the stages.
pub(super) fn html_to_text(html: &[u8], stop: &AtomicBool) -> Result<Converted, String> {
    let stopped = || {
        if stop.load(Ordering::Relaxed) {
            Err("stopped: nobody waits for the result".to_string())
        } else {
            Ok(())
        }
    };
    let cut = html.len() > MAX_HTML_BYTES;
    let bounded = nesting::flatten(&html[..html.len().min(MAX_HTML_BYTES)], MAX_DEPTH);
    stopped()?;
    let config = html2text::config::plain().allow_width_overflow();
    let dom = config.parse_html(&bounded[..]).map_err(|e| e.to_string())?;
    stopped()?;
    let title = find_title(&dom.document).and_then(|node| title_text(&node));
    let tree = config.dom_to_render_tree(&dom).map_err(|e| e.to_string())?;
    stopped()?;
    let text = config.render_to_string(tree, HTML_WIDTH).map_err(|e| e.to_string())?;
    Ok(Converted { text, title, cut })
}

/// The first HTML `<title>` element in document order.
fn find_title(root: &html2text::Handle) -> Option<html2text::Handle> {
    let mut stack = vec![root.clone()];
    while let Some(node) = stack.pop() {
        if let html2text::Element { name, .. } = &node.data
            && &*name.local == "title"
            && &*name.ns == "http://www.w3.org/1999/xhtml"
        {
            return Some(node);
        }
        stack.extend(node.children.borrow().iter().rev().cloned());
    }
    None
}

/// The text of a `<title>` element: its children serialised back to HTML and
/// rendered as text by the crate (so entities are decoded), on one line.
fn title_text(title: &html2text::Handle) -> Option<String> {
    let mut inner = Vec::new();
    for child in title.children.borrow().iter() {
        child.serialize(&mut inner).ok()?;
    }
    let text = html2text::config::plain_no_decorate()
        .string_from_read(&inner[..], 10_000)
        .ok()?;
    let text = collapse_whitespace(&text);
    (!text.is_empty()).then(|| first_chars(&text, TITLE_CHARS))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_of(html: &[u8]) -> Converted {
        html_to_text(html, &AtomicBool::new(false)).expect("converts")
    }

    #[test]
    fn html_becomes_text_without_scripts_and_with_its_title() {
        let html = br#"<!doctype html><html><head><title> A &amp; B
            page</title><style>body { color: red }</style><script>var secret = 1;</script></head>
            <body><h1>Heading</h1><p>Some <b>bold</b> text.</p><script>alert("x")</script></body></html>"#;
        let Converted { text, title, cut } = text_of(html);
        assert_eq!(title.as_deref(), Some("A & B page"));
        assert!(!cut);
        assert!(text.contains("Heading"), "{text}");
        assert!(text.contains("Some **bold** text."), "{text}");
        for hidden in ["secret", "alert", "color", "A & B"] {
            assert!(!text.contains(hidden), "{hidden} in {text}");
        }
        assert_eq!(text_of(b"<p>no title</p>").title, None);
    }

    #[test]
    fn deep_and_long_pages_are_bounded() {
        // 100,000 nested elements (about 1.2 MB): cut and flattened.
        let depth = 100_000;
        let html = format!(
            "<title>Deep</title>{}the bottom{}",
            "<div><b>".repeat(depth / 2),
            "</b></div>".repeat(depth / 2)
        );
        let started = std::time::Instant::now();
        let converted = text_of(html.as_bytes());
        assert!(converted.cut);
        assert_eq!(converted.title.as_deref(), Some("Deep"));
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
        let small = format!("{}the bottom{}", "<div>".repeat(5_000), "</div>".repeat(5_000));
        assert!(text_of(small.as_bytes()).text.contains("the bottom"));
    }

    #[test]
    fn a_stopped_conversion_ends_early() {
        let err = html_to_text(b"<p>x</p>", &AtomicBool::new(true)).expect_err("stopped");
        assert!(err.starts_with("stopped"), "{err}");
    }
}
