//! Operator routes: under `/admin`, behind the admin key, reload the tenant files and see
//! each tenant's terms and live limiter state (never keys); and the Prometheus text of the
//! metrics listener.

use super::AppState;
use crate::error::ApiError;
use crate::infer::ModelHandle;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;

/// Re-reads tiers, tenants and keys. A file that does not validate keeps the old directory
/// and answers 422 with the reason; requests keep flowing either way. A reload that comes
/// while another runs waits for it (`app::reload`).
pub async fn reload(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    match crate::app::reload(&state) {
        Ok(d) => Ok(Json(json!({
            "status": "reloaded",
            "tiers": d.tiers.len(),
            "tenants": d.tenants.len(),
            "keys": d.key_count(),
            "skipped_keys": d.skipped_keys(),
        }))),
        Err(e) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request_error",
            format!("reload failed; the previous configuration stays in force: {e}"),
        )
        .with_code("invalid_config")),
    }
}

pub async fn tenants(State(state): State<Arc<AppState>>) -> Json<Value> {
    let directory = state.tenancy.directory();
    let limiter = &state.tenancy.limiter;
    let tenants: Vec<Value> = directory
        .tenants
        .values()
        .map(|t| {
            let s = limiter.status(t);
            json!({
                "id": t.id,
                "name": t.name,
                "tier": t.tier,
                "grant": t.grant,
                "in_flight": limiter.in_flight(&t.id),
                "remaining_requests": s.remaining_requests,
                "remaining_tokens": s.remaining_tokens,
                "terms": {
                    "requests_per_minute": t.terms.requests_per_minute,
                    "tokens_per_minute": t.terms.tokens_per_minute,
                    "max_concurrent": t.terms.max_concurrent,
                    "subsidy_rate": t.terms.subsidy_rate,
                    "monthly_budget_hkd": t.terms.monthly_budget_hkd,
                    "weight": t.terms.weight,
                },
            })
        })
        .collect();
    Json(json!({"object": "list", "data": tenants}))
}

/// Prometheus exposition text; the figures read from live state are refreshed first.
pub async fn metrics_text(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let m = crate::metrics::get();
    for (name, handle) in state.engine.models() {
        let waiting = match handle {
            ModelHandle::Generate(g) => g.queued(),
            ModelHandle::Embed(e) => e.queued(),
        };
        m.waiting
            .with_label_values(&[name.as_str()])
            .set(waiting as i64);
    }
    for r in &state.engine.replicas {
        let replica = r.index.to_string();
        m.replica_ready
            .with_label_values(&[r.model.as_str(), &replica, &r.device])
            .set(i64::from(r.is_ready()));
    }
    let tiers = state.tenancy.directory().classes.names().to_vec();
    let mut admitted = vec![0u64; tiers.len()];
    for (_, handle) in state.engine.models() {
        let served = match handle {
            ModelHandle::Generate(g) => g.served_tokens(),
            ModelHandle::Embed(e) => e.served_tokens(),
        };
        for (class, tokens) in served.into_iter().enumerate().take(admitted.len()) {
            admitted[class] += tokens;
        }
    }
    for (tier, tokens) in tiers.iter().zip(admitted) {
        m.admitted_tokens
            .with_label_values(&[tier.as_str()])
            .set(tokens as i64);
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m.render(),
    )
}
