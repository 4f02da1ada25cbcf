//! `search_files`: lines of workspace files that contain a text.

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::text::first_chars;
use super::workspace::{self, EntryKind, blocking};
use super::{Tool, ToolContext, ToolError, ToolOutput};

/// Finds the lines containing a plain substring (case-insensitive) in the
/// text files below a path (default the whole workspace). Each match is one
/// line, `path:line: text` (1-based line numbers, text cut at
/// [`MAX_LINE_CHARS`] characters). Stops at [`MAX_MATCHES`]. Files larger
/// than `tools.max_file_bytes` or not UTF-8 are skipped (and counted).
pub struct SearchFiles;

/// Most matching lines returned.
pub const MAX_MATCHES: usize = 200;
/// Longest matching line shown, in characters.
pub const MAX_LINE_CHARS: usize = 300;

impl Tool for SearchFiles {
    fn name(&self) -> &str {
        "search_files"
    }

    fn reads_private_data(&self) -> bool {
        true
    }

    fn description(&self) -> &str {
        "Find the lines containing a text (plain substring, case-insensitive) in the files of this \
         conversation's project workspace. Returns \"path:line: text\" lines."
    }

    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "pattern": {
                    "type": "string",
                    "minLength": 1,
                    "description": "The text to look for (not a regular expression); case is ignored."
                },
                "path": {
                    "type": "string",
                    "description": "File or directory to search, relative to the workspace root. Default \".\"."
                }
            },
            "required": ["pattern"],
            "additionalProperties": false
        })
    }

    fn call(&self, ctx: ToolContext, arguments: Value) -> BoxFuture<'static, Result<ToolOutput, ToolError>> {
        let pattern = arguments
            .get("pattern")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let user = arguments.get("path").and_then(Value::as_str).unwrap_or(".").to_string();
        async move {
            blocking(move || search(&ctx, &pattern, &user))
                .await
                .map(ToolOutput::from)
        }
        .boxed()
    }
}

/// The matches text. Blocking.
fn search(ctx: &ToolContext, pattern: &str, user: &str) -> Result<String, ToolError> {
    let found = workspace::find_workspace(ctx)?;
    if pattern.is_empty() {
        return Err(ToolError::InvalidArguments(
            "the pattern is empty; give the text to look for".into(),
        ));
    }
    let rel = workspace::relative_path(user)?;
    let Some(root) = found else {
        // Nothing was ever written: an empty workspace, not created by a read.
        if rel.as_os_str().is_empty() {
            return Ok(format!("No lines contain {pattern:?} in {user:?}."));
        }
        return Err(workspace::PathError::NotFound(user.to_string()).into());
    };
    let target = workspace::resolve_existing(&root, &rel, user)?;
    let files: Vec<(String, std::path::PathBuf)> = if target.is_dir() {
        let (entries, _) = workspace::walk(&root, &target, true, usize::MAX)?;
        entries
            .into_iter()
            .filter(|e| e.kind == EntryKind::File)
            .map(|e| (e.path, e.full))
            .collect()
    } else {
        let shown = workspace::display_path(&root, &target).unwrap_or_else(|| user.to_string());
        vec![(shown, target)]
    };

    let needle = pattern.to_lowercase();
    let max = ctx.config.max_file_bytes;
    let mut matches = Vec::new();
    let mut skipped = 0usize;
    let mut stopped = false;
    'files: for (shown, full) in files {
        let text = match std::fs::metadata(&full) {
            Ok(meta) if meta.len() <= max => std::fs::read(&full).ok().and_then(|b| String::from_utf8(b).ok()),
            _ => None,
        };
        let Some(text) = text else {
            skipped += 1;
            continue;
        };
        for (i, line) in text.lines().enumerate() {
            if line.to_lowercase().contains(&needle) {
                if matches.len() == MAX_MATCHES {
                    stopped = true;
                    break 'files;
                }
                matches.push(format!("{shown}:{}: {}", i + 1, clip(line)));
            }
        }
    }

    let mut out = if matches.is_empty() {
        format!("No lines contain {pattern:?} in {user:?}.")
    } else {
        matches.join("\n")
    };
    if stopped {
        out.push_str(&format!(
            "\n[stopped at {MAX_MATCHES} matches; use a longer pattern or a narrower path]"
        ));
    }
    if skipped > 0 {
        out.push_str(&format!(
            "\n[skipped {skipped} file(s) larger than {max} bytes or not UTF-8 text]"
        ));
    }
    Ok(out)
}

/// `line` cut to [`MAX_LINE_CHARS`] characters, marked with `…` when cut.
fn clip(line: &str) -> String {
    first_chars(line, MAX_LINE_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_cuts_on_characters() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(MAX_LINE_CHARS + 5);
        assert_eq!(clip(&long), format!("{}…", "é".repeat(MAX_LINE_CHARS)));
    }
}
