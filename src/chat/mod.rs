//! The chat loop: [`ChatService`] turns a user's message into a reply that
//! runs as its own task and publishes typed events (`crate::domain::event`)
//! to a per-reply event log ([`log::Reply`]). HTTP subscribes to that log;
//! this module knows nothing of HTTP.
//!
//! - `service.rs`: [`ChatService`] (start, resume, cancel, approve, shutdown);
//! - `conversations.rs`: [`ConversationService`] (the conversation routes'
//!   work and validation);
//! - `models.rs`: [`Models`], the providers' models for `GET /api/models`;
//! - `input.rs`: what a request asks for, and its validation; `error.rs`;
//! - `turn/`: one reply's task, phase by phase (begin, round, tools,
//!   finish), with `assemble.rs`
//!   (tool-call deltas), `steps.rs` (step numbering), `think.rs` (`<think>`
//!   splitting), `history.rs` (the upstream history and its cache);
//! - `log.rs`: the per-reply event log; `approvals.rs`: calls waiting for
//!   the user's decision; `registry.rs`: the replies in memory;
//! - `replay.rs`: events of replies no longer in memory; `title.rs`.

mod approvals;
mod assemble;
mod conversations;
mod error;
mod history;
mod input;
pub mod log;
mod models;
mod registry;
mod replay;
mod service;
pub mod steps;
mod think;
pub mod title;
mod turn;

pub use conversations::{ConversationPage, ConversationService, MessagePage};
pub use error::ChatError;
pub use input::{
    ChatInput, Settings, SettingsInput, ToolChoice, ToolSelection, validate_project_id, validate_settings,
};
pub use models::{ModelInfo, Models, ModelsListing, ProviderInfo};
pub use service::{ChatService, Deps, MEMORY_RETENTION};
