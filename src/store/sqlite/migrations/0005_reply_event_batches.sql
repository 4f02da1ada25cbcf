-- Reply events stored in batches: the writer stores the events of one reply
-- that it commits together as one row, instead of one row per event (per
-- token). Under hundreds of streaming replies that is a few rows per reply
-- and second instead of one per token, with the same exact replay.
CREATE TABLE reply_event_batches (
    message_id TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    first_seq  INTEGER NOT NULL,                  -- the SSE id of the batch's first event
    last_seq   INTEGER NOT NULL,                  -- and of its last
    events     TEXT NOT NULL,                     -- one line per event: "<seq> <event> <JSON data>\n"
    PRIMARY KEY (message_id, first_seq)
) WITHOUT ROWID;

INSERT INTO reply_event_batches (message_id, first_seq, last_seq, events)
SELECT message_id, seq, seq, seq || ' ' || event || ' ' || data || char(10) FROM reply_events;

DROP TABLE reply_events;
