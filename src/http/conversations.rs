//! Conversation routes: list, create, read, patch, delete, and messages.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, parse_uuid};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use crate::chat::{SettingsInput, validate_settings};
use crate::store::{ConversationPatch, NewConversation};

/// Query of `GET /api/conversations`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// 1..=200, default 50.
    #[serde(default)]
    limit: Option<i64>,
    /// A conversation id from the previous page's `next_before`.
    #[serde(default)]
    before: Option<String>,
}

/// `GET /api/conversations`: `{"conversations": [...], "next_before": id|null}`,
/// most recently updated first.
pub async fn list(State(state): State<AppState>, ApiQuery(q): ApiQuery<ListQuery>) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(50);
    let limit = u32::try_from(limit)
        .ok()
        .filter(|l| (1..=200).contains(l))
        .ok_or_else(|| ApiError::validation(format!("limit must be between 1 and 200, got {limit}")))?;
    let before = q.before.as_deref().map(|b| parse_uuid("before", b)).transpose()?;
    let page = state
        .chat
        .store()
        .list_conversations(limit, before)
        .await?
        .ok_or_else(|| ApiError::not_found("the conversation named by `before` does not exist"))?;
    let next_before = (page.len() == limit as usize)
        .then(|| page.last().map(|c| c.id))
        .flatten();
    Ok(Json(json!({"conversations": page, "next_before": next_before})))
}

/// Body of `POST /api/conversations`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    model: Option<String>,
    /// A `[[providers]]` name the conversation is pinned to.
    #[serde(default)]
    provider: Option<String>,
    /// The project whose workspace the tools work in (set once, here).
    #[serde(default)]
    project_id: Option<String>,
    #[serde(default)]
    system_prompt: Option<String>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    thinking: Option<bool>,
}

/// `POST /api/conversations`: 201 with the new conversation.
pub async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<impl IntoResponse, ApiError> {
    validate_settings(&SettingsInput {
        model: body.model.clone(),
        provider: body.provider.clone(),
        system_prompt: None,
        temperature: body.temperature,
        max_tokens: body.max_tokens,
        thinking: None,
    })?;
    if let Some(project) = &body.project_id {
        crate::chat::validate_project_id(project)?;
    }
    let c = state
        .chat
        .store()
        .create_conversation(NewConversation {
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
pub async fn get_one(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_uuid("conversation id", &id)?;
    let c = state.chat.store().conversation(id).await?.ok_or_else(|| missing(id))?;
    Ok(Json(c))
}

/// Body of `PATCH /api/conversations/{id}`: a field that is present sets the
/// value; `null` clears it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchBody {
    #[serde(default, deserialize_with = "present")]
    title: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    model: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    provider: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    system_prompt: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    temperature: Option<Option<f64>>,
    #[serde(default, deserialize_with = "present")]
    max_tokens: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
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
pub async fn patch(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<PatchBody>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_uuid("conversation id", &id)?;
    validate_settings(&SettingsInput {
        model: body.model.clone().flatten(),
        provider: body.provider.clone().flatten(),
        system_prompt: None,
        temperature: body.temperature.flatten(),
        max_tokens: body.max_tokens.flatten(),
        thinking: None,
    })?;
    let patch = ConversationPatch {
        title: body.title,
        model: body.model,
        provider: body.provider,
        system_prompt: body.system_prompt,
        temperature: body.temperature,
        max_tokens: body.max_tokens,
        thinking: body.thinking,
    };
    let c = state
        .chat
        .store()
        .update_conversation(id, patch)
        .await?
        .ok_or_else(|| missing(id))?;
    Ok(Json(c))
}

/// `DELETE /api/conversations/{id}`: 204; its messages are deleted too.
pub async fn delete(State(state): State<AppState>, ApiPath(id): ApiPath<String>) -> Result<StatusCode, ApiError> {
    let id = parse_uuid("conversation id", &id)?;
    if state.chat.store().delete_conversation(id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(missing(id))
    }
}

/// `GET /api/conversations/{id}/messages`: `{"messages": [...]}`, oldest first.
pub async fn messages(State(state): State<AppState>, ApiPath(id): ApiPath<String>) -> Result<Json<Value>, ApiError> {
    let id = parse_uuid("conversation id", &id)?;
    let store = state.chat.store();
    if store.conversation(id).await?.is_none() {
        return Err(missing(id));
    }
    Ok(Json(json!({"messages": store.messages(id).await?})))
}

fn missing(id: uuid::Uuid) -> ApiError {
    ApiError::not_found(format!("conversation {id} not found"))
}
