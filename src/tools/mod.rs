//! Tools the model can call: the [`Tool`] trait, the [`ToolRegistry`] and the
//! [`executor`] that runs a round's calls.
//!
//! Adding a built-in tool is one new file implementing [`Tool`], plus one line
//! in [`ToolRegistry::with_builtins`].

mod calculator;
mod current_time;
pub mod executor;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::Serialize;
use serde_json::Value;

pub use calculator::Calculator;
pub use current_time::CurrentTime;

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

/// A function the model can call.
pub trait Tool: Send + Sync + 'static {
    /// Unique name, `^[a-zA-Z0-9_-]{1,64}$` (the OpenAI function-name rule).
    fn name(&self) -> &str;
    /// One or two sentences telling the model when to use it.
    fn description(&self) -> &str;
    /// JSON Schema of the arguments object.
    fn parameters(&self) -> Value;
    /// Runs the tool with arguments that passed the schema. The future must
    /// not borrow `self` (it runs as its own task); the text is the result
    /// given to the model.
    fn call(&self, arguments: Value) -> BoxFuture<'static, Result<String, ToolError>>;
}

/// A tool and its compiled argument validator.
struct Registered {
    tool: Arc<dyn Tool>,
    parameters: Value,
    validator: jsonschema::Validator,
}

/// What `GET /api/tools` lists for each tool.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ToolInfo {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments.
    pub parameters: Value,
}

/// The set of tools, by name (sorted).
#[derive(Default)]
pub struct ToolRegistry {
    tools: BTreeMap<String, Registered>,
}

impl std::fmt::Debug for ToolRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.tools.keys()).finish()
    }
}

impl ToolRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The built-in tools: `calculator` and `get_current_time`.
    pub fn with_builtins() -> Self {
        let mut registry = Self::new();
        for tool in [Arc::new(Calculator) as Arc<dyn Tool>, Arc::new(CurrentTime)] {
            if let Err(e) = registry.register(tool) {
                // Built-in schemas are constants covered by tests.
                tracing::error!(error = %e, "built-in tool rejected");
            }
        }
        registry
    }

    /// Adds a tool. Fails on a duplicate name or a schema that does not compile.
    pub fn register(&mut self, tool: Arc<dyn Tool>) -> Result<(), RegistryError> {
        let name = tool.name().to_string();
        if self.tools.contains_key(&name) {
            return Err(RegistryError::Duplicate(name));
        }
        let parameters = tool.parameters();
        let validator = jsonschema::validator_for(&parameters).map_err(|e| RegistryError::BadSchema {
            name: name.clone(),
            reason: e.to_string(),
        })?;
        self.tools.insert(
            name,
            Registered {
                tool,
                parameters,
                validator,
            },
        );
        Ok(())
    }

    /// Whether a tool of that name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.tools.contains_key(name)
    }

    /// Every tool's name, description and schema, sorted by name.
    pub fn list(&self) -> Vec<ToolInfo> {
        self.tools
            .iter()
            .map(|(name, r)| ToolInfo {
                name: name.clone(),
                description: r.tool.description().to_string(),
                parameters: r.parameters.clone(),
            })
            .collect()
    }

    /// Names of every tool, sorted.
    pub fn names(&self) -> Vec<String> {
        self.tools.keys().cloned().collect()
    }

    fn get(&self, name: &str) -> Option<&Registered> {
        self.tools.get(name)
    }
}
