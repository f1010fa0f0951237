//! The forward pass in plain Rust on f32 slices, for CPU models whose projections all run on
//! our int8 kernel.
//!
//! Why: SmolLM2-135M does ~25 small candle ops per layer, each allocating a tensor and some
//! waking candle's thread pool; at batch 1 that overhead rivals the matmuls. Here a step
//! runs on buffers kept across steps (grown when a step has more rows), calls the int8
//! kernel directly, keeps KV in plain `Vec<f32>` slots (`kv`), and does RoPE, attention
//! (`attention`) and the element-wise ops (`ops`) in loops. Only the embedding lookup stays
//! a candle op: one per step, and it dequantizes just the step's rows of a quantized table.
//!
//! Every row is computed from its own inputs in a fixed order (the int8 kernel is row
//! independent too), so a sequence gets the same bits alone, batched, or prefilled in chunks.
//!
//! The candle-op forward (`forward`) remains for everything else: CUDA, dense or non-Q8_0
//! weights, CPUs without VNNI (where no projection is `Linear::Int8`).

mod attention;
mod kv;
mod ops;

use super::attention::Rope;
use super::config::LlamaConfig;
use super::forward::Segment;
use super::linear::{Linear, Packed};
use super::weights::Weights;
use attention::{AttnInputs, Heads, SegRows};
use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Result, Tensor};
pub(crate) use kv::CpuSlotKv;
use kv::KvDims;
use ops::RopeTables;
use std::sync::Arc;

/// Widths of the model, in floats.
#[derive(Debug, Clone, Copy)]
struct Dims {
    hidden: usize,
    q_width: usize,
    kv_width: usize,
    ffn: usize,
    vocab: usize,
    eps: f32,
}

impl Dims {
    fn qkv_width(&self) -> usize {
        self.q_width + 2 * self.kv_width
    }
}

/// One layer's weights in the form this forward uses.
#[derive(Debug)]
struct Layer {
    attn_norm: Vec<f32>,
    /// q | k | v stacked: one output row is `[q_width | kv_width | kv_width]`.
    qkv: Arc<Packed>,
    /// Biases of q | k | v in the same layout, for families that have them.
    qkv_bias: Option<Vec<f32>>,
    wo: Arc<Packed>,
    ffn_norm: Vec<f32>,
    /// gate | up stacked: one output row is `[ffn | ffn]`.
    gate_up: Arc<Packed>,
    down: Arc<Packed>,
}

/// Activations of a step, `[rows, width]` each; grown, never shrunk.
#[derive(Debug, Default)]
struct Buffers {
    x: Vec<f32>,
    normed: Vec<f32>,
    qkv: Vec<f32>,
    attn: Vec<f32>,
    proj: Vec<f32>,
    gate_up: Vec<f32>,
    act: Vec<f32>,
}

impl Buffers {
    fn grow(&mut self, rows: usize, d: &Dims) {
        let fit = |b: &mut Vec<f32>, width: usize| {
            if b.len() < rows * width {
                b.resize(rows * width, 0.0);
            }
        };
        fit(&mut self.x, d.hidden);
        fit(&mut self.normed, d.hidden);
        fit(&mut self.qkv, d.qkv_width());
        fit(&mut self.attn, d.q_width);
        fit(&mut self.proj, d.hidden);
        fit(&mut self.gate_up, 2 * d.ffn);
        fit(&mut self.act, d.ffn);
    }
}

/// The plain-Rust forward of one model, with its own KV slots and buffers.
#[derive(Debug)]
pub(crate) struct CpuForward {
    dims: Dims,
    heads: Heads,
    kv_dims: KvDims,
    rope: RopeTables,
    embed: QMatMul,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    lm_head: Arc<Packed>,
    slots: Vec<CpuSlotKv>,
    bufs: Buffers,
}

/// The int8 weights of `linear` if it runs on the kernel with parts of exactly `widths`.
fn int8_with(linear: &Linear, widths: &[usize]) -> Option<Arc<Packed>> {
    let (packed, parts) = linear.int8_parts()?;
    (parts == widths).then(|| Arc::clone(packed))
}

fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
}

/// The cos/sin tables of `rope` for slices.
fn rope_tables(rope: &Rope) -> Result<RopeTables> {
    let (cos, sin, half, interleaved) = rope.tables_f32()?;
    Ok(RopeTables {
        half,
        cos,
        sin,
        interleaved,
    })
}

impl CpuForward {
    /// The plain forward for this model, or `None` when it does not apply: not a CPU, not
    /// f32 activations, or some projection not on the int8 kernel.
    pub fn new(
        cfg: &LlamaConfig,
        weights: &Weights,
        rope: &Rope,
        (device, dtype): (&Device, DType),
        (max_slots, max_seq_len): (usize, usize),
    ) -> Result<Option<Self>> {
        if !device.is_cpu() || dtype != DType::F32 {
            return Ok(None);
        }
        let dims = Dims {
            hidden: cfg.hidden_size,
            q_width: cfg.n_heads * cfg.head_dim,
            kv_width: cfg.n_kv_heads * cfg.head_dim,
            ffn: cfg.intermediate_size,
            vocab: cfg.vocab_size,
            eps: cfg.rms_norm_eps as f32,
        };
        let mut layers = Vec::with_capacity(weights.layers.len());
        for l in &weights.layers {
            let qkv = int8_with(&l.qkv, &[dims.q_width, dims.kv_width, dims.kv_width]);
            let wo = int8_with(&l.wo, &[dims.hidden]);
            let gate_up = int8_with(&l.gate_up, &[dims.ffn, dims.ffn]);
            let down = int8_with(&l.w_down, &[dims.hidden]);
            let (Some(qkv), Some(wo), Some(gate_up), Some(down)) = (qkv, wo, gate_up, down) else {
                return Ok(None);
            };
            let qkv_bias = match &l.qkv_bias {
                Some(parts) => Some(Tensor::cat(parts, 0).and_then(|b| to_vec(&b))?),
                None => None,
            };
            layers.push(Layer {
                attn_norm: to_vec(&l.attn_norm)?,
                qkv,
                qkv_bias,
                wo,
                ffn_norm: to_vec(&l.ffn_norm)?,
                gate_up,
                down,
            });
        }
        let Some(lm_head) = int8_with(&weights.lm_head, &[dims.vocab]) else {
            return Ok(None);
        };
        Ok(Some(Self {
            dims,
            heads: Heads {
                heads: cfg.n_heads,
                kv_heads: cfg.n_kv_heads,
                head_dim: cfg.head_dim,
            },
            kv_dims: KvDims {
                n_layers: cfg.n_layers,
                n_kv_heads: cfg.n_kv_heads,
                head_dim: cfg.head_dim,
                max_seq_len,
            },
            rope: rope_tables(rope)?,
            embed: weights.embed.clone(),
            layers,
            norm: to_vec(&weights.norm)?,
            lm_head,
            slots: (0..max_slots).map(|_| CpuSlotKv::default()).collect(),
            bufs: Buffers::default(),
        }))
    }

    pub fn slots(&self) -> &[CpuSlotKv] {
        &self.slots
    }

    /// `to` becomes a copy of `from` (both exist; the caller checks).
    pub fn copy_slot(&mut self, from: usize, to: usize) {
        self.slots[to] = self.slots[from].clone();
    }

    /// Bytes of one prefix-cache block of this model's KV.
    pub fn block_bytes(&self) -> usize {
        CpuSlotKv::block_floats(&self.kv_dims) * std::mem::size_of::<f32>()
    }

    /// A copy of stored block `block` of `slot` (both exist; the caller checks).
    pub fn export_block(&self, slot: usize, block: usize) -> Box<[f32]> {
        self.slots[slot].export_block(block, &self.kv_dims).into()
    }

    /// Appends a block made by `export_block` to `slot`.
    pub fn push_block(&mut self, slot: usize, data: &[f32]) {
        self.slots[slot].push_block(data, &self.kv_dims);
    }

    pub fn release(&mut self, slot: usize) -> bool {
        self.slots.get_mut(slot).map(CpuSlotKv::reset).is_some()
    }

    /// Runs one step (segments validated by the caller, as for the candle forward) and
    /// returns each segment's last-token logits when `want_logits`. Lengths move only after
    /// every layer wrote its K/V, so a failed step leaves every slot as it was.
    pub fn run(
        &mut self,
        segments: &[Segment<'_>],
        want_logits: bool,
    ) -> Result<Option<Vec<Vec<f32>>>> {
        for seg in segments {
            self.slots[seg.slot].reserve(seg.start + seg.tokens.len(), &self.kv_dims);
        }
        let mut rows = Vec::with_capacity(segments.len());
        let mut offset = 0;
        for seg in segments {
            rows.push(SegRows {
                offset,
                start: seg.start,
                rows: seg.tokens.len(),
            });
            offset += seg.tokens.len();
        }
        self.bufs.grow(offset, &self.dims);
        self.embed_rows(segments, offset)?;
        let (items, cost) = attention::plan(&rows, self.heads.kv_heads);
        for layer in 0..self.layers.len() {
            self.attention_block(layer, segments, &rows, (&items, cost));
            self.mlp_block(layer, offset);
        }
        let logits = want_logits.then(|| self.logits(&rows));
        for seg in segments {
            self.slots[seg.slot].commit(seg.tokens.len());
        }
        Ok(logits)
    }

    /// Embedding rows of the step's tokens into `bufs.x`.
    fn embed_rows(&mut self, segments: &[Segment<'_>], n: usize) -> Result<()> {
        let ids: Vec<u32> = segments.iter().flat_map(|s| s.tokens).copied().collect();
        let ids = Tensor::from_vec(ids, n, &Device::Cpu)?;
        let rows = to_vec(&self.embed.embedding(&ids)?)?;
        self.bufs.x[..rows.len()].copy_from_slice(&rows);
        Ok(())
    }

    /// `x += wo · attention(rope(qkv(norm(x))))` for one layer, writing the step's K/V.
    fn attention_block(
        &mut self,
        index: usize,
        segments: &[Segment<'_>],
        rows: &[SegRows],
        (items, cost): (&[attention::Item], usize),
    ) {
        let d = self.dims;
        let n: usize = rows.iter().map(|r| r.rows).sum();
        let (layer, b) = (&self.layers[index], &mut self.bufs);
        let (x, normed) = (&mut b.x[..n * d.hidden], &mut b.normed[..n * d.hidden]);
        ops::rms_norm(x, &layer.attn_norm, d.eps, normed);
        let qkv = &mut b.qkv[..n * d.qkv_width()];
        layer.qkv.matmul(normed, n, qkv);
        for (seg, r) in segments.iter().zip(rows) {
            let seg_rows = qkv[r.offset * d.qkv_width()..].chunks_exact_mut(d.qkv_width());
            for (i, row) in seg_rows.take(r.rows).enumerate() {
                if let Some(bias) = &layer.qkv_bias {
                    ops::add_assign(row, bias);
                }
                let (q, kv) = row.split_at_mut(d.q_width);
                let (k, v) = kv.split_at_mut(d.kv_width);
                self.rope.rotate(q, r.start + i);
                self.rope.rotate(k, r.start + i);
                self.slots[seg.slot].write(index, r.start + i, k, v);
            }
        }
        let kv: Vec<(&[f32], &[f32])> = segments
            .iter()
            .zip(rows)
            .flat_map(|(seg, r)| {
                let slot = &self.slots[seg.slot];
                (0..self.heads.kv_heads).map(move |h| slot.head(index, h, r.start + r.rows))
            })
            .collect();
        let inputs = AttnInputs {
            heads: self.heads,
            segments: rows,
            q: qkv,
            q_stride: d.qkv_width(),
            kv: &kv,
        };
        let attn = &mut b.attn[..n * d.q_width];
        attention::attend(&inputs, items, cost, attn);
        let proj = &mut b.proj[..n * d.hidden];
        layer.wo.matmul(attn, n, proj);
        ops::add_assign(x, proj);
    }

    /// `x += down(silu(gate(norm(x))) * up(norm(x)))` for one layer.
    fn mlp_block(&mut self, index: usize, n: usize) {
        let d = self.dims;
        let (layer, b) = (&self.layers[index], &mut self.bufs);
        let (x, normed) = (&mut b.x[..n * d.hidden], &mut b.normed[..n * d.hidden]);
        ops::rms_norm(x, &layer.ffn_norm, d.eps, normed);
        let gate_up = &mut b.gate_up[..n * 2 * d.ffn];
        layer.gate_up.matmul(normed, n, gate_up);
        let act = &mut b.act[..n * d.ffn];
        ops::silu_mul(gate_up, d.ffn, act);
        let proj = &mut b.proj[..n * d.hidden];
        layer.down.matmul(act, n, proj);
        ops::add_assign(x, proj);
    }

    /// Final norm and LM head on each segment's last row only.
    fn logits(&mut self, rows: &[SegRows]) -> Vec<Vec<f32>> {
        let (h, b) = (self.dims.hidden, &mut self.bufs);
        let mut last = vec![0f32; rows.len() * h];
        for (r, dst) in rows.iter().zip(last.chunks_exact_mut(h)) {
            let row = r.offset + r.rows - 1;
            ops::rms_norm(&b.x[row * h..][..h], &self.norm, self.dims.eps, dst);
        }
        let mut logits = vec![0f32; rows.len() * self.dims.vocab];
        self.lm_head.matmul(&last, rows.len(), &mut logits);
        logits
            .chunks_exact(self.dims.vocab)
            .map(<[f32]>::to_vec)
            .collect()
    }
}
