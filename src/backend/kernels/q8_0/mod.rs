//! Int8 matmul for Q8_0 weights: `out[m][n] = x[m][k] · W[n][k]ᵀ`.
//!
//! Why our own: candle's fast VNNI path needs k % 256 == 0, and SmolLM2's width is 576, so
//! most of its projections fall back to an AVX2 dot product per (row, column) that reloads
//! the weights for every batch row. Here:
//!
//! - weights are repacked once, at load, into tiles of 16 output rows × 32 k ([`PackedQ8_0`]),
//!   stored as `w + 128` (u8) so that one `vpdpbusd` (u8 × i8 → i32) computes 16 outputs × 4 k:
//!   line `g` of a tile-block is the 4-k group `4g..4g + 4` of all 16 rows;
//! - activations are quantized once per input row to Q8_0 ([`QuantizedRows`]), exactly as
//!   ggml/candle do, and the `+128` bias is removed with each block's `128 · Σa`;
//! - each weight register is reused for up to 8 batch rows (4 with AVX-VNNI) before the next
//!   load, which is where batched decode gains; longer batches (prefill chunks) loop over
//!   row chunks.
//!
//! Arithmetic per output: an exact i32 dot product per 32-k block, then
//! `acc = fma(f32(isum), dw · da, acc)` over the blocks in order. That order depends on
//! nothing but k, so a row's result is bit-identical whatever else is in the batch, how the
//! batch is chunked, and which [`Isa`](super::Isa) ran it (the tests check all three).

#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86;

use super::int8::{Format, Line, Packed, BLOCK};
pub use super::int8::{QuantizedRows, TILE_ROWS};
use candle_core::quantized::GgmlDType;

/// Default prefetch distance on the weight stream, in bytes. Measured with
/// `loadtests/kernel_bench --weights cold --prefetch 0,1024,2048,4096,8192,16384` (1 thread,
/// EPYC with AVX-512, shared machine): against none, 8192 gained 10–20% at batch 1 and
/// 10–45% at batch 8 on SmolLM2's shapes, 4096 about half a step less, 16384 lost again.
pub const DEFAULT_PREFETCH: usize = 8192;

/// Q8_0 weights of `n` output rows × `k` inputs, repacked for the int8 kernels.
pub type PackedQ8_0 = Packed<Q8_0>;

/// The Q8_0 format, as the int8 kernels store and compute it.
#[derive(Debug)]
pub struct Q8_0;

impl Format for Q8_0 {
    const DTYPE: GgmlDType = GgmlDType::Q8_0;
    const QUANTS: usize = BLOCK;
    const PAD: u8 = 128;
    const BIAS: i32 = 128;
    const DEFAULT_PREFETCH: usize = DEFAULT_PREFETCH;

    fn pack_byte(q: u8) -> u8 {
        (q as i8 as i16 + 128) as u8
    }

    fn line_sums(group: &Line, g: usize, a: &[i8], sums: &mut [i32; TILE_ROWS]) {
        let a4 = &a[g * 4..][..4];
        for (lane, sum) in sums.iter_mut().enumerate() {
            let w4 = &group.0[lane * 4..][..4];
            *sum += w4
                .iter()
                .zip(a4)
                .map(|(&w, &a)| i32::from(w) * i32::from(a))
                .sum::<i32>();
        }
    }
}
