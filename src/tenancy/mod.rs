//! Tenants, subsidy tiers and their limits.
//!
//! A request's key names its tenant (`Tenancy::authenticate`); the tenant's tier gives its
//! terms; the `Limiter` admits or refuses it against those terms, all-or-nothing; the
//! returned `Admission` holds the reservation until the request ends and settles it exactly
//! once (explicitly with the real usage, or on drop with none), so cancelled and failed
//! requests give back what they reserved. `Tenancy` holds the live directory and reloads it.

pub mod classes;
pub mod directory;
#[cfg(test)]
mod directory_tests;
pub mod gcra;
pub mod headers;
pub mod keys;
pub mod limiter;
#[cfg(test)]
pub(crate) mod limiter_tests;
pub mod live;
pub mod redis;

pub use classes::TierClasses;
pub use directory::{Directory, PrefixScope, Sources, Tenant, Tier};
pub use limiter::{
    Ask, Clock, Denied, LimitKind, Limiter, LocalLimiter, ManualClock, MonotonicClock, RateStatus,
    Reservation, Usage,
};
pub use live::Tenancy;
pub use redis::RedisLimiter;

use std::sync::Arc;

/// The tenant of every request when authentication is off.
pub const ANONYMOUS: &str = "anonymous";

/// A reservation held for the life of one request.
pub struct Admission {
    limiter: Arc<dyn Limiter>,
    tenant: Arc<Tenant>,
    reservation: Option<Reservation>,
    pub status: RateStatus,
}

impl Admission {
    pub fn new(
        limiter: Arc<dyn Limiter>,
        tenant: Arc<Tenant>,
        reservation: Reservation,
        status: RateStatus,
    ) -> Self {
        Admission {
            limiter,
            tenant,
            reservation: Some(reservation),
            status,
        }
    }

    /// Books what the request used and gives back the rest.
    pub fn settle(mut self, used: Usage) {
        self.finish(used);
    }

    fn finish(&mut self, used: Usage) {
        if let Some(r) = self.reservation.take() {
            self.limiter.settle(&self.tenant, r, used);
        }
    }
}

impl Drop for Admission {
    /// Ended without a settlement (an error before the model ran, a panic): nothing used.
    fn drop(&mut self) {
        self.finish(Usage::default());
    }
}

/// The calendar month (UTC) of a unix time in ms, as yyyymm (the ledger's calendar).
pub fn month_of(unix_ms: i64) -> u32 {
    let (y, m, _) = crate::ledger::civil_from_days(unix_ms.div_euclid(86_400_000));
    y as u32 * 100 + m
}

pub fn unix_ms_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
