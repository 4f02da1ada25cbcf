//! The fetched body as the tool output: HTML turned into readable text, the
//! page title, and the page cited as a source.

use super::FetchError;
use super::fetch::Fetched;
use crate::tools::text::{collapse_whitespace, first_chars};
use crate::tools::{Source, ToolOutput};

/// Column width the HTML text is wrapped at.
const HTML_WIDTH: usize = 100;

/// Longest source snippet, in characters.
const SNIPPET_CHARS: usize = 200;

/// Longest page title kept, in characters.
const TITLE_CHARS: usize = 200;

/// Turns the fetched body into the tool output:
/// `"URL: <url>\nStatus: <code>\n\n<text>"`, plus a note when the body was cut
/// at `max_bytes` bytes, citing the page as source `S1` (titled by its
/// `<title>`, else its URL).
///
/// Errors: [`FetchError::Html`] when the HTML cannot be converted.
pub(super) async fn render(fetched: Fetched, max_bytes: u64) -> Result<ToolOutput, FetchError> {
    let Fetched {
        url,
        status,
        html,
        body,
        cut,
    } = fetched;
    let (text, title) = if html {
        let page = url.to_string();
        tokio::task::spawn_blocking(move || html_to_text(&body))
            .await
            .map_err(|_| FetchError::Html {
                url: page.clone(),
                reason: "the converter crashed".into(),
            })?
            .map_err(|reason| FetchError::Html { url: page, reason })?
    } else {
        (String::from_utf8_lossy(&body).into_owned(), None)
    };
    let text = text.trim_end();
    let mut content = format!("URL: {url}\nStatus: {}\n\n{text}", status.as_u16());
    if cut {
        content.push_str(&format!(
            "\n\n[cut: the body is longer than {max_bytes} bytes; only the first {max_bytes} bytes were read]"
        ));
    }
    let source = Source {
        id: "S1".into(),
        title: title.unwrap_or_else(|| url.to_string()),
        path: url.to_string(),
        snippet: first_chars(&collapse_whitespace(text), SNIPPET_CHARS),
    };
    Ok(ToolOutput {
        content,
        sources: vec![source],
    })
}

/// Readable text of an HTML document (scripts, styles and `<head>` dropped)
/// and its `<title>`, if it has a non-blank one.
fn html_to_text(html: &[u8]) -> Result<(String, Option<String>), String> {
    let config = html2text::config::plain();
    let dom = config.parse_html(html).map_err(|e| e.to_string())?;
    let title = find_title(&dom.document).and_then(|node| title_text(&node));
    let tree = config.dom_to_render_tree(&dom).map_err(|e| e.to_string())?;
    let text = config.render_to_string(tree, HTML_WIDTH).map_err(|e| e.to_string())?;
    Ok((text, title))
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

    #[test]
    fn html_becomes_text_without_scripts_and_with_its_title() {
        let html = br#"<!doctype html><html><head><title> A &amp; B
            page</title><style>body { color: red }</style><script>var secret = 1;</script></head>
            <body><h1>Heading</h1><p>Some <b>bold</b> text.</p><script>alert("x")</script></body></html>"#;
        let (text, title) = html_to_text(html).expect("converts");
        assert_eq!(title.as_deref(), Some("A & B page"));
        assert!(text.contains("Heading"), "{text}");
        assert!(text.contains("Some **bold** text."), "{text}");
        for hidden in ["secret", "alert", "color", "A & B"] {
            assert!(!text.contains(hidden), "{hidden} in {text}");
        }
        let (_, title) = html_to_text(b"<p>no title</p>").expect("converts");
        assert_eq!(title, None);
    }
}
