//! The [`Tool`] chatd registers for each tool of an MCP server, and the
//! per-server slot holding the current connection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;

use super::McpError;
use super::connection::{McpConnection, McpToolSpec};
use super::content::render;
use crate::tools::{Approval, Tool, ToolContext, ToolError, ToolOutput};

/// The connection a server's proxies use: up, or down with a reason. The
/// supervisor swaps it on every (re)connect, so registered proxies survive a
/// restart of their server.
pub(crate) struct ServerSlot {
    server: String,
    state: RwLock<SlotState>,
    /// Calls running now (health checks wait while a call runs: a server
    /// that handles one request at a time could not answer a ping).
    in_flight: Arc<AtomicUsize>,
}

/// Counts a running call until dropped.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

enum SlotState {
    Up(Arc<dyn McpConnection>),
    Down(String),
}

impl ServerSlot {
    pub(crate) fn new(server: &str) -> Self {
        Self {
            server: server.to_string(),
            state: RwLock::new(SlotState::Down("not connected yet".to_string())),
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub(crate) fn set_up(&self, connection: Arc<dyn McpConnection>) {
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = SlotState::Up(connection);
    }

    pub(crate) fn set_down(&self, reason: String) {
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = SlotState::Down(reason);
    }

    /// Whether a call is running.
    pub(crate) fn busy(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) > 0
    }

    fn start_call(&self) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.in_flight.clone())
    }

    /// The live connection, or the text for a call made while the server is down.
    fn current(&self) -> Result<Arc<dyn McpConnection>, String> {
        match &*self.state.read().unwrap_or_else(|p| p.into_inner()) {
            SlotState::Up(connection) => Ok(connection.clone()),
            SlotState::Down(reason) => Err(format!(
                "the MCP server {:?} is not connected ({reason}); chatd is reconnecting to it, try again later",
                self.server
            )),
        }
    }
}

/// One MCP tool as a chatd [`Tool`] named `<server>__<tool>`.
pub(crate) struct McpProxyTool {
    /// The registered name.
    pub(crate) name: String,
    /// The server's name for the tool.
    pub(crate) remote: String,
    pub(crate) server: String,
    pub(crate) description: String,
    pub(crate) parameters: Value,
    pub(crate) timeout: Option<Duration>,
    pub(crate) slot: Arc<ServerSlot>,
}

impl McpProxyTool {
    pub(crate) fn new(
        name: String,
        spec: McpToolSpec,
        server: &str,
        timeout: Option<Duration>,
        slot: Arc<ServerSlot>,
    ) -> Self {
        let description = if spec.description.trim().is_empty() {
            format!("Tool {:?} of the MCP server {server:?}.", spec.name)
        } else {
            spec.description
        };
        Self {
            name,
            remote: spec.name,
            server: server.to_string(),
            description,
            parameters: spec.input_schema,
            timeout,
            slot,
        }
    }

    /// Whether `other` describes the same tool (a re-listing that changed
    /// nothing keeps the registered proxy).
    pub(crate) fn same_as(&self, other: &McpProxyTool) -> bool {
        self.name == other.name
            && self.remote == other.remote
            && self.description == other.description
            && self.parameters == other.parameters
            && self.timeout == other.timeout
    }
}

impl Tool for McpProxyTool {
    fn name(&self) -> &str {
        &self.name
    }

    fn description(&self) -> &str {
        &self.description
    }

    fn parameters(&self) -> Value {
        self.parameters.clone()
    }

    fn origin(&self) -> String {
        format!("mcp:{}", self.server)
    }

    fn default_approval(&self) -> Approval {
        Approval::Ask
    }

    fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    fn call(&self, _ctx: ToolContext, arguments: Value) -> BoxFuture<'static, Result<ToolOutput, ToolError>> {
        let arguments = match arguments {
            Value::Object(map) => map,
            Value::Null => serde_json::Map::new(),
            other => {
                let text = format!("expected a JSON object, got {other}");
                return Box::pin(async move { Err(ToolError::InvalidArguments(text)) });
            }
        };
        let connection = match self.slot.current() {
            Ok(connection) => connection,
            Err(text) => return Box::pin(async move { Err(ToolError::Failed(text)) }),
        };
        let call = connection.call_tool(&self.remote, arguments);
        let server = self.server.clone();
        let in_flight = self.slot.start_call();
        Box::pin(async move {
            let result = call.await;
            drop(in_flight);
            match result {
                Ok(outcome) if outcome.is_error => Err(ToolError::Failed(render(&outcome))),
                Ok(outcome) => Ok(render(&outcome).into()),
                Err(McpError::Closed) => Err(ToolError::Failed(format!(
                    "the MCP server {server:?} closed the connection during the call; chatd is restarting it"
                ))),
                Err(e) => Err(ToolError::Failed(format!("MCP server {server:?}: {e}"))),
            }
        })
    }
}
