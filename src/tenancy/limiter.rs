//! Per-tenant admission: requests per minute, tokens per minute (reserve, then commit what was
//! used), concurrent requests and the monthly budget, decided together and all-or-nothing: a
//! request denied by one limit spends nothing from the others.
//!
//! `Limiter` is the contract; `LocalLimiter` keeps the state of one process under one mutex
//! (a few integers per tenant, held for microseconds). `super::redis::RedisLimiter` is the
//! same rules in Redis (one script doing the same checks, then the same writes) for limits
//! shared by several gateways. Admission is a future because that home answers over the
//! network; settling is not, because it runs from `Drop` (a shared home books it in the
//! background, and `flush` waits for it).

use super::directory::Tenant;
use super::gcra::{Decision, Gcra};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Which limit turned a request away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Requests,
    Tokens,
    /// More tokens than the tier's burst: it can never pass, retrying does not help.
    TooLarge,
    Concurrency,
    Budget,
    /// The shared limit store cannot answer (down, garbage, a script error): 503, retry later.
    /// Never an admission without a limit.
    Unavailable,
}

impl LimitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Requests => "requests",
            LimitKind::Tokens => "tokens",
            LimitKind::TooLarge => "request_too_large",
            LimitKind::Concurrency => "concurrency",
            LimitKind::Budget => "budget",
            LimitKind::Unavailable => "limiter_unavailable",
        }
    }
}

/// What a request asks to reserve.
#[derive(Debug, Clone, Copy)]
pub struct Ask {
    /// Prompt tokens + max_tokens.
    pub tokens: u64,
    /// The tenant charge if every reserved token is used, in micro-HKD.
    pub worst_charge: i64,
    /// Calendar month (UTC) as yyyymm, which the budget belongs to.
    pub month: u32,
}

/// What the request really used, settled when it ends.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub tokens: u64,
    pub charge: i64,
}

/// A held admission. Hand it back to `settle` exactly once.
#[derive(Debug)]
pub struct Reservation {
    pub(crate) tokens: u64,
    pub(crate) hold: i64,
    pub(crate) month: u32,
    /// The admission's id in a shared home (its lease, and what makes settling idempotent);
    /// `None` when a local limiter holds it.
    pub(crate) lease: Option<u128>,
}

/// The figures of OpenAI's `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateStatus {
    pub limit_requests: u64,
    pub remaining_requests: u64,
    pub reset_requests: Duration,
    pub limit_tokens: u64,
    pub remaining_tokens: u64,
    pub reset_tokens: Duration,
}

#[derive(Debug, Clone)]
pub struct Denied {
    pub kind: LimitKind,
    /// When retrying can succeed (from the bucket state); zero when unknown.
    pub wait: Duration,
    pub status: RateStatus,
}

pub type Admitted = Result<(Reservation, RateStatus), Denied>;
pub type AdmitFuture<'a> = Pin<Box<dyn Future<Output = Admitted> + Send + 'a>>;
pub type FlushFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

pub trait Limiter: Send + Sync {
    /// Checks every limit and reserves from all of them, or from none.
    fn admit<'a>(&'a self, tenant: &'a Tenant, ask: Ask) -> AdmitFuture<'a>;
    /// Books what was used and gives back the rest; may finish in the background.
    fn settle(&self, tenant: &Tenant, reservation: Reservation, used: Usage);
    /// Waits until every settlement handed to `settle` so far is booked.
    fn flush(&self) -> FlushFuture<'_> {
        Box::pin(std::future::ready(()))
    }
    /// The buckets as this process last knew them (no round trip).
    fn status(&self, tenant: &Tenant) -> RateStatus;
    /// Month-to-date tenant charges (from the ledger), so a restart does not reset budgets.
    fn restore_spent(&self, month: u32, spent: &HashMap<String, i64>);
    /// Requests of `tenant` running now.
    fn in_flight(&self, tenant: &str) -> u32;
}

/// Nanoseconds on a monotonic clock; tests drive a manual one.
pub trait Clock: Send + Sync {
    fn now_ns(&self) -> u64;
}

pub struct MonotonicClock(Instant);

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock(Instant::now())
    }
}

impl Clock for MonotonicClock {
    fn now_ns(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

/// A clock that moves only when told: limits tested with time paused.
#[derive(Default)]
pub struct ManualClock(std::sync::atomic::AtomicU64);

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        self.0
            .fetch_add(by.as_nanos() as u64, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ns(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[derive(Debug, Default)]
struct TenantState {
    requests_tat: Option<u64>,
    tokens_tat: Option<u64>,
    in_flight: u32,
    month: u32,
    spent: i64,
    held: i64,
}

pub struct LocalLimiter {
    clock: Arc<dyn Clock>,
    state: Mutex<HashMap<String, TenantState>>,
}

/// The request and token buckets of a tenant's terms.
pub(crate) fn buckets(tenant: &Tenant) -> (Gcra, Gcra) {
    let t = &tenant.terms;
    (
        Gcra::per_minute(t.requests_per_minute, t.burst_requests),
        Gcra::per_minute(t.tokens_per_minute, t.burst_tokens),
    )
}

impl LocalLimiter {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        LocalLimiter {
            clock,
            state: Mutex::new(HashMap::new()),
        }
    }

    fn status_of(tenant: &Tenant, s: &TenantState, now: u64) -> RateStatus {
        let (req, tok) = buckets(tenant);
        RateStatus {
            limit_requests: tenant.terms.requests_per_minute,
            remaining_requests: req.remaining(s.requests_tat, now),
            reset_requests: req.reset(s.requests_tat, now),
            limit_tokens: tenant.terms.tokens_per_minute,
            remaining_tokens: tok.remaining(s.tokens_tat, now),
            reset_tokens: tok.reset(s.tokens_tat, now),
        }
    }
}

impl Limiter for LocalLimiter {
    fn admit<'a>(&'a self, tenant: &'a Tenant, ask: Ask) -> AdmitFuture<'a> {
        Box::pin(std::future::ready(self.admit_now(tenant, ask)))
    }

    fn settle(&self, tenant: &Tenant, r: Reservation, used: Usage) {
        let (_, tok) = buckets(tenant);
        let mut all = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let s = all.entry(tenant.id.clone()).or_default();
        let unused = r.tokens.saturating_sub(used.tokens);
        s.tokens_tat = s.tokens_tat.map(|tat| tok.refund(tat, unused));
        s.in_flight = s.in_flight.saturating_sub(1);
        s.held -= r.hold;
        // A request that straddles the month boundary is booked to the month it started in,
        // as the ledger does; that month's running total is gone once a new month began.
        if r.month == s.month {
            s.spent += used.charge;
        }
    }

    fn status(&self, tenant: &Tenant) -> RateStatus {
        let now = self.clock.now_ns();
        let all = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let empty = TenantState::default();
        Self::status_of(tenant, all.get(&tenant.id).unwrap_or(&empty), now)
    }

    fn restore_spent(&self, month: u32, spent: &HashMap<String, i64>) {
        let mut all = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        for (tenant, &amount) in spent {
            let s = all.entry(tenant.clone()).or_default();
            s.month = month;
            s.spent = amount;
        }
    }

    fn in_flight(&self, tenant: &str) -> u32 {
        let all = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        all.get(tenant).map_or(0, |s| s.in_flight)
    }
}

impl LocalLimiter {
    /// `admit` without the future: the local home never waits.
    pub fn admit_now(&self, tenant: &Tenant, ask: Ask) -> Admitted {
        let now = self.clock.now_ns();
        let (req, tok) = buckets(tenant);
        let mut all = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let s = all.entry(tenant.id.clone()).or_default();
        if s.month != ask.month {
            s.month = ask.month;
            s.spent = 0;
        }
        let deny = |kind, wait, s: &TenantState| Denied {
            kind,
            wait,
            status: Self::status_of(tenant, s, now),
        };
        // Check everything first; write only once all pass.
        let req_tat = match req.check(s.requests_tat, now, 1) {
            Decision::Admit { tat } => tat,
            Decision::Wait(w) => return Err(deny(LimitKind::Requests, w, s)),
            Decision::TooLarge => return Err(deny(LimitKind::TooLarge, Duration::ZERO, s)),
        };
        let tok_tat = match tok.check(s.tokens_tat, now, ask.tokens) {
            Decision::Admit { tat } => tat,
            Decision::Wait(w) => return Err(deny(LimitKind::Tokens, w, s)),
            Decision::TooLarge => return Err(deny(LimitKind::TooLarge, Duration::ZERO, s)),
        };
        if s.in_flight >= tenant.terms.max_concurrent {
            return Err(deny(LimitKind::Concurrency, Duration::ZERO, s));
        }
        if let Some(budget) = tenant.budget_micro() {
            if s.spent + s.held + ask.worst_charge > budget {
                return Err(deny(LimitKind::Budget, Duration::ZERO, s));
            }
        }
        s.requests_tat = Some(req_tat);
        s.tokens_tat = Some(tok_tat);
        s.in_flight += 1;
        s.held += ask.worst_charge;
        let reservation = Reservation {
            tokens: ask.tokens,
            hold: ask.worst_charge,
            month: ask.month,
            lease: None,
        };
        Ok((reservation, Self::status_of(tenant, s, now)))
    }
}
