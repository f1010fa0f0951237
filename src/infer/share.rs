//! Slot shares between classes (tiers), pure and synchronous.
//!
//! Weighted fair queuing alone orders the requests that are waiting at the moment a slot
//! frees. That is not enough for closed-loop clients: requests of one length finish in the
//! same step, the freed slots are refilled at once from the tier that always has a queue, and
//! a light tier's next request, sent milliseconds after its previous answer, finds every slot
//! taken for a whole generation (measured: a weight-1 tier got half its share under a
//! weight-2 flood). So a class that already holds its weighted share of slots is not given
//! another one while a class that ran recently (within `grace_ms`) is below its share and
//! about to come back: the slot is kept free for it for at most the grace period.

/// Running sequences per class and when each class last finished one.
#[derive(Debug, Clone)]
pub struct SlotShare {
    /// Slots of all replicas serving the queue.
    slots: usize,
    grace_ms: u64,
    live: Vec<usize>,
    last_end_ms: Vec<Option<u64>>,
}

impl SlotShare {
    pub fn new(slots: usize, grace_ms: u64) -> Self {
        SlotShare {
            slots,
            grace_ms,
            live: Vec::new(),
            last_end_ms: Vec::new(),
        }
    }

    /// Another replica's slots join the pool.
    pub fn add_slots(&mut self, n: usize) {
        self.slots += n;
    }

    pub fn set_grace(&mut self, grace_ms: u64) {
        self.grace_ms = grace_ms;
    }

    fn grow(&mut self, class: usize) {
        if self.live.len() <= class {
            self.live.resize(class + 1, 0);
            self.last_end_ms.resize(class + 1, None);
        }
    }

    pub fn started(&mut self, class: usize) {
        self.grow(class);
        self.live[class] += 1;
    }

    pub fn ended(&mut self, class: usize, now_ms: u64) {
        self.grow(class);
        self.live[class] = self.live[class].saturating_sub(1);
        self.last_end_ms[class] = Some(now_ms);
    }

    fn live(&self, class: usize) -> usize {
        self.live.get(class).copied().unwrap_or(0)
    }

    fn recent(&self, class: usize, now_ms: u64) -> bool {
        let last = self.last_end_ms.get(class).copied().flatten();
        last.is_some_and(|t| now_ms.saturating_sub(t) <= self.grace_ms)
    }

    /// Whether admitting one more request of `class` now would take a slot owed to a class
    /// that ran within the grace period and is below its share. `waiting[c]`: class `c` has
    /// queued requests (those the fair queue already weighs, so no slot is held for them).
    pub fn should_hold(
        &self,
        class: usize,
        weights: &[f64],
        waiting: &[bool],
        now_ms: u64,
    ) -> bool {
        if self.grace_ms == 0 || self.slots == 0 {
            return false;
        }
        let n = weights.len();
        let is_waiting = |c: usize| waiting.get(c).copied().unwrap_or(false);
        let active: Vec<usize> = (0..n)
            .filter(|&c| c == class || self.live(c) > 0 || is_waiting(c) || self.recent(c, now_ms))
            .collect();
        if active.len() < 2 {
            return false;
        }
        let total: f64 = active.iter().map(|&c| weights[c]).sum();
        let exact = |c: usize| self.slots as f64 * weights[c] / total;
        // The taker may have its share rounded down, the returning class rounded up: a
        // weight-1 tier owed 1.6 of 8 slots keeps both of its 2 streams running.
        if self.live(class) < (exact(class).floor() as usize).max(1) {
            return false;
        }
        active.iter().any(|&d| {
            d != class
                && !is_waiting(d)
                && self.recent(d, now_ms)
                && self.live(d) < exact(d).ceil() as usize
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: [f64; 2] = [2.0, 1.0];

    #[test]
    fn a_class_alone_takes_every_slot() {
        let mut s = SlotShare::new(8, 200);
        for _ in 0..7 {
            s.started(0);
        }
        assert!(!s.should_hold(0, &W, &[true, false], 0));
    }

    #[test]
    fn a_class_at_its_share_leaves_a_slot_for_a_class_that_just_finished() {
        let mut s = SlotShare::new(9, 200);
        for _ in 0..6 {
            s.started(0);
        }
        s.started(1);
        s.ended(1, 1000);
        // Class 0 holds 6 of 9 slots = its 2/3 share; class 1 finished 50 ms ago.
        assert!(s.should_hold(0, &W, &[true, false], 1050));
    }

    #[test]
    fn the_held_slot_is_released_after_the_grace_period() {
        let mut s = SlotShare::new(9, 200);
        for _ in 0..6 {
            s.started(0);
        }
        s.started(1);
        s.ended(1, 1000);
        assert!(!s.should_hold(0, &W, &[true, false], 1201));
    }

    #[test]
    fn below_its_share_a_class_is_never_held() {
        let mut s = SlotShare::new(9, 200);
        for _ in 0..5 {
            s.started(0);
        }
        s.ended(1, 1000);
        assert!(!s.should_hold(0, &W, &[true, false], 1010));
    }

    #[test]
    fn no_slot_is_held_for_a_class_already_at_its_share() {
        let mut s = SlotShare::new(9, 200);
        for _ in 0..6 {
            s.started(0);
        }
        for _ in 0..3 {
            s.started(1);
        }
        s.started(1);
        s.ended(1, 1000);
        assert!(!s.should_hold(0, &W, &[true, false], 1010));
    }

    #[test]
    fn a_fractional_share_is_rounded_up_for_the_returning_class() {
        // 8 slots, weights 2:2:1: the weight-1 class is owed 1.6 slots, so its second
        // stream is kept a slot while it has one running.
        let w = [2.0, 2.0, 1.0];
        let mut s = SlotShare::new(8, 200);
        for _ in 0..3 {
            s.started(0);
            s.started(1);
        }
        s.started(2);
        s.started(2);
        s.ended(2, 1000);
        assert!(s.should_hold(0, &w, &[true, true, false], 1010));
    }

    #[test]
    fn a_waiting_class_is_left_to_the_fair_queue() {
        let mut s = SlotShare::new(9, 200);
        for _ in 0..6 {
            s.started(0);
        }
        s.ended(1, 1000);
        assert!(!s.should_hold(0, &W, &[true, true], 1010));
    }
}
