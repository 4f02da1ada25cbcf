-- A conversation may belong to a project (set on creation); its workspace is
-- <tools.workspace_root>/<project_id>.
ALTER TABLE conversations ADD COLUMN project_id TEXT;

-- Documents a reply cited (JSON array of {id, title, path, snippet}).
ALTER TABLE messages ADD COLUMN sources TEXT;

-- Full-text index over project workspaces, kept up to date as files change
-- through the tools or a rescan.
CREATE VIRTUAL TABLE documents USING fts5 (
    project_id UNINDEXED,
    path UNINDEXED,
    title,
    body,
    tokenize = 'porter unicode61'
);
