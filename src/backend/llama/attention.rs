//! Rotary embeddings with per-token positions, and attention of one sequence over its slot.
//!
//! The projections of a step run on all tokens of all sequences at once (`[tokens, width]`
//! matrices); only the parts that depend on a sequence's own history live here and run per
//! sequence: RoPE at each token's own position, and attention over that sequence's keys.

use super::transfer::Transfers;
use candle_core::{DType, Device, Result, Tensor};

/// Precomputed cos/sin tables, `[max_positions, head_dim / 2]`.
#[derive(Debug, Clone)]
pub(crate) struct Rope {
    cos: Tensor,
    sin: Tensor,
    interleaved: bool,
}

impl Rope {
    pub fn new(
        inv_freq: &[f32],
        max_positions: usize,
        interleaved: bool,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let half = inv_freq.len();
        let inv_freq = Tensor::from_slice(inv_freq, (1, half), device)?;
        let positions = Tensor::arange(0u32, max_positions as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((max_positions, 1))?;
        // Same f32 outer product as candle's models, then cast, for bit-comparable tables.
        let angles = positions.matmul(&inv_freq)?;
        Ok(Self {
            cos: angles.cos()?.to_dtype(dtype)?,
            sin: angles.sin()?.to_dtype(dtype)?,
            interleaved,
        })
    }

    /// The whole cos and sin tables as f32, `[max_positions, head_dim / 2]` row-major, with
    /// `head_dim / 2` and whether pairs are interleaved (for the plain-Rust forward, which
    /// rotates slices).
    pub fn tables_f32(&self) -> Result<(Vec<f32>, Vec<f32>, usize, bool)> {
        let flat = |t: &Tensor| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>();
        let half = self.cos.dim(1)?;
        Ok((flat(&self.cos)?, flat(&self.sin)?, half, self.interleaved))
    }

    /// cos/sin rows for each token's position, shaped `[tokens, 1, head_dim / 2]` so that each
    /// token is its own "batch" entry for candle's rope kernels.
    pub fn tables_at(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = positions.dim(0)?;
        let half = self.cos.dim(1)?;
        let cos = self.cos.index_select(positions, 0)?.reshape((n, 1, half))?;
        let sin = self.sin.index_select(positions, 0)?.reshape((n, 1, half))?;
        Ok((cos, sin))
    }

    /// Rotates `x` (`[tokens, heads * head_dim]`) and returns `[tokens, heads, 1, head_dim]`.
    /// Viewing the tokens as the batch axis with a sequence length of 1 lets one kernel call
    /// apply a different position to every row.
    pub fn apply(&self, x: &Tensor, heads: usize, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let n = x.dim(0)?;
        let head_dim = x.dim(1)? / heads;
        let x = x.reshape((n, heads, 1, head_dim))?.contiguous()?;
        if self.interleaved {
            candle_nn::rotary_emb::rope_i(&x, cos, sin)
        } else {
            candle_nn::rotary_emb::rope(&x, cos, sin)
        }
    }
}

/// `[t, heads, 1, head_dim]` (a token range of a rotated projection, or `[t, heads, head_dim]`)
/// to the heads-first `[heads, t, head_dim]` layout, contiguous.
pub(crate) fn heads_first(x: &Tensor, t: usize, heads: usize, head_dim: usize) -> Result<Tensor> {
    if t == 1 {
        // A single token is already laid out heads-first.
        x.reshape((heads, 1, head_dim))
    } else {
        x.reshape((t, heads, head_dim))?
            .transpose(0, 1)?
            .contiguous()
    }
}

/// Additive causal mask for `t` queries at positions `start..start + t` over keys
/// `0..start + t`: query at absolute position p sees keys 0..=p. `None` for one query, which
/// sees every stored key. Built on the host and uploaded through `transfers` to its device.
pub(crate) fn causal_mask(
    start: usize,
    t: usize,
    dtype: DType,
    transfers: &Transfers,
) -> Result<Option<Tensor>> {
    if t <= 1 {
        return Ok(None);
    }
    let len = start + t;
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..len).map(move |j| {
                if j <= start + i {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    transfers.upload(mask, (t, len))?.to_dtype(dtype).map(Some)
}

/// Grouped-query attention of one sequence.
///
/// `q` is `[heads, t, head_dim]`; `keys`/`values` are `[kv_heads, len, head_dim]` views of the
/// slot. Query head h uses KV head h / groups (the order `repeat_kv` would produce), so
/// reshaping q to `[kv_heads, groups * t, head_dim]` lets each KV head be multiplied once by all
/// of its query heads, with no copy of K/V per head. Returns `[t, heads * head_dim]`.
pub(crate) fn attend(
    q: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (heads, t, head_dim) = q.dims3()?;
    let (kv_heads, len, _) = keys.dims3()?;
    let groups = heads / kv_heads;
    let keys_t = keys.t()?;
    let scores = if t == 1 {
        q.reshape((kv_heads, groups, head_dim))?.matmul(&keys_t)?
    } else {
        // Several queries: one matmul per head of a group (t rows each, the shapes a
        // repeat_kv implementation uses), still without copying K. candle's CPU gemm rounds
        // some row counts differently (e.g. 16 vs 48 rows), and with 8-bit activations a
        // last-bit difference grows to ~0.5 logits by the last layer; matching the per-head
        // shapes keeps prefill bit-identical to candle's own llama at batch 1.
        let q = q.reshape((kv_heads, groups, t, head_dim))?;
        let per_head = (0..groups)
            .map(|g| q.narrow(1, g, 1)?.squeeze(1)?.matmul(&keys_t))
            .collect::<Result<Vec<_>>>()?;
        Tensor::stack(&per_head, 1)?.reshape((kv_heads, groups * t, len))?
    };
    let scores = (scores / (head_dim as f64).sqrt())?;
    let scores = match mask {
        Some(mask) => scores
            .reshape((kv_heads, groups, t, len))?
            .broadcast_add(mask)?
            .reshape((kv_heads, groups * t, len))?,
        None => scores,
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    let y = probs.matmul(values)?.reshape((heads, t, head_dim))?;
    if t == 1 {
        y.reshape((1, heads * head_dim))
    } else {
        y.transpose(0, 1)?.reshape((t, heads * head_dim))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::device::test_device;

    /// Plain attention with KV heads repeated per query head, as the stock models compute it.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, start: usize) -> Result<Tensor> {
        let (heads, t, hd) = q.dims3()?;
        let kv_heads = k.dim(0)?;
        let rep = heads / kv_heads;
        let k = Tensor::cat(&vec![k.unsqueeze(1)?; rep], 1)?.reshape((heads, (), hd))?;
        let v = Tensor::cat(&vec![v.unsqueeze(1)?; rep], 1)?.reshape((heads, (), hd))?;
        let mut scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?.to_vec3::<f32>()?;
        for head in scores.iter_mut() {
            for (i, row) in head.iter_mut().enumerate() {
                row.iter_mut()
                    .skip(start + i + 1)
                    .for_each(|s| *s = f32::NEG_INFINITY);
            }
        }
        let scores = Tensor::new(scores, q.device())?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        probs.matmul(&v)?.transpose(0, 1)?.reshape((t, heads * hd))
    }

    #[test]
    fn grouped_attention_with_offset_mask_matches_repeated_kv() -> Result<()> {
        let dev = test_device();
        let (heads, kv_heads, hd, start, t) = (6, 2, 8, 5, 3);
        let q = Tensor::randn(0f32, 1., (heads, t, hd), &dev)?;
        // Slot-like buffers with spare capacity, read through narrow views.
        let k_buf = Tensor::randn(0f32, 1., (kv_heads, 16, hd), &dev)?;
        let v_buf = Tensor::randn(0f32, 1., (kv_heads, 16, hd), &dev)?;
        let len = start + t;
        let (k, v) = (k_buf.narrow(1, 0, len)?, v_buf.narrow(1, 0, len)?);
        let mask = causal_mask(start, t, DType::F32, &Transfers::new(&dev))?;
        let got = attend(&q, &k, &v, mask.as_ref())?;
        let want = reference(&q, &k.contiguous()?, &v.contiguous()?, start)?;
        let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "max diff {diff}");
        Ok(())
    }

    #[test]
    fn per_token_rope_matches_sequence_rope() -> Result<()> {
        let dev = test_device();
        let inv_freq: Vec<f32> = (0..4).map(|i| 1.0 / 100f32.powf(i as f32 / 4.0)).collect();
        for interleaved in [true, false] {
            let rope = Rope::new(&inv_freq, 32, interleaved, DType::F32, &dev)?;
            let x = Tensor::randn(0f32, 1., (5, 2 * 8), &dev)?;
            let positions = Tensor::new(&[7u32, 8, 9, 10, 11], &dev)?;
            let (cos, sin) = rope.tables_at(&positions)?;
            let got = rope
                .apply(&x, 2, &cos, &sin)?
                .reshape((5, 2, 8))?
                .transpose(0, 1)?;
            // Reference: the whole run as one sequence [1, heads, t, d] at offset 7.
            let seq = x
                .reshape((5, 2, 8))?
                .transpose(0, 1)?
                .unsqueeze(0)?
                .contiguous()?;
            let (c, s) = (rope.cos.narrow(0, 7, 5)?, rope.sin.narrow(0, 7, 5)?);
            let want = if interleaved {
                candle_nn::rotary_emb::rope_i_slow(&seq, &c, &s)?
            } else {
                candle_nn::rotary_emb::rope_slow(&seq, &c, &s)?
            };
            let diff = (got - want.squeeze(0)?)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert!(diff < 1e-5, "interleaved={interleaved}: max diff {diff}");
        }
        Ok(())
    }
}
