//! Per-sequence KV storage of the plain-Rust forward: the same slots as `llama::kv`, in
//! plain `Vec<f32>` buffers instead of candle tensors.
//!
//! Growth and release follow `kv::SlotKv` (shared policy in `kv::grown_capacity` and
//! `kv::retained_on_reset`): capacity grows by doubling; positions past `len` are scratch
//! until `commit`, so a failed step leaves the sequence as it was. Per layer, heads-first so
//! that one KV head's data is contiguous for all query heads of its group:
//! - values `[kv_heads, capacity, head_dim]`, a row per position;
//! - keys in blocks of [`KEY_BLOCK`] positions, transposed: `[kv_heads, blocks, head_dim,
//!   KEY_BLOCK]`. Attention scores a block of keys against a query with one key per vector
//!   lane; stored this way, each key is transposed once when written instead of once per
//!   block of query rows that reads it.

use crate::backend::llama::kv::{grown_capacity, retained_on_reset};

/// Positions per transposed key block: one 512-bit register of f32 lanes.
pub(super) const KEY_BLOCK: usize = 16;

/// Dimensions shared by every slot of a model.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KvDims {
    pub n_layers: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub max_seq_len: usize,
}

/// One layer's keys `[kv_heads, blocks, head_dim, KEY_BLOCK]` and values
/// `[kv_heads, capacity, head_dim]`.
#[derive(Debug, Default, Clone)]
struct LayerKv {
    keys: Vec<f32>,
    values: Vec<f32>,
}

/// One sequence's keys and values for every layer. `Clone` copies them (n > 1 choices).
#[derive(Debug, Default, Clone)]
pub(crate) struct CpuSlotKv {
    len: usize,
    capacity: usize,
    /// Set by the first reserve (a default slot has no buffers).
    head_dim: usize,
    layers: Vec<LayerKv>,
}

impl CpuSlotKv {
    /// Positions already stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Positions the buffers hold before the next growth.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Makes room for `needed` positions (callers check `needed <= max_seq_len`), keeping
    /// the stored ones.
    pub fn reserve(&mut self, needed: usize, dims: &KvDims) {
        if needed <= self.capacity {
            return;
        }
        let new_cap = grown_capacity(self.capacity, needed, dims.max_seq_len);
        let (old_cap, len, hd) = (self.capacity, self.len, dims.head_dim);
        // Each head's stored part is a prefix of its region (rows, or whole key blocks);
        // the region's size changes with the capacity.
        let grow = |old: &[f32], per_head: (usize, usize), stored: usize| {
            let mut new = vec![0f32; dims.n_kv_heads * per_head.1];
            for head in 0..dims.n_kv_heads {
                new[head * per_head.1..][..stored]
                    .copy_from_slice(&old[head * per_head.0..][..stored]);
            }
            new
        };
        let keys_size = |cap: usize| cap.div_ceil(KEY_BLOCK) * KEY_BLOCK * hd;
        let key_sizes = (keys_size(old_cap), keys_size(new_cap));
        let stored_keys = len.div_ceil(KEY_BLOCK) * KEY_BLOCK * hd;
        self.layers = (0..dims.n_layers)
            .map(|layer| match self.layers.get(layer) {
                Some(old) if len > 0 => LayerKv {
                    keys: grow(&old.keys, key_sizes, stored_keys),
                    values: grow(&old.values, (old_cap * hd, new_cap * hd), len * hd),
                },
                _ => LayerKv {
                    keys: vec![0f32; dims.n_kv_heads * key_sizes.1],
                    values: vec![0f32; dims.n_kv_heads * new_cap * hd],
                },
            })
            .collect();
        self.capacity = new_cap;
        self.head_dim = dims.head_dim;
    }

    /// Floats of one head's keys: whole blocks covering the capacity.
    fn head_keys(&self) -> usize {
        self.capacity.div_ceil(KEY_BLOCK) * KEY_BLOCK * self.head_dim
    }

    /// Writes one token's keys and values (`[kv_heads * head_dim]` each, heads side by side
    /// as the projection produces them) at position `pos` of `layer`.
    pub fn write(&mut self, layer: usize, pos: usize, keys: &[f32], values: &[f32]) {
        assert!(
            pos < self.capacity,
            "KV write at {pos} past capacity {}",
            self.capacity
        );
        let (cap, hd, head_keys) = (self.capacity, self.head_dim, self.head_keys());
        let kv = &mut self.layers[layer];
        let rows = keys.chunks_exact(hd).zip(values.chunks_exact(hd));
        let (block, lane) = (pos / KEY_BLOCK, pos % KEY_BLOCK);
        for (head, (k, v)) in rows.enumerate() {
            let block_keys = &mut kv.keys[head * head_keys + block * hd * KEY_BLOCK..];
            for (d, x) in k.iter().enumerate() {
                block_keys[d * KEY_BLOCK + lane] = *x;
            }
            let at = (head * cap + pos) * hd;
            kv.values[at..at + hd].copy_from_slice(v);
        }
    }

    /// Keys and values of one KV head of `layer` for the first `len` positions (stored ones
    /// plus any written by the running step): keys as the whole transposed blocks covering
    /// them (`[blocks, head_dim, KEY_BLOCK]`; lanes past `len` are leftovers), values
    /// `[len, head_dim]`.
    pub fn head(&self, layer: usize, head: usize, len: usize) -> (&[f32], &[f32]) {
        assert!(
            len <= self.capacity,
            "KV read of {len} past capacity {}",
            self.capacity
        );
        let (kv, hd) = (&self.layers[layer], self.head_dim);
        let keys = &kv.keys[head * self.head_keys()..][..len.div_ceil(KEY_BLOCK) * KEY_BLOCK * hd];
        let at = head * self.capacity * hd;
        (keys, &kv.values[at..at + len * hd])
    }

    /// Marks `t` more positions as stored, once every layer has written them.
    pub fn commit(&mut self, t: usize) {
        self.len += t;
    }

    /// Floats of one prefix-cache block (`prefix_cache::BLOCK_TOKENS` positions, all layers).
    pub fn block_floats(dims: &KvDims) -> usize {
        dims.n_layers * dims.n_kv_heads * 2 * KEY_BLOCK * dims.head_dim
    }

    /// A copy of stored block `block` (positions `block * KEY_BLOCK..` of the next
    /// `KEY_BLOCK`): per layer, every head's transposed key block, then every head's value
    /// rows. The layout `push_block` reads.
    pub fn export_block(&self, block: usize, dims: &KvDims) -> Vec<f32> {
        assert!(
            (block + 1) * KEY_BLOCK <= self.len,
            "KV block {block} is not stored (len {})",
            self.len
        );
        let (hd, cap, head_keys) = (self.head_dim, self.capacity, self.head_keys());
        let per_head = KEY_BLOCK * hd;
        let mut out = Vec::with_capacity(Self::block_floats(dims));
        for kv in &self.layers {
            for head in 0..dims.n_kv_heads {
                out.extend_from_slice(&kv.keys[head * head_keys + block * per_head..][..per_head]);
            }
            for head in 0..dims.n_kv_heads {
                out.extend_from_slice(
                    &kv.values[(head * cap + block * KEY_BLOCK) * hd..][..per_head],
                );
            }
        }
        out
    }

    /// Appends one block exported by `export_block` (of a model with the same `dims`) at
    /// the end of the stored positions, which must be a whole number of blocks.
    pub fn push_block(&mut self, data: &[f32], dims: &KvDims) {
        assert_eq!(
            self.len % KEY_BLOCK,
            0,
            "a block must start on a block boundary"
        );
        assert_eq!(
            data.len(),
            Self::block_floats(dims),
            "block of another shape"
        );
        let block = self.len / KEY_BLOCK;
        self.reserve(self.len + KEY_BLOCK, dims);
        let (hd, cap, head_keys) = (self.head_dim, self.capacity, self.head_keys());
        let per_head = KEY_BLOCK * hd;
        let mut parts = data.chunks_exact(per_head);
        for kv in &mut self.layers {
            for head in 0..dims.n_kv_heads {
                let src = parts.next().unwrap_or_default();
                kv.keys[head * head_keys + block * per_head..][..per_head].copy_from_slice(src);
            }
            for head in 0..dims.n_kv_heads {
                let src = parts.next().unwrap_or_default();
                kv.values[(head * cap + block * KEY_BLOCK) * hd..][..per_head].copy_from_slice(src);
            }
        }
        self.len += KEY_BLOCK;
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

    const DIMS: KvDims = KvDims {
        n_layers: 2,
        n_kv_heads: 2,
        head_dim: 4,
        max_seq_len: 300,
    };

    /// Keys of token `pos` in `layer`: distinct values that say where they belong.
    fn row(layer: usize, pos: usize) -> Vec<f32> {
        (0..8)
            .map(|i| (layer * 10_000 + pos * 10 + i) as f32)
            .collect()
    }

    #[test]
    fn growth_doubles_in_blocks_keeps_stored_rows_and_caps_at_max_seq_len() {
        // More than one key block, the last one partial.
        const STORED: usize = 20;
        let mut slot = CpuSlotKv::default();
        slot.reserve(STORED, &DIMS);
        assert_eq!(slot.capacity(), 64);
        for pos in 0..STORED {
            for layer in 0..2 {
                let k = row(layer, pos);
                let v: Vec<f32> = k.iter().map(|x| -x).collect();
                slot.write(layer, pos, &k, &v);
            }
        }
        slot.commit(STORED);
        for (needed, cap) in [(65, 128), (250, 256), (290, 300)] {
            slot.reserve(needed, &DIMS);
            assert_eq!(slot.capacity(), cap, "reserve({needed})");
        }
        for layer in 0..2 {
            for head in 0..2 {
                let (k, v) = slot.head(layer, head, STORED);
                for pos in 0..STORED {
                    let want = &row(layer, pos)[head * 4..][..4];
                    let key: Vec<f32> = (0..4)
                        .map(|d| k[((pos / KEY_BLOCK) * 4 + d) * KEY_BLOCK + pos % KEY_BLOCK])
                        .collect();
                    assert_eq!(key, want, "layer {layer} head {head} pos {pos}");
                    let neg: Vec<f32> = want.iter().map(|x| -x).collect();
                    assert_eq!(&v[pos * 4..][..4], neg.as_slice());
                }
            }
        }
    }

    #[test]
    fn an_exported_block_pushed_into_another_slot_reads_back_the_same() {
        const STORED: usize = 2 * KEY_BLOCK + 3;
        let mut from = CpuSlotKv::default();
        from.reserve(STORED, &DIMS);
        for pos in 0..STORED {
            for layer in 0..2 {
                let k = row(layer, pos);
                let v: Vec<f32> = k.iter().map(|x| -x).collect();
                from.write(layer, pos, &k, &v);
            }
        }
        from.commit(STORED);
        let mut to = CpuSlotKv::default();
        for block in 0..2 {
            let data = from.export_block(block, &DIMS);
            assert_eq!(data.len(), CpuSlotKv::block_floats(&DIMS));
            to.push_block(&data, &DIMS);
        }
        assert_eq!(to.len(), 2 * KEY_BLOCK);
        for layer in 0..2 {
            for head in 0..2 {
                assert_eq!(
                    to.head(layer, head, 2 * KEY_BLOCK),
                    from.head(layer, head, 2 * KEY_BLOCK)
                );
            }
        }
    }

    #[test]
    fn uncommitted_writes_are_scratch_and_reset_frees_only_large_buffers() {
        let dims = KvDims {
            max_seq_len: 4096,
            ..DIMS
        };
        let mut slot = CpuSlotKv::default();
        slot.reserve(10, &dims);
        slot.write(0, 0, &row(0, 0), &row(0, 0));
        assert_eq!(slot.len(), 0, "a write is not stored until commit");
        slot.commit(10);
        slot.reset();
        assert_eq!((slot.len(), slot.capacity()), (0, 64));
        slot.reserve(2000, &dims);
        slot.reset();
        assert_eq!((slot.len(), slot.capacity()), (0, 0));
    }
}
