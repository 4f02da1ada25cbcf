//! chatd: a chat backend that streams LLM replies over Server-Sent Events.
//!
//! A request flows one way through the layers below. Each layer has its own
//! error type, and imports only the layers under it, never one above:
//!
//! ```text
//! app      wiring: builds the store, the services and the router; owns the
//!  |       background tasks (src/app.rs; the binary is src/main.rs)
//! http     axum routes, request bodies, error -> JSON mapping, SSE bodies,
//!  |       access (keys, rate limits), metrics, OpenAPI; sees only services
//! chat     ChatService (a reply runs as its own task, runs the tool loop and
//!  |       publishes typed events to a per-reply log), ConversationService,
//!  |       Models
//!  +-- llm    OpenAI-compatible streaming client, providers, retries, routing
//!  +-- tools  tool registry and executor, built-in, workspace and MCP tools
//!  |           \-- store (the Documents index only)
//!  +-- store  traits per query family (Conversations, Turns, Replays,
//!             Documents, Usage) and one folder per backend (store/sqlite/)
//!
//! config   typed settings, one section per component; imports no component
//! domain   shared types: conversations, messages, events, tool calls (leaf)
//! wire     the SSE frame format (leaf)
//! ```
//!
//! Every module may use `config` (except `domain` and `wire`), `domain` and
//! `wire`. The rules, checked in CI by `scripts/check-layers.py`:
//! `domain` and `wire` import nothing of the crate; `store` none of `http`,
//! `chat`, `tools`, `llm`; `llm` none of `http`, `chat`, `tools`, `store`;
//! `tools` none of `http`, `chat`, `llm`; `config` no component; `http`
//! neither `store` nor `llm`; and no two modules import each other in a
//! circle.
//!
//! To follow a behaviour: a route is in `http/` (one file per route
//! family), which calls a service method in `chat/`; that method's work is
//! in `chat/` or one hop further, in `llm/`, `tools/` or a store trait,
//! whose SQLite queries are in `store/sqlite/`.

pub mod app;
pub mod chat;
pub mod config;
pub mod domain;
pub mod http;
pub mod llm;
pub mod store;
pub mod tools;
pub mod wire;
