//! The 4-bit tile kernel in plain Rust: runs on any CPU, and defines the arithmetic that
//! the SIMD kernels must reproduce bit for bit (same exact integer sums, same f32
//! operations in the same order).

use super::{PackedQ4_0, QuantizedRows, BIAS, LINES, TILE_ROWS};

/// Rows `r0..r0 + res.len()` of one tile.
pub(super) fn tile(
    w: &PackedQ4_0,
    tile: usize,
    acts: &QuantizedRows,
    r0: usize,
    res: &mut [[f32; TILE_ROWS]],
) {
    let lines = w.tile_lines(tile);
    let scales = w.tile_scales(tile);
    for (r, out) in res.iter_mut().enumerate() {
        let mut acc = [0f32; TILE_ROWS];
        for b in 0..w.blocks {
            let (a, a_scale, a_sum) = acts.block(b, r0 + r, 1);
            let mut isum = [0i32; TILE_ROWS];
            for (l, line) in lines[b * LINES..][..LINES].iter().enumerate() {
                // Low nibbles are k = 4l.., high nibbles k = 16 + 4l.. (see `super`).
                let (a_lo, a_hi) = (&a[l * 4..][..4], &a[16 + l * 4..][..4]);
                for (lane, sum) in isum.iter_mut().enumerate() {
                    for (t, &q) in line.0[lane * 4..][..4].iter().enumerate() {
                        *sum += i32::from(q & 0x0F) * i32::from(a_lo[t])
                            + i32::from(q >> 4) * i32::from(a_hi[t]);
                    }
                }
            }
            let w_scales = &scales[b * TILE_ROWS..][..TILE_ROWS];
            for ((acc, sum), ws) in acc.iter_mut().zip(isum).zip(w_scales) {
                let scale = half::f16::from_bits(*ws).to_f32() * a_scale[0];
                *acc = ((sum - BIAS * a_sum[0]) as f32).mul_add(scale, *acc);
            }
        }
        *out = acc;
    }
}
