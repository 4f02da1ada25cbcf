//! Tools the model can call: the [`Tool`] trait, the [`ToolRegistry`] and the
//! [`executor`] that runs a round's calls.
//!
//! Adding a built-in tool is one new file implementing [`Tool`], plus one line
//! in [`ToolRegistry::with_builtins`].

mod calculator;
mod current_time;
pub mod documents;
pub mod executor;
mod fetch_url;
pub mod list_files;
pub mod mcp;
pub mod quota;
pub mod read_file;
pub mod search_documents;
pub mod search_files;
mod text;
pub mod workspace;
pub mod write_file;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::Serialize;
use serde_json::Value;

pub use calculator::Calculator;
pub use current_time::CurrentTime;
pub use fetch_url::FetchUrl;

pub use crate::domain::{Approval, Source};

/// Why a tool call failed. The text is shown to the model as the tool result,
/// so it says what to do differently.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ToolError {
    /// The arguments were understood but unusable (e.g. an unknown timezone).
    #[error("invalid arguments: {0}")]
    InvalidArguments(String),
    /// The tool ran and failed.
    #[error("{0}")]
    Failed(String),
}

/// Errors when building a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("tool {0:?} is registered twice")]
    Duplicate(String),
    #[error("tool {name:?} has an invalid JSON Schema: {reason}")]
    BadSchema { name: String, reason: String },
}

/// What a call knows about the reply it runs in.
#[derive(Debug, Clone)]
pub struct ToolContext {
    pub conversation_id: uuid::Uuid,
    /// The assistant message (reply) the call belongs to.
    pub message_id: uuid::Uuid,
    /// The conversation's project, if it has one.
    pub project_id: Option<String>,
    /// `tools.workspace_root/<project_id>` when the conversation has a
    /// project; `None` otherwise (workspace tools then refuse to run).
    pub workspace: Option<std::path::PathBuf>,
    /// The `[tools]` settings (limits, fetch policy).
    pub config: Arc<crate::config::ToolsConfig>,
    /// The document index, for tools that keep one (`None` in unit tests).
    pub store: Option<Arc<dyn crate::store::Documents>>,
}

impl ToolContext {
    /// A context outside any reply, with default settings and no store
    /// (unit tests, tools used directly).
    pub fn detached() -> Self {
        Self {
            conversation_id: uuid::Uuid::nil(),
            message_id: uuid::Uuid::nil(),
            project_id: None,
            workspace: None,
            config: Arc::new(crate::config::ToolsConfig::default()),
            store: None,
        }
    }
}

/// A tool's result: the text for the model, plus any sources it cites.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ToolOutput {
    pub content: String,
    pub sources: Vec<Source>,
}

impl From<String> for ToolOutput {
    fn from(content: String) -> Self {
        Self {
            content,
            sources: Vec::new(),
        }
    }
}

impl From<&str> for ToolOutput {
    fn from(content: &str) -> Self {
        content.to_string().into()
    }
}

/// A function the model can call.
pub trait Tool: Send + Sync + 'static {
    /// Unique name, `^[a-zA-Z0-9_-]{1,64}$` (the OpenAI function-name rule).
    fn name(&self) -> &str;
    /// One or two sentences telling the model when to use it.
    fn description(&self) -> &str;
    /// JSON Schema of the arguments object.
    fn parameters(&self) -> Value;
    /// Where the tool comes from, shown by `GET /api/tools`: `"builtin"`, or
    /// `"mcp:<server>"`.
    fn origin(&self) -> String {
        "builtin".to_string()
    }
    /// The approval policy when `tools.approval` does not name the tool:
    /// [`Approval::Ask`] for tools with side effects.
    fn default_approval(&self) -> Approval {
        Approval::Auto
    }
    /// Longest run of one call; `None` uses `tools.timeout_ms`.
    fn timeout(&self) -> Option<std::time::Duration> {
        None
    }
    /// Whether the tool's results hold the user's private data (workspace
    /// files, indexed documents): true for `read_file`, `list_files`,
    /// `search_files` and `search_documents`. Once the model has seen such a
    /// result, calls for which [`Tool::asks_after_private_read`] gives a
    /// reason wait for approval.
    fn reads_private_data(&self) -> bool {
        false
    }
    /// Why this call (its `arguments`, schema not yet checked) must wait for
    /// approval once the model has seen private data, because it could carry
    /// that data out; `None` when it need not (the default). `fetch_url`
    /// gives a reason for a host not in `tools.fetch.allow_hosts` while
    /// `tools.fetch.approve_after_private_read` is on.
    fn asks_after_private_read(&self, _arguments: &Value, _config: &crate::config::ToolsConfig) -> Option<String> {
        None
    }
    /// Runs the tool with arguments that passed the schema. The future must
    /// not borrow `self` (it runs as its own task, and is dropped when the
    /// reply is cancelled or the call times out).
    fn call(&self, ctx: ToolContext, arguments: Value) -> BoxFuture<'static, Result<ToolOutput, ToolError>>;
}

/// The workspace tools, for registration next to the built-ins: `list_files`,
/// `read_file`, `write_file` (asks for approval by default), `search_files`
/// and `search_documents`. They work in the conversation's project workspace
/// ([`ToolContext::workspace`]) and refuse to run without one.
pub fn workspace_tools() -> Vec<Arc<dyn Tool>> {
    vec![
        Arc::new(list_files::ListFiles),
        Arc::new(read_file::ReadFile),
        Arc::new(write_file::WriteFile),
        Arc::new(search_files::SearchFiles),
        Arc::new(search_documents::SearchDocuments),
    ]
}

/// A tool and its compiled argument validator.
struct Registered {
    tool: Arc<dyn Tool>,
    parameters: Value,
    validator: jsonschema::Validator,
}

/// What `GET /api/tools` lists for each tool.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct ToolInfo {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments.
    #[schema(value_type = Object)]
    pub parameters: Value,
    /// `"builtin"` or `"mcp:<server>"`.
    pub origin: String,
    /// `auto` or `ask`, after `tools.approval` overrides.
    pub approval: Approval,
}

/// The state of a source of tools that can fail (an MCP server), shown by
/// `GET /api/tools`.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct SourceStatus {
    pub name: String,
    /// `"connected"`, `"connecting"` or `"unavailable"`.
    pub status: String,
    /// The last error, if any.
    pub error: Option<String>,
    /// The tools it provides (registered names).
    pub tools: Vec<String>,
}

/// The set of tools, by name (sorted). Tools can be added and removed while
/// chatd runs (MCP servers that connect late or change their tools).
#[derive(Default)]
pub struct ToolRegistry {
    tools: std::sync::RwLock<BTreeMap<String, Arc<Registered>>>,
    approval: BTreeMap<String, Approval>,
    sources: std::sync::RwLock<BTreeMap<String, SourceStatus>>,
}

impl std::fmt::Debug for ToolRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl ToolRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The two simplest built-ins, `calculator` and `get_current_time` (the
    /// test suite's baseline; [`ToolRegistry::standard`] has them all).
    pub fn with_builtins() -> Self {
        let registry = Self::new();
        for tool in [Arc::new(Calculator) as Arc<dyn Tool>, Arc::new(CurrentTime)] {
            if let Err(e) = registry.register(tool) {
                // Built-in schemas are constants covered by tests.
                tracing::error!(error = %e, "built-in tool rejected");
            }
        }
        registry
    }

    /// Every built-in tool chatd serves: `calculator`, `get_current_time`,
    /// `fetch_url`, and the workspace tools (`list_files`, `read_file`,
    /// `write_file`, `search_files`, `search_documents`).
    pub fn standard() -> Self {
        let registry = Self::with_builtins();
        let mut extra: Vec<Arc<dyn Tool>> = vec![Arc::new(FetchUrl)];
        extra.extend(workspace_tools());
        for tool in extra {
            if let Err(e) = registry.register(tool) {
                tracing::error!(error = %e, "built-in tool rejected");
            }
        }
        registry
    }

    /// Sets per-tool approval overrides (`tools.approval` in the config).
    pub fn with_approval(mut self, approval: BTreeMap<String, Approval>) -> Self {
        self.approval = approval;
        self
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Registered>>> {
        self.tools.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Registered>>> {
        self.tools.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a tool. Fails on a duplicate name or a schema that does not compile.
    pub fn register(&self, tool: Arc<dyn Tool>) -> Result<(), RegistryError> {
        let name = tool.name().to_string();
        let parameters = tool.parameters();
        let validator = jsonschema::validator_for(&parameters).map_err(|e| RegistryError::BadSchema {
            name: name.clone(),
            reason: e.to_string(),
        })?;
        let mut tools = self.write();
        if tools.contains_key(&name) {
            return Err(RegistryError::Duplicate(name));
        }
        tools.insert(
            name,
            Arc::new(Registered {
                tool,
                parameters,
                validator,
            }),
        );
        Ok(())
    }

    /// Removes a tool; returns whether it existed.
    pub fn unregister(&self, name: &str) -> bool {
        self.write().remove(name).is_some()
    }

    /// Whether a tool of that name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.read().contains_key(name)
    }

    /// The approval policy of a tool: the `tools.approval` override, else the
    /// tool's default. Unknown tools are [`Approval::Auto`] (they fail anyway).
    pub fn approval(&self, name: &str) -> Approval {
        if let Some(a) = self.approval.get(name) {
            return *a;
        }
        self.read()
            .get(name)
            .map_or(Approval::Auto, |r| r.tool.default_approval())
    }

    /// Whether the results of tool `name` hold private data
    /// ([`Tool::reads_private_data`]); false for unknown tools.
    pub fn reads_private_data(&self, name: &str) -> bool {
        self.read().get(name).is_some_and(|r| r.tool.reads_private_data())
    }

    /// Why the call `name(arguments)` (`arguments` as JSON text) must wait
    /// for approval when the model has seen private data
    /// ([`Tool::asks_after_private_read`]); `None` when it need not, when
    /// `arguments` is not JSON (the call fails anyway), for unknown tools,
    /// and for a tool named in `tools.approval`: an explicit policy decides
    /// alone (`ask` always asks, `auto` never does).
    pub fn asks_after_private_read(
        &self,
        name: &str,
        arguments: &str,
        config: &crate::config::ToolsConfig,
    ) -> Option<String> {
        if self.approval.contains_key(name) {
            return None;
        }
        let tool = self.read().get(name).map(|r| r.tool.clone())?;
        let arguments: Value = serde_json::from_str(arguments).ok()?;
        tool.asks_after_private_read(&arguments, config)
    }

    /// Every tool's name, description, schema, origin and approval, sorted
    /// by name.
    pub fn list(&self) -> Vec<ToolInfo> {
        self.list_where(|_| true)
    }

    /// [`ToolRegistry::list`] limited to the tools named in `names` (unknown
    /// names are skipped), in the same order. Only those tools' schemas are
    /// cloned, and no names means no allocation: every reply asks for its
    /// tools, most for none or a few.
    pub fn list_only(&self, names: &[String]) -> Vec<ToolInfo> {
        if names.is_empty() {
            return Vec::new();
        }
        self.list_where(|name| names.iter().any(|n| n == name))
    }

    fn list_where(&self, keep: impl Fn(&str) -> bool) -> Vec<ToolInfo> {
        let tools: Vec<(String, Arc<Registered>)> = self
            .read()
            .iter()
            .filter(|(k, _)| keep(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        tools
            .into_iter()
            .map(|(name, r)| ToolInfo {
                approval: self.approval(&name),
                description: r.tool.description().to_string(),
                parameters: r.parameters.clone(),
                origin: r.tool.origin(),
                name,
            })
            .collect()
    }

    /// Names of every tool, sorted.
    pub fn names(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    /// Records the state of a tool source (an MCP server).
    pub fn set_source_status(&self, status: SourceStatus) {
        let mut sources = self.sources.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        sources.insert(status.name.clone(), status);
    }

    /// The state of every tool source, by name.
    pub fn source_statuses(&self) -> Vec<SourceStatus> {
        let sources = self.sources.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        sources.values().cloned().collect()
    }

    fn get(&self, name: &str) -> Option<Arc<Registered>> {
        self.read().get(name).cloned()
    }
}

#[cfg(test)]
mod registry_tests {
    use super::*;

    #[test]
    fn the_standard_set_has_every_builtin_with_its_approval() {
        let registry = ToolRegistry::standard();
        assert_eq!(
            registry.names(),
            [
                "calculator",
                "fetch_url",
                "get_current_time",
                "list_files",
                "read_file",
                "search_documents",
                "search_files",
                "write_file"
            ]
        );
        assert_eq!(registry.approval("write_file"), Approval::Ask);
        assert_eq!(registry.approval("read_file"), Approval::Auto);
        let registry = registry.with_approval(BTreeMap::from([("write_file".to_string(), Approval::Auto)]));
        assert_eq!(registry.approval("write_file"), Approval::Auto);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_only_keeps_the_named_tools_in_name_order() {
        let registry = ToolRegistry::with_builtins();
        assert_eq!(registry.list_only(&[]), Vec::new());
        let asked = [
            "get_current_time".to_string(),
            "nope".to_string(),
            "calculator".to_string(),
        ];
        let names: Vec<String> = registry.list_only(&asked).into_iter().map(|t| t.name).collect();
        assert_eq!(names, ["calculator", "get_current_time"]);
        let calculator: Vec<ToolInfo> = registry.list().into_iter().filter(|t| t.name == "calculator").collect();
        assert_eq!(registry.list_only(&["calculator".to_string()]), calculator);
    }
}
