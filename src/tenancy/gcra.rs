//! The generic cell rate algorithm (GCRA) on plain numbers: one "theoretical arrival time"
//! (TAT) per limit, in nanoseconds of a caller-given clock. It is the same math as governor's
//! (tested against governor as an oracle), plus the one thing governor cannot do: give back
//! cells that a reservation did not use. Pure and `Copy`, so a Redis script can mirror it.
//!
//! A limit of `L` cells per period `P` with burst `B`: each cell costs `t = P / L` of time, and
//! a request of `n` cells is admitted iff `max(TAT, now) + n·t − now ≤ B·t`.

use std::time::Duration;

/// One limit's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Time one cell costs (the emission interval), in ns. Never 0.
    t: u64,
    /// Cells the bucket holds when full.
    burst: u64,
}

/// What a check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Admitted; the caller stores the new TAT.
    Admit { tat: u64 },
    /// Not now: admissible after `wait`.
    Wait(Duration),
    /// More cells than the burst: never admissible.
    TooLarge,
}

impl Gcra {
    /// `amount` cells per `period`, up to `burst` at once (burst 0 means `amount`). The cell
    /// cost is rounded down to whole ns, as governor's `Quota` does.
    pub fn new(amount: u64, period: Duration, burst: u64) -> Self {
        let amount = amount.max(1);
        let t = (period.as_nanos() / u128::from(amount)).clamp(1, u128::from(u64::MAX)) as u64;
        let burst = if burst == 0 { amount } else { burst };
        Gcra { t, burst }
    }

    /// Per minute, the unit OpenAI's headers speak in.
    pub fn per_minute(amount: u64, burst: u64) -> Self {
        Self::new(amount, Duration::from_secs(60), burst)
    }

    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// The time one cell costs.
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.t)
    }

    fn cost(&self, n: u64) -> u64 {
        n.saturating_mul(self.t)
    }

    fn capacity(&self) -> u64 {
        self.cost(self.burst)
    }

    /// Can `n` cells pass at `now` given the stored `tat` (None: never used, i.e. full)?
    pub fn check(&self, tat: Option<u64>, now: u64, n: u64) -> Decision {
        if n > self.burst {
            return Decision::TooLarge;
        }
        let start = tat.unwrap_or(now).max(now);
        let next = start.saturating_add(self.cost(n));
        let ahead = next - now;
        if ahead <= self.capacity() {
            Decision::Admit { tat: next }
        } else {
            Decision::Wait(Duration::from_nanos(ahead - self.capacity()))
        }
    }

    /// The TAT after giving back `n` unused cells. A refund never makes the bucket fuller
    /// than full: a TAT in the past means the same as `now`.
    pub fn refund(&self, tat: u64, n: u64) -> u64 {
        tat.saturating_sub(self.cost(n))
    }

    /// Cells that could pass right now.
    pub fn remaining(&self, tat: Option<u64>, now: u64) -> u64 {
        let used = tat.map_or(0, |tat| tat.saturating_sub(now));
        self.capacity().saturating_sub(used) / self.t
    }

    /// Time until the bucket is full again (OpenAI's `x-ratelimit-reset-*`).
    pub fn reset(&self, tat: Option<u64>, now: u64) -> Duration {
        Duration::from_nanos(tat.map_or(0, |tat| tat.saturating_sub(now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use governor::{Quota, RateLimiter};
    use std::num::NonZeroU32;

    const SEC: u64 = 1_000_000_000;

    fn admit(g: &Gcra, tat: &mut Option<u64>, now: u64, n: u64) -> bool {
        match g.check(*tat, now, n) {
            Decision::Admit { tat: next } => {
                *tat = Some(next);
                true
            }
            _ => false,
        }
    }

    #[test]
    fn full_bucket_admits_exactly_the_burst_then_waits_one_cell() {
        let g = Gcra::per_minute(6, 3);
        let mut tat = None;
        let passed = (0..5).filter(|_| admit(&g, &mut tat, 0, 1)).count();
        assert_eq!(passed, 3);
        assert_eq!(g.check(tat, 0, 1), Decision::Wait(Duration::from_secs(10)));
    }

    #[test]
    fn more_than_the_burst_is_too_large_even_when_full() {
        let g = Gcra::per_minute(100, 0);
        assert_eq!(g.check(None, 0, 101), Decision::TooLarge);
        assert!(matches!(g.check(None, 0, 100), Decision::Admit { .. }));
    }

    #[test]
    fn refund_gives_back_exactly_the_unused_cells() {
        let g = Gcra::per_minute(60, 0);
        let mut tat = None;
        assert!(admit(&g, &mut tat, 0, 50));
        assert_eq!(g.remaining(tat, 0), 10);
        tat = tat.map(|t| g.refund(t, 30));
        assert_eq!(g.remaining(tat, 0), 40);
    }

    #[test]
    fn refund_never_overfills() {
        let g = Gcra::per_minute(60, 0);
        let tat = g.refund(5 * SEC, 1000);
        assert_eq!(g.remaining(Some(tat), 10 * SEC), 60);
    }

    #[test]
    fn remaining_and_reset_follow_refill() {
        let g = Gcra::per_minute(60, 0);
        let mut tat = None;
        assert!(admit(&g, &mut tat, 0, 60));
        assert_eq!(g.remaining(tat, 0), 0);
        assert_eq!(g.reset(tat, 0), Duration::from_secs(60));
        assert_eq!(g.remaining(tat, 15 * SEC), 15);
        assert_eq!(g.reset(tat, 15 * SEC), Duration::from_secs(45));
    }

    /// A small deterministic generator, so the oracle test needs no extra dependency.
    fn lcg(state: &mut u64) -> u64 {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *state >> 33
    }

    /// On refund-free sequences our decisions and waits equal governor's, for several quotas,
    /// batch sizes and irregular arrival times.
    #[test]
    fn decisions_match_governor_on_refund_free_sequences() {
        for (per_min, burst, seed) in [(60u32, 60u32, 1u64), (7, 3, 2), (1000, 50, 3), (1, 1, 4)] {
            let quota = Quota::per_minute(NonZeroU32::new(per_min).unwrap())
                .allow_burst(NonZeroU32::new(burst).unwrap());
            let clock = FakeRelativeClock::default();
            let oracle = RateLimiter::direct_with_clock(quota, clock.clone());
            let ours = Gcra::per_minute(u64::from(per_min), u64::from(burst));
            let (mut tat, mut now, mut rng) = (None, 0u64, seed);
            for step in 0..2000 {
                let advance = lcg(&mut rng) % (3 * 60 * SEC / u64::from(per_min));
                clock.advance(Duration::from_nanos(advance));
                now += advance;
                let n = 1 + lcg(&mut rng) % u64::from(burst + 1);
                let theirs = oracle.check_n(NonZeroU32::new(n as u32).unwrap());
                let mine = ours.check(tat, now, n);
                match (theirs, mine) {
                    (Err(_), Decision::TooLarge) => {}
                    (Ok(Ok(())), Decision::Admit { tat: next }) => tat = Some(next),
                    (Ok(Err(not_until)), Decision::Wait(wait)) => {
                        use governor::clock::Clock;
                        assert_eq!(not_until.wait_time_from(clock.now()), wait, "step {step}");
                    }
                    (t, m) => panic!("step {step}: governor {t:?}, ours {m:?}"),
                }
            }
        }
    }
}
