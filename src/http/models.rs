//! `GET /api/models`: the models every configured provider offers.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::AppState;
use super::error::ErrorBody;
use super::openapi::ModelList;

/// `GET /api/models`:
///
/// ```json
/// {"models": [{"id": "qwen3:8b", "provider": "local"}, ...],
///  "providers": [{"name": "local", "reachable": true, "error": null}, ...]}
/// ```
///
/// Providers come in configuration order. Each provider's models are its
/// configured `models` and `default_model`, then the ids its `GET /models`
/// returned, without duplicates; a model served by two providers is listed
/// once per provider. The upstream lists are fetched concurrently, at most
/// 2 s each; a provider that did not answer in time, or answered with an
/// error, has `reachable: false`, the reason in `error`, and only its
/// configured models. No provider's base URL or address is shown (every
/// caller sees this list; the server log has the detail). Always 200.
#[utoipa::path(
    get,
    path = "/api/models",
    operation_id = "list_models",
    tag = "models",
    summary = "List every provider's models",
    description = "Each provider's configured models, then the ids its `GET /models` returned (2 s limit), \
        without duplicates; `providers` says which providers answered.",
    responses(
        (status = 200, description = "Models and providers", body = ModelList),
        (status = 401, description = "`unauthorized`: no valid API key", body = ErrorBody),
        (status = 429, description = "`rate_limited`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 500, description = "`internal`", body = ErrorBody),
    )
)]
pub async fn list(State(state): State<AppState>) -> Json<Value> {
    let listing = state.models.list().await;
    Json(json!({"models": listing.models, "providers": listing.providers}))
}
