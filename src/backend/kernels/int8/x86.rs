//! The int8 tile kernels for x86-64, AVX-512 VNNI and AVX-VNNI, for every [`Format`].
//!
//! Both compute exactly what `Packed::tile_portable` computes (exact i32 block sums, then one
//! `fma(f32(sum), dw · da, acc)` per block in k order), only 16 (or 2 × 8) lanes at a time and
//! with each weight load reused across several batch rows. What differs between formats is
//! only how one loaded line turns into `vpdpbusd` operands ([`Simd`]); the loads, prefetch,
//! bias removal, scaling and stores are here once. Callers must have checked
//! `Isa::is_available` for the kernel's variant: these functions are compiled for those
//! features and would fault (SIGILL) without them.

use super::{Format, Packed, QuantizedRows, MAX_ROWS, TILE_ROWS};
use crate::backend::kernels::Isa;
use std::arch::x86_64::*;

/// A format's inner arithmetic on one loaded line of a tile-block, per instruction set.
///
/// Implementations must be `#[inline(always)]`: they are written without target features so
/// that one trait serves both kernels, and only once inlined into a kernel's
/// `#[target_feature]` body do their intrinsics inline too and their sums stay in registers.
pub trait Simd {
    /// Adds line `l` (all 16 rows) times each of the `M` rows' activations of this block
    /// (`a`, `[row][32]`) into that row's `C` partial sums.
    ///
    /// # Safety
    /// The CPU must have the features of `Isa::Avx512Vnni`.
    unsafe fn line_512<const M: usize, const C: usize>(
        line: __m512i,
        l: usize,
        a: &[i8],
        sums: &mut [[__m512i; C]; M],
    );

    /// As `line_512` on the line's two halves, rows 0..8 and 8..16, into one sum each.
    ///
    /// # Safety
    /// The CPU must have the features of `Isa::AvxVnni`.
    unsafe fn line_256<const M: usize>(
        halves: [__m256i; 2],
        l: usize,
        a: &[i8],
        sums: &mut [[__m256i; 2]; M],
    );
}

/// Four activation bytes from `at`, as the i32 that `vpdpbusd` broadcasts.
#[inline(always)]
pub fn four(a: &[i8], at: usize) -> i32 {
    let bytes: [i8; 4] = a[at..at + 4].try_into().expect("four bytes");
    i32::from_le_bytes(bytes.map(|v| v as u8))
}

/// Picks the row count (a const generic, so accumulators stay in registers) for up to
/// `$max` rows from `r0`, and how many independent partial sums each row keeps: a block's
/// vpdpbusd into one sum form a chain as long as their latency, so few rows split the chain
/// to keep the unit busy, while many rows interleave their chains anyway and need the
/// registers. Returns how many rows were done.
macro_rules! dispatch_rows {
    ($kernel:ident, $max:literal, $w:ident, $tile:ident, $acts:ident, $r0:ident, $res:ident) => {{
        let m = ($acts.rows() - $r0).min($max);
        let res = &mut $res[..m];
        match m {
            1 => $kernel::<_, 1, 4>($w, $tile, $acts, $r0, res.try_into().expect("1 row")),
            2 => $kernel::<_, 2, 4>($w, $tile, $acts, $r0, res.try_into().expect("2 rows")),
            3 => $kernel::<_, 3, 2>($w, $tile, $acts, $r0, res.try_into().expect("3 rows")),
            4 => $kernel::<_, 4, 2>($w, $tile, $acts, $r0, res.try_into().expect("4 rows")),
            5 => $kernel::<_, 5, 1>($w, $tile, $acts, $r0, res.try_into().expect("5 rows")),
            6 => $kernel::<_, 6, 1>($w, $tile, $acts, $r0, res.try_into().expect("6 rows")),
            7 => $kernel::<_, 7, 1>($w, $tile, $acts, $r0, res.try_into().expect("7 rows")),
            _ => $kernel::<_, 8, 1>($w, $tile, $acts, $r0, res.try_into().expect("8 rows")),
        }
        m
    }};
}

/// Up to 8 rows (AVX-512 VNNI) or 4 (AVX-VNNI) of one tile from `r0`; how many, or `None`
/// for `Isa::Portable`, which has no code here.
///
/// # Safety
/// `isa.is_available()`.
pub(super) unsafe fn tile<F: Format>(
    isa: Isa,
    w: &Packed<F>,
    tile: usize,
    acts: &QuantizedRows,
    r0: usize,
    res: &mut [[f32; TILE_ROWS]; MAX_ROWS],
) -> Option<usize> {
    match isa {
        Isa::Avx512Vnni => Some(dispatch_rows!(rows_avx512, 8, w, tile, acts, r0, res)),
        // 16 ymm registers: 4 rows × (2 sums + 2 accumulators) already fill them.
        Isa::AvxVnni => Some(dispatch_rows!(rows_avx256, 4, w, tile, acts, r0, res)),
        Isa::Portable => None,
    }
}

/// Rows `r0..r0 + M` of one tile with AVX-512 VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn rows_avx512<F: Format, const M: usize, const C: usize>(
    w: &Packed<F>,
    tile: usize,
    acts: &QuantizedRows,
    r0: usize,
    res: &mut [[f32; TILE_ROWS]; M],
) {
    let lines = w.tile_lines(tile);
    let scales = w.tile_scales(tile);
    let mut acc = [_mm512_setzero_ps(); M];
    for b in 0..w.blocks {
        let (a, a_scales, a_sums) = acts.block(b, r0, M);
        // C partial sums per row (see `dispatch_rows`); integer sums are exact, so how
        // they are split does not change the result.
        let mut sums = [[_mm512_setzero_si512(); C]; M];
        let q = lines[b * F::LINES..][..F::LINES].as_ptr().cast::<u8>();
        for l in 0..F::LINES {
            // SAFETY: `q` points to LINES aligned 64-byte lines. The prefetch address may
            // lie past the buffer: prefetches never fault, and `wrapping_add` keeps the
            // address computation itself defined.
            let line = unsafe {
                _mm_prefetch::<_MM_HINT_T0>(q.wrapping_add(l * 64 + w.prefetch).cast());
                _mm512_load_si512(q.add(l * 64).cast())
            };
            // SAFETY: this function has the features `line_512` needs.
            unsafe { F::line_512(line, l, a, &mut sums) };
        }
        let ws = &scales[b * TILE_ROWS..][..TILE_ROWS];
        // SAFETY: `ws` holds 16 u16 = 32 bytes.
        let dw = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(ws.as_ptr().cast()) });
        for r in 0..M {
            let sum = sums[r][1..]
                .iter()
                .fold(sums[r][0], |s, t| _mm512_add_epi32(s, *t));
            let sum = _mm512_sub_epi32(sum, _mm512_set1_epi32(F::BIAS * a_sums[r]));
            let scale = _mm512_mul_ps(dw, _mm512_set1_ps(a_scales[r]));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), scale, acc[r]);
        }
    }
    for (out, acc) in res.iter_mut().zip(acc) {
        // SAFETY: `out` holds 16 f32.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), acc) };
    }
}

/// Rows `r0..r0 + M` of one tile with AVX-VNNI (256-bit: each tile is two halves of 8 rows).
/// `_C` is unused: the two 8-row halves already give every row two independent chains, and
/// 16 ymm registers leave no room for more.
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
fn rows_avx256<F: Format, const M: usize, const _C: usize>(
    w: &Packed<F>,
    tile: usize,
    acts: &QuantizedRows,
    r0: usize,
    res: &mut [[f32; TILE_ROWS]; M],
) {
    let lines = w.tile_lines(tile);
    let scales = w.tile_scales(tile);
    let mut acc = [[_mm256_setzero_ps(); 2]; M];
    for b in 0..w.blocks {
        let (a, a_scales, a_sums) = acts.block(b, r0, M);
        let mut sums = [[_mm256_setzero_si256(); 2]; M];
        let q = lines[b * F::LINES..][..F::LINES].as_ptr().cast::<u8>();
        for l in 0..F::LINES {
            // SAFETY: as in `rows_avx512`; the two halves are rows 0..8 and 8..16.
            let halves = unsafe {
                _mm_prefetch::<_MM_HINT_T0>(q.wrapping_add(l * 64 + w.prefetch).cast());
                [
                    _mm256_load_si256(q.add(l * 64).cast()),
                    _mm256_load_si256(q.add(l * 64 + 32).cast()),
                ]
            };
            // SAFETY: this function has the features `line_256` needs.
            unsafe { F::line_256(halves, l, a, &mut sums) };
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
            let bias = _mm256_set1_epi32(F::BIAS * a_sums[r]);
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
