//! `POST /api/chat`: validate, start the reply, answer with its event stream.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::AppState;
use super::access::{Caller, too_many};
use super::error::{ApiError, ErrorBody, parse_uuid};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::openapi::{ApproveResponse, CancelResponse, SseEvent, ToolChoiceSchema, ToolsSchema};
use super::sse::{StreamMode, sse_response};
use crate::chat::{ChatInput, SettingsInput, ToolChoice, ToolSelection};

/// Request body of `POST /api/chat`. Unknown fields are rejected (400).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatBody {
    /// The user's message; not blank, at most `chat.max_message_chars`.
    #[schema(min_length = 1, pattern = r"\S")]
    pub message: String,
    /// Absent: create a conversation (storing the settings below on it).
    #[serde(default)]
    pub conversation_id: Option<Uuid>,
    /// The project of a new conversation; its workspace is where the
    /// workspace tools work.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub project_id: Option<String>,
    /// Not blank.
    #[serde(default)]
    #[schema(pattern = r"\S")]
    pub model: Option<String>,
    /// A `[[providers]]` name; absent routes by model.
    #[serde(default)]
    #[schema(pattern = r"\S")]
    pub provider: Option<String>,
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// 0..=2.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f64>,
    /// Most completion tokens per model round: at least 1 and at most
    /// `chat.max_tokens_ceiling` (32768 by default; above it: 422
    /// `validation_failed`).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 4294967295_i64)]
    pub max_tokens: Option<i64>,
    #[serde(default)]
    pub thinking: Option<bool>,
    /// `true` (default: every tool), `false`, or a list of tool names.
    #[serde(default)]
    #[schema(value_type = Option<ToolsSchema>)]
    pub tools: Option<Value>,
    /// `"auto"`, `"none"`, `"required"` or
    /// `{"type":"function","function":{"name":"..."}}` (OpenAI `tool_choice`).
    #[serde(default)]
    #[schema(value_type = Option<ToolChoiceSchema>)]
    pub tool_choice: Option<Value>,
    /// `"delta"` (default) or `"accumulated"`: thinking and text steps carry
    /// `content` (the step so far) instead of `delta`, coalesced: at most one
    /// event per step every 100 ms while the reply streams, always one with
    /// the step's final content, sent before any other event; each event's
    /// `id` is the id of the last delta it includes.
    #[serde(default)]
    #[schema(value_type = Option<StreamMode>)]
    pub stream_mode: StreamMode,
}

/// Starts a reply and streams it; see the README's event reference.
#[utoipa::path(
    post,
    path = "/api/chat",
    operation_id = "post_chat",
    tag = "chat",
    summary = "Send a message and stream the reply",
    description = "Stores the user's message (creating a conversation when `conversation_id` is absent), starts \
        the reply and answers with its events as `text/event-stream`, each one an `SseEvent`: its `event:` \
        line names it, its `id:` line counts 1, 2, 3, ... within the reply and its `data:` is the JSON \
        payload of that name. Errors found before the stream starts are JSON error bodies; errors during the reply are a \
        terminal `error` event in a 200 stream.",
    request_body = ChatBody,
    responses(
        (status = 200, description = "The reply's events: `start`, `process_step`/`sources`, then `done` or \
            `error`", content_type = "text/event-stream", body = SseEvent),
        (status = 400, description = "`invalid_json` or `invalid_request`: malformed JSON, wrong types, unknown \
            fields, bad `tools`/`tool_choice`/`stream_mode`", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid API key", body = ErrorBody),
        (status = 404, description = "`not_found`: unknown `conversation_id`", body = ErrorBody),
        (status = 409, description = "`conversation_busy`: the conversation already has a reply running",
            body = ErrorBody),
        (status = 413, description = "`payload_too_large`: body over `http.max_body_bytes`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not sent as `application/json`", body = ErrorBody),
        (status = 422, description = "`validation_failed` (blank or too-long message, value out of range, \
            unknown tool or provider, no model) or `conversation_too_long`", body = ErrorBody),
        (status = 429, description = "`rate_limited`, `too_many_replies` (`limits.concurrent_replies`) or \
            `too_many_streams` (`limits.concurrent_streams`); no reply was started", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 500, description = "`internal`: a database failure", body = ErrorBody),
        (status = 503, description = "`shutting_down`: the server is draining", body = ErrorBody),
    )
)]
pub async fn post_chat(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    ApiJson(body): ApiJson<ChatBody>,
) -> Result<Response, ApiError> {
    let mode = body.stream_mode;
    let mut input = body.into_input()?;
    let caller = caller_of(caller);
    // Both slots before the turn is committed: a refused request starts nothing.
    let Some(stream) = state.access.stream_slot(&caller) else {
        return Ok(too_many_streams(&state));
    };
    let Some(slot) = state.access.reply_slot(&caller) else {
        let limit = state.chat.config().limits.concurrent_replies;
        return Ok(too_many(
            "too_many_replies",
            format!("this key already has {limit} replies running; wait for one to finish"),
            1,
        ));
    };
    input.guard = Some(Box::new(slot));
    let reply = state.chat.start(input).await?;
    Ok(sse_response(&reply, 0, mode, &state.chat.config().chat, stream))
}

/// The caller the access middleware found (`anonymous` without one).
fn caller_of(caller: Option<Extension<Caller>>) -> Caller {
    caller
        .map(|Extension(c)| c)
        .unwrap_or_else(|| Caller("anonymous".into()))
}

/// The 429 `too_many_streams` answer (with `Retry-After: 1`) when all of a
/// caller's `limits.concurrent_streams` slots are held.
fn too_many_streams(state: &AppState) -> Response {
    let limit = state.chat.config().limits.concurrent_streams;
    too_many(
        "too_many_streams",
        format!(
            "this key already has {limit} event streams open (limits.concurrent_streams); close one \
             (a chat stream or a GET /api/chat/{{message_id}}/events) and retry"
        ),
        1,
    )
}

/// Query of `GET /api/chat/{message_id}/events`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ResumeQuery {
    /// Replay the events after this id (the `Last-Event-ID` header wins).
    #[serde(default)]
    #[param(value_type = u64)]
    after: Option<u64>,
    /// `delta` (default) or `accumulated` (`content` in place of `delta`,
    /// coalesced as on `POST /api/chat`; events already produced come as one
    /// event per step with its full content, whose `id` is the step's last
    /// delta: a step that ends at or before `Last-Event-ID` is not sent again,
    /// one that goes on past it is sent whole).
    #[serde(default)]
    #[param(value_type = StreamMode)]
    stream_mode: StreamMode,
}

/// `GET /api/chat/{message_id}/events`: the reply's events after the one
/// named by `Last-Event-ID` (or `?after=N`), with their original ids, then
/// live until the terminal event.
#[utoipa::path(
    get,
    path = "/api/chat/{message_id}/events",
    operation_id = "resume_chat",
    tag = "chat",
    summary = "Resume a reply's event stream",
    description = "Replays the reply's events after the one named by `Last-Event-ID` (or `?after=N`; the \
        header wins), with their original ids, then follows the reply live until its terminal event.",
    params(
        ("message_id" = Uuid, Path, description = "The assistant message (the `message_id` of `start`)"),
        ("Last-Event-ID" = Option<u64>, Header, nullable = false,
            description = "The id of the last event received; wins over `after`"),
        ResumeQuery,
    ),
    responses(
        (status = 200, description = "The reply's events after the given id", content_type = "text/event-stream",
            body = SseEvent),
        (status = 400, description = "`invalid_id` (not a UUID) or `invalid_request` (bad query or \
            `Last-Event-ID`)", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid API key", body = ErrorBody),
        (status = 404, description = "`not_found`: no assistant message has that id", body = ErrorBody),
        (status = 429, description = "`rate_limited`, or `too_many_streams`: the key already has \
            `limits.concurrent_streams` event streams open", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 500, description = "`internal`: a database failure", body = ErrorBody),
    )
)]
pub async fn resume(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<ResumeQuery>,
) -> Result<Response, ApiError> {
    let message_id = parse_uuid("message id", &id)?;
    let after = match headers.get("last-event-id") {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| ApiError::invalid_request("Last-Event-ID must be a whole number (an event id)"))?,
        None => query.after.unwrap_or(0),
    };
    let Some(stream) = state.access.stream_slot(&caller_of(caller)) else {
        return Ok(too_many_streams(&state));
    };
    let reply = state.chat.reply_for_resume(message_id).await?;
    Ok(sse_response(
        &reply,
        after,
        query.stream_mode,
        &state.chat.config().chat,
        stream,
    ))
}

/// Body of `POST /api/chat/{message_id}/approve`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveBody {
    /// The `id_ref` of the `tool_approval` step.
    pub tool_call_id: String,
    pub approved: bool,
    /// Why (given to the model when the call is declined).
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST /api/chat/{message_id}/approve`: 200 `{"message_id","tool_call_id","approved"}`;
/// 404 when no running reply has that id; 409 `not_pending` when that call
/// is not waiting for approval.
#[utoipa::path(
    post,
    path = "/api/chat/{message_id}/approve",
    operation_id = "approve_tool_call",
    tag = "chat",
    summary = "Approve or decline a tool call",
    description = "Lets the tool call named by a `tool_approval` step run, or declines it (the model is told, \
        with the reason).",
    params(("message_id" = Uuid, Path, description = "The running reply's assistant message")),
    request_body = ApproveBody,
    responses(
        (status = 200, description = "The decision was delivered", body = ApproveResponse),
        (status = 400, description = "`invalid_id`, `invalid_json` or `invalid_request`", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid API key", body = ErrorBody),
        (status = 404, description = "`not_found`: no running reply has that id", body = ErrorBody),
        (status = 409, description = "`not_pending`: that call is not waiting for approval", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: body over `http.max_body_bytes`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not sent as `application/json`", body = ErrorBody),
        (status = 429, description = "`rate_limited`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 500, description = "`internal`", body = ErrorBody),
    )
)]
pub async fn approve(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<ApproveBody>,
) -> Result<Json<Value>, ApiError> {
    let message_id = parse_uuid("message id", &id)?;
    state
        .chat
        .approve(message_id, &body.tool_call_id, body.approved, body.reason)?;
    Ok(Json(
        json!({"message_id": message_id, "tool_call_id": body.tool_call_id, "approved": body.approved}),
    ))
}

/// `POST /api/chat/{message_id}/cancel`: 200 `{"message_id","status":"cancelled"}`
/// once the reply is stored as cancelled (also when it already was); 404 for
/// an unknown message; 409 `reply_finished` for a reply that ended otherwise.
#[utoipa::path(
    post,
    path = "/api/chat/{message_id}/cancel",
    operation_id = "cancel_reply",
    tag = "chat",
    summary = "Cancel a reply",
    description = "Stops the reply (dropping the upstream request and running tools) and answers once it is \
        stored as `cancelled`; also 200 when it already was.",
    params(("message_id" = Uuid, Path, description = "The reply's assistant message")),
    responses(
        (status = 200, description = "The reply is stored as cancelled", body = CancelResponse),
        (status = 400, description = "`invalid_id`: not a UUID", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid API key", body = ErrorBody),
        (status = 404, description = "`not_found`: no such message", body = ErrorBody),
        (status = 409, description = "`reply_finished`: the reply ended otherwise", body = ErrorBody),
        (status = 429, description = "`rate_limited`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 500, description = "`internal`: a database failure", body = ErrorBody),
    )
)]
pub async fn cancel(State(state): State<AppState>, ApiPath(id): ApiPath<String>) -> Result<Json<Value>, ApiError> {
    let message_id = parse_uuid("message id", &id)?;
    state.chat.cancel(message_id).await?;
    Ok(Json(json!({"message_id": message_id, "status": "cancelled"})))
}

impl ChatBody {
    fn into_input(self) -> Result<ChatInput, ApiError> {
        let max_tokens = self
            .max_tokens
            .map(|n| {
                u32::try_from(n).ok().filter(|n| *n >= 1).ok_or_else(|| {
                    ApiError::validation(format!("max_tokens must be between 1 and {}, got {n}", u32::MAX))
                })
            })
            .transpose()?;
        Ok(ChatInput {
            message: self.message,
            project_id: self.project_id,
            conversation_id: self.conversation_id,
            settings: SettingsInput {
                model: self.model,
                provider: self.provider,
                system_prompt: self.system_prompt,
                temperature: self.temperature,
                max_tokens,
                thinking: self.thinking,
            },
            guard: None,
            tools: parse_tools(self.tools)?,
            tool_choice: self.tool_choice.map(parse_tool_choice).transpose()?,
        })
    }
}

fn parse_tools(value: Option<Value>) -> Result<ToolSelection, ApiError> {
    match value {
        None | Some(Value::Bool(true)) => Ok(ToolSelection::All),
        Some(Value::Bool(false)) => Ok(ToolSelection::None),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                other => Err(ApiError::invalid_request(format!(
                    "tools: expected tool names (strings), got {other}"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(ToolSelection::Only),
        Some(other) => Err(ApiError::invalid_request(format!(
            "tools: expected true, false or a list of tool names, got {other}"
        ))),
    }
}

fn parse_tool_choice(value: Value) -> Result<ToolChoice, ApiError> {
    let bad = |v: &Value| {
        ApiError::invalid_request(format!(
            "tool_choice: expected \"auto\", \"none\", \"required\" or {{\"type\":\"function\",\"function\":{{\"name\":\"...\"}}}}, got {v}"
        ))
    };
    match &value {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Required),
            _ => Err(bad(&value)),
        },
        Value::Object(map) => {
            let is_function = map.get("type").and_then(Value::as_str) == Some("function");
            let name = map.get("function").and_then(|f| f.get("name")).and_then(Value::as_str);
            match (is_function, name) {
                (true, Some(name)) if map.len() == 2 => Ok(ToolChoice::Function(name.to_string())),
                _ => Err(bad(&value)),
            }
        }
        _ => Err(bad(&value)),
    }
}
