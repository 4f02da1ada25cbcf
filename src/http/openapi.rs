//! The OpenAPI 3.1 document of the HTTP API, served at `GET /api/openapi.json`.
//!
//! It is generated from the code: the handlers' `#[utoipa::path]`
//! annotations, and `utoipa::ToSchema` on the request bodies, the stored rows,
//! the error body and the SSE event payloads. The types below exist only to
//! describe the bodies that handlers build with `json!`; they are never
//! constructed.

use std::borrow::Cow;
use std::sync::OnceLock;

use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};
use uuid::Uuid;

use crate::domain::{Conversation, Message};
use crate::domain::{DoneEvent, ErrorEvent, SourcesEvent, StartEvent, StepEvent, StepKind, UsageTotals};
use crate::tools::{SourceStatus, ToolInfo};

/// The document. Every route of [`super::router`] is listed in `paths`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "chatd",
        description = "Streams LLM chat replies over Server-Sent Events, runs tool calls server-side and keeps \
            conversations in SQLite.\n\nEvery error, on every route (also unknown routes: 404 `not_found`, and \
            wrong methods: 405 `method_not_allowed`), is a JSON `ErrorBody` \
            `{\"error\": {\"code\", \"message\"}}` with a stable `code`.\n\nWhen API keys are configured, every \
            route but `/healthz`, `/readyz`, `/metrics` and `/api/openapi.json` needs \
            `Authorization: Bearer <key>` (else 401 `unauthorized`) and is rate limited per key (429 \
            `rate_limited` with `Retry-After`).\n\n`POST /api/chat` and `GET /api/chat/{message_id}/events` \
            answer `text/event-stream`: each event has `id:` (1, 2, 3, ... within the reply), `event:` (`start`, \
            `process_step`, `sources`, `done` or `error`) and `data:` (the JSON payload described by the \
            `SseEvent` schema)."
    ),
    paths(
        super::chat::post_chat,
        super::chat::resume,
        super::chat::cancel,
        super::chat::approve,
        super::conversations::list,
        super::conversations::create,
        super::conversations::get_one,
        super::conversations::patch,
        super::conversations::delete,
        super::conversations::messages,
        super::conversations::message,
        super::health::tools,
        super::models::list,
        super::health::healthz,
        super::health::readyz,
        super::metrics::render,
        openapi_json,
    ),
    components(schemas(
        SseEvent,
        StartEvent,
        StepEvent,
        StepKind,
        SourcesEvent,
        DoneEvent,
        UsageTotals,
        ErrorEvent,
        super::error::ErrorBody,
    )),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "chat", description = "Send messages and follow, resume, cancel or approve replies"),
        (name = "conversations", description = "Conversations and their stored messages"),
        (name = "tools", description = "The tools the model can call"),
        (name = "models", description = "The configured providers and their models"),
        (name = "health", description = "Liveness, readiness and metrics (no API key needed)"),
        (name = "meta", description = "This document (no API key needed)"),
    )
)]
pub struct ApiDoc;

/// Adds the `bearer` security scheme (the API keys of `api_keys`).
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "One of the configured API keys (`api_keys`, `CHATD_API_KEYS`). Required on every route \
                         but the open ones when keys are configured.",
                    ))
                    .build(),
            ),
        );
    }
}

/// `GET /api/openapi.json`: this document (built once).
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    operation_id = "openapi",
    tag = "meta",
    summary = "This OpenAPI document",
    security(),
    responses((status = 200, description = "The OpenAPI 3.1 document", body = OpenApiDocument))
)]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    static DOCUMENT: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    Json(DOCUMENT.get_or_init(ApiDoc::openapi).clone())
}

/// One event of the `text/event-stream` answer of `POST /api/chat` and
/// `GET /api/chat/{message_id}/events`: its `event:` name, its `id:` and its
/// JSON `data:`, whose schema depends on the name. (The OpenAPI 3.2 reading of
/// an event stream's schema, which schemathesis also applies to 3.1.)
pub struct SseEvent;

impl SseEvent {
    /// Every event name with its payload schema and what it means.
    fn kinds() -> [(&'static str, Cow<'static, str>, &'static str); 5] {
        [
            (
                "start",
                StartEvent::name(),
                "the first event: the reply has begun; its rows exist in the database.",
            ),
            (
                "process_step",
                StepEvent::name(),
                "a step: thinking or text (a `delta`, or `content` in accumulated mode, coalesced: see \
                 `stream_mode`), a tool call, a tool approval request or a tool result.",
            ),
            ("sources", SourcesEvent::name(), "documents a tool cited."),
            (
                "done",
                DoneEvent::name(),
                "the terminal event when the reply ended normally (or was cancelled) and is stored.",
            ),
            (
                "error",
                ErrorEvent::name(),
                "the terminal event when the reply failed; what was produced before is stored.",
            ),
        ]
    }
}

impl PartialSchema for SseEvent {
    fn schema() -> RefOr<Schema> {
        let mut one_of = OneOfBuilder::new().description(Some(
            "One Server-Sent Event of a reply. Every event has `id:` (its 1-based position in the reply: send the \
             last one seen as `Last-Event-ID` to resume), `event:` (its name) and `data:` (its JSON payload, by \
             name: `start` → StartEvent, `process_step` → StepEvent, `sources` → SourcesEvent, `done` → \
             DoneEvent, `error` → ErrorEvent). A reply is `start`, any number of `process_step` and `sources`, \
             then exactly one terminal `done` or `error`. Keep-alive comment lines (`:`) come in between.",
        ));
        for (event, payload, meaning) in Self::kinds() {
            let name = ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some([event]));
            let id = ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[1-9][0-9]*$"))
                .description(Some("The event's 1-based position in the reply"));
            let data = ObjectBuilder::new()
                .schema_type(Type::String)
                .content_media_type("application/json")
                .content_schema(Some(Ref::from_schema_name(payload)))
                .description(Some("The JSON payload"));
            one_of = one_of.item(
                ObjectBuilder::new()
                    .description(Some(format!("`{event}`: {meaning}")))
                    .property("event", name)
                    .property("id", id)
                    .property("data", data)
                    .required("event")
                    .required("id")
                    .required("data"),
            );
        }
        one_of.into()
    }
}

impl ToSchema for SseEvent {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("SseEvent")
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        fn add<T: ToSchema>(schemas: &mut Vec<(String, RefOr<Schema>)>) {
            schemas.push((T::name().into_owned(), T::schema()));
            T::schemas(schemas);
        }
        add::<StartEvent>(schemas);
        add::<StepEvent>(schemas);
        add::<SourcesEvent>(schemas);
        add::<DoneEvent>(schemas);
        add::<ErrorEvent>(schemas);
    }
}

/// An OpenAPI 3.1 document (only its required top-level fields are described).
#[derive(ToSchema)]
pub struct OpenApiDocument {
    #[schema(pattern = r"^3\.1\.\d+$")]
    pub openapi: String,
    #[schema(value_type = Object)]
    pub info: (),
    #[schema(value_type = Object)]
    pub paths: (),
}

/// `GET /api/conversations`: one page, most recently updated first.
#[derive(ToSchema)]
pub struct ConversationList {
    pub conversations: Vec<Conversation>,
    /// Pass as `before` for the next page; `null` on the last page.
    pub next_before: Option<Uuid>,
}

/// `GET /api/conversations/{id}/messages`: one page of messages, oldest
/// first.
#[derive(ToSchema)]
pub struct MessageList {
    pub messages: Vec<Message>,
    /// Pass as `before` for the previous (older) page: the page's oldest
    /// message; `null` on the page that holds the first message.
    pub next_before: Option<Uuid>,
}

/// `POST /api/chat/{message_id}/approve`: the decision that was delivered.
#[derive(ToSchema)]
pub struct ApproveResponse {
    pub message_id: Uuid,
    pub tool_call_id: String,
    pub approved: bool,
}

/// `POST /api/chat/{message_id}/cancel`: the reply is stored as cancelled.
#[derive(ToSchema)]
pub struct CancelResponse {
    pub message_id: Uuid,
    pub status: CancelledStatus,
}

/// Always `cancelled`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CancelledStatus {
    Cancelled,
}

/// `GET /api/tools`.
#[derive(ToSchema)]
pub struct ToolList {
    /// Every tool, sorted by name.
    pub tools: Vec<ToolInfo>,
    /// Every tool source that can fail (MCP servers), by name.
    pub sources: Vec<SourceStatus>,
}

/// `GET /api/models`.
#[derive(ToSchema)]
pub struct ModelList {
    /// Each provider's models, in provider order; a model served by two
    /// providers is listed once per provider.
    pub models: Vec<ModelEntry>,
    /// Every provider, in configuration order.
    pub providers: Vec<ProviderStatus>,
}

/// A model and the provider that serves it.
#[derive(ToSchema)]
pub struct ModelEntry {
    pub id: String,
    /// A `[[providers]]` name (`default` for `[llm]`).
    pub provider: String,
}

/// Whether a provider answered its `GET /models`.
#[derive(ToSchema)]
pub struct ProviderStatus {
    pub name: String,
    pub reachable: bool,
    /// Why it was not reachable (no URL or address: the server log has the
    /// detail); `null` when it was. Provider base URLs are not shown.
    pub error: Option<String>,
}

/// `GET /healthz` (`ok`) and `GET /readyz` (`ready`).
#[derive(ToSchema)]
pub struct HealthStatus {
    #[schema(examples("ok", "ready"))]
    pub status: String,
}

/// The `tools` field of `POST /api/chat`: `true` (every tool), `false` (none)
/// or a list of tool names.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum ToolsSchema {
    All(bool),
    Names(Vec<String>),
}

/// The `tool_choice` field of `POST /api/chat` (OpenAI `tool_choice`).
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum ToolChoiceSchema {
    Mode(ToolChoiceMode),
    Function(NamedToolChoice),
}

/// Whether the model may (`auto`), must not (`none`) or must (`required`) call a tool.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ToolChoiceMode {
    Auto,
    None,
    Required,
}

/// Forces a call of the named function.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NamedToolChoice {
    #[serde(rename = "type")]
    pub kind: FunctionKind,
    pub function: FunctionName,
}

/// Always `function`.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FunctionKind {
    Function,
}

/// The function a [`NamedToolChoice`] names.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct FunctionName {
    pub name: String,
}
