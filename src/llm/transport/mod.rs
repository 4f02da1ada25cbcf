//! The transport seam: how a [`ChatHttpRequest`] reaches the upstream and
//! its answer comes back.
//!
//! Two transports send the same request bytes (see [`super::request`]):
//! chatd's own pooled HTTP/1.1 connections ([`super::h1`]), read by the
//! reply's task, and reqwest over the lanes of [`HttpPool`]. Which one an
//! upstream gets is decided once per client, by [`TransportKind::choose`].

mod inline_h1;
mod reqwest_lanes;

use bytes::Bytes;
use futures::stream::BoxStream;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use super::LlmError;
use super::h1::H1Pool;
use super::pool::{HttpPool, LaneGuard};
use super::request::ChatHttpRequest;
use crate::config::{LlmConfig, LlmTransport};

/// Which HTTP client carries the streams to one upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// chatd's own HTTP/1.1 connections, kept per host and port and read
    /// by the reply's task (cleartext upstreams only).
    InlineH1,
    /// reqwest: HTTPS (HTTP/2 when negotiated), `llm.http2_prior_knowledge`,
    /// a proxy from the environment, or `llm.transport = "reqwest"`.
    Reqwest,
}

impl TransportKind {
    /// The one rule: [`TransportKind::InlineH1`] when `setting` is
    /// [`LlmTransport::Auto`], `base_url` is not `https://`,
    /// `http2_prior_knowledge` is off and no proxy is set in the
    /// environment (`proxy_in_env`: reqwest honours `HTTP_PROXY` and
    /// `ALL_PROXY`, the inline client does not); else
    /// [`TransportKind::Reqwest`].
    pub fn choose(setting: LlmTransport, base_url: &str, http2_prior_knowledge: bool, proxy_in_env: bool) -> Self {
        let inline = setting == LlmTransport::Auto
            && !base_url.starts_with("https://")
            && !http2_prior_knowledge
            && !proxy_in_env;
        if inline {
            TransportKind::InlineH1
        } else {
            TransportKind::Reqwest
        }
    }
}

/// A transport with the connections it sends on; cheap to clone.
#[derive(Debug, Clone)]
pub(super) enum Transport {
    /// Over [`H1Pool`]: no lane place is taken (every stream has its own
    /// connection).
    InlineH1(H1Pool),
    /// Over a client of `http`'s lanes.
    Reqwest {
        http: HttpPool,
        /// Whether streams may share a connection (HTTP/2: an HTTPS
        /// upstream, or `llm.http2_prior_knowledge`), and so count against
        /// `llm.max_streams_per_connection`.
        shared_connections: bool,
    },
}

impl Transport {
    /// The transport for streams to `base_url` (`http(s)://`, no trailing
    /// `/` needed), as [`TransportKind::choose`] decides with `llm` and
    /// what `http` found in the environment.
    pub fn for_upstream(http: &HttpPool, llm: &LlmConfig, base_url: &str) -> Self {
        let kind = TransportKind::choose(llm.transport, base_url, llm.http2_prior_knowledge, http.proxy_in_env());
        match kind {
            TransportKind::InlineH1 => Transport::InlineH1(http.h1().clone()),
            TransportKind::Reqwest => Transport::Reqwest {
                http: http.clone(),
                shared_connections: llm.http2_prior_knowledge || base_url.starts_with("https://"),
            },
        }
    }

    /// Which transport this is.
    pub fn kind(&self) -> TransportKind {
        match self {
            Transport::InlineH1(_) => TransportKind::InlineH1,
            Transport::Reqwest { .. } => TransportKind::Reqwest,
        }
    }

    /// Sends `request` and waits for the response head (no timeout here:
    /// the caller bounds the wait).
    ///
    /// Errors: [`LlmError::Unavailable`] when no response came (the URL
    /// does not parse, the host does not resolve, the connection is refused
    /// or reset, the connect timeout passes). A non-2xx status is an
    /// [`Answer`], not an error.
    pub async fn send(&self, request: ChatHttpRequest<'_>) -> Result<Answer, LlmError> {
        match self {
            Transport::InlineH1(h1) => inline_h1::send(h1, request).await,
            Transport::Reqwest {
                http,
                shared_connections,
            } => reqwest_lanes::send(http, *shared_connections, request).await,
        }
    }
}

/// What the upstream answered: its status, headers and body (errors
/// described as text), and the lane place the stream holds until the
/// answer is dropped (`None` when it takes none).
pub(super) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: BoxStream<'static, Result<Bytes, String>>,
    pub lane: Option<LaneGuard>,
}

#[cfg(test)]
mod tests;
