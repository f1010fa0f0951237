//! The scheduling loop on a fake model whose next token is always `last + 1`; the real
//! model's behaviour is tested over HTTP in `tests/`.
use super::*;
use crate::backend::GeneratorSpec;
use crate::infer::policy::{BatchKnobs, FairQueue};
use crate::infer::{FinishReason, SamplingParams};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::Tokenizer;
use tokio::sync::mpsc;

const VOCAB: usize = 16;
const EOS: u32 = 15;

/// What the fake model saw: decode batch sizes and prefill chunk lengths, in order.
#[derive(Default, Clone)]
struct Calls {
    batch_sizes: Vec<usize>,
    prefill_chunks: Vec<usize>,
    /// `'p'` for a prefill call, `'d'` for a decode step.
    order: String,
}

struct Counting {
    spec: GeneratorSpec,
    calls: Arc<Mutex<Calls>>,
    pause: Option<Arc<Pause>>,
}

/// Holds the fake model inside its decode step number `at` until released, so a test can
/// act while a request is known to be running.
#[derive(Default)]
struct Pause {
    at: usize,
    state: Mutex<(bool, bool)>,
    changed: std::sync::Condvar,
}

impl Pause {
    fn new(at: usize) -> Arc<Self> {
        Arc::new(Pause {
            at,
            ..Default::default()
        })
    }

    /// (reached, released): the model waits for `released`, the test for `reached`.
    fn wait_for(&self, pick: impl Fn(&(bool, bool)) -> bool) {
        let mut state = self.state.lock().unwrap();
        while !pick(&state) {
            state = self.changed.wait(state).unwrap();
        }
    }

    fn set(&self, update: impl FnOnce(&mut (bool, bool))) {
        update(&mut self.state.lock().unwrap());
        self.changed.notify_all();
    }
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
    fn prefill(&mut self, _slot: usize, tokens: &[u32]) -> crate::backend::Result<Vec<f32>> {
        let mut calls = self.calls.lock().unwrap();
        calls.prefill_chunks.push(tokens.len());
        calls.order.push('p');
        let last = *tokens.last().unwrap_or(&0);
        Ok(logits_for((last + 1) % VOCAB as u32))
    }
    fn decode(&mut self, batch: &[(usize, u32)]) -> crate::backend::Result<Vec<Vec<f32>>> {
        let step = {
            let mut calls = self.calls.lock().unwrap();
            calls.batch_sizes.push(batch.len());
            calls.order.push('d');
            calls.batch_sizes.len()
        };
        if let Some(pause) = self.pause.as_ref().filter(|p| p.at == step) {
            pause.set(|s| s.0 = true);
            pause.wait_for(|s| s.1);
        }
        Ok(batch
            .iter()
            .map(|&(_, t)| logits_for((t + 1) % VOCAB as u32))
            .collect())
    }
    fn release(&mut self, _slot: usize) {}
    fn copy_slot(&mut self, _from: usize, _to: usize) -> crate::backend::Result<()> {
        self.calls.lock().unwrap().order.push('c');
        Ok(())
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
    let (tx, rx) = mpsc::channel(8 * (max_tokens + 2) + 2);
    let job = GenJob {
        prompt,
        max_tokens,
        sampling: SamplingParams {
            temperature: 0.0,
            ..Default::default()
        },
        stop: Vec::new(),
        ignore_eos: false,
        n: 1,
        logprobs: None,
        prompt_logprobs: false,
        grammar: None,
        enqueued: std::time::Instant::now(),
        queue_deadline: std::time::Instant::now() + std::time::Duration::from_secs(60),
        events: tx,
        progress: Default::default(),
        class: 0,
        tier: "test".into(),
        prefix_scope: None,
        span: tracing::Span::none(),
    };
    (job, rx)
}

fn knobs(slots: usize) -> BatchKnobs {
    BatchKnobs {
        max_batch_size: slots,
        max_batch_tokens: 1000,
        max_prefill_tokens: 8,
        max_decode_steps_before_prefill: 0,
    }
}

/// Runs the worker over the jobs already queued, until the queue closes and all finish.
fn run_with(jobs: Vec<GenJob>, knobs: BatchKnobs) -> Calls {
    // Close once everything queued has been taken, so `run` returns when idle.
    run_until(jobs, knobs, None, |queue| {
        while !queue.lock().is_empty() {
            std::thread::yield_now();
        }
        queue.close();
    })
}

/// Runs the worker over the jobs queued while `stop`, on a thread of its own, decides when
/// the queue closes; returns when the worker does.
fn run_until(
    jobs: Vec<GenJob>,
    knobs: BatchKnobs,
    pause: Option<Arc<Pause>>,
    stop: impl FnOnce(Arc<ModelQueue<GenJob>>) + Send + 'static,
) -> Calls {
    let queue = Arc::new(ModelQueue::new(FairQueue::new(
        &[1.0],
        16,
        knobs.max_batch_tokens,
    )));
    for j in jobs {
        let cost = j.cost();
        assert!(queue.push(0, cost, j).is_ok());
    }
    let calls = Arc::new(Mutex::new(Calls::default()));
    let mut model = Counting {
        spec: GeneratorSpec {
            vocab_size: VOCAB,
            max_seq_len: 64,
            max_slots: 8,
        },
        calls: calls.clone(),
        pause,
    };
    let ctx = WorkerContext {
        name: "fake".into(),
        tokenizer: tokenizer(),
        eos_ids: vec![EOS],
        queue: queue.clone(),
        knobs,
    };
    let closer = std::thread::spawn(move || stop(queue));
    run(&mut model, &ctx, 0);
    closer.join().unwrap();
    let calls = calls.lock().unwrap().clone();
    calls
}

fn run_jobs(jobs: Vec<GenJob>, slots: usize) -> (Vec<usize>, usize) {
    let calls = run_with(jobs, knobs(slots));
    (calls.batch_sizes, calls.prefill_chunks.len())
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
            ..
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
            if let GenEvent::Delta { text, .. } = e {
                Some(text.as_str())
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
fn interrupt_ends_the_running_request_at_a_step_and_refuses_the_waiting_one() {
    let (mut a, mut ra) = job(vec![1], 900);
    a.ignore_eos = true;
    let (b, mut rb) = job(vec![2], 5);
    // Shutdown as the engine runs it, while the model is inside its third decode step.
    let pause = Pause::new(3);
    let held = pause.clone();
    run_until(vec![a, b], knobs(1), Some(pause), move |queue| {
        held.wait_for(|s| s.0);
        queue.close_and_refuse();
        queue.interrupt();
        held.set(|s| s.1 = true);
    });
    let events = drain(&mut ra);
    assert!(finish_of(&events).is_none(), "cut, not finished");
    assert!(matches!(
        events.last(),
        Some(GenEvent::Failed(InferError::Interrupted))
    ));
    let deltas = events
        .iter()
        .filter(|e| matches!(e, GenEvent::Delta { .. }))
        .count();
    // The prefill's token and the three decode steps' tokens, then the cut.
    assert_eq!(deltas, 4, "tokens before the cut");
    let waiting = drain(&mut rb);
    assert!(matches!(
        waiting.as_slice(),
        [GenEvent::Failed(InferError::ShuttingDown)]
    ));
}

#[test]
fn a_request_past_its_queue_deadline_never_reaches_the_model() {
    let (mut a, _ra) = job(vec![1], 5);
    a.queue_deadline = std::time::Instant::now() - std::time::Duration::from_secs(1);
    let (_, prefills) = run_jobs(vec![a], 1);
    assert_eq!(prefills, 0);
}

#[test]
fn long_prompts_are_prefilled_in_chunks_of_max_prefill_tokens() {
    let (a, _ra) = job((0..20).map(|i| i % 10).collect(), 2);
    let calls = run_with(vec![a], knobs(1));
    assert_eq!(calls.prefill_chunks, vec![8, 8, 4]);
}

#[test]
fn a_newcomers_prefill_interleaves_with_running_decodes() {
    let (a, _ra) = job(vec![1], 10);
    let (b, _rb) = job((0..20).map(|i| i % 10).collect(), 2);
    let calls = run_with(vec![a, b], knobs(2));
    // Step 1 prefills a (1 token); b's whole first chunk of 8 does not fit the 7 left.
    // Then every step decodes a and prefills 8 more of b, so b never stops a's decoding.
    assert_eq!(calls.prefill_chunks, vec![1, 8, 8, 4]);
    assert!(calls.order.starts_with("ppdpdpd"), "{}", calls.order);
}

#[test]
fn the_kv_budget_limits_how_many_run_together() {
    let (jobs, _receivers): (Vec<GenJob>, Vec<_>) = (0..3).map(|i| job(vec![i], 5)).unzip();
    let mut k = knobs(4);
    k.max_batch_tokens = 12; // each job reserves 1 + 5
    let calls = run_with(jobs, k);
    assert_eq!(
        calls.batch_sizes.iter().max(),
        Some(&2),
        "{:?}",
        calls.batch_sizes
    );
}

#[test]
fn waiting_prefill_is_deferred_by_the_configured_decode_steps() {
    let (a, _ra) = job(vec![1], 10);
    let (b, _rb) = job((0..20).map(|i| i % 10).collect(), 2);
    let mut k = knobs(2);
    k.max_decode_steps_before_prefill = 2;
    let calls = run_with(vec![a, b], k);
    assert!(calls.order.starts_with("pddpdddpd"), "{}", calls.order);
}

/// Each choice's (finish reason, tokens) and text, by index.
fn choices_of(events: &[GenEvent]) -> HashMap<usize, (Option<(FinishReason, usize)>, String)> {
    let mut out: HashMap<usize, (Option<(FinishReason, usize)>, String)> = HashMap::new();
    for e in events {
        match e {
            GenEvent::Delta { index, text, .. } => out.entry(*index).or_default().1 += text,
            GenEvent::Finished {
                index,
                reason,
                completion_tokens,
            } => out.entry(*index).or_default().0 = Some((*reason, *completion_tokens)),
            _ => {}
        }
    }
    out
}

#[test]
fn n_choices_share_one_prefill_and_copy_its_kv() {
    let (mut a, mut ra) = job(vec![1, 2, 3], 3);
    a.n = 3;
    let calls = run_with(vec![a], knobs(4));
    // One prefill, two copies, then the three choices decode together.
    assert_eq!(calls.prefill_chunks, vec![3]);
    assert!(calls.order.starts_with("pccd"), "{}", calls.order);
    assert_eq!(calls.batch_sizes, vec![3, 3]);
    let choices = choices_of(&drain(&mut ra));
    assert_eq!(choices.len(), 3);
    for (finish, text) in choices.values() {
        assert_eq!(*finish, Some((FinishReason::Length, 3)));
        assert_eq!(text, "t4 t5 t6");
    }
}

#[test]
fn a_request_waits_until_all_its_choices_get_slots() {
    let (a, _ra) = job(vec![1], 6);
    let (mut b, mut rb) = job(vec![2], 2);
    b.n = 2;
    // Two slots: `a` holds one, so `b` (two choices) waits for `a` to finish.
    let calls = run_with(vec![a, b], knobs(2));
    assert_eq!(calls.prefill_chunks, vec![1, 1]);
    assert!(calls.batch_sizes.iter().all(|&rows| rows <= 2));
    let order = &calls.order;
    let first_copy = order.find('c').expect("b copied its prompt");
    // `a` decoded its 5 steps alone before `b` was admitted.
    assert_eq!(&order[..first_copy], "pdddddp", "{order}");
    assert_eq!(choices_of(&drain(&mut rb)).len(), 2);
}

#[test]
fn prompt_logprobs_score_every_prompt_token_after_the_first() {
    let (mut a, mut ra) = job(vec![3, 4, 9], 1);
    a.logprobs = Some(1);
    a.prompt_logprobs = true;
    let calls = run_with(vec![a], knobs(1));
    // Fed one position at a time.
    assert_eq!(calls.order, "ddd");
    let events = drain(&mut ra);
    let scores = events
        .iter()
        .find_map(|e| match e {
            GenEvent::Prompt { first, scores } => {
                assert_eq!(*first, 3);
                Some(scores.clone())
            }
            _ => None,
        })
        .expect("a Prompt event");
    // The fake predicts last + 1: token 4 after 3 is likely, 9 after 4 is not.
    let tokens: Vec<u32> = scores.iter().map(|s| s.token).collect();
    assert_eq!(tokens, [4, 9]);
    assert!(scores[0].logprob > scores[1].logprob);
    assert_eq!(scores[1].top[0].0, 5);
}
