//! tiergate: a tiered, OpenAI-compatible inference gateway in front of candle models.
//!
//! Data flow of one request: an HTTP handler (`http`) parses the JSON body with our error
//! shape and finds the model -> the infer layer (`infer`) validates and tokenizes it and puts
//! it on that model's bounded queue (503 + Retry-After when full) -> a replica's worker thread
//! takes it into a free sequence slot when it has one and decodes all live sequences together,
//! step by step, on a model it owns (`backend`, candle on a CPU or CUDA device) -> text flows
//! back to the handler over a per-request bounded channel; dropping that channel (client gone)
//! cancels the sequence and frees its slot. Model files come from `models/` manifests, verified
//! by sha256 (`models`); everything tunable lives in one `config::Config`. Connections are
//! accepted, capped and timed out by `conn`, in front of the router.

pub mod account;
pub mod app;
pub mod backend;
pub mod config;
pub mod conn;
pub mod error;
pub mod http;
pub mod infer;
pub mod ledger;
pub mod metrics;
pub mod models;
pub mod outcome;
pub mod tenancy;

pub use app::AppState;
pub use http::router;

use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Serves the API on `listener` until `shutdown` resolves, then stops accepting and lets
/// running requests finish. Connections are bounded by `[connections]` of the config.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.config.connections.clone();
    conn::serve(listener, router(state), &limits, "api", shutdown).await
}

/// Serves `GET /metrics` (Prometheus text) on `listener` until `shutdown` resolves. A scrape
/// reads atomics and briefly locks each model queue to count it; it never waits on a replica.
pub async fn serve_metrics(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.config.connections.clone();
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(http::metrics_text))
        .with_state(state);
    conn::serve(listener, app, &limits, "metrics", shutdown).await
}
