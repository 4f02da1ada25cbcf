//! [`WorkDir`]: the empty working directory a stdio MCP server starts in.
//!
//! A child process inherits its parent's working directory unless told
//! otherwise, and chatd's is where its database lives (in the container).
//! Each stdio server therefore starts in a fresh, empty directory of its own
//! below the system temp dir, readable only by chatd's user, which is removed
//! (with whatever the server left in it) when the connection ends.

use std::path::{Path, PathBuf};

/// A directory created for one server process; removed when dropped.
#[derive(Debug)]
pub(super) struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    /// Creates `<temp dir>/chatd-mcp-<server>-<random>` (mode 0700 on Unix).
    /// `server` is a validated server name (`A-Z a-z 0-9 _ -`). Errors: the
    /// I/O error of creating it.
    pub(super) fn create(server: &str) -> std::io::Result<Self> {
        let path = std::env::temp_dir().join(format!("chatd-mcp-{server}-{}", uuid::Uuid::new_v4().simple()));
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(&path)?;
        Ok(Self { path })
    }

    /// The directory's absolute path.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, path = %self.path.display(), "MCP server directory not removed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directory_is_empty_private_and_removed_on_drop() {
        let dir = WorkDir::create("unit").expect("created");
        let path = dir.path().to_path_buf();
        assert!(path.is_absolute() && path.is_dir());
        assert_eq!(std::fs::read_dir(&path).expect("read").count(), 0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
        std::fs::write(path.join("left-behind"), "x").expect("write");
        drop(dir);
        assert!(!path.exists());
    }
}
