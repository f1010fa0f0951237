//! Per-sequence KV storage ("slots").
//!
//! Each slot owns, for every layer, one key and one value buffer of shape
//! `[kv_heads, capacity, head_dim]` plus the number of positions filled so far. New keys are
//! written in place with `slice_set`; attention reads `narrow(1, 0, len)` views, which the
//! CPU and CUDA matmuls accept without a copy (only the head stride differs from a contiguous
//! tensor). Heads-first means a head's rows are contiguous, so queries of all heads in a KV
//! group hit one `[len, head_dim]` block.
//!
//! Why grow by doubling instead of preallocating `max_seq_len`: one full-length slot of
//! SmolLM2-135M at 8192 positions is 30 layers × 2 × 3 heads × 64 × 4 bytes × 8192 ≈ 377 MB, and
//! most sequences are a few hundred tokens. Why not `Tensor::cat` per step (what candle's
//! stock models do): that copies the whole cache every token, quadratic in sequence length.
//! Doubling copies each position O(1) times amortised and wastes at most half the buffer.

use candle_core::{DType, Device, Result, Tensor};

/// Smallest allocation and rounding unit, in positions. Small enough that an idle short
/// sequence costs little (64 × 46 KB ≈ 3 MB for SmolLM2), large enough that short decodes
/// do not reallocate every few tokens.
const KV_BLOCK: usize = 64;

/// Buffers above this many positions are freed on release rather than kept for the next
/// sequence, so one long request does not pin its peak memory in an idle slot forever.
const RETAIN_POSITIONS: usize = 1024;

/// Capacity after growing from `capacity` to hold `needed` positions: at least double, in
/// whole `KV_BLOCK`s, capped at `max_seq_len`. Shared with the plain-Rust CPU store
/// (`cpu::kv`) so both grow and waste memory alike.
pub(crate) fn grown_capacity(capacity: usize, needed: usize, max_seq_len: usize) -> usize {
    let grown = needed.max(capacity * 2).max(KV_BLOCK);
    let new_cap = grown.div_ceil(KV_BLOCK) * KV_BLOCK;
    new_cap.min(max_seq_len).max(needed)
}

/// Whether a buffer of `capacity` positions is kept for the next sequence on release.
pub(crate) fn retained_on_reset(capacity: usize) -> bool {
    capacity <= RETAIN_POSITIONS
}

/// Dimensions shared by every slot of a model.
#[derive(Debug, Clone)]
pub(crate) struct KvLayout {
    pub n_layers: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub max_seq_len: usize,
    pub dtype: DType,
    pub device: Device,
}

/// One sequence's keys and values for every layer.
#[derive(Debug, Default)]
pub(crate) struct SlotKv {
    len: usize,
    capacity: usize,
    /// `(keys, values)` per layer; empty until the first reserve.
    layers: Vec<(Tensor, Tensor)>,
}

impl SlotKv {
    /// Positions already stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Makes room for `needed` positions (callers check `needed <= max_seq_len`).
    pub fn reserve(&mut self, needed: usize, layout: &KvLayout) -> Result<()> {
        if needed <= self.capacity {
            return Ok(());
        }
        let new_cap = grown_capacity(self.capacity, needed, layout.max_seq_len);
        let shape = (layout.n_kv_heads, new_cap, layout.head_dim);
        let mut layers = Vec::with_capacity(layout.n_layers);
        for layer in 0..layout.n_layers {
            let grow = |old: Option<&Tensor>| -> Result<Tensor> {
                match old {
                    // One copy of the old buffer into the front of the new one.
                    Some(old) if self.len > 0 => {
                        let extra = (layout.n_kv_heads, new_cap - self.capacity, layout.head_dim);
                        let pad = Tensor::zeros(extra, layout.dtype, &layout.device)?;
                        Tensor::cat(&[old, &pad], 1)
                    }
                    _ => Tensor::zeros(shape, layout.dtype, &layout.device),
                }
            };
            let old = self.layers.get(layer);
            layers.push((grow(old.map(|kv| &kv.0))?, grow(old.map(|kv| &kv.1))?));
        }
        self.layers = layers;
        self.capacity = new_cap;
        Ok(())
    }

    /// Writes `keys`/`values` (`[kv_heads, t, head_dim]`, contiguous) at positions
    /// `start..start + t` of `layer`. Positions past `len` are scratch until `commit`.
    pub fn write(&self, layer: usize, start: usize, keys: &Tensor, values: &Tensor) -> Result<()> {
        let Some((k, v)) = self.layers.get(layer) else {
            candle_core::bail!("KV layer {layer} written before reserve");
        };
        k.slice_set(keys, 1, start)?;
        v.slice_set(values, 1, start)
    }

    /// Views of the first `len` positions of `layer` (`[kv_heads, len, head_dim]`).
    pub fn view(&self, layer: usize, len: usize) -> Result<(Tensor, Tensor)> {
        let Some((k, v)) = self.layers.get(layer) else {
            candle_core::bail!("KV layer {layer} read before reserve");
        };
        Ok((k.narrow(1, 0, len)?, v.narrow(1, 0, len)?))
    }

    /// Marks `t` more positions as stored, once every layer has written them.
    pub fn commit(&mut self, t: usize) {
        self.len += t;
    }

    /// A copy with its own buffers: `write` updates tensors in place, so sharing them
    /// between two sequences would mix their KV.
    pub fn deep_copy(&self) -> Result<Self> {
        let layers = self
            .layers
            .iter()
            .map(|(k, v)| Ok((k.copy()?, v.copy()?)))
            .collect::<Result<_>>()?;
        Ok(SlotKv {
            len: self.len,
            capacity: self.capacity,
            layers,
        })
    }

    /// Forgets the sequence; keeps modest buffers for reuse.
    pub fn reset(&mut self) {
        self.len = 0;
        if !retained_on_reset(self.capacity) {
            self.layers.clear();
            self.capacity = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::device::test_device;

    /// On the test device: `slice_set` and `narrow` views are what a GPU step relies on.
    fn layout() -> KvLayout {
        KvLayout {
            n_layers: 2,
            n_kv_heads: 2,
            head_dim: 4,
            max_seq_len: 300,
            dtype: DType::F32,
            device: test_device(),
        }
    }

    #[test]
    fn growth_keeps_written_positions_and_doubles() -> Result<()> {
        let layout = layout();
        let mut slot = SlotKv::default();
        slot.reserve(3, &layout)?;
        assert_eq!(slot.capacity, KV_BLOCK);
        let keys = Tensor::arange(0f32, 24., &test_device())?.reshape((2, 3, 4))?;
        for layer in 0..2 {
            slot.write(layer, 0, &keys, &(&keys * 2.0)?)?;
        }
        slot.commit(3);
        slot.reserve(KV_BLOCK + 1, &layout)?;
        assert_eq!(slot.capacity, 2 * KV_BLOCK);
        slot.reserve(250, &layout)?;
        assert_eq!(slot.capacity, 256);
        slot.reserve(290, &layout)?;
        assert_eq!(slot.capacity, 300, "capped at max_seq_len");
        let (k, v) = slot.view(1, 3)?;
        assert_eq!(k.to_vec3::<f32>()?, keys.to_vec3::<f32>()?);
        assert_eq!(v.to_vec3::<f32>()?, (&keys * 2.0)?.to_vec3::<f32>()?);
        Ok(())
    }

    #[test]
    fn reset_frees_large_buffers_only() -> Result<()> {
        let layout = KvLayout {
            max_seq_len: 4096,
            ..layout()
        };
        let mut slot = SlotKv::default();
        slot.reserve(10, &layout)?;
        slot.commit(10);
        slot.reset();
        assert_eq!((slot.len(), slot.capacity), (0, KV_BLOCK));
        slot.reserve(2000, &layout)?;
        slot.reset();
        assert_eq!((slot.len(), slot.capacity), (0, 0));
        Ok(())
    }
}
