-- Conversations: one row per chat thread, with its per-conversation settings.
-- Timestamps are Unix epoch milliseconds (UTC).
CREATE TABLE conversations (
    id            TEXT PRIMARY KEY NOT NULL,      -- UUIDv7, hyphenated
    title         TEXT,
    model         TEXT,
    system_prompt TEXT,
    temperature   REAL,
    max_tokens    INTEGER,
    thinking      INTEGER,                        -- 0/1, NULL = provider default
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
CREATE INDEX conversations_by_updated ON conversations (updated_at DESC, id DESC);

-- Messages: one row per user message and one per assistant reply. An
-- assistant reply keeps every round of its tool loop in `steps`.
CREATE TABLE messages (
    id              TEXT PRIMARY KEY NOT NULL,    -- UUIDv7, hyphenated
    conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    role            TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    content         TEXT NOT NULL DEFAULT '',
    reasoning       TEXT,
    steps           TEXT NOT NULL DEFAULT '[]',   -- JSON array of stored steps
    tool_calls      TEXT,                         -- JSON array, OpenAI tool_calls shape
    usage           TEXT,                         -- JSON {prompt_tokens, completion_tokens, total_tokens}
    status          TEXT NOT NULL CHECK (status IN ('complete', 'streaming', 'error', 'cancelled', 'interrupted')),
    finish_reason   TEXT,
    error           TEXT,                         -- JSON {code, message} when status = 'error'
    model           TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX messages_by_conversation ON messages (conversation_id, created_at);
CREATE INDEX messages_by_status ON messages (status) WHERE status = 'streaming';

-- Token-usage ledger: totals per model and UTC day (YYYY-MM-DD).
CREATE TABLE token_usage (
    model             TEXT NOT NULL,
    day               TEXT NOT NULL,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (model, day)
);
