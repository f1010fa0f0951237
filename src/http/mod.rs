//! The OpenAI-compatible HTTP API. Handlers are thin: parse (with our error shape), look up the
//! model, call the infer layer, shape the answer.

mod dto;
mod extract;
mod generation;
mod handlers;

use crate::config::Config;
use crate::infer::Engine;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;

/// What every handler shares.
pub struct AppState {
    pub engine: Engine,
    pub config: Config,
    /// Unix time of start-up, reported as each model's `created`.
    pub started: u64,
}

impl AppState {
    pub fn new(engine: Engine, config: Config) -> Arc<Self> {
        Arc::new(AppState {
            engine,
            config,
            started: generation::unix_now(),
        })
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.config.limits.max_body_bytes;
    Router::new()
        .route("/v1/chat/completions", post(handlers::chat))
        .route("/v1/completions", post(handlers::completions))
        .route("/v1/embeddings", post(handlers::embeddings))
        .route("/v1/models", get(handlers::list_models))
        .route("/v1/models/{id}", get(handlers::get_model))
        .route("/tokenize", post(handlers::tokenize))
        .route("/detokenize", post(handlers::detokenize))
        .route("/health", get(handlers::health))
        .route("/ready", get(handlers::ready))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}
