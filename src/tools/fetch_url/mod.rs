//! `fetch_url`: fetches a web page over HTTP(S) and returns it as text.
//!
//! The fetch is guarded against server-side request forgery: the host is
//! resolved first and refused when any of its addresses is not public (only
//! global unicast; IPv6 forms that carry an IPv4 address are judged by it;
//! see [`guard::classify`]),
//! unless the host is listed in `tools.fetch.allow_hosts`. The connection is
//! then pinned to exactly the addresses that were checked, so a DNS answer
//! that changes between the check and the connect cannot bypass it. Redirects
//! are followed by hand and every hop is checked again. Proxies from the
//! environment are not used (a proxy would resolve the host itself).
//!
//! HTML is turned into readable text with the `html2text` crate (scripts,
//! styles and the `<head>` are dropped); `text/*` and JSON bodies are
//! returned as they are; other content types are refused. The conversion is
//! bounded (input size, nesting depth, a process-wide concurrency limit) and
//! `tools.fetch.timeout_ms` covers it as well as the fetch.
//!
//! The parts, in the order a call goes through them:
//!
//! - this file: the [`FetchUrl`] tool and the [`fetch_url`] entry (argument,
//!   overall timeout);
//! - [`guard`]: the SSRF guard ([`guard::classify`] and its address classes,
//!   the allow list, resolving and pinning a hop's host);
//! - [`fetch`]: the HTTP side (URL argument, per-hop clients, redirects,
//!   content types, the size limit);
//! - [`render`]: the body as the tool output (text, notes, source);
//! - [`convert`]: HTML to text within limits, with [`nesting`] flattening
//!   what is nested too deep;
//! - [`error`]: [`FetchError`], what the model is told when a fetch fails.

mod convert;
mod error;
mod fetch;
mod guard;
mod nesting;
mod render;

use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::{Tool, ToolContext, ToolError, ToolOutput};
use crate::config::{FetchConfig, ToolsConfig};

pub use error::FetchError;

/// GETs an `http://` or `https://` URL within the `tools.fetch` limits and
/// returns `"URL: <final url>\nStatus: <code>\n\n<text>"`, citing the page as
/// a source.
pub struct FetchUrl;

impl Tool for FetchUrl {
    fn name(&self) -> &str {
        "fetch_url"
    }

    fn description(&self) -> &str {
        "Fetch a public web page or file over http(s) and return its text (HTML is converted to \
         readable text; plain text and JSON are returned as they are)."
    }

    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "url": {
                    "type": "string",
                    "description": "Absolute http:// or https:// URL, e.g. \"https://example.com/page\"."
                }
            },
            "required": ["url"],
            "additionalProperties": false
        })
    }

    /// A URL can carry whatever the model read (in its path or query), so
    /// after a private read a fetch asks first unless its host is trusted.
    fn asks_after_private_read(&self, arguments: &Value, config: &ToolsConfig) -> Option<String> {
        asks_after_private_read(arguments, &config.fetch)
    }

    fn call(&self, ctx: ToolContext, arguments: Value) -> BoxFuture<'static, Result<ToolOutput, ToolError>> {
        let url = arguments
            .get("url")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let config = ctx.config.fetch.clone();
        async move { fetch_url(&url, &config).await.map_err(ToolError::from) }.boxed()
    }
}

/// Why a fetch of `arguments.url` waits for approval after a private read:
/// `config.approve_after_private_read` is on and the URL's host is not in
/// `config.allow_hosts`. `None` for a trusted host, with the setting off,
/// or for a URL that is refused before anything is sent.
fn asks_after_private_read(arguments: &Value, config: &FetchConfig) -> Option<String> {
    if !config.approve_after_private_read {
        return None;
    }
    let url = fetch::parse_url(arguments.get("url")?.as_str()?).ok()?;
    let host = url.host_str()?;
    (!guard::is_allowed(host, &config.allow_hosts)).then(|| {
        format!(
            "this reply has read workspace or document data, and the request to {host} could carry it out; {host} \
             is not in tools.fetch.allow_hosts"
        )
    })
}

/// Fetches `url` with the limits and allow list of `config` and renders the
/// tool output. `config.timeout_ms` covers the whole call: every hop, the
/// body and the HTML conversion.
///
/// Errors: [`FetchError::InvalidUrl`], [`FetchError::UnsupportedScheme`] and
/// [`FetchError::NoHost`] for a bad argument; [`FetchError::Refused`] and
/// [`FetchError::RedirectScheme`] when the SSRF guard refuses a hop; the other
/// variants for network, timeout, conversion, redirect and content-type
/// failures.
pub async fn fetch_url(url: &str, config: &FetchConfig) -> Result<ToolOutput, FetchError> {
    let start = fetch::parse_url(url)?;
    let ms = config.timeout_ms;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    let fetched = tokio::time::timeout_at(deadline, fetch::fetch(start.clone(), config))
        .await
        .map_err(|_| FetchError::Timeout {
            url: start.to_string(),
            ms,
        })??;
    render::render(fetched, config.max_bytes, deadline, ms).await
}
