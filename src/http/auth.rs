//! The gate in front of every route but `/health`: a per-IP flood guard (before any key is
//! looked at, so a key-guessing flood costs us one hash map probe), then the API key ->
//! tenant, then, on the way out, OpenAI's rate-limit headers from the tenant's buckets.
//! `/admin/*` routes take the separate admin key instead.

use super::AppState;
use crate::account::Caller;
use crate::error::ApiError;
use crate::tenancy::keys::KeyHash;
use crate::tenancy::{headers, ANONYMOUS};
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message)
        .with_code("invalid_api_key")
}

/// The client's `x-request-id` when it is short and plain, else a new one.
fn request_id_of(req: &Request) -> String {
    let given = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        });
    given.map_or_else(
        || format!("req-{:024x}", rand::random::<u128>() >> 32),
        str::to_string,
    )
}

/// Outermost layer: request id, span, and for requests no meter accounts for (errors before
/// a model is reached, model lists, probes), the count and the access line.
pub async fn gate(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let request_id = request_id_of(&req);
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_string();
    let span = tracing::info_span!("request", id = %request_id, route = %route);
    let started = Instant::now();
    let metered = Arc::new(AtomicBool::new(false));
    let ids = (request_id.clone(), route.clone(), metered.clone());
    let (mut response, tier) = authorize_and_run(state, req, next, ids)
        .instrument(span.clone())
        .await;
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    // Probes are not API traffic: counting /ready while models load would read as rejections.
    let probe = route == "/health" || route == "/ready";
    if !metered.load(Ordering::Acquire) && !probe {
        let tier = tier.as_deref().unwrap_or("none");
        let status = response.status().as_u16();
        span.in_scope(|| crate::account::unmetered(&route, tier, status, started));
    }
    response
}

/// Flood guard, then the key (or the admin key), then the handler. Returns the response and
/// the caller's tier, when known.
async fn authorize_and_run(
    state: Arc<AppState>,
    mut req: Request,
    next: Next,
    (request_id, route, metered): (String, String, Arc<AtomicBool>),
) -> (Response, Option<String>) {
    if req.uri().path() == "/health" {
        return (next.run(req).await, None);
    }
    // A Kubernetes probe has no key: it gets readiness alone; a key still shows the details
    // (with auth off everyone is the anonymous tenant and sees them).
    let keyless = state.tenancy.auth_enabled() && bearer(&req).is_none();
    if req.uri().path() == "/ready" && keyless {
        return (next.run(req).await, None);
    }
    if let Some(ConnectInfo(addr)) = req.extensions().get::<ConnectInfo<SocketAddr>>() {
        if let Err(wait) = state.ip_guard.check(addr.ip()) {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "requests",
                "Too many requests from this address",
            )
            .with_code("rate_limit_exceeded");
            e.retry_after = Some(wait);
            return (e.into_response(), None);
        }
    }
    if req.uri().path().starts_with("/admin/") {
        let response = match (&state.admin_key, bearer(&req)) {
            (Some(stored), Some(key)) if stored.ct_eq(&KeyHash::of(key)) => next.run(req).await,
            _ => unauthorized("This route needs the admin key").into_response(),
        };
        return (response, Some("admin".into()));
    }
    let (tenant, directory) = if state.tenancy.auth_enabled() {
        let Some(key) = bearer(&req) else {
            let e = unauthorized(
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.",
            );
            return (e.into_response(), None);
        };
        // A key unknown here may be new in the keys file: this re-reads it when it changed.
        match state.tenancy.authenticate(key) {
            Some(found) => found,
            None => {
                return (
                    unauthorized("Incorrect API key provided.").into_response(),
                    None,
                )
            }
        }
    } else {
        let directory = state.tenancy.directory();
        match directory.tenants.get(ANONYMOUS) {
            Some(t) => (t.clone(), directory),
            None => {
                let e = unauthorized("No anonymous tenant is configured");
                return (e.into_response(), None);
            }
        }
    };
    req.extensions_mut().insert(Caller {
        tenant: tenant.clone(),
        directory,
        request_id,
        route,
        metered,
    });
    let mut response = next.run(req).await;
    // Handlers that admitted the request set the figures of that moment; every other
    // response (errors before admission, model lists) gets the buckets as they are now.
    if !response
        .headers()
        .contains_key("x-ratelimit-limit-requests")
    {
        let status = state.tenancy.limiter.status(&tenant);
        headers::insert_status(response.headers_mut(), &status);
    }
    (response, Some(tenant.tier.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_other_schemes_are_ignored() {
        let req = |v: &str| {
            Request::builder()
                .header(header::AUTHORIZATION, v)
                .body(axum::body::Body::empty())
                .expect("request")
        };
        assert_eq!(bearer(&req("Bearer tg-abc")), Some("tg-abc"));
        assert_eq!(bearer(&req("bearer tg-abc")), Some("tg-abc"));
        assert_eq!(bearer(&req("Basic dXNlcg==")), None);
    }
}
