//! Sentence embeddings from a sentence-transformers BERT checkpoint (all-MiniLM-L6-v2):
//! candle's BERT encoder, then mean pooling over the attention mask and L2 normalisation, which
//! is the recipe the model card prescribes.
//!
//! Inputs arrive as token ids with `[CLS]`/`[SEP]` already added (see [`load_tokenizer`]). A
//! batch is right-padded to its longest input; the attention mask keeps padding out of both
//! attention and pooling, so a text's vector does not depend on what it was batched with.

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::{BackendError, Embedder, EmbedderSpec, Result};

const CONFIG_FILE: &str = "config.json";
const WEIGHTS_FILE: &str = "model.safetensors";
const TOKENIZER_FILE: &str = "tokenizer.json";
const POOLING_FILE: &str = "1_Pooling/config.json";
const MODULES_FILE: &str = "modules.json";
const SENTENCE_CONFIG_FILE: &str = "sentence_bert_config.json";

/// Floor for the L2 norm, as in PyTorch's `F.normalize`: keeps a (theoretical) all-zero vector
/// from turning into NaNs.
const NORM_EPS: f32 = 1e-12;

/// Loads `tokenizer.json` with its padding and truncation removed.
///
/// The file pads every input to 128 tokens and truncates at 128. Fixed padding wastes compute
/// (the backend pads each batch to its own longest input), and truncation would silently drop
/// text: the caller checks lengths against [`EmbedderSpec::max_tokens`] and decides explicitly.
pub fn load_tokenizer(dir: &Path) -> Result<tokenizers::Tokenizer> {
    let path = dir.join(TOKENIZER_FILE);
    let mut tokenizer = tokenizers::Tokenizer::from_file(&path)
        .map_err(|e| BackendError::Tokenizer(format!("{}: {e}", path.display())))?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(None)
        .map_err(|e| BackendError::Tokenizer(format!("{}: {e}", path.display())))?;
    Ok(tokenizer)
}

/// The sentence-transformers pooling module's settings (`1_Pooling/config.json`).
#[derive(Debug, Deserialize)]
struct PoolingConfig {
    word_embedding_dimension: usize,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

/// Accepts exactly "mean pooling, nothing else": sentence-transformers concatenates the vectors
/// of every enabled mode, so any other combination would give a different (and wider) vector.
fn check_pooling(pooling: &PoolingConfig, hidden_size: usize) -> std::result::Result<(), String> {
    let others = [
        ("cls_token", pooling.pooling_mode_cls_token),
        ("max_tokens", pooling.pooling_mode_max_tokens),
        (
            "mean_sqrt_len_tokens",
            pooling.pooling_mode_mean_sqrt_len_tokens,
        ),
        (
            "weightedmean_tokens",
            pooling.pooling_mode_weightedmean_tokens,
        ),
        ("lasttoken", pooling.pooling_mode_lasttoken),
    ];
    let enabled: Vec<&str> = others
        .iter()
        .filter(|(_, on)| *on)
        .map(|(n, _)| *n)
        .collect();
    if !pooling.pooling_mode_mean_tokens || !enabled.is_empty() {
        return Err(format!(
            "only mean pooling is supported; this model asks for mean_tokens={} and {enabled:?}",
            pooling.pooling_mode_mean_tokens
        ));
    }
    if pooling.word_embedding_dimension != hidden_size {
        return Err(format!(
            "pooling expects dimension {}, the encoder has hidden size {hidden_size}",
            pooling.word_embedding_dimension
        ));
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
struct ModuleEntry {
    #[serde(rename = "type")]
    kind: String,
}

/// Rejects pipelines with stages we do not run (a `Dense` projection, say): silently skipping
/// one would return plausible-looking but wrong vectors. Normalize is accepted whether listed
/// or not, because OpenAI-style embeddings are unit vectors either way.
fn check_modules(modules: &[ModuleEntry]) -> std::result::Result<(), String> {
    const SUPPORTED: [&str; 3] = [
        "sentence_transformers.models.Transformer",
        "sentence_transformers.models.Pooling",
        "sentence_transformers.models.Normalize",
    ];
    match modules
        .iter()
        .find(|m| !SUPPORTED.contains(&m.kind.as_str()))
    {
        Some(m) => Err(format!(
            "unsupported sentence-transformers module {}",
            m.kind
        )),
        None => Ok(()),
    }
}

#[derive(Debug, Deserialize)]
struct SentenceBertConfig {
    max_seq_length: usize,
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let file_error =
        |e: &dyn std::fmt::Display| BackendError::Files(format!("{}: {e}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| file_error(&e))?;
    serde_json::from_str(&text).map_err(|e| file_error(&e))
}

/// Loads a sentence-transformers BERT model directory onto `device` (weights as F32).
///
/// The token limit is `max_seq_length` from `sentence_bert_config.json` (what the model was
/// trained for, 256 here), capped by the encoder's position table (512).
pub fn load(dir: &Path, device: &Device) -> Result<BertEmbedder> {
    let config: Config = read_json(&dir.join(CONFIG_FILE))?;

    let pooling_path = dir.join(POOLING_FILE);
    let pooling: PoolingConfig = read_json(&pooling_path)?;
    check_pooling(&pooling, config.hidden_size)
        .map_err(|reason| BackendError::Files(format!("{}: {reason}", pooling_path.display())))?;

    let modules_path = dir.join(MODULES_FILE);
    let modules: Vec<ModuleEntry> = read_json(&modules_path)?;
    check_modules(&modules)
        .map_err(|reason| BackendError::Files(format!("{}: {reason}", modules_path.display())))?;

    let sentence_config: SentenceBertConfig = read_json(&dir.join(SENTENCE_CONFIG_FILE))?;
    let max_tokens = sentence_config
        .max_seq_length
        .min(config.max_position_embeddings);

    let pad_id = u32::try_from(config.pad_token_id).map_err(|_| {
        BackendError::Files(format!("pad_token_id {} too large", config.pad_token_id))
    })?;

    let weights_path = dir.join(WEIGHTS_FILE);
    let weights_error =
        |e: candle_core::Error| BackendError::Files(format!("{}: {e}", weights_path.display()));
    let tensors = candle_core::safetensors::load(&weights_path, device).map_err(weights_error)?;
    let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
    // A missing or misshapen tensor is a problem with the file, so report it with its path.
    let model = BertModel::load(vb, &config).map_err(weights_error)?;

    Ok(BertEmbedder {
        model,
        device: device.clone(),
        vocab_size: config.vocab_size,
        pad_id,
        spec: EmbedderSpec {
            dim: config.hidden_size,
            max_tokens,
        },
    })
}

/// A loaded BERT sentence embedder. Owned by one worker thread (see the module `backend`).
pub struct BertEmbedder {
    model: BertModel,
    device: Device,
    /// Ids at or above this would index past the embedding table: rejected up front, because
    /// not every device backend bounds-checks `index_select`.
    vocab_size: usize,
    /// Filler for padded positions; its value is irrelevant (masked) but must be a valid id.
    pad_id: u32,
    spec: EmbedderSpec,
}

impl BertEmbedder {
    /// Checks every input before any compute, so a bad one fails the call with its index.
    fn validate(&self, inputs: &[Vec<u32>]) -> Result<()> {
        let max = self.spec.max_tokens;
        for (index, ids) in inputs.iter().enumerate() {
            let reason = if ids.is_empty() {
                "no tokens (expected at least [CLS] and [SEP])".to_string()
            } else if ids.len() > max {
                format!("{} tokens, the model takes at most {max}", ids.len())
            } else if let Some(id) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
                format!(
                    "token id {id} is outside the vocabulary ({})",
                    self.vocab_size
                )
            } else {
                continue;
            };
            return Err(BackendError::Input { index, reason });
        }
        Ok(())
    }

    /// Runs one padded batch through the encoder; `inputs` must be validated and non-empty.
    fn forward_batch(&self, inputs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let batch = inputs.len();
        let longest = inputs.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(batch * longest);
        let mut mask = Vec::with_capacity(batch * longest);
        for input in inputs {
            let padding = longest - input.len();
            ids.extend_from_slice(input);
            ids.extend(std::iter::repeat_n(self.pad_id, padding));
            mask.extend(std::iter::repeat_n(1f32, input.len()));
            mask.extend(std::iter::repeat_n(0f32, padding));
        }
        let ids = Tensor::from_vec(ids, (batch, longest), &self.device)?;
        let mask = Tensor::from_vec(mask, (batch, longest), &self.device)?;
        // Single-segment inputs: every token is segment 0.
        let token_type_ids = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &token_type_ids, Some(&mask))?;
        let pooled = mean_pool(&hidden, &mask)?;
        Ok(l2_normalise(&pooled)?.to_vec2::<f32>()?)
    }
}

/// Mean of the hidden states over real tokens: `hidden` is (batch, seq, dim), `mask` is
/// (batch, seq) with 1 for tokens and 0 for padding. Padded positions are multiplied by an
/// exact 0, so they cannot shift the mean.
fn mean_pool(hidden: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let mask = mask.unsqueeze(D::Minus1)?;
    let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
    // Never 0: validation rejects empty inputs.
    let counts = mask.sum(1)?;
    summed.broadcast_div(&counts)
}

/// Scales each row of (batch, dim) to unit length.
fn l2_normalise(x: &Tensor) -> candle_core::Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(NORM_EPS, f32::MAX)?;
    x.broadcast_div(&norm)
}

impl Embedder for BertEmbedder {
    fn spec(&self) -> &EmbedderSpec {
        &self.spec
    }

    fn embed(&mut self, inputs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        self.validate(inputs)?;
        let this = &*self;
        // On CPU this runs the ops on candle's own thread pool (sized by CANDLE_NUM_THREADS).
        self.device.with_context(|| this.forward_batch(inputs))
    }
}

#[cfg(test)]
#[path = "bert_tests.rs"]
mod tests;
