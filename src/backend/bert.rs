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
mod tests {
    use std::path::PathBuf;

    use super::*;

    const REFERENCE_JSON: &str = include_str!("../../tests/reference/minilm_reference.json");

    /// Written by tests/reference/make_minilm_reference.py (NumPy, no candle).
    #[derive(Deserialize)]
    struct Reference {
        model_safetensors_sha256: String,
        entries: Vec<ReferenceEntry>,
    }

    #[derive(Deserialize)]
    struct ReferenceEntry {
        text: String,
        ids: Vec<u32>,
        embedding: Vec<f32>,
    }

    fn reference() -> Reference {
        serde_json::from_str(REFERENCE_JSON).expect("minilm_reference.json parses")
    }

    fn model_dir() -> PathBuf {
        let cache = crate::models::default_cache_dir();
        let dir = cache.join("models").join("all-minilm-l6-v2");
        assert!(
            dir.join(WEIGHTS_FILE).is_file() && dir.join(TOKENIZER_FILE).is_file(),
            "all-MiniLM-L6-v2 is not installed in {}: run `tiergate models fetch` first",
            dir.display()
        );
        dir
    }

    fn load_model() -> BertEmbedder {
        load(&model_dir(), &Device::Cpu).expect("all-MiniLM-L6-v2 loads")
    }

    fn encode(tokenizer: &tokenizers::Tokenizer, text: &str) -> Vec<u32> {
        tokenizer
            .encode(text, true)
            .expect("encodes")
            .get_ids()
            .to_vec()
    }

    fn encode_all(texts: &[&str]) -> Vec<Vec<u32>> {
        let tokenizer = load_tokenizer(&model_dir()).expect("tokenizer loads");
        texts.iter().map(|t| encode(&tokenizer, t)).collect()
    }

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        // Vectors are unit length, so the dot product is the cosine.
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    fn sha256_hex(path: &Path) -> String {
        use sha2::Digest;
        let bytes = std::fs::read(path).expect("model file reads");
        hex::encode(sha2::Sha256::digest(&bytes))
    }

    #[test]
    fn embeddings_match_independent_numpy_reference() {
        let reference = reference();
        let dir = model_dir();
        assert_eq!(
            sha256_hex(&dir.join(WEIGHTS_FILE)),
            reference.model_safetensors_sha256,
            "model.safetensors differs from the one the reference was computed from"
        );
        let tokenizer = load_tokenizer(&dir).expect("tokenizer loads");
        let mut model = load_model();
        let mut inputs = Vec::new();
        for entry in &reference.entries {
            let ids = encode(&tokenizer, &entry.text);
            assert_eq!(ids, entry.ids, "token ids of {:?}", entry.text);
            inputs.push(ids);
        }
        // One padded batch: the reference embedded each text alone, so this also checks masking.
        let vectors = model.embed(&inputs).expect("embeds");
        for (entry, vector) in reference.entries.iter().zip(&vectors) {
            let diff = max_abs_diff(vector, &entry.embedding);
            assert!(diff < 1e-4, "{:?}: max abs diff {diff}", entry.text);
        }
    }

    #[test]
    fn paraphrases_score_higher_than_unrelated_pairs() {
        let texts = [
            "The cat sits on the mat.",
            "A cat is sitting on a rug.",
            "Stock markets fell sharply today.",
            "How do I reset my password?",
            "Steps to recover a forgotten account password.",
        ];
        let v = load_model().embed(&encode_all(&texts)).expect("embeds");
        let cats = cosine(&v[0], &v[1]);
        let passwords = cosine(&v[3], &v[4]);
        for unrelated in [
            cosine(&v[0], &v[2]),
            cosine(&v[3], &v[2]),
            cosine(&v[0], &v[3]),
        ] {
            assert!(
                cats > unrelated + 0.3,
                "cats {cats} vs unrelated {unrelated}"
            );
            assert!(
                passwords > unrelated + 0.3,
                "passwords {passwords} vs {unrelated}"
            );
        }
        // The values MODELS.md states, computed outside candle.
        assert!((cats - 0.7689).abs() < 1e-4, "cos(cat, cat) = {cats}");
        assert!((cosine(&v[0], &v[2]) - 0.0462).abs() < 1e-4);
    }

    #[test]
    fn batching_with_padding_does_not_change_embeddings() {
        let inputs = encode_all(&[
            "The cat sits on the mat.",
            "The committee postponed its decision on the new railway line until the engineers \
             had finished surveying the flood plain.",
            "Order 66 shipped 3,141 units on 2024-07-15.",
            "Hi",
        ]);
        let mut model = load_model();
        let alone: Vec<Vec<f32>> = inputs
            .iter()
            .map(|ids| {
                model
                    .embed(std::slice::from_ref(ids))
                    .expect("embeds")
                    .remove(0)
            })
            .collect();
        let batched = model.embed(&inputs).expect("embeds");
        // The same texts in another order and with a duplicate: position in the batch and
        // neighbours must not matter either.
        let reordered: Vec<Vec<u32>> = [3, 1, 0, 2, 0].iter().map(|&i| inputs[i].clone()).collect();
        let shuffled = model.embed(&reordered).expect("embeds");
        for (i, single) in alone.iter().enumerate() {
            let diff = max_abs_diff(single, &batched[i]);
            assert!(diff < 1e-5, "input {i}: batched differs by {diff}");
        }
        for (row, &i) in [3, 1, 0, 2, 0].iter().enumerate() {
            let diff = max_abs_diff(&alone[i], &shuffled[row]);
            assert!(diff < 1e-5, "input {i} at row {row}: differs by {diff}");
        }
    }

    #[test]
    fn vectors_are_unit_length() {
        let reference = reference();
        let texts: Vec<&str> = reference.entries.iter().map(|e| e.text.as_str()).collect();
        let mut model = load_model();
        let vectors = model.embed(&encode_all(&texts)).expect("embeds");
        assert_eq!(vectors.len(), texts.len());
        for (text, v) in texts.iter().zip(&vectors) {
            assert_eq!(v.len(), model.spec().dim);
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "{text:?}: norm {norm}");
        }
    }

    #[test]
    fn spec_reports_dimension_and_sentence_transformers_token_limit() {
        let model = load_model();
        assert_eq!(model.spec().dim, 384);
        // sentence_bert_config.json's 256, not the 512 position embeddings.
        assert_eq!(model.spec().max_tokens, 256);
    }

    #[test]
    fn too_long_input_is_an_error_not_a_panic() {
        let mut model = load_model();
        let max = model.spec().max_tokens;
        let body = |n: usize| {
            let mut ids = vec![101];
            ids.extend(std::iter::repeat_n(1996, n - 2));
            ids.push(102);
            ids
        };
        let at_limit = model
            .embed(&[body(max)])
            .expect("exactly max_tokens is accepted");
        assert_eq!(at_limit.len(), 1);
        let err = model
            .embed(&[body(5), body(max + 1)])
            .expect_err("one token over the limit");
        assert!(
            matches!(err, BackendError::Input { index: 1, .. }),
            "unexpected error {err}"
        );
    }

    #[test]
    fn empty_input_or_unknown_token_id_is_an_error() {
        let mut model = load_model();
        let err = model
            .embed(&[vec![101, 102], vec![]])
            .expect_err("empty input");
        assert!(matches!(err, BackendError::Input { index: 1, .. }), "{err}");
        let err = model
            .embed(&[vec![101, 30522, 102]])
            .expect_err("id past the vocabulary");
        assert!(matches!(err, BackendError::Input { index: 0, .. }), "{err}");
    }

    #[test]
    fn empty_batch_returns_empty() {
        let mut model = load_model();
        assert!(model.embed(&[]).expect("empty batch is fine").is_empty());
    }

    #[test]
    fn pooling_other_than_mean_is_rejected() {
        let parse = |json: &str| serde_json::from_str::<PoolingConfig>(json).expect("parses");
        let mean = parse(r#"{"word_embedding_dimension":384,"pooling_mode_mean_tokens":true}"#);
        assert!(check_pooling(&mean, 384).is_ok());
        assert!(check_pooling(&mean, 768).is_err());
        let cls = parse(r#"{"word_embedding_dimension":384,"pooling_mode_cls_token":true}"#);
        let err = check_pooling(&cls, 384).expect_err("cls pooling");
        assert!(err.contains("only mean pooling"), "{err}");
        let both = parse(
            r#"{"word_embedding_dimension":384,"pooling_mode_mean_tokens":true,
                "pooling_mode_max_tokens":true}"#,
        );
        assert!(check_pooling(&both, 384).is_err());
    }

    #[test]
    fn pipelines_with_unsupported_modules_are_rejected() {
        let parse = |json: &str| serde_json::from_str::<Vec<ModuleEntry>>(json).expect("parses");
        let ok = parse(
            r#"[{"type":"sentence_transformers.models.Transformer"},
                {"type":"sentence_transformers.models.Pooling"},
                {"type":"sentence_transformers.models.Normalize"}]"#,
        );
        assert!(check_modules(&ok).is_ok());
        let dense = parse(r#"[{"type":"sentence_transformers.models.Dense"}]"#);
        assert!(check_modules(&dense).is_err());
    }
}
