//! `fetch_url`: fetches a web page over HTTP(S) and returns it as text.
//!
//! The fetch is guarded against server-side request forgery: the host is
//! resolved first and refused when any of its addresses is not public
//! (loopback, private, link-local, metadata, ...; see [`classify`]), unless
//! the host is listed in `tools.fetch.allow_hosts`. The connection is then
//! pinned to exactly the addresses that were checked, so a DNS answer that
//! changes between the check and the connect cannot bypass it. Redirects are
//! followed by hand and every hop is checked again. Proxies from the
//! environment are not used (a proxy would resolve the host itself).
//!
//! HTML is turned into readable text with the `html2text` crate (scripts,
//! styles and the `<head>` are dropped); `text/*` and JSON bodies are
//! returned as they are; other content types are refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue, LOCATION};
use reqwest::{StatusCode, Url};
use serde_json::{Value, json};

use super::{Source, Tool, ToolContext, ToolError, ToolOutput};
use crate::config::FetchConfig;

/// GETs an `http://` or `https://` URL within the `tools.fetch` limits and
/// returns `"URL: <final url>\nStatus: <code>\n\n<text>"`, citing the page as
/// a source.
pub struct FetchUrl;

/// Host names refused whatever they resolve to (cloud metadata services).
const METADATA_HOSTS: &[&str] = &["metadata.google.internal"];

/// Column width the HTML text is wrapped at.
const HTML_WIDTH: usize = 100;

/// Longest source snippet, in characters.
const SNIPPET_CHARS: usize = 200;

/// Longest page title kept, in characters.
const TITLE_CHARS: usize = 200;

/// What the request accepts, in order of preference.
const ACCEPT_VALUE: &str = "text/html,application/xhtml+xml,text/*;q=0.9,application/json;q=0.9";

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

// ---- errors ----

/// Why a fetch failed. The text is shown to the model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FetchError {
    /// The `url` argument does not parse as an absolute URL.
    #[error("{url:?} is not a valid URL ({reason}); give an absolute http:// or https:// URL")]
    InvalidUrl { url: String, reason: String },
    /// The `url` argument has a scheme other than `http` or `https`.
    #[error("only http:// and https:// URLs can be fetched, not {scheme}://")]
    UnsupportedScheme { scheme: String },
    /// The URL names no host (e.g. `http:///path` after normalisation).
    #[error("{url} has no host to fetch from")]
    NoHost { url: String },
    /// The host (or one of its addresses) is not public. `context` is empty
    /// for the URL that was asked for, or `"<from> redirected to <to>; "` for
    /// a redirect hop.
    #[error("refused: {context}{subject}; only public addresses can be fetched")]
    Refused { context: String, subject: String },
    /// A redirect pointed to a scheme other than `http` or `https`.
    #[error("refused: {from} redirected to {to}; only http:// and https:// URLs can be fetched")]
    RedirectScheme { from: String, to: String },
    /// A redirect's `Location` is not a usable URL.
    #[error("{from} redirected to an invalid location {location:?}")]
    BadRedirect { from: String, location: String },
    /// More redirects than `tools.fetch.max_redirects`.
    #[error("stopped after {max} redirects; the next one pointed to {next}")]
    TooManyRedirects { max: u32, next: String },
    /// DNS resolution failed or gave no address.
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    /// Connecting, sending or reading failed.
    #[error("cannot fetch {url}: {reason}")]
    Request { url: String, reason: String },
    /// The whole fetch (every hop and the body) took longer than
    /// `tools.fetch.timeout_ms`.
    #[error("fetching {url} did not finish within {ms} ms")]
    Timeout { url: String, ms: u64 },
    /// The response is neither HTML, `text/*` nor JSON.
    #[error("{url} returned {content_type} content; only HTML, text/* and JSON can be fetched")]
    UnsupportedType { url: String, content_type: String },
    /// The HTML could not be turned into text.
    #[error("cannot convert the HTML of {url} to text: {reason}")]
    Html { url: String, reason: String },
    /// The HTTP client could not be built (TLS setup).
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
}

impl From<FetchError> for ToolError {
    fn from(e: FetchError) -> Self {
        match e {
            FetchError::InvalidUrl { .. } | FetchError::UnsupportedScheme { .. } | FetchError::NoHost { .. } => {
                ToolError::InvalidArguments(e.to_string())
            }
            _ => ToolError::Failed(e.to_string()),
        }
    }
}

// ---- address classification ----

/// The kind of an IP address, for the SSRF guard. Only [`AddressClass::Public`]
/// addresses are fetched from hosts not listed in `allow_hosts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// Globally routable.
    Public,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`, `fc00::/7` (unique
    /// local) and the deprecated site-local `fec0::/10`.
    Private,
    /// `169.254.0.0/16`, `fe80::/10`.
    LinkLocal,
    /// `0.0.0.0/8` ("this network"), `::`.
    Unspecified,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// Carrier-grade NAT shared space, `100.64.0.0/10`.
    SharedCgnat,
    /// Never public: `192.0.0.0/24`, the documentation ranges (`192.0.2.0/24`,
    /// `198.51.100.0/24`, `203.0.113.0/24`, `2001:db8::/32`), benchmarking
    /// `198.18.0.0/15` and the future-use `240.0.0.0/4`.
    Reserved,
    /// Cloud metadata services: `169.254.169.254`, `fd00:ec2::254`.
    Metadata,
}

impl AddressClass {
    /// Whether addresses of this class may be fetched without `allow_hosts`.
    pub fn is_public(self) -> bool {
        self == AddressClass::Public
    }

    /// The class as a noun phrase, e.g. `"a loopback address"`.
    pub fn describe(self) -> &'static str {
        match self {
            AddressClass::Public => "a public address",
            AddressClass::Loopback => "a loopback address",
            AddressClass::Private => "a private address",
            AddressClass::LinkLocal => "a link-local address",
            AddressClass::Unspecified => "an unspecified address",
            AddressClass::Multicast => "a multicast address",
            AddressClass::Broadcast => "a broadcast address",
            AddressClass::SharedCgnat => "a carrier-grade NAT (100.64.0.0/10) address",
            AddressClass::Reserved => "a reserved address",
            AddressClass::Metadata => "a cloud metadata address",
        }
    }
}

/// Classifies `ip`. IPv6 forms that carry an IPv4 address (IPv4-mapped
/// `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d` and the NAT64 prefix
/// `64:ff9b::/96`) get the class of the IPv4 address they carry.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let [a, b, c, _] = ip.octets();
    if ip == Ipv4Addr::new(169, 254, 169, 254) {
        AddressClass::Metadata
    } else if a == 0 {
        AddressClass::Unspecified
    } else if ip.is_loopback() {
        AddressClass::Loopback
    } else if ip.is_private() {
        AddressClass::Private
    } else if ip.is_link_local() {
        AddressClass::LinkLocal
    } else if a == 100 && (b & 0xc0) == 64 {
        AddressClass::SharedCgnat
    } else if ip.is_broadcast() {
        AddressClass::Broadcast
    } else if ip.is_multicast() {
        AddressClass::Multicast
    } else if matches!((a, b, c), (192, 0, 0 | 2) | (198, 51, 100) | (203, 0, 113))
        || (a == 198 && (b & 0xfe) == 18)
        || a >= 240
    {
        AddressClass::Reserved
    } else {
        AddressClass::Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    let segments = ip.segments();
    if ip == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x254) {
        return AddressClass::Metadata;
    }
    if ip.is_unspecified() {
        return AddressClass::Unspecified;
    }
    if ip.is_loopback() {
        return AddressClass::Loopback;
    }
    // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated).
    if let Some(v4) = ip.to_ipv4() {
        return classify_v4(v4);
    }
    // NAT64 well-known prefix 64:ff9b::/96.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., hi, lo] = segments;
        let v4 = Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
        return classify_v4(v4);
    }
    let first = segments[0];
    if first & 0xff00 == 0xff00 {
        AddressClass::Multicast
    } else if first & 0xffc0 == 0xfe80 {
        AddressClass::LinkLocal
    } else if first & 0xfe00 == 0xfc00 || first & 0xffc0 == 0xfec0 {
        AddressClass::Private
    } else if first == 0x2001 && segments[1] == 0x0db8 {
        AddressClass::Reserved
    } else {
        AddressClass::Public
    }
}

// ---- the fetch ----

/// Where one hop connects: for a host name, the name and the addresses it
/// was checked against (the connection is pinned to them); `None` for an IP
/// literal, which is connected to as it is.
struct Target {
    pin: Option<(String, Vec<SocketAddr>)>,
}

/// A response body read within the limits.
struct Fetched {
    url: Url,
    status: StatusCode,
    html: bool,
    body: Vec<u8>,
    /// The body was longer than `max_bytes` and only its start was read.
    cut: bool,
}

/// Fetches `url` with the limits and allow list of `config` and renders the
/// tool output.
///
/// Errors: [`FetchError::InvalidUrl`], [`FetchError::UnsupportedScheme`] and
/// [`FetchError::NoHost`] for a bad argument; [`FetchError::Refused`] and
/// [`FetchError::RedirectScheme`] when the SSRF guard refuses a hop; the other
/// variants for network, timeout, redirect and content-type failures.
pub async fn fetch_url(url: &str, config: &FetchConfig) -> Result<ToolOutput, FetchError> {
    let start = parse_url(url)?;
    let ms = config.timeout_ms;
    let fetched = tokio::time::timeout(Duration::from_millis(ms), fetch(start.clone(), config))
        .await
        .map_err(|_| FetchError::Timeout {
            url: start.to_string(),
            ms,
        })??;
    render(fetched, config.max_bytes).await
}

/// Parses the `url` argument; only absolute `http`/`https` URLs with a host.
fn parse_url(text: &str) -> Result<Url, FetchError> {
    let trimmed = text.trim();
    let url = Url::parse(trimmed).map_err(|e| FetchError::InvalidUrl {
        url: trimmed.to_string(),
        reason: e.to_string(),
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(FetchError::UnsupportedScheme {
            scheme: url.scheme().to_string(),
        });
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(FetchError::NoHost { url: url.to_string() });
    }
    Ok(url)
}

/// Follows redirects by hand, checking every hop, and reads the final body.
async fn fetch(mut url: Url, config: &FetchConfig) -> Result<Fetched, FetchError> {
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
            reason: describe_reqwest(&e),
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
            if !matches!(next.scheme(), "http" | "https") {
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

/// Resolves the URL's host and applies the SSRF guard.
async fn check_target(url: &Url, allow_hosts: &[String]) -> Result<Target, FetchError> {
    let host = url.host_str().unwrap_or_default();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let allowed = allow_hosts.iter().any(|h| {
        let h = h.trim();
        let h = h.trim_start_matches('[').trim_end_matches(']');
        h.eq_ignore_ascii_case(bare)
    });
    if let Ok(ip) = bare.parse::<IpAddr>() {
        // An IP literal is connected to as it is: nothing to resolve or pin.
        let class = classify(ip);
        if !allowed && !class.is_public() {
            return Err(FetchError::Refused {
                context: String::new(),
                subject: format!("{ip} is {}", class.describe()),
            });
        }
        return Ok(Target { pin: None });
    }
    let name = bare.trim_end_matches('.').to_ascii_lowercase();
    if !allowed && METADATA_HOSTS.contains(&name.as_str()) {
        return Err(FetchError::Refused {
            context: String::new(),
            subject: format!("{host} is a cloud metadata host"),
        });
    }
    let port = url.port_or_known_default().unwrap_or(80);
    let resolve_error = |reason: String| FetchError::Resolve {
        host: host.to_string(),
        reason,
    };
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
        .await
        .map_err(|e| resolve_error(e.to_string()))?
        .collect();
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(resolve_error("no addresses found".into()));
    }
    if !allowed
        && let Some((ip, class)) = addrs
            .iter()
            .map(|a| (a.ip(), classify(a.ip())))
            .find(|(_, class)| !class.is_public())
    {
        return Err(FetchError::Refused {
            context: String::new(),
            subject: format!("{host} resolves to {ip}, {}", class.describe()),
        });
    }
    Ok(Target {
        pin: Some((bare.to_string(), addrs)),
    })
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
    builder.build().map_err(|e| FetchError::Client(describe_reqwest(&e)))
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
/// other content types are refused.
fn body_kind(url: &Url, content_type: Option<&HeaderValue>) -> Result<bool, FetchError> {
    let raw = content_type
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
        .unwrap_or_default();
    match raw.as_str() {
        "text/html" | "application/xhtml+xml" => Ok(true),
        t if t.starts_with("text/") || t == "application/json" || t.ends_with("+json") => Ok(false),
        "" => Err(FetchError::UnsupportedType {
            url: url.to_string(),
            content_type: "no Content-Type, i.e. unknown".into(),
        }),
        t => Err(FetchError::UnsupportedType {
            url: url.to_string(),
            content_type: t.to_string(),
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

/// Turns the fetched body into the tool output.
async fn render(fetched: Fetched, max_bytes: u64) -> Result<ToolOutput, FetchError> {
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

/// `text` with every run of whitespace replaced by one space, trimmed.
fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// At most `max` characters of `text`, with `…` when it was longer.
fn first_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// A reqwest error with its chain of causes.
fn describe_reqwest(e: &reqwest::Error) -> String {
    use std::error::Error;
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
    use AddressClass::*;

    fn class(text: &str) -> AddressClass {
        classify(text.parse().expect("an IP address"))
    }

    #[test]
    fn ipv4_ranges() {
        let cases = [
            ("127.0.0.1", Loopback),
            ("127.255.255.254", Loopback),
            ("10.0.0.1", Private),
            ("10.255.255.255", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("169.254.0.1", LinkLocal),
            ("169.254.255.255", LinkLocal),
            ("169.254.169.254", Metadata),
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Unspecified),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("255.255.255.255", Broadcast),
            ("100.64.0.1", SharedCgnat),
            ("100.127.255.255", SharedCgnat),
            ("192.0.0.8", Reserved),
            ("192.0.2.1", Reserved),
            ("198.18.0.1", Reserved),
            ("198.19.255.255", Reserved),
            ("198.51.100.7", Reserved),
            ("203.0.113.9", Reserved),
            ("240.0.0.1", Reserved),
            // Public, including the neighbours of every refused range.
            ("8.8.8.8", Public),
            ("1.1.1.1", Public),
            ("93.184.216.34", Public),
            ("9.255.255.255", Public),
            ("11.0.0.0", Public),
            ("172.15.255.255", Public),
            ("172.32.0.0", Public),
            ("192.167.255.255", Public),
            ("192.169.0.0", Public),
            ("169.253.255.255", Public),
            ("169.255.0.0", Public),
            ("100.63.255.255", Public),
            ("100.128.0.0", Public),
            ("126.255.255.255", Public),
            ("128.0.0.0", Public),
            ("223.255.255.255", Public),
            ("198.17.255.255", Public),
            ("198.20.0.0", Public),
        ];
        for (ip, expected) in cases {
            assert_eq!(class(ip), expected, "{ip}");
        }
    }

    #[test]
    fn ipv6_ranges() {
        let cases = [
            ("::1", Loopback),
            ("::", Unspecified),
            ("fc00::1", Private),
            ("fd12:3456::1", Private),
            ("fdff:ffff::1", Private),
            ("fec0::1", Private),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("ff02::1", Multicast),
            ("ff05::2", Multicast),
            ("fd00:ec2::254", Metadata),
            ("2001:db8::1", Reserved),
            ("2001:4860:4860::8888", Public),
            ("2606:4700:4700::1111", Public),
            ("2a00:1450:4001::1", Public),
            ("fbff:ffff::1", Public),
            ("fe00::1", Public),
        ];
        for (ip, expected) in cases {
            assert_eq!(class(ip), expected, "{ip}");
        }
    }

    #[test]
    fn ipv6_forms_carrying_ipv4_get_the_ipv4_class() {
        let cases = [
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:7f00:1", Loopback),
            ("::ffff:10.1.2.3", Private),
            ("::ffff:172.16.0.1", Private),
            ("::ffff:192.168.0.1", Private),
            ("::ffff:169.254.1.1", LinkLocal),
            ("::ffff:169.254.169.254", Metadata),
            ("::ffff:0.0.0.0", Unspecified),
            ("::ffff:224.0.0.1", Multicast),
            ("::ffff:255.255.255.255", Broadcast),
            ("::ffff:100.64.0.1", SharedCgnat),
            ("::ffff:8.8.8.8", Public),
            // IPv4-compatible (deprecated) and NAT64.
            ("::127.0.0.1", Loopback),
            ("::10.0.0.1", Private),
            ("64:ff9b::127.0.0.1", Loopback),
            ("64:ff9b::a9fe:a9fe", Metadata),
            ("64:ff9b::192.168.1.1", Private),
            ("64:ff9b::8.8.8.8", Public),
        ];
        for (ip, expected) in cases {
            assert_eq!(class(ip), expected, "{ip}");
        }
    }

    #[test]
    fn only_public_is_public() {
        assert!(Public.is_public());
        for c in [
            Loopback,
            Private,
            LinkLocal,
            Unspecified,
            Multicast,
            Broadcast,
            SharedCgnat,
            Reserved,
            Metadata,
        ] {
            assert!(!c.is_public(), "{c:?}");
            assert!(c.describe().starts_with('a'), "{c:?}");
        }
    }

    fn refused(subject: &str) -> Result<Target, FetchError> {
        Err(FetchError::Refused {
            context: String::new(),
            subject: subject.into(),
        })
    }

    async fn check(url: &str, allow: &[&str]) -> Result<Target, FetchError> {
        let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
        check_target(&parse_url(url).expect("valid url"), &allow).await
    }

    #[tokio::test]
    async fn the_guard_refuses_literals_and_metadata_names_without_connecting() {
        for (url, subject) in [
            ("http://127.0.0.1/", "127.0.0.1 is a loopback address"),
            ("http://127.1/", "127.0.0.1 is a loopback address"),
            ("http://2130706433/", "127.0.0.1 is a loopback address"),
            ("http://[::1]:8080/", "::1 is a loopback address"),
            ("http://[::ffff:10.0.0.1]/", "::ffff:10.0.0.1 is a private address"),
            (
                "http://169.254.169.254/latest/",
                "169.254.169.254 is a cloud metadata address",
            ),
            ("http://[fd00:ec2::254]/", "fd00:ec2::254 is a cloud metadata address"),
            ("http://0.0.0.0:80/", "0.0.0.0 is an unspecified address"),
            (
                "http://metadata.google.internal/computeMetadata/v1/",
                "metadata.google.internal is a cloud metadata host",
            ),
            (
                "http://METADATA.google.internal./",
                "metadata.google.internal. is a cloud metadata host",
            ),
        ] {
            let got = check(url, &[]).await.map(|_| ());
            assert_eq!(got, refused(subject).map(|_| ()), "{url}");
        }
        // The allow list is exact and case-insensitive.
        assert!(check("http://127.0.0.1/", &["127.0.0.1"]).await.is_ok());
        assert!(check("http://[::1]/", &["[::1]"]).await.is_ok());
        assert!(check("http://[::1]/", &["::1"]).await.is_ok());
        assert!(check("http://127.0.0.1/", &["127.0.0.2"]).await.is_err());
    }

    #[tokio::test]
    async fn localhost_is_refused_by_name_and_pinned_when_allowed() {
        let got = check("http://localhost:9/", &[]).await.map(|_| ());
        match got {
            Err(FetchError::Refused { subject, .. }) => {
                assert!(subject.starts_with("localhost resolves to "), "{subject}");
                assert!(subject.ends_with(", a loopback address"), "{subject}");
            }
            other => panic!("localhost is refused: {other:?}"),
        }
        let target = check("http://LocalHost:9/", &["LOCALHOST"]).await.expect("allowed");
        let (host, addrs) = target.pin.expect("a host name is pinned");
        assert_eq!(host, "localhost");
        assert!(!addrs.is_empty());
        assert!(addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 9), "{addrs:?}");
    }

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

    #[test]
    fn snippets_are_cut_on_characters() {
        assert_eq!(first_chars("héllo", 2), "hé…");
        assert_eq!(first_chars("hé", 2), "hé");
        assert_eq!(collapse_whitespace("  a\n\n b\tc "), "a b c");
    }
}
