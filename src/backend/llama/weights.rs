//! Weight loading from GGUF files and Hugging Face safetensors directories.
//!
//! Every projection is a `Linear` (see `linear`), whichever format it came from: candle's
//! `QMatMul` for a dense or quantized tensor, or our int8 kernels for Q8_0 and Q4_0 on a CPU
//! with VNNI.
//! Projections of one input are grouped (q|k|v, gate|up) so the int8 kernel can stack them.

use super::config::LlamaConfig;
use super::linear::{Linear, Weight};
use crate::backend::kernels::Isa;
use crate::backend::{BackendError, Result};
use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One transformer block.
#[derive(Debug)]
pub(crate) struct LayerWeights {
    pub attn_norm: Tensor,
    /// q | k | v, in that order.
    pub qkv: Linear,
    /// Biases of q, k and v, for families that have them (`Family::qkv_bias`).
    pub qkv_bias: Option<[Tensor; 3]>,
    pub wo: Linear,
    pub ffn_norm: Tensor,
    /// gate | up, in that order.
    pub gate_up: Linear,
    pub w_down: Linear,
}

impl LayerWeights {
    /// q, k and v of `[tokens, hidden]`, biases added.
    pub fn qkv(&self, x: &Tensor) -> candle_core::Result<[Tensor; 3]> {
        let [q, k, v] = self.qkv.forward_split(x)?;
        match &self.qkv_bias {
            None => Ok([q, k, v]),
            Some([bq, bk, bv]) => Ok([
                q.broadcast_add(bq)?,
                k.broadcast_add(bk)?,
                v.broadcast_add(bv)?,
            ]),
        }
    }

    /// SwiGLU feed-forward on `[tokens, hidden]`.
    pub fn mlp(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let [gate, up] = self.gate_up.forward_split(x)?;
        self.w_down.forward(&(candle_nn::ops::silu(&gate)? * up)?)
    }
}

#[derive(Debug)]
pub(crate) struct Weights {
    /// Token embeddings, looked up row by row (`QMatMul::embedding` dequantizes only the
    /// rows it needs, so a quantized table is never expanded to f32 in full).
    pub embed: QMatMul,
    pub layers: Vec<LayerWeights>,
    pub norm: Tensor,
    pub lm_head: Linear,
}

/// Where projection weights go and in which form.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Placement<'a> {
    pub device: &'a Device,
    /// CPU re-encoding format (`LlamaOptions::cpu_weight_format`); ignored on GPUs.
    pub format: Option<GgmlDType>,
    /// Int8 kernel for Q8_0 and Q4_0 projections; `None` keeps candle's matmul for all.
    pub int8: Option<Isa>,
}

impl Placement<'_> {
    /// Where the LM head goes: a 4-bit format keeps it at Q8_0, as llama.cpp's Q4_0 files
    /// keep `token_embd`/`output` at 8 bits. The head's rounding errors land directly on the
    /// logits; with it at 4 bits SmolLM2 lost a third of its top-1 choices
    /// (`loadtests/quant_quality`), and the comparison with llama-server's Q4_0 would read
    /// fewer bytes per token than the peer does.
    fn for_head(self) -> Self {
        let format = self.format.map(|f| match f {
            GgmlDType::Q4_0 => GgmlDType::Q8_0,
            f => f,
        });
        Self { format, ..self }
    }
}

/// Re-encodes a quantized weight on the CPU when a faster format is asked for; `None` keeps
/// the file's format. candle has SIMD kernels for Q8_0/Q4_0/K-quants but only scalar code for
/// e.g. Q4_1 (see MODELS.md). Weights whose rows do not split into the target's blocks are kept.
fn converted(qt: &QTensor, target: Option<GgmlDType>, device: &Device) -> Result<Option<QTensor>> {
    let Some(target) = target.filter(|t| device.is_cpu() && *t != qt.dtype()) else {
        return Ok(None);
    };
    let cols = qt.shape().dims().last().copied().unwrap_or(0);
    if cols % target.block_size() != 0 {
        tracing::warn!(
            shape = ?qt.shape(),
            ?target,
            "weight rows do not divide into blocks; keeping the file's format"
        );
        return Ok(None);
    }
    Ok(Some(QTensor::quantize(&qt.dequantize(device)?, target)?))
}

/// Reads tensors of one GGUF file.
struct GgufSource<'a, R> {
    content: &'a gguf_file::Content,
    reader: &'a mut R,
    place: Placement<'a>,
}

impl<R: Read + Seek> GgufSource<'_, R> {
    fn qtensor(&mut self, name: &str) -> Result<QTensor> {
        self.content
            .tensor(self.reader, name, self.place.device)
            .map_err(|e| BackendError::Files(format!("GGUF tensor {name}: {e}")))
    }

    /// Projections of one input: `(name, rows)` each, all `cols` wide.
    fn linear(&mut self, parts: &[(String, usize)], cols: usize) -> Result<Linear> {
        let mut weights = Vec::with_capacity(parts.len());
        for (name, rows) in parts {
            let qt = self.qtensor(name)?;
            check_dims(name, qt.shape().dims(), &[*rows, cols])?;
            let qt = converted(&qt, self.place.format, self.place.device)?.unwrap_or(qt);
            weights.push(Weight::Quantized(Arc::new(qt)));
        }
        Ok(Linear::new(weights, self.place.int8)?)
    }

    /// A vector (norm weight or bias) of `size`, dequantized.
    fn norm(&mut self, name: &str, size: usize) -> Result<Tensor> {
        let t = self.qtensor(name)?.dequantize(self.place.device)?;
        check_dims(name, t.dims(), &[size])?;
        Ok(t)
    }
}

fn check_dims(name: &str, got: &[usize], want: &[usize]) -> Result<()> {
    if got != want {
        return Err(BackendError::Files(format!(
            "tensor {name} has shape {got:?}, expected {want:?}"
        )));
    }
    Ok(())
}

/// Loads llama weights from GGUF (`token_embd`, `blk.N.*`, `output_norm`, `output`). Files
/// without `output.weight` tie the LM head to the token embeddings.
pub(crate) fn from_gguf<R: Read + Seek>(
    content: &gguf_file::Content,
    reader: &mut R,
    cfg: &LlamaConfig,
    place: Placement<'_>,
) -> Result<Weights> {
    let mut src = GgufSource {
        content,
        reader,
        place,
    };
    let (h, q_width, kv_width) = (
        cfg.hidden_size,
        cfg.n_heads * cfg.head_dim,
        cfg.n_kv_heads * cfg.head_dim,
    );
    let embd = Arc::new(src.qtensor("token_embd.weight")?);
    check_dims(
        "token_embd.weight",
        embd.shape().dims(),
        &[cfg.vocab_size, h],
    )?;
    let lm_head = if content.tensor_infos.contains_key("output.weight") {
        src.place = place.for_head();
        let head = src.linear(&[("output.weight".into(), cfg.vocab_size)], h)?;
        src.place = place;
        head
    } else {
        // Tied head. The lookup keeps the file's table (exact, and small when quantized);
        // the head, a matmul on every step, gets the faster format when one is asked for.
        let head = match converted(&embd, place.for_head().format, place.device)? {
            Some(head) => Arc::new(head),
            None => Arc::clone(&embd),
        };
        Linear::new(vec![Weight::Quantized(head)], place.int8)?
    };
    let ffn = cfg.intermediate_size;
    let mut layers = Vec::with_capacity(cfg.n_layers);
    for i in 0..cfg.n_layers {
        let p = |name: &str| format!("blk.{i}.{name}.weight");
        let bias = |name: &str| format!("blk.{i}.{name}.bias");
        let qkv_bias = if cfg.qkv_bias {
            Some([
                src.norm(&bias("attn_q"), q_width)?,
                src.norm(&bias("attn_k"), kv_width)?,
                src.norm(&bias("attn_v"), kv_width)?,
            ])
        } else {
            None
        };
        layers.push(LayerWeights {
            qkv_bias,
            attn_norm: src.norm(&p("attn_norm"), h)?,
            qkv: src.linear(
                &[
                    (p("attn_q"), q_width),
                    (p("attn_k"), kv_width),
                    (p("attn_v"), kv_width),
                ],
                h,
            )?,
            wo: src.linear(&[(p("attn_output"), h)], q_width)?,
            ffn_norm: src.norm(&p("ffn_norm"), h)?,
            gate_up: src.linear(&[(p("ffn_gate"), ffn), (p("ffn_up"), ffn)], h)?,
            w_down: src.linear(&[(p("ffn_down"), h)], ffn)?,
        });
    }
    Ok(Weights {
        embed: QMatMul::from_arc(embd)?,
        layers,
        norm: src.norm("output_norm.weight", h)?,
        lm_head,
    })
}

/// Tensors of a safetensors checkpoint, taken out one by one.
struct SafetensorsSource<'a> {
    tensors: HashMap<String, Tensor>,
    dtype: DType,
    place: Placement<'a>,
}

impl SafetensorsSource<'_> {
    fn dense(&mut self, name: &str, dims: &[usize]) -> Result<Tensor> {
        let t = self
            .tensors
            .remove(name)
            .ok_or_else(|| BackendError::Files(format!("safetensors lack tensor {name}")))?;
        check_dims(name, t.dims(), dims)?;
        Ok(t.to_dtype(self.dtype)?)
    }

    /// Projections of one input, `(name, rows)` each, all `cols` wide; quantized on the CPU
    /// when a format is asked for.
    fn linear(&mut self, parts: &[(String, usize)], cols: usize) -> Result<Linear> {
        let mut weights = Vec::with_capacity(parts.len());
        for (name, rows) in parts {
            let w = self.dense(name, &[*rows, cols])?;
            weights.push(weight_from_dense(w, self.place)?);
        }
        Ok(Linear::new(weights, self.place.int8)?)
    }
}

fn weight_from_dense(w: Tensor, place: Placement<'_>) -> Result<Weight> {
    match place.format {
        Some(t) if place.device.is_cpu() && w.dim(1)? % t.block_size() == 0 => {
            Ok(Weight::Quantized(Arc::new(QTensor::quantize(&w, t)?)))
        }
        _ => Ok(Weight::Dense(w)),
    }
}

/// Every `*.safetensors` file of `dir`, in name order (sharded checkpoints split tensors
/// across files; which file holds what does not matter once all are read).
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| BackendError::Files(format!("{}: {e}", dir.display())))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| BackendError::Files(format!("{}: {e}", dir.display())))?
            .path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(BackendError::Files(format!(
            "no *.safetensors in {}",
            dir.display()
        )));
    }
    Ok(files)
}

/// Loads HF llama weights (`model.embed_tokens`, `model.layers.N.*`, `model.norm`, `lm_head`).
pub(crate) fn from_safetensors(
    dir: &Path,
    cfg: &LlamaConfig,
    tied: bool,
    dtype: DType,
    place: Placement<'_>,
) -> Result<Weights> {
    let mut tensors = HashMap::new();
    for file in safetensors_files(dir)? {
        let loaded = candle_core::safetensors::load(&file, place.device)
            .map_err(|e| BackendError::Files(format!("{}: {e}", file.display())))?;
        tensors.extend(loaded);
    }
    let mut src = SafetensorsSource {
        tensors,
        dtype,
        place,
    };
    let (h, q_width, kv_width, ffn) = (
        cfg.hidden_size,
        cfg.n_heads * cfg.head_dim,
        cfg.n_kv_heads * cfg.head_dim,
        cfg.intermediate_size,
    );
    let embed = src.dense("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
    let lm_head = if tied {
        Linear::new(
            vec![weight_from_dense(embed.clone(), place.for_head())?],
            place.int8,
        )?
    } else {
        src.place = place.for_head();
        let head = src.linear(&[("lm_head.weight".into(), cfg.vocab_size)], h)?;
        src.place = place;
        head
    };
    let mut layers = Vec::with_capacity(cfg.n_layers);
    for i in 0..cfg.n_layers {
        let p = |name: &str| format!("model.layers.{i}.{name}.weight");
        layers.push(LayerWeights {
            attn_norm: src.dense(&p("input_layernorm"), &[h])?,
            qkv: src.linear(
                &[
                    (p("self_attn.q_proj"), q_width),
                    (p("self_attn.k_proj"), kv_width),
                    (p("self_attn.v_proj"), kv_width),
                ],
                h,
            )?,
            qkv_bias: None,
            wo: src.linear(&[(p("self_attn.o_proj"), h)], q_width)?,
            ffn_norm: src.dense(&p("post_attention_layernorm"), &[h])?,
            gate_up: src.linear(&[(p("mlp.gate_proj"), ffn), (p("mlp.up_proj"), ffn)], h)?,
            w_down: src.linear(&[(p("mlp.down_proj"), h)], ffn)?,
        });
    }
    Ok(Weights {
        embed: QMatMul::Tensor(embed),
        layers,
        norm: src.dense("model.norm.weight", &[h])?,
        lm_head,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_4_bit_placement_keeps_the_lm_head_at_q8_0_and_others_keep_theirs() {
        let device = Device::Cpu;
        let place = |format| Placement {
            device: &device,
            format,
            int8: None,
        };
        let head = |format| place(format).for_head().format;
        assert_eq!(head(Some(GgmlDType::Q4_0)), Some(GgmlDType::Q8_0));
        assert_eq!(head(Some(GgmlDType::Q8_0)), Some(GgmlDType::Q8_0));
        assert_eq!(head(Some(GgmlDType::Q4K)), Some(GgmlDType::Q4K));
        assert_eq!(head(None), None);
    }
}
