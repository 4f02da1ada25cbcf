//! `read_file`: the text of one file of the project workspace.

use std::io::Read;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::workspace::{self, blocking};
use super::{Tool, ToolContext, ToolError, ToolOutput};

/// Returns a workspace file's text. Refuses directories, files larger than
/// `tools.max_file_bytes`, and files that are not UTF-8 text.
pub struct ReadFile;

impl Tool for ReadFile {
    fn name(&self) -> &str {
        "read_file"
    }

    fn reads_private_data(&self) -> bool {
        true
    }

    fn description(&self) -> &str {
        "Read a text file from this conversation's project workspace. The path is relative to the workspace root."
    }

    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "path": {
                    "type": "string",
                    "description": "File path relative to the workspace root, e.g. \"docs/notes.md\"."
                }
            },
            "required": ["path"],
            "additionalProperties": false
        })
    }

    fn call(&self, ctx: ToolContext, arguments: Value) -> BoxFuture<'static, Result<ToolOutput, ToolError>> {
        let user = arguments
            .get("path")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        async move { blocking(move || read(&ctx, &user)).await.map(ToolOutput::from) }.boxed()
    }
}

/// The file's text. Blocking.
fn read(ctx: &ToolContext, user: &str) -> Result<String, ToolError> {
    let found = workspace::find_workspace(ctx)?;
    let rel = workspace::relative_file_path(user)?;
    let root = found.ok_or_else(|| workspace::PathError::NotFound(user.to_string()))?;
    let path = workspace::resolve_existing(&root, &rel, user)?;
    let failed = |e: std::io::Error| ToolError::Failed(format!("could not read {user:?}: {e}"));
    let meta = std::fs::metadata(&path).map_err(failed)?;
    if meta.is_dir() {
        return Err(ToolError::InvalidArguments(format!(
            "{user:?} is a directory; use list_files to see what it holds"
        )));
    }
    if !meta.is_file() {
        return Err(ToolError::InvalidArguments(format!("{user:?} is not a regular file")));
    }
    let max = ctx.config.max_file_bytes;
    let too_large = |size: u64| {
        ToolError::Failed(format!(
            "{user:?} is {size} bytes, over the {max}-byte limit of read_file; use search_files to find the lines you need"
        ))
    };
    if meta.len() > max {
        return Err(too_large(meta.len()));
    }
    // Read at most one byte past the limit, in case the file grew.
    let mut bytes = Vec::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(max.saturating_add(1)).read_to_end(&mut bytes))
        .map_err(failed)?;
    if bytes.len() as u64 > max {
        return Err(too_large(bytes.len() as u64));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        ToolError::Failed(format!(
            "{user:?} is not UTF-8 text (invalid byte at offset {}); read_file only reads text files",
            e.utf8_error().valid_up_to()
        ))
    })?;
    if text.is_empty() {
        return Ok(format!("({user:?} is empty)"));
    }
    Ok(text)
}
