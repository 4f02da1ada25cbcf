//! The upstream HTTP clients: enough connections for every running stream.
//!
//! Over HTTP/2 (every HTTPS provider that negotiates it, and
//! `llm.http2_prior_knowledge`) one client keeps one connection per host
//! and puts every stream on it. Servers cap the streams of a connection
//! (hosted APIs at about 100 to 256), and the streams beyond the cap wait
//! for a free one: 10,000 replies over one connection capped at 200 left
//! 8,399 of them waiting until they timed out (BENCHMARKS.md). So streams
//! are spread over lanes, each a client with its own connections, at most
//! `llm.max_streams_per_connection` streams per lane; a lane is added when
//! every lane is full.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::LlmError;
use super::h1::H1Pool;
use crate::config::LlmConfig;

/// Most lanes: 1,000 × 100 streams is far beyond what one process runs.
const MAX_LANES: usize = 1_000;

/// The upstream HTTP clients, shared by every provider; cheap to clone.
#[derive(Clone, Debug)]
pub struct HttpPool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: LlmConfig,
    /// Streams per lane before another lane is used; `usize::MAX` for one
    /// lane (`max_streams_per_connection = 0`).
    per_lane: usize,
    /// The lane every pool has; `GET /models` uses it, and HTTP/1.1
    /// streams that reqwest carries.
    first: Lane,
    /// chatd's own HTTP/1.1 connections, for the upstreams whose
    /// transport is [`super::TransportKind::InlineH1`]; unused (no
    /// connection, no task) otherwise.
    h1: H1Pool,
    /// Whether a proxy for `http://` URLs was set in the environment when
    /// the pool was built (reqwest honours it, the inline client does not).
    proxy_in_env: bool,
    /// The lanes added when every lane was full.
    added: Mutex<Vec<Lane>>,
}

#[derive(Debug, Clone)]
struct Lane {
    client: reqwest::Client,
    streams: Arc<AtomicUsize>,
}

impl Lane {
    fn new(client: reqwest::Client) -> Self {
        Self {
            client,
            streams: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn streams(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }
}

/// Holds a stream's place in its lane until dropped.
#[derive(Debug)]
pub struct LaneGuard {
    streams: Arc<AtomicUsize>,
}

impl Drop for LaneGuard {
    fn drop(&mut self) {
        self.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

impl HttpPool {
    /// A pool with one lane built from `config` (connect timeout, HTTP/2
    /// prior knowledge, `max_streams_per_connection`).
    ///
    /// Errors: [`LlmError::Unavailable`] when the TLS stack cannot be set up.
    pub fn new(config: &LlmConfig) -> Result<Self, LlmError> {
        let per_lane = match config.max_streams_per_connection {
            0 => usize::MAX,
            n => n as usize,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                config: config.clone(),
                per_lane,
                first: Lane::new(build(config)?),
                h1: H1Pool::new(Duration::from_millis(config.connect_timeout_ms)),
                proxy_in_env: proxy_in_env(),
                added: Mutex::new(Vec::new()),
            }),
        })
    }

    /// A client for one more stream. Over HTTP/1.1 (`shared` false: a
    /// cleartext upstream without prior knowledge) every stream has its own
    /// connection anyway, and the first lane serves it uncounted. Else the
    /// first lane with room, or a new lane when all are full (first-fit
    /// keeps connections few and warm); the stream keeps its place until
    /// the guard is dropped.
    pub fn stream_client(&self, shared: bool) -> (reqwest::Client, Option<LaneGuard>) {
        let first = &self.inner.first;
        if !shared {
            return (first.client.clone(), None);
        }
        let mut added = self.inner.added.lock().unwrap_or_else(PoisonError::into_inner);
        let with_room = std::iter::once(first)
            .chain(added.iter())
            .find(|lane| lane.streams() < self.inner.per_lane)
            .cloned();
        let lane = match with_room {
            Some(lane) => lane,
            None if added.len() + 1 < MAX_LANES => match build(&self.inner.config) {
                Ok(client) => {
                    let lane = Lane::new(client);
                    added.push(lane.clone());
                    lane
                }
                // The first lane was built the same way; should it fail
                // now, the least busy lane takes the stream.
                Err(e) => {
                    tracing::warn!(error = %e, "could not add an upstream connection lane");
                    least_busy(first, &added)
                }
            },
            None => least_busy(first, &added),
        };
        lane.streams.fetch_add(1, Ordering::Relaxed);
        (lane.client, Some(LaneGuard { streams: lane.streams }))
    }

    /// chatd's own HTTP/1.1 connections (see [`H1Pool`]), with reqwest's
    /// settings that matter here: the connect timeout, `TCP_NODELAY`, idle
    /// connections kept 90 s.
    pub(super) fn h1(&self) -> &H1Pool {
        &self.inner.h1
    }

    /// Whether `HTTP_PROXY` or `ALL_PROXY` (either case) was set, not
    /// empty, when the pool was built.
    pub(super) fn proxy_in_env(&self) -> bool {
        self.inner.proxy_in_env
    }

    /// A client for a short request that is not a stream (`GET /models`).
    pub fn client(&self) -> reqwest::Client {
        self.inner.first.client.clone()
    }

    /// The number of lanes (for tests and metrics).
    pub fn lanes(&self) -> usize {
        1 + self.inner.added.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// The lane with the fewest streams (the first of equals).
fn least_busy(first: &Lane, added: &[Lane]) -> Lane {
    added
        .iter()
        .fold(
            first,
            |best, lane| if lane.streams() < best.streams() { lane } else { best },
        )
        .clone()
}

/// One client with its own connection pool.
fn build(config: &LlmConfig) -> Result<reqwest::Client, LlmError> {
    // reqwest is built without a bundled crypto provider; use ring. An
    // error means a provider is already installed, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
        .tcp_nodelay(true);
    let builder = if config.http2_prior_knowledge {
        builder.http2_prior_knowledge()
    } else {
        builder
    };
    builder
        .build()
        .map_err(|e| LlmError::unavailable(format!("cannot build HTTP client: {e}")))
}

/// Whether the environment sets a proxy for `http://` URLs (reqwest's
/// variables: `HTTP_PROXY`, `ALL_PROXY`, either case).
fn proxy_in_env() -> bool {
    ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(per_connection: u32) -> HttpPool {
        HttpPool::new(&LlmConfig {
            max_streams_per_connection: per_connection,
            ..LlmConfig::default()
        })
        .expect("pool")
    }

    #[test]
    fn a_lane_is_added_when_every_lane_is_full_and_freed_places_are_reused() {
        let pool = pool(2);
        let a = pool.stream_client(true).1;
        let b = pool.stream_client(true).1;
        assert_eq!(pool.lanes(), 1);
        let _h1: Vec<_> = (0..10).map(|_| pool.stream_client(false)).collect();
        assert_eq!(pool.lanes(), 1, "HTTP/1.1 streams take no place");
        let c = pool.stream_client(true).1;
        assert_eq!(pool.lanes(), 2, "the first lane is full");
        drop(a);
        let d = pool.stream_client(true).1;
        assert_eq!(pool.lanes(), 2, "the freed place in the first lane is taken");
        let e = pool.stream_client(true).1;
        assert_eq!(pool.lanes(), 2, "the second lane had room");
        let _f = pool.stream_client(true).1;
        assert_eq!(pool.lanes(), 3);
        drop((b, c, d, e));
    }

    #[test]
    fn zero_means_one_lane_for_every_stream() {
        let pool = pool(0);
        let guards: Vec<Option<LaneGuard>> = (0..500).map(|_| pool.stream_client(true).1).collect();
        assert_eq!(pool.lanes(), 1);
        drop(guards);
    }
}
