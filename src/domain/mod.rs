//! The types every layer shares: conversations, messages, the chat events
//! and tool-call records. This module is the leaf of the layer map: it
//! imports nothing else of the crate, so any layer may use it.
//!
//! - [`conversation`]: [`Conversation`], its settings and patches.
//! - [`message`]: [`Role`], [`Status`], [`Message`], [`StoredStep`],
//!   [`UsageTotals`], [`ErrorInfo`].
//! - [`event`]: the events of a reply ([`ChatEvent`] and its payloads), the
//!   SSE contract.
//! - [`tool`]: [`ToolCall`], [`Source`], [`Approval`].
//! - [`time`]: Unix epoch milliseconds and their RFC 3339 form.
//! - [`error_chain`]: an error and its sources as one line.

pub mod conversation;
pub mod error_chain;
pub mod event;
pub mod message;
pub mod time;
pub mod tool;

pub use conversation::{Conversation, ConversationPatch, NewConversation};
pub use error_chain::error_chain;
pub use event::{ChatEvent, DoneEvent, ErrorEvent, SourcesEvent, StartEvent, StepEvent, StepKind};
pub use message::{ErrorInfo, Message, Role, Status, StoredStep, UsageTotals};
pub use time::now_ms;
pub use tool::{Approval, FunctionCall, Source, ToolCall};
