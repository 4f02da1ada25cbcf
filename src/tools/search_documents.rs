//! `search_documents`: full-text search (SQLite FTS5, bm25 ranking) over the
//! text files of the project workspace, with citable sources.

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::documents::{self, query_terms};
use super::text::collapse_whitespace;
use super::workspace::{self, PathError, blocking};
use super::{Source, Tool, ToolContext, ToolError, ToolOutput};
use crate::store::DocumentHit;

/// Searches the workspace's documents. Before each search the index is
/// brought up to date with the files ([`documents::rescan`]). Documents
/// containing every word of the query come first; when none does, documents
/// containing any of them. Each hit is given to the model as
/// `[S<n>] <title> (<path>)` followed by a snippet, and returned as a
/// [`Source`] (`id` `S<n>`, title, path, snippet).
pub struct SearchDocuments;

/// Hits returned when the call gives no `limit`.
pub const DEFAULT_LIMIT: u32 = 5;
/// Largest `limit` accepted.
pub const MAX_LIMIT: u32 = 20;

impl Tool for SearchDocuments {
    fn name(&self) -> &str {
        "search_documents"
    }

    fn reads_private_data(&self) -> bool {
        true
    }

    fn description(&self) -> &str {
        "Full-text search over the documents (text files) in this conversation's project workspace. Returns \
         the best matching documents, best first, each with an id such as S1 to cite, its path and a passage."
    }

    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "query": {
                    "type": "string",
                    "description": "Words to search for, e.g. \"deployment checklist\"."
                },
                "limit": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_LIMIT,
                    "description": format!("Most documents to return. Default {DEFAULT_LIMIT}.")
                }
            },
            "required": ["query"],
            "additionalProperties": false
        })
    }

    fn call(&self, ctx: ToolContext, arguments: Value) -> BoxFuture<'static, Result<ToolOutput, ToolError>> {
        let query = arguments
            .get("query")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let limit = arguments
            .get("limit")
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(DEFAULT_LIMIT)
            .clamp(1, MAX_LIMIT);
        async move { search(ctx, &query, limit).await }.boxed()
    }
}

async fn search(ctx: ToolContext, query: &str, limit: u32) -> Result<ToolOutput, ToolError> {
    let Some(project) = ctx.project_id.clone() else {
        return Err(PathError::NoProject.into());
    };
    let terms = query_terms(query);
    if terms.is_empty() {
        return Err(ToolError::InvalidArguments(format!(
            "the query {query:?} has no words to search for; give one or more words, e.g. \"deployment checklist\""
        )));
    }
    let store = ctx
        .store
        .clone()
        .ok_or_else(|| ToolError::Failed("the document index is not available here".into()))?;
    let max_file_bytes = ctx.config.max_file_bytes;
    let found = blocking(move || workspace::find_workspace(&ctx).map_err(ToolError::from)).await?;
    let Some(root) = found else {
        // Nothing was ever written: no documents, and no directory created.
        return Ok(render(query, &[], false));
    };
    documents::rescan(store.as_ref(), &project, &root, max_file_bytes)
        .await
        .map_err(|e| ToolError::Failed(e.to_string()))?;

    let failed = |e: crate::store::StoreError| ToolError::Failed(format!("the search failed: {e}"));
    let mut hits = store
        .search_documents(&project, &terms, false, limit)
        .await
        .map_err(failed)?;
    let mut partial = false;
    if hits.is_empty() && terms.len() > 1 {
        hits = store
            .search_documents(&project, &terms, true, limit)
            .await
            .map_err(failed)?;
        partial = true;
    }
    Ok(render(query, &hits, partial))
}

/// The text for the model and the sources, numbered `S1`, `S2`, ... in rank
/// order.
fn render(query: &str, hits: &[DocumentHit], partial: bool) -> ToolOutput {
    if hits.is_empty() {
        return ToolOutput::from(format!("No documents in this project's workspace match {query:?}."));
    }
    let sources: Vec<Source> = hits
        .iter()
        .enumerate()
        .map(|(i, hit)| Source {
            id: format!("S{}", i + 1),
            title: hit.title.clone(),
            path: hit.path.clone(),
            snippet: collapse_whitespace(&hit.snippet),
        })
        .collect();
    let head = if partial {
        format!(
            "No document contains every word of {query:?}; {} document(s) contain some of them, best first.",
            hits.len()
        )
    } else {
        format!("{} document(s) match {query:?}, best first.", hits.len())
    };
    let mut text = format!("{head} Cite a document by its id, e.g. [S1].");
    for s in &sources {
        text.push_str(&format!("\n\n[{}] {} ({})\n{}", s.id, s.title, s.path, s.snippet));
    }
    ToolOutput { content: text, sources }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_hits_and_sources() {
        let hits = vec![
            DocumentHit {
                path: "a.md".into(),
                title: "Alpha".into(),
                snippet: "the zebra\n  crossing…".into(),
                score: -2.0,
            },
            DocumentHit {
                path: "b.txt".into(),
                title: "b.txt".into(),
                snippet: "a zebra".into(),
                score: -1.0,
            },
        ];
        let out = render("zebra", &hits, false);
        assert_eq!(
            out.content,
            "2 document(s) match \"zebra\", best first. Cite a document by its id, e.g. [S1].\n\n\
             [S1] Alpha (a.md)\nthe zebra crossing…\n\n[S2] b.txt (b.txt)\na zebra"
        );
        assert_eq!(out.sources[1].id, "S2");
        assert_eq!(out.sources[0].snippet, "the zebra crossing…");
        assert_eq!(
            render("x", &[], false).content,
            "No documents in this project's workspace match \"x\"."
        );
    }

    #[tokio::test]
    async fn refusals() {
        let ctx = ToolContext::detached();
        let err = search(ctx.clone(), "x", 5).await.expect_err("no project");
        assert!(err.to_string().starts_with("this conversation has no project"), "{err}");
        let mut with_project = ctx;
        with_project.project_id = Some("p".into());
        let err = search(with_project, " ?!\"* ", 5).await.expect_err("no words");
        assert!(matches!(err, ToolError::InvalidArguments(_)), "{err}");
    }
}
