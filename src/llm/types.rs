//! Request and chunk types of the OpenAI chat-completions API
//! (`POST /chat/completions`, `chat.completion.chunk` objects).

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// Request body for `POST /chat/completions` (OpenAI format). `extra` holds
/// provider-specific fields such as `chat_template_kwargs` or
/// `reasoning_effort`, flattened into the top level.
///
/// Sent as [`WireRequest`], which names the model: a route sends one
/// request to providers whose model names differ, without a copy of the
/// messages for each (with 1,000 earlier messages a copy cost about 0.1 ms).
#[derive(Debug, Clone, Serialize)]
pub struct ChatRequest {
    /// The model asked for; [`LlmClient::stream_chat`](super::LlmClient::stream_chat)
    /// sends it, a [`Route`](super::Route) its provider's name for it.
    #[serde(skip)]
    pub model: String,
    pub messages: Vec<RequestMessage>,
    pub stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolDefinition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[cfg(test)]
impl ChatRequest {
    /// A streaming request of `model` with one user message `text` and no
    /// options (unit tests).
    pub(crate) fn user(model: &str, text: &str) -> Self {
        ChatRequest {
            model: model.to_string(),
            messages: vec![RequestMessage::User {
                content: text.to_string(),
            }],
            stream: true,
            stream_options: None,
            temperature: None,
            max_tokens: None,
            tools: Vec::new(),
            tool_choice: None,
            extra: Default::default(),
        }
    }
}

/// The JSON body sent upstream: `model`, then the fields of `request`.
#[derive(Debug, Serialize)]
pub struct WireRequest<'a> {
    pub model: &'a str,
    #[serde(flatten)]
    pub request: &'a ChatRequest,
}

/// `stream_options` (OpenAI): ask for a final usage-only chunk.
#[derive(Debug, Clone, Serialize)]
pub struct StreamOptions {
    pub include_usage: bool,
}

/// One message of the history sent upstream (OpenAI `messages[]`).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum RequestMessage {
    System {
        content: String,
    },
    User {
        content: String,
    },
    /// An assistant turn. `content` is `""` (not `null`) on a tool-call turn
    /// without text: OpenAI accepts both, some servers (llama-cpp-python)
    /// reject `null`. `reasoning_content` is sent back with tool-call turns
    /// because some providers (e.g. DeepSeek) reject them without it.
    Assistant {
        content: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        reasoning_content: Option<String>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCall>,
    },
    Tool {
        tool_call_id: String,
        content: String,
    },
    /// A message serialized earlier (its whole JSON object, `role`
    /// included), sent as is. The history cache keeps a conversation's
    /// messages this way, so a turn copies its history into the request
    /// rather than serializing it again: 1,000 messages (127 KB) took about
    /// 0.2 ms to serialize on every turn (BENCHMARKS.md, fix 22).
    #[serde(untagged)]
    Json(RawMessage),
}

impl RequestMessage {
    /// This message as [`RequestMessage::Json`], serialized now (a
    /// `Json` message is returned as is).
    pub fn into_json(self) -> Self {
        if matches!(self, Self::Json(_)) {
            return self;
        }
        match serde_json::value::to_raw_value(&self) {
            Ok(raw) => Self::Json(RawMessage(raw)),
            // Strings and lists always serialize; keep the message typed if not.
            Err(_) => self,
        }
    }
}

/// One message's JSON object, serialized once (see
/// [`RequestMessage::Json`]).
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct RawMessage(Box<serde_json::value::RawValue>);

impl RawMessage {
    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for RawMessage {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

pub use crate::domain::{FunctionCall, ToolCall};

/// A tool offered to the model (OpenAI `tools[]` item with type function).
#[derive(Debug, Clone, Serialize)]
pub struct ToolDefinition {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionDefinition,
}

/// Name, description and JSON Schema of a function tool.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionDefinition {
    pub name: String,
    pub description: String,
    pub parameters: Value,
}

/// One streamed chunk (OpenAI `chat.completion.chunk`). Every field is
/// optional; `error` is set when a provider reports a failure mid-stream.
/// Fields chatd does not read (`id`, `object`, `created`, `model`,
/// `system_fingerprint`, ...) are skipped while parsing, never allocated:
/// this runs once per token.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ChatChunk {
    #[serde(default, deserialize_with = "null_as_default")]
    pub choices: Vec<ChunkChoice>,
    #[serde(default)]
    pub usage: Option<Usage>,
    #[serde(default)]
    pub error: Option<Value>,
}

/// One choice of a chunk; chatd reads choice 0 only (it never asks for n > 1).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ChunkChoice {
    #[serde(default)]
    pub index: Option<u32>,
    #[serde(default)]
    pub delta: Option<Delta>,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// The incremental part of a choice. Reasoning arrives as
/// `reasoning_content` (DeepSeek, vLLM, llama.cpp) or `reasoning`
/// (OpenRouter, Ollama).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Delta {
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub reasoning_content: Option<String>,
    #[serde(default)]
    pub reasoning: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub tool_calls: Vec<ToolCallDelta>,
}

/// A piece of a tool call. The id and name usually come only in the first
/// piece; some servers send no id at all, or send arguments as an object.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ToolCallDelta {
    #[serde(default)]
    pub index: Option<u32>,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub function: Option<FunctionDelta>,
}

/// A piece of a tool call's function.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct FunctionDelta {
    #[serde(default)]
    pub name: Option<String>,
    /// JSON text piece; an object sent instead of text is re-serialized.
    #[serde(default, deserialize_with = "string_or_json")]
    pub arguments: Option<String>,
}

/// Token counts (OpenAI `usage`), in tokens.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Usage {
    #[serde(default, deserialize_with = "null_as_default")]
    pub prompt_tokens: u64,
    #[serde(default, deserialize_with = "null_as_default")]
    pub completion_tokens: u64,
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn string_or_json<'de, D>(d: D) -> Result<Option<String>, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => Some(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_chunk_parsing() {
        let c: ChatChunk = serde_json::from_str(
            r#"{"id":"x","choices":[{"index":0,"delta":{"content":null,"reasoning_content":"hm","tool_calls":null,"x_extra":1},"finish_reason":null}],"usage":null,"system_fingerprint":"fp"}"#,
        )
        .expect("parse");
        // Unread and unknown fields (id, x_extra, system_fingerprint) are skipped.
        let delta = c.choices[0].delta.as_ref().expect("delta");
        assert_eq!(delta.reasoning_content.as_deref(), Some("hm"));
        assert!(delta.tool_calls.is_empty());

        let c: ChatChunk = serde_json::from_str(
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":null,"total_tokens":5}}"#,
        )
        .expect("parse");
        assert_eq!(
            c.usage,
            Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 0
            })
        );

        let c: ChatChunk = serde_json::from_str(
            r#"{"choices":[{"delta":{"tool_calls":[{"function":{"name":"f","arguments":{"a":1}}}]}}]}"#,
        )
        .expect("parse");
        let call = &c.choices[0].delta.as_ref().expect("delta").tool_calls[0];
        assert_eq!(
            call.function.as_ref().and_then(|f| f.arguments.as_deref()),
            Some(r#"{"a":1}"#)
        );
    }

    #[test]
    fn assistant_message_serializes_in_openai_shape() {
        let m = RequestMessage::Assistant {
            content: String::new(),
            reasoning_content: Some("why".into()),
            tool_calls: vec![ToolCall {
                id: "c1".into(),
                kind: "function".into(),
                function: FunctionCall {
                    name: "calculator".into(),
                    arguments: "{}".into(),
                },
            }],
        };
        assert_eq!(
            serde_json::to_value(&m).expect("serialize"),
            serde_json::json!({"role":"assistant","content":"","reasoning_content":"why",
                "tool_calls":[{"id":"c1","type":"function","function":{"name":"calculator","arguments":"{}"}}]})
        );
    }
}
