//! The OpenAI-compatible HTTP API. Handlers are thin: parse (with our error shape), look up the
//! model, admit the request against the tenant's limits, call the infer layer, shape the
//! answer. `auth::gate` runs in front of every route.

mod admin;
mod answer;
mod auth;
mod dto;
mod extract;
mod generation;
mod handlers;
mod logprobs;
mod messages;
mod responses;
mod responses_out;
mod responses_params;
mod tool_calls;
mod tools;

pub use admin::metrics_text;
pub use generation::unix_now;

pub use crate::app::AppState;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;

pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.config.limits.max_body_bytes;
    Router::new()
        .route("/v1/chat/completions", post(handlers::chat))
        .route("/v1/completions", post(handlers::completions))
        .route("/v1/embeddings", post(handlers::embeddings))
        .route("/v1/responses", post(responses::create))
        .route(
            "/v1/responses/{id}",
            get(responses::not_stored).delete(responses::not_stored),
        )
        .route("/v1/responses/{id}/input_items", get(responses::not_stored))
        .route("/v1/responses/{id}/cancel", post(responses::not_stored))
        .route("/v1/models", get(handlers::list_models))
        .route("/v1/models/{id}", get(handlers::get_model))
        .route("/tokenize", post(handlers::tokenize))
        .route("/detokenize", post(handlers::detokenize))
        .route("/health", get(handlers::health))
        .route("/ready", get(handlers::ready))
        .route("/admin/reload", post(admin::reload))
        .route("/admin/tenants", get(admin::tenants))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::gate,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}
