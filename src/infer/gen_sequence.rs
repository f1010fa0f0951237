//! One live sequence in a replica's slot: one choice of a request. It turns each step's
//! logits into a token (through its own sampling pipeline), text, log-probabilities and
//! events, and knows when it is finished. The replica loop (`gen_worker`) decides when it
//! runs.

use super::gen_job::{FinishReason, GenEvent, GenJob, Progress, WorkerContext};
use super::logprobs::TokenLogprob;
use super::sampling::{Sampler, SamplingParams};
use super::text::{Detokenizer, StopMatcher};
use super::InferError;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

pub(crate) struct Sequence {
    pub slot: usize,
    /// Choice index within its request (0 for n = 1).
    pub index: usize,
    pub prompt: Arc<[u32]>,
    /// Prompt tokens already in the KV cache.
    pub prefilled: usize,
    /// KV budget held (prompt + max_tokens per choice not yet split off).
    pub cost: usize,
    /// Slots held for the other choices until the prompt is prefilled (n > 1), when its KV
    /// is copied into them.
    pub reserved: Vec<usize>,
    pub events: mpsc::Sender<GenEvent>,
    sampling: SamplingParams,
    sampler: Sampler,
    stops: Vec<String>,
    detok: Detokenizer,
    stop: StopMatcher,
    max_tokens: usize,
    ignore_eos: bool,
    /// Alternatives per token when log-probabilities were asked for.
    pub logprobs: Option<usize>,
    /// Log-probabilities of the prompt's tokens are collected during prefill (`echo`).
    pub prompt_logprobs: bool,
    pub prompt_scores: Vec<TokenLogprob>,
    pub generated: usize,
    /// Sampled tokens, in order: with the prompt, what the slot's KV holds (all but the
    /// last), offered to the prefix cache when the sequence ends.
    pub output: Vec<u32>,
    /// Prefix-cache scope; None: neither reuses nor leaves cached blocks.
    pub prefix_scope: Option<Arc<str>>,
    /// Ended by a model error: its slot is not offered to the prefix cache.
    pub failed: bool,
    pub last: u32,
    pub done: bool,
    /// The client went away (a send failed or the channel is closed): a cancelled slot.
    pub cancelled: bool,
    pub progress: Arc<Progress>,
    pub class: usize,
    tier: String,
    pub span: tracing::Span,
    enqueued: Instant,
    admitted: Instant,
    /// When the previous token was sampled (inter-token latency).
    last_token_at: Instant,
}

impl Sequence {
    /// How long it has held its slot.
    pub fn held(&self) -> std::time::Duration {
        self.admitted.elapsed()
    }

    /// The first choice of `job`, in `slot`, holding `reserved` for the others.
    pub fn first(job: GenJob, slot: usize, reserved: Vec<usize>, now: Instant) -> Self {
        let cost = job.cost();
        Sequence {
            slot,
            index: 0,
            sampler: Sampler::new(job.sampling.clone(), &job.prompt).with_grammar(job.grammar),
            prompt: job.prompt.into(),
            prefilled: 0,
            cost,
            reserved,
            events: job.events,
            sampling: job.sampling,
            stop: StopMatcher::new(job.stop.clone()),
            stops: job.stop,
            detok: Detokenizer::new(),
            max_tokens: job.max_tokens,
            ignore_eos: job.ignore_eos,
            logprobs: job.logprobs,
            prompt_logprobs: job.prompt_logprobs,
            prompt_scores: Vec::new(),
            generated: 0,
            output: Vec::new(),
            prefix_scope: job.prefix_scope,
            failed: false,
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
        }
    }

    /// Choice `index` in `slot`, whose KV already holds the prompt (copied from this one's
    /// before it sampled anything). Takes one choice's share of this sequence's budget.
    pub fn sibling(&mut self, index: usize, slot: usize, per_choice: usize) -> Self {
        self.cost -= per_choice;
        let sampling = self.sampling.for_choice(index);
        let grammar = self.sampler.grammar_mut().map(|g| g.fork());
        Sequence {
            slot,
            index,
            sampler: Sampler::new(sampling.clone(), &self.prompt).with_grammar(grammar),
            prompt: self.prompt.clone(),
            prefilled: self.prefilled,
            cost: per_choice,
            reserved: Vec::new(),
            events: self.events.clone(),
            sampling,
            stop: StopMatcher::new(self.stops.clone()),
            stops: self.stops.clone(),
            detok: Detokenizer::new(),
            max_tokens: self.max_tokens,
            ignore_eos: self.ignore_eos,
            logprobs: self.logprobs,
            prompt_logprobs: false,
            prompt_scores: Vec::new(),
            generated: 0,
            output: Vec::new(),
            prefix_scope: self.prefix_scope.clone(),
            failed: false,
            last: 0,
            done: false,
            cancelled: false,
            progress: self.progress.clone(),
            class: self.class,
            tier: self.tier.clone(),
            span: self.span.clone(),
            enqueued: self.enqueued,
            admitted: self.admitted,
            last_token_at: self.last_token_at,
        }
    }

    /// Samples the next token from `logits` and reports what it completes.
    pub fn accept(&mut self, ctx: &WorkerContext, logits: &[f32]) {
        let (token, complete) = match self.sampler.sample(logits) {
            Ok(sampled) => sampled,
            Err(e) => return self.fail(&ctx.name, e),
        };
        let logprob = self.logprobs.map(|k| TokenLogprob::of(logits, token, k));
        self.generated += 1;
        self.progress.generated.fetch_add(1, Ordering::Relaxed);
        self.observe_token(&ctx.name);
        self.last = token;
        self.output.push(token);
        // A grammar decides where the output ends (it allows end-of-sequence only there), so
        // `ignore_eos` does not apply to it.
        let eos_ends = !self.ignore_eos || self.constrained();
        if eos_ends && ctx.eos_ids.contains(&token) {
            let tail = self.stop.flush();
            self.delta(tail, None);
            return self.finish(FinishReason::Stop);
        }
        let text = self.detok.push(&ctx.tokenizer, token);
        let step = self.stop.push(&text);
        self.delta(step.emit, logprob);
        if step.stopped {
            self.finish(FinishReason::Stop);
        } else if complete {
            // The grammar allows nothing more: the output is whole.
            let tail = self.stop.flush();
            self.delta(tail, None);
            self.finish(FinishReason::Stop);
        } else if self.generated >= self.max_tokens {
            let tail = self.stop.flush();
            self.delta(tail, None);
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

    /// Text and log-probability of one step; nothing is sent when there is neither.
    fn delta(&mut self, text: String, logprob: Option<TokenLogprob>) {
        if text.is_empty() && logprob.is_none() {
            return;
        }
        self.send(GenEvent::Delta {
            index: self.index,
            text,
            logprob,
        });
    }

    fn finish(&mut self, reason: FinishReason) {
        tracing::debug!(parent: &self.span, choice = self.index, tokens = self.generated, reason = reason.as_str(), "sequence finished");
        self.send(GenEvent::Finished {
            index: self.index,
            reason,
            completion_tokens: self.generated,
        });
        self.done = true;
    }

    /// Shutdown cut it short: the client is told; it is billed for what it got.
    pub fn interrupt(&mut self) {
        tracing::info!(parent: &self.span, choice = self.index, tokens = self.generated, "interrupted by shutdown");
        self.send(GenEvent::Failed(InferError::Interrupted));
        self.done = true;
    }

    pub fn fail(&mut self, model: &str, detail: String) {
        tracing::error!(model, slot = self.slot, error = %detail, "generation failed");
        self.send(GenEvent::Failed(InferError::Backend(detail)));
        self.done = true;
        self.failed = true;
    }

    /// The channel has room for every event (see `enqueue`); a failed send means the client
    /// is gone, which ends the sequence like a cancellation.
    pub fn send(&mut self, event: GenEvent) {
        if self.events.try_send(event).is_err() {
            self.done = true;
            self.cancelled = true;
        }
    }

    /// The grammar's mask for the next step, if it has one (run while the model steps).
    pub fn prepare_mask(&mut self) {
        if let Some(g) = self.sampler.grammar_mut() {
            g.prepare();
        }
    }

    pub fn constrained(&self) -> bool {
        self.sampler.has_grammar()
    }

    /// The metrics' tier label.
    pub fn tier(&self) -> &str {
        &self.tier
    }

    /// Whether the sequence should still run.
    pub fn live(&self) -> bool {
        !self.done && !self.events.is_closed()
    }
}
