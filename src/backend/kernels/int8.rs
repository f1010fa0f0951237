//! What the int8 weight kernels (`q8_0`, `q4_0`) share: activations quantized once per row,
//! the packed weight matrix ([`Packed`]: tiles, scales, the chosen [`Isa`]), the kernels'
//! bodies, and the driver that spreads a matrix's 16-row tiles over candle's thread pool. A
//! [`Format`] brings only what is its own: how ggml's bytes are stored, and the inner
//! arithmetic on one 64-byte line of them.
//!
//! Both kernels store weights as unsigned bytes (`w + bias`, bias 128 for Q8_0 and 8 for
//! Q4_0) so that `vpdpbusd` (u8 × i8) applies; the activations keep their raw block sums and
//! each kernel removes its own `bias · Σa`.

mod acts;
#[cfg(test)]
pub(super) mod harness;
#[cfg(target_arch = "x86_64")]
pub(super) mod x86;

use super::Isa;
use acts::with_quantized;
pub use acts::QuantizedRows;
use candle_core::quantized::{GgmlDType, QTensor};
use std::marker::PhantomData;

/// Output rows per tile: one 512-bit register of i32/f32 lanes.
pub const TILE_ROWS: usize = 16;
/// Weights and activations per block (Q8_0 and Q4_0 alike).
pub(super) const BLOCK: usize = 32;
/// Batch rows one tile call computes at most: each weight register is reused this often.
pub(super) const MAX_ROWS: usize = 8;

/// One 64-byte line of a tile-block: 16 rows × 4 bytes of each row's ggml quants. Aligned so
/// that a line is exactly one cache line and one aligned 512-bit load.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub struct Line(pub [u8; 64]);

#[cfg(target_arch = "x86_64")]
use x86::Simd as ArchKernels;
/// Elsewhere only the portable kernel exists, so a format brings nothing more.
#[cfg(not(target_arch = "x86_64"))]
pub trait ArchKernels {}
#[cfg(not(target_arch = "x86_64"))]
impl<F> ArchKernels for F {}

/// A weight format the int8 kernels have code for. Only this crate's formats implement it:
/// the trait lives in a private module.
pub trait Format: ArchKernels + Sized + Sync + 'static {
    const DTYPE: GgmlDType;
    /// Bytes of a block's quants in ggml's layout, after its f16 scale.
    const QUANTS: usize;
    /// Bytes of one ggml block.
    const BLOCK_BYTES: usize = 2 + Self::QUANTS;
    /// Lines per tile-block: 4 quant bytes of each of the 16 rows per line.
    const LINES: usize = Self::QUANTS / 4;
    /// Line byte of the padding rows past n: weight 0 (their scale 0 already drops them).
    const PAD: u8;
    /// What the stored `w + bias` adds to a block sum, per unit of the activations' `Σa`.
    const BIAS: i32;
    const DEFAULT_PREFETCH: usize;

    /// A ggml quant byte as a line stores it.
    fn pack_byte(q: u8) -> u8;

    /// The portable kernel's inner arithmetic: line `l` of a tile-block times one row's
    /// activations of that block (`a`, 32 values), added to the 16 rows' exact sums.
    fn line_sums(line: &Line, l: usize, a: &[i8], sums: &mut [i32; TILE_ROWS]);
}

/// Weights of `n` output rows × `k` inputs in format `F`, repacked for the int8 kernels.
pub struct Packed<F> {
    n: usize,
    k: usize,
    blocks: usize,
    tiles: usize,
    /// `[tile][block][line]`: a tile's whole k range is one contiguous stream.
    lines: Vec<Line>,
    /// `[tile][block][row]` f16 bits of the weight scales (half the bytes of f32).
    scales: Vec<u16>,
    /// Only ever a variant whose `is_available()` returned true (checked on every set).
    isa: Isa,
    prefetch: usize,
    format: PhantomData<F>,
}

impl<F: Format> std::fmt::Debug for Packed<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(&format!("Packed{:?}", F::DTYPE))
            .field("n", &self.n)
            .field("k", &self.k)
            .field("isa", &self.isa)
            .finish_non_exhaustive()
    }
}

impl<F: Format> Packed<F> {
    /// Stacks matrices of format `F` that share `k` along n (e.g. q|k|v), in order, and
    /// repacks them for the fastest kernel this CPU has.
    pub fn from_qtensors(parts: &[&QTensor]) -> candle_core::Result<Self> {
        let mut bytes = Vec::new();
        let (mut n, mut k) = (0, None);
        for part in parts {
            if part.dtype() != F::DTYPE {
                candle_core::bail!(
                    "int8 kernel needs {:?} weights, got {:?}",
                    F::DTYPE,
                    part.dtype()
                );
            }
            let (rows, cols) = part.shape().dims2()?;
            if *k.get_or_insert(cols) != cols {
                candle_core::bail!("stacked weights differ in k: {k:?} vs {cols}");
            }
            bytes.extend_from_slice(&part.data()?);
            n += rows;
        }
        Self::from_ggml_bytes(&bytes, n, k.unwrap_or(0))
    }

    /// Repacks `n` rows of `k` weights given in ggml's block layout of format `F`.
    pub fn from_ggml_bytes(bytes: &[u8], n: usize, k: usize) -> candle_core::Result<Self> {
        if n == 0 || k == 0 || !k.is_multiple_of(BLOCK) {
            candle_core::bail!(
                "int8 kernel needs n > 0 and k a positive multiple of 32, got {n}x{k}"
            );
        }
        let blocks = k / BLOCK;
        if bytes.len() != n * blocks * F::BLOCK_BYTES {
            let len = bytes.len();
            candle_core::bail!("{len} bytes are not {n}x{k} {:?} weights", F::DTYPE);
        }
        // Rows past n (padding of the last tile) keep scale 0, so they add nothing.
        let tiles = n.div_ceil(TILE_ROWS);
        let mut lines = vec![Line([F::PAD; 64]); tiles * blocks * F::LINES];
        let mut scales = vec![0u16; tiles * blocks * TILE_ROWS];
        for (i, block) in bytes.chunks_exact(F::BLOCK_BYTES).enumerate() {
            let (row, b) = (i / blocks, i % blocks);
            let (tile, lane) = (row / TILE_ROWS, row % TILE_ROWS);
            let tb = tile * blocks + b;
            scales[tb * TILE_ROWS + lane] = u16::from_le_bytes([block[0], block[1]]);
            for (j, &q) in block[2..].iter().enumerate() {
                lines[tb * F::LINES + j / 4].0[lane * 4 + j % 4] = F::pack_byte(q);
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
            prefetch: F::DEFAULT_PREFETCH,
            format: PhantomData,
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

    /// As [`Self::matmul`] on activations already quantized (when several matrices share
    /// one input and are not stacked).
    pub fn matmul_quantized(&self, acts: &QuantizedRows, out: &mut [f32]) {
        assert_eq!(acts.k(), self.k, "activation width");
        assert_eq!(out.len(), acts.rows() * self.n, "output size");
        if acts.rows() == 0 {
            return;
        }
        let out = SharedOut(out.as_mut_ptr());
        // Tiles write disjoint columns of `out`, so threads may take any of them.
        candle_core::utils::barrier_pool().execute_chunked(self.tiles, |tiles| {
            let mut res = [[0f32; TILE_ROWS]; MAX_ROWS];
            for tile in tiles {
                let mut r0 = 0;
                while r0 < acts.rows() {
                    let m = self.run_tile(tile, acts, r0, &mut res);
                    // SAFETY: each tile is handed to exactly one thread, and `store` writes
                    // only this tile's columns of rows r0..r0 + m.
                    unsafe { store(&out, self.n, tile, r0, &res[..m]) };
                    r0 += m;
                }
            }
        });
    }

    /// Packed lines of one tile, `[block][line]`.
    fn tile_lines(&self, tile: usize) -> &[Line] {
        let len = self.blocks * F::LINES;
        &self.lines[tile * len..][..len]
    }

    /// f16 weight scales of one tile, `[block][row]`.
    fn tile_scales(&self, tile: usize) -> &[u16] {
        let len = self.blocks * TILE_ROWS;
        &self.scales[tile * len..][..len]
    }

    /// Computes up to [`MAX_ROWS`] rows from `r0` of one tile into `res`; returns how many.
    fn run_tile(
        &self,
        tile: usize,
        acts: &QuantizedRows,
        r0: usize,
        res: &mut [[f32; TILE_ROWS]; MAX_ROWS],
    ) -> usize {
        // SAFETY: `isa` is only ever set to a variant this CPU has (`with_isa`, `best`).
        #[cfg(target_arch = "x86_64")]
        if let Some(m) = unsafe { x86::tile(self.isa, self, tile, acts, r0, res) } {
            return m;
        }
        let m = (acts.rows() - r0).min(MAX_ROWS);
        self.tile_portable(tile, acts, r0, &mut res[..m]);
        m
    }

    /// Rows `r0..r0 + res.len()` of one tile in plain Rust: runs on any CPU, and defines the
    /// arithmetic that the SIMD kernels must reproduce bit for bit (same exact integer sums,
    /// same f32 operations in the same order).
    fn tile_portable(
        &self,
        tile: usize,
        acts: &QuantizedRows,
        r0: usize,
        res: &mut [[f32; TILE_ROWS]],
    ) {
        let lines = self.tile_lines(tile);
        let scales = self.tile_scales(tile);
        for (r, out) in res.iter_mut().enumerate() {
            let mut acc = [0f32; TILE_ROWS];
            for b in 0..self.blocks {
                let (a, a_scale, a_sum) = acts.block(b, r0 + r, 1);
                let mut isum = [0i32; TILE_ROWS];
                for (l, line) in lines[b * F::LINES..][..F::LINES].iter().enumerate() {
                    F::line_sums(line, l, a, &mut isum);
                }
                let w_scales = &scales[b * TILE_ROWS..][..TILE_ROWS];
                for ((acc, sum), ws) in acc.iter_mut().zip(isum).zip(w_scales) {
                    let scale = half::f16::from_bits(*ws).to_f32() * a_scale[0];
                    *acc = ((sum - F::BIAS * a_sum[0]) as f32).mul_add(scale, *acc);
                }
            }
            *out = acc;
        }
    }
}

/// The output pointer, shared by the pool's threads; each writes its own tiles' columns.
struct SharedOut(*mut f32);
// SAFETY: see `Packed::matmul_quantized`: writes through it never overlap between threads.
unsafe impl Sync for SharedOut {}

/// Writes one tile's results into `rows × n` output, dropping the padding columns past n.
///
/// # Safety
/// `out` points to `rows × n` floats, and no other thread writes these columns.
unsafe fn store(out: &SharedOut, n: usize, tile: usize, r0: usize, res: &[[f32; TILE_ROWS]]) {
    let col = tile * TILE_ROWS;
    let width = TILE_ROWS.min(n - col);
    for (r, values) in res.iter().enumerate() {
        let dst = out.0.add((r0 + r) * n + col);
        if width == TILE_ROWS {
            // A whole tile: one fixed-size store instead of a `memcpy` call per row.
            dst.cast::<[f32; TILE_ROWS]>().write_unaligned(*values);
        } else {
            std::ptr::copy_nonoverlapping(values.as_ptr(), dst, width);
        }
    }
}
