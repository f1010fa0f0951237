//! The inference layer: validation and tokenization, per-model bounded queues, and the replica
//! worker threads that own the models and run the scheduling loop.
//!
//! Async code talks to a model only through `GenerateModel::submit` and `EmbedModel::embed`;
//! both return at once with 503 when the queue is full, and a dropped receiver cancels work.

mod backlog;
mod embed;
mod engine;
mod gen_checks;
mod gen_job;
mod gen_prefix;
mod gen_sequence;
mod gen_worker;
mod generate;
pub mod grammar;
pub mod logprobs;
pub mod policy;
mod queue;
pub mod sampling;
pub mod share;
mod supervise;
pub mod text;
pub mod token_bytes;

pub use embed::{EmbedInput, EmbedModel, EmbedOutput};
pub use engine::{Engine, ModelHandle, ReplicaInfo};
pub use generate::{
    Counters, FinishReason, GenEvent, GenRequest, GenStream, GenerateModel, Prepared, Progress,
    PromptInput,
};
pub use grammar::{Constraint, GrammarLimits};
pub use logprobs::{TokenLogprob, MAX_TOP_LOGPROBS};
pub use policy::BatchKnobs;
pub use sampling::SamplingParams;

use std::time::Duration;

/// Errors of the inference layer; `error::ApiError` is their only mapping to HTTP.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("The model `{0}` does not exist")]
    UnknownModel(String),
    #[error("The model `{model}` does not support {what}")]
    WrongKind { model: String, what: &'static str },
    #[error("{message}")]
    ContextLength {
        message: String,
        param: &'static str,
    },
    #[error("{message}")]
    Invalid {
        message: String,
        param: Option<&'static str>,
    },
    #[error("The model `{model}` is overloaded: its queue is full; retry shortly")]
    Overloaded {
        model: String,
        retry_after: Duration,
    },
    #[error("The request waited longer than {waited:?} in the queue of `{model}`; retry shortly")]
    QueueTimeout {
        model: String,
        waited: Duration,
        /// The queue's backlog estimate when it gave up (`backlog`).
        retry_after: Duration,
    },
    #[error("The request took longer than the limit of {0:?}")]
    RequestTimeout(Duration),
    #[error("The model `{0}` is not ready yet")]
    NotReady(String),
    #[error("The server is shutting down")]
    ShuttingDown,
    /// Cut at the end of the shutdown grace period while it ran.
    #[error("The server shut down before the request finished")]
    Interrupted,
    /// A model failure; the detail is logged, clients see a generic message.
    #[error("model failure: {0}")]
    Backend(String),
    /// The model has no replicas for the request's pool (a dedicated tier without its own
    /// replicas, or a model served only on dedicated replicas).
    #[error("The model `{model}` has no replicas serving your tier ({pool})")]
    NoReplicas { model: String, pool: String },
}

impl InferError {
    /// The machine-readable code of the error, as the API's `code` field and the ledger's
    /// `reason` say it (one table for both).
    pub fn code(&self) -> &'static str {
        match self {
            InferError::UnknownModel(_) | InferError::NoReplicas { .. } => "model_not_found",
            InferError::WrongKind { .. } => "model_not_supported",
            InferError::ContextLength { .. } => "context_length_exceeded",
            InferError::Invalid { .. } => "invalid_request",
            InferError::Overloaded { .. } => "overloaded",
            InferError::QueueTimeout { .. } => "queue_timeout",
            InferError::RequestTimeout(_) => "request_timeout",
            InferError::NotReady(_) => "model_not_ready",
            InferError::ShuttingDown | InferError::Interrupted => "shutting_down",
            InferError::Backend(_) => "model_error",
        }
    }

    pub fn invalid(message: impl Into<String>, param: &'static str) -> Self {
        InferError::Invalid {
            message: message.into(),
            param: Some(param),
        }
    }
}

/// Runs tokenizer work (CPU-bound, up to the body limit in size) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, InferError> + Send + 'static,
) -> Result<T, InferError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| InferError::Backend(format!("tokenizer task failed: {e}")))?
}
