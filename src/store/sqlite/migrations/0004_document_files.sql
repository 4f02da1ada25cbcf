-- What the document index last read of each file of a project workspace:
-- the file's modification time (ns since the Unix epoch) and size in bytes.
-- A rescan re-reads only files whose mtime or size differ from these, and
-- drops the rows of files that are gone. A row without doc_rowid is a file
-- that was looked at but not indexed (not UTF-8 text), so it is not read
-- again until it changes. Rows of `documents` are written only together
-- with their row here (src/store/documents.rs).
CREATE TABLE document_files (
    project_id TEXT NOT NULL,
    path       TEXT NOT NULL,                     -- relative to the workspace, '/'-separated
    mtime_ns   INTEGER NOT NULL,
    size       INTEGER NOT NULL,
    doc_rowid  INTEGER,                           -- rowid of its row in documents; NULL: not indexed (not UTF-8 text)
    indexed_at INTEGER NOT NULL,                  -- Unix epoch ms
    PRIMARY KEY (project_id, path)
) WITHOUT ROWID;
