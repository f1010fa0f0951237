//! Llama-family decoders (llama, qwen2: see `family`) with per-sequence KV slots.
//!
//! candle-transformers' llama models keep one KV cache for the whole batch and one position
//! offset for all rows, so their rows must move in lockstep. Continuous batching needs the
//! opposite: sequences at different positions, joining and leaving between steps. Here each
//! sequence lives in a numbered slot (its own K/V per layer and its own length, see `kv`);
//! one step flattens the new tokens of all scheduled sequences into `[tokens, hidden]`
//! matrices so that every projection is one matmul for the whole batch, and only RoPE
//! positions and attention are per sequence (see `attention`).
//!
//! Weights come from GGUF (llama.cpp layout, interleaved RoPE) or from a Hugging Face
//! safetensors directory (non-interleaved RoPE); see `weights` and `config`.
//!
//! Two forwards implement that step: `forward`, on candle ops, for every device and weight
//! format; and `cpu`, in plain Rust on slices, chosen at load when the model is on the CPU
//! in f32 with every projection on our int8 kernel (there candle's per-op overhead rivals
//! the matmuls). Each owns its KV slots; `slot_len`, `run` and `release` dispatch.

mod attention;
mod config;
mod cpu;
mod family;
mod forward;
mod kv;
mod linear;
mod prefix;
mod transfer;
mod weights;

#[cfg(test)]
mod tests_family;
#[cfg(test)]
mod tests_gguf;
#[cfg(test)]
mod tests_int8;
#[cfg(test)]
mod tests_prefix;
#[cfg(test)]
mod tests_qwen2;
#[cfg(test)]
mod tests_safetensors;

use super::kernels::Isa;
use super::prefix_cache::{BlockKey, PrefixCache};
use super::{BackendError, Generator, GeneratorSpec, PrefixStats, Result};
use attention::Rope;
use candle_core::quantized::{gguf_file, GgmlDType};
use candle_core::{DType, Device};
use config::LlamaConfig;
use cpu::CpuForward;
use forward::Segment;
use kv::{KvLayout, SlotKv};
use std::path::Path;
use weights::{Placement, Weights};

/// Longest piece of a prompt that one forward pass processes. Attention scores of a chunk
/// take `heads × chunk × context` floats (9 × 512 × 8192 × 4 B ≈ 150 MB for SmolLM2 at full
/// context), so longer prompts are split instead of allocating that quadratically.
const PREFILL_CHUNK: usize = 512;

/// How a model is loaded and how much sequence state it may hold.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaOptions {
    /// Sequences that can be live at once (KV slots).
    pub max_slots: usize,
    /// Longest sequence (prompt + output) per slot; capped by the model's context length.
    pub max_seq_len: usize,
    /// On CPU, re-encode quantized weights to this format at load (e.g. Q4_1 -> Q8_0, which
    /// has SIMD kernels in candle). `None` keeps the file's formats. Ignored on GPUs.
    pub cpu_weight_format: Option<GgmlDType>,
}

/// A loaded llama-family model and its KV slots. Owned by one worker thread.
pub struct LlamaModel {
    spec: GeneratorSpec,
    cfg: LlamaConfig,
    weights: Weights,
    rope: Rope,
    kv_layout: KvLayout,
    /// KV of the candle-op forward; empty when `cpu` runs the model (it has its own slots).
    slots: Vec<SlotKv>,
    /// The plain-Rust forward, when the model is on the CPU in f32 with every projection on
    /// the int8 kernel; `None` runs the candle-op forward (`forward`).
    cpu: Option<CpuForward>,
    device: Device,
    dtype: DType,
    /// Every per-step host <-> device copy of the candle-op forward goes through it.
    transfers: transfer::Transfers,
    /// KV blocks of ended sequences (see `prefix`); disabled until `with_prefix_cache`.
    prefix: PrefixCache<Box<[f32]>>,
    /// Per slot, the cached blocks its sequence reused (pinned until it is released).
    pinned: Vec<Vec<BlockKey>>,
}

/// The int8 kernel for Q8_0 and Q4_0 projections on `device`: the fastest SIMD one this CPU
/// has, or none (candle's own matmul) on GPUs and on CPUs without VNNI.
fn int8_kernel(device: &Device) -> Option<Isa> {
    device.is_cpu().then(Isa::best_simd).flatten()
}

/// Loads a GGUF file of any family in `family::FAMILIES` (metadata keys `<arch>.*`).
pub fn load_gguf(path: &Path, device: &Device, opts: &LlamaOptions) -> Result<LlamaModel> {
    load_gguf_with_kernel(path, device, opts, int8_kernel(device))
}

/// [`load_gguf`] with the int8 kernel chosen by the caller (tests force each one).
fn load_gguf_with_kernel(
    path: &Path,
    device: &Device,
    opts: &LlamaOptions,
    int8: Option<Isa>,
) -> Result<LlamaModel> {
    let io_err = |e: std::io::Error| BackendError::Files(format!("{}: {e}", path.display()));
    let mut file = std::fs::File::open(path).map_err(io_err)?;
    let content = gguf_file::Content::read(&mut file)
        .map_err(|e| BackendError::Files(format!("{}: {e}", path.display())))?;
    let cfg = LlamaConfig::from_gguf(&content, &mut file)?;
    let place = Placement {
        device,
        format: opts.cpu_weight_format,
        int8,
    };
    let weights = weights::from_gguf(&content, &mut file, &cfg, place)?;
    LlamaModel::new(cfg, weights, DType::F32, device, opts)
}

/// Loads a Hugging Face llama checkpoint: `config.json` plus `*.safetensors` in `dir`.
/// Activations, KV and dense weights use `dtype`.
pub fn load_safetensors(
    dir: &Path,
    device: &Device,
    dtype: DType,
    opts: &LlamaOptions,
) -> Result<LlamaModel> {
    if device.is_cpu() && dtype == DType::BF16 {
        // candle's CPU gemm has no bf16 kernel; attention would fail on the first step.
        return Err(BackendError::Device(
            "bf16 is not supported on CPU; use f32 or f16".into(),
        ));
    }
    let config_path = dir.join("config.json");
    let json = std::fs::read_to_string(&config_path)
        .map_err(|e| BackendError::Files(format!("{}: {e}", config_path.display())))?;
    let (cfg, tied) = LlamaConfig::from_hf_json(&json)?;
    let place = Placement {
        device,
        format: opts.cpu_weight_format,
        int8: int8_kernel(device),
    };
    let weights = weights::from_safetensors(dir, &cfg, tied, dtype, place)?;
    LlamaModel::new(cfg, weights, dtype, device, opts)
}

impl LlamaModel {
    fn new(
        cfg: LlamaConfig,
        weights: Weights,
        dtype: DType,
        device: &Device,
        opts: &LlamaOptions,
    ) -> Result<Self> {
        if opts.max_slots == 0 || opts.max_seq_len == 0 {
            return Err(BackendError::Files(
                "max_slots and max_seq_len must be positive".into(),
            ));
        }
        let max_seq_len = opts.max_seq_len.min(cfg.context_length);
        let rope = Rope::new(
            &cfg.rope_inv_freq,
            max_seq_len,
            cfg.rope_interleaved,
            dtype,
            device,
        )?;
        let kv_layout = KvLayout {
            n_layers: cfg.n_layers,
            n_kv_heads: cfg.n_kv_heads,
            head_dim: cfg.head_dim,
            max_seq_len,
            dtype,
            device: device.clone(),
        };
        let cpu = CpuForward::new(
            &cfg,
            &weights,
            &rope,
            (device, dtype),
            (opts.max_slots, max_seq_len),
        )?;
        let candle_slots = if cpu.is_some() { 0 } else { opts.max_slots };
        Ok(Self {
            spec: GeneratorSpec {
                vocab_size: cfg.vocab_size,
                max_seq_len,
                max_slots: opts.max_slots,
            },
            cfg,
            weights,
            rope,
            kv_layout,
            slots: (0..candle_slots).map(|_| SlotKv::default()).collect(),
            cpu,
            device: device.clone(),
            dtype,
            transfers: transfer::Transfers::new(device),
            prefix: PrefixCache::new(0),
            pinned: vec![Vec::new(); opts.max_slots],
        })
    }

    /// Checks that `slot` exists, has room for `tokens`, and that they are in the
    /// vocabulary (an out-of-range id would fail deep inside the embedding lookup).
    fn check_append(&self, slot: usize, tokens: &[u32]) -> Result<()> {
        let slot_err = |reason: String| Err(BackendError::Slot { slot, reason });
        let Some(len) = self.slot_len(slot) else {
            return slot_err(format!("no such slot (have {})", self.spec.max_slots));
        };
        if tokens.is_empty() {
            return slot_err("no tokens to append".into());
        }
        let needed = len + tokens.len();
        if needed > self.spec.max_seq_len {
            return slot_err(format!(
                "{} tokens would exceed max_seq_len {}",
                needed, self.spec.max_seq_len
            ));
        }
        if let Some(bad) = tokens.iter().find(|t| **t as usize >= self.cfg.vocab_size) {
            return slot_err(format!("token id {bad} is outside the vocabulary"));
        }
        Ok(())
    }
}

impl LlamaModel {
    /// Positions stored in `slot`, whichever forward owns the slots; `None` if no such slot.
    fn slot_len(&self, slot: usize) -> Option<usize> {
        match &self.cpu {
            Some(cpu) => cpu.slots().get(slot).map(|kv| kv.len()),
            None => self.slots.get(slot).map(SlotKv::len),
        }
    }

    /// Runs one validated step on the model's forward (see `cpu` and `forward`).
    fn run(
        &mut self,
        segments: &[Segment<'_>],
        want_logits: bool,
    ) -> Result<Option<Vec<Vec<f32>>>> {
        match &mut self.cpu {
            Some(cpu) => Ok(cpu.run(segments, want_logits)?),
            None => self.run_candle(segments, want_logits),
        }
    }

    /// Switches to the candle-op forward even where the plain one applies, with empty slots
    /// (tests and `loadtests/forward_bench` compare the two). Call it before any prefill.
    pub fn with_candle_forward(mut self) -> Self {
        self.cpu = None;
        self.prefix = PrefixCache::new(0);
        self.slots = (0..self.spec.max_slots)
            .map(|_| SlotKv::default())
            .collect();
        self
    }
}

impl Generator for LlamaModel {
    fn spec(&self) -> &GeneratorSpec {
        &self.spec
    }

    fn prefill(&mut self, slot: usize, tokens: &[u32]) -> Result<Vec<f32>> {
        self.check_append(slot, tokens)?;
        let mut logits = None;
        let chunks = tokens.chunks(PREFILL_CHUNK);
        let n_chunks = chunks.len();
        for (i, chunk) in chunks.enumerate() {
            let start = self.slot_len(slot).unwrap_or_default();
            let segment = Segment {
                slot,
                tokens: chunk,
                start,
            };
            logits = self.run(&[segment], i + 1 == n_chunks)?;
        }
        let mut logits = logits.ok_or_else(|| BackendError::Slot {
            slot,
            reason: "prefill produced no logits".into(),
        })?;
        Ok(logits.swap_remove(0))
    }

    fn decode(&mut self, batch: &[(usize, u32)]) -> Result<Vec<Vec<f32>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        for (i, (slot, token)) in batch.iter().enumerate() {
            self.check_append(*slot, std::slice::from_ref(token))?;
            if batch[..i].iter().any(|(s, _)| s == slot) {
                return Err(BackendError::Slot {
                    slot: *slot,
                    reason: "slot appears twice in one decode step".into(),
                });
            }
        }
        let segments: Vec<Segment<'_>> = batch
            .iter()
            .map(|(slot, token)| Segment {
                slot: *slot,
                tokens: std::slice::from_ref(token),
                start: self.slot_len(*slot).unwrap_or_default(),
            })
            .collect();
        self.run(&segments, true)?
            .ok_or_else(|| BackendError::Slot {
                slot: batch[0].0,
                reason: "decode produced no logits".into(),
            })
    }

    fn copy_slot(&mut self, from: usize, to: usize) -> Result<()> {
        let bad = |slot: usize| BackendError::Slot {
            slot,
            reason: format!("no such slot (have {})", self.spec.max_slots),
        };
        for slot in [from, to] {
            self.slot_len(slot).ok_or_else(|| bad(slot))?;
        }
        if from == to {
            return Ok(());
        }
        match &mut self.cpu {
            Some(cpu) => cpu.copy_slot(from, to),
            None => {
                let copy = self.slots[from].deep_copy()?;
                self.slots[to] = copy;
            }
        }
        Ok(())
    }

    fn reuse_prefix(&mut self, slot: usize, scope: &str, tokens: &[u32]) -> Result<usize> {
        self.reuse_cached(slot, scope, tokens)
    }

    fn keep_prefix(&mut self, slot: usize, scope: &str, tokens: &[u32]) {
        self.keep_cached(slot, scope, tokens);
    }

    fn prefix_stats(&self) -> PrefixStats {
        self.cache_stats()
    }

    fn release(&mut self, slot: usize) {
        self.unpin_slot(slot);
        let released = match &mut self.cpu {
            Some(cpu) => cpu.release(slot),
            None => self.slots.get_mut(slot).map(SlotKv::reset).is_some(),
        };
        if !released {
            tracing::warn!(slot, "release of a slot that does not exist");
        }
    }
}
