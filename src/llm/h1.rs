//! HTTP/1.1 streams to a cleartext upstream, driven by the task that reads
//! them.
//!
//! hyper's pooled client (`hyper_util::client::legacy`) runs every
//! connection as a task of its own. A token stream then crosses two tasks
//! per chunk: the connection's task reads the chunk and passes it through a
//! channel, the reply's task takes it and signals that it wants the next
//! one, which wakes the connection's task again. On a busy machine each of
//! those hand-offs waits in a run queue, at the start of a reply (request,
//! response head, first chunk) and at its end (the finish, usage and
//! `[DONE]` chunks, one hand-off each). Here the reply's task polls its
//! connection itself, with hyper's `client::conn::http1`: the socket's
//! readiness wakes the task that parses the stream, and every chunk that
//! arrived is read in that one wake-up (BENCHMARKS.md, fix 23).
//!
//! Connections are kept for the next request once a response was read to
//! its end, as hyper's client does: per host and port, the most recently
//! used first, closed after [`IDLE_TIMEOUT`] unused. A kept connection the
//! server closed meanwhile is noticed when it is taken (its end of stream
//! was read) or by the sweep every [`SWEEP_INTERVAL`], and a request that
//! could not be written to a kept connection is sent again on another one;
//! a request that may have reached the server is never sent twice.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;
use http::header::HOST;
use http::uri::{PathAndQuery, Uri};
use http::{HeaderValue, Request, response};
use http_body_util::Full;
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::http1::{Builder, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::domain::error_chain as describe;

/// How long a kept connection may sit unused before it is closed (90 s, as
/// reqwest and hyper's pooled client).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Bytes read from the upstream per read (bytes). A chunk of a token stream
/// is 100 to 400 bytes; a longer line takes several reads. hyper's default
/// reads up to 8 KiB into a buffer each connection keeps: at 10,000 streams
/// the smaller buffer is about 40 MiB less (BENCHMARKS.md, fix 19).
const READ_BUFFER: usize = 1024;

/// One HTTP/1.1 connection: the handle requests are sent with and the
/// connection state machine that reads and writes the socket.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    /// `None` once the connection has ended (closed by either side or failed).
    driver: Option<Connection<TokioIo<TcpStream>, Full<Bytes>>>,
}

impl Conn {
    /// Lets the connection read and write what it can; wakes `cx` when it
    /// can do more. Whatever ended the connection, the response or body
    /// waiting on it gets it as its error.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(driver) = self.driver.as_mut()
            && let Poll::Ready(result) = Pin::new(driver).poll(cx)
        {
            if let Err(e) = result {
                tracing::debug!(error = %e, "upstream connection ended");
            }
            self.driver = None;
        }
    }

    /// Whether a request can still be sent on this connection.
    fn is_open(&self) -> bool {
        self.driver.is_some() && !self.sender.is_closed()
    }

    /// Whether a connection nobody is reading is still open, after it read
    /// what arrived meanwhile (the rest of a response, or the server's end
    /// of stream, which closes it). Wakes nobody later.
    fn still_open(&mut self) -> bool {
        self.drive(&mut Context::from_waker(Waker::noop()));
        self.is_open()
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// Where a connection goes: `host:port`.
type Key = String;

/// HTTP/1.1 connections to cleartext upstreams; cheap to clone.
#[derive(Clone)]
pub struct H1Pool {
    inner: Arc<Inner>,
}

struct Inner {
    connect_timeout: Duration,
    idle: Mutex<HashMap<Key, VecDeque<Idle>>>,
    /// Whether the task that closes unused connections runs.
    sweeping: AtomicBool,
}

/// How often kept connections are checked (30 s): those unused for
/// [`IDLE_TIMEOUT`] are closed, and so are those the upstream closed, which
/// would otherwise hold a socket until the next request to that upstream.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

impl std::fmt::Debug for H1Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Pool")
            .field("connect_timeout", &self.inner.connect_timeout)
            .field("idle", &self.idle_count())
            .finish()
    }
}

/// A response body read by the task that polls it, connection included;
/// each item is the data of one HTTP chunk (bytes). Errors are described as
/// text. Read to its end, the connection is kept for the next request.
/// Dropped before (a reader stops at `data: [DONE]`, which comes just before
/// the body's last chunk), what is left is read first: at once when it has
/// arrived, else by a task of its own for up to [`DRAIN_TIMEOUT`] and
/// [`DRAIN_LIMIT`]; a body that does not end within those closes its
/// connection (an HTTP/1.1 response cannot be abandoned halfway).
pub struct H1Body {
    /// `None` after the end, an error, or the drop.
    reading: Option<Reading>,
    pool: Weak<Inner>,
    key: Key,
    /// What the connection and `body` are polled with (see [`TaskWaker`]).
    waker: Arc<TaskWaker>,
    /// `waker` as a [`Waker`], made once.
    own: Waker,
}

/// A response being read: its connection and its body.
struct Reading {
    conn: Conn,
    body: Incoming,
}

/// The longest a dropped body's rest is read for before its connection is
/// closed instead of kept (5 s).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The most bytes of a dropped body's rest read before its connection is
/// closed instead of kept (64 KiB).
pub const DRAIN_LIMIT: usize = 64 * 1024;

/// Wakes the task that reads an [`H1Body`], except from inside that read.
///
/// The connection and the body wake each other through hyper's body
/// channel: the connection wakes the reader when it passes a chunk, the
/// reader wakes the connection when it takes one. Both run inside
/// [`H1Body::poll_next`], which polls the body again after driving the
/// connection and drives the connection again before it reports `Pending`;
/// a wake-up from one to the other there would only make the scheduler
/// poll the whole reply again for nothing, once per chunk. So a wake-up
/// from the polling thread while `poll_next` runs is held back, and only
/// passed on if `poll_next` ends `Pending` (hyper asks to be polled again
/// when it yields after a long read). Wake-ups from anywhere else (the
/// socket becoming readable) go straight to the task.
struct TaskWaker {
    /// The reading task's waker, as of its last poll; `None` once the body
    /// is dropped, so that a kept connection does not hold the task.
    task: Mutex<Option<Waker>>,
    /// The thread inside `poll_next` (see [`thread_mark`]), 0 when none.
    polling: AtomicUsize,
    /// A wake-up was held back during this `poll_next`.
    held: AtomicBool,
}

thread_local! {
    static MARK: u8 = const { 0 };
}

/// A number unique to the calling thread among running threads (the
/// address of a thread-local), never 0.
fn thread_mark() -> usize {
    MARK.with(|mark| std::ptr::from_ref(mark) as usize)
}

impl TaskWaker {
    fn task(&self) -> std::sync::MutexGuard<'_, Option<Waker>> {
        self.task.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.polling.load(Ordering::Relaxed) == thread_mark() {
            self.held.store(true, Ordering::Relaxed);
        } else if let Some(task) = self.task().as_ref() {
            task.wake_by_ref();
        }
    }
}

impl H1Pool {
    /// A pool whose new connections must be established within
    /// `connect_timeout` (per address the host resolves to).
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                connect_timeout,
                idle: Mutex::new(HashMap::new()),
                sweeping: AtomicBool::new(false),
            }),
        }
    }

    /// Sends `request` (an absolute `http://` URI) and returns the response
    /// head and its body once the head has arrived. `Host` is set from the
    /// URI and the request line carries its path.
    ///
    /// Errors (as text, for [`super::LlmError::Unavailable`]): the host does
    /// not resolve, no address accepts a connection within the connect
    /// timeout, or the connection fails before the response head.
    pub async fn send(&self, mut request: Request<Full<Bytes>>) -> Result<(response::Parts, H1Body), String> {
        let (key, host, port) = target(request.uri())?;
        let path = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *request.uri_mut() = Uri::from(path);
        let host_header =
            HeaderValue::from_str(&key).map_err(|_| format!("{key:?} is not a valid Host header value"))?;
        request.headers_mut().entry(HOST).or_insert(host_header);
        loop {
            let (mut conn, kept) = match self.checkout(&key) {
                Some(conn) => (conn, true),
                None => (self.connect(&host, port).await?, false),
            };
            let ready = poll_fn(|cx| {
                conn.drive(cx);
                conn.sender.poll_ready(cx)
            })
            .await;
            if let Err(e) = ready {
                if kept {
                    continue;
                }
                return Err(describe(&e));
            }
            let mut answer = std::pin::pin!(conn.sender.try_send_request(request));
            let answer = poll_fn(|cx| {
                conn.drive(cx);
                answer.as_mut().poll(cx)
            })
            .await;
            match answer {
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    let waker = Arc::new(TaskWaker {
                        task: Mutex::new(None),
                        polling: AtomicUsize::new(0),
                        held: AtomicBool::new(false),
                    });
                    let body = H1Body {
                        reading: Some(Reading { conn, body }),
                        pool: Arc::downgrade(&self.inner),
                        key,
                        own: Waker::from(waker.clone()),
                        waker,
                    };
                    return Ok((parts, body));
                }
                Err(mut e) => match e.take_message() {
                    // Not written: the kept connection had closed. Another
                    // one (kept or new) gets it.
                    Some(unsent) if kept => request = unsent,
                    _ => return Err(describe(e.error())),
                },
            }
        }
    }

    /// The number of kept connections (for tests and `Debug`).
    pub fn idle_count(&self) -> usize {
        self.inner.lock().values().map(VecDeque::len).sum()
    }

    /// The most recently kept connection to `key` that is still open.
    fn checkout(&self, key: &str) -> Option<Conn> {
        let mut idle = self.inner.lock();
        let list = idle.get_mut(key)?;
        expire(list);
        while let Some(mut entry) = list.pop_back() {
            // A server's end of stream closes the connection here, not
            // under the request.
            if entry.conn.still_open() {
                return Some(entry.conn);
            }
        }
        None
    }

    async fn connect(&self, host: &str, port: u16) -> Result<Conn, String> {
        let limit = self.inner.connect_timeout;
        let addrs = tokio::time::timeout(limit, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| format!("resolving {host}: no answer within {} ms", limit.as_millis()))?
            .map_err(|e| format!("resolving {host}: {e}"))?;
        let mut failure = format!("{host} resolved to no address");
        let mut stream = None;
        for addr in addrs {
            match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    stream = Some(s);
                    break;
                }
                Ok(Err(e)) => failure = format!("tcp connect error: {addr}: {e}"),
                Err(_) => failure = format!("tcp connect error: {addr}: no answer within {} ms", limit.as_millis()),
            }
        }
        let stream = stream.ok_or(failure)?;
        // Each token is a small write the client should see at once.
        stream
            .set_nodelay(true)
            .map_err(|e| format!("setting TCP_NODELAY: {e}"))?;
        let (sender, driver) = Builder::new()
            .read_buf_exact_size(Some(READ_BUFFER))
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| describe(&e))?;
        Ok(Conn {
            sender,
            driver: Some(driver),
        })
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, VecDeque<Idle>>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `conn` for the next request to `key`, if it is still open.
    fn check_in(self: &Arc<Self>, key: Key, mut conn: Conn) {
        // Lets the connection finish reading the response and go idle, or
        // notice that the server closes it (`Connection: close`).
        if !conn.still_open() {
            return;
        }
        let mut idle = self.lock();
        let list = idle.entry(key).or_default();
        expire(list);
        list.push_back(Idle {
            conn,
            since: Instant::now(),
        });
        drop(idle);
        self.sweep_later();
    }

    /// Starts the task that runs [`Inner::sweep`] every [`SWEEP_INTERVAL`]
    /// while the pool exists, unless it runs already or there is no tokio
    /// runtime here.
    fn sweep_later(self: &Arc<Self>) {
        if self.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.sweeping.store(false, Ordering::Relaxed);
            return;
        };
        let pool = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + SWEEP_INTERVAL, SWEEP_INTERVAL);
            loop {
                ticks.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                pool.sweep();
            }
        });
    }

    /// Closes the kept connections that expired or that the upstream closed.
    fn sweep(&self) {
        let mut idle = self.lock();
        for list in idle.values_mut() {
            expire(list);
            list.retain_mut(|entry| entry.conn.still_open());
        }
        idle.retain(|_, list| !list.is_empty());
    }
}

/// Closes the connections unused for longer than [`IDLE_TIMEOUT`] (the
/// oldest are at the front).
fn expire(list: &mut VecDeque<Idle>) {
    while list.front().is_some_and(|entry| entry.since.elapsed() > IDLE_TIMEOUT) {
        list.pop_front();
    }
}

impl Reading {
    /// The next data: the body's, else the connection's once driven.
    /// `Ready(None)` at the body's end.
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, hyper::Error>>> {
        let mut driven = false;
        loop {
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers carry no data; the next frame may.
                    if let Ok(data) = frame.into_data() {
                        return Poll::Ready(Some(Ok(data)));
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending if driven => return Poll::Pending,
                Poll::Pending => {
                    // Reads the socket: what arrived goes to `body`.
                    self.conn.drive(cx);
                    driven = true;
                }
            }
        }
    }

    /// Reads the rest of the body, at most `limit` more bytes; `Ready(true)`
    /// at its end, `Ready(false)` when it fails or is longer.
    fn poll_rest(&mut self, cx: &mut Context<'_>, limit: &mut usize) -> Poll<bool> {
        loop {
            match self.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) if data.len() <= *limit => *limit -= data.len(),
                Poll::Ready(Some(_)) => return Poll::Ready(false),
                Poll::Ready(None) => return Poll::Ready(true),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Stream for H1Body {
    type Item = Result<Bytes, String>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        {
            let mut task = this.waker.task();
            if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        this.waker.polling.store(thread_mark(), Ordering::Relaxed);
        let result = match this.reading.as_mut() {
            None => Poll::Ready(None),
            Some(reading) => match reading.poll_data(&mut Context::from_waker(&this.own)) {
                Poll::Ready(Some(Ok(data))) => Poll::Ready(Some(Ok(data))),
                Poll::Ready(Some(Err(e))) => {
                    this.reading = None;
                    Poll::Ready(Some(Err(describe(&e))))
                }
                Poll::Ready(None) => {
                    if let (Some(reading), Some(pool)) = (this.reading.take(), this.pool.upgrade()) {
                        pool.check_in(std::mem::take(&mut this.key), reading.conn);
                    }
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            },
        };
        this.waker.polling.store(0, Ordering::Relaxed);
        // Held back while data is returned: the reader polls again for
        // more, and that poll drives the connection.
        if this.waker.held.swap(false, Ordering::Relaxed) && result.is_pending() {
            cx.waker().wake_by_ref();
        }
        result
    }
}

impl Drop for H1Body {
    fn drop(&mut self) {
        self.waker.task().take();
        let Some(mut reading) = self.reading.take() else { return };
        let Some(pool) = self.pool.upgrade() else { return };
        let key = std::mem::take(&mut self.key);
        let mut limit = DRAIN_LIMIT;
        match reading.poll_rest(&mut Context::from_waker(Waker::noop()), &mut limit) {
            Poll::Ready(true) => pool.check_in(key, reading.conn),
            Poll::Ready(false) => {}
            Poll::Pending => {
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    return;
                };
                runtime.spawn(async move {
                    let rest = poll_fn(|cx| reading.poll_rest(cx, &mut limit));
                    if let Ok(true) = tokio::time::timeout(DRAIN_TIMEOUT, rest).await {
                        pool.check_in(key, reading.conn);
                    }
                });
            }
        }
    }
}

/// `host:port` (port 80 when the URI has none), the host and the port of
/// an `http://` URI.
fn target(uri: &Uri) -> Result<(Key, String, u16), String> {
    if uri.scheme_str() != Some("http") {
        return Err(format!("{uri} is not an http:// URL"));
    }
    let host = uri.host().ok_or_else(|| format!("{uri} has no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    // `[::1]` in the URI, `::1` to resolve.
    let bare = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let key = match uri.port_u16() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    Ok((key, bare, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_name_host_and_port_as_the_host_header_does() {
        let uri = |s: &str| s.parse::<Uri>().expect("uri");
        assert_eq!(
            target(&uri("http://127.0.0.1:8080/v1/chat/completions")),
            Ok(("127.0.0.1:8080".to_string(), "127.0.0.1".to_string(), 8080))
        );
        assert_eq!(
            target(&uri("http://models.internal/v1/chat/completions")),
            Ok(("models.internal".to_string(), "models.internal".to_string(), 80))
        );
        assert_eq!(
            target(&uri("http://[::1]:11434/v1")),
            Ok(("[::1]:11434".to_string(), "::1".to_string(), 11434))
        );
        assert!(target(&uri("https://api.example.com/v1")).is_err());
    }

    #[tokio::test]
    async fn kept_connections_the_upstream_closed_are_swept() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf).await;
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
            // The upstream's keep-alive ends while chatd keeps the connection.
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(socket);
        });
        let pool = H1Pool::new(Duration::from_secs(1));
        let request = Request::post(format!("http://{addr}/v1/chat/completions"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let (parts, body) = pool.send(request).await.expect("response");
        assert_eq!(parts.status, 200);
        let data: Vec<_> = futures::StreamExt::collect(body).await;
        assert_eq!(data, vec![Ok(Bytes::from_static(b"ok"))]);
        assert_eq!(pool.idle_count(), 1, "read to its end, the connection is kept");
        pool.inner.sweep();
        assert_eq!(pool.idle_count(), 1, "still open");
        tokio::time::sleep(Duration::from_millis(200)).await;
        pool.inner.sweep();
        assert_eq!(pool.idle_count(), 0, "closed by the upstream");
    }

    #[tokio::test]
    async fn a_refused_connection_is_described() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let pool = H1Pool::new(Duration::from_secs(1));
        let request = Request::post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let error = pool.send(request).await.err().expect("refused");
        assert!(
            error.starts_with(&format!("tcp connect error: 127.0.0.1:{port}: ")),
            "{error}"
        );
        assert_eq!(pool.idle_count(), 0);
    }
}
