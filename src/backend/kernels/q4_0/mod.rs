//! Int8 matmul for Q4_0 weights: `out[m][n] = x[m][k] · W[n][k]ᵀ`, at 4 bits per weight.
//!
//! Why: decode at batch 1 is memory-bound, and Q4_0 moves 18 bytes per 32 weights where
//! Q8_0 moves 34. The arithmetic is the Q8_0 kernel's (`super::q8_0`), only the weights are
//! stored as nibbles and widened in registers:
//!
//! - weights are repacked once, at load, into tiles of 16 output rows × 32 k
//!   ([`PackedQ4_0`]) as unsigned nibbles `w + 8` (0..15). A tile-block is 4 lines of 64
//!   bytes; byte `4·row + t` of line `l` holds k = `4l + t` in its low nibble and
//!   k = `16 + 4l + t` in its high one, which is exactly ggml's byte `qs[4l + t]` of that
//!   row's block. One aligned 512-bit load, then `& 0x0F` and `>> 4 & 0x0F`, gives the
//!   `vpdpbusd` operands of two 4-k groups;
//! - activations are quantized once per row to Q8_0 ([`QuantizedRows`]), and the `+ 8` is
//!   removed with each block's `8 · Σa`;
//! - each weight register is reused for up to 8 batch rows (4 with AVX-VNNI).
//!
//! Arithmetic per output: an exact i32 dot product per 32-k block, then
//! `acc = fma(f32(isum), dw · da, acc)` over the blocks in order, so a row's result is
//! bit-identical whatever else is in the batch and whichever [`Isa`] ran it.

mod portable;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86;

use super::int8::{matmul_tiles, with_quantized, TileKernel, BLOCK, MAX_ROWS};
pub use super::int8::{QuantizedRows, TILE_ROWS};
use super::Isa;
use candle_core::quantized::{GgmlDType, QTensor};

/// 64-byte lines per tile-block: 16 rows × 32 k × 4 bits = 256 bytes.
const LINES: usize = 4;
/// Bytes of one Q4_0 block in ggml's layout: f16 scale + 16 bytes of nibbles.
const Q4_0_BYTES: usize = 2 + BLOCK / 2;
/// What the weights' `+ 8` adds to a block sum, per unit of the activations' `Σa`.
const BIAS: i32 = 8;
/// Default prefetch distance on the weight stream, in bytes: the Q8_0 kernel's measured best
/// (see `q8_0::DEFAULT_PREFETCH`), which here lies twice as many blocks ahead;
/// `loadtests/kernel_bench --prefetch` times others.
pub const DEFAULT_PREFETCH: usize = 8192;

/// One line of a tile-block: for 16 rows, 4 k in the low nibbles and 4 k in the high ones.
/// Aligned so that a line is exactly one cache line and one aligned 512-bit load.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

/// Q4_0 weights of `n` output rows × `k` inputs, repacked for the int8 kernels.
pub struct PackedQ4_0 {
    n: usize,
    k: usize,
    blocks: usize,
    tiles: usize,
    /// `[tile][block][line]`: a tile's whole k range is one contiguous stream.
    lines: Vec<Line>,
    /// `[tile][block][row]` f16 bits of the weight scales.
    scales: Vec<u16>,
    /// Only ever a variant whose `is_available()` returned true (checked on every set).
    isa: Isa,
    prefetch: usize,
}

impl std::fmt::Debug for PackedQ4_0 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedQ4_0")
            .field("n", &self.n)
            .field("k", &self.k)
            .field("isa", &self.isa)
            .finish_non_exhaustive()
    }
}

impl PackedQ4_0 {
    /// Stacks Q4_0 matrices that share `k` along n (e.g. q|k|v), in order, and repacks them
    /// for the fastest kernel this CPU has.
    pub fn from_qtensors(parts: &[&QTensor]) -> candle_core::Result<Self> {
        let mut bytes = Vec::new();
        let (mut n, mut k) = (0, None);
        for part in parts {
            if part.dtype() != GgmlDType::Q4_0 {
                candle_core::bail!("4-bit kernel needs Q4_0 weights, got {:?}", part.dtype());
            }
            let (rows, cols) = part.shape().dims2()?;
            if *k.get_or_insert(cols) != cols {
                candle_core::bail!("stacked weights differ in k: {k:?} vs {cols}");
            }
            bytes.extend_from_slice(&part.data()?);
            n += rows;
        }
        Self::from_q4_0_bytes(&bytes, n, k.unwrap_or(0))
    }

    /// Repacks `n` rows of `k` weights given in ggml's Q4_0 block layout.
    pub fn from_q4_0_bytes(bytes: &[u8], n: usize, k: usize) -> candle_core::Result<Self> {
        if n == 0 || k == 0 || !k.is_multiple_of(BLOCK) {
            candle_core::bail!(
                "4-bit kernel needs n > 0 and k a positive multiple of 32, got {n}x{k}"
            );
        }
        let blocks = k / BLOCK;
        if bytes.len() != n * blocks * Q4_0_BYTES {
            candle_core::bail!("{} bytes are not {n}x{k} Q4_0 weights", bytes.len());
        }
        // Rows past n (padding of the last tile) keep scale 0, so they add nothing.
        let tiles = n.div_ceil(TILE_ROWS);
        let mut lines = vec![Line([0x88; 64]); tiles * blocks * LINES];
        let mut scales = vec![0u16; tiles * blocks * TILE_ROWS];
        for (i, block) in bytes.chunks_exact(Q4_0_BYTES).enumerate() {
            let (row, b) = (i / blocks, i % blocks);
            let (tile, lane) = (row / TILE_ROWS, row % TILE_ROWS);
            let tb = tile * blocks + b;
            scales[tb * TILE_ROWS + lane] = u16::from_le_bytes([block[0], block[1]]);
            // ggml's byte j holds k = j (low nibble) and k = j + 16 (high): byte 4l + t is
            // line l's byte t of this row, as the module comment lays out.
            for (j, &q) in block[2..].iter().enumerate() {
                lines[tb * LINES + j / 4].0[lane * 4 + j % 4] = q;
            }
        }
        Ok(Self {
            n,
            k,
            blocks,
            tiles,
            lines,
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
        self.lines.len() * 64 + self.scales.len() * 2
    }

    /// `out[r][..n] = x[r] · Wᵀ` for `rows` rows of `x` (`rows × k`, row-major).
    pub fn matmul(&self, x: &[f32], rows: usize, out: &mut [f32]) {
        with_quantized(x, rows, self.k, |acts| self.matmul_quantized(acts, out));
    }

    /// As [`Self::matmul`] on activations already quantized.
    pub fn matmul_quantized(&self, acts: &QuantizedRows, out: &mut [f32]) {
        assert_eq!(acts.k(), self.k, "activation width");
        matmul_tiles(self, acts, out);
    }

    /// Packed lines of one tile, `[block][line]`.
    fn tile_lines(&self, tile: usize) -> &[Line] {
        let len = self.blocks * LINES;
        &self.lines[tile * len..][..len]
    }

    /// f16 weight scales of one tile, `[block][row]`.
    fn tile_scales(&self, tile: usize) -> &[u16] {
        let len = self.blocks * TILE_ROWS;
        &self.scales[tile * len..][..len]
    }
}

impl TileKernel for PackedQ4_0 {
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
