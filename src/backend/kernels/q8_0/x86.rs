//! Q8_0's inner arithmetic for the x86-64 kernels (`int8::x86`): a loaded line is one 4-k
//! group of all 16 rows, already the `vpdpbusd` operand.

use super::super::int8::x86::{four, Simd};
use super::super::int8::BLOCK;
use super::Q8_0;
use std::arch::x86_64::*;

impl Simd for Q8_0 {
    #[inline(always)]
    unsafe fn line_512<const M: usize, const C: usize>(
        group: __m512i,
        g: usize,
        a: &[i8],
        sums: &mut [[__m512i; C]; M],
    ) {
        for (r, sums) in sums.iter_mut().enumerate() {
            let a4 = _mm512_set1_epi32(four(a, r * BLOCK + g * 4));
            sums[g % C] = _mm512_dpbusd_epi32(sums[g % C], group, a4);
        }
    }

    #[inline(always)]
    unsafe fn line_256<const M: usize>(
        [lo, hi]: [__m256i; 2],
        g: usize,
        a: &[i8],
        sums: &mut [[__m256i; 2]; M],
    ) {
        for (r, [sum_lo, sum_hi]) in sums.iter_mut().enumerate() {
            let a4 = _mm256_set1_epi32(four(a, r * BLOCK + g * 4));
            *sum_lo = _mm256_dpbusd_avx_epi32(*sum_lo, lo, a4);
            *sum_hi = _mm256_dpbusd_avx_epi32(*sum_hi, hi, a4);
        }
    }
}
