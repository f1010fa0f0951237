//! The gate in front of every route but `/health`: a per-IP flood guard (before any key is
//! looked at, so a key-guessing flood costs us one hash map probe), then the API key ->
//! tenant, then, on the way out, OpenAI's rate-limit headers from the tenant's buckets.
//! `/admin/*` routes take the separate admin key instead.

use super::AppState;
use crate::error::ApiError;
use crate::tenancy::keys::KeyHash;
use crate::tenancy::{headers, Directory, Tenant, ANONYMOUS};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

/// The authenticated caller, put in the request's extensions for the handlers.
#[derive(Clone)]
pub struct Caller {
    pub tenant: Arc<Tenant>,
    /// The directory the tenant was found in (prices, tiers), consistent for the request.
    pub directory: Arc<Directory>,
}

/// Requests per client IP, before authentication.
pub struct IpGuard {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
}

/// Distinct IPs remembered before idle ones are forgotten, so the guard's memory is bounded.
const IP_GUARD_MAX_KEYS: usize = 10_000;

impl IpGuard {
    pub fn new(per_second: u32, burst: u32) -> Self {
        let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(rate);
        IpGuard {
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
        }
    }

    fn check(&self, ip: IpAddr) -> Result<(), std::time::Duration> {
        if self.limiter.len() > IP_GUARD_MAX_KEYS {
            self.limiter.retain_recent();
        }
        self.limiter
            .check_key(&ip)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message)
        .with_code("invalid_api_key")
}

pub async fn gate(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    if req.uri().path() == "/health" {
        return next.run(req).await;
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
            return e.into_response();
        }
    }
    if req.uri().path().starts_with("/admin/") {
        return match (&state.admin_key, bearer(&req)) {
            (Some(stored), Some(key)) if stored.ct_eq(&KeyHash::of(key)) => next.run(req).await,
            _ => unauthorized("This route needs the admin key").into_response(),
        };
    }
    let directory = state.tenancy.directory();
    let tenant = if state.tenancy.auth_enabled() {
        let Some(key) = bearer(&req) else {
            return unauthorized(
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.",
            )
            .into_response();
        };
        match directory.authenticate(key) {
            Some(tenant) => tenant,
            None => return unauthorized("Incorrect API key provided.").into_response(),
        }
    } else {
        match directory.tenants.get(ANONYMOUS) {
            Some(t) => t.clone(),
            None => return unauthorized("No anonymous tenant is configured").into_response(),
        }
    };
    req.extensions_mut().insert(Caller {
        tenant: tenant.clone(),
        directory,
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
    response
}
