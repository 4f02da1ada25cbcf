//! What an upstream's failure says, as an [`LlmError`]: a non-2xx answer
//! classified by its status with the message from its body, and errors
//! described with their sources.

use futures::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde_json::Value;
use tokio::time::{Instant, timeout_at};

use super::LlmError;
use super::transport::Answer;

/// Most bytes of an HTTP error body read to build an error message.
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// Most characters of an upstream error message passed on to the client.
const ERROR_MESSAGE_CHARS: usize = 500;

/// Classifies a non-2xx response: 429 rate limited, 5xx unavailable, other
/// statuses upstream errors; the message comes from a JSON `error.message`,
/// `error` or `message` field, or from the text body.
/// The body is read until `deadline`; a slower body is cut there.
pub(super) async fn error_from_response(response: reqwest::Response, deadline: Instant) -> LlmError {
    error_from_answer(Answer::from_reqwest(response, None), deadline).await
}

/// [`error_from_response`] for an [`Answer`] of either transport.
pub(super) async fn error_from_answer(answer: Answer, deadline: Instant) -> LlmError {
    let status = answer.status;
    let retry_after_ms = retry_after_ms(&answer.headers);
    let mut body = Vec::new();
    let mut stream = answer.body;
    while let Ok(Some(Ok(chunk))) = timeout_at(deadline, stream.next()).await {
        body.extend_from_slice(&chunk);
        if body.len() >= ERROR_BODY_LIMIT {
            break;
        }
    }
    let text = String::from_utf8_lossy(&body);
    let detail = error_message(&text);
    let message = if detail.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {detail}")
    };
    let code = status.as_u16();
    if status == StatusCode::TOO_MANY_REQUESTS {
        LlmError::RateLimited {
            message,
            retry_after_ms,
        }
    } else if status.is_server_error() {
        LlmError::Unavailable {
            detail: message,
            status: Some(code),
        }
    } else {
        let public = refusal_message(code, provider_message(&text).as_deref());
        LlmError::Upstream {
            detail: message,
            public,
        }
    }
}

/// What a client is told of a non-2xx, non-429, non-5xx answer with status
/// `code`: the status number, and the provider's own JSON error message
/// (`provider`, already cleaned by [`provider_message`]) except for 401,
/// 403 and 407, whose messages are about chatd's credentials (and may quote
/// part of its API key), not about the request.
fn refusal_message(code: u16, provider: Option<&str>) -> String {
    match (code, provider) {
        (401 | 403 | 407, _) => format!(
            "the model provider refused chatd's credentials (HTTP {code}); the server's operator must check the \
             provider's API key"
        ),
        (_, Some(said)) => format!("the model provider refused the request (HTTP {code}): {said}"),
        (_, None) => format!("the model provider refused the request (HTTP {code})"),
    }
}

/// The provider's own error message from a JSON error body (see
/// [`json_error_message`]), with URLs and network addresses replaced by
/// `[address]`, at most 500 characters; `None` when the body is not JSON
/// (a proxy's HTML page, a stack trace) or carries no message.
pub(super) fn provider_message(body: &str) -> Option<String> {
    let value = serde_json::from_str::<Value>(body).ok()?;
    let text = json_error_message(&value);
    let text = without_addresses(&text);
    (!text.trim().is_empty()).then_some(text)
}

/// `text` with every URL (`scheme://...`), IP address, and `host:port`
/// word replaced by `[address]`. Words are cut at whitespace; brackets,
/// quotes and trailing punctuation around a word are kept.
pub(super) fn without_addresses(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        let start = rest.find(|c: char| !c.is_whitespace()).unwrap_or(rest.len());
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let word = &rest[..end];
        rest = &rest[end..];
        let trailing = |c: char| ")]}>\"'`,;.:!?".contains(c);
        // With and without a leading `[`: `[fd00::1]:443` is an address.
        let bracketed = word.trim_start_matches(|c: char| "({<\"'`".contains(c));
        let bare = bracketed.trim_start_matches('[').trim_end_matches(trailing);
        let bracketed = bracketed.trim_end_matches(trailing);
        let core = [bare, bracketed]
            .into_iter()
            .find(|core| !core.is_empty() && is_address(core));
        if let Some(core) = core {
            let at = word.find(core).unwrap_or(0);
            out.push_str(&word[..at]);
            out.push_str("[address]");
            out.push_str(&word[at + core.len()..]);
        } else {
            out.push_str(word);
        }
    }
    out
}

/// Whether `word` is a URL, an IP address (with or without a port), or a
/// `host:port` pair.
fn is_address(word: &str) -> bool {
    if word.contains("://") || word.parse::<std::net::IpAddr>().is_ok() || word.parse::<std::net::SocketAddr>().is_ok()
    {
        return true;
    }
    match word.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && (1..=5).contains(&port.len())
                && port.bytes().all(|b| b.is_ascii_digit())
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
                && host.bytes().any(|b| b.is_ascii_alphabetic() || b == b'.')
        }
        None => false,
    }
}

impl LlmError {
    /// What a client (the SSE `error` event, the stored message's error,
    /// `GET /api/models`) may be told: never a URL, host, address, port or
    /// upstream body; the full reason is in the `Display` form, for the log.
    ///
    /// - [`LlmError::Unavailable`]: "the model provider could not be
    ///   reached", or "... failed with HTTP 503" for a 5xx.
    /// - [`LlmError::RateLimited`]: HTTP 429 and the `Retry-After` in s.
    /// - [`LlmError::Timeout`]: which wait ran out, in ms.
    /// - [`LlmError::Upstream`]: the HTTP status and the provider's JSON
    ///   error message (addresses removed; none for 401/403/407), the
    ///   provider's stream error message, or chatd's own words for a broken
    ///   stream.
    pub fn client_message(&self) -> String {
        match self {
            LlmError::Unavailable { status: None, .. } => {
                "the model provider could not be reached; try again later".to_string()
            }
            LlmError::Unavailable { status: Some(code), .. } => {
                format!("the model provider failed with HTTP {code}; try again later")
            }
            LlmError::RateLimited {
                retry_after_ms: Some(ms),
                ..
            } => format!(
                "the model provider is rate limiting requests (HTTP 429); try again in {} s",
                ms.div_ceil(1000).max(1)
            ),
            LlmError::RateLimited { .. } => {
                "the model provider is rate limiting requests (HTTP 429); try again later".to_string()
            }
            LlmError::Timeout { .. } => self.to_string(),
            LlmError::Upstream { public, .. } => public.clone(),
        }
    }

    /// An `error` object in the stream (or an `error` event), `body` its
    /// JSON or text: the client sees the provider's JSON message without
    /// addresses, or a generic text when the body is not JSON.
    pub(super) fn stream_error(body: &str) -> Self {
        let public = match provider_message(body) {
            Some(said) => format!("the model provider reported an error: {said}"),
            None => "the model provider reported an error".to_string(),
        };
        LlmError::Upstream {
            detail: error_message(body),
            public,
        }
    }
}

/// `Retry-After` in ms, from its delay-seconds form.
fn retry_after_ms(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let secs: f64 = value.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then_some((secs * 1000.0) as u64)
}

/// The human-readable part of an error body (JSON or text), at most 500
/// characters.
pub(super) fn error_message(body: &str) -> String {
    match serde_json::from_str::<Value>(body) {
        Ok(v) => json_error_message(&v),
        Err(_) => truncate(body.trim(), ERROR_MESSAGE_CHARS),
    }
}

/// The message of an OpenAI-style error value: `{"error":{"message"}}`,
/// `{"message"}`, `{"error":"..."}` or the JSON itself; at most 500
/// characters.
pub(super) fn json_error_message(v: &Value) -> String {
    let inner = v.get("error").unwrap_or(v);
    let text = inner
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| inner.as_str().map(str::to_string))
        .unwrap_or_else(|| inner.to_string());
    truncate(&text, ERROR_MESSAGE_CHARS)
}

/// At most `max` characters of `s`, cut on a character boundary (then
/// `…` is added).
pub(super) fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_from_common_shapes() {
        assert_eq!(
            error_message(r#"{"error":{"message":"bad model","type":"x"}}"#),
            "bad model"
        );
        assert_eq!(error_message(r#"{"error":"overloaded"}"#), "overloaded");
        assert_eq!(error_message(r#"{"message":"nope"}"#), "nope");
        assert_eq!(error_message("  Bad Gateway \n"), "Bad Gateway");
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "2".parse().expect("header"));
        assert_eq!(retry_after_ms(&h), Some(2000));
    }

    #[test]
    fn addresses_are_removed_from_provider_messages() {
        assert_eq!(
            without_addresses(
                "no route to (http://10.0.0.7:8080/v1/chat), try 10.0.0.8 or [fd00::1]:443 or gw.internal:8443."
            ),
            "no route to ([address]), try [address] or [address] or [address]."
        );
        assert_eq!(
            without_addresses("model `qwen3:8b` not found"),
            "model `qwen3:8b` not found"
        );
        assert_eq!(
            without_addresses("at 12:30 the context was full"),
            "at 12:30 the context was full"
        );
        assert_eq!(provider_message("<html>502 at 10.0.0.7</html>"), None);
        assert_eq!(
            provider_message(r#"{"error":{"message":"no model at https://10.0.0.7/v1"}}"#).as_deref(),
            Some("no model at [address]")
        );
    }

    #[test]
    fn credential_refusals_do_not_quote_the_provider() {
        let said = Some("Incorrect API key provided: sk-abc***xyz");
        assert!(!refusal_message(401, said).contains("sk-"));
        assert_eq!(
            refusal_message(404, Some("model x does not exist")),
            "the model provider refused the request (HTTP 404): model x does not exist"
        );
    }
}
