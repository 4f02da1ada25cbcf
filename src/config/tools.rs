//! `[tools]`, `[tools.fetch]` and `[[mcp_servers]]`: tool execution and the
//! MCP servers whose tools the model may call.

use reqwest::header::HeaderMap;
use serde::Deserialize;

use super::checks::{header_map, http_url};
use super::{ConfigError, invalid};

/// Tool execution limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ToolsConfig {
    /// Longest run of one tool call in ms before it fails with a timeout.
    pub timeout_ms: u64,
    /// Most tool calls of one round running at once.
    pub concurrency: usize,
    /// Longest tool result in bytes; longer output is cut on a character
    /// boundary and marked as truncated.
    pub max_output_bytes: usize,
    /// Directory holding one workspace per project (`<root>/<project_id>`),
    /// used by the workspace and document-search tools. Created on demand.
    pub workspace_root: std::path::PathBuf,
    /// Per-tool approval policy, overriding each tool's default
    /// (`write_file` and MCP tools ask; the others run automatically).
    pub approval: std::collections::BTreeMap<String, crate::domain::Approval>,
    /// How long in ms a reply waits for an approval before the call counts
    /// as declined.
    pub approval_timeout_ms: u64,
    /// Largest file, in bytes, that `read_file` returns or `write_file`
    /// writes, and that the document index reads.
    pub max_file_bytes: u64,
    /// Most bytes a project workspace may hold; a write that would pass it
    /// is refused. Every regular file counts.
    pub workspace_quota_bytes: u64,
    /// Most bytes all project workspaces together (everything below
    /// `workspace_root`) may hold; a write that would pass it is refused,
    /// whichever project it is for. Without it each new project id would be
    /// a fresh quota. Applies on top of `workspace_quota_bytes`.
    pub workspace_total_quota_bytes: u64,
    /// `fetch_url` limits.
    pub fetch: FetchConfig,
}

/// Limits of the `fetch_url` tool.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FetchConfig {
    /// Longest fetch in ms, redirects included.
    pub timeout_ms: u64,
    /// Most bytes read from a response body; the rest is cut.
    pub max_bytes: u64,
    /// Most redirects followed (each target is checked again).
    pub max_redirects: u32,
    /// Hosts (names or IPs, exact match, case-insensitive) that are
    /// trusted: fetched even when they resolve to a loopback, private,
    /// link-local or metadata address, and fetched without approval after
    /// the reply has read private data (`approve_after_private_read`).
    pub allow_hosts: Vec<String>,
    /// Once the model has seen workspace or document data (a successful
    /// `read_file`, `list_files`, `search_files` or `search_documents` call
    /// earlier in this reply, or any call of them in the conversation's
    /// history), a `fetch_url` to a host not in `allow_hosts` asks for
    /// approval like `write_file` does: a URL is a way to send that data
    /// out. Default true; false lets `fetch_url` run without asking, as
    /// before. An explicit `tools.approval.fetch_url` decides alone:
    /// `"ask"` always asks, `"auto"` never does.
    pub approve_after_private_read: bool,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            timeout_ms: 10_000,
            max_bytes: 2 * 1024 * 1024,
            max_redirects: 5,
            allow_hosts: Vec::new(),
            approve_after_private_read: true,
        }
    }
}

/// One MCP server (a `[[mcp_servers]]` table): either a child process
/// speaking MCP over stdio (`command`, `args`, `env`) or a streamable-HTTP
/// endpoint (`url`, `headers`). Its tools are registered as
/// `<name>__<tool>`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServerConfig {
    /// Unique name, `^[A-Za-z0-9_-]{1,32}$`; prefixes its tools' names.
    pub name: String,
    /// Program to start (stdio transport).
    #[serde(default)]
    pub command: Option<String>,
    /// Arguments of `command` (stdio transport).
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment variables set for `command`, on top of the few it
    /// inherits (stdio transport).
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Endpoint URL (streamable HTTP transport).
    #[serde(default)]
    pub url: Option<String>,
    /// Extra HTTP headers sent with every request to `url` (streamable HTTP
    /// transport), e.g. `Authorization`.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Longest run of one call in ms (default: `tools.timeout_ms`).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

impl Default for ToolsConfig {
    fn default() -> Self {
        Self {
            timeout_ms: 30_000,
            concurrency: 8,
            max_output_bytes: 64 * 1024,
            workspace_root: std::path::PathBuf::from("workspaces"),
            approval: std::collections::BTreeMap::new(),
            approval_timeout_ms: 300_000,
            max_file_bytes: 1024 * 1024,
            workspace_quota_bytes: 100 * 1024 * 1024,
            workspace_total_quota_bytes: 1024 * 1024 * 1024,
            fetch: FetchConfig::default(),
        }
    }
}

impl ToolsConfig {
    /// Checks that `concurrency` and `timeout_ms` are at least 1. Errors:
    /// [`ConfigError::Invalid`].
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.concurrency == 0 {
            return invalid("tools.concurrency must be at least 1");
        }
        if self.timeout_ms == 0 {
            return invalid("timeouts must be at least 1 ms");
        }
        Ok(())
    }
}

/// Headers the MCP transport sets itself.
const MCP_RESERVED_HEADERS: &[&str] = &["accept", "mcp-session-id", "mcp-protocol-version", "last-event-id"];

impl McpServerConfig {
    /// Checks one `[[mcp_servers]]` entry: a name of 1 to 32 characters out
    /// of `A-Z a-z 0-9 _ -`, and exactly one of a non-blank `command` or an
    /// `http(s)://` `url`; `args`/`env` only with `command`, `headers` only
    /// with `url`, each a valid HTTP header that the transport does not set
    /// itself ([`Self::header_map`]). Errors: the reason as text.
    ///
    /// Not part of [`super::Config::validate`]: a bad entry does not stop
    /// chatd; the MCP layer reports that server as unavailable instead.
    pub fn validate(&self) -> Result<(), String> {
        let bad = |reason: &str| Err(reason.to_string());
        let name_ok = (1..=32).contains(&self.name.len())
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !name_ok {
            return bad("the name must be 1 to 32 characters out of A-Z, a-z, 0-9, _ and -");
        }
        match (&self.command, &self.url) {
            (Some(_), Some(_)) => bad("set either command (stdio) or url (HTTP), not both"),
            (None, None) => bad("set command (stdio) or url (HTTP)"),
            (Some(command), None) if command.trim().is_empty() => bad("command must not be blank"),
            (Some(_), None) if !self.headers.is_empty() => bad("headers apply to url servers only"),
            (None, Some(url)) => {
                http_url("url", url)?;
                if !self.args.is_empty() || !self.env.is_empty() {
                    return bad("args and env apply to command servers only");
                }
                self.header_map().map(drop)
            }
            _ => Ok(()),
        }
    }

    /// The `headers` as sent to `url`. Errors: a name or value that is not
    /// valid HTTP, or a header the transport sets itself (`Accept`,
    /// `Mcp-Session-Id`, `Mcp-Protocol-Version`, `Last-Event-ID`).
    pub fn header_map(&self) -> Result<HeaderMap, String> {
        header_map(&self.headers, MCP_RESERVED_HEADERS, "the MCP transport")
    }
}
