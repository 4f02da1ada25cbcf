//! The HTTP side of a fetch: the URL argument, one pinned client per hop,
//! redirects followed by hand, the content type and the size limit.

use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue, LOCATION};
use reqwest::{StatusCode, Url};

use super::FetchError;
use super::guard::{Target, check_target};
use crate::config::FetchConfig;
use crate::domain::error_chain;

/// What the request accepts, in order of preference.
const ACCEPT_VALUE: &str = "text/html,application/xhtml+xml,text/*;q=0.9,application/json;q=0.9";

/// A response body read within the limits.
pub(super) struct Fetched {
    /// The URL of the last hop (after redirects).
    pub(super) url: Url,
    pub(super) status: StatusCode,
    /// The body is HTML (to be converted), not text or JSON (shown as is).
    pub(super) html: bool,
    /// At most `max_bytes` bytes of the body.
    pub(super) body: Vec<u8>,
    /// The body was longer than `max_bytes` and only its start was read.
    pub(super) cut: bool,
}

/// Parses the `url` argument (surrounding whitespace ignored); only absolute
/// `http`/`https` URLs with a host.
///
/// Errors: [`FetchError::InvalidUrl`], [`FetchError::UnsupportedScheme`],
/// [`FetchError::NoHost`].
pub(super) fn parse_url(text: &str) -> Result<Url, FetchError> {
    let trimmed = text.trim();
    let url = Url::parse(trimmed).map_err(|e| FetchError::InvalidUrl {
        url: trimmed.to_string(),
        reason: e.to_string(),
    })?;
    if !is_http(&url) {
        return Err(FetchError::UnsupportedScheme {
            scheme: url.scheme().to_string(),
        });
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(FetchError::NoHost { url: url.to_string() });
    }
    Ok(url)
}

/// Follows redirects by hand (at most `config.max_redirects`), checking every
/// hop with the guard, and reads at most `config.max_bytes` of the final body.
/// No overall timeout: the caller sets it.
///
/// Errors: every [`FetchError`] but the argument and HTML ones; a refusal of
/// a redirect hop says where the redirect came from in its `context`.
pub(super) async fn fetch(mut url: Url, config: &FetchConfig) -> Result<Fetched, FetchError> {
    let max_bytes = usize::try_from(config.max_bytes).unwrap_or(usize::MAX);
    let mut redirects = 0u32;
    let mut previous: Option<Url> = None;
    loop {
        let target = check_target(&url, &config.allow_hosts)
            .await
            .map_err(|e| match (&previous, e) {
                (Some(from), FetchError::Refused { subject, .. }) => FetchError::Refused {
                    context: format!("{from} redirected to {url}; "),
                    subject,
                },
                (_, e) => e,
            })?;
        let client = client_for(target)?;
        let request_error = |e: reqwest::Error| FetchError::Request {
            url: url.to_string(),
            reason: error_chain(&e),
        };
        let response = client
            .get(url.clone())
            .header(ACCEPT, ACCEPT_VALUE)
            .send()
            .await
            .map_err(request_error)?;
        let status = response.status();
        if is_followed_redirect(status)
            && let Some(location) = response.headers().get(LOCATION)
        {
            let next = redirect_target(&url, location)?;
            if redirects >= config.max_redirects {
                return Err(FetchError::TooManyRedirects {
                    max: config.max_redirects,
                    next: next.to_string(),
                });
            }
            redirects += 1;
            if !is_http(&next) {
                return Err(FetchError::RedirectScheme {
                    from: url.to_string(),
                    to: next.to_string(),
                });
            }
            previous = Some(std::mem::replace(&mut url, next));
            continue;
        }
        let html = body_kind(&url, response.headers().get(CONTENT_TYPE))?;
        let (body, cut) = read_limited(response, max_bytes).await.map_err(request_error)?;
        return Ok(Fetched {
            url,
            status,
            html,
            body,
            cut,
        });
    }
}

/// Whether `url` is `http://` or `https://`, the only schemes fetched.
fn is_http(url: &Url) -> bool {
    matches!(url.scheme(), "http" | "https")
}

/// A client for one hop: no automatic redirects, no proxy, and the host
/// pinned to the addresses that were checked.
fn client_for(target: Target) -> Result<reqwest::Client, FetchError> {
    // reqwest is built without a bundled crypto provider; use ring. An error
    // means a provider is already installed, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(concat!("chatd/", env!("CARGO_PKG_VERSION"), " (fetch_url)"));
    if let Some((host, addrs)) = target.pin {
        builder = builder.resolve_to_addrs(&host, &addrs);
    }
    builder.build().map_err(|e| FetchError::Client(error_chain(&e)))
}

/// The redirect statuses that are followed (with a GET).
fn is_followed_redirect(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::MOVED_PERMANENTLY
            | StatusCode::FOUND
            | StatusCode::SEE_OTHER
            | StatusCode::TEMPORARY_REDIRECT
            | StatusCode::PERMANENT_REDIRECT
    )
}

/// The absolute URL a `Location` header points to, relative to `from`.
fn redirect_target(from: &Url, location: &HeaderValue) -> Result<Url, FetchError> {
    let bad = || FetchError::BadRedirect {
        from: from.to_string(),
        location: String::from_utf8_lossy(location.as_bytes()).into_owned(),
    };
    let text = location.to_str().map_err(|_| bad())?;
    from.join(text.trim()).map_err(|_| bad())
}

/// Whether the body is HTML (`true`) or text/JSON shown as is (`false`);
/// other content types, and a missing one, are refused.
fn body_kind(url: &Url, content_type: Option<&HeaderValue>) -> Result<bool, FetchError> {
    let raw = content_type
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
        .unwrap_or_default();
    match raw.as_str() {
        "text/html" | "application/xhtml+xml" => Ok(true),
        t if t.starts_with("text/") || t == "application/json" || t.ends_with("+json") => Ok(false),
        t => Err(FetchError::UnsupportedType {
            url: url.to_string(),
            content_type: if t.is_empty() {
                "no Content-Type, i.e. unknown".into()
            } else {
                t.to_string()
            },
        }),
    }
}

/// Reads at most `max` bytes of the body; the flag says whether more was
/// there (the rest is not read).
async fn read_limited(mut response: reqwest::Response, max: usize) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = max - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
        if body.len() == max {
            // Exactly at the limit: cut only if anything follows.
            let more = response.chunk().await?.is_some_and(|c| !c.is_empty());
            return Ok((body, more));
        }
    }
    Ok((body, false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::ToolError;

    #[test]
    fn arguments_are_checked() {
        assert_eq!(
            parse_url("file:///etc/passwd").map(|_| ()),
            Err(FetchError::UnsupportedScheme { scheme: "file".into() })
        );
        assert_eq!(
            parse_url("ftp://example.com/x").map(|_| ()),
            Err(FetchError::UnsupportedScheme { scheme: "ftp".into() })
        );
        assert_eq!(
            ToolError::from(parse_url("not a url").expect_err("invalid")),
            ToolError::InvalidArguments(
                "\"not a url\" is not a valid URL (relative URL without a base); give an absolute http:// or \
                 https:// URL"
                    .into()
            )
        );
        assert!(parse_url(" https://example.com/a?b#c ").is_ok());
    }

    #[test]
    fn content_types() {
        let url = Url::parse("http://example.com/").expect("url");
        let kind = |v: &str| body_kind(&url, Some(&HeaderValue::from_str(v).expect("header")));
        assert_eq!(kind("text/html; charset=utf-8"), Ok(true));
        assert_eq!(kind("Application/XHTML+XML"), Ok(true));
        assert_eq!(kind("text/plain"), Ok(false));
        assert_eq!(kind("text/markdown; charset=utf-8"), Ok(false));
        assert_eq!(kind("application/json"), Ok(false));
        assert_eq!(kind("application/ld+json"), Ok(false));
        assert_eq!(
            kind("image/png").map_err(|e| e.to_string()),
            Err("http://example.com/ returned image/png content; only HTML, text/* and JSON can be fetched".into())
        );
        assert!(body_kind(&url, None).is_err());
    }
}
