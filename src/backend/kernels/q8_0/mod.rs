//! Int8 matmul for Q8_0 weights: `out[m][n] = x[m][k] · W[n][k]ᵀ`.
//!
//! Why our own: candle's fast VNNI path needs k % 256 == 0, and SmolLM2's width is 576, so
//! most of its projections fall back to an AVX2 dot product per (row, column) that reloads
//! the weights for every batch row. Here:
//!
//! - weights are repacked once, at load, into tiles of 16 output rows × 32 k ([`PackedQ8_0`]),
//!   stored as `w + 128` (u8) so that one `vpdpbusd` (u8 × i8 → i32) computes 16 outputs × 4 k;
//! - activations are quantized once per input row to Q8_0 ([`QuantizedRows`]), exactly as
//!   ggml/candle do, and the `+128` bias is removed with each block's `128 · Σa`;
//! - each weight register is reused for up to 8 batch rows (4 with AVX-VNNI) before the next
//!   load, which is where batched decode gains; longer batches (prefill chunks) loop over
//!   row chunks.
//!
//! Arithmetic per output: an exact i32 dot product per 32-k block, then
//! `acc = fma(f32(isum), dw · da, acc)` over the blocks in order. That order depends on
//! nothing but k, so a row's result is bit-identical whatever else is in the batch, how the
//! batch is chunked, and which [`Isa`] ran it (the tests check all three).

mod portable;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86;

use super::int8::{matmul_tiles, with_quantized, TileKernel, BLOCK, MAX_ROWS};
pub use super::int8::{QuantizedRows, TILE_ROWS};
use super::Isa;
use candle_core::quantized::{GgmlDType, QTensor};

/// `vpdpbusd` consumes 4 bytes of k per lane, so a block is 8 groups.
const GROUPS: usize = BLOCK / 4;
/// Bytes of one Q8_0 block in ggml's layout: f16 scale + 32 × i8.
const Q8_0_BYTES: usize = 2 + BLOCK;
/// What the weights' `+ 128` adds to a block sum, per unit of the activations' `Σa`.
const BIAS: i32 = 128;
/// Default prefetch distance on the weight stream, in bytes. Measured with
/// `loadtests/kernel_bench --weights cold --prefetch 0,1024,2048,4096,8192,16384` (1 thread,
/// EPYC with AVX-512, shared machine): against none, 8192 gained 10–20% at batch 1 and
/// 10–45% at batch 8 on SmolLM2's shapes, 4096 about half a step less, 16384 lost again.
pub const DEFAULT_PREFETCH: usize = 8192;

/// One group of a tile: 16 rows × 4 consecutive k, each byte `w + 128`. Aligned so that a
/// group is exactly one cache line and one aligned 512-bit load.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Group([u8; 64]);

/// Q8_0 weights of `n` output rows × `k` inputs, repacked for the int8 kernels.
pub struct PackedQ8_0 {
    n: usize,
    k: usize,
    blocks: usize,
    tiles: usize,
    /// `[tile][block][group]`: a tile's whole k range is one contiguous stream.
    groups: Vec<Group>,
    /// `[tile][block][row]` f16 bits of the weight scales (half the bytes of f32).
    scales: Vec<u16>,
    /// Only ever a variant whose `is_available()` returned true (checked on every set).
    isa: Isa,
    prefetch: usize,
}

impl std::fmt::Debug for PackedQ8_0 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedQ8_0")
            .field("n", &self.n)
            .field("k", &self.k)
            .field("isa", &self.isa)
            .finish_non_exhaustive()
    }
}

impl PackedQ8_0 {
    /// Stacks Q8_0 matrices that share `k` along n (e.g. q|k|v), in order, and repacks them
    /// for the fastest kernel this CPU has.
    pub fn from_qtensors(parts: &[&QTensor]) -> candle_core::Result<Self> {
        let mut bytes = Vec::new();
        let (mut n, mut k) = (0, None);
        for part in parts {
            if part.dtype() != GgmlDType::Q8_0 {
                candle_core::bail!("int8 kernel needs Q8_0 weights, got {:?}", part.dtype());
            }
            let (rows, cols) = part.shape().dims2()?;
            if *k.get_or_insert(cols) != cols {
                candle_core::bail!("stacked weights differ in k: {k:?} vs {cols}");
            }
            bytes.extend_from_slice(&part.data()?);
            n += rows;
        }
        Self::from_q8_0_bytes(&bytes, n, k.unwrap_or(0))
    }

    /// Repacks `n` rows of `k` weights given in ggml's Q8_0 block layout.
    pub fn from_q8_0_bytes(bytes: &[u8], n: usize, k: usize) -> candle_core::Result<Self> {
        if n == 0 || k == 0 || !k.is_multiple_of(BLOCK) {
            candle_core::bail!(
                "int8 kernel needs n > 0 and k a positive multiple of 32, got {n}x{k}"
            );
        }
        let blocks = k / BLOCK;
        if bytes.len() != n * blocks * Q8_0_BYTES {
            candle_core::bail!("{} bytes are not {n}x{k} Q8_0 weights", bytes.len());
        }
        // Rows past n (padding of the last tile) keep scale 0, so they add nothing.
        let tiles = n.div_ceil(TILE_ROWS);
        let mut groups = vec![Group([128; 64]); tiles * blocks * GROUPS];
        let mut scales = vec![0u16; tiles * blocks * TILE_ROWS];
        for (i, block) in bytes.chunks_exact(Q8_0_BYTES).enumerate() {
            let (row, b) = (i / blocks, i % blocks);
            let (tile, lane) = (row / TILE_ROWS, row % TILE_ROWS);
            let tb = tile * blocks + b;
            scales[tb * TILE_ROWS + lane] = u16::from_le_bytes([block[0], block[1]]);
            for (j, &q) in block[2..].iter().enumerate() {
                let group = &mut groups[tb * GROUPS + j / 4];
                group.0[lane * 4 + j % 4] = (q as i8 as i16 + 128) as u8;
            }
        }
        Ok(Self {
            n,
            k,
            blocks,
            tiles,
            groups,
            scales,
            isa: Isa::best(),
            prefetch: DEFAULT_PREFETCH,
        })
    }

    /// Runs on `isa` instead of the fastest one; an error if this CPU lacks it.
    pub fn with_isa(mut self, isa: Isa) -> candle_core::Result<Self> {
        if !isa.is_available() {
            candle_core::bail!("this CPU cannot run the {isa:?} kernel");
        }
        self.isa = isa;
        Ok(self)
    }

    /// Prefetch distance on the weight stream in bytes (0: none). For benchmarks.
    pub fn with_prefetch(mut self, bytes: usize) -> Self {
        self.prefetch = bytes;
        self
    }

    pub fn n(&self) -> usize {
        self.n
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Bytes of packed weights and scales that one pass over the matrix reads.
    pub fn weight_bytes(&self) -> usize {
        self.groups.len() * 64 + self.scales.len() * 2
    }

    /// `out[r][..n] = x[r] · Wᵀ` for `rows` rows of `x` (`rows × k`, row-major).
    pub fn matmul(&self, x: &[f32], rows: usize, out: &mut [f32]) {
        with_quantized(x, rows, self.k, |acts| self.matmul_quantized(acts, out));
    }

    /// As [`Self::matmul`] on activations already quantized (when several matrices share
    /// one input and are not stacked).
    pub fn matmul_quantized(&self, acts: &QuantizedRows, out: &mut [f32]) {
        assert_eq!(acts.k(), self.k, "activation width");
        matmul_tiles(self, acts, out);
    }

    /// Packed groups of one tile, `[block][group]`.
    fn tile_groups(&self, tile: usize) -> &[Group] {
        let len = self.blocks * GROUPS;
        &self.groups[tile * len..][..len]
    }

    /// f16 weight scales of one tile, `[block][row]`.
    fn tile_scales(&self, tile: usize) -> &[u16] {
        let len = self.blocks * TILE_ROWS;
        &self.scales[tile * len..][..len]
    }
}

impl TileKernel for PackedQ8_0 {
    fn n(&self) -> usize {
        self.n
    }

    fn tiles(&self) -> usize {
        self.tiles
    }

    fn run_tile(
        &self,
        tile: usize,
        acts: &QuantizedRows,
        r0: usize,
        res: &mut [[f32; TILE_ROWS]; MAX_ROWS],
    ) -> usize {
        // SAFETY: `isa` is only ever set to a variant this CPU has (`with_isa`, `best`).
        #[cfg(target_arch = "x86_64")]
        match self.isa {
            Isa::Avx512Vnni => return unsafe { x86::tile_avx512(self, tile, acts, r0, res) },
            Isa::AvxVnni => return unsafe { x86::tile_avx256(self, tile, acts, r0, res) },
            Isa::Portable => {}
        }
        let m = (acts.rows() - r0).min(MAX_ROWS);
        portable::tile(self, tile, acts, r0, &mut res[..m]);
        m
    }
}
