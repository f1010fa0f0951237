//! Model backends: synchronous traits that the replica worker threads drive, and the candle
//! implementations behind them.
//!
//! Nothing here knows about tokio or HTTP. A backend is owned by exactly one OS thread (see
//! `infer::worker`), so the traits take `&mut self` and need only `Send`.

pub mod bert;
pub mod chat_template;
pub mod device;
pub mod gguf_tokenizer;
pub mod kernels;
pub mod llama;
pub mod prefix_cache;

pub use prefix_cache::PrefixStats;

/// Errors of the model layer. The infer layer maps them to its own error; the HTTP layer never
/// shows their text to clients (it is logged), because it can reveal paths and internals.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("model files: {0}")]
    Files(String),
    #[error("sequence slot {slot}: {reason}")]
    Slot { slot: usize, reason: String },
    /// An input the model cannot take (empty, too long, unknown token id). The infer layer
    /// validates first; this is the backend's own guard, so a bad input fails one request
    /// instead of panicking the worker thread.
    #[error("input {index}: {reason}")]
    Input { index: usize, reason: String },
    #[error("device: {0}")]
    Device(String),
}

pub type Result<T> = std::result::Result<T, BackendError>;

/// Static facts about a loaded generator that the scheduler needs.
#[derive(Debug, Clone)]
pub struct GeneratorSpec {
    pub vocab_size: usize,
    /// Longest sequence (prompt + output) one slot can hold.
    pub max_seq_len: usize,
    /// Number of sequence slots (live sequences that can decode together).
    pub max_slots: usize,
}

/// A decoder-only language model with per-sequence KV state held in numbered slots.
///
/// The slot design is what continuous batching needs: sequences at different positions decode
/// together in one `decode` call, and a finished sequence frees its slot without disturbing the
/// others. Each slot remembers its own length; `prefill` and `decode` append to it.
pub trait Generator: Send {
    fn spec(&self) -> &GeneratorSpec;

    /// Appends `tokens` (a whole prompt or a chunk of one) to `slot` and returns the logits
    /// (length `vocab_size`) that predict the token after the last one.
    fn prefill(&mut self, slot: usize, tokens: &[u32]) -> Result<Vec<f32>>;

    /// One decode step: each `(slot, token)` appends `token` to its slot. Returns one logits
    /// row per entry, in the same order. Slots may be at different positions.
    fn decode(&mut self, batch: &[(usize, u32)]) -> Result<Vec<Vec<f32>>>;

    /// Forgets the sequence in `slot` so that the slot can start a new one.
    fn release(&mut self, slot: usize);

    /// Makes `to` hold a copy of the sequence in `from` (what it stored so far), so that
    /// several choices continue one prompt prefilled once. `to` may hold anything before.
    fn copy_slot(&mut self, from: usize, to: usize) -> Result<()>;

    /// Fills the empty `slot` with the KV of the longest cached prefix of `tokens` under
    /// `scope` (see `prefix_cache`), always short of the last token, whose logits the caller
    /// needs from a prefill. Returns the positions filled; the blocks stay pinned until
    /// `release(slot)`. Backends without a prefix cache fill nothing.
    fn reuse_prefix(&mut self, _slot: usize, _scope: &str, _tokens: &[u32]) -> Result<usize> {
        Ok(0)
    }

    /// Offers the whole blocks of what `slot` stores to the prefix cache under `scope`;
    /// `tokens` are the sequence's tokens (prompt then output), of which the slot stores the
    /// first ones. Called before `release`; positions a step did not finish are not stored,
    /// so a cancelled sequence leaves no half-written block.
    fn keep_prefix(&mut self, _slot: usize, _scope: &str, _tokens: &[u32]) {}

    /// Size and evictions of the prefix cache (zero without one).
    fn prefix_stats(&self) -> PrefixStats {
        PrefixStats::default()
    }
}

/// Static facts about a loaded embedding model.
#[derive(Debug, Clone)]
pub struct EmbedderSpec {
    pub dim: usize,
    /// Longest input, in tokens including special tokens.
    pub max_tokens: usize,
}

/// A sentence-embedding model. Inputs arrive tokenized (special tokens included); the output
/// rows are pooled and normalised exactly as the model card prescribes.
pub trait Embedder: Send {
    fn spec(&self) -> &EmbedderSpec;

    /// Embeds each input; row `i` of the result belongs to `inputs[i]`.
    fn embed(&mut self, inputs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>>;
}
