//! [`FetchError`]: why a fetch failed, in words the model can act on.

use crate::tools::ToolError;

/// Why a fetch failed. The text is shown to the model; URLs in it are the
/// normalised (`Url::to_string`) form, `ms` is milliseconds.
///
/// As a [`ToolError`], the argument errors ([`FetchError::InvalidUrl`],
/// [`FetchError::UnsupportedScheme`], [`FetchError::NoHost`]) are
/// [`ToolError::InvalidArguments`] and every other variant is
/// [`ToolError::Failed`].
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
    /// Turning the HTML into text did not end within what was left of
    /// `tools.fetch.timeout_ms` after the fetch.
    #[error(
        "converting the HTML of {url} to text did not finish within the {ms} ms limit of the fetch; try a simpler \
         page"
    )]
    ConvertTimeout { url: String, ms: u64 },
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
