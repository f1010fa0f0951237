//! How long a client refused for a full or slow queue should wait before it retries: the
//! time the queue ahead of it takes to drain, estimated from its depth and the recent time a
//! request holds a slot. A fixed hint (say 1 s) brings every refused client back at once,
//! into the same full queue; one that grows with the backlog spreads them out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Retry-After is sent in whole seconds: below one it would read as "now".
pub const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Beyond a minute the estimate says more about the past than about the queue a client
/// will find; such a client should rather look elsewhere or back off on its own.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Weight of the newest sample in the moving average: the estimate follows the last ten or
/// so requests, so a change of workload shows within seconds and one outlier moves it little.
const EWMA_WEIGHT: f64 = 0.125;

/// The wait before a retry, for `depth` requests waiting ahead, each holding one of `slots`
/// parallel places for `service` (None: nothing measured yet, the minimum). Bounded by
/// [`MIN_RETRY_AFTER`] and [`MAX_RETRY_AFTER`].
pub fn retry_after(depth: usize, service: Option<Duration>, slots: usize) -> Duration {
    let Some(service) = service else {
        return MIN_RETRY_AFTER;
    };
    let drain = service.as_secs_f64() * depth as f64 / slots.max(1) as f64;
    Duration::from_secs_f64(
        drain.clamp(MIN_RETRY_AFTER.as_secs_f64(), MAX_RETRY_AFTER.as_secs_f64()),
    )
}

/// Moving average of the time requests of one queue held a slot. Replica threads record,
/// handlers read: one atomic (the average's bits), no lock.
#[derive(Debug, Default)]
pub struct ServiceTime {
    /// f64 seconds as bits; 0 = nothing recorded yet.
    bits: AtomicU64,
}

impl ServiceTime {
    pub fn record(&self, took: Duration) {
        let sample = took.as_secs_f64().max(f64::MIN_POSITIVE);
        let _ = self
            .bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                let avg = f64::from_bits(bits);
                let next = if avg > 0.0 {
                    avg + EWMA_WEIGHT * (sample - avg)
                } else {
                    sample
                };
                Some(next.to_bits())
            });
    }

    pub fn get(&self) -> Option<Duration> {
        let avg = f64::from_bits(self.bits.load(Ordering::Relaxed));
        (avg > 0.0).then(|| Duration::from_secs_f64(avg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn the_wait_is_depth_times_service_time_over_slots() {
        assert_eq!(retry_after(8, Some(secs(3.0)), 4), secs(6.0));
        assert_eq!(retry_after(5, Some(secs(0.5)), 1), secs(2.5));
    }

    #[test]
    fn the_wait_grows_with_the_depth() {
        let at = |depth| retry_after(depth, Some(secs(2.0)), 2);
        assert!(
            at(2) < at(4) && at(4) < at(8),
            "{:?}",
            [at(2), at(4), at(8)]
        );
    }

    #[test]
    fn a_short_backlog_still_waits_the_minimum() {
        assert_eq!(retry_after(1, Some(secs(0.05)), 8), MIN_RETRY_AFTER);
        assert_eq!(retry_after(0, Some(secs(10.0)), 1), MIN_RETRY_AFTER);
    }

    #[test]
    fn a_long_backlog_is_capped() {
        assert_eq!(retry_after(1000, Some(secs(30.0)), 1), MAX_RETRY_AFTER);
    }

    #[test]
    fn nothing_measured_yet_waits_the_minimum() {
        assert_eq!(retry_after(64, None, 1), MIN_RETRY_AFTER);
    }

    #[test]
    fn zero_slots_count_as_one() {
        assert_eq!(retry_after(3, Some(secs(2.0)), 0), secs(6.0));
    }

    #[test]
    fn the_first_sample_is_the_estimate_and_later_ones_move_it_by_an_eighth() {
        let t = ServiceTime::default();
        assert_eq!(t.get(), None);
        t.record(secs(4.0));
        assert_eq!(t.get(), Some(secs(4.0)));
        t.record(secs(12.0));
        assert_eq!(t.get(), Some(secs(5.0)));
    }
}
