//! The int8 tile kernels for x86-64: AVX-512 VNNI and AVX-VNNI.
//!
//! Both compute exactly what `portable::tile` computes (exact i32 block sums, then one
//! `fma(f32(sum), dw · da, acc)` per block in k order), only 16 (or 2 × 8) lanes at a time and
//! with each weight load reused across several batch rows. Callers must have checked
//! `Isa::is_available` for the kernel's variant: these functions are compiled for those
//! features and would fault (SIGILL) without them.

use super::super::int8::{dispatch_rows, four};
use super::{PackedQ8_0, QuantizedRows, BIAS, BLOCK, GROUPS, MAX_ROWS, TILE_ROWS};
use std::arch::x86_64::*;

/// Up to 8 rows of one tile with AVX-512 VNNI.
///
/// # Safety
/// The CPU must have avx512f, avx512bw and avx512vnni (`Isa::Avx512Vnni.is_available()`).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn tile_avx512(
    w: &PackedQ8_0,
    tile: usize,
    acts: &QuantizedRows,
    r0: usize,
    res: &mut [[f32; TILE_ROWS]; MAX_ROWS],
) -> usize {
    dispatch_rows!(rows_avx512, 8, w, tile, acts, r0, res)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn rows_avx512<const M: usize, const C: usize>(
    w: &PackedQ8_0,
    tile: usize,
    acts: &QuantizedRows,
    r0: usize,
    res: &mut [[f32; TILE_ROWS]; M],
) {
    let groups = w.tile_groups(tile);
    let scales = w.tile_scales(tile);
    let mut acc = [_mm512_setzero_ps(); M];
    for b in 0..w.blocks {
        let (a, a_scales, a_sums) = acts.block(b, r0, M);
        // C partial sums per row (see `dispatch_rows`); integer sums are exact, so how
        // they are split does not change the result.
        let mut sums = [[_mm512_setzero_si512(); C]; M];
        let q = groups[b * GROUPS..][..GROUPS].as_ptr().cast::<u8>();
        for g in 0..GROUPS {
            // SAFETY: `q` points to GROUPS aligned 64-byte groups. The prefetch address may
            // lie past the buffer: prefetches never fault, and `wrapping_add` keeps the
            // address computation itself defined.
            let wg = unsafe {
                _mm_prefetch::<_MM_HINT_T0>(q.wrapping_add(g * 64 + w.prefetch).cast());
                _mm512_load_si512(q.add(g * 64).cast())
            };
            for (r, sums) in sums.iter_mut().enumerate() {
                let a4 = _mm512_set1_epi32(four(a, r * BLOCK + g * 4));
                sums[g % C] = _mm512_dpbusd_epi32(sums[g % C], wg, a4);
            }
        }
        let ws = &scales[b * TILE_ROWS..][..TILE_ROWS];
        // SAFETY: `ws` holds 16 u16 = 32 bytes.
        let dw = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(ws.as_ptr().cast()) });
        for r in 0..M {
            let sum = sums[r][1..]
                .iter()
                .fold(sums[r][0], |s, t| _mm512_add_epi32(s, *t));
            let sum = _mm512_sub_epi32(sum, _mm512_set1_epi32(BIAS * a_sums[r]));
            let scale = _mm512_mul_ps(dw, _mm512_set1_ps(a_scales[r]));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), scale, acc[r]);
        }
    }
    for (out, acc) in res.iter_mut().zip(acc) {
        // SAFETY: `out` holds 16 f32.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), acc) };
    }
}

/// Up to 4 rows of one tile with AVX-VNNI (256-bit: each tile is two halves of 8 rows).
///
/// # Safety
/// The CPU must have avx2, fma, f16c and avxvnni (`Isa::AvxVnni.is_available()`).
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub(super) unsafe fn tile_avx256(
    w: &PackedQ8_0,
    tile: usize,
    acts: &QuantizedRows,
    r0: usize,
    res: &mut [[f32; TILE_ROWS]; MAX_ROWS],
) -> usize {
    // 16 ymm registers: 4 rows × (2 sums + 2 accumulators) is already more than half.
    dispatch_rows!(rows_avx256, 4, w, tile, acts, r0, res)
}

/// `_C` is unused: the two 8-row halves already give every row two independent chains, and
/// 16 ymm registers leave no room for more.
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
fn rows_avx256<const M: usize, const _C: usize>(
    w: &PackedQ8_0,
    tile: usize,
    acts: &QuantizedRows,
    r0: usize,
    res: &mut [[f32; TILE_ROWS]; M],
) {
    let groups = w.tile_groups(tile);
    let scales = w.tile_scales(tile);
    let mut acc = [[_mm256_setzero_ps(); 2]; M];
    for b in 0..w.blocks {
        let (a, a_scales, a_sums) = acts.block(b, r0, M);
        let mut sums = [[_mm256_setzero_si256(); 2]; M];
        let q = groups[b * GROUPS..][..GROUPS].as_ptr().cast::<u8>();
        for g in 0..GROUPS {
            // SAFETY: as in `rows_avx512`; the two halves are rows 0..8 and 8..16.
            let (lo, hi) = unsafe {
                _mm_prefetch::<_MM_HINT_T0>(q.wrapping_add(g * 64 + w.prefetch).cast());
                (
                    _mm256_load_si256(q.add(g * 64).cast()),
                    _mm256_load_si256(q.add(g * 64 + 32).cast()),
                )
            };
            for (r, [sum_lo, sum_hi]) in sums.iter_mut().enumerate() {
                let a4 = _mm256_set1_epi32(four(a, r * BLOCK + g * 4));
                *sum_lo = _mm256_dpbusd_avx_epi32(*sum_lo, lo, a4);
                *sum_hi = _mm256_dpbusd_avx_epi32(*sum_hi, hi, a4);
            }
        }
        let ws = &scales[b * TILE_ROWS..][..TILE_ROWS];
        // SAFETY: `ws` holds 16 u16: two loads of 8.
        let dw = unsafe {
            [
                _mm256_cvtph_ps(_mm_loadu_si128(ws.as_ptr().cast())),
                _mm256_cvtph_ps(_mm_loadu_si128(ws.as_ptr().add(8).cast())),
            ]
        };
        for r in 0..M {
            let bias = _mm256_set1_epi32(BIAS * a_sums[r]);
            let da = _mm256_set1_ps(a_scales[r]);
            for half in 0..2 {
                let sum = _mm256_cvtepi32_ps(_mm256_sub_epi32(sums[r][half], bias));
                let scale = _mm256_mul_ps(dw[half], da);
                acc[r][half] = _mm256_fmadd_ps(sum, scale, acc[r][half]);
            }
        }
    }
    for (out, acc) in res.iter_mut().zip(acc) {
        // SAFETY: `out` holds 16 f32: two stores of 8.
        unsafe {
            _mm256_storeu_ps(out.as_mut_ptr(), acc[0]);
            _mm256_storeu_ps(out.as_mut_ptr().add(8), acc[1]);
        }
    }
}
