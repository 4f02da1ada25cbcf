//! What a request asks of chat: the user's message, per-conversation
//! settings, the tool selection, and their validation (shared by the chat
//! and conversation routes).

use serde_json::{Value, json};
use uuid::Uuid;

use super::ChatError;

/// Per-conversation settings a request may set or override. `None` means
/// "not given".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SettingsInput {
    pub model: Option<String>,
    /// A `[[providers]]` name.
    pub provider: Option<String>,
    pub system_prompt: Option<String>,
    /// 0..=2.
    pub temperature: Option<f64>,
    /// At least 1.
    pub max_tokens: Option<u32>,
    pub thinking: Option<bool>,
}

/// The settings in effect for one reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub model: String,
    pub provider: Option<String>,
    pub system_prompt: Option<String>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    pub thinking: Option<bool>,
}

/// Which tools the model may call in a reply.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum ToolSelection {
    /// Every registered tool.
    #[default]
    All,
    /// No tools.
    None,
    /// Only these (each must exist).
    Only(Vec<String>),
}

/// OpenAI `tool_choice`.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    Auto,
    None,
    Required,
    /// Force a call to this function.
    Function(String),
}

impl ToolChoice {
    /// The OpenAI `tool_choice` JSON value.
    pub fn to_json(&self) -> Value {
        match self {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::None => json!("none"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Function(name) => json!({"type": "function", "function": {"name": name}}),
        }
    }
}

/// A user's message and how to answer it.
#[derive(Default)]
pub struct ChatInput {
    /// Held until the reply ends (e.g. the caller's concurrency slot).
    pub guard: Option<Box<dyn std::any::Any + Send + Sync>>,
    pub message: String,
    /// The project of a new conversation (`^[A-Za-z0-9_-]{1,64}$`); an
    /// existing conversation keeps the one it was created with.
    pub project_id: Option<String>,
    /// `None` creates a conversation (with `settings` stored on it).
    pub conversation_id: Option<Uuid>,
    pub settings: SettingsInput,
    pub tools: ToolSelection,
    pub tool_choice: Option<ToolChoice>,
}

/// Longest `model` or `provider` name a request may give, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Longest `system_prompt`, in bytes (64 KiB).
pub const MAX_SYSTEM_PROMPT_BYTES: usize = 64 * 1024;
/// Longest conversation `title`, in bytes.
pub const MAX_TITLE_BYTES: usize = 1024;
/// Longest reason of an approval decision, in bytes.
pub const MAX_REASON_BYTES: usize = 4096;

/// Checks that the free-text `field` is at most `max` bytes long.
///
/// Errors: [`ChatError::Invalid`] (422) naming the field and both lengths.
pub fn validate_length(field: &str, value: Option<&str>, max: usize) -> Result<(), ChatError> {
    match value {
        Some(v) if v.len() > max => Err(ChatError::Invalid(format!(
            "{field} must be at most {max} bytes, got {}",
            v.len()
        ))),
        _ => Ok(()),
    }
}

/// Checks the ranges and lengths of settings (shared by chat and
/// conversation routes): temperature 0..=2, `max_tokens` from 1 to
/// `max_tokens_ceiling` (`chat.max_tokens_ceiling`), `model` and `provider`
/// not blank and at most [`MAX_NAME_BYTES`], `system_prompt` at most
/// [`MAX_SYSTEM_PROMPT_BYTES`].
///
/// Errors: [`ChatError::Invalid`] saying which value to fix.
pub fn validate_settings(s: &SettingsInput, max_tokens_ceiling: u32) -> Result<(), ChatError> {
    validate_length("model", s.model.as_deref(), MAX_NAME_BYTES)?;
    validate_length("provider", s.provider.as_deref(), MAX_NAME_BYTES)?;
    validate_length("system_prompt", s.system_prompt.as_deref(), MAX_SYSTEM_PROMPT_BYTES)?;
    if let Some(t) = s.temperature
        && !(0.0..=2.0).contains(&t)
    {
        return Err(ChatError::Invalid(format!(
            "temperature must be between 0 and 2, got {t}"
        )));
    }
    match s.max_tokens {
        Some(0) => return Err(ChatError::Invalid("max_tokens must be at least 1".into())),
        Some(n) if n > max_tokens_ceiling => {
            return Err(ChatError::Invalid(format!(
                "max_tokens must be at most {max_tokens_ceiling}, got {n}"
            )));
        }
        _ => {}
    }
    if s.provider.as_deref().is_some_and(|p| p.trim().is_empty()) {
        return Err(ChatError::Invalid(
            "provider must not be blank; omit it to route by model".into(),
        ));
    }
    if s.model.as_deref().is_some_and(|m| m.trim().is_empty()) {
        return Err(ChatError::Invalid(
            "model must not be blank; omit it to use the default".into(),
        ));
    }
    Ok(())
}

/// Checks a project id: 1 to 64 of `A-Z a-z 0-9 _ -` (it names a directory).
pub fn validate_project_id(project: &str) -> Result<(), ChatError> {
    let ok = !project.is_empty()
        && project.len() <= 64
        && project
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ChatError::Invalid(format!(
            "project_id {project:?} must be 1 to 64 letters, digits, '_' or '-'"
        )))
    }
}
