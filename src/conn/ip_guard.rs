//! The per-IP flood guard in front of authentication: a key-guessing flood costs one hash
//! map probe per request, before any key is hashed.

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::net::IpAddr;
use std::num::NonZeroU32;

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

    pub fn check(&self, ip: IpAddr) -> Result<(), std::time::Duration> {
        if self.limiter.len() > IP_GUARD_MAX_KEYS {
            self.limiter.retain_recent();
        }
        self.limiter
            .check_key(&ip)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_guard_admits_the_burst_per_address_then_says_how_long_to_wait() {
        let guard = IpGuard::new(1, 2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        assert!(guard.check(a).is_ok() && guard.check(a).is_ok());
        let wait = guard.check(a).unwrap_err();
        assert!(wait > std::time::Duration::ZERO && wait <= std::time::Duration::from_secs(1));
        assert!(guard.check(b).is_ok(), "another address has its own bucket");
    }
}
