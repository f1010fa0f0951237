//! What passes between a request and the replica that runs it: the job on the queue, the
//! events back, and the progress the ledger bills from. Both sides depend on this module and
//! not on each other.

use super::grammar::Grammar;
use super::logprobs::TokenLogprob;
use super::policy::BatchKnobs;
use super::queue::{ModelQueue, Refusable};
use super::sampling::SamplingParams;
use super::InferError;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokenizers::Tokenizer;
use tokio::sync::mpsc;

/// A request as the worker receives it (validated and tokenized by `GenerateModel::submit`).
pub(crate) struct GenJob {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    /// Choices; each takes a slot, all admitted together.
    pub n: usize,
    pub logprobs: Option<usize>,
    pub prompt_logprobs: bool,
    /// The output's compiled grammar (`response_format`, tools); each choice steps a copy.
    pub grammar: Option<Grammar>,
    pub enqueued: std::time::Instant,
    pub queue_deadline: std::time::Instant,
    pub events: mpsc::Sender<GenEvent>,
    pub progress: Arc<Progress>,
    /// Scheduling class (the tier's index), for slot shares.
    pub class: usize,
    /// Metrics label.
    pub tier: String,
    /// Prefix-cache scope (see `GenRequest::prefix_scope`); None: not cached.
    pub prefix_scope: Option<Arc<str>>,
    /// The request's span, so the replica thread's logs about it carry its request id.
    pub span: tracing::Span,
}

impl GenJob {
    /// KV budget one choice reserves while it runs.
    pub fn choice_cost(&self) -> usize {
        self.prompt.len() + self.max_tokens
    }

    /// KV budget the request reserves while it runs: every choice holds its own copy.
    pub fn cost(&self) -> usize {
        self.choice_cost() * self.n
    }
}

impl Refusable for GenJob {
    fn refuse(self, error: InferError) {
        let _ = self.events.try_send(GenEvent::Failed(error));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End-of-sequence token or a stop sequence.
    Stop,
    /// `max_tokens` or the context length was reached.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// Events from the worker to one request, in order: `Admitted`, then `Prompt` if asked, then
/// for each choice (interleaved by `index`) any number of `Delta` and one `Finished`; or a
/// `Failed` at any point, which ends the request.
#[derive(Debug)]
pub enum GenEvent {
    Admitted,
    /// The prompt's first token and the log-probabilities of the ones after it
    /// (`prompt_logprobs`).
    Prompt {
        first: u32,
        scores: Vec<TokenLogprob>,
    },
    /// New text of choice `index` (possibly empty while a stop sequence or a multi-byte
    /// character is pending) and the sampled token's log-probability, when asked.
    Delta {
        index: usize,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    Finished {
        index: usize,
        reason: FinishReason,
        completion_tokens: usize,
    },
    Failed(InferError),
}

/// What the worker has done for one request so far, readable at any moment (also after a
/// cancellation, when no final event will say it): the usage ledger bills from it.
#[derive(Debug, Default)]
pub struct Progress {
    /// Completion tokens sampled.
    pub generated: AtomicU64,
    /// This request's share of model time, in ns: its prefill chunks in full, and of each
    /// decode step the step time divided by the rows decoded together.
    pub device_ns: AtomicU64,
    /// Time spent queued, in ns (set at admission).
    pub queued_ns: AtomicU64,
    /// Index + 1 of the replica that admitted it; 0 until admitted.
    replica: AtomicUsize,
    /// Prompt tokens whose KV came from the prefix cache (set at admission).
    cached: AtomicU64,
}

impl Progress {
    pub(crate) fn admitted(&self, replica: usize, waited: Duration) {
        self.queued_ns
            .store(waited.as_nanos() as u64, Ordering::Relaxed);
        self.replica.store(replica + 1, Ordering::Relaxed);
    }

    pub(crate) fn set_cached(&self, tokens: usize) {
        self.cached.store(tokens as u64, Ordering::Relaxed);
    }

    /// Prompt tokens served from the prefix cache (`cached_tokens` in usage).
    pub fn cached(&self) -> u64 {
        self.cached.load(Ordering::Relaxed)
    }

    pub(crate) fn add_device_time(&self, ns: u64) {
        self.device_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// The replica index, once admitted.
    pub fn replica(&self) -> Option<usize> {
        self.replica.load(Ordering::Relaxed).checked_sub(1)
    }

    pub fn generated(&self) -> u64 {
        self.generated.load(Ordering::Relaxed)
    }

    pub fn device_seconds(&self) -> f64 {
        self.device_ns.load(Ordering::Relaxed) as f64 / 1e9
    }

    pub fn queued(&self) -> Duration {
        Duration::from_nanos(self.queued_ns.load(Ordering::Relaxed))
    }
}

/// What a replica's loop shares with the sequences it runs.
pub(crate) struct WorkerContext {
    pub name: String,
    pub tokenizer: Arc<Tokenizer>,
    pub eos_ids: Vec<u32>,
    pub queue: Arc<ModelQueue<GenJob>>,
    pub knobs: BatchKnobs,
}
