//! Int8 matmul for Q4_0 weights: `out[m][n] = x[m][k] · W[n][k]ᵀ`, at 4 bits per weight.
//!
//! Why: decode at batch 1 is memory-bound, and Q4_0 moves 18 bytes per 32 weights where
//! Q8_0 moves 34. The arithmetic is the Q8_0 kernel's (both are `super::int8`'s), only the
//! weights are stored as nibbles and widened in registers:
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
//! bit-identical whatever else is in the batch and whichever [`Isa`](super::Isa) ran it.

#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86;

use super::int8::{Format, Line, Packed, BLOCK};
pub use super::int8::{QuantizedRows, TILE_ROWS};
use candle_core::quantized::GgmlDType;

/// Default prefetch distance on the weight stream, in bytes: the Q8_0 kernel's measured best
/// (see `q8_0::DEFAULT_PREFETCH`), which here lies twice as many blocks ahead;
/// `loadtests/kernel_bench --prefetch` times others.
pub const DEFAULT_PREFETCH: usize = 8192;

/// Q4_0 weights of `n` output rows × `k` inputs, repacked for the int8 kernels.
pub type PackedQ4_0 = Packed<Q4_0>;

/// The Q4_0 format, as the int8 kernels store and compute it.
#[derive(Debug)]
pub struct Q4_0;

impl Format for Q4_0 {
    const DTYPE: GgmlDType = GgmlDType::Q4_0;
    const QUANTS: usize = BLOCK / 2;
    const PAD: u8 = 0x88;
    const BIAS: i32 = 8;
    const DEFAULT_PREFETCH: usize = DEFAULT_PREFETCH;

    /// ggml's byte j holds k = j (low nibble) and k = j + 16 (high), already `w + 8`: as
    /// stored, byte 4l + t is line l's byte t of its row, as the module comment lays out.
    fn pack_byte(q: u8) -> u8 {
        q
    }

    fn line_sums(line: &Line, l: usize, a: &[i8], sums: &mut [i32; TILE_ROWS]) {
        // Low nibbles are k = 4l.., high nibbles k = 16 + 4l.. (see the module comment).
        let (a_lo, a_hi) = (&a[l * 4..][..4], &a[16 + l * 4..][..4]);
        for (lane, sum) in sums.iter_mut().enumerate() {
            for (t, &q) in line.0[lane * 4..][..4].iter().enumerate() {
                *sum += i32::from(q & 0x0F) * i32::from(a_lo[t])
                    + i32::from(q >> 4) * i32::from(a_hi[t]);
            }
        }
    }
}
