//! The fetched body as the tool output: HTML turned into readable text
//! ([`convert`]), the page title, and the page cited as a source.

use tokio::time::Instant;

use super::FetchError;
use super::convert::{self, Converted, MAX_HTML_BYTES};
use super::fetch::Fetched;
use crate::tools::text::{collapse_whitespace, first_chars};
use crate::tools::{Source, ToolOutput};

/// Longest source snippet, in characters.
const SNIPPET_CHARS: usize = 200;

/// Turns the fetched body into the tool output:
/// `"URL: <url>\nStatus: <code>\n\n<text>"`, plus a note when the body was cut
/// at `max_bytes` bytes or only its first [`MAX_HTML_BYTES`] bytes of HTML
/// were converted, citing the page as source `S1` (titled by its `<title>`,
/// else its URL). The HTML conversion must end by `deadline` (the end of
/// the fetch's `timeout_ms` = `ms`).
///
/// Errors: [`FetchError::Html`] when the HTML cannot be converted,
/// [`FetchError::ConvertTimeout`] when the conversion (waiting for a slot
/// included) passes the deadline.
pub(super) async fn render(
    fetched: Fetched,
    max_bytes: u64,
    deadline: Instant,
    ms: u64,
) -> Result<ToolOutput, FetchError> {
    let Fetched {
        url,
        status,
        html,
        body,
        cut,
    } = fetched;
    let page = url.to_string();
    let Converted {
        text,
        title,
        cut: html_cut,
    } = if html {
        tokio::time::timeout_at(deadline, convert::convert(body))
            .await
            .map_err(|_| FetchError::ConvertTimeout { url: page.clone(), ms })?
            .map_err(|reason| FetchError::Html {
                url: page.clone(),
                reason,
            })?
    } else {
        Converted {
            text: String::from_utf8_lossy(&body).into_owned(),
            title: None,
            cut: false,
        }
    };
    let text = text.trim_end();
    let mut content = format!("URL: {url}\nStatus: {}\n\n{text}", status.as_u16());
    if cut {
        content.push_str(&format!(
            "\n\n[cut: the body is longer than {max_bytes} bytes; only the first {max_bytes} bytes were read]"
        ));
    }
    if html_cut {
        content.push_str(&format!(
            "\n\n[cut: only the first {MAX_HTML_BYTES} bytes of the HTML were converted to text]"
        ));
    }
    let source = Source {
        id: "S1".into(),
        title: title.unwrap_or_else(|| page.clone()),
        path: page,
        snippet: first_chars(&collapse_whitespace(text), SNIPPET_CHARS),
    };
    Ok(ToolOutput {
        content,
        sources: vec![source],
    })
}
