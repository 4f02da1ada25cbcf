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
use std::net::SocketAddr;
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
use tokio::net::{TcpListener, TcpSocket, TcpStream};
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

/// A listener on `addr` with a queue of `backlog` connections not yet
/// accepted (`listen(2)`; tokio's own `bind` asks for 1,024), with
/// `SO_REUSEADDR` so a restart can bind while old connections linger in
/// TIME_WAIT. Logs a warning when the kernel's `net.core.somaxconn` is
/// lower than `backlog`, since Linux silently caps the queue there.
///
/// Errors: the socket, bind or listen error (address in use, no
/// permission, ...).
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    if let Some(cap) = somaxconn()
        && cap < backlog
    {
        tracing::warn!(
            %addr,
            listen_backlog = backlog,
            somaxconn = cap,
            "the kernel caps the listen backlog at net.core.somaxconn; raise it (sysctl -w net.core.somaxconn={backlog}) so bursts of connects are not dropped"
        );
    }
    socket.listen(backlog)
}

/// Linux's cap on listen backlogs (`/proc/sys/net/core/somaxconn`), if
/// readable.
fn somaxconn() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::TcpStream;
    use tokio::time::timeout;

    /// The backlog reaches `listen(2)`: with a backlog of 1 and nothing
    /// accepting, Linux completes backlog + 1 = 2 handshakes and drops the
    /// SYNs of the rest (tokio's own `bind` would queue 1,024).
    #[tokio::test]
    async fn the_listen_backlog_is_the_one_asked_for() {
        let listener = super::bind("127.0.0.1:0".parse().expect("addr"), 1).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut connected = Vec::new();
        let mut refused = 0;
        for _ in 0..4 {
            match timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => connected.push(stream),
                Ok(Err(e)) => panic!("connect failed: {e}"),
                Err(_) => refused += 1,
            }
        }
        assert_eq!((connected.len(), refused), (2, 2));
        // Accepting one makes room for one more.
        let (_first, _) = listener.accept().await.expect("accept");
        timeout(Duration::from_millis(1000), TcpStream::connect(addr))
            .await
            .expect("room after an accept")
            .expect("connect");
    }
}
