//! `list_files`: the files and directories of the project workspace.

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::workspace::{self, EntryKind, blocking};
use super::{Tool, ToolContext, ToolError, ToolOutput};

/// Lists a directory of the workspace (default its root), optionally the
/// whole tree below it: one line per entry, `path (file, N bytes)`,
/// `path/ (dir)` or `path (symlink)`, paths relative to the workspace root,
/// sorted. Symbolic links are shown, not followed. At most
/// [`MAX_ENTRIES`] lines.
pub struct ListFiles;

/// Most entries listed; the listing says when it stopped there.
pub const MAX_ENTRIES: usize = 1000;

impl Tool for ListFiles {
    fn name(&self) -> &str {
        "list_files"
    }

    fn reads_private_data(&self) -> bool {
        true
    }

    fn description(&self) -> &str {
        "List the files and directories in this conversation's project workspace, with sizes in bytes. \
         Paths are relative to the workspace root."
    }

    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "path": {
                    "type": "string",
                    "description": "Directory to list, relative to the workspace root. Default \".\" (the root)."
                },
                "recursive": {
                    "type": "boolean",
                    "description": "List everything below the directory too. Default false."
                }
            },
            "additionalProperties": false
        })
    }

    fn call(&self, ctx: ToolContext, arguments: Value) -> BoxFuture<'static, Result<ToolOutput, ToolError>> {
        let user = arguments.get("path").and_then(Value::as_str).unwrap_or(".").to_string();
        let recursive = arguments.get("recursive").and_then(Value::as_bool).unwrap_or(false);
        async move {
            blocking(move || list(&ctx, &user, recursive))
                .await
                .map(ToolOutput::from)
        }
        .boxed()
    }
}

/// The listing text. Blocking.
fn list(ctx: &ToolContext, user: &str, recursive: bool) -> Result<String, ToolError> {
    let found = workspace::find_workspace(ctx)?;
    let rel = workspace::relative_path(user)?;
    let Some(root) = found else {
        // Nothing was ever written: an empty workspace, not created by a read.
        if rel.as_os_str().is_empty() {
            return Ok(format!("The directory {user:?} is empty."));
        }
        return Err(workspace::PathError::NotFound(user.to_string()).into());
    };
    let dir = workspace::resolve_existing(&root, &rel, user)?;
    if !dir.is_dir() {
        return Err(ToolError::InvalidArguments(format!(
            "{user:?} is a file, not a directory; use read_file to read it"
        )));
    }
    let (entries, cut) = workspace::walk(&root, &dir, recursive, MAX_ENTRIES)?;
    if entries.is_empty() {
        return Ok(format!("The directory {user:?} is empty."));
    }
    let mut lines: Vec<String> = entries
        .iter()
        .map(|e| match e.kind {
            EntryKind::File => format!("{} (file, {} bytes)", e.path, e.size),
            EntryKind::Dir => format!("{}/ (dir)", e.path),
            EntryKind::Symlink => format!("{} (symlink)", e.path),
            EntryKind::Other => format!("{} (other)", e.path),
        })
        .collect();
    if cut {
        lines.push(format!(
            "[listing stopped after {MAX_ENTRIES} entries; list a subdirectory instead]"
        ));
    }
    Ok(lines.join("\n"))
}
