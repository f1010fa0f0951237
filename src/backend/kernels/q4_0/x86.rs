//! Q4_0's inner arithmetic for the x86-64 kernels (`int8::x86`): each loaded line of nibbles
//! is widened into two `vpdpbusd` operands, `& 0x0F` for k = 4l.. and `>> 4 & 0x0F` for
//! k = 16 + 4l...

use super::super::int8::x86::{four, Simd};
use super::super::int8::BLOCK;
use super::Q4_0;
use std::arch::x86_64::*;

impl Simd for Q4_0 {
    /// The two operands go to partial sums in issue order (2l, 2l + 1), spread over C.
    #[inline(always)]
    unsafe fn line_512<const M: usize, const C: usize>(
        line: __m512i,
        l: usize,
        a: &[i8],
        sums: &mut [[__m512i; C]; M],
    ) {
        let nibble = _mm512_set1_epi8(0x0F);
        let lo = _mm512_and_si512(line, nibble);
        let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(line), nibble);
        for (r, sums) in sums.iter_mut().enumerate() {
            let a_lo = _mm512_set1_epi32(four(a, r * BLOCK + l * 4));
            let a_hi = _mm512_set1_epi32(four(a, r * BLOCK + 16 + l * 4));
            sums[(2 * l) % C] = _mm512_dpbusd_epi32(sums[(2 * l) % C], lo, a_lo);
            sums[(2 * l + 1) % C] = _mm512_dpbusd_epi32(sums[(2 * l + 1) % C], hi, a_hi);
        }
    }

    #[inline(always)]
    unsafe fn line_256<const M: usize>(
        halves: [__m256i; 2],
        l: usize,
        a: &[i8],
        sums: &mut [[__m256i; 2]; M],
    ) {
        let nibble = _mm256_set1_epi8(0x0F);
        let lo = [
            _mm256_and_si256(halves[0], nibble),
            _mm256_and_si256(halves[1], nibble),
        ];
        let hi = [
            _mm256_and_si256(_mm256_srli_epi16::<4>(halves[0]), nibble),
            _mm256_and_si256(_mm256_srli_epi16::<4>(halves[1]), nibble),
        ];
        for (r, sums) in sums.iter_mut().enumerate() {
            let a_lo = _mm256_set1_epi32(four(a, r * BLOCK + l * 4));
            let a_hi = _mm256_set1_epi32(four(a, r * BLOCK + 16 + l * 4));
            for half in 0..2 {
                sums[half] = _mm256_dpbusd_avx_epi32(sums[half], lo[half], a_lo);
                sums[half] = _mm256_dpbusd_avx_epi32(sums[half], hi[half], a_hi);
            }
        }
    }
}
