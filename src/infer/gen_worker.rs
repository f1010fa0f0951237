//! The replica thread of a generation model: it owns the model and runs the engine loop.
//! Each iteration admits waiting requests into free sequence slots (as the fair queue and the
//! KV budget allow), then runs the step the planner chose: prompt chunks of new sequences and
//! one decode step for every decoding sequence together. Sequences join between steps and
//! leave (finished, stopped or cancelled) at once, freeing their slot and budget.

pub(crate) use super::gen_job::WorkerContext;
use super::gen_job::{GenEvent, GenJob};
use super::gen_prefix;
use super::gen_sequence::Sequence;
use super::logprobs::TokenLogprob;
use super::policy::{SeqView, StepPlanner};
use super::queue::ModelQueue;
use super::InferError;
use crate::backend::Generator;
use std::time::{Duration, Instant};

/// Free slots and KV budget of one replica.
struct Capacity {
    free_slots: Vec<usize>,
    free_tokens: usize,
}

/// Milliseconds on a process-wide monotonic clock (slot-share grace periods).
fn now_ms() -> u64 {
    static START: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
    START.elapsed().as_millis() as u64
}

/// A replica's own metric handles, resolved once (labels: model, replica).
struct ReplicaMetrics {
    step: prometheus::Histogram,
    batch: prometheus::Histogram,
    busy: prometheus::Counter,
    running: prometheus::IntGauge,
    slots_used: prometheus::IntGauge,
    cancelled: prometheus::IntCounter,
}

impl ReplicaMetrics {
    fn new(model: &str, replica: usize, slots: usize) -> Self {
        let m = crate::metrics::get();
        let replica = replica.to_string();
        let labels = [model, replica.as_str()];
        m.kv_slots_total
            .with_label_values(&labels)
            .set(slots as i64);
        ReplicaMetrics {
            step: m.decode_step.with_label_values(&labels),
            batch: m.batch_size.with_label_values(&labels),
            busy: m.busy_seconds.with_label_values(&labels),
            running: m.running.with_label_values(&labels),
            slots_used: m.kv_slots_used.with_label_values(&labels),
            cancelled: m.cancelled_slots.with_label_values(&labels),
        }
    }
}

/// The live sequences of a replica. If the replica thread dies (a panic outside a guarded
/// model call), dropping it hands their slots back to the fair queue's slot shares, and
/// drops their event senders, which ends their requests.
struct Live<'a> {
    seqs: Vec<Sequence>,
    queue: &'a ModelQueue<GenJob>,
}

impl Drop for Live<'_> {
    fn drop(&mut self) {
        let mut queue = self.queue.lock();
        for seq in &self.seqs {
            for _ in std::iter::once(&seq.slot).chain(&seq.reserved) {
                queue.ended(seq.class, now_ms());
            }
        }
    }
}

/// Runs until the queue is closed and no sequence is left (shutdown).
/// `replica` is this replica's index among the model's, reported in each request's progress.
pub(crate) fn run(model: &mut dyn Generator, ctx: &WorkerContext, replica: usize) {
    let slots = model.spec().max_slots.min(ctx.knobs.max_batch_size);
    let mut cap = Capacity {
        free_slots: (0..slots).rev().collect(),
        free_tokens: ctx.knobs.max_batch_tokens,
    };
    let mut guard = Live {
        seqs: Vec::with_capacity(slots),
        queue: &ctx.queue,
    };
    let live = &mut guard.seqs;
    let mut planner = StepPlanner::new(ctx.knobs);
    let metrics = ReplicaMetrics::new(&ctx.name, replica, slots);
    let mut prefix_metrics = gen_prefix::PrefixMetrics::new(&ctx.name, replica);
    loop {
        if live.is_empty() && !ctx.queue.wait_for_work() {
            return;
        }
        if ctx.queue.take_fault() {
            panic!(
                "fault injected into replica {replica} of {} (test hook)",
                ctx.name
            );
        }
        if ctx.queue.is_interrupted() {
            // Shutdown's grace period is over: each request is told and billed for what it got.
            live.iter_mut().for_each(Sequence::interrupt);
        } else {
            let known = live.len();
            admit(ctx, &mut cap, live, replica);
            // Outside the queue's lock: copying a long cached prefix takes milliseconds.
            for seq in &mut live[known..] {
                gen_prefix::reuse(model, seq, &prefix_metrics);
            }
            if live.is_empty() {
                // Work is queued but a slot is held for a class about to return (see `share`):
                // check again shortly instead of spinning.
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            step(model, ctx, live, &mut planner, &metrics);
        }
        live.retain(|seq| {
            let keep = seq.live();
            if seq.cancelled || (!seq.done && seq.events.is_closed()) {
                metrics.cancelled.inc();
            }
            if !keep {
                gen_prefix::keep(model, seq);
                // Its own slot and any still held for choices it never started.
                for &slot in std::iter::once(&seq.slot).chain(&seq.reserved) {
                    ctx.queue.record_service(seq.held());
                    ctx.queue.lock().ended(seq.class, now_ms());
                    model.release(slot);
                    cap.free_slots.push(slot);
                }
                cap.free_tokens += seq.cost;
            }
            keep
        });
        prefix_metrics.update(model);
        metrics.running.set(live.len() as i64);
        metrics
            .slots_used
            .set((slots - cap.free_slots.len()) as i64);
    }
}

/// One engine step: the planned prefill chunks and one decode of every sequence past its
/// prompt. Choices a completed prompt starts join `live` after the step.
fn step(
    model: &mut dyn Generator,
    ctx: &WorkerContext,
    live: &mut Vec<Sequence>,
    planner: &mut StepPlanner,
    metrics: &ReplicaMetrics,
) {
    let views: Vec<SeqView> = live
        .iter()
        .map(|s| SeqView {
            prefill_left: s.prompt.len() - s.prefilled,
        })
        .collect();
    let plan = planner.plan(&views);
    let decoders: Vec<usize> = if plan.decode {
        (0..live.len())
            .filter(|&i| views[i].prefill_left == 0)
            .collect()
    } else {
        Vec::new()
    };
    let mut choices = Vec::new();
    for &(i, n) in &plan.prefill {
        let took = prefill_chunk(model, ctx, &mut live[i], n, &mut choices);
        metrics.busy.inc_by(took.as_secs_f64());
    }
    if let Some((took, rows)) = decode_step(model, ctx, live, &decoders) {
        metrics.busy.inc_by(took.as_secs_f64());
        metrics.step.observe(took.as_secs_f64());
        metrics.batch.observe(rows as f64);
    }
    // New choices decode from the next step on.
    live.append(&mut choices);
}

/// Takes waiting requests into free slots while the fair pick fits the free KV budget.
/// Requests whose client is gone or whose queue deadline passed (answered 503 by the async
/// side) are dropped here and never reach the model.
fn admit(ctx: &WorkerContext, cap: &mut Capacity, live: &mut Vec<Sequence>, replica: usize) {
    let mut queue = ctx.queue.lock();
    let now = std::time::Instant::now();
    let retry_after = ctx.queue.retry_after_at(queue.len());
    queue.retain(|job| {
        if now > job.queue_deadline {
            // Say why, so the waiting handler answers 503 queue_timeout even if this check
            // runs before its own timer fires.
            let waited = job.queue_deadline.saturating_duration_since(job.enqueued);
            let error = InferError::QueueTimeout {
                model: ctx.name.clone(),
                waited,
                retry_after,
            };
            let _ = job.events.try_send(GenEvent::Failed(error));
            return false;
        }
        !job.events.is_closed()
    });
    while !cap.free_slots.is_empty() {
        // A request takes a slot per choice, all at once, or waits as one unit.
        let (tokens, slots) = (cap.free_tokens, cap.free_slots.len());
        let Some(job) = queue.pop_if(now_ms(), |cost, job: &GenJob| {
            cost <= tokens && job.n <= slots
        }) else {
            break;
        };
        if job.events.try_send(GenEvent::Admitted).is_err() {
            continue;
        }
        let taken = cap.free_slots.split_off(slots - job.n);
        // Counted from here until each slot is freed (then `ended`).
        for _ in &taken {
            queue.started(job.class);
        }
        cap.free_tokens -= job.cost();
        let waited = now.saturating_duration_since(job.enqueued);
        job.progress.admitted(replica, waited);
        let (slot, reserved) = (taken[taken.len() - 1], taken[..taken.len() - 1].to_vec());
        let seq = Sequence::first(job, slot, reserved, now);
        tracing::debug!(parent: &seq.span, slot, waited_ms = waited.as_millis() as u64, "admitted to a slot");
        live.push(seq);
    }
}

/// Prompt tokens per step of a sequence whose prompt log-probabilities are asked for: they
/// are fed one position at a time, and the other sequences should not wait for a long run.
const SCORED_CHUNK: usize = 32;

/// Feeds the next `n` prompt tokens; the chunk that completes the prompt yields the first
/// output token of each choice (the other choices start here, from a copy of the prompt's
/// KV, into `choices`). Returns the model time it took.
fn prefill_chunk(
    model: &mut dyn Generator,
    ctx: &WorkerContext,
    seq: &mut Sequence,
    n: usize,
    choices: &mut Vec<Sequence>,
) -> Duration {
    if !seq.live() {
        return Duration::ZERO;
    }
    let n = if seq.prompt_logprobs {
        n.min(SCORED_CHUNK)
    } else {
        n
    };
    let started = Instant::now();
    let result = if seq.prompt_logprobs {
        prefill_scored(model, seq, n)
    } else {
        let chunk = &seq.prompt[seq.prefilled..seq.prefilled + n];
        guarded(|| model.prefill(seq.slot, chunk))
    };
    let result = result.and_then(|logits| {
        seq.prefilled += n;
        if seq.prefilled < seq.prompt.len() {
            return Ok(None);
        }
        let per_choice = seq.cost / (seq.reserved.len() + 1);
        for (i, slot) in std::mem::take(&mut seq.reserved).into_iter().enumerate() {
            let copied = guarded(|| model.copy_slot(seq.slot, slot));
            // Owned by the new choice from here, released with it.
            choices.push(seq.sibling(i + 1, slot, per_choice));
            copied?;
        }
        Ok(Some(logits))
    });
    let took = started.elapsed();
    seq.progress.add_device_time(took.as_nanos() as u64);
    match result {
        Ok(Some(logits)) => {
            if seq.prompt_logprobs {
                let scores = std::mem::take(&mut seq.prompt_scores);
                let first = seq.prompt[0];
                seq.send(GenEvent::Prompt { first, scores });
            }
            seq.accept(ctx, &logits);
            for choice in choices
                .iter_mut()
                .filter(|c| c.events.same_channel(&seq.events))
            {
                choice.accept(ctx, &logits);
            }
        }
        Ok(None) => {}
        Err(e) => {
            seq.fail(&ctx.name, e);
            for choice in choices
                .iter_mut()
                .filter(|c| c.events.same_channel(&seq.events))
            {
                choice.done = true;
            }
        }
    }
    took
}

/// Feeds `n` prompt tokens one position at a time, keeping each position's log-probability
/// of the prompt token that follows it. Returns the logits after the last one.
fn prefill_scored(
    model: &mut dyn Generator,
    seq: &mut Sequence,
    n: usize,
) -> Result<Vec<f32>, String> {
    let mut logits = Vec::new();
    for pos in seq.prefilled..seq.prefilled + n {
        let token = seq.prompt[pos];
        logits = guarded(|| model.decode(&[(seq.slot, token)]))?
            .pop()
            .ok_or("decode returned no logits")?;
        if let (Some(&next), Some(top)) = (seq.prompt.get(pos + 1), seq.logprobs) {
            seq.prompt_scores.push(TokenLogprob::of(&logits, next, top));
        }
    }
    Ok(logits)
}

/// One decode step for the sequences at `indices` (those decoding when the step was planned).
/// Returns its model time and rows, if it ran.
fn decode_step(
    model: &mut dyn Generator,
    ctx: &WorkerContext,
    live: &mut [Sequence],
    indices: &[usize],
) -> Option<(Duration, usize)> {
    let active: Vec<usize> = indices
        .iter()
        .copied()
        .filter(|&i| live[i].live())
        .collect();
    if active.is_empty() {
        return None;
    }
    let batch: Vec<(usize, u32)> = active
        .iter()
        .map(|&i| (live[i].slot, live[i].last))
        .collect();
    let started = Instant::now();
    let result = while_masking(live, &active, || guarded(|| model.decode(&batch)));
    let took = started.elapsed();
    // The step's time is shared equally by the rows it decoded.
    let share = took.as_nanos() as u64 / active.len() as u64;
    for &i in &active {
        live[i].progress.add_device_time(share);
    }
    match result {
        Ok(rows) if rows.len() == active.len() => {
            for (&i, logits) in active.iter().zip(rows) {
                live[i].accept(ctx, &logits);
            }
        }
        Ok(_) => {
            for &i in &active {
                live[i].fail(&ctx.name, "decode returned the wrong number of rows".into());
            }
        }
        Err(message) => {
            for &i in &active {
                live[i].fail(&ctx.name, message.clone());
            }
        }
    }
    Some((took, active.len()))
}

/// Runs `step` (the model's forward) while another thread computes the next grammar masks of
/// the constrained rows among `indices`, so that they do not add to the step's time (nor
/// to the unconstrained rows' inter-token latency).
fn while_masking<T>(live: &mut [Sequence], indices: &[usize], step: impl FnOnce() -> T) -> T {
    let mut constrained: Vec<&mut Sequence> = live
        .iter_mut()
        .enumerate()
        .filter(|(i, s)| indices.contains(i) && s.constrained())
        .map(|(_, s)| s)
        .collect();
    if constrained.is_empty() {
        return step();
    }
    std::thread::scope(|scope| {
        scope.spawn(move || constrained.iter_mut().for_each(|s| s.prepare_mask()));
        step()
    })
}

/// Runs one model call, turning an error or a panic inside candle into a message, so that a
/// model failure fails the requests of this step and the replica keeps serving.
fn guarded<T>(f: impl FnOnce() -> crate::backend::Result<T>) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(panic) => Err(panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .map_or_else(
                || "panic in the model".to_string(),
                |s| format!("panic in the model: {s}"),
            )),
    }
}

#[cfg(test)]
#[path = "gen_worker_tests.rs"]
mod tests;
