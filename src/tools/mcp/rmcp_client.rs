//! [`Connector`] and [`McpConnection`] on top of the official Rust SDK,
//! `rmcp`. This is the only file in chatd that names `rmcp` types.
//!
//! - stdio: `command args` is spawned with `kill_on_drop`, stdin/stdout
//!   piped for JSON-RPC and stderr piped into chatd's log (debug level; the
//!   last line is kept to say why a process stopped). Like the reference MCP
//!   clients, the child does not inherit chatd's whole environment (which
//!   holds API keys): only [`INHERITED_ENV`], plus the server's `env`. It
//!   does not inherit chatd's working directory either (next to the
//!   database): it starts in an empty [`WorkDir`] of its own, removed when
//!   the session ends;
//! - streamable HTTP: `url`, with `headers` sent on every request.

use std::collections::{HashMap, VecDeque};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ClientCapabilities, ClientConfig, ClientRequest, Implementation,
    PingRequest,
};
use rmcp::service::{
    ClientInitializeError, NotificationContext, PeerRequestOptions, QuitReason, RoleClient, RunningService,
    ServiceError,
};
use rmcp::transport::streamable_http_client::{StreamableHttpClientTransportConfig, StreamableHttpError};
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, ServiceExt};
use serde_json::{Map, Value};
use tokio::io::AsyncBufReadExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::connection::{CallOutcome, Connector, McpConnection, McpToolSpec};
use super::workdir::WorkDir;
use super::{McpError, validate_server};
use crate::config::McpServerConfig;

/// How long [`McpConnection::close`] waits for the client task (which closes
/// stdin, waits, sends SIGTERM, waits, then kills: about 6 s at most).
const CLOSE_WAIT: Duration = Duration::from_secs(10);
/// Connection timeout of the HTTP client.
const HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of a child's stderr kept to explain why it stopped.
const STDERR_TAIL: usize = 5;
/// The variables of chatd's environment a child process gets (the MCP
/// TypeScript SDK's default list, plus locale and temp dir).
pub const INHERITED_ENV: &[&str] = &[
    "HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "LANG", "LC_ALL", "TMPDIR",
];

/// Opens connections with `rmcp`: a child process for `command`, a
/// streamable-HTTP session for `url`.
#[derive(Debug, Default, Clone, Copy)]
pub struct RmcpConnector;

impl Connector for RmcpConnector {
    fn connect(&self, server: &McpServerConfig) -> BoxFuture<'static, Result<Arc<dyn McpConnection>, McpError>> {
        let server = server.clone();
        Box::pin(async move {
            let connection = connect(&server).await?;
            Ok(Arc::new(connection) as Arc<dyn McpConnection>)
        })
    }
}

/// chatd's side of the MCP session: identifies itself and passes on
/// `tools/list_changed`.
struct Handler {
    tools_changed: Arc<Notify>,
}

impl ClientHandler for Handler {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.tools_changed.notify_one();
    }

    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("chatd", env!("CARGO_PKG_VERSION")),
        )
    }
}

/// The last lines a child process wrote to stderr.
#[derive(Default, Clone)]
struct StderrTail(Arc<Mutex<VecDeque<String>>>);

impl StderrTail {
    fn push(&self, line: String) {
        let mut lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() == STDERR_TAIL {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// `" (last stderr line: ...)"`, or nothing when the process wrote nothing.
    fn describe(&self) -> String {
        let lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match lines.back() {
            Some(last) => format!(" (last stderr line: {last})"),
            None => String::new(),
        }
    }
}

/// A live `rmcp` client session. The session itself runs in a task that
/// owns it; this handle keeps a clone of its peer.
struct RmcpConnection {
    peer: rmcp::Peer<RoleClient>,
    /// Cancels the session (and so stops the process).
    stop: CancellationToken,
    /// Cancelled once the session task has ended.
    ended: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
    tools_changed: Arc<Notify>,
}

impl Drop for RmcpConnection {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn connect(server: &McpServerConfig) -> Result<RmcpConnection, McpError> {
    validate_server(server)?;
    let tools_changed = Arc::new(Notify::new());
    let handler = Handler {
        tools_changed: tools_changed.clone(),
    };
    let stop = CancellationToken::new();
    let stderr = StderrTail::default();
    let mut workdir = None;
    let service = if let Some(command) = &server.command {
        let dir = WorkDir::create(&server.name).map_err(|source| McpError::Spawn {
            command: command.clone(),
            source,
        })?;
        let mut cmd = tokio::process::Command::new(command);
        cmd.args(&server.args)
            .current_dir(dir.path())
            .env_clear()
            .kill_on_drop(true);
        workdir = Some(dir);
        for key in INHERITED_ENV {
            if let Some(value) = std::env::var_os(key) {
                cmd.env(key, value);
            }
        }
        cmd.envs(&server.env);
        let (transport, pipe) = TokioChildProcess::builder(cmd)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| McpError::Spawn {
                command: command.clone(),
                source,
            })?;
        if let Some(pipe) = pipe {
            spawn_stderr_logger(server.name.clone(), pipe, stderr.clone());
        }
        handler
            .serve_with_ct(transport, stop.clone())
            .await
            .map_err(|e| McpError::Connect(format!("{}{}", init_error(e), stderr.describe())))?
    } else if let Some(url) = &server.url {
        let transport = StreamableHttpClientTransport::with_client(http_client()?, http_config(url, server)?);
        handler
            .serve_with_ct(transport, stop.clone())
            .await
            .map_err(|e| McpError::Connect(init_error(e)))?
    } else {
        return Err(McpError::InvalidConfig {
            server: server.name.clone(),
            reason: "set either command or url".into(),
        });
    };
    let peer = service.peer().clone();
    let ended = CancellationToken::new();
    let reason = Arc::new(Mutex::new(None));
    spawn_watcher(service, ended.clone(), reason.clone(), stderr, workdir);
    Ok(RmcpConnection {
        peer,
        stop,
        ended,
        reason,
        tools_changed,
    })
}

fn http_client() -> Result<reqwest::Client, McpError> {
    // reqwest is built without a bundled crypto provider (see llm::client).
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(HTTP_CONNECT_TIMEOUT)
        .build()
        .map_err(|e| McpError::Connect(format!("cannot build the HTTP client: {e}")))
}

fn http_config(url: &str, server: &McpServerConfig) -> Result<StreamableHttpClientTransportConfig, McpError> {
    let headers: HashMap<_, _> = server
        .header_map()
        .map_err(|reason| super::invalid_config(server, reason))?
        .iter()
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    Ok(StreamableHttpClientTransportConfig::with_uri(url.to_string()).custom_headers(headers))
}

/// Logs the child's stderr line by line and keeps the last lines.
fn spawn_stderr_logger(server: String, pipe: tokio::process::ChildStderr, tail: StderrTail) {
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::debug!(server = %server, "mcp stderr: {line}");
            tail.push(line);
        }
    });
}

/// Owns the session (and, for a process, its working directory) until it
/// ends, then records why and removes the directory.
fn spawn_watcher(
    service: RunningService<RoleClient, Handler>,
    ended: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
    stderr: StderrTail,
    workdir: Option<WorkDir>,
) {
    let is_process = workdir.is_some();
    tokio::spawn(async move {
        let quit = service.waiting().await;
        drop(workdir);
        let text = match quit {
            Ok(QuitReason::Cancelled) => "closed by chatd".to_string(),
            Ok(QuitReason::Closed) if is_process => format!("the server process exited{}", stderr.describe()),
            Ok(QuitReason::Closed) => "the server closed the session".to_string(),
            Ok(QuitReason::JoinError(e)) | Err(e) => format!("the MCP client task failed: {e}"),
            Ok(other) => format!("the session ended: {other:?}"),
        };
        *reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(text);
        ended.cancel();
    });
}

/// A handshake failure as one line without the SDK's type names: a transport
/// error is shown with its causes ("... Connection refused (os error 111)").
fn init_error(e: ClientInitializeError) -> String {
    match e {
        ClientInitializeError::TransportError { error, context } => {
            let cause = match error.error.downcast_ref::<StreamableHttpError<reqwest::Error>>() {
                // Its text leaves out the HTTP client's causes (connection refused, DNS).
                Some(StreamableHttpError::Client(http)) => error_chain(http),
                _ => error_chain(error.error.as_ref()),
            };
            format!("{cause} (while trying to {context})")
        }
        other => other.to_string(),
    }
}

/// An error and its sources, joined with ": " (a source already contained
/// in the text so far is left out).
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}

fn service_error(e: ServiceError) -> McpError {
    match e {
        ServiceError::McpError(data) => McpError::Protocol(data.message.into_owned()),
        ServiceError::TransportClosed | ServiceError::TransportSend(_) => McpError::Closed,
        ServiceError::Timeout { timeout } => McpError::Protocol(format!("no answer within {} ms", timeout.as_millis())),
        other => McpError::Protocol(other.to_string()),
    }
}

impl McpConnection for RmcpConnection {
    fn list_tools(&self) -> BoxFuture<'static, Result<Vec<McpToolSpec>, McpError>> {
        let peer = self.peer.clone();
        Box::pin(async move {
            let tools = peer.list_all_tools().await.map_err(service_error)?;
            Ok(tools
                .into_iter()
                .map(|tool| McpToolSpec {
                    name: tool.name.to_string(),
                    description: tool
                        .description
                        .map(|d| d.into_owned())
                        .or(tool.title)
                        .unwrap_or_default(),
                    input_schema: Value::Object((*tool.input_schema).clone()),
                })
                .collect())
        })
    }

    fn call_tool(
        &self,
        name: &str,
        arguments: Map<String, Value>,
    ) -> BoxFuture<'static, Result<CallOutcome, McpError>> {
        let peer = self.peer.clone();
        let stop = self.stop.clone();
        let params = CallToolRequestParams::new(name.to_string()).with_arguments(arguments);
        Box::pin(async move {
            let response = match peer.call_tool_once(params).await.map_err(service_error) {
                Ok(response) => response,
                Err(McpError::Closed) => {
                    // The transport failed (a dead process, an HTTP server
                    // that went away): end the session so the supervisor
                    // sees it closed and reconnects, instead of sending the
                    // next calls into a broken session.
                    stop.cancel();
                    return Err(McpError::Closed);
                }
                Err(e) => return Err(e),
            };
            match response {
                CallToolResponse::Complete(result) => Ok(CallOutcome {
                    content: result
                        .content
                        .iter()
                        .map(|block| serde_json::to_value(block).unwrap_or(Value::Null))
                        .collect(),
                    structured: result.structured_content,
                    is_error: result.is_error.unwrap_or(false),
                }),
                CallToolResponse::InputRequired(_) => Err(McpError::Unsupported(
                    "the server asked for more input from the user, which chatd does not support".into(),
                )),
                _ => Err(McpError::Unsupported(
                    "the server answered with a task to poll, which chatd does not support".into(),
                )),
            }
        })
    }

    fn ping(&self, limit: Duration) -> BoxFuture<'static, Result<(), McpError>> {
        let peer = self.peer.clone();
        Box::pin(async move {
            let request = ClientRequest::PingRequest(PingRequest::default());
            let answer = async {
                peer.send_request_with_option(request, PeerRequestOptions::with_timeout(limit))
                    .await?
                    .await_response()
                    .await
            };
            match answer.await {
                Ok(_) | Err(ServiceError::McpError(_)) => Ok(()),
                Err(ServiceError::Timeout { .. }) => Err(McpError::Protocol(format!(
                    "no answer to a ping within {} ms",
                    limit.as_millis()
                ))),
                Err(e) => Err(service_error(e)),
            }
        })
    }

    fn closed(&self) -> BoxFuture<'static, String> {
        let ended = self.ended.clone();
        let reason = self.reason.clone();
        Box::pin(async move {
            ended.cancelled().await;
            reason
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_else(|| "the session ended".to_string())
        })
    }

    fn tools_changed(&self) -> BoxFuture<'static, ()> {
        let notify = self.tools_changed.clone();
        Box::pin(async move { notify.notified().await })
    }

    fn close(&self) -> BoxFuture<'static, ()> {
        self.stop.cancel();
        let ended = self.ended.clone();
        Box::pin(async move {
            let _ = tokio::time::timeout(CLOSE_WAIT, ended.cancelled()).await;
        })
    }
}
