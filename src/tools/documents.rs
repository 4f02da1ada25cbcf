//! Keeps a project's full-text index ([`Documents::upsert_document`] and
//! friends) in step with its workspace, and turns a user's words into a
//! safe FTS5 query.
//!
//! Freshness rule: the index records, per file, the modification time (ns)
//! and size it read. [`rescan`] walks the workspace and re-reads exactly the
//! files whose mtime or size differ (or that are new), and forgets the files
//! that are gone. `search_documents` runs it before every search, so the
//! index is never older than the files; unchanged files cost one `stat`.
//! `write_file` indexes what it wrote right away ([`index_text`]).

use std::collections::HashMap;
use std::path::Path;

use super::workspace::{self, PathError};
use crate::store::{Documents, FileStamp, IndexedFile, StoreError};

/// Most query words used; the rest are ignored.
pub const MAX_TERMS: usize = 32;

/// Longest title kept, in characters.
const MAX_TITLE_CHARS: usize = 200;

/// Errors while bringing the index up to date.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The database failed.
    #[error("the document index could not be updated: {0}")]
    Store(#[from] StoreError),
    /// The workspace could not be walked.
    #[error("the workspace could not be scanned: {0}")]
    Path(#[from] PathError),
    /// The blocking walk did not finish (panicked or was cancelled).
    #[error("the workspace scan did not finish: {0}")]
    Join(String),
}

/// What a [`rescan`] did, in files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RescanReport {
    /// Read and (re-)indexed as text.
    pub indexed: usize,
    /// Read but not UTF-8 text: recorded as not indexed.
    pub not_text: usize,
    /// Forgotten: deleted, or now larger than the size limit.
    pub removed: usize,
    /// Same mtime and size as when last read: not read again.
    pub unchanged: usize,
    /// Larger than the size limit: never read.
    pub too_large: usize,
}

/// The words of `query` for FTS5: runs of letters and digits (Unicode),
/// at most [`MAX_TERMS`]. Everything else (punctuation, quotes, FTS5
/// operators' symbols) separates words.
pub fn query_terms(query: &str) -> Vec<String> {
    query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .take(MAX_TERMS)
        .map(str::to_string)
        .collect()
}

/// A document's title: its first Markdown heading (`# Title`), else the
/// file name of `path`.
pub fn title_of(path: &str, body: &str) -> String {
    let heading = body.lines().find_map(|line| {
        let line = line.trim_start();
        let level = line.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&level) {
            return None;
        }
        let rest = &line[level..];
        if !rest.is_empty() && !rest.starts_with([' ', '\t']) {
            return None;
        }
        let text = rest.trim().trim_end_matches('#').trim();
        (!text.is_empty()).then(|| text.to_string())
    });
    let title = heading.unwrap_or_else(|| path.rsplit('/').next().unwrap_or(path).to_string());
    title.chars().take(MAX_TITLE_CHARS).collect()
}

/// The stamp of a file from its metadata.
pub fn stamp_of(meta: &std::fs::Metadata) -> FileStamp {
    FileStamp {
        mtime_ns: workspace::mtime_ns(meta.modified().ok()),
        size: meta.len(),
    }
}

/// Indexes the text `body` of the file `path` (relative, `/`-separated) as
/// version `stamp`, with its [`title_of`].
pub async fn index_text(
    store: &dyn Documents,
    project_id: &str,
    path: &str,
    body: &str,
    stamp: FileStamp,
) -> Result<(), StoreError> {
    store
        .upsert_document(project_id, path, &title_of(path, body), body, stamp)
        .await
}

/// Brings the index of `project_id` up to date with the workspace `root`
/// (canonical): indexes new and changed text files of at most
/// `max_file_bytes` bytes, and forgets files that are gone or grew past the
/// limit. Symbolic links are not followed. Files are read with `tokio::fs`,
/// the walk runs on the blocking pool.
pub async fn rescan(
    store: &dyn Documents,
    project_id: &str,
    root: &Path,
    max_file_bytes: u64,
) -> Result<RescanReport, IndexError> {
    let walk_root = root.to_path_buf();
    let files = tokio::task::spawn_blocking(move || workspace::all_files(&walk_root))
        .await
        .map_err(|e| IndexError::Join(e.to_string()))??;
    let mut known: HashMap<String, IndexedFile> = store
        .indexed_files(project_id)
        .await?
        .into_iter()
        .map(|f| (f.path.clone(), f))
        .collect();
    let mut report = RescanReport::default();
    for file in files {
        let previous = known.remove(&file.path);
        if file.size > max_file_bytes {
            report.too_large += 1;
            if previous.is_some() {
                store.remove_document(project_id, &file.path).await?;
                report.removed += 1;
            }
            continue;
        }
        let stamp = FileStamp {
            mtime_ns: file.mtime_ns,
            size: file.size,
        };
        if previous.is_some_and(|p| p.stamp == stamp) {
            report.unchanged += 1;
            continue;
        }
        // Read at most one byte past the limit: a file that grew since the
        // walk is caught by the next rescan (its stamp differs).
        let Ok(bytes) = tokio::fs::read(&file.full).await else {
            continue; // vanished or unreadable since the walk
        };
        if bytes.len() as u64 > max_file_bytes {
            continue;
        }
        match String::from_utf8(bytes) {
            Ok(body) => {
                index_text(store, project_id, &file.path, &body, stamp).await?;
                report.indexed += 1;
            }
            Err(_) => {
                store.mark_unindexed(project_id, &file.path, stamp).await?;
                report.not_text += 1;
            }
        }
    }
    for gone in known.keys() {
        store.remove_document(project_id, gone).await?;
        report.removed += 1;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::fts_query;

    #[test]
    fn terms_are_words_only() {
        assert_eq!(
            query_terms("rust's \"async\" AND (tokio*)"),
            ["rust", "s", "async", "AND", "tokio"]
        );
        assert_eq!(query_terms("café-crème 42"), ["café", "crème", "42"]);
        assert!(query_terms(" ?!* \"\" ").is_empty());
        assert_eq!(query_terms(&"a ".repeat(100)).len(), MAX_TERMS);
        let terms = query_terms("NEAR title: x");
        assert_eq!(fts_query(&terms, false), "\"NEAR\" \"title\" \"x\"");
        assert_eq!(fts_query(&terms, true), "\"NEAR\" OR \"title\" OR \"x\"");
    }

    #[test]
    fn title_is_first_heading_or_file_name() {
        assert_eq!(
            title_of("docs/a.md", "intro\n## Setup guide ##\n# Later"),
            "Setup guide"
        );
        assert_eq!(title_of("docs/a.md", "#hashtag\nno heading"), "a.md");
        assert_eq!(title_of("notes.txt", ""), "notes.txt");
        assert_eq!(title_of("x.md", "####### seven"), "x.md");
    }

    #[tokio::test]
    async fn rescan_follows_the_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::open(&format!("sqlite://{}", dir.path().join("t.db").display()), 1024)
            .await
            .expect("store");
        let root = dir.path().join("ws");
        std::fs::create_dir_all(root.join("sub")).expect("mkdir");
        let root = root.canonicalize().expect("canon");
        std::fs::write(root.join("a.md"), "# Alpha\nzebra crossing").expect("write");
        std::fs::write(root.join("sub/b.txt"), "nothing here").expect("write");
        std::fs::write(root.join("bin.dat"), [0xff, 0xfe, 0x00]).expect("write");
        std::fs::write(root.join("big.txt"), "x".repeat(200)).expect("write");

        let report = rescan(store.as_ref(), "p", &root, 100).await.expect("rescan");
        assert_eq!(
            report,
            RescanReport {
                indexed: 2,
                not_text: 1,
                too_large: 1,
                ..Default::default()
            }
        );
        let hits = store
            .search_documents("p", &query_terms("zebra"), false, 5)
            .await
            .expect("search");
        assert_eq!(hits.len(), 1);
        assert_eq!((hits[0].path.as_str(), hits[0].title.as_str()), ("a.md", "Alpha"));

        let again = rescan(store.as_ref(), "p", &root, 100).await.expect("rescan");
        assert_eq!(again.unchanged, 3);
        assert_eq!(again.indexed, 0);

        std::fs::remove_file(root.join("a.md")).expect("rm");
        std::fs::write(root.join("sub/b.txt"), "now a zebra too, longer").expect("write");
        let third = rescan(store.as_ref(), "p", &root, 100).await.expect("rescan");
        assert_eq!((third.indexed, third.removed), (1, 1));
        let hits = store
            .search_documents("p", &query_terms("zebra"), false, 5)
            .await
            .expect("search");
        let paths: Vec<&str> = hits.iter().map(|h| h.path.as_str()).collect();
        assert_eq!(paths, ["sub/b.txt"]);
    }
}
