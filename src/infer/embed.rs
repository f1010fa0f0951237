//! Embedding models: tokenize and bound the inputs, enqueue, and the replica loop that batches
//! the inputs of many requests by a padded-token budget (as TEI does). Inputs of the jobs taken
//! together are sorted by length before they are cut into forward passes, so similar lengths
//! share a pass and little compute goes to padding.

use super::queue::{ModelQueue, Pools, Refusable, Refused};
use super::{blocking, InferError};
use crate::backend::Embedder;
use crate::config::Limits;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokenizers::Tokenizer;
use tokio::sync::oneshot;

/// Batching knobs of an embedding replica.
#[derive(Debug, Clone, Copy)]
pub struct EmbedKnobs {
    /// Padded tokens (rows x longest row) in one forward pass.
    pub max_batch_tokens: usize,
    /// Rows (inputs) in one forward pass.
    pub max_batch_rows: usize,
}

pub enum EmbedInput {
    Texts(Vec<String>),
    Tokens(Vec<Vec<u32>>),
}

pub struct EmbedOutput {
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: usize,
    /// The replica index that ran it, its wait in the queue, and its share of model time
    /// (each round's time split by the jobs' token counts).
    pub replica: usize,
    pub queued: Duration,
    pub device_seconds: f64,
}

pub(crate) struct EmbedJob {
    inputs: Vec<Vec<u32>>,
    enqueued: Instant,
    queue_deadline: Instant,
    queue_timeout: Duration,
    reply: oneshot::Sender<Reply>,
}

/// A job's answer: one vector per input, or why there is none.
type Reply = Result<Done, InferError>;

pub(crate) struct Done {
    vectors: Vec<Vec<f32>>,
    replica: usize,
    queued: Duration,
    device_seconds: f64,
}

impl Refusable for EmbedJob {
    fn refuse(self, error: InferError) {
        let _ = self.reply.send(Err(error));
    }
}

impl EmbedJob {
    fn tokens(&self) -> usize {
        self.inputs.iter().map(Vec::len).sum()
    }
}

pub struct EmbedModel {
    pub name: String,
    pub tokenizer: Arc<Tokenizer>,
    /// Longest input in tokens, special tokens included.
    pub max_tokens: usize,
    /// Length of every vector.
    pub dim: usize,
    pub(crate) limits: Limits,
    pub(crate) queue_timeout: Duration,
    pub(crate) queues: Pools<EmbedJob>,
}

impl Drop for EmbedModel {
    fn drop(&mut self) {
        self.queues.close();
    }
}

impl EmbedModel {
    /// Requests waiting for a replica now.
    pub fn queued(&self) -> usize {
        self.queues.len()
    }

    /// Tokens admitted so far per scheduling class.
    pub fn served_tokens(&self) -> Vec<u64> {
        self.queues.served_tokens()
    }

    /// Retry-After for a client refused now (the longest over the pools).
    pub fn retry_after(&self) -> Duration {
        self.queues.retry_after()
    }

    /// Embeds every input (vectors in input order). Inputs longer than the model's limit are
    /// an error unless `truncate` is set; then they keep their first tokens.
    pub async fn embed(
        &self,
        input: EmbedInput,
        truncate: bool,
    ) -> Result<EmbedOutput, InferError> {
        let inputs = self.tokenize(input, truncate).await?;
        self.embed_ids(inputs, 0, None).await
    }

    /// Embeds inputs already tokenized and bounded by `tokenize`, queued in scheduling
    /// `class` (the tenant's tier).
    pub async fn embed_ids(
        &self,
        inputs: Vec<Vec<u32>>,
        class: usize,
        pool: Option<&str>,
    ) -> Result<EmbedOutput, InferError> {
        let prompt_tokens = inputs.iter().map(Vec::len).sum();
        let (reply, rx) = oneshot::channel();
        let queue_timeout = self.queue_timeout;
        let job = EmbedJob {
            inputs,
            enqueued: Instant::now(),
            queue_deadline: Instant::now() + queue_timeout,
            queue_timeout,
            reply,
        };
        let cost = job.tokens();
        let queue = self
            .queues
            .get(pool)
            .ok_or_else(|| InferError::NoReplicas {
                model: self.name.clone(),
                pool: pool.unwrap_or("shared").to_string(),
            })?;
        if !queue.is_serving() {
            return Err(InferError::NotReady(self.name.clone()));
        }
        queue
            .push(class, cost, job)
            .map_err(|refused| match refused {
                Refused::Full(_) | Refused::TooLarge(_) => InferError::Overloaded {
                    model: self.name.clone(),
                    retry_after: queue.retry_after(),
                },
                Refused::Closed(_) => InferError::ShuttingDown,
            })?;
        let total = queue_timeout + Duration::from_secs(self.limits.request_timeout_secs);
        match tokio::time::timeout(total, rx).await {
            Ok(Ok(result)) => {
                let done = result?;
                Ok(EmbedOutput {
                    vectors: done.vectors,
                    prompt_tokens,
                    replica: done.replica,
                    queued: done.queued,
                    device_seconds: done.device_seconds,
                })
            }
            Ok(Err(_)) => Err(InferError::ShuttingDown),
            Err(_) => Err(InferError::RequestTimeout(total)),
        }
    }

    /// Token ids of every input, checked against the request and model bounds.
    pub async fn tokenize(
        &self,
        input: EmbedInput,
        truncate: bool,
    ) -> Result<Vec<Vec<u32>>, InferError> {
        let count = match &input {
            EmbedInput::Texts(t) => t.len(),
            EmbedInput::Tokens(t) => t.len(),
        };
        if count == 0 {
            return Err(InferError::invalid("`input` must not be empty", "input"));
        }
        if count > self.limits.max_embedding_inputs {
            return Err(InferError::invalid(
                format!(
                    "`input` has {count} items; the limit is {}",
                    self.limits.max_embedding_inputs
                ),
                "input",
            ));
        }
        let ids = match input {
            EmbedInput::Tokens(ids) => ids,
            EmbedInput::Texts(texts) => {
                if texts.iter().any(|t| t.is_empty()) {
                    return Err(InferError::invalid(
                        "`input` must not contain empty strings",
                        "input",
                    ));
                }
                let tokenizer = self.tokenizer.clone();
                blocking(move || {
                    let encodings = tokenizer.encode_batch(texts, true).map_err(|e| {
                        InferError::invalid(format!("cannot tokenize: {e}"), "input")
                    })?;
                    Ok(encodings.iter().map(|e| e.get_ids().to_vec()).collect())
                })
                .await?
            }
        };
        ids.into_iter()
            .enumerate()
            .map(|(i, ids)| self.bound(i, ids, truncate))
            .collect()
    }

    fn bound(
        &self,
        index: usize,
        mut ids: Vec<u32>,
        truncate: bool,
    ) -> Result<Vec<u32>, InferError> {
        let vocab = self.tokenizer.get_vocab_size(true) as u32;
        if ids.is_empty() || ids.iter().any(|&id| id >= vocab) {
            return Err(InferError::invalid(
                format!("input {index} is empty or holds a token id outside the vocabulary"),
                "input",
            ));
        }
        if ids.len() <= self.max_tokens {
            return Ok(ids);
        }
        if !truncate {
            return Err(InferError::ContextLength {
                message: format!(
                    "This model's maximum input length is {} tokens. However, input {index} has {} \
                     tokens. Shorten it, or send \"truncate\": true to keep its first {} tokens.",
                    self.max_tokens,
                    ids.len(),
                    self.max_tokens
                ),
                param: "input",
            });
        }
        // Keep the closing special token (e.g. BERT's [SEP]) that the model was trained with.
        let last = ids[ids.len() - 1];
        ids.truncate(self.max_tokens - 1);
        ids.push(last);
        Ok(ids)
    }
}

/// The replica loop: take a batch of jobs, embed their inputs in length-sorted forward
/// passes, answer each job.
pub(crate) fn run(
    model: &mut dyn Embedder,
    name: &str,
    queue: &ModelQueue<EmbedJob>,
    knobs: EmbedKnobs,
    replica: usize,
) {
    while queue.wait_for_work() {
        let jobs = take_jobs(queue, knobs, name);
        if jobs.is_empty() {
            continue;
        }
        let inputs: Vec<&[u32]> = jobs
            .iter()
            .flat_map(|j| j.inputs.iter().map(Vec::as_slice))
            .collect();
        let started = Instant::now();
        let result = embed_sorted(model, &inputs, knobs).map_err(|e| {
            tracing::error!(model = name, error = %e, "embedding failed");
            e
        });
        let round = started.elapsed().as_secs_f64();
        let share = Duration::from_secs_f64(round / jobs.len() as f64);
        jobs.iter().for_each(|_| queue.record_service(share));
        let total_tokens = jobs.iter().map(EmbedJob::tokens).sum::<usize>().max(1) as f64;
        let mut rows = result.as_ref().ok().map(|v| v.iter().cloned());
        for job in jobs {
            let answer = match (&mut rows, &result) {
                (Some(rows), _) => Ok(Done {
                    vectors: rows.by_ref().take(job.inputs.len()).collect(),
                    replica,
                    queued: started.saturating_duration_since(job.enqueued),
                    device_seconds: round * job.tokens() as f64 / total_tokens,
                }),
                (None, Err(e)) => Err(InferError::Backend(e.clone())),
                (None, Ok(_)) => Err(InferError::Backend("no rows".into())),
            };
            let _ = job.reply.send(answer);
        }
    }
}

/// Jobs for one round: the fair pick first (whatever its size), then more while their tokens
/// fit the budget and their rows the row limit. Cancelled jobs are dropped; expired ones are
/// answered 503 without touching the model.
fn take_jobs(queue: &ModelQueue<EmbedJob>, knobs: EmbedKnobs, name: &str) -> Vec<EmbedJob> {
    let mut q = queue.lock();
    q.retain(|job| !job.reply.is_closed());
    let retry_after = queue.retry_after_at(q.len());
    let (mut jobs, mut tokens, mut rows) = (Vec::new(), 0usize, 0usize);
    let now = Instant::now();
    loop {
        let room = if jobs.is_empty() {
            usize::MAX
        } else {
            knobs.max_batch_tokens.saturating_sub(tokens)
        };
        if !jobs.is_empty() && rows >= knobs.max_batch_rows {
            break;
        }
        let Some(job) = q.pop_fitting(room, 0) else {
            break;
        };
        if now > job.queue_deadline {
            let err = InferError::QueueTimeout {
                model: name.to_string(),
                waited: job.queue_timeout,
                retry_after,
            };
            let _ = job.reply.send(Err(err));
            continue;
        }
        tokens += job.tokens();
        rows += job.inputs.len();
        jobs.push(job);
    }
    jobs
}

/// Embeds `inputs` (row `i` of the result for `inputs[i]`) in forward passes of similar
/// lengths, each within the padded-token and row budgets.
fn embed_sorted(
    model: &mut dyn Embedder,
    inputs: &[&[u32]],
    knobs: EmbedKnobs,
) -> Result<Vec<Vec<f32>>, String> {
    let mut order: Vec<usize> = (0..inputs.len()).collect();
    order.sort_by_key(|&i| inputs[i].len());
    let mut out: Vec<Vec<f32>> = vec![Vec::new(); inputs.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        // Sorted ascending, so the last row of a pass is its longest.
        while end < order.len()
            && end - start < knobs.max_batch_rows
            && (end - start + 1) * inputs[order[end]].len() <= knobs.max_batch_tokens
        {
            end += 1;
        }
        let batch: Vec<Vec<u32>> = order[start..end]
            .iter()
            .map(|&i| inputs[i].to_vec())
            .collect();
        let rows = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.embed(&batch)))
            .map_err(|_| "panic in the embedding model".to_string())?
            .map_err(|e| e.to_string())?;
        if rows.len() != batch.len() {
            return Err("the embedding model returned the wrong number of rows".into());
        }
        for (&i, row) in order[start..end].iter().zip(rows) {
            out[i] = row;
        }
        start = end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    //! Batch forming on a fake model that records its passes; numbers on the real model are
    //! tested in `backend::bert` and over HTTP.
    use super::*;
    use crate::backend::{EmbedderSpec, Result as BResult};

    struct Recording {
        spec: EmbedderSpec,
        passes: Vec<Vec<usize>>,
    }

    impl Embedder for Recording {
        fn spec(&self) -> &EmbedderSpec {
            &self.spec
        }
        fn embed(&mut self, inputs: &[Vec<u32>]) -> BResult<Vec<Vec<f32>>> {
            self.passes.push(inputs.iter().map(Vec::len).collect());
            Ok(inputs.iter().map(|x| vec![x.len() as f32]).collect())
        }
    }

    fn model() -> Recording {
        Recording {
            spec: EmbedderSpec {
                dim: 1,
                max_tokens: 512,
            },
            passes: Vec::new(),
        }
    }

    fn knobs(tokens: usize, rows: usize) -> EmbedKnobs {
        EmbedKnobs {
            max_batch_tokens: tokens,
            max_batch_rows: rows,
        }
    }

    #[test]
    fn rows_come_back_in_input_order_after_sorting() {
        let inputs: Vec<Vec<u32>> = [5, 1, 3, 2].iter().map(|&n| vec![0; n]).collect();
        let refs: Vec<&[u32]> = inputs.iter().map(Vec::as_slice).collect();
        let out = embed_sorted(&mut model(), &refs, knobs(100, 8)).unwrap();
        assert_eq!(out, vec![vec![5.0], vec![1.0], vec![3.0], vec![2.0]]);
    }

    #[test]
    fn passes_respect_the_padded_token_budget_and_group_similar_lengths() {
        let inputs: Vec<Vec<u32>> = [10, 2, 9, 3, 2, 10].iter().map(|&n| vec![0; n]).collect();
        let refs: Vec<&[u32]> = inputs.iter().map(Vec::as_slice).collect();
        let mut m = model();
        embed_sorted(&mut m, &refs, knobs(20, 8)).unwrap();
        assert_eq!(m.passes, vec![vec![2, 2, 3], vec![9, 10], vec![10]]);
        for pass in &m.passes {
            assert!(pass.len() * pass.iter().max().unwrap() <= 20 || pass.len() == 1);
        }
    }

    #[test]
    fn passes_respect_the_row_limit() {
        let inputs: Vec<Vec<u32>> = (0..5).map(|_| vec![0; 1]).collect();
        let refs: Vec<&[u32]> = inputs.iter().map(Vec::as_slice).collect();
        let mut m = model();
        embed_sorted(&mut m, &refs, knobs(1000, 2)).unwrap();
        assert_eq!(
            m.passes.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![2, 2, 1]
        );
    }

    #[test]
    fn an_input_longer_than_the_budget_still_runs_alone() {
        let inputs = [vec![0u32; 50]];
        let refs: Vec<&[u32]> = inputs.iter().map(Vec::as_slice).collect();
        let mut m = model();
        embed_sorted(&mut m, &refs, knobs(10, 8)).unwrap();
        assert_eq!(m.passes, vec![vec![50]]);
    }

    fn job(lens: &[usize]) -> (EmbedJob, oneshot::Receiver<Reply>) {
        let (reply, rx) = oneshot::channel();
        let job = EmbedJob {
            inputs: lens.iter().map(|&n| vec![0; n]).collect(),
            enqueued: Instant::now(),
            queue_deadline: Instant::now() + Duration::from_secs(60),
            queue_timeout: Duration::from_secs(60),
            reply,
        };
        (job, rx)
    }

    #[test]
    fn jobs_of_many_requests_share_forward_passes_and_each_gets_its_rows() {
        let queue = Arc::new(ModelQueue::new(crate::infer::policy::FairQueue::new(
            &[1.0],
            8,
            usize::MAX,
        )));
        let (a, ra) = job(&[4, 1]);
        let (b, rb) = job(&[2]);
        let (ca, cb) = (a.tokens(), b.tokens());
        assert!(queue.push(0, ca, a).is_ok());
        assert!(queue.push(0, cb, b).is_ok());
        let worker = {
            let queue = queue.clone();
            std::thread::spawn(move || {
                let mut m = model();
                run(&mut m, "m", &queue, knobs(100, 8), 0);
                m.passes
            })
        };
        let a_rows = ra.blocking_recv().unwrap().unwrap().vectors;
        let b_rows = rb.blocking_recv().unwrap().unwrap().vectors;
        queue.close();
        let passes = worker.join().unwrap();
        assert_eq!(a_rows, vec![vec![4.0], vec![1.0]]);
        assert_eq!(b_rows, vec![vec![2.0]]);
        assert_eq!(passes, vec![vec![1, 2, 4]], "one pass for both requests");
    }

    #[test]
    fn an_expired_job_is_answered_with_a_queue_timeout_without_the_model() {
        let queue = ModelQueue::new(crate::infer::policy::FairQueue::new(&[1.0], 8, usize::MAX));
        let (mut a, mut ra) = job(&[3]);
        a.queue_deadline = Instant::now() - Duration::from_secs(1);
        assert!(queue.push(0, 3, a).is_ok());
        assert!(take_jobs(&queue, knobs(100, 8), "m").is_empty());
        assert!(matches!(
            ra.try_recv(),
            Ok(Err(InferError::QueueTimeout { .. }))
        ));
    }
}
