//! The 4-bit kernel against references computed without it.
//!
//! Tolerances, per output `i` of a row (derived, not tuned):
//! - against the *quantized* arithmetic in f64 (`Σ_b dw·da·Σ w·a`, w decoded from ggml's
//!   Q4_0 bytes directly, not from our packing): only f32 rounding of the
//!   per-block products and the running sum, ≤ blocks · 2⁻²⁴ relative; we allow
//!   `1e-5 · Σ_b |term_b|`;
//! - against the f32 model (candle's dequantized Q4_0 W · unquantized x, f64): additionally
//!   the activation
//!   quantization, |x − a·d16| ≤ d·(0.5 + 127·2⁻¹¹) < 0.6·d per element, so we allow
//!   `Σ_j |W_ij| · 0.6 · d_block(j) + 1e-5 · Σ_j |W_ij x_j|`.
//!
//! Every SIMD kernel must equal the portable one bit for bit, and a row's result must not
//! depend on the batch it ran in.

use super::*;
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// (n, k): tile edges (n % 16 ≠ 0, n < 16), k of one block, k % 256 ≠ 0, SmolLM2 widths.
const SHAPES: [(usize, usize); 7] = [
    (16, 32),
    (17, 32),
    (1, 64),
    (33, 576),
    (40, 1536),
    (48, 96),
    (7, 608),
];
const MAX_BATCH: usize = 17;

struct Case {
    n: usize,
    k: usize,
    q4: QTensor,
    /// Dequantized weights `[n][k]`.
    w: Vec<f32>,
    /// `MAX_BATCH × k` inputs; some blocks all zero, some with one large outlier.
    x: Vec<f32>,
}

fn case(n: usize, k: usize, seed: u64) -> Case {
    let mut rng = StdRng::seed_from_u64(seed);
    let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
    let q4 = QTensor::quantize(
        &Tensor::from_vec(w, (n, k), &Device::Cpu).expect("weights"),
        GgmlDType::Q4_0,
    )
    .expect("quantize");
    let w = q4
        .dequantize(&Device::Cpu)
        .and_then(|t| t.flatten_all()?.to_vec1())
        .expect("dequantize");
    let mut x: Vec<f32> = (0..MAX_BATCH * k)
        .map(|_| rng.random_range(-3.0..3.0))
        .collect();
    x[..BLOCK].fill(0.0);
    if let Some(v) = x.get_mut(3 * BLOCK + 5) {
        *v = 250.0;
    }
    Case { n, k, q4, w, x }
}

/// Value `j` of a ggml Q4_0 block, as ggml's `dequantize_row_q4_0` reads it.
fn ggml_q4_0_value(block: &[u8], j: usize) -> i32 {
    let qs = &block[2..];
    let nibble = if j < 16 {
        qs[j] & 0x0F
    } else {
        qs[j - 16] >> 4
    };
    i32::from(nibble) - 8
}

fn packed(c: &Case, isa: Isa) -> PackedQ4_0 {
    PackedQ4_0::from_qtensors(&[&c.q4])
        .and_then(|p| p.with_isa(isa))
        .expect("pack")
}

fn run(p: &PackedQ4_0, x: &[f32], rows: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; rows * p.n()];
    p.matmul(&x[..rows * p.k()], rows, &mut out);
    out
}

fn available() -> impl Iterator<Item = Isa> {
    Isa::ALL.into_iter().filter(|isa| isa.is_available())
}

#[test]
fn every_isa_matches_the_portable_kernel_bit_for_bit() {
    for (seed, &(n, k)) in SHAPES.iter().enumerate() {
        let c = case(n, k, seed as u64);
        let reference = packed(&c, Isa::Portable);
        for isa in available() {
            let p = packed(&c, isa);
            for rows in 1..=MAX_BATCH {
                let (got, want) = (run(&p, &c.x, rows), run(&reference, &c.x, rows));
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{isa:?} {n}x{k} batch {rows}");
            }
        }
    }
}

#[test]
fn portable_kernel_matches_quantized_arithmetic_in_f64() {
    for (seed, &(n, k)) in SHAPES.iter().enumerate() {
        let c = case(n, k, 100 + seed as u64);
        let p = packed(&c, Isa::Portable);
        let got = run(&p, &c.x, MAX_BATCH);
        let acts = QuantizedRows::new(&c.x, MAX_BATCH, k);
        let raw = c.q4.data().expect("bytes");
        for r in 0..MAX_BATCH {
            for i in 0..n {
                let (mut want, mut scale) = (0f64, 0f64);
                for b in 0..k / BLOCK {
                    let block = &raw[(i * (k / BLOCK) + b) * Q4_0_BYTES..][..Q4_0_BYTES];
                    let dw = half::f16::from_le_bytes([block[0], block[1]]).to_f64();
                    let (a, a_scale, _) = acts.block(b, r, 1);
                    let dot: i32 = (0..BLOCK)
                        .map(|j| i32::from(a[j]) * ggml_q4_0_value(block, j))
                        .sum();
                    let term = dw * f64::from(a_scale[0]) * f64::from(dot);
                    want += term;
                    scale += term.abs();
                }
                let diff = (f64::from(got[r * n + i]) - want).abs();
                assert!(
                    diff <= 1e-5 * scale,
                    "{n}x{k} row {r} col {i}: {diff} vs {scale}"
                );
            }
        }
    }
}

#[test]
fn every_isa_matches_f32_reference_within_activation_rounding() {
    for (seed, &(n, k)) in SHAPES.iter().enumerate() {
        let c = case(n, k, 200 + seed as u64);
        for isa in available() {
            let got = run(&packed(&c, isa), &c.x, MAX_BATCH);
            for r in 0..MAX_BATCH {
                let x = &c.x[r * k..][..k];
                for i in 0..n {
                    let w = &c.w[i * k..][..k];
                    let (mut want, mut bound, mut mag) = (0f64, 0f64, 0f64);
                    for (wb, xb) in w.chunks_exact(BLOCK).zip(x.chunks_exact(BLOCK)) {
                        let d = xb.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                        for (&wj, &xj) in wb.iter().zip(xb) {
                            let (wj, xj) = (f64::from(wj), f64::from(xj));
                            want += wj * xj;
                            mag += (wj * xj).abs();
                            bound += wj.abs() * 0.6 * f64::from(d);
                        }
                    }
                    let diff = (f64::from(got[r * n + i]) - want).abs();
                    let tol = bound + 1e-5 * mag;
                    assert!(
                        diff <= tol,
                        "{isa:?} {n}x{k} row {r} col {i}: {diff} > {tol}"
                    );
                }
            }
        }
    }
}

#[test]
fn a_rows_result_does_not_depend_on_its_batch() {
    let c = case(40, 576, 7);
    for isa in available() {
        let p = packed(&c, isa);
        let batch = run(&p, &c.x, MAX_BATCH);
        for r in 0..MAX_BATCH {
            let alone = run(&p, &c.x[r * c.k..], 1);
            let same = alone
                .iter()
                .zip(&batch[r * c.n..])
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{isa:?} row {r}");
        }
    }
}

#[test]
fn prefetch_distance_does_not_change_results() {
    let c = case(33, 576, 8);
    for isa in available() {
        let with = run(&packed(&c, isa), &c.x, 9);
        let without = run(&packed(&c, isa).with_prefetch(0), &c.x, 9);
        assert_eq!(with, without, "{isa:?}");
    }
}

#[test]
fn stacked_matrices_equal_the_separate_ones_side_by_side() {
    let (a, b) = (case(24, 576, 9), case(17, 576, 10));
    let stacked = PackedQ4_0::from_qtensors(&[&a.q4, &b.q4]).expect("stack");
    assert_eq!(stacked.n(), 41);
    let rows = 5;
    let got = run(&stacked, &a.x, rows);
    let (left, right) = (
        run(&packed(&a, Isa::best()), &a.x, rows),
        run(&packed(&b, Isa::best()), &a.x, rows),
    );
    for r in 0..rows {
        assert_eq!(got[r * 41..][..24], left[r * 24..][..24], "row {r} left");
        assert_eq!(
            got[r * 41 + 24..][..17],
            right[r * 17..][..17],
            "row {r} right"
        );
    }
}

#[test]
fn rejects_other_formats_mismatched_k_partial_blocks_and_wrong_byte_counts() {
    let q8_weights = QTensor::quantize(
        &Tensor::zeros((16, 64), candle_core::DType::F32, &Device::Cpu).expect("zeros"),
        GgmlDType::Q8_0,
    )
    .expect("q8_0");
    assert!(PackedQ4_0::from_qtensors(&[&q8_weights]).is_err());
    let (a, b) = (case(16, 64, 11), case(16, 96, 12));
    assert!(PackedQ4_0::from_qtensors(&[&a.q4, &b.q4]).is_err());
    assert!(PackedQ4_0::from_q4_0_bytes(&[0; 18], 1, 33).is_err());
    assert!(PackedQ4_0::from_q4_0_bytes(&[0; 18], 1, 16).is_err());
    assert!(PackedQ4_0::from_q4_0_bytes(&[0; 17], 1, 32).is_err());
    assert!(PackedQ4_0::from_q4_0_bytes(&[0; 36], 1, 32).is_err());
    assert!(PackedQ4_0::from_q4_0_bytes(&[], 0, 32).is_err());
    assert!(PackedQ4_0::from_q4_0_bytes(&[0; 18], 1, 32).is_ok());
}

#[test]
fn packed_weights_take_half_the_bytes_of_q8_0_plus_the_same_scales() {
    let (n, k) = (576, 576);
    let q4 = packed(&case(n, k, 13), Isa::Portable);
    let q8 = crate::backend::kernels::q8_0::PackedQ8_0::from_q8_0_bytes(
        &vec![0; n * (k / BLOCK) * 34],
        n,
        k,
    )
    .expect("q8_0");
    let scales = n * (k / BLOCK) * 2;
    assert_eq!(q4.weight_bytes() - scales, (q8.weight_bytes() - scales) / 2);
    assert_eq!(q4.weight_bytes(), n * (k / BLOCK) * Q4_0_BYTES);
}
