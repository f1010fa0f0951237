//! The int8 tile kernel in plain Rust: runs on any CPU, and defines the arithmetic that the
//! SIMD kernels must reproduce bit for bit (same exact integer sums, same f32 operations in
//! the same order).

use super::{PackedQ8_0, QuantizedRows, BIAS, GROUPS, TILE_ROWS};

/// Rows `r0..r0 + res.len()` of one tile.
pub(super) fn tile(
    w: &PackedQ8_0,
    tile: usize,
    acts: &QuantizedRows,
    r0: usize,
    res: &mut [[f32; TILE_ROWS]],
) {
    let groups = w.tile_groups(tile);
    let scales = w.tile_scales(tile);
    for (r, out) in res.iter_mut().enumerate() {
        let mut acc = [0f32; TILE_ROWS];
        for b in 0..w.blocks {
            let (a, a_scale, a_sum) = acts.block(b, r0 + r, 1);
            let mut isum = [0i32; TILE_ROWS];
            for (g, group) in groups[b * GROUPS..][..GROUPS].iter().enumerate() {
                let a4 = &a[g * 4..][..4];
                for (lane, sum) in isum.iter_mut().enumerate() {
                    let w4 = &group.0[lane * 4..][..4];
                    *sum += w4
                        .iter()
                        .zip(a4)
                        .map(|(&w, &a)| i32::from(w) * i32::from(a))
                        .sum::<i32>();
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
