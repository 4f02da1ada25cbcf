//! The seam between chatd and an MCP client library: a live connection to
//! one server ([`McpConnection`]) and the factory that opens one
//! ([`Connector`]). Only `rmcp_client.rs` implements these with the `rmcp`
//! SDK; everything else in chatd sees these types alone.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{Map, Value};

use super::McpError;
use crate::config::McpServerConfig;

/// A tool as the server describes it in `tools/list`.
#[derive(Debug, Clone, PartialEq)]
pub struct McpToolSpec {
    /// The server's own name for the tool (used in `tools/call`).
    pub name: String,
    /// The server's description (or title); empty when it gave none.
    pub description: String,
    /// JSON Schema of the arguments (`inputSchema`).
    pub input_schema: Value,
}

/// The answer to one `tools/call`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallOutcome {
    /// The content blocks as the server sent them (MCP JSON: `{"type":"text","text":...}`, ...).
    pub content: Vec<Value>,
    /// `structuredContent`, if any.
    pub structured: Option<Value>,
    /// The server's `isError`: the tool ran and failed.
    pub is_error: bool,
}

/// A live connection to one MCP server (a running child process or an HTTP
/// session). Every future is `'static`: it holds what it needs, so a call can
/// run as its own task.
pub trait McpConnection: Send + Sync + 'static {
    /// Every tool the server offers (all pages of `tools/list`).
    fn list_tools(&self) -> BoxFuture<'static, Result<Vec<McpToolSpec>, McpError>>;

    /// Runs `tools/call`. Dropping the future abandons the call (the server is
    /// told it was cancelled).
    fn call_tool(&self, name: &str, arguments: Map<String, Value>)
    -> BoxFuture<'static, Result<CallOutcome, McpError>>;

    /// Checks that the server still answers within `limit`. Any answer counts,
    /// even an error (a server may not implement `ping`); only silence or a
    /// broken transport fail.
    fn ping(&self, limit: Duration) -> BoxFuture<'static, Result<(), McpError>>;

    /// Resolves, with a reason for the log, once the connection has ended:
    /// the process exited, the session closed, or [`McpConnection::close`] ran.
    fn closed(&self) -> BoxFuture<'static, String>;

    /// Resolves once after each `notifications/tools/list_changed` from the
    /// server (a notification that arrived earlier counts once).
    fn tools_changed(&self) -> BoxFuture<'static, ()>;

    /// Ends the connection (a child process is asked to exit, then killed)
    /// and resolves when it is gone.
    fn close(&self) -> BoxFuture<'static, ()>;
}

/// Opens connections; [`super::RmcpConnector`] is the real one, tests can
/// supply their own.
pub trait Connector: Send + Sync + 'static {
    /// Starts the process (or opens the HTTP session) and completes the MCP
    /// `initialize` handshake.
    fn connect(&self, server: &McpServerConfig) -> BoxFuture<'static, Result<Arc<dyn McpConnection>, McpError>>;
}
