//! Conversation routes: list, create, read, patch, delete, and messages.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, ErrorBody, parse_uuid};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::openapi::{ConversationList, MessageList};
use crate::chat::ConversationService;
use crate::domain::{Conversation, ConversationPatch, Message, NewConversation};

/// Query of `GET /api/conversations`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// 1..=200, default 50.
    #[serde(default)]
    #[param(value_type = i64, minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// A conversation id from the previous page's `next_before`.
    #[serde(default)]
    #[param(value_type = uuid::Uuid)]
    before: Option<String>,
}

/// `GET /api/conversations`: `{"conversations": [...], "next_before": id|null}`,
/// most recently updated first.
#[utoipa::path(
    get,
    path = "/api/conversations",
    operation_id = "list_conversations",
    tag = "conversations",
    summary = "List conversations",
    description = "Most recently updated first, a page at a time: pass the previous page's `next_before` as \
        `before`.",
    params(ListQuery),
    responses(
        (status = 200, description = "One page of conversations", body = ConversationList),
        (status = 400, description = "`invalid_request` (bad query) or `invalid_id` (`before` is not a UUID)",
            body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid API key", body = ErrorBody),
        (status = 404, description = "`not_found`: the conversation named by `before` does not exist",
            body = ErrorBody),
        (status = 422, description = "`validation_failed`: `limit` out of range", body = ErrorBody),
        (status = 429, description = "`rate_limited`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 500, description = "`internal`: a database failure", body = ErrorBody),
    )
)]
pub async fn list(State(state): State<AppState>, ApiQuery(q): ApiQuery<ListQuery>) -> Result<Json<Value>, ApiError> {
    let limit = ConversationService::page_size(q.limit)?;
    let before = q.before.as_deref().map(|b| parse_uuid("before", b)).transpose()?;
    let page = state.conversations.list(limit, before).await?;
    Ok(Json(
        json!({"conversations": page.conversations, "next_before": page.next_before}),
    ))
}

/// Body of `POST /api/conversations`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    #[serde(default)]
    title: Option<String>,
    /// Not blank.
    #[serde(default)]
    #[schema(pattern = r"\S")]
    model: Option<String>,
    /// A `[[providers]]` name the conversation is pinned to.
    #[serde(default)]
    #[schema(pattern = r"\S")]
    provider: Option<String>,
    /// The project whose workspace the tools work in (set once, here).
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    project_id: Option<String>,
    #[serde(default)]
    system_prompt: Option<String>,
    /// 0..=2.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 2)]
    temperature: Option<f64>,
    /// Most completion tokens per model round: at least 1 and at most
    /// `chat.max_tokens_ceiling` (32768 by default; above it: 422
    /// `validation_failed`).
    #[serde(default)]
    #[schema(format = Int64, minimum = 1, maximum = 4294967295_i64)]
    max_tokens: Option<u32>,
    #[serde(default)]
    thinking: Option<bool>,
}

/// `POST /api/conversations`: 201 with the new conversation.
#[utoipa::path(
    post,
    path = "/api/conversations",
    operation_id = "create_conversation",
    tag = "conversations",
    summary = "Create a conversation",
    request_body = CreateBody,
    responses(
        (status = 201, description = "The new conversation", body = Conversation),
        (status = 400, description = "`invalid_json` or `invalid_request`", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid API key", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: body over `http.max_body_bytes`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not sent as `application/json`", body = ErrorBody),
        (status = 422, description = "`validation_failed`: a value out of range, a blank model or provider, a \
            bad `project_id`", body = ErrorBody),
        (status = 429, description = "`rate_limited`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 500, description = "`internal`: a database failure", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<impl IntoResponse, ApiError> {
    let c = state
        .conversations
        .create(NewConversation {
            title: body.title,
            model: body.model,
            provider: body.provider,
            project_id: body.project_id,
            system_prompt: body.system_prompt,
            temperature: body.temperature,
            max_tokens: body.max_tokens,
            thinking: body.thinking,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(c)))
}

/// `GET /api/conversations/{id}`.
#[utoipa::path(
    get,
    path = "/api/conversations/{id}",
    operation_id = "get_conversation",
    tag = "conversations",
    summary = "Read a conversation",
    params(("id" = uuid::Uuid, Path, description = "Conversation id")),
    responses(
        (status = 200, description = "The conversation", body = Conversation),
        (status = 400, description = "`invalid_id`: not a UUID", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid API key", body = ErrorBody),
        (status = 404, description = "`not_found`: no such conversation", body = ErrorBody),
        (status = 429, description = "`rate_limited`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 500, description = "`internal`: a database failure", body = ErrorBody),
    )
)]
pub async fn get_one(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_uuid("conversation id", &id)?;
    Ok(Json(state.conversations.get(id).await?))
}

/// Body of `PATCH /api/conversations/{id}`: a field that is present sets the
/// value; `null` clears it.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchBody {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    title: Option<Option<String>>,
    /// Not blank; `null` clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, pattern = r"\S")]
    model: Option<Option<String>>,
    /// Not blank; `null` clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, pattern = r"\S")]
    provider: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    system_prompt: Option<Option<String>>,
    /// 0..=2.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<f64>, minimum = 0, maximum = 2)]
    temperature: Option<Option<f64>>,
    /// Most completion tokens per model round: at least 1 and at most
    /// `chat.max_tokens_ceiling` (32768 by default; above it: 422
    /// `validation_failed`).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>, format = Int64, minimum = 1, maximum = 4294967295_i64)]
    max_tokens: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<bool>)]
    thinking: Option<Option<bool>>,
}

/// Distinguishes a present `null` (`Some(None)`) from an absent field (`None`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// `PATCH /api/conversations/{id}`: the updated conversation.
#[utoipa::path(
    patch,
    path = "/api/conversations/{id}",
    operation_id = "update_conversation",
    tag = "conversations",
    summary = "Change a conversation's title or settings",
    description = "A field that is present sets the value; `null` clears it; an absent field is left alone.",
    params(("id" = uuid::Uuid, Path, description = "Conversation id")),
    request_body = PatchBody,
    responses(
        (status = 200, description = "The updated conversation", body = Conversation),
        (status = 400, description = "`invalid_id`, `invalid_json` or `invalid_request`", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid API key", body = ErrorBody),
        (status = 404, description = "`not_found`: no such conversation", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: body over `http.max_body_bytes`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not sent as `application/json`", body = ErrorBody),
        (status = 422, description = "`validation_failed`: a value out of range, a blank model or provider",
            body = ErrorBody),
        (status = 429, description = "`rate_limited`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 500, description = "`internal`: a database failure", body = ErrorBody),
    )
)]
pub async fn patch(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<PatchBody>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_uuid("conversation id", &id)?;
    let patch = ConversationPatch {
        title: body.title,
        model: body.model,
        provider: body.provider,
        system_prompt: body.system_prompt,
        temperature: body.temperature,
        max_tokens: body.max_tokens,
        thinking: body.thinking,
    };
    Ok(Json(state.conversations.patch(id, patch).await?))
}

/// `DELETE /api/conversations/{id}`: 204; its messages are deleted too.
#[utoipa::path(
    delete,
    path = "/api/conversations/{id}",
    operation_id = "delete_conversation",
    tag = "conversations",
    summary = "Delete a conversation and its messages",
    params(("id" = uuid::Uuid, Path, description = "Conversation id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "`invalid_id`: not a UUID", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid API key", body = ErrorBody),
        (status = 404, description = "`not_found`: no such conversation", body = ErrorBody),
        (status = 429, description = "`rate_limited`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 500, description = "`internal`: a database failure", body = ErrorBody),
    )
)]
pub async fn delete(State(state): State<AppState>, ApiPath(id): ApiPath<String>) -> Result<StatusCode, ApiError> {
    let id = parse_uuid("conversation id", &id)?;
    state.conversations.delete(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Query of `GET /api/conversations/{id}/messages`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MessagesQuery {
    /// 1..=200, default 50.
    #[serde(default)]
    #[param(value_type = i64, minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// A message id from the previous page's `next_before`: only older
    /// messages.
    #[serde(default)]
    #[param(value_type = uuid::Uuid)]
    before: Option<String>,
    /// `true`: each message carries its `steps` (default `false`).
    #[serde(default)]
    #[param(value_type = bool)]
    steps: Option<bool>,
}

/// `GET /api/conversations/{id}/messages`: `{"messages": [...],
/// "next_before": id|null}`, the newest `limit` messages older than
/// `before`, oldest first, without `steps` unless `?steps=true`.
#[utoipa::path(
    get,
    path = "/api/conversations/{id}/messages",
    operation_id = "list_messages",
    tag = "conversations",
    summary = "List a conversation's messages, a page at a time",
    description = "The newest `limit` messages (older than the message `before`, when given), returned oldest \
        first. To scroll back, pass the page's `next_before` as `before`; it is `null` on the page holding the \
        first message. Messages carry no `steps` unless `steps=true`; \
        `GET /api/conversations/{id}/messages/{message_id}` reads one message with its steps.",
    params(("id" = uuid::Uuid, Path, description = "Conversation id"), MessagesQuery),
    responses(
        (status = 200, description = "One page of messages, oldest first", body = MessageList),
        (status = 400, description = "`invalid_id` (the conversation id or `before` is not a UUID) or \
            `invalid_request` (bad query)", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid API key", body = ErrorBody),
        (status = 404, description = "`not_found`: no such conversation, or `before` is not one of its messages",
            body = ErrorBody),
        (status = 422, description = "`validation_failed`: `limit` out of range", body = ErrorBody),
        (status = 429, description = "`rate_limited`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 500, description = "`internal`: a database failure", body = ErrorBody),
    )
)]
pub async fn messages(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<MessagesQuery>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_uuid("conversation id", &id)?;
    let limit = ConversationService::page_size(q.limit)?;
    let before = q.before.as_deref().map(|b| parse_uuid("before", b)).transpose()?;
    let page = state
        .conversations
        .messages(id, limit, before, q.steps.unwrap_or(false))
        .await?;
    Ok(Json(
        json!({"messages": page.messages, "next_before": page.next_before}),
    ))
}

/// `GET /api/conversations/{id}/messages/{message_id}`: one message with
/// its `steps`.
#[utoipa::path(
    get,
    path = "/api/conversations/{id}/messages/{message_id}",
    operation_id = "get_message",
    tag = "conversations",
    summary = "Read one message with its steps",
    params(
        ("id" = uuid::Uuid, Path, description = "Conversation id"),
        ("message_id" = uuid::Uuid, Path, description = "A message of that conversation"),
    ),
    responses(
        (status = 200, description = "The message, with `steps`", body = Message),
        (status = 400, description = "`invalid_id`: an id is not a UUID", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid API key", body = ErrorBody),
        (status = 404, description = "`not_found`: no such conversation, or it has no such message",
            body = ErrorBody),
        (status = 429, description = "`rate_limited`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 500, description = "`internal`: a database failure", body = ErrorBody),
    )
)]
pub async fn message(
    State(state): State<AppState>,
    ApiPath((id, message_id)): ApiPath<(String, String)>,
) -> Result<Json<Message>, ApiError> {
    let id = parse_uuid("conversation id", &id)?;
    let message_id = parse_uuid("message id", &message_id)?;
    Ok(Json(state.conversations.message(id, message_id).await?))
}
