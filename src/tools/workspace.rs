//! The path jail of the workspace tools, and the directory walk they share.
//!
//! A conversation with a project works in `tools.workspace_root/<project_id>`
//! ([`ToolContext::workspace`]). Every path the model gives is relative to
//! that directory and is checked twice:
//!
//! 1. lexically ([`relative_path`]): no NUL, not absolute, no `..`, no
//!    component that starts with chatd's internal [`TEMP_PREFIX`];
//! 2. on disk ([`resolve_existing`], [`resolve_for_write`]): the path is
//!    canonicalized (following every symbolic link, the last component
//!    included) and must still lie inside the canonical workspace. For a file
//!    that does not exist yet, its deepest existing ancestor is checked.
//!
//! Only `write_file` creates the workspace directory ([`open_workspace`]);
//! the read-only tools look for it ([`find_workspace`]) and treat a missing
//! one as empty.
//!
//! The checks and the walk use blocking `std::fs` calls; the tools run them
//! through [`blocking`] (`spawn_blocking`) so the async runtime never waits
//! on the disk. A symbolic link swapped in between the check and the use
//! (a race with another process writing the workspace) is not defended
//! against.

use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use super::{ToolContext, ToolError};

/// Why a path was refused or could not be used. The texts tell the model what
/// to do instead. As a [`ToolError`], refusals of the path itself are
/// `InvalidArguments`; the rest (no project, not found, I/O) are `Failed`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The conversation has no project, so there is no workspace.
    #[error(
        "this conversation has no project, so there is no workspace to read or write. \
         Answer without the workspace tools, or ask the user to start a conversation with a project."
    )]
    NoProject,
    /// The path is empty (or only `.`) where a file is needed.
    #[error("the path is empty; give a file path relative to the workspace root, e.g. \"notes.md\"")]
    Empty,
    /// The path contains a NUL character.
    #[error("the path {0:?} contains a NUL character; give a plain path relative to the workspace root")]
    Nul(String),
    /// The path is absolute.
    #[error("the path {0:?} is absolute; give a path relative to the workspace root, e.g. \"docs/notes.md\"")]
    Absolute(String),
    /// The path contains a `..` component.
    #[error(
        "the path {0:?} contains \"..\"; paths must stay inside the workspace, so give one relative to the workspace root without \"..\""
    )]
    ParentDir(String),
    /// A component of the path starts with [`TEMP_PREFIX`], which chatd keeps
    /// for its own temporary files (hidden from listings and not indexed).
    #[error(
        "the path {0:?} has a name starting with \".chatd-tmp-\", which chatd keeps for its own temporary files; \
         choose another name"
    )]
    Reserved(String),
    /// Following a symbolic link on the path leads outside the workspace.
    #[error(
        "the path {0:?} leads outside the workspace through a symbolic link; only files inside the workspace can be used"
    )]
    Escapes(String),
    /// A symbolic link on the path points to nothing.
    #[error("the path {0:?} goes through a broken symbolic link")]
    BrokenLink(String),
    /// Nothing exists at the path.
    #[error("{0:?} does not exist in the workspace; use list_files to see what is there")]
    NotFound(String),
    /// A component before the last one is a file.
    #[error("{0:?} goes through a file as if it were a directory; use list_files to see what is there")]
    NotADirectory(String),
    /// Another I/O failure.
    #[error("could not access {path:?}: {reason}")]
    Io {
        /// The path as the model gave it.
        path: String,
        /// The operating system's error text.
        reason: String,
    },
}

impl From<PathError> for ToolError {
    fn from(e: PathError) -> Self {
        match e {
            PathError::Empty
            | PathError::Nul(_)
            | PathError::Absolute(_)
            | PathError::ParentDir(_)
            | PathError::Reserved(_)
            | PathError::Escapes(_)
            | PathError::BrokenLink(_) => ToolError::InvalidArguments(e.to_string()),
            PathError::NoProject | PathError::NotFound(_) | PathError::NotADirectory(_) | PathError::Io { .. } => {
                ToolError::Failed(e.to_string())
            }
        }
    }
}

/// Prefix of the temporary files `write_file` renames into place; such files
/// are hidden from listings, searches and the document index.
pub const TEMP_PREFIX: &str = ".chatd-tmp-";

/// Whether `name` is one of `write_file`'s temporary files.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX)
}

/// The canonical workspace directory of the conversation's project, created
/// if missing. Errors: [`PathError::NoProject`] without a project, `Io` when
/// the directory cannot be created. Blocking.
pub fn open_workspace(ctx: &ToolContext) -> Result<PathBuf, PathError> {
    let dir = ctx.workspace.as_deref().ok_or(PathError::NoProject)?;
    let io = |e: io::Error| PathError::Io {
        path: "the workspace".into(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    dir.canonicalize().map_err(io)
}

/// The canonical workspace directory of the conversation's project, or
/// `None` when it does not exist yet (nothing was ever written there); never
/// creates it. Errors: [`PathError::NoProject`] without a project, `Io` when
/// it cannot be resolved. Blocking.
pub fn find_workspace(ctx: &ToolContext) -> Result<Option<PathBuf>, PathError> {
    let dir = ctx.workspace.as_deref().ok_or(PathError::NoProject)?;
    match dir.canonicalize() {
        Ok(canon) => Ok(Some(canon)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(PathError::Io {
            path: "the workspace".into(),
            reason: e.to_string(),
        }),
    }
}

/// Checks a user path lexically and returns it relative, without `.`
/// components (empty for the workspace root). Refuses NUL characters,
/// absolute paths, `..` components and names starting with [`TEMP_PREFIX`]
/// ([`PathError::Reserved`]).
pub fn relative_path(user: &str) -> Result<PathBuf, PathError> {
    if user.contains('\0') {
        return Err(PathError::Nul(user.to_string()));
    }
    let mut out = PathBuf::new();
    for component in Path::new(user).components() {
        match component {
            Component::Prefix(_) | Component::RootDir => return Err(PathError::Absolute(user.to_string())),
            Component::ParentDir => return Err(PathError::ParentDir(user.to_string())),
            Component::CurDir => {}
            Component::Normal(part) if is_temp_name(&part.to_string_lossy()) => {
                return Err(PathError::Reserved(user.to_string()));
            }
            Component::Normal(part) => out.push(part),
        }
    }
    Ok(out)
}

/// [`relative_path`] for a path that must name something below the root
/// (a file): an empty path is [`PathError::Empty`].
pub fn relative_file_path(user: &str) -> Result<PathBuf, PathError> {
    let rel = relative_path(user)?;
    if rel.as_os_str().is_empty() {
        return Err(PathError::Empty);
    }
    Ok(rel)
}

/// Resolves `user` (already checked by [`relative_path`] into `rel`) to the
/// canonical path of an existing file or directory inside `root` (the
/// canonical workspace). Symbolic links anywhere on the path are followed
/// and must stay inside. Blocking.
pub fn resolve_existing(root: &Path, rel: &Path, user: &str) -> Result<PathBuf, PathError> {
    let full = root.join(rel);
    match full.canonicalize() {
        Ok(canon) => inside(root, canon, user),
        Err(e) => Err(not_resolved(root, rel, user, &e)),
    }
}

/// Resolves the target of a write to `rel` (checked by
/// [`relative_file_path`]): the canonical path of the file if it exists
/// (following a symbolic link at the end, which must stay inside), or the
/// canonical path of its deepest existing ancestor joined with the missing
/// components (which `write_file` then creates). Blocking.
pub fn resolve_for_write(root: &Path, rel: &Path, user: &str) -> Result<PathBuf, PathError> {
    let full = root.join(rel);
    match std::fs::symlink_metadata(&full) {
        Ok(_) => return resolve_existing(root, rel, user),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(not_resolved(root, rel, user, &e)),
    }
    // Walk up to the deepest ancestor that exists; `root` exists, and `rel`
    // has no `..`, so this ends at the latest at `root`.
    let mut missing = Vec::new();
    let mut existing = full.as_path();
    loop {
        let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) else {
            return Err(PathError::Escapes(user.to_string()));
        };
        missing.push(name.to_os_string());
        existing = parent;
        match std::fs::symlink_metadata(existing) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(not_resolved(root, rel, user, &e)),
        }
    }
    let rel_existing = existing.strip_prefix(root).unwrap_or(Path::new(""));
    let mut target = resolve_existing(root, rel_existing, user)?;
    if !target.is_dir() {
        return Err(PathError::NotADirectory(user.to_string()));
    }
    for name in missing.iter().rev() {
        target.push(name);
    }
    Ok(target)
}

/// `canon` if it lies inside `root`, else [`PathError::Escapes`].
fn inside(root: &Path, canon: PathBuf, user: &str) -> Result<PathBuf, PathError> {
    if canon.starts_with(root) {
        Ok(canon)
    } else {
        Err(PathError::Escapes(user.to_string()))
    }
}

/// The error for a path that could not be canonicalized: a broken symbolic
/// link when some component exists as a link, else not found, not a
/// directory, or another I/O error.
fn not_resolved(root: &Path, rel: &Path, user: &str, e: &io::Error) -> PathError {
    match e.kind() {
        io::ErrorKind::NotFound => {
            let mut prefix = root.to_path_buf();
            for part in rel.components() {
                prefix.push(part);
                match std::fs::symlink_metadata(&prefix) {
                    Ok(meta) if meta.file_type().is_symlink() && prefix.canonicalize().is_err() => {
                        return PathError::BrokenLink(user.to_string());
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            PathError::NotFound(user.to_string())
        }
        io::ErrorKind::NotADirectory => PathError::NotADirectory(user.to_string()),
        _ => PathError::Io {
            path: user.to_string(),
            reason: e.to_string(),
        },
    }
}

/// The path of `canon` relative to `root`, with `/` separators (how the tools
/// show paths and the index stores them). `None` when it is not below `root`
/// or is not UTF-8.
pub fn display_path(root: &Path, canon: &Path) -> Option<String> {
    let rel = canon.strip_prefix(root).ok()?;
    let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
    let joined = parts?.join("/");
    Some(if joined.is_empty() { ".".to_string() } else { joined })
}

/// What a directory entry is. Symbolic links are never followed by the walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (to anything).
    Symlink,
    /// Sockets, FIFOs, devices.
    Other,
}

impl EntryKind {
    /// `"file"`, `"dir"`, `"symlink"` or `"other"`.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Dir => "dir",
            EntryKind::Symlink => "symlink",
            EntryKind::Other => "other",
        }
    }
}

/// One entry found by [`walk`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path relative to the workspace root, `/`-separated.
    pub path: String,
    /// Absolute path on disk.
    pub full: PathBuf,
    /// What it is (links not followed).
    pub kind: EntryKind,
    /// Size in bytes (of the link itself for a symbolic link).
    pub size: u64,
    /// Modification time in ns since the Unix epoch (negative before it).
    pub mtime_ns: i64,
}

/// Lists `dir` (an absolute path inside the canonical workspace `root`),
/// sorted by name, directories before their contents; with `recursive`, the
/// whole tree below it. Symbolic links are listed, not followed. Entries whose
/// name is not UTF-8 or is a `write_file` temporary are left out, and so are
/// entries that vanish or cannot be read while walking. Stops after `max`
/// entries; the flag says whether it stopped early. Blocking.
pub fn walk(root: &Path, dir: &Path, recursive: bool, max: usize) -> Result<(Vec<Entry>, bool), PathError> {
    let mut out: Vec<Entry> = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut first = true;
    while let Some(current) = stack.pop() {
        let reader = match std::fs::read_dir(&current) {
            Ok(r) => r,
            Err(e) if first => {
                return Err(PathError::Io {
                    path: display_path(root, &current).unwrap_or_default(),
                    reason: e.to_string(),
                });
            }
            Err(_) => continue,
        };
        first = false;
        let mut entries: Vec<Entry> = reader
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name();
                let name = name.to_str()?;
                if is_temp_name(name) {
                    return None;
                }
                let full = e.path();
                let meta = std::fs::symlink_metadata(&full).ok()?;
                let ft = meta.file_type();
                let kind = if ft.is_symlink() {
                    EntryKind::Symlink
                } else if ft.is_dir() {
                    EntryKind::Dir
                } else if ft.is_file() {
                    EntryKind::File
                } else {
                    EntryKind::Other
                };
                Some(Entry {
                    path: display_path(root, &full)?,
                    full,
                    kind,
                    size: meta.len(),
                    mtime_ns: mtime_ns(meta.modified().ok()),
                })
            })
            .collect();
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        // Depth first, in name order: push subdirectories in reverse so the
        // first one is walked next. Entries are emitted level by level.
        if recursive {
            for e in entries.iter().rev().filter(|e| e.kind == EntryKind::Dir) {
                stack.push(e.full.clone());
            }
        }
        for e in entries {
            if out.len() >= max {
                out.sort_by(|a, b| a.path.cmp(&b.path));
                return Ok((out, true));
            }
            out.push(e);
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((out, false))
}

/// Every regular file below `root` (recursively, links not followed).
/// Blocking.
pub fn all_files(root: &Path) -> Result<Vec<Entry>, PathError> {
    let (entries, _) = walk(root, root, true, usize::MAX)?;
    Ok(entries.into_iter().filter(|e| e.kind == EntryKind::File).collect())
}

/// Converts a modification time to ns since the Unix epoch (0 when unknown).
pub fn mtime_ns(time: Option<SystemTime>) -> i64 {
    let Some(time) = time else { return 0 };
    match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

/// Runs blocking file-system work on the blocking pool. A panic in `f`
/// becomes a [`ToolError::Failed`].
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ToolError> + Send + 'static,
) -> Result<T, ToolError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ToolError::Failed(format!("the file operation did not finish: {e}")))?
}

#[cfg(test)]
mod tests;
