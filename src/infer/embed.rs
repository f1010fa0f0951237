//! Embedding models: tokenize and bound the inputs, enqueue, and the replica loop that runs
//! each request's inputs through the model.

use super::{blocking, InferError};
use crate::backend::Embedder;
use crate::config::Limits;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokenizers::Tokenizer;
use tokio::sync::{mpsc, oneshot};

/// Inputs per forward pass: bounds the padded activation memory of one large request.
const MAX_FORWARD_ROWS: usize = 32;

pub enum EmbedInput {
    Texts(Vec<String>),
    Tokens(Vec<Vec<u32>>),
}

pub struct EmbedOutput {
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: usize,
}

pub(crate) struct EmbedJob {
    inputs: Vec<Vec<u32>>,
    queue_deadline: Instant,
    queue_timeout: Duration,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, InferError>>,
}

/// See `gen_worker::SharedQueue` for why a std mutex.
pub(crate) type EmbedQueue = Arc<Mutex<mpsc::Receiver<EmbedJob>>>;

pub struct EmbedModel {
    pub name: String,
    pub tokenizer: Arc<Tokenizer>,
    /// Longest input in tokens, special tokens included.
    pub max_tokens: usize,
    /// Length of every vector.
    pub dim: usize,
    pub(crate) limits: Limits,
    pub(crate) queue: mpsc::Sender<EmbedJob>,
}

impl EmbedModel {
    /// Embeds every input (vectors in input order). Inputs longer than the model's limit are
    /// an error unless `truncate` is set; then they keep their first tokens.
    pub async fn embed(
        &self,
        input: EmbedInput,
        truncate: bool,
    ) -> Result<EmbedOutput, InferError> {
        let inputs = self.tokenize(input, truncate).await?;
        let prompt_tokens = inputs.iter().map(Vec::len).sum();
        let (reply, rx) = oneshot::channel();
        let queue_timeout = Duration::from_secs(self.limits.queue_timeout_secs);
        let job = EmbedJob {
            inputs,
            queue_deadline: Instant::now() + queue_timeout,
            queue_timeout,
            reply,
        };
        self.queue.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => InferError::Overloaded {
                model: self.name.clone(),
                retry_after: Duration::from_secs(1),
            },
            mpsc::error::TrySendError::Closed(_) => InferError::ShuttingDown,
        })?;
        let total = queue_timeout + Duration::from_secs(self.limits.request_timeout_secs);
        match tokio::time::timeout(total, rx).await {
            Ok(Ok(result)) => Ok(EmbedOutput {
                vectors: result?,
                prompt_tokens,
            }),
            Ok(Err(_)) => Err(InferError::ShuttingDown),
            Err(_) => Err(InferError::RequestTimeout(total)),
        }
    }

    async fn tokenize(
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

/// The replica loop: one request at a time, its inputs in forward passes of bounded size.
pub(crate) fn run(model: &mut dyn Embedder, name: &str, queue: &EmbedQueue) {
    loop {
        let job = {
            let mut rx = queue
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match rx.blocking_recv() {
                Some(job) => job,
                None => return,
            }
        };
        if job.reply.is_closed() {
            continue;
        }
        if Instant::now() > job.queue_deadline {
            let waited = job.queue_timeout;
            let model = name.to_string();
            let _ = job
                .reply
                .send(Err(InferError::QueueTimeout { model, waited }));
            continue;
        }
        let mut vectors = Vec::with_capacity(job.inputs.len());
        let mut result = Ok(());
        for chunk in job.inputs.chunks(MAX_FORWARD_ROWS) {
            match model.embed(chunk) {
                Ok(rows) => vectors.extend(rows),
                Err(e) => {
                    tracing::error!(model = name, error = %e, "embedding failed");
                    result = Err(InferError::Backend(e.to_string()));
                    break;
                }
            }
            if job.reply.is_closed() {
                break;
            }
        }
        let _ = job.reply.send(result.map(|()| vectors));
    }
}
