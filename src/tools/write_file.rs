//! `write_file`: creates or replaces a text file in the project workspace.

use std::io::Write;
use std::path::Path;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::workspace::{self, blocking};
use super::{Approval, Tool, ToolContext, ToolError, ToolOutput};
use super::{documents, quota};
use crate::store::FileStamp;

/// Writes a file atomically (a temporary file in the same directory, then a
/// rename), creating missing parent directories, and updates the document
/// index. Refuses content over `tools.max_file_bytes`, writes that would
/// bring the project workspace past `tools.workspace_quota_bytes` or all
/// workspaces together past `tools.workspace_total_quota_bytes` (see
/// [`quota`]), and paths with chatd's internal names. Asks for approval by
/// default.
pub struct WriteFile;

impl Tool for WriteFile {
    fn name(&self) -> &str {
        "write_file"
    }

    fn description(&self) -> &str {
        "Create or overwrite a text file in this conversation's project workspace (parent directories are \
         created). The path is relative to the workspace root. The user may be asked to approve the write."
    }

    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "path": {
                    "type": "string",
                    "description": "File path relative to the workspace root, e.g. \"docs/notes.md\"."
                },
                "content": {
                    "type": "string",
                    "description": "The whole new content of the file (UTF-8 text)."
                }
            },
            "required": ["path", "content"],
            "additionalProperties": false
        })
    }

    fn default_approval(&self) -> Approval {
        Approval::Ask
    }

    fn call(&self, ctx: ToolContext, arguments: Value) -> BoxFuture<'static, Result<ToolOutput, ToolError>> {
        let user = arguments
            .get("path")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let content = arguments
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        async move {
            let (store, project) = (ctx.store.clone(), ctx.project_id.clone());
            let (written, content) = blocking(move || write(&ctx, &user, content)).await?;
            let size = content.len();
            let what = match written.previous {
                None => "new file".to_string(),
                Some(old) => format!("replaced {old} bytes"),
            };
            let mut text = format!("Wrote {size} bytes to {} ({what}).", written.path);
            if let (Some(store), Some(project)) = (store, project) {
                let indexed =
                    documents::index_text(store.as_ref(), &project, &written.path, &content, written.stamp).await;
                if let Err(e) = indexed {
                    tracing::warn!(error = %e, path = %written.path, "document index not updated after a write");
                    text.push_str(
                        " The search index could not be updated; search_documents will pick the file up later.",
                    );
                }
            }
            Ok(ToolOutput::from(text))
        }
        .boxed()
    }
}

/// What a write did.
struct Written {
    /// The file's path relative to the workspace root (after following a
    /// symbolic link inside the workspace).
    path: String,
    /// Size of the file it replaced, if any.
    previous: Option<u64>,
    /// The new file's version, for the index.
    stamp: FileStamp,
}

/// Checks and writes; returns the content back for indexing. Blocking.
fn write(ctx: &ToolContext, user: &str, content: String) -> Result<(Written, String), ToolError> {
    // Lexical checks first: a refused path creates no workspace directory.
    let rel = workspace::relative_file_path(user)?;
    let _quota_lock = quota::write_lock();
    let root = workspace::open_workspace(ctx)?;
    let len = content.len() as u64;
    let max = ctx.config.max_file_bytes;
    if len > max {
        return Err(ToolError::Failed(format!(
            "the content is {len} bytes, over the {max}-byte limit for one file; split it into smaller files"
        )));
    }
    let target = workspace::resolve_for_write(&root, &rel, user)?;
    let shown = workspace::display_path(&root, &target)
        .ok_or_else(|| ToolError::InvalidArguments(format!("{user:?} is not a valid file name; use UTF-8 names")))?;
    let previous = match std::fs::symlink_metadata(&target) {
        Ok(meta) if meta.is_file() => Some(meta),
        Ok(meta) if meta.is_dir() => {
            return Err(ToolError::InvalidArguments(format!(
                "{user:?} is a directory; give the path of a file inside it"
            )));
        }
        Ok(_) => return Err(ToolError::InvalidArguments(format!("{user:?} is not a regular file"))),
        Err(_) => None,
    };
    let old_size = previous.as_ref().map_or(0, std::fs::Metadata::len);
    // The workspace root is the parent of every project's workspace.
    let all = root.parent().unwrap_or(&root);
    let limits = &ctx.config;
    quota::check(
        all,
        &root,
        user,
        len,
        old_size,
        limits.workspace_quota_bytes,
        limits.workspace_total_quota_bytes,
    )?;

    let failed = |e: std::io::Error| ToolError::Failed(format!("could not write {user:?}: {e}"));
    let parent = target.parent().unwrap_or(&root);
    std::fs::create_dir_all(parent).map_err(failed)?;
    let temp = parent.join(format!("{}{}", workspace::TEMP_PREFIX, uuid::Uuid::new_v4().simple()));
    let result =
        write_temp(&temp, content.as_bytes(), previous.as_ref()).and_then(|()| std::fs::rename(&temp, &target));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&temp);
        return Err(failed(e));
    }
    let meta = std::fs::metadata(&target).map_err(failed)?;
    Ok((
        Written {
            path: shown,
            previous: previous.map(|m| m.len()),
            stamp: documents::stamp_of(&meta),
        },
        content,
    ))
}

/// Creates `temp` (it must not exist), writes `bytes`, keeps the permissions
/// of the file it will replace, and syncs it to disk.
fn write_temp(temp: &Path, bytes: &[u8], replaces: Option<&std::fs::Metadata>) -> std::io::Result<()> {
    let mut file = std::fs::File::create_new(temp)?;
    file.write_all(bytes)?;
    if let Some(meta) = replaces {
        file.set_permissions(meta.permissions())?;
    }
    file.sync_all()
}
