//! MCP (Model Context Protocol) servers as a source of tools.
//!
//! [`start_mcp`] starts an [`McpManager`] for the `[[mcp_servers]]` of the
//! config. It returns at once; in the background, one supervisor task per
//! server connects to it (a child process over stdio, or streamable HTTP),
//! lists its tools and registers each one in the [`ToolRegistry`] as
//! `<server>__<tool>`: origin `mcp:<server>`, approval `ask` (unless
//! `tools.approval` says otherwise), the server's description and input
//! schema, and the server's `timeout_ms` as the call timeout. Calls then go
//! through chatd's executor like any other tool.
//!
//! Each server's state is reported with [`ToolRegistry::set_source_status`]
//! (`GET /api/tools` shows it under `sources`): `connecting`, `connected`, or
//! `unavailable` with the error. A server that cannot be reached (a command
//! that does not exist, a closed port) registers no tools; chatd runs on
//! without them.
//!
//! **Restarts.** When a connection ends (the process exits or crashes, the
//! session closes) or a connection attempt fails, the supervisor tries again
//! after a backoff that starts at [`McpOptions::backoff_initial`] (0.5 s) and
//! doubles up to [`McpOptions::backoff_max`] (30 s); it starts over from
//! 0.5 s once a connection has stayed up for `backoff_max`. This applies to
//! both transports. **While a server is down its tools stay registered**,
//! so the set of tools the model and the clients see does not flicker; a
//! call made meanwhile fails with a tool error the model can act on ("the
//! MCP server "files" is not connected (...); chatd is reconnecting to it,
//! try again later"), and a call cut by a crash fails with "... closed the
//! connection during the call; chatd is restarting it". After every
//! (re)connect, and whenever the server sends `tools/list_changed`, the
//! tools are listed again: new ones are registered, changed ones replaced,
//! vanished ones unregistered. [`McpManager::refresh`] reconnects at once;
//! [`McpManager::shutdown`] closes every connection and unregisters the tools.
//!
//! Results: the MCP content parts joined with newlines (see
//! [`render_result`]: text as is, `[image: image/png, 1234 bytes]`, embedded
//! text resources included); `isError: true` becomes a failed call with that
//! text.
//!
//! The `rmcp` SDK stays behind [`McpConnection`] and [`Connector`]; nothing
//! outside `rmcp_client.rs` names its types.

mod connection;
mod content;
mod manager;
mod proxy;
mod rmcp_client;
mod workdir;

use std::sync::Arc;
use std::time::Duration;

pub use connection::{CallOutcome, Connector, McpConnection, McpToolSpec};
pub use content::render as render_result;
pub use manager::McpManager;
pub use rmcp_client::{INHERITED_ENV, RmcpConnector};

use crate::config::McpServerConfig;
use crate::tools::ToolRegistry;

/// Errors of the MCP layer. Connection errors end up in the server's source
/// status and the log; call errors become the tool's failure text.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    /// The `[[mcp_servers]]` entry cannot be used.
    #[error("invalid config for MCP server {server:?}: {reason}")]
    InvalidConfig { server: String, reason: String },
    /// The command could not be started.
    #[error("cannot start {command:?}: {source}")]
    Spawn { command: String, source: std::io::Error },
    /// The transport or the MCP handshake failed.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// Connecting and listing the tools took too long.
    #[error("no answer to initialize and tools/list within {0} ms")]
    ConnectTimeout(u128),
    /// The connection ended (the process exited, the session closed).
    #[error("the connection is closed")]
    Closed,
    /// The server answered a request with an error.
    #[error("{0}")]
    Protocol(String),
    /// The server answered in a way chatd does not handle.
    #[error("{0}")]
    Unsupported(String),
    /// [`McpManager::refresh`] of a name that is not configured.
    #[error("no MCP server is named {0:?}")]
    UnknownServer(String),
    /// [`McpManager::refresh`] could not connect; the text says why.
    #[error("{0}")]
    RefreshFailed(String),
    /// The manager was shut down.
    #[error("the MCP manager is shut down")]
    ShutDown,
}

/// Timing of connections and restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct McpOptions {
    /// Longest time for starting or opening a connection, the `initialize`
    /// handshake and `tools/list` together.
    pub connect_timeout: Duration,
    /// Wait before the first retry after a failure or a crash.
    pub backoff_initial: Duration,
    /// Longest wait between retries; a connection that stayed up this long
    /// resets the backoff.
    pub backoff_max: Duration,
    /// How often a connected server is pinged (`None`: never); skipped while
    /// one of its calls runs. A server that does not answer within
    /// `health_timeout`, or whose transport broke, is disconnected and
    /// restarted. This is what notices an HTTP server that went away or
    /// lost the session.
    pub health_interval: Option<Duration>,
    /// Longest wait for the answer to a ping.
    pub health_timeout: Duration,
}

impl Default for McpOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            health_interval: Some(Duration::from_secs(30)),
            health_timeout: Duration::from_secs(10),
        }
    }
}

/// Starts an [`McpManager`] with the default [`McpOptions`] and the `rmcp`
/// connector. Returns at once: servers connect in the background and never
/// block or fail chatd's start. Keep the manager for as long as the tools
/// should live (dropping the last clone stops the servers), and call
/// [`McpManager::shutdown`] when chatd stops.
pub async fn start_mcp(servers: &[McpServerConfig], registry: Arc<ToolRegistry>) -> McpManager {
    McpManager::start(servers, registry, McpOptions::default(), Arc::new(RmcpConnector))
}

/// The longest registered tool name (the OpenAI function-name rule).
const MAX_TOOL_NAME: usize = 64;

/// Checks one `[[mcp_servers]]` entry with [`McpServerConfig::validate`]
/// (the name, exactly one of `command` or an `http(s)://` `url`, and the
/// headers). Errors: [`McpError::InvalidConfig`] with the reason.
pub fn validate_server(server: &McpServerConfig) -> Result<(), McpError> {
    server.validate().map_err(|reason| invalid_config(server, reason))
}

/// [`McpError::InvalidConfig`] for `server`.
fn invalid_config(server: &McpServerConfig, reason: String) -> McpError {
    McpError::InvalidConfig {
        server: server.name.clone(),
        reason,
    }
}

/// The registered name of an MCP tool: `<server>__<tool>`, with characters
/// outside `A-Z a-z 0-9 _ -` replaced by `_`. A name longer than 64 is cut
/// and ends with `_` and 8 hex digits of a hash of the tool's own name, so
/// that it stays unique.
pub fn tool_name(server: &str, tool: &str) -> String {
    let clean: String = tool
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let full = format!("{server}__{clean}");
    if full.len() <= MAX_TOOL_NAME {
        return full;
    }
    // FNV-1a: stable across builds and platforms.
    let hash = tool
        .bytes()
        .fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    format!("{}_{hash:08x}", &full[..MAX_TOOL_NAME - 9])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(name: &str) -> McpServerConfig {
        McpServerConfig {
            name: name.into(),
            command: Some("node".into()),
            args: vec![],
            env: Default::default(),
            url: None,
            headers: Default::default(),
            timeout_ms: None,
        }
    }

    #[test]
    fn tool_names_are_prefixed_cleaned_and_bounded() {
        assert_eq!(tool_name("files", "read_file"), "files__read_file");
        assert_eq!(tool_name("gh", "repo.list/all"), "gh__repo_list_all");
        let long = tool_name("server", &"x".repeat(80));
        assert_eq!(long.len(), 64);
        assert!(long.starts_with("server__xxx"));
        assert_ne!(long, tool_name("server", &"x".repeat(81)), "the hash keeps them apart");
    }

    #[test]
    fn server_configs_are_checked() {
        assert!(validate_server(&server("files")).is_ok());
        assert!(validate_server(&server("")).is_err());
        assert!(validate_server(&server("bad name")).is_err());
        assert!(validate_server(&server(&"n".repeat(33))).is_err());
        let mut both = server("both");
        both.url = Some("http://127.0.0.1:1/mcp".into());
        assert!(validate_server(&both).is_err());
        let mut http = server("http");
        http.command = None;
        http.url = Some("ftp://example.com".into());
        let err = validate_server(&http).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("http://"), "{err}");
        http.url = Some("https://example.com/mcp".into());
        http.headers.insert("Authorization".into(), "Bearer x".into());
        assert!(validate_server(&http).is_ok());
        http.headers.insert("Mcp-Session-Id".into(), "x".into());
        assert!(validate_server(&http).is_err(), "reserved header");
        http.headers.clear();
        http.headers.insert("bad header".into(), "x".into());
        assert!(validate_server(&http).is_err(), "invalid header name");
        let mut neither = server("neither");
        neither.command = None;
        assert!(validate_server(&neither).is_err());
    }
}
