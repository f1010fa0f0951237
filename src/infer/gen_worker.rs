//! The replica thread of a generation model: it owns the model and runs the engine loop.
//! Each iteration admits waiting requests into free sequence slots (as the fair queue and the
//! KV budget allow), then runs the step the planner chose: prompt chunks of new sequences and
//! one decode step for every decoding sequence together. Sequences join between steps and
//! leave (finished, stopped or cancelled) at once, freeing their slot and budget.

use super::generate::{FinishReason, GenEvent, Progress};
use super::policy::{BatchKnobs, SeqView, StepPlanner};
use super::queue::ModelQueue;
use super::sampling::{Sampler, SamplingParams};
use super::text::{Detokenizer, StopMatcher};
use super::InferError;
use crate::backend::Generator;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokenizers::Tokenizer;
use tokio::sync::mpsc;

/// A request as the worker receives it (validated and tokenized by `GenerateModel::submit`).
pub(crate) struct GenJob {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    pub enqueued: std::time::Instant,
    pub queue_deadline: std::time::Instant,
    pub events: mpsc::Sender<GenEvent>,
    pub progress: Arc<Progress>,
    /// Scheduling class (the tier's index), for slot shares.
    pub class: usize,
    /// Metrics label.
    pub tier: String,
    /// The request's span, so the replica thread's logs about it carry its request id.
    pub span: tracing::Span,
}

impl GenJob {
    /// KV budget the request reserves while it runs.
    pub fn cost(&self) -> usize {
        self.prompt.len() + self.max_tokens
    }
}

pub(crate) struct WorkerContext {
    pub name: String,
    pub tokenizer: Arc<Tokenizer>,
    pub eos_ids: Vec<u32>,
    pub queue: Arc<ModelQueue<GenJob>>,
    pub knobs: BatchKnobs,
}

/// A live sequence in a slot.
struct Sequence {
    slot: usize,
    prompt: Vec<u32>,
    /// Prompt tokens already in the KV cache.
    prefilled: usize,
    cost: usize,
    events: mpsc::Sender<GenEvent>,
    sampler: Sampler,
    detok: Detokenizer,
    stop: StopMatcher,
    max_tokens: usize,
    ignore_eos: bool,
    generated: usize,
    last: u32,
    done: bool,
    /// The client went away (a send failed or the channel is closed): a cancelled slot.
    cancelled: bool,
    progress: Arc<Progress>,
    class: usize,
    tier: String,
    span: tracing::Span,
    enqueued: Instant,
    admitted: Instant,
    /// When the previous token was sampled (inter-token latency).
    last_token_at: Instant,
}

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

/// Runs until the queue is closed and no sequence is left (shutdown).
/// `replica` is this replica's index among the model's, reported in each request's progress.
pub(crate) fn run(model: &mut dyn Generator, ctx: &WorkerContext, replica: usize) {
    let slots = model.spec().max_slots.min(ctx.knobs.max_batch_size);
    let mut cap = Capacity {
        free_slots: (0..slots).rev().collect(),
        free_tokens: ctx.knobs.max_batch_tokens,
    };
    let mut live: Vec<Sequence> = Vec::with_capacity(slots);
    let mut planner = StepPlanner::new(ctx.knobs);
    let metrics = ReplicaMetrics::new(&ctx.name, replica, slots);
    loop {
        if live.is_empty() && !ctx.queue.wait_for_work() {
            return;
        }
        admit(ctx, &mut cap, &mut live, replica);
        if live.is_empty() {
            // Work is queued but a slot is held for a class about to return (see `share`):
            // check again shortly instead of spinning.
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
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
        for &(i, n) in &plan.prefill {
            let took = prefill_chunk(model, ctx, &mut live[i], n);
            metrics.busy.inc_by(took.as_secs_f64());
        }
        if let Some((took, rows)) = decode_step(model, ctx, &mut live, &decoders) {
            metrics.busy.inc_by(took.as_secs_f64());
            metrics.step.observe(took.as_secs_f64());
            metrics.batch.observe(rows as f64);
        }
        live.retain(|seq| {
            let keep = !seq.done && !seq.events.is_closed();
            if seq.cancelled || (!seq.done && seq.events.is_closed()) {
                metrics.cancelled.inc();
            }
            if !keep {
                ctx.queue.lock().ended(seq.class, now_ms());
                model.release(seq.slot);
                cap.free_slots.push(seq.slot);
                cap.free_tokens += seq.cost;
            }
            keep
        });
        metrics.running.set(live.len() as i64);
        metrics
            .slots_used
            .set((slots - cap.free_slots.len()) as i64);
    }
}

/// Takes waiting requests into free slots while the fair pick fits the free KV budget.
/// Requests whose client is gone or whose queue deadline passed (answered 503 by the async
/// side) are dropped here and never reach the model.
fn admit(ctx: &WorkerContext, cap: &mut Capacity, live: &mut Vec<Sequence>, replica: usize) {
    let mut queue = ctx.queue.lock();
    let now = std::time::Instant::now();
    queue.retain(|job| {
        if now > job.queue_deadline {
            // Say why, so the waiting handler answers 503 queue_timeout even if this check
            // runs before its own timer fires.
            let waited = job.queue_deadline.saturating_duration_since(job.enqueued);
            let error = InferError::QueueTimeout {
                model: ctx.name.clone(),
                waited,
            };
            let _ = job.events.try_send(GenEvent::Failed(error));
            return false;
        }
        !job.events.is_closed()
    });
    while !cap.free_slots.is_empty() {
        let Some(job) = queue.pop_fitting(cap.free_tokens, now_ms()) else {
            break;
        };
        if job.events.try_send(GenEvent::Admitted).is_err() {
            continue;
        }
        let Some(slot) = cap.free_slots.pop() else {
            break;
        };
        // Counted from here until the sequence leaves `live` (then `ended`).
        queue.started(job.class);
        cap.free_tokens -= job.cost();
        let waited = now.saturating_duration_since(job.enqueued);
        job.progress.admitted(replica, waited);
        live.push(Sequence {
            slot,
            cost: job.cost(),
            prompt: job.prompt,
            prefilled: 0,
            events: job.events,
            sampler: Sampler::new(job.sampling),
            detok: Detokenizer::new(),
            stop: StopMatcher::new(job.stop),
            max_tokens: job.max_tokens,
            ignore_eos: job.ignore_eos,
            generated: 0,
            last: 0,
            done: false,
            cancelled: false,
            progress: job.progress,
            class: job.class,
            tier: job.tier,
            span: job.span,
            enqueued: job.enqueued,
            admitted: now,
            last_token_at: now,
        });
        let seq = live.last().expect("just pushed");
        tracing::debug!(parent: &seq.span, slot, waited_ms = waited.as_millis() as u64, "admitted to a slot");
    }
}

/// Feeds the next `n` prompt tokens; the chunk that completes the prompt yields the first
/// output token. Returns the model time it took.
fn prefill_chunk(
    model: &mut dyn Generator,
    ctx: &WorkerContext,
    seq: &mut Sequence,
    n: usize,
) -> Duration {
    if seq.done || seq.events.is_closed() {
        return Duration::ZERO;
    }
    let chunk = &seq.prompt[seq.prefilled..seq.prefilled + n];
    let started = Instant::now();
    let result = guarded(|| model.prefill(seq.slot, chunk));
    let took = started.elapsed();
    seq.progress.add_device_time(took.as_nanos() as u64);
    match result {
        Ok(logits) => {
            seq.prefilled += n;
            if seq.prefilled == seq.prompt.len() {
                seq.accept(ctx, &logits);
            }
        }
        Err(e) => seq.fail(&ctx.name, e),
    }
    took
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
        .filter(|&i| !live[i].done && !live[i].events.is_closed())
        .collect();
    if active.is_empty() {
        return None;
    }
    let batch: Vec<(usize, u32)> = active
        .iter()
        .map(|&i| (live[i].slot, live[i].last))
        .collect();
    let started = Instant::now();
    let result = guarded(|| model.decode(&batch));
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

impl Sequence {
    /// Samples the next token from `logits` and reports what it completes.
    fn accept(&mut self, ctx: &WorkerContext, logits: &[f32]) {
        let token = self.sampler.sample(logits);
        self.generated += 1;
        self.progress.generated.fetch_add(1, Ordering::Relaxed);
        self.observe_token(&ctx.name);
        self.last = token;
        if !self.ignore_eos && ctx.eos_ids.contains(&token) {
            let tail = self.stop.flush();
            self.send(GenEvent::Delta(tail));
            return self.finish(FinishReason::Stop);
        }
        let text = self.detok.push(&ctx.tokenizer, token);
        let step = self.stop.push(&text);
        self.send(GenEvent::Delta(step.emit));
        if step.stopped {
            self.finish(FinishReason::Stop);
        } else if self.generated >= self.max_tokens {
            let tail = self.stop.flush();
            self.send(GenEvent::Delta(tail));
            self.finish(FinishReason::Length);
        }
    }

    /// TTFT and inter-token latency, measured here at the step that sampled the token.
    fn observe_token(&mut self, model: &str) {
        let m = crate::metrics::get();
        let now = Instant::now();
        let labels = [model, self.tier.as_str()];
        if self.generated == 1 {
            m.ttft
                .with_label_values(&labels)
                .observe(now.duration_since(self.enqueued).as_secs_f64());
            m.prefill_time
                .with_label_values(&labels)
                .observe(now.duration_since(self.admitted).as_secs_f64());
        } else {
            m.itl
                .with_label_values(&labels)
                .observe(now.duration_since(self.last_token_at).as_secs_f64());
        }
        self.last_token_at = now;
    }

    fn finish(&mut self, reason: FinishReason) {
        tracing::debug!(parent: &self.span, tokens = self.generated, reason = reason.as_str(), "sequence finished");
        self.send(GenEvent::Finished {
            reason,
            completion_tokens: self.generated,
        });
        self.done = true;
    }

    fn fail(&mut self, model: &str, detail: String) {
        tracing::error!(model, slot = self.slot, error = %detail, "generation failed");
        self.send(GenEvent::Failed(InferError::Backend(detail)));
        self.done = true;
    }

    /// The channel has room for every event (see `submit`); a failed send means the client
    /// is gone, which ends the sequence like a cancellation.
    fn send(&mut self, event: GenEvent) {
        if matches!(&event, GenEvent::Delta(t) if t.is_empty()) {
            return;
        }
        if self.events.try_send(event).is_err() {
            self.done = true;
            self.cancelled = true;
        }
    }
}

#[cfg(test)]
#[path = "gen_worker_tests.rs"]
mod tests;
