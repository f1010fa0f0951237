//! Row-wise operations of the plain-Rust forward, on `[rows, width]` row-major slices.
//!
//! Every function computes each row from that row alone, in an order that depends only on
//! the width: a row's result is bit-identical whatever other rows share the step, which is
//! what makes batched decode and chunked prefill reproduce a sequence run alone.

/// RMSNorm of each `weight.len()`-wide row of `x` into `out`. Same arithmetic as candle's
/// CPU `rms_norm` (sequential sum of squares, then `x / rms * weight`), so the two forwards
/// start each layer from the same values.
pub(super) fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let width = weight.len();
    assert_eq!(x.len(), out.len(), "rms_norm sizes");
    for (src, dst) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        let sum2: f32 = src.iter().map(|v| v * v).sum();
        let rms = (sum2 / width as f32 + eps).sqrt();
        for ((d, s), w) in dst.iter_mut().zip(src).zip(weight) {
            *d = *s / rms * *w;
        }
    }
}

/// `x += y`, element-wise (the residual connections).
pub(super) fn add_assign(x: &mut [f32], y: &[f32]) {
    assert_eq!(x.len(), y.len(), "residual sizes");
    for (a, b) in x.iter_mut().zip(y) {
        *a += *b;
    }
}

/// SwiGLU's `silu(gate) * up` for each row of `gate_up` (`[rows, 2 * ffn]`, gate columns
/// first, as the fused projection lays them out) into `out` (`[rows, ffn]`).
pub(super) fn silu_mul(gate_up: &[f32], ffn: usize, out: &mut [f32]) {
    assert_eq!(gate_up.len(), 2 * out.len(), "silu_mul sizes");
    for (src, dst) in gate_up.chunks_exact(2 * ffn).zip(out.chunks_exact_mut(ffn)) {
        let (gate, up) = src.split_at(ffn);
        for ((d, g), u) in dst.iter_mut().zip(gate).zip(up) {
            *d = *g / (1.0 + exp(-*g)) * *u;
        }
    }
}

/// Precomputed RoPE rotations, `[positions, head_dim / 2]` cos and sin.
#[derive(Debug, Clone)]
pub(super) struct RopeTables {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    /// `head_dim / 2`.
    pub half: usize,
    /// Pairs (2i, 2i + 1) when true (GGUF files), (i, i + head_dim / 2) otherwise (HF).
    pub interleaved: bool,
}

impl RopeTables {
    /// Rotates every `2 * half`-wide head of `row` (one token's q or k heads, side by side)
    /// to position `pos`.
    pub fn rotate(&self, row: &mut [f32], pos: usize) {
        let half = self.half;
        let cos = &self.cos[pos * half..][..half];
        let sin = &self.sin[pos * half..][..half];
        for head in row.chunks_exact_mut(2 * half) {
            if self.interleaved {
                for (i, pair) in head.chunks_exact_mut(2).enumerate() {
                    let (x0, x1) = (pair[0], pair[1]);
                    pair[0] = x0 * cos[i] - x1 * sin[i];
                    pair[1] = x0 * sin[i] + x1 * cos[i];
                }
            } else {
                let (lo, hi) = head.split_at_mut(half);
                for i in 0..half {
                    let (x0, x1) = (lo[i], hi[i]);
                    lo[i] = x0 * cos[i] - x1 * sin[i];
                    hi[i] = x0 * sin[i] + x1 * cos[i];
                }
            }
        }
    }
}

/// `acc + a · b`: fused where the build targets FMA (one instruction, one rounding), else a
/// multiply and an add, since `mul_add` without FMA at compile time is a libm call. Fixed
/// for a given binary either way, so results stay reproducible within it.
#[inline(always)]
pub(super) fn madd(acc: f32, a: f32, b: f32) -> f32 {
    #[cfg(target_feature = "fma")]
    {
        a.mul_add(b, acc)
    }
    #[cfg(not(target_feature = "fma"))]
    {
        acc + a * b
    }
}

/// Sum of `xs` in sixteen running lanes, then pairwise: vectorises where a sequential sum
/// cannot, and its order depends only on the length.
#[inline(always)]
pub(super) fn sum(xs: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let chunks = xs.chunks_exact(16);
    for (l, x) in lanes.iter_mut().zip(chunks.remainder()) {
        *l = *x;
    }
    for chunk in chunks {
        for (l, x) in lanes.iter_mut().zip(chunk) {
            *l += *x;
        }
    }
    let mut width = 8;
    while width > 0 {
        for i in 0..width {
            lanes[i] += lanes[i + width];
        }
        width /= 2;
    }
    lanes[0]
}

/// Largest of `xs` (−∞ if empty), in sixteen lanes with a compare-and-select, which
/// vectorises where `f32::max` (for its NaN rule) does not; exact, so any order gives it.
#[inline(always)]
pub(super) fn max(xs: &[f32]) -> f32 {
    let pick = |a: f32, b: f32| if b > a { b } else { a };
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = xs.chunks_exact(16);
    for (l, x) in lanes.iter_mut().zip(chunks.remainder()) {
        *l = *x;
    }
    for chunk in chunks {
        for (l, x) in lanes.iter_mut().zip(chunk) {
            *l = pick(*l, *x);
        }
    }
    lanes.iter().fold(f32::NEG_INFINITY, |a, &b| pick(a, b))
}

/// e^x to within ~2 ulp, in plain arithmetic that the compiler vectorises. libm's `expf` is a
/// call per element, and a 512-token prefill takes ~35 M of them in softmax and ~24 M in SiLU.
/// Arguments are clamped to [-87.3, 88.3], the range whose result is a normal f32: below it
/// the result is ~1e-38 instead of 0 (harmless as a softmax weight), above it ~2e38, not inf.
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    // ln 2 in two parts (Cephes): n · LN2_HI is exact for the n that occur, so r keeps its bits.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.3, 88.3);
    // Round x / ln 2 to the nearest integer: adding 1.5 · 2²³ leaves no fraction bits.
    let t = x * std::f32::consts::LOG2_E;
    let n = (t + 12_582_912.0) - 12_582_912.0;
    let r = x - n * LN2_HI - n * LN2_LO;
    // |r| <= ln 2 / 2: the degree-6 Taylor polynomial errs by < r⁷/7! ≈ 1.2e-7 relative.
    let p = 1.0
        + r * (1.0
            + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r / 720.0)))));
    // 2^n from its exponent bits; n + 127 is in 1..=254 for the clamped range.
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::llama::attention::Rope;
    use candle_core::{DType, Device, Tensor};

    fn values(n: usize, salt: u32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as u32).wrapping_mul(2654435761) ^ salt) % 1000)
            .map(|v| v as f32 / 250.0 - 2.0)
            .collect()
    }

    #[test]
    fn rms_norm_equals_candles_rms_norm_bit_for_bit() -> candle_core::Result<()> {
        let (rows, width) = (3, 96);
        let (x, w) = (values(rows * width, 1), values(width, 2));
        let mut got = vec![0.0; rows * width];
        rms_norm(&x, &w, 1e-5, &mut got);
        let xt = Tensor::from_slice(&x, (rows, width), &Device::Cpu)?;
        let wt = Tensor::from_slice(&w, width, &Device::Cpu)?;
        let want = candle_nn::ops::rms_norm(&xt, &wt, 1e-5)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(got, want);
        Ok(())
    }

    #[test]
    fn exp_is_within_three_ulp_of_f64_exp_over_the_normal_range() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -87.3 + 175.6 * i as f32 / 200_000.0;
            let want = f64::from(x).exp();
            let rel = ((f64::from(exp(x)) - want) / want).abs();
            worst = worst.max(rel);
        }
        // One f32 ulp is 2^-23 ≈ 1.19e-7 relative at most.
        assert!(worst < 3.0 * 1.19e-7, "worst relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) < 1e-37 && exp(1000.0) > 1e38 && exp(1000.0).is_finite());
    }

    #[test]
    fn silu_mul_multiplies_silu_of_the_gate_half_by_the_up_half() {
        let gate_up = [0.0, 1.0, -2.0, 3.0, 4.0, 5.0];
        let mut out = [0.0; 3];
        silu_mul(&gate_up, 3, &mut out);
        let silu = |x: f32| x / (1.0 + (-x).exp());
        assert_eq!(out, [0.0, silu(1.0) * 4.0, silu(-2.0) * 5.0]);
    }

    #[test]
    fn lane_sum_matches_a_plain_sum_within_rounding_at_every_tail_length() {
        for n in [0, 1, 15, 16, 17, 64, 100] {
            let x = values(n, 3);
            let want: f64 = x.iter().map(|v| f64::from(*v)).sum();
            assert!((f64::from(sum(&x)) - want).abs() < 1e-4, "n = {n}");
        }
    }

    #[test]
    fn lane_max_is_the_largest_value_at_every_tail_length() {
        assert_eq!(max(&[]), f32::NEG_INFINITY);
        for n in [1, 15, 16, 17, 64, 100] {
            let x = values(n, 4);
            let want = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&x), want, "n = {n}");
        }
    }

    /// Our tables and rotation against the candle `Rope` of the old forward, in both
    /// pairings, at positions that are not the row index.
    #[test]
    fn rope_rotates_like_candles_rope_in_both_layouts() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let (heads, head_dim, tokens) = (3, 8, 4);
        let inv_freq: Vec<f32> = (0..4).map(|i| 1.0 / 100f32.powf(i as f32 / 4.0)).collect();
        let positions = [9u32, 2, 15, 0];
        for interleaved in [true, false] {
            let rope = Rope::new(&inv_freq, 16, interleaved, DType::F32, &dev)?;
            let tables = super::super::rope_tables(&rope)?;
            let x = values(tokens * heads * head_dim, 5);
            let mut got = x.clone();
            for (row, &pos) in got.chunks_exact_mut(heads * head_dim).zip(&positions) {
                tables.rotate(row, pos as usize);
            }
            let xt = Tensor::from_slice(&x, (tokens, heads * head_dim), &dev)?;
            let (cos, sin) = rope.tables_at(&Tensor::new(&positions, &dev)?)?;
            let want = rope.apply(&xt, heads, &cos, &sin)?.flatten_all()?;
            let diff = got
                .iter()
                .zip(want.to_vec1::<f32>()?)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(diff < 1e-6, "interleaved={interleaved}: max diff {diff}");
        }
        Ok(())
    }
}
