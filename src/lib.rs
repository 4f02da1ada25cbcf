//! chatd: a chat backend that streams LLM replies over Server-Sent Events.
//!
//! A request flows one way through the layers below; each layer has its own
//! error type and knows nothing of the layers above it.
//!
//! ```text
//! http   axum routes, request/response types, error -> JSON mapping, SSE framing
//!  |
//! chat   ChatService: starts a reply as its own task, runs the tool loop,
//!  |     publishes typed events to a per-reply event log that HTTP reads
//!  +-- llm    OpenAI-compatible streaming client and lenient chunk types
//!  +-- tools  tool registry, the executor (schema check, timeout, parallelism)
//!  +-- store  SQLite persistence (sqlx): conversations, messages, usage
//! ```
//!
//! [`app::App`] wires the layers together from a [`config::Config`]; the
//! binary (`src/main.rs`) only parses the command line and serves it.

pub mod app;
pub mod chat;
pub mod config;
pub mod http;
pub mod llm;
pub mod store;
pub mod tools;
