//! The HTTP/1.1 server loop: accepts connections up to
//! `http.max_connections`, serves each with hyper under the
//! `http.header_read_timeout_ms` and `http.keep_alive_timeout_ms` limits,
//! and on shutdown stops accepting and lets open connections finish.
//!
//! `axum::serve` sets none of these limits (no header timeout, no idle
//! timeout, no connection cap), so chatd runs its own loop over
//! hyper-util's connection builder, as axum's does.

use std::convert::Infallible;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::Response;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::config::HttpConfig;

/// The server's connection limits, from `[http]`.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// A request head must arrive within this (hyper's header read timeout).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight is closed after this.
    pub keep_alive_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
}

impl ServeLimits {
    /// The limits `config` sets (`header_read_timeout_ms`,
    /// `keep_alive_timeout_ms`, `max_connections`).
    pub fn from_config(config: &HttpConfig) -> Self {
        Self {
            header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
            keep_alive_timeout: Duration::from_millis(config.keep_alive_timeout_ms),
            max_connections: config.max_connections.max(1),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops
/// accepting, asks every open connection to close once its requests are
/// answered, and returns when all have closed. Every accepted connection has
/// `TCP_NODELAY` set: SSE sends many small writes, and with Nagle's
/// algorithm one waits for the peer's delayed ACK (about 40 ms on Linux).
///
/// Errors: none so far; accept errors are logged and retried (after 1 s for
/// errors such as running out of file descriptors).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let stop = CancellationToken::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                tracing::error!(error = %e, "accept failed; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let (router, stop) = (router.clone(), stop.clone());
        connections.spawn(async move {
            serve_connection(tcp, router, limits, stop).await;
            drop(slot);
        });
    }
    drop(listener);
    stop.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Errors of one connection that say nothing about the listener.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}

/// Serves one connection until the client closes it, it stays idle for the
/// keep-alive timeout, a request head is too slow, or `stop` is cancelled
/// (then it closes once its requests in flight are answered).
async fn serve_connection(tcp: TcpStream, router: Router, limits: ServeLimits, stop: CancellationToken) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY");
    }
    let (in_flight, watch_in_flight) = watch::channel(0usize);
    let in_flight = Arc::new(in_flight);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let router = router.clone();
        let guard = InFlight::begin(in_flight.clone());
        async move {
            let response = router.oneshot(request.map(Body::new)).await?;
            Ok::<Response<Tracked>, Infallible>(response.map(|body| Tracked { body, _guard: guard }))
        }
    });
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let mut conn = pin!(builder.serve_connection_with_upgrades(TokioIo::new(tcp), service));
    let mut closing = false;
    let mut idle = pin!(idle_for(watch_in_flight, limits.keep_alive_timeout));
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::trace!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = stop.cancelled(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            () = &mut idle, if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

/// Resolves once no request has been in flight for `timeout`.
async fn idle_for(mut in_flight: watch::Receiver<usize>, timeout: Duration) {
    loop {
        if in_flight.wait_for(|n| *n == 0).await.is_err() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(timeout) => return,
            changed = in_flight.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// Counts one request as in flight until its response body is dropped
/// (sent, or abandoned by a client that went away).
struct InFlight(Arc<watch::Sender<usize>>);

impl InFlight {
    fn begin(count: Arc<watch::Sender<usize>>) -> Self {
        count.send_modify(|n| *n += 1);
        Self(count)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A response body that keeps its request counted as in flight.
struct Tracked {
    body: Body,
    _guard: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
