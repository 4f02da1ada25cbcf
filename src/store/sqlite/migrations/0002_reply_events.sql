-- Every SSE event of a reply, appended in batches while it streams, so that
-- GET /api/chat/{message_id}/events can replay a reply exactly, also after a
-- restart. Rows of final messages are pruned after the retention window.
CREATE TABLE reply_events (
    message_id TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    seq        INTEGER NOT NULL,                  -- the SSE id, 1-based within the reply
    event      TEXT NOT NULL,                     -- start, process_step, done, error
    data       TEXT NOT NULL,                     -- the event's JSON
    PRIMARY KEY (message_id, seq)
) WITHOUT ROWID;

-- The provider a conversation is pinned to (NULL: routed by model).
ALTER TABLE conversations ADD COLUMN provider TEXT;
