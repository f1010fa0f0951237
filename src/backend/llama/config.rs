//! Hyper-parameters of a llama-family model, read from GGUF metadata or from a Hugging Face
//! `config.json`, normalised into one struct so the forward pass does not care where the
//! weights came from.

use super::family::{family, Family};
use crate::backend::gguf_tokenizer::optional_u32;
use crate::backend::{BackendError, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::Device;
use serde::Deserialize;
use std::io::{Read, Seek};

/// Shape and numerics of the model.
#[derive(Debug, Clone)]
pub(crate) struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    /// Longest context the model was trained for; caps `LlamaOptions::max_seq_len`.
    pub context_length: usize,
    /// RoPE inverse frequencies (`head_dim / 2` values) with any long-context scaling applied.
    pub rope_inv_freq: Vec<f32>,
    /// Which RoPE pairing the checkpoint expects. llama.cpp's converter permutes the q/k rows
    /// of HF llama checkpoints so that GGUF files rotate adjacent pairs (2i, 2i+1)
    /// (`rope_i`, as candle's `quantized_llama` does for llama), while HF checkpoints rotate
    /// (i, i + d/2) (`rope`, as candle's `llama.rs` does).
    pub rope_interleaved: bool,
    /// The q, k and v projections carry biases (see `family`).
    pub qkv_bias: bool,
}

impl LlamaConfig {
    fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(BackendError::Files(msg));
        if self.n_layers == 0 || self.n_heads == 0 || self.n_kv_heads == 0 || self.vocab_size == 0 {
            return bad(format!("degenerate model shape {self:?}"));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!(
                "{} attention heads are not a multiple of {} KV heads",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad(format!("head dim {} must be even", self.head_dim));
        }
        if self.rope_inv_freq.len() * 2 != self.head_dim {
            return bad("RoPE frequency count does not match the head dim".into());
        }
        if self.context_length == 0 {
            return bad("context length is 0".into());
        }
        Ok(())
    }

    /// Reads `<arch>.*` metadata for any family of `family::FAMILIES`. `reader` is needed for
    /// the optional `rope_freqs.weight` tensor (per-frequency divisors that Llama 3.1 style
    /// GGUF files carry).
    pub fn from_gguf<R: Read + Seek>(content: &Content, reader: &mut R) -> Result<Self> {
        let arch = match content.metadata.get("general.architecture") {
            Some(Value::String(s)) => s.as_str(),
            _ => {
                return Err(BackendError::Files(
                    "GGUF lacks general.architecture".into(),
                ))
            }
        };
        let fam = family(arch)?;
        let opt = |key: &str| optional_u32(content, &fam.key(key));
        let need = |key: &str| -> Result<usize> {
            opt(key)?.map(|v| v as usize).ok_or_else(|| {
                BackendError::Files(format!("GGUF metadata lacks `{}`", fam.key(key)))
            })
        };
        let hidden_size = need("embedding_length")?;
        let n_heads = need("attention.head_count")?;
        let n_kv_heads = opt("attention.head_count_kv")?.map_or(n_heads, |v| v as usize);
        let head_dim = match opt("attention.key_length")? {
            Some(v) => v as usize,
            None => hidden_size / n_heads.max(1),
        };
        if let Some(rope_dim) = opt("rope.dimension_count")? {
            if rope_dim as usize != head_dim {
                return Err(BackendError::Files(format!(
                    "partial RoPE ({rope_dim} of {head_dim} dims) is not supported"
                )));
            }
        }
        let vocab_size = match content.tensor_infos.get("token_embd.weight") {
            Some(info) => info.shape.dims2()?.0,
            None => return Err(BackendError::Files("GGUF lacks token_embd.weight".into())),
        };
        let theta = gguf_f32(content, &fam.key("rope.freq_base"))?.unwrap_or(fam.default_rope_base);
        let mut inv_freq = default_inv_freq(theta, head_dim);
        apply_gguf_rope_scaling(content, reader, fam, &mut inv_freq)?;
        let cfg = Self {
            vocab_size,
            hidden_size,
            intermediate_size: need("feed_forward_length")?,
            n_layers: need("block_count")?,
            n_heads,
            n_kv_heads,
            head_dim,
            rms_norm_eps: gguf_f32(content, &fam.key("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-5) as f64,
            context_length: need("context_length")?,
            rope_inv_freq: inv_freq,
            rope_interleaved: fam.rope_interleaved,
            qkv_bias: fam.qkv_bias,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses a Hugging Face llama `config.json`; returns the config and whether the LM head
    /// is tied to the token embeddings.
    pub fn from_hf_json(json: &str) -> Result<(Self, bool)> {
        let hf: HfConfig = serde_json::from_str(json)
            .map_err(|e| BackendError::Files(format!("config.json: {e}")))?;
        if hf.attention_bias || hf.mlp_bias {
            return Err(BackendError::Files(
                "llama with biases is not supported".into(),
            ));
        }
        if let Some(act) = hf.hidden_act.as_deref().filter(|a| *a != "silu") {
            return Err(BackendError::Files(format!(
                "activation `{act}` is not supported"
            )));
        }
        let n_kv_heads = hf.num_key_value_heads.unwrap_or(hf.num_attention_heads);
        let head_dim = hf
            .head_dim
            .unwrap_or(hf.hidden_size / hf.num_attention_heads.max(1));
        let mut inv_freq = default_inv_freq(hf.rope_theta, head_dim);
        if let Some(scaling) = &hf.rope_scaling {
            scaling.apply(&mut inv_freq)?;
        }
        let cfg = Self {
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            n_layers: hf.num_hidden_layers,
            n_heads: hf.num_attention_heads,
            n_kv_heads,
            head_dim,
            rms_norm_eps: hf.rms_norm_eps,
            context_length: hf.max_position_embeddings,
            rope_inv_freq: inv_freq,
            rope_interleaved: false,
            qkv_bias: false,
        };
        cfg.validate()?;
        Ok((cfg, hf.tie_word_embeddings))
    }
}

/// `1 / theta^(2i / d)`, computed in f32 exactly as candle's own llama models do, so that
/// parity tests compare like with like.
fn default_inv_freq(theta: f32, head_dim: usize) -> Vec<f32> {
    (0..head_dim)
        .step_by(2)
        .map(|i| 1f32 / theta.powf(i as f32 / head_dim as f32))
        .collect()
}

fn gguf_f32(content: &Content, key: &str) -> Result<Option<f32>> {
    match content.metadata.get(key) {
        None => Ok(None),
        Some(Value::F32(v)) => Ok(Some(*v)),
        Some(Value::F64(v)) => Ok(Some(*v as f32)),
        Some(_) => Err(BackendError::Files(format!("GGUF `{key}` is not a float"))),
    }
}

fn apply_gguf_rope_scaling<R: Read + Seek>(
    content: &Content,
    reader: &mut R,
    fam: &Family,
    inv_freq: &mut [f32],
) -> Result<()> {
    let kind = match content.metadata.get(&fam.key("rope.scaling.type")) {
        Some(Value::String(s)) => s.as_str(),
        _ => "none",
    };
    match kind {
        "none" => {}
        "linear" => {
            let factor = gguf_f32(content, &fam.key("rope.scaling.factor"))?.unwrap_or(1.0);
            inv_freq.iter_mut().for_each(|f| *f /= factor);
        }
        other => {
            return Err(BackendError::Files(format!(
                "RoPE scaling `{other}` is not supported"
            )))
        }
    }
    if content.tensor_infos.contains_key("rope_freqs.weight") {
        let factors = content
            .tensor(reader, "rope_freqs.weight", &Device::Cpu)?
            .dequantize(&Device::Cpu)?
            .to_vec1::<f32>()?;
        if factors.len() != inv_freq.len() {
            return Err(BackendError::Files(
                "rope_freqs.weight has the wrong length".into(),
            ));
        }
        inv_freq.iter_mut().zip(factors).for_each(|(f, d)| *f /= d);
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
struct HfConfig {
    hidden_size: usize,
    intermediate_size: usize,
    vocab_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    rope_theta: f32,
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    rope_scaling: Option<HfRopeScaling>,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    hidden_act: Option<String>,
}

fn default_rope_theta() -> f32 {
    10_000.0
}

/// `rope_scaling` of HF configs; old files name the kind `type`, new ones `rope_type`.
#[derive(Debug, Deserialize)]
struct HfRopeScaling {
    rope_type: Option<String>,
    #[serde(rename = "type")]
    legacy_type: Option<String>,
    factor: Option<f32>,
    low_freq_factor: Option<f32>,
    high_freq_factor: Option<f32>,
    original_max_position_embeddings: Option<usize>,
}

impl HfRopeScaling {
    fn apply(&self, inv_freq: &mut [f32]) -> Result<()> {
        let kind = self
            .rope_type
            .as_deref()
            .or(self.legacy_type.as_deref())
            .unwrap_or("default");
        let factor = self.factor.unwrap_or(1.0);
        match kind {
            "default" => Ok(()),
            "linear" => {
                inv_freq.iter_mut().for_each(|f| *f /= factor);
                Ok(())
            }
            "llama3" => {
                let missing = || BackendError::Files("incomplete llama3 rope_scaling".into());
                let low = self.low_freq_factor.ok_or_else(missing)?;
                let high = self.high_freq_factor.ok_or_else(missing)?;
                let original = self.original_max_position_embeddings.ok_or_else(missing)? as f32;
                inv_freq
                    .iter_mut()
                    .for_each(|f| *f = llama3_scaled(*f, factor, low, high, original));
                Ok(())
            }
            other => Err(BackendError::Files(format!(
                "RoPE scaling `{other}` is not supported"
            ))),
        }
    }
}

/// Llama 3.1 frequency scaling: long wavelengths are slowed by `factor`, short ones are kept,
/// and the band in between is interpolated smoothly.
fn llama3_scaled(freq: f32, factor: f32, low: f32, high: f32, original: f32) -> f32 {
    let wavelen = 2.0 * std::f32::consts::PI / freq;
    let low_freq_wavelen = original / low;
    let high_freq_wavelen = original / high;
    if wavelen < high_freq_wavelen {
        freq
    } else if wavelen > low_freq_wavelen {
        freq / factor
    } else {
        let smooth = (original / wavelen - low) / (high - low);
        (1.0 - smooth) * freq / factor + smooth * freq
    }
}
