//! The full-text index of project workspaces: the FTS5 table `documents`
//! (title and body, `porter unicode61` tokenizer) and `document_files`, what
//! the index last read of each file (mtime and size), which lets a rescan
//! re-read only the files that changed.
//!
//! [`Documents`] on SQLite.
//!
//! Rows of `documents` are written only through these methods, always
//! together with their `document_files` row, which records the FTS rowid so
//! a file's row is replaced without scanning the table.

use async_trait::async_trait;
use sqlx::Row;

use super::SqliteStore;
use crate::domain::now_ms;
use crate::store::{DocumentHit, Documents, FileStamp, IndexedFile, StoreError};

/// bm25 weights of the `documents` columns: project_id, path (unindexed),
/// title, body.
const SEARCH_SQL: &str = "SELECT path, title, snippet(documents, -1, '', '', '…', 16) AS snippet, \
     bm25(documents, 0.0, 0.0, 4.0, 1.0) AS score \
     FROM documents WHERE documents MATCH ? AND project_id = ? ORDER BY score, path LIMIT ?";

impl SqliteStore {
    /// The best `limit` matches of the FTS5 query `fts_query` among the
    /// documents of `project_id`, best first. `fts_query` is FTS5 query
    /// syntax and must be well formed (quote user text first); a syntax error
    /// is a [`StoreError::Db`].
    pub async fn search_fts(
        &self,
        project_id: &str,
        fts_query: &str,
        limit: u32,
    ) -> Result<Vec<DocumentHit>, StoreError> {
        let rows = sqlx::query(SEARCH_SQL)
            .bind(fts_query)
            .bind(project_id)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(DocumentHit {
                    path: r.try_get("path")?,
                    title: r.try_get("title")?,
                    snippet: r.try_get("snippet")?,
                    score: r.try_get("score")?,
                })
            })
            .collect()
    }
}

/// An FTS5 query matching documents with every term (`any == false`) or
/// any term (`any == true`). Each term is a quoted string, so words such as
/// `AND`, `NEAR` or `title` are searched as words, never as syntax.
pub fn fts_query(terms: &[String], any: bool) -> String {
    let quoted: Vec<String> = terms
        .iter()
        .map(|t| format!("\"{}\"", t.replace('"', "\"\"")))
        .collect();
    quoted.join(if any { " OR " } else { " " })
}

fn size_to_db(size: u64) -> i64 {
    i64::try_from(size).unwrap_or(i64::MAX)
}

#[async_trait]
impl Documents for SqliteStore {
    /// Indexes (or re-indexes) the file `path` of `project_id` with its
    /// `title` and text `body`, and records `stamp` as the version read. One
    /// transaction; the previous row of the file, if any, is replaced.
    async fn upsert_document(
        &self,
        project_id: &str,
        path: &str,
        title: &str,
        body: &str,
        stamp: FileStamp,
    ) -> Result<(), StoreError> {
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
        delete_fts_row(&mut tx, project_id, path).await?;
        let inserted = sqlx::query("INSERT INTO documents (project_id, path, title, body) VALUES (?, ?, ?, ?)")
            .bind(project_id)
            .bind(path)
            .bind(title)
            .bind(body)
            .execute(&mut *tx)
            .await?;
        record_file(&mut tx, project_id, path, stamp, Some(inserted.last_insert_rowid())).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records that the file `path` (version `stamp`) was looked at but is
    /// not indexed (not text), removing any earlier index row of it.
    async fn mark_unindexed(&self, project_id: &str, path: &str, stamp: FileStamp) -> Result<(), StoreError> {
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
        delete_fts_row(&mut tx, project_id, path).await?;
        record_file(&mut tx, project_id, path, stamp, None).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Forgets the file `path` of `project_id` (index row and recorded
    /// version). Returns whether the index knew it.
    async fn remove_document(&self, project_id: &str, path: &str) -> Result<bool, StoreError> {
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
        delete_fts_row(&mut tx, project_id, path).await?;
        let done = sqlx::query("DELETE FROM document_files WHERE project_id = ? AND path = ?")
            .bind(project_id)
            .bind(path)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    /// The terms are quoted into an FTS5 query ([`fts_query`]).
    async fn search_documents(
        &self,
        project_id: &str,
        terms: &[String],
        any: bool,
        limit: u32,
    ) -> Result<Vec<DocumentHit>, StoreError> {
        self.search_fts(project_id, &fts_query(terms, any), limit).await
    }

    async fn indexed_files(&self, project_id: &str) -> Result<Vec<IndexedFile>, StoreError> {
        let rows = sqlx::query(
            "SELECT path, mtime_ns, size, doc_rowid IS NOT NULL AS indexed FROM document_files \
             WHERE project_id = ? ORDER BY path",
        )
        .bind(project_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let size: i64 = r.try_get("size")?;
                Ok(IndexedFile {
                    path: r.try_get("path")?,
                    stamp: FileStamp {
                        mtime_ns: r.try_get("mtime_ns")?,
                        size: u64::try_from(size).unwrap_or(0),
                    },
                    indexed: r.try_get("indexed")?,
                })
            })
            .collect()
    }
}

/// Deletes the FTS row recorded for the file, if any.
async fn delete_fts_row(tx: &mut sqlx::SqliteConnection, project_id: &str, path: &str) -> Result<(), StoreError> {
    let rowid: Option<Option<i64>> =
        sqlx::query_scalar("SELECT doc_rowid FROM document_files WHERE project_id = ? AND path = ?")
            .bind(project_id)
            .bind(path)
            .fetch_optional(&mut *tx)
            .await?;
    if let Some(Some(rowid)) = rowid {
        sqlx::query("DELETE FROM documents WHERE rowid = ?")
            .bind(rowid)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// Records the version read of a file and its FTS rowid (`None`: not indexed).
async fn record_file(
    tx: &mut sqlx::SqliteConnection,
    project_id: &str,
    path: &str,
    stamp: FileStamp,
    doc_rowid: Option<i64>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO document_files (project_id, path, mtime_ns, size, doc_rowid, indexed_at) \
         VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (project_id, path) DO UPDATE SET \
         mtime_ns = excluded.mtime_ns, size = excluded.size, doc_rowid = excluded.doc_rowid, \
         indexed_at = excluded.indexed_at",
    )
    .bind(project_id)
    .bind(path)
    .bind(stamp.mtime_ns)
    .bind(size_to_db(stamp.size))
    .bind(doc_rowid)
    .bind(now_ms())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore as Store;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::open(&url, 1024).await.expect("open");
        (dir, store)
    }

    fn stamp(n: i64) -> FileStamp {
        FileStamp { mtime_ns: n, size: 10 }
    }

    #[tokio::test]
    async fn upsert_search_remove() {
        let (_dir, store) = store().await;
        store
            .upsert_document("p", "a.md", "Rust", "rust rust rust and more", stamp(1))
            .await
            .expect("upsert");
        store
            .upsert_document("p", "b.md", "Other", "some rust here, mostly other words", stamp(1))
            .await
            .expect("upsert");
        store
            .upsert_document("q", "c.md", "Rust", "rust in another project", stamp(1))
            .await
            .expect("upsert");

        let hits = store.search_fts("p", "\"rust\"", 10).await.expect("search");
        let paths: Vec<&str> = hits.iter().map(|h| h.path.as_str()).collect();
        assert_eq!(paths, ["a.md", "b.md"]);
        assert!(hits[0].score < hits[1].score);
        assert_eq!(hits[1].snippet, "some rust here, mostly other words");

        // Replacing keeps one row per file.
        store
            .upsert_document("p", "a.md", "Renamed", "nothing relevant", stamp(2))
            .await
            .expect("upsert");
        let hits = store.search_fts("p", "\"rust\"", 10).await.expect("search");
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].path, "b.md");
        let files = store.indexed_files("p").await.expect("files");
        assert_eq!(
            files,
            vec![
                IndexedFile {
                    path: "a.md".into(),
                    stamp: stamp(2),
                    indexed: true
                },
                IndexedFile {
                    path: "b.md".into(),
                    stamp: stamp(1),
                    indexed: true
                },
            ]
        );

        store.mark_unindexed("p", "b.md", stamp(3)).await.expect("mark");
        assert!(store.search_fts("p", "\"rust\"", 10).await.expect("search").is_empty());
        assert!(!store.indexed_files("p").await.expect("files")[1].indexed);

        assert!(store.remove_document("p", "a.md").await.expect("remove"));
        assert!(!store.remove_document("p", "a.md").await.expect("remove"));
        assert_eq!(store.indexed_files("p").await.expect("files").len(), 1);
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM documents WHERE project_id = 'p'")
            .fetch_one(store.pool())
            .await
            .expect("count");
        assert_eq!(count, 0);
    }

    #[tokio::test]
    async fn bad_fts_syntax_is_an_error_not_a_panic() {
        let (_dir, store) = store().await;
        assert!(matches!(
            store.search_fts("p", "\"unbalanced", 5).await,
            Err(StoreError::Db(_))
        ));
    }
}
