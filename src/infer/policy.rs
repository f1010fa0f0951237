//! Scheduling policy, pure and synchronous: which waiting request a replica admits next, and
//! what one engine step does (prefill chunks, a decode step). No tokio, no model: the worker
//! (`gen_worker`) asks, then acts, so every rule here is unit-tested on plain data.
//!
//! Admission is weighted fair queuing over request classes (the tenancy layer maps tiers to
//! classes and weights): each class keeps a virtual time that grows by the tokens it was
//! served divided by its weight, and the non-empty class with the smallest virtual time goes
//! next. Within a class it is FIFO, and a head that does not fit the free KV budget is never
//! overtaken, so long prompts cannot starve.

use super::share::SlotShare;
use std::collections::VecDeque;

/// Operator knobs of one generation replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchKnobs {
    /// Sequences decoding together (KV slots).
    pub max_batch_size: usize,
    /// KV budget: the sum over live sequences of prompt + max_tokens.
    pub max_batch_tokens: usize,
    /// Prompt tokens prefilled in one step, so a long prompt cannot stall decodes for long.
    pub max_prefill_tokens: usize,
    /// Decode steps that may run while prefill work waits; 0 prefills at every step.
    pub max_decode_steps_before_prefill: usize,
}

impl BatchKnobs {
    /// The batching knobs of a generation replica of `mc`.
    pub fn of(mc: &crate::config::ModelConfig) -> Self {
        BatchKnobs {
            max_batch_size: mc.max_batch_size,
            max_batch_tokens: mc
                .max_batch_tokens
                .unwrap_or(mc.max_batch_size * mc.max_seq_len),
            max_prefill_tokens: mc.max_prefill_tokens,
            max_decode_steps_before_prefill: mc.max_decode_steps_before_prefill,
        }
    }
}

/// Why a request could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError<T> {
    Full(T),
    /// Larger than the KV budget of a whole replica: it could never be admitted.
    TooLarge(T),
}

struct Class<T> {
    weight: f64,
    virtual_time: f64,
    served_tokens: u64,
    items: VecDeque<(usize, T)>,
}

/// Waiting requests of one model, by class, bounded in total.
pub struct FairQueue<T> {
    classes: Vec<Class<T>>,
    len: usize,
    capacity: usize,
    max_cost: usize,
    /// Slot shares between classes (generation); no slots = off (embeddings).
    share: SlotShare,
}

impl<T> FairQueue<T> {
    /// `weights[c]` is class `c`'s share; `capacity` bounds waiting requests; `max_cost` is
    /// the KV budget one request may at most reserve.
    pub fn new(weights: &[f64], capacity: usize, max_cost: usize) -> Self {
        let classes = weights
            .iter()
            .map(|&w| Class {
                weight: if w > 0.0 { w } else { 1.0 },
                virtual_time: 0.0,
                served_tokens: 0,
                items: VecDeque::new(),
            })
            .collect();
        FairQueue {
            classes,
            len: 0,
            capacity,
            max_cost,
            share: SlotShare::new(0, 0),
        }
    }

    /// Turns on slot shares: a replica with `slots` slots serves this queue; a class that
    /// ran within `grace_ms` keeps its share of slots free that long (see `share`).
    pub fn add_replica_slots(&mut self, slots: usize, grace_ms: u64) {
        self.share.add_slots(slots);
        self.share.set_grace(grace_ms);
    }

    /// A request of `class` took a slot.
    pub fn started(&mut self, class: usize) {
        self.share.started(class);
    }

    /// A request of `class` left its slot at `now_ms`.
    pub fn ended(&mut self, class: usize, now_ms: u64) {
        self.share.ended(class, now_ms);
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues `item` of class `class` (clamped to the known classes) costing `cost` tokens.
    pub fn push(&mut self, class: usize, cost: usize, item: T) -> Result<(), PushError<T>> {
        if cost > self.max_cost {
            return Err(PushError::TooLarge(item));
        }
        if self.len >= self.capacity {
            return Err(PushError::Full(item));
        }
        let c = class.min(self.classes.len() - 1);
        if self.len == 0 {
            // Nobody waits: there is no contention to be fair about, and a class that ran
            // alone earlier must not carry that as debt into the next contention.
            self.classes.iter_mut().for_each(|k| k.virtual_time = 0.0);
        } else if self.classes[c].items.is_empty() {
            // A class returning from idle starts at the busy classes' virtual time, so it
            // cannot bank credit while it sent nothing.
            let floor = self
                .min_active_time()
                .unwrap_or(self.classes[c].virtual_time);
            let class = &mut self.classes[c];
            class.virtual_time = class.virtual_time.max(floor);
        }
        self.classes[c].items.push_back((cost, item));
        self.len += 1;
        Ok(())
    }

    /// The next request to admit, if the fair pick fits in `free_tokens` of KV budget and
    /// does not take a slot held for a class about to come back (`now_ms`: a monotonic clock).
    pub fn pop_fitting(&mut self, free_tokens: usize, now_ms: u64) -> Option<T> {
        self.pop_if(now_ms, |cost, _| cost <= free_tokens)
    }

    /// [`Self::pop_fitting`] with the caller's test of whether the fair pick fits (its KV
    /// cost and the item itself, e.g. the slots an n > 1 request needs at once).
    pub fn pop_if(&mut self, now_ms: u64, fits: impl FnOnce(usize, &T) -> bool) -> Option<T> {
        let c = self.fair_pick()?;
        let weights = self.weights();
        let waiting: Vec<bool> = self.classes.iter().map(|k| !k.items.is_empty()).collect();
        if self.share.should_hold(c, &weights, &waiting, now_ms) {
            return None;
        }
        let class = &mut self.classes[c];
        let (cost, item) = class.items.front()?;
        if !fits(*cost, item) {
            return None;
        }
        let (cost, item) = class.items.pop_front()?;
        class.virtual_time += cost as f64 / class.weight;
        class.served_tokens += cost as u64;
        self.len -= 1;
        Some(item)
    }

    /// Takes every waiting request out (no replica is left to serve them).
    pub fn drain(&mut self) -> Vec<T> {
        self.len = 0;
        self.classes
            .iter_mut()
            .flat_map(|c| std::mem::take(&mut c.items))
            .map(|(_, item)| item)
            .collect()
    }

    /// Drops waiting requests for which `keep` is false (cancelled or expired).
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        for class in &mut self.classes {
            class.items.retain(|(_, item)| keep(item));
        }
        self.len = self.classes.iter().map(|c| c.items.len()).sum();
    }

    /// New weights (a reload of the tier files). Classes only ever grow: a tier that
    /// disappeared keeps its class, so requests already waiting in it are still served.
    pub fn set_weights(&mut self, weights: &[f64]) {
        let floor = self.min_active_time().unwrap_or(0.0);
        for (i, &w) in weights.iter().enumerate() {
            let weight = if w > 0.0 { w } else { 1.0 };
            match self.classes.get_mut(i) {
                Some(class) => class.weight = weight,
                None => self.classes.push(Class {
                    weight,
                    virtual_time: floor,
                    served_tokens: 0,
                    items: VecDeque::new(),
                }),
            }
        }
    }

    /// Weight of each class, by class id.
    pub fn weights(&self) -> Vec<f64> {
        self.classes.iter().map(|c| c.weight).collect()
    }

    /// Tokens admitted so far per class, for the share each class actually got.
    pub fn served_tokens(&self) -> Vec<u64> {
        self.classes.iter().map(|c| c.served_tokens).collect()
    }

    fn fair_pick(&self) -> Option<usize> {
        self.classes
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.items.is_empty())
            .min_by(|(_, a), (_, b)| a.virtual_time.total_cmp(&b.virtual_time))
            .map(|(i, _)| i)
    }

    fn min_active_time(&self) -> Option<f64> {
        self.classes
            .iter()
            .filter(|c| !c.items.is_empty())
            .map(|c| c.virtual_time)
            .min_by(f64::total_cmp)
    }
}

/// Where a live sequence stands, as the step planner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqView {
    /// Prompt tokens not yet prefilled; 0 means the sequence is decoding.
    pub prefill_left: usize,
}

/// What one engine step does.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StepPlan {
    /// `(index into the live sequences, prompt tokens to prefill now)`, in admission order.
    pub prefill: Vec<(usize, usize)>,
    /// Whether the decoding sequences take a decode step.
    pub decode: bool,
}

/// Interleaves chunked prefill with decode steps.
pub struct StepPlanner {
    knobs: BatchKnobs,
    decode_steps_since_prefill: usize,
}

impl StepPlanner {
    pub fn new(knobs: BatchKnobs) -> Self {
        StepPlanner {
            knobs,
            decode_steps_since_prefill: 0,
        }
    }

    /// Plans a step over the live sequences (in admission order). Decoding sequences decode
    /// at every step; waiting prefill work runs at once when nothing decodes, else after at
    /// most `max_decode_steps_before_prefill` decode steps, `max_prefill_tokens` at a time.
    pub fn plan(&mut self, seqs: &[SeqView]) -> StepPlan {
        let decode = seqs.iter().any(|s| s.prefill_left == 0);
        let prefilling = seqs.iter().any(|s| s.prefill_left > 0);
        let due = self.decode_steps_since_prefill >= self.knobs.max_decode_steps_before_prefill;
        let mut plan = StepPlan {
            prefill: Vec::new(),
            decode,
        };
        if prefilling && (!decode || due) {
            // Chunks are whole pieces [k*C, (k+1)*C) of each prompt, whatever else runs, so a
            // prompt is cut the same way alone or in a batch and gives the same numbers. The
            // budget decides which sequences get their next chunk in this step.
            let chunk = self.knobs.max_prefill_tokens.max(1);
            let mut budget = chunk;
            for (i, s) in seqs.iter().enumerate().filter(|(_, s)| s.prefill_left > 0) {
                let take = s.prefill_left.min(chunk);
                if take > budget {
                    continue;
                }
                plan.prefill.push((i, take));
                budget -= take;
                if budget == 0 {
                    break;
                }
            }
            self.decode_steps_since_prefill = 0;
        } else if decode {
            self.decode_steps_since_prefill += 1;
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knobs(max_prefill_tokens: usize, wait: usize) -> BatchKnobs {
        BatchKnobs {
            max_batch_size: 8,
            max_batch_tokens: 1000,
            max_prefill_tokens,
            max_decode_steps_before_prefill: wait,
        }
    }

    fn decoding() -> SeqView {
        SeqView { prefill_left: 0 }
    }

    fn prefilling(n: usize) -> SeqView {
        SeqView { prefill_left: n }
    }

    #[test]
    fn fifo_within_a_class() {
        let mut q = FairQueue::new(&[1.0], 10, 100);
        for i in 0..5 {
            q.push(0, 10, i).unwrap();
        }
        let order: Vec<i32> = std::iter::from_fn(|| q.pop_fitting(100, 0)).collect();
        assert_eq!(order, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_full_queue_refuses_and_returns_the_item() {
        let mut q = FairQueue::new(&[1.0], 2, 100);
        q.push(0, 1, 'a').unwrap();
        q.push(0, 1, 'b').unwrap();
        assert_eq!(q.push(0, 1, 'c'), Err(PushError::Full('c')));
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn a_request_larger_than_the_whole_budget_is_refused_not_queued_forever() {
        let mut q = FairQueue::new(&[1.0], 2, 100);
        assert_eq!(q.push(0, 101, 'x'), Err(PushError::TooLarge('x')));
    }

    #[test]
    fn the_head_that_does_not_fit_is_never_overtaken() {
        let mut q = FairQueue::new(&[1.0], 10, 1000);
        q.push(0, 500, "long").unwrap();
        q.push(0, 10, "short").unwrap();
        assert_eq!(q.pop_fitting(100, 0), None, "short must not overtake long");
        assert_eq!(q.pop_fitting(500, 0), Some("long"));
        assert_eq!(q.pop_fitting(10, 0), Some("short"));
    }

    #[test]
    fn classes_share_admitted_tokens_by_weight() {
        let mut q = FairQueue::new(&[3.0, 1.0], 1000, 100);
        for i in 0..400 {
            q.push(0, 10, (0, i)).unwrap();
            q.push(1, 10, (1, i)).unwrap();
        }
        let firsts: Vec<usize> = (0..200)
            .filter_map(|_| q.pop_fitting(100, 0))
            .map(|(c, _)| c)
            .collect();
        let class0 = firsts.iter().filter(|&&c| c == 0).count();
        assert_eq!(class0, 150, "3:1 weights give class 0 three quarters");
        assert_eq!(q.served_tokens(), vec![1500, 500]);
    }

    #[test]
    fn a_flooding_class_cannot_starve_a_light_one() {
        let mut q = FairQueue::new(&[1.0, 1.0], 1000, 100);
        for i in 0..500 {
            q.push(0, 10, (0, i)).unwrap();
        }
        for _ in 0..50 {
            q.pop_fitting(100, 0);
        }
        q.push(1, 10, (1, 0)).unwrap();
        // The newcomer starts at the flood's virtual time: served within two picks.
        let next: Vec<usize> = (0..2)
            .filter_map(|_| q.pop_fitting(100, 0))
            .map(|(c, _)| c)
            .collect();
        assert!(next.contains(&1), "{next:?}");
    }

    #[test]
    fn an_idle_class_does_not_bank_credit() {
        let mut q = FairQueue::new(&[1.0, 1.0], 1000, 100);
        for i in 0..100 {
            q.push(0, 10, (0, i)).unwrap();
        }
        for _ in 0..100 {
            q.pop_fitting(100, 0);
        }
        for i in 0..10 {
            q.push(0, 10, (0, i)).unwrap();
            q.push(1, 10, (1, i)).unwrap();
        }
        let next: Vec<usize> = (0..4)
            .filter_map(|_| q.pop_fitting(100, 0))
            .map(|(c, _)| c)
            .collect();
        assert_eq!(
            next.iter().filter(|&&c| c == 0).count(),
            2,
            "alternate, not 10 in a row for class 1: {next:?}"
        );
    }

    #[test]
    fn retain_drops_cancelled_requests_and_their_count() {
        let mut q = FairQueue::new(&[1.0], 10, 100);
        for i in 0..4 {
            q.push(0, 1, i).unwrap();
        }
        q.retain(|&i| i % 2 == 0);
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop_fitting(10, 0), Some(0));
        assert_eq!(q.pop_fitting(10, 0), Some(2));
    }

    #[test]
    fn prefill_runs_at_once_when_nothing_decodes() {
        let mut p = StepPlanner::new(knobs(64, 3));
        let plan = p.plan(&[prefilling(100)]);
        assert_eq!(plan.prefill, vec![(0, 64)]);
        assert!(!plan.decode);
    }

    #[test]
    fn prefill_chunks_respect_the_token_budget_in_admission_order() {
        let mut p = StepPlanner::new(knobs(64, 0));
        let plan = p.plan(&[prefilling(40), decoding(), prefilling(40), prefilling(5)]);
        // 40 fits, the second 40 does not fit the 24 left and waits whole, 5 fits.
        assert_eq!(plan.prefill, vec![(0, 40), (3, 5)]);
        assert!(plan.decode);
    }

    #[test]
    fn prompts_are_cut_at_the_same_places_alone_or_in_a_batch() {
        let mut alone = StepPlanner::new(knobs(16, 0));
        let mut shared = StepPlanner::new(knobs(16, 0));
        assert_eq!(alone.plan(&[prefilling(40)]).prefill, vec![(0, 16)]);
        // Beside a 10-token prompt, the 40-token one still gets a whole first chunk of 16.
        assert_eq!(
            shared.plan(&[prefilling(10), prefilling(40)]).prefill,
            vec![(0, 10)]
        );
        assert_eq!(
            shared.plan(&[decoding(), prefilling(40)]).prefill,
            vec![(1, 16)]
        );
    }

    #[test]
    fn waiting_prefill_gets_a_turn_after_the_configured_decode_steps() {
        let mut p = StepPlanner::new(knobs(64, 2));
        let seqs = [decoding(), prefilling(10)];
        assert!(p.plan(&seqs).prefill.is_empty());
        assert!(p.plan(&seqs).prefill.is_empty());
        assert_eq!(p.plan(&seqs).prefill, vec![(1, 10)]);
        assert!(p.plan(&seqs).prefill.is_empty(), "the count starts again");
    }

    #[test]
    fn decode_only_steps_never_prefill() {
        let mut p = StepPlanner::new(knobs(64, 0));
        let plan = p.plan(&[decoding(), decoding()]);
        assert_eq!(
            plan,
            StepPlan {
                prefill: vec![],
                decode: true
            }
        );
    }

    #[test]
    fn an_empty_batch_does_nothing() {
        let mut p = StepPlanner::new(knobs(64, 0));
        assert_eq!(p.plan(&[]), StepPlan::default());
    }
}
