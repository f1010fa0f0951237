//! The replica thread of a generation model: it owns the model, pulls requests from the
//! model's queue into free sequence slots, and decodes all live sequences together one step
//! at a time (new requests join between steps; finished or cancelled ones leave at once).

use super::generate::{FinishReason, GenEvent};
use super::sampling::{Sampler, SamplingParams};
use super::text::{Detokenizer, StopMatcher};
use super::InferError;
use crate::backend::Generator;
use std::sync::{Arc, Mutex};
use tokenizers::Tokenizer;
use tokio::sync::mpsc;

/// A request as the worker receives it (validated and tokenized by `GenerateModel::submit`).
pub(crate) struct GenJob {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    pub queue_deadline: std::time::Instant,
    pub events: mpsc::Sender<GenEvent>,
}

/// One model queue shared by its replicas. A std mutex because only replica threads lock it:
/// an idle replica blocks inside it waiting for work, a busy one only `try_lock`s, so a busy
/// replica never stalls its batch on the lock.
pub(crate) type SharedQueue = Arc<Mutex<mpsc::Receiver<GenJob>>>;

pub(crate) struct WorkerContext {
    pub name: String,
    pub tokenizer: Arc<Tokenizer>,
    pub eos_ids: Vec<u32>,
    pub queue: SharedQueue,
}

/// A live sequence in a slot.
struct Sequence {
    slot: usize,
    events: mpsc::Sender<GenEvent>,
    sampler: Sampler,
    detok: Detokenizer,
    stop: StopMatcher,
    max_tokens: usize,
    ignore_eos: bool,
    generated: usize,
    last: u32,
    done: bool,
}

/// Runs until every sender of the queue is gone (shutdown).
pub(crate) fn run(model: &mut dyn Generator, ctx: &WorkerContext) {
    let slots = model.spec().max_slots;
    let mut free: Vec<usize> = (0..slots).rev().collect();
    let mut live: Vec<Sequence> = Vec::with_capacity(slots);
    loop {
        while let Some(&slot) = free.last() {
            let job = if live.is_empty() {
                match next_job_blocking(&ctx.queue) {
                    Some(job) => job,
                    None => return,
                }
            } else {
                match try_next_job(&ctx.queue) {
                    Some(job) => job,
                    None => break,
                }
            };
            let Some(seq) = admit(model, ctx, slot, job) else {
                continue;
            };
            free.pop();
            if seq.done {
                model.release(slot);
                free.push(slot);
            } else {
                live.push(seq);
            }
        }
        if !live.is_empty() {
            decode_step(model, ctx, &mut live);
        }
        live.retain(|seq| {
            if seq.done || seq.events.is_closed() {
                model.release(seq.slot);
                free.push(seq.slot);
                false
            } else {
                true
            }
        });
    }
}

fn next_job_blocking(queue: &SharedQueue) -> Option<GenJob> {
    let mut rx = queue
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    rx.blocking_recv()
}

fn try_next_job(queue: &SharedQueue) -> Option<GenJob> {
    let mut rx = queue.try_lock().ok()?;
    rx.try_recv().ok()
}

/// Prefills a job into `slot`. `None` when the job never needed the slot: its client is
/// gone, or it waited past its queue deadline (answered 503 by the async side).
fn admit(
    model: &mut dyn Generator,
    ctx: &WorkerContext,
    slot: usize,
    job: GenJob,
) -> Option<Sequence> {
    if job.events.is_closed() {
        tracing::debug!(model = %ctx.name, "request cancelled while queued");
        return None;
    }
    if std::time::Instant::now() > job.queue_deadline {
        return None;
    }
    job.events.try_send(GenEvent::Admitted).ok()?;
    let mut seq = Sequence {
        slot,
        events: job.events,
        sampler: Sampler::new(job.sampling),
        detok: Detokenizer::new(),
        stop: StopMatcher::new(job.stop),
        max_tokens: job.max_tokens,
        ignore_eos: job.ignore_eos,
        generated: 0,
        last: 0,
        done: false,
    };
    match guarded(|| model.prefill(slot, &job.prompt)) {
        Ok(logits) => seq.accept(ctx, &logits),
        Err(e) => seq.fail(&ctx.name, e),
    }
    Some(seq)
}

fn decode_step(model: &mut dyn Generator, ctx: &WorkerContext, live: &mut [Sequence]) {
    let batch: Vec<(usize, u32)> = live
        .iter()
        .filter(|s| !s.done && !s.events.is_closed())
        .map(|s| (s.slot, s.last))
        .collect();
    if batch.is_empty() {
        return;
    }
    match guarded(|| model.decode(&batch)) {
        Ok(rows) => {
            let mut rows = rows.into_iter();
            for seq in live.iter_mut().filter(|s| !s.done && !s.events.is_closed()) {
                match rows.next() {
                    Some(logits) => seq.accept(ctx, &logits),
                    None => seq.fail(&ctx.name, "decode returned too few rows".into()),
                }
            }
        }
        Err(message) => {
            for seq in live.iter_mut() {
                seq.fail(&ctx.name, message.clone());
            }
        }
    }
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

    fn finish(&mut self, reason: FinishReason) {
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
        }
    }
}

#[cfg(test)]
mod tests {
    //! The scheduling loop on a fake model whose next token is always `last + 1`; the real
    //! model's behaviour is tested over HTTP in `tests/`.
    use super::*;
    use crate::backend::GeneratorSpec;
    use std::collections::HashMap;
    use tokenizers::models::wordlevel::WordLevel;

    const VOCAB: usize = 16;
    const EOS: u32 = 15;

    struct Counting {
        spec: GeneratorSpec,
        last: HashMap<usize, u32>,
        batch_sizes: Arc<Mutex<Vec<usize>>>,
        prefills: Arc<Mutex<usize>>,
    }

    fn logits_for(next: u32) -> Vec<f32> {
        (0..VOCAB)
            .map(|i| if i as u32 == next { 1.0 } else { 0.0 })
            .collect()
    }

    impl Generator for Counting {
        fn spec(&self) -> &GeneratorSpec {
            &self.spec
        }
        fn prefill(&mut self, slot: usize, tokens: &[u32]) -> crate::backend::Result<Vec<f32>> {
            *self.prefills.lock().unwrap() += 1;
            let last = *tokens.last().unwrap_or(&0);
            self.last.insert(slot, last);
            Ok(logits_for((last + 1) % VOCAB as u32))
        }
        fn decode(&mut self, batch: &[(usize, u32)]) -> crate::backend::Result<Vec<Vec<f32>>> {
            self.batch_sizes.lock().unwrap().push(batch.len());
            Ok(batch
                .iter()
                .map(|&(_, t)| logits_for((t + 1) % VOCAB as u32))
                .collect())
        }
        fn release(&mut self, slot: usize) {
            self.last.remove(&slot);
        }
    }

    fn tokenizer() -> Arc<Tokenizer> {
        let vocab: HashMap<String, u32> = (0..VOCAB as u32).map(|i| (format!("t{i}"), i)).collect();
        let model = WordLevel::builder()
            .vocab(vocab.into_iter().collect())
            .unk_token("t0".into())
            .build()
            .unwrap();
        Arc::new(Tokenizer::new(model))
    }

    fn job(prompt: Vec<u32>, max_tokens: usize) -> (GenJob, mpsc::Receiver<GenEvent>) {
        let (tx, rx) = mpsc::channel(max_tokens + 2);
        let job = GenJob {
            prompt,
            max_tokens,
            sampling: SamplingParams {
                temperature: 0.0,
                ..Default::default()
            },
            stop: Vec::new(),
            ignore_eos: false,
            queue_deadline: std::time::Instant::now() + std::time::Duration::from_secs(60),
            events: tx,
        };
        (job, rx)
    }

    /// Runs the worker over the jobs already queued, until the queue closes and all finish.
    fn run_jobs(jobs: Vec<GenJob>, slots: usize) -> (Vec<usize>, usize) {
        let (tx, rx) = mpsc::channel(jobs.len().max(1));
        for j in jobs {
            tx.try_send(j).ok().unwrap();
        }
        drop(tx);
        let batch_sizes = Arc::new(Mutex::new(Vec::new()));
        let prefills = Arc::new(Mutex::new(0));
        let mut model = Counting {
            spec: GeneratorSpec {
                vocab_size: VOCAB,
                max_seq_len: 64,
                max_slots: slots,
            },
            last: HashMap::new(),
            batch_sizes: batch_sizes.clone(),
            prefills: prefills.clone(),
        };
        let ctx = WorkerContext {
            name: "fake".into(),
            tokenizer: tokenizer(),
            eos_ids: vec![EOS],
            queue: Arc::new(Mutex::new(rx)),
        };
        run(&mut model, &ctx);
        let sizes = batch_sizes.lock().unwrap().clone();
        let n = *prefills.lock().unwrap();
        (sizes, n)
    }

    fn drain(rx: &mut mpsc::Receiver<GenEvent>) -> Vec<GenEvent> {
        let mut out = Vec::new();
        while let Ok(e) = rx.try_recv() {
            out.push(e);
        }
        out
    }

    fn finish_of(events: &[GenEvent]) -> Option<(FinishReason, usize)> {
        events.iter().find_map(|e| match e {
            GenEvent::Finished {
                reason,
                completion_tokens,
            } => Some((*reason, *completion_tokens)),
            _ => None,
        })
    }

    #[test]
    fn queued_requests_decode_together_up_to_the_slot_count() {
        let (a, _ra) = job(vec![1], 5);
        let (b, _rb) = job(vec![2], 5);
        let (c, _rc) = job(vec![3], 5);
        let (sizes, _) = run_jobs(vec![a, b, c], 2);
        assert_eq!(sizes.iter().max(), Some(&2), "{sizes:?}");
        // Each request decodes max_tokens - 1 steps (the first token comes from prefill).
        assert_eq!(sizes.iter().sum::<usize>(), 3 * 4);
    }

    #[test]
    fn max_tokens_ends_with_length_and_counts_every_token() {
        let (a, mut ra) = job(vec![1], 3);
        run_jobs(vec![a], 1);
        let events = drain(&mut ra);
        assert!(matches!(events[0], GenEvent::Admitted));
        assert_eq!(finish_of(&events), Some((FinishReason::Length, 3)));
    }

    #[test]
    fn eos_ends_with_stop_and_is_not_shown() {
        let (a, mut ra) = job(vec![12], 10);
        run_jobs(vec![a], 1);
        let events = drain(&mut ra);
        // 13, 14, then EOS (15).
        assert_eq!(finish_of(&events), Some((FinishReason::Stop, 3)));
        let text: String = events
            .iter()
            .filter_map(|e| {
                if let GenEvent::Delta(t) = e {
                    Some(t.as_str())
                } else {
                    None
                }
            })
            .collect();
        assert!(!text.contains("t15"), "{text}");
    }

    #[test]
    fn ignore_eos_keeps_generating_to_max_tokens() {
        let (mut a, mut ra) = job(vec![12], 6);
        a.ignore_eos = true;
        run_jobs(vec![a], 1);
        assert_eq!(finish_of(&drain(&mut ra)), Some((FinishReason::Length, 6)));
    }

    #[test]
    fn a_request_cancelled_while_queued_never_reaches_the_model() {
        let (a, ra) = job(vec![1], 5);
        let (b, mut rb) = job(vec![2], 5);
        drop(ra);
        let (_, prefills) = run_jobs(vec![a, b], 1);
        assert_eq!(prefills, 1);
        assert!(finish_of(&drain(&mut rb)).is_some());
    }

    #[test]
    fn a_request_past_its_queue_deadline_never_reaches_the_model() {
        let (mut a, _ra) = job(vec![1], 5);
        a.queue_deadline = std::time::Instant::now() - std::time::Duration::from_secs(1);
        let (_, prefills) = run_jobs(vec![a], 1);
        assert_eq!(prefills, 0);
    }
}
