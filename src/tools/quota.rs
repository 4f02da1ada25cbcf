//! The workspace quotas `write_file` enforces: one per project workspace
//! (`tools.workspace_quota_bytes`) and one over every workspace below
//! `tools.workspace_root` together (`tools.workspace_total_quota_bytes`).
//! Without the total, each new project id was a fresh quota.
//!
//! Usage is measured on disk, counting every regular file: hidden files,
//! files with any name (the `write_file` temporaries included) and files
//! outside any project directory. Symbolic links are not followed (a link
//! counts nothing, so a link to a big file outside is not charged, nor can it
//! be written through: the path jail refuses it).
//!
//! Checking and writing run under one process-wide lock ([`write_lock`]), so
//! two writes cannot both pass a check that only one of them fits in.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use super::ToolError;

/// A write that [`check`] measured: the bytes used now, in the project
/// workspace and in all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of every regular file below the project workspace.
    pub project: u64,
    /// Bytes of every regular file below the workspace root.
    pub total: u64,
}

/// Serialises quota checks with the writes they allow. Blocking: hold it
/// on the blocking pool only. A poisoned lock is taken over (it guards no
/// data).
pub fn write_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Total size in bytes of every regular file below `dir` (recursively,
/// symbolic links not followed, any name). A missing `dir` is 0 bytes;
/// entries that vanish while walking are skipped. Errors: the I/O error of
/// reading `dir` itself. Blocking.
pub fn disk_usage(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    let mut first = true;
    while let Some(current) = stack.pop() {
        let reader = match std::fs::read_dir(&current) {
            Ok(r) => r,
            Err(e) if first && e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) if first => return Err(e),
            Err(_) => continue,
        };
        first = false;
        for entry in reader.filter_map(Result::ok) {
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file()
                && let Ok(meta) = entry.metadata()
            {
                total = total.saturating_add(meta.len());
            }
        }
    }
    Ok(total)
}

/// Checks that writing `len` bytes to `user` (replacing a file of `old_size`
/// bytes, 0 for a new one) keeps the project workspace `project_dir` within
/// `project_quota` and the workspace root `root_dir` within `total_quota`.
/// Returns the usage measured. Call it under [`write_lock`]. Blocking.
///
/// Errors: [`ToolError::Failed`] naming the quota that would be passed, and
/// when the usage cannot be measured.
pub fn check(
    root_dir: &Path,
    project_dir: &Path,
    user: &str,
    len: u64,
    old_size: u64,
    project_quota: u64,
    total_quota: u64,
) -> Result<Usage, ToolError> {
    let measure = |dir: &Path| {
        disk_usage(dir).map_err(|e| ToolError::Failed(format!("could not measure the workspace usage: {e}")))
    };
    let usage = Usage {
        project: measure(project_dir)?,
        total: measure(root_dir)?,
    };
    let after = |used: u64| used.saturating_sub(old_size).saturating_add(len);
    let project_after = after(usage.project);
    if project_after > project_quota {
        return Err(ToolError::Failed(format!(
            "writing {len} bytes to {user:?} would bring the workspace to {project_after} bytes, over its quota of \
             {project_quota} bytes ({} bytes are used now); write less, or ask the user to free space",
            usage.project
        )));
    }
    let total_after = after(usage.total);
    if total_after > total_quota {
        return Err(ToolError::Failed(format!(
            "writing {len} bytes to {user:?} would bring all project workspaces together to {total_after} bytes, \
             over their total quota of {total_quota} bytes ({} bytes are used now); write less, or ask the user to \
             free space in this or another project",
            usage.total
        )));
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_counts_and_both_quotas_apply() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        let p1 = root.join("p1");
        std::fs::create_dir_all(p1.join(".chatd-tmp-x/deep")).expect("mkdir");
        std::fs::create_dir_all(root.join("p2")).expect("mkdir");
        std::fs::write(p1.join("a.txt"), "a".repeat(100)).expect("write");
        std::fs::write(p1.join(".hidden"), "h".repeat(10)).expect("write");
        std::fs::write(p1.join(".chatd-tmp-x/deep/b"), "b".repeat(1000)).expect("write");
        std::fs::write(root.join("p2/c.txt"), "c".repeat(500)).expect("write");
        std::os::unix::fs::symlink(root.join("p2/c.txt"), p1.join("link")).expect("symlink");
        assert_eq!(disk_usage(&p1).expect("usage"), 1110);
        assert_eq!(disk_usage(root).expect("usage"), 1610);
        assert_eq!(disk_usage(&root.join("missing")).expect("usage"), 0);

        let ok = check(root, &p1, "n.txt", 10, 0, 2000, 2000).expect("fits");
        assert_eq!(
            ok,
            Usage {
                project: 1110,
                total: 1610
            }
        );
        // Replacing a file counts only the difference.
        assert!(check(root, &p1, "a.txt", 990, 100, 2000, 2500).is_ok());
        let Err(ToolError::Failed(project)) = check(root, &p1, "n.txt", 900, 0, 2000, 9000) else {
            panic!("over the project quota");
        };
        assert!(
            project.contains("to 2010 bytes, over its quota of 2000 bytes (1110 bytes"),
            "{project}"
        );
        let Err(ToolError::Failed(total)) = check(root, &p1, "n.txt", 500, 0, 2000, 2000) else {
            panic!("over the total quota");
        };
        assert!(
            total.contains("all project workspaces together to 2110 bytes, over their total quota of 2000 bytes"),
            "{total}"
        );
    }
}
