-- The event batches move to a rowid table with a unique index. As a
-- WITHOUT ROWID table the rows (about a kilobyte each) were stored in key
-- order, so every commit rewrote one B-tree page per streaming reply (the
-- page holding that reply's last row) and split pages as they filled. Rows
-- of a rowid table are appended at the end, and only the small index
-- entries go in key order: under 512 streaming replies a commit writes
-- about a third of the pages it did.
CREATE TABLE reply_event_batches_new (
    message_id TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    first_seq  INTEGER NOT NULL,                  -- the SSE id of the batch's first event
    last_seq   INTEGER NOT NULL,                  -- and of its last
    events     TEXT NOT NULL                      -- one line per event: "<seq> <event> <JSON data>\n"
);

INSERT INTO reply_event_batches_new (message_id, first_seq, last_seq, events)
SELECT message_id, first_seq, last_seq, events FROM reply_event_batches ORDER BY message_id, first_seq;

DROP TABLE reply_event_batches;
ALTER TABLE reply_event_batches_new RENAME TO reply_event_batches;
CREATE UNIQUE INDEX reply_event_batches_reply ON reply_event_batches (message_id, first_seq);
