//! The tests every int8 format runs ([`format_tests!`]), against references computed without
//! the kernels.
//!
//! Tolerances, per output `i` of a row (derived, not tuned):
//! - against the *quantized* arithmetic in f64 (`Σ_b dw·da·Σ w·a`, w decoded from ggml's
//!   bytes directly by [`Reference`], not from our packing): only f32 rounding of the
//!   per-block products and the running sum, ≤ blocks · 2⁻²⁴ relative; we allow
//!   `1e-5 · Σ_b |term_b|`;
//! - against the f32 model (candle's dequantized W · unquantized x, f64): additionally the
//!   activation quantization, |x − a·d16| ≤ d·(0.5 + 127·2⁻¹¹) < 0.6·d per element, so we
//!   allow `Σ_j |W_ij| · 0.6 · d_block(j) + 1e-5 · Σ_j |W_ij x_j|`.
//!
//! Every SIMD kernel must equal the portable one bit for bit, and a row's result must not
//! depend on the batch it ran in.

use super::{Format, Packed, QuantizedRows, BLOCK, TILE_ROWS};
use crate::backend::kernels::Isa;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What the tests need of a format besides its kernels: ggml's own reading of its bytes.
pub trait Reference: Format {
    /// Weight `j` (0..32) of one ggml block (`BLOCK_BYTES`, scale first), as ggml's
    /// `dequantize_row_*` reads it.
    fn ggml_weight(block: &[u8], j: usize) -> i32;
}

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

pub struct Case {
    n: usize,
    k: usize,
    q: QTensor,
    /// Dequantized weights `[n][k]`.
    w: Vec<f32>,
    /// `MAX_BATCH × k` inputs; some blocks all zero, some with one large outlier.
    x: Vec<f32>,
}

pub fn case<F: Format>(n: usize, k: usize, seed: u64) -> Case {
    let mut rng = StdRng::seed_from_u64(seed);
    let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
    let q = QTensor::quantize(
        &Tensor::from_vec(w, (n, k), &Device::Cpu).expect("weights"),
        F::DTYPE,
    )
    .expect("quantize");
    let w = q
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
    Case { n, k, q, w, x }
}

pub fn packed<F: Format>(c: &Case, isa: Isa) -> Packed<F> {
    Packed::from_qtensors(&[&c.q])
        .and_then(|p| p.with_isa(isa))
        .expect("pack")
}

fn run<F: Format>(p: &Packed<F>, x: &[f32], rows: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; rows * p.n()];
    p.matmul(&x[..rows * p.k()], rows, &mut out);
    out
}

/// The instruction sets this CPU has, noted as exercised by the calling test.
fn available() -> impl Iterator<Item = Isa> {
    let isas: Vec<Isa> = Isa::ALL
        .into_iter()
        .filter(|isa| isa.is_available())
        .collect();
    crate::backend::kernels::note_tested(&isas);
    isas.into_iter()
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits())
}

pub fn every_isa_matches_the_portable_kernel_bit_for_bit<F: Format>() {
    for (seed, &(n, k)) in SHAPES.iter().enumerate() {
        let c = case::<F>(n, k, seed as u64);
        let reference = packed::<F>(&c, Isa::Portable);
        for isa in available() {
            let p = packed::<F>(&c, isa);
            for rows in 1..=MAX_BATCH {
                let (got, want) = (run(&p, &c.x, rows), run(&reference, &c.x, rows));
                assert!(same_bits(&got, &want), "{isa:?} {n}x{k} batch {rows}");
            }
        }
    }
}

pub fn portable_kernel_matches_quantized_arithmetic_in_f64<F: Reference>() {
    for (seed, &(n, k)) in SHAPES.iter().enumerate() {
        let c = case::<F>(n, k, 100 + seed as u64);
        let got = run(&packed::<F>(&c, Isa::Portable), &c.x, MAX_BATCH);
        let acts = QuantizedRows::new(&c.x, MAX_BATCH, k);
        let raw = c.q.data().expect("bytes");
        for r in 0..MAX_BATCH {
            for i in 0..n {
                let (mut want, mut scale) = (0f64, 0f64);
                for b in 0..k / BLOCK {
                    let block = &raw[(i * (k / BLOCK) + b) * F::BLOCK_BYTES..][..F::BLOCK_BYTES];
                    let dw = half::f16::from_le_bytes([block[0], block[1]]).to_f64();
                    let (a, a_scale, _) = acts.block(b, r, 1);
                    let dot: i32 = (0..BLOCK)
                        .map(|j| i32::from(a[j]) * F::ggml_weight(block, j))
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

pub fn every_isa_matches_f32_reference_within_activation_rounding<F: Format>() {
    for (seed, &(n, k)) in SHAPES.iter().enumerate() {
        let c = case::<F>(n, k, 200 + seed as u64);
        for isa in available() {
            let got = run(&packed::<F>(&c, isa), &c.x, MAX_BATCH);
            for r in 0..MAX_BATCH {
                let x = &c.x[r * k..][..k];
                for i in 0..n {
                    let (want, tol) = f32_reference(&c.w[i * k..][..k], x);
                    let diff = (f64::from(got[r * n + i]) - want).abs();
                    assert!(
                        diff <= tol,
                        "{isa:?} {n}x{k} row {r} col {i}: {diff} > {tol}"
                    );
                }
            }
        }
    }
}

/// `w · x` in f64 and its tolerance (see the module comment).
fn f32_reference(w: &[f32], x: &[f32]) -> (f64, f64) {
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
    (want, bound + 1e-5 * mag)
}

pub fn a_rows_result_does_not_depend_on_its_batch<F: Format>() {
    let c = case::<F>(40, 576, 7);
    for isa in available() {
        let p = packed::<F>(&c, isa);
        let batch = run(&p, &c.x, MAX_BATCH);
        for r in 0..MAX_BATCH {
            let alone = run(&p, &c.x[r * c.k..], 1);
            assert!(same_bits(&alone, &batch[r * c.n..]), "{isa:?} row {r}");
        }
    }
}

pub fn prefetch_distance_does_not_change_results<F: Format>() {
    let c = case::<F>(33, 576, 8);
    for isa in available() {
        let with = run(&packed::<F>(&c, isa), &c.x, 9);
        let without = run(&packed::<F>(&c, isa).with_prefetch(0), &c.x, 9);
        assert_eq!(with, without, "{isa:?}");
    }
}

pub fn stacked_matrices_equal_the_separate_ones_side_by_side<F: Format>() {
    let (a, b) = (case::<F>(24, 576, 9), case::<F>(17, 576, 10));
    let stacked = Packed::<F>::from_qtensors(&[&a.q, &b.q]).expect("stack");
    assert_eq!(stacked.n(), 41);
    let rows = 5;
    let got = run(&stacked, &a.x, rows);
    let (left, right) = (
        run(&packed::<F>(&a, Isa::best()), &a.x, rows),
        run(&packed::<F>(&b, Isa::best()), &a.x, rows),
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

pub fn rejects_other_formats_mismatched_k_partial_blocks_and_wrong_byte_counts<F: Format>() {
    let zeros = Tensor::zeros((16, 64), candle_core::DType::F32, &Device::Cpu).expect("zeros");
    for dtype in [GgmlDType::F32, GgmlDType::Q8_0, GgmlDType::Q4_0] {
        let other = QTensor::quantize(&zeros, dtype).expect("quantize");
        let packs = Packed::<F>::from_qtensors(&[&other]).is_ok();
        assert_eq!(packs, dtype == F::DTYPE, "{dtype:?}");
    }
    let (a, b) = (case::<F>(16, 64, 11), case::<F>(16, 96, 12));
    assert!(Packed::<F>::from_qtensors(&[&a.q, &b.q]).is_err());
    let block = F::BLOCK_BYTES;
    let from = |bytes: usize, n, k| Packed::<F>::from_ggml_bytes(&vec![0; bytes], n, k);
    assert!(from(block, 1, 33).is_err());
    assert!(from(block, 1, 16).is_err());
    assert!(from(block - 1, 1, 32).is_err());
    assert!(from(2 * block, 1, 32).is_err());
    assert!(from(0, 0, 32).is_err());
    assert!(from(block, 1, 32).is_ok());
}

pub fn runs_on_every_isa_this_cpu_has_and_refuses_the_others<F: Format>() {
    let c = case::<F>(16, 32, 14);
    assert_eq!(packed::<F>(&c, Isa::best()).isa(), Isa::best());
    for isa in Isa::ALL {
        let p = Packed::<F>::from_qtensors(&[&c.q]).expect("pack");
        let chosen = p.with_isa(isa).map(|p| p.isa()).ok();
        assert_eq!(
            chosen,
            Some(isa).filter(|isa| isa.is_available()),
            "{isa:?}"
        );
    }
}

pub fn packed_weights_take_the_bytes_of_ggml_blocks_padded_to_whole_tiles<F: Format>() {
    for (n, k) in SHAPES {
        let padded = n.div_ceil(TILE_ROWS) * TILE_ROWS;
        let p = packed::<F>(&case::<F>(n, k, 15), Isa::Portable);
        assert_eq!(
            p.weight_bytes(),
            padded * (k / BLOCK) * F::BLOCK_BYTES,
            "{n}x{k}"
        );
    }
}

/// The tests above as one `#[test]` each, for format `$format` (a [`Reference`]).
macro_rules! format_tests {
    ($format:ty) => {
        use $crate::backend::kernels::int8::harness as h;

        #[test]
        fn every_isa_matches_the_portable_kernel_bit_for_bit() {
            h::every_isa_matches_the_portable_kernel_bit_for_bit::<$format>();
        }

        #[test]
        fn portable_kernel_matches_quantized_arithmetic_in_f64() {
            h::portable_kernel_matches_quantized_arithmetic_in_f64::<$format>();
        }

        #[test]
        fn every_isa_matches_f32_reference_within_activation_rounding() {
            h::every_isa_matches_f32_reference_within_activation_rounding::<$format>();
        }

        #[test]
        fn a_rows_result_does_not_depend_on_its_batch() {
            h::a_rows_result_does_not_depend_on_its_batch::<$format>();
        }

        #[test]
        fn prefetch_distance_does_not_change_results() {
            h::prefetch_distance_does_not_change_results::<$format>();
        }

        #[test]
        fn stacked_matrices_equal_the_separate_ones_side_by_side() {
            h::stacked_matrices_equal_the_separate_ones_side_by_side::<$format>();
        }

        #[test]
        fn rejects_other_formats_mismatched_k_partial_blocks_and_wrong_byte_counts() {
            h::rejects_other_formats_mismatched_k_partial_blocks_and_wrong_byte_counts::<$format>();
        }

        #[test]
        fn runs_on_every_isa_this_cpu_has_and_refuses_the_others() {
            h::runs_on_every_isa_this_cpu_has_and_refuses_the_others::<$format>();
        }

        #[test]
        fn packed_weights_take_the_bytes_of_ggml_blocks_padded_to_whole_tiles() {
            h::packed_weights_take_the_bytes_of_ggml_blocks_padded_to_whole_tiles::<$format>();
        }
    };
}
pub(in crate::backend::kernels) use format_tests;
