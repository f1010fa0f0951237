//! The async face of a generation model: validate and tokenize, enqueue without waiting,
//! and hand back a stream of events.

use super::gen_job::GenJob;
pub use super::gen_job::{FinishReason, GenEvent, Progress};
use super::grammar::{Constraint, Grammar, Grammars};
use super::queue::{Pools, Refused};
use super::{blocking, InferError, SamplingParams};
use crate::backend::chat_template::{ChatMessage, ChatTemplate};
use crate::config::Limits;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokenizers::Tokenizer;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What to generate from.
#[derive(Debug, Clone)]
pub enum PromptInput {
    /// A conversation and the tools offered to it (OpenAI's function definitions), rendered
    /// with the model's chat template.
    Chat {
        messages: Vec<ChatMessage>,
        tools: Vec<serde_json::Value>,
    },
    /// Raw text, tokenized as is.
    Text(String),
    /// Token ids, used as is.
    Tokens(Vec<u32>),
}

impl PromptInput {
    /// The request field errors about this prompt name: a chat's prompt is its `messages`,
    /// a completion's its `prompt`.
    pub fn param(&self) -> &'static str {
        match self {
            PromptInput::Chat { .. } => "messages",
            PromptInput::Text(_) | PromptInput::Tokens(_) => "prompt",
        }
    }
}

#[derive(Debug, Clone)]
pub struct GenRequest {
    pub prompt: PromptInput,
    /// None: the configured default, capped by what the context has left.
    pub max_tokens: Option<usize>,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens (benchmarks with fixed output lengths).
    pub ignore_eos: bool,
    /// Choices to generate from the one prompt (1..=the model's `max_n`).
    pub n: usize,
    /// Log-probabilities of each sampled token with this many alternatives (0..=20);
    /// None: not computed.
    pub logprobs: Option<usize>,
    /// Also the log-probabilities of the prompt's tokens (completions' `echo`).
    pub prompt_logprobs: bool,
    /// What the output must match (`response_format`, tools), and the request field that
    /// gave it, which errors name.
    pub constraint: Option<(Constraint, &'static str)>,
    /// Scheduling class (the tenancy layer maps tiers to classes); 0 by default.
    pub class: usize,
    /// The dedicated tier whose replicas must run it; None: the shared replicas.
    pub pool: Option<String>,
    /// The tier, as the metrics' `tier` label (a configured name, never a tenant id).
    pub tier: String,
    /// The prefix-cache scope (`tenant:<id>`, `tier:<name>`, `global`), set by the server
    /// from the tenant's tier, never from the request; None: the cache is not used.
    pub prefix_scope: Option<String>,
}

/// A request that passed validation: its prompt ids and output budget are known, so the
/// tenancy layer can reserve tokens before it is queued.
pub struct Prepared {
    prompt: Vec<u32>,
    max_tokens: usize,
    grammar: Option<Grammar>,
    req: GenRequest,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("prompt_tokens", &self.prompt.len())
            .field("max_tokens", &self.max_tokens)
            .field("constrained", &self.grammar.is_some())
            .finish()
    }
}

impl Prepared {
    pub fn prompt_tokens(&self) -> usize {
        self.prompt.len()
    }

    /// Output budget of one choice.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Output budget of the whole request (every choice), what limits reserve.
    pub fn output_budget(&self) -> usize {
        self.max_tokens * self.req.n
    }

    /// Sets the scheduling class (the tenant's tier).
    pub fn set_class(&mut self, class: usize) {
        self.req.class = class;
    }
}

/// The running request. Dropping it cancels the generation: the worker notices the closed
/// channel before its next step and frees the sequence's slot.
pub struct GenStream {
    pub prompt_tokens: usize,
    pub max_tokens: usize,
    /// Choices; the stream ends after as many `Finished` events.
    pub n: usize,
    finished: usize,
    pub progress: Arc<Progress>,
    rx: mpsc::Receiver<GenEvent>,
    deadline: Instant,
    timeout: Duration,
    /// Set once the final event has been read; dropped before that = cancelled.
    ended: bool,
    counters: Arc<Counters>,
}

/// Outcomes of a model's requests that never show up as a response body. The metrics layer
/// exports them; `/ready` shows them meanwhile.
#[derive(Debug, Default)]
pub struct Counters {
    /// Refused at once because the queue was full (503).
    pub rejected_full: AtomicU64,
    /// Waited past the queue timeout (503); never reached the model.
    pub queue_timeouts: AtomicU64,
    /// Admitted, then abandoned by the client (disconnect, dropped stream) or the request
    /// deadline before the last event; the worker frees their slot at its next step.
    pub cancelled: AtomicU64,
    /// Ran to a finish reason.
    pub finished: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> [(&'static str, u64); 4] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("rejected_full", get(&self.rejected_full)),
            ("queue_timeouts", get(&self.queue_timeouts)),
            ("cancelled", get(&self.cancelled)),
            ("finished", get(&self.finished)),
        ]
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Drop for GenStream {
    fn drop(&mut self) {
        if !self.ended {
            bump(&self.counters.cancelled);
        }
    }
}

impl GenStream {
    /// The next event; `None` after the last. Past the request deadline it yields a
    /// `Failed(RequestTimeout)` and ends, which also cancels the work.
    pub async fn next(&mut self) -> Option<GenEvent> {
        if self.ended {
            return None;
        }
        match tokio::time::timeout_at(self.deadline, self.rx.recv()).await {
            Ok(Some(event)) => {
                match &event {
                    GenEvent::Finished { .. } => {
                        self.finished += 1;
                        if self.finished == self.n {
                            self.ended = true;
                            bump(&self.counters.finished);
                        }
                    }
                    GenEvent::Failed(_) => self.ended = true,
                    _ => {}
                }
                Some(event)
            }
            Ok(None) => {
                self.ended = true;
                None
            }
            Err(_) => {
                // Closing the channel tells the worker to drop the sequence; it counts as
                // cancelled when this stream is dropped.
                self.rx.close();
                Some(GenEvent::Failed(InferError::RequestTimeout(self.timeout)))
            }
        }
    }
}

/// A generation model as the HTTP layer sees it. Cheap to share behind an `Arc`.
pub struct GenerateModel {
    pub name: String,
    pub tokenizer: Arc<Tokenizer>,
    pub template: Option<Arc<ChatTemplate>>,
    /// The grammar compiler over this model's vocabulary (built at load).
    pub(crate) grammars: Arc<Grammars>,
    /// Longest prompt + output, the smaller of the model's context and a slot's capacity.
    pub context_length: usize,
    /// Largest `n`: the configured `max_n`, capped by a replica's slots.
    pub max_n: usize,
    pub(crate) limits: Limits,
    pub(crate) queue_timeout: Duration,
    pub(crate) queues: Pools<GenJob>,
    pub counters: Arc<Counters>,
}

impl Drop for GenerateModel {
    /// No request can reach the model any more: let its replicas finish and exit.
    fn drop(&mut self) {
        self.queues.close();
    }
}

impl GenerateModel {
    /// Tokenizes the prompt and checks every bound: 400 for a prompt that cannot fit.
    pub async fn prepare(&self, req: GenRequest) -> Result<Prepared, InferError> {
        self.check_choices(&req)?;
        let prompt = self.tokenize(req.prompt.clone(), true).await?;
        let max_tokens = self.check_lengths(prompt.len(), req.prompt.param(), req.max_tokens)?;
        let grammar = self.compile(req.constraint.clone()).await?;
        Ok(Prepared {
            prompt,
            max_tokens,
            grammar,
            req,
        })
    }

    /// The request's grammar, compiled off the async workers (bounded by `GrammarLimits`).
    async fn compile(
        &self,
        constraint: Option<(Constraint, &'static str)>,
    ) -> Result<Option<Grammar>, InferError> {
        let Some((constraint, param)) = constraint else {
            return Ok(None);
        };
        let grammars = self.grammars.clone();
        blocking(move || {
            grammars
                .compile(&constraint)
                .map(Some)
                .map_err(|e| InferError::invalid(format!("Invalid `{param}`: {e}"), param))
        })
        .await
    }

    /// `prepare`, then `enqueue`.
    pub async fn submit(&self, req: GenRequest) -> Result<GenStream, InferError> {
        let prepared = self.prepare(req).await?;
        self.enqueue(prepared).await
    }

    /// Puts a prepared request on the queue. Returns once a replica has admitted it, or at
    /// once with an error: 503 when the queue is full, 503 after `queue_timeout` if no
    /// replica took it.
    pub async fn enqueue(&self, prepared: Prepared) -> Result<GenStream, InferError> {
        let Prepared {
            prompt,
            max_tokens,
            grammar,
            req,
        } = prepared;
        // Room for every event the request can produce, so the worker's sends never block
        // a batch: per choice one delta per token and a final event at most, plus
        // Admitted and Prompt.
        let n = req.n;
        let (tx, mut rx) = mpsc::channel(n * (max_tokens + 2) + 2);
        let queue_timeout = self.queue_timeout;
        let progress = Arc::new(Progress::default());
        let job = GenJob {
            prompt,
            max_tokens,
            sampling: req.sampling,
            stop: req.stop,
            ignore_eos: req.ignore_eos,
            n,
            logprobs: req.logprobs,
            prompt_logprobs: req.prompt_logprobs,
            grammar,
            enqueued: std::time::Instant::now(),
            queue_deadline: std::time::Instant::now() + queue_timeout,
            events: tx,
            progress: progress.clone(),
            class: req.class,
            tier: req.tier.clone(),
            prefix_scope: req.prefix_scope.as_deref().map(Arc::from),
            span: tracing::Span::current(),
        };
        let prompt_tokens = job.prompt.len();
        let cost = job.cost();
        let queue = self
            .queues
            .get(req.pool.as_deref())
            .ok_or_else(|| InferError::NoReplicas {
                model: self.name.clone(),
                pool: req.pool.clone().unwrap_or_else(|| "shared".into()),
            })?;
        if !queue.is_serving() {
            return Err(InferError::NotReady(self.name.clone()));
        }
        queue.push(req.class, cost, job).map_err(|refused| match refused {
            Refused::Full(_) => {
                bump(&self.counters.rejected_full);
                InferError::Overloaded {
                    model: self.name.clone(),
                    retry_after: queue.retry_after(),
                }
            }
            Refused::TooLarge(_) => InferError::invalid(
                format!("prompt + max_tokens ({cost} tokens) exceed this model's batch token budget"),
                "max_tokens",
            ),
            Refused::Closed(_) => InferError::ShuttingDown,
        })?;
        match tokio::time::timeout(queue_timeout, rx.recv()).await {
            Ok(Some(GenEvent::Admitted)) => {}
            Ok(Some(GenEvent::Failed(e))) => {
                if matches!(e, InferError::QueueTimeout { .. }) {
                    bump(&self.counters.queue_timeouts);
                }
                return Err(e);
            }
            Ok(Some(other)) => {
                return Err(InferError::Backend(format!(
                    "unexpected first event {other:?}"
                )))
            }
            Ok(None) => return Err(InferError::ShuttingDown),
            Err(_) => {
                bump(&self.counters.queue_timeouts);
                return Err(InferError::QueueTimeout {
                    model: self.name.clone(),
                    waited: queue_timeout,
                    retry_after: queue.retry_after(),
                });
            }
        }
        let timeout = Duration::from_secs(self.limits.request_timeout_secs);
        Ok(GenStream {
            prompt_tokens,
            max_tokens,
            n,
            finished: 0,
            progress,
            rx,
            deadline: Instant::now() + timeout,
            timeout,
            ended: false,
            counters: self.counters.clone(),
        })
    }

    /// Prompt token ids. Chat prompts render the template; its text already holds the
    /// special tokens, so none are added.
    pub async fn tokenize(
        &self,
        input: PromptInput,
        add_special: bool,
    ) -> Result<Vec<u32>, InferError> {
        let (text, add_special) = match input {
            PromptInput::Tokens(ids) => return self.check_ids(ids, "prompt"),
            PromptInput::Text(text) => (text, add_special),
            PromptInput::Chat { messages, tools } => (self.render_chat(&messages, &tools)?, false),
        };
        let tokenizer = self.tokenizer.clone();
        blocking(move || {
            tokenizer
                .encode(text, add_special)
                .map(|enc| enc.get_ids().to_vec())
                .map_err(|e| {
                    InferError::invalid(format!("cannot tokenize the prompt: {e}"), "prompt")
                })
        })
        .await
    }

    /// Requests waiting for a replica now.
    pub fn queued(&self) -> usize {
        self.queues.len()
    }

    /// Retry-After for a client refused now (the longest over the pools).
    pub fn retry_after(&self) -> Duration {
        self.queues.retry_after()
    }

    /// Feeds one request's slot time into every pool's Retry-After estimate, as the replicas
    /// do when a request ends. Tests use it to fix the estimate at a known value.
    pub fn record_service_time(&self, took: Duration) {
        self.queues.all().for_each(|q| q.record_service(took));
    }

    /// Tokens (prompt + max_tokens) admitted so far per scheduling class: the share each
    /// tier actually got.
    pub fn served_tokens(&self) -> Vec<u64> {
        self.queues.served_tokens()
    }

    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        tools: &[serde_json::Value],
    ) -> Result<String, InferError> {
        let template = self.template.as_ref().ok_or(InferError::WrongKind {
            model: self.name.clone(),
            what: "chat (it has no chat template)",
        })?;
        template
            .render(messages, tools, true)
            .map_err(|e| InferError::invalid(e.to_string(), "messages"))
    }

    pub fn detokenize(&self, ids: &[u32]) -> Result<String, InferError> {
        let ids = self.check_ids(ids.to_vec(), "tokens")?;
        self.tokenizer
            .decode(&ids, false)
            .map_err(|e| InferError::invalid(format!("cannot detokenize: {e}"), "tokens"))
    }

    fn check_ids(&self, ids: Vec<u32>, param: &'static str) -> Result<Vec<u32>, InferError> {
        let vocab = self.tokenizer.get_vocab_size(true) as u32;
        match ids.iter().find(|&&id| id >= vocab) {
            Some(bad) => Err(InferError::invalid(
                format!("token id {bad} is outside the vocabulary (size {vocab})"),
                param,
            )),
            None => Ok(ids),
        }
    }
}
