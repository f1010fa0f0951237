//! Weight loading from GGUF files and Hugging Face safetensors directories.
//!
//! Every projection is a `QMatMul`, whichever format it came from: a quantized tensor, or a
//! dense one (`QMatMul::Tensor`). The forward pass then has one code path for both.

use super::config::LlamaConfig;
use crate::backend::{BackendError, Result};
use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use std::collections::HashMap;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One transformer block.
#[derive(Debug)]
pub(crate) struct LayerWeights {
    pub attn_norm: Tensor,
    pub wq: QMatMul,
    pub wk: QMatMul,
    pub wv: QMatMul,
    pub wo: QMatMul,
    pub ffn_norm: Tensor,
    pub w_gate: QMatMul,
    pub w_up: QMatMul,
    pub w_down: QMatMul,
}

impl LayerWeights {
    /// SwiGLU feed-forward on `[tokens, hidden]`.
    pub fn mlp(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let gate = candle_nn::ops::silu(&self.w_gate.forward(x)?)?;
        let up = self.w_up.forward(x)?;
        self.w_down.forward(&(gate * up)?)
    }
}

#[derive(Debug)]
pub(crate) struct Weights {
    /// Token embeddings, looked up row by row (`QMatMul::embedding` dequantizes only the
    /// rows it needs, so a quantized table is never expanded to f32 in full).
    pub embed: QMatMul,
    pub layers: Vec<LayerWeights>,
    pub norm: Tensor,
    pub lm_head: QMatMul,
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
    device: &'a Device,
    target: Option<GgmlDType>,
}

impl<R: Read + Seek> GgufSource<'_, R> {
    fn qtensor(&mut self, name: &str) -> Result<QTensor> {
        self.content
            .tensor(self.reader, name, self.device)
            .map_err(|e| BackendError::Files(format!("GGUF tensor {name}: {e}")))
    }

    fn matmul(&mut self, name: &str, rows: usize, cols: usize) -> Result<QMatMul> {
        let qt = self.qtensor(name)?;
        check_dims(name, qt.shape().dims(), &[rows, cols])?;
        let qt = converted(&qt, self.target, self.device)?.unwrap_or(qt);
        Ok(QMatMul::from_qtensor(qt)?)
    }

    fn norm(&mut self, name: &str, size: usize) -> Result<Tensor> {
        let t = self.qtensor(name)?.dequantize(self.device)?;
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
    device: &Device,
    target: Option<GgmlDType>,
) -> Result<Weights> {
    let mut src = GgufSource {
        content,
        reader,
        device,
        target,
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
        src.matmul("output.weight", cfg.vocab_size, h)?
    } else {
        // Tied head. The lookup keeps the file's table (exact, and small when quantized);
        // the head, a matmul on every step, gets the faster format when one is asked for.
        match converted(&embd, target, device)? {
            Some(head) => QMatMul::from_qtensor(head)?,
            None => QMatMul::from_arc(Arc::clone(&embd))?,
        }
    };
    let mut layers = Vec::with_capacity(cfg.n_layers);
    for i in 0..cfg.n_layers {
        let p = format!("blk.{i}");
        layers.push(LayerWeights {
            attn_norm: src.norm(&format!("{p}.attn_norm.weight"), h)?,
            wq: src.matmul(&format!("{p}.attn_q.weight"), q_width, h)?,
            wk: src.matmul(&format!("{p}.attn_k.weight"), kv_width, h)?,
            wv: src.matmul(&format!("{p}.attn_v.weight"), kv_width, h)?,
            wo: src.matmul(&format!("{p}.attn_output.weight"), h, q_width)?,
            ffn_norm: src.norm(&format!("{p}.ffn_norm.weight"), h)?,
            w_gate: src.matmul(&format!("{p}.ffn_gate.weight"), cfg.intermediate_size, h)?,
            w_up: src.matmul(&format!("{p}.ffn_up.weight"), cfg.intermediate_size, h)?,
            w_down: src.matmul(&format!("{p}.ffn_down.weight"), h, cfg.intermediate_size)?,
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
    device: &'a Device,
    target: Option<GgmlDType>,
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

    /// A projection weight `[rows, cols]`; quantized on the CPU when a format is asked for.
    fn matmul(&mut self, name: &str, rows: usize, cols: usize) -> Result<QMatMul> {
        let w = self.dense(name, &[rows, cols])?;
        linear_from_dense(w, self.target, self.device)
    }
}

fn linear_from_dense(w: Tensor, target: Option<GgmlDType>, device: &Device) -> Result<QMatMul> {
    match target {
        Some(t) if device.is_cpu() && w.dim(1)? % t.block_size() == 0 => {
            Ok(QMatMul::from_qtensor(QTensor::quantize(&w, t)?)?)
        }
        _ => Ok(QMatMul::Tensor(w)),
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
    device: &Device,
    target: Option<GgmlDType>,
) -> Result<Weights> {
    let mut tensors = HashMap::new();
    for file in safetensors_files(dir)? {
        let loaded = candle_core::safetensors::load(&file, device)
            .map_err(|e| BackendError::Files(format!("{}: {e}", file.display())))?;
        tensors.extend(loaded);
    }
    let mut src = SafetensorsSource {
        tensors,
        dtype,
        device,
        target,
    };
    let (h, q_width, kv_width, ffn) = (
        cfg.hidden_size,
        cfg.n_heads * cfg.head_dim,
        cfg.n_kv_heads * cfg.head_dim,
        cfg.intermediate_size,
    );
    let embed = src.dense("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
    let lm_head = if tied {
        linear_from_dense(embed.clone(), target, device)?
    } else {
        src.matmul("lm_head.weight", cfg.vocab_size, h)?
    };
    let mut layers = Vec::with_capacity(cfg.n_layers);
    for i in 0..cfg.n_layers {
        let p = format!("model.layers.{i}");
        layers.push(LayerWeights {
            attn_norm: src.dense(&format!("{p}.input_layernorm.weight"), &[h])?,
            wq: src.matmul(&format!("{p}.self_attn.q_proj.weight"), q_width, h)?,
            wk: src.matmul(&format!("{p}.self_attn.k_proj.weight"), kv_width, h)?,
            wv: src.matmul(&format!("{p}.self_attn.v_proj.weight"), kv_width, h)?,
            wo: src.matmul(&format!("{p}.self_attn.o_proj.weight"), h, q_width)?,
            ffn_norm: src.dense(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
            w_gate: src.matmul(&format!("{p}.mlp.gate_proj.weight"), ffn, h)?,
            w_up: src.matmul(&format!("{p}.mlp.up_proj.weight"), ffn, h)?,
            w_down: src.matmul(&format!("{p}.mlp.down_proj.weight"), h, ffn)?,
        });
    }
    Ok(Weights {
        embed: QMatMul::Tensor(embed),
        layers,
        norm: src.dense("model.norm.weight", &[h])?,
        lm_head,
    })
}
