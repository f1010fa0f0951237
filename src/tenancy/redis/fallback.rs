//! What a Redis limiter knows without asking Redis: the buckets as its last script reply
//! showed them (aged by its own clock, for `status` and the headers of responses that were
//! not admitted), the ledger's month-to-date spending that seeds an empty Redis, and the local
//! limiter that holds this gateway's share while Redis is unreachable (`local_share`).

use super::scripts::Reply;
use crate::config::OnUnavailable;
use crate::tenancy::directory::Tenant;
use crate::tenancy::limiter::{
    buckets, Admitted, Ask, Clock, LimitKind, Limiter, LocalLimiter, RateStatus, Reservation, Usage,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// A tenant's buckets as a script last showed them.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Known {
    requests_ahead: Duration,
    tokens_ahead: Duration,
    leases: u32,
    /// When it was seen, on the limiter's clock.
    at_ns: u64,
}

impl Known {
    pub(super) fn from_reply(r: &Reply) -> Self {
        Known {
            requests_ahead: Duration::from_micros(r.requests_ahead_us),
            tokens_ahead: Duration::from_micros(r.tokens_ahead_us),
            leases: r.leases,
            at_ns: 0,
        }
    }
}

pub(super) struct Fallback {
    policy: OnUnavailable,
    gateways: u32,
    local: LocalLimiter,
    clock: Arc<dyn Clock>,
    /// The month and its tenant charges so far, from the ledger at start.
    seeds: Mutex<(u32, HashMap<String, i64>)>,
    /// One entry per tenant seen: bounded by the tenant directory.
    known: Mutex<HashMap<String, Known>>,
}

impl Fallback {
    pub(super) fn new(policy: OnUnavailable, gateways: u32, clock: Arc<dyn Clock>) -> Self {
        Fallback {
            policy,
            gateways: gateways.max(1),
            local: LocalLimiter::new(clock.clone()),
            clock,
            seeds: Mutex::new((0, HashMap::new())),
            known: Mutex::new(HashMap::new()),
        }
    }

    /// The admission while Redis is unreachable; `None` means refuse (503).
    pub(super) fn admit(&self, tenant: &Tenant, ask: Ask) -> Option<Admitted> {
        // A money budget split N ways cannot be reconciled later: it fails closed.
        if self.policy == OnUnavailable::Reject || tenant.budget_micro().is_some() {
            return None;
        }
        let decision = self.local.admit_now(&self.share(tenant), ask);
        match &decision {
            // Too large for this gateway's share only: retrying later can pass.
            Err(d) if d.kind == LimitKind::TooLarge && ask.tokens <= buckets(tenant).1.burst() => {
                None
            }
            _ => Some(decision),
        }
    }

    pub(super) fn settle(&self, tenant: &Tenant, r: Reservation, used: Usage) {
        self.local.settle(&self.share(tenant), r, used);
    }

    /// This gateway's share of the tenant's limits: ceil(limit / gateways), never 0.
    fn share(&self, tenant: &Tenant) -> Tenant {
        let g = u64::from(self.gateways);
        let part = |v: u64| v.div_ceil(g);
        let mut t = tenant.clone();
        let terms = &mut t.terms;
        terms.requests_per_minute = part(terms.requests_per_minute);
        terms.tokens_per_minute = part(terms.tokens_per_minute);
        terms.burst_requests = part(terms.burst_requests);
        terms.burst_tokens = part(terms.burst_tokens);
        terms.max_concurrent = part(u64::from(terms.max_concurrent)) as u32;
        t
    }

    /// Records what a script showed (the figures of `status` until the next reply).
    pub(super) fn saw(&self, tenant: &str, mut known: Known) {
        known.at_ns = self.clock.now_ns();
        self.known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(tenant.to_string(), known);
    }

    pub(super) fn status(&self, tenant: &Tenant) -> RateStatus {
        let known = self
            .known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&tenant.id)
            .copied()
            .unwrap_or_default();
        let elapsed = self.clock.now_ns().saturating_sub(known.at_ns);
        status_of(tenant, &known, elapsed)
    }

    /// Leases in Redis as last seen, plus requests admitted here while Redis was away.
    pub(super) fn in_flight(&self, tenant: &str) -> u32 {
        let known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        known.get(tenant).map_or(0, |k| k.leases) + self.local.in_flight(tenant)
    }

    pub(super) fn restore_spent(&self, month: u32, spent: &HashMap<String, i64>) {
        *self.seeds.lock().unwrap_or_else(PoisonError::into_inner) = (month, spent.clone());
        self.local.restore_spent(month, spent);
    }

    /// What an empty Redis starts the tenant's month from.
    pub(super) fn seed(&self, tenant: &str, month: u32) -> i64 {
        let seeds = self.seeds.lock().unwrap_or_else(PoisonError::into_inner);
        if seeds.0 == month {
            seeds.1.get(tenant).copied().unwrap_or(0)
        } else {
            0
        }
    }
}

/// The headers' figures from the time ahead in each bucket, `elapsed_ns` after it was seen.
pub(super) fn status_of(tenant: &Tenant, k: &Known, elapsed_ns: u64) -> RateStatus {
    let (req, tok) = buckets(tenant);
    let ahead = |d: Duration| Some((d.as_nanos() as u64).saturating_sub(elapsed_ns));
    RateStatus {
        limit_requests: tenant.terms.requests_per_minute,
        remaining_requests: req.remaining(ahead(k.requests_ahead), 0),
        reset_requests: req.reset(ahead(k.requests_ahead), 0),
        limit_tokens: tenant.terms.tokens_per_minute,
        remaining_tokens: tok.remaining(ahead(k.tokens_ahead), 0),
        reset_tokens: tok.reset(ahead(k.tokens_ahead), 0),
    }
}
