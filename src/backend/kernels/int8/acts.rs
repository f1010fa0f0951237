//! Activations quantized for the int8 kernels: once per input row, to the same Q8_0 blocks
//! as ggml's, laid out for the tile kernels' row steps.

use super::{BLOCK, MAX_ROWS};

/// Rows of activations quantized to Q8_0 blocks, as ggml's `quantize_row_q8_0` does it
/// (scale `amax / 127` kept as f16, values rounded half away from zero), so that our sums
/// see the same integers as candle's own quantized matmuls.
///
/// Stored in chunks of [`MAX_ROWS`] rows, block-major inside a chunk
/// (`[chunk][block][row of chunk]`): the rows that a kernel call shares a weight load
/// between (never more than a chunk, never across one) lie at fixed offsets from one pointer
/// per block, and quantizing a row writes only inside its own chunk.
#[derive(Debug, Default)]
pub struct QuantizedRows {
    rows: usize,
    k: usize,
    /// `[chunk][block][row][32]`.
    qs: Vec<i8>,
    /// `[chunk][block][row]` activation scale, f16-rounded.
    scales: Vec<f32>,
    /// `[chunk][block][row]` `Σ a`: times the weights' bias, what the unsigned weights add
    /// to each block's sum.
    sums: Vec<i32>,
}

impl QuantizedRows {
    /// Quantizes `rows` rows of `k` floats (`x.len() == rows * k`, k a multiple of 32).
    pub fn new(x: &[f32], rows: usize, k: usize) -> Self {
        let mut this = Self::default();
        this.quantize(x, rows, k);
        this
    }

    /// As [`Self::new`], into this value's buffers: a forward that quantizes every layer's
    /// inputs reuses one allocation instead of faulting in fresh pages per matmul.
    pub fn quantize(&mut self, x: &[f32], rows: usize, k: usize) {
        assert!(
            k.is_multiple_of(BLOCK),
            "k = {k} is not a multiple of {BLOCK}"
        );
        assert_eq!(x.len(), rows * k, "input size");
        let blocks = k / BLOCK;
        // Whole chunks, so that every row's place exists; padding rows are never read.
        let padded = rows.next_multiple_of(MAX_ROWS);
        (self.rows, self.k) = (rows, k);
        self.qs.resize(padded * k, 0);
        self.scales.resize(padded * blocks, 0.0);
        self.sums.resize(padded * blocks, 0);
        for (row, x_row) in x.chunks_exact(k).enumerate() {
            for (b, xs) in x_row.chunks_exact(BLOCK).enumerate() {
                let xs: &[f32; BLOCK] = xs.try_into().expect("one block");
                let at = self.at(b, row);
                let d = abs_max(xs) / 127.0;
                let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
                let qs: &mut [i8; BLOCK] = (&mut self.qs[at * BLOCK..][..BLOCK])
                    .try_into()
                    .expect("one block");
                self.sums[at] = quantize_block(xs, inv, qs);
                self.scales[at] = half::f16::from_f32(d).to_f32();
            }
        }
    }

    /// Index of (block `b`, row `row`) in `scales` and `sums` (times 32: in `qs`).
    #[inline(always)]
    fn at(&self, b: usize, row: usize) -> usize {
        let blocks = self.k / BLOCK;
        ((row / MAX_ROWS) * blocks + b) * MAX_ROWS + row % MAX_ROWS
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// Block `b` of rows `r0..r0 + m`: values (`m × 32`), scales and sums (`m` each). The
    /// rows must lie in one chunk, as the tile driver's row steps (at most [`MAX_ROWS`]
    /// from a multiple of their size) always do.
    #[inline(always)]
    pub(in crate::backend::kernels) fn block(
        &self,
        b: usize,
        r0: usize,
        m: usize,
    ) -> (&[i8], &[f32], &[i32]) {
        debug_assert!(
            r0 % MAX_ROWS + m <= MAX_ROWS,
            "rows {r0}..+{m} cross a chunk"
        );
        let at = self.at(b, r0);
        (
            &self.qs[at * BLOCK..][..m * BLOCK],
            &self.scales[at..][..m],
            &self.sums[at..][..m],
        )
    }
}

/// Quantizes `x` (`rows × k`) into this thread's reusable [`QuantizedRows`] and runs `f` on
/// them: a forward step quantizes ~120 inputs, and fresh buffers for each (up to a MB for a
/// prefill chunk) were page faults and zeroing on every call. `f` must not quantize again on
/// this thread (it holds the buffers); the tile driver does not.
pub(super) fn with_quantized<R>(
    x: &[f32],
    rows: usize,
    k: usize,
    f: impl FnOnce(&QuantizedRows) -> R,
) -> R {
    thread_local! {
        static ACTS: std::cell::RefCell<QuantizedRows> = std::cell::RefCell::default();
    }
    ACTS.with_borrow_mut(|acts| {
        acts.quantize(x, rows, k);
        f(acts)
    })
}

/// The largest |x| of a block. Sixteen lanes of running maxima, halved pairwise at the end,
/// and a compare-and-select rather than `f32::max` (whose NaN rule keeps the compiler
/// scalar), so that it vectorises; max is exact, so the result is a sequential fold's.
#[inline(always)]
fn abs_max(xs: &[f32; BLOCK]) -> f32 {
    let max = |a: f32, b: f32| if b > a { b } else { a };
    let mut lanes = [0f32; 16];
    for chunk in xs.chunks_exact(16) {
        for (m, v) in lanes.iter_mut().zip(chunk) {
            *m = max(*m, v.abs());
        }
    }
    let mut width = 8;
    while width > 0 {
        for i in 0..width {
            lanes[i] = max(lanes[i], lanes[i + width]);
        }
        width /= 2;
    }
    lanes[0]
}

/// `qs = round(xs · inv)` (half away from zero, as ggml's `roundf`) and returns `Σ qs`, in
/// plain arithmetic that vectorises (`round` and saturating `as` casts stay scalar here):
/// trunc plus a select for the rounding, and the integer read off the float's bits after
/// adding 1.5 · 2²³. Exact for |xs · inv| <= 127, which the scale guarantees.
#[inline(always)]
fn quantize_block(xs: &[f32; BLOCK], inv: f32, qs: &mut [i8; BLOCK]) -> i32 {
    const MAGIC: f32 = 12_582_912.0;
    let mut ints = [0i32; BLOCK];
    for (q, v) in ints.iter_mut().zip(xs) {
        let y = v * inv;
        let t = y.trunc();
        let r = if (y - t).abs() >= 0.5 {
            t + 1f32.copysign(y)
        } else {
            t
        };
        *q = (r + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32;
    }
    for (q, v) in qs.iter_mut().zip(&ints) {
        *q = *v as i8;
    }
    ints.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    /// Rows with what rounding must get right: values that scale to exact halves (±0.5,
    /// ±2.5: away from zero, not to even), a zero block, one block of one nonzero value,
    /// and ordinary values.
    fn awkward_rows(rows: usize, k: usize) -> Vec<f32> {
        let mut x: Vec<f32> = (0..rows * k)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761) % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        // Block 0 of row 0: amax 127, so the scale is 1 and halves stay halves.
        x[..8].copy_from_slice(&[127.0, 0.5, -0.5, 2.5, -2.5, 126.5, -1.5, 3.5]);
        x[BLOCK..2 * BLOCK].fill(0.0);
        x[2 * BLOCK..3 * BLOCK].fill(0.0);
        x[2 * BLOCK + 5] = -3.0e-3;
        x
    }

    #[test]
    fn activations_quantize_to_exactly_ggmls_q8_0_blocks() -> candle_core::Result<()> {
        let (rows, k) = (3, 160);
        let x = awkward_rows(rows, k);
        let ours = QuantizedRows::new(&x, rows, k);
        let t = Tensor::from_slice(&x, (rows, k), &Device::Cpu)?;
        let ggml = QTensor::quantize(&t, GgmlDType::Q8_0)?.data()?.into_owned();
        for (i, block) in ggml.chunks_exact(2 + BLOCK).enumerate() {
            let (row, b) = (i / (k / BLOCK), i % (k / BLOCK));
            let (qs, scale, sum) = ours.block(b, row, 1);
            let want_qs: Vec<i8> = block[2..].iter().map(|&q| q as i8).collect();
            let want_scale = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
            assert_eq!(qs, &want_qs[..], "values of row {row} block {b}");
            assert_eq!(scale[0], want_scale, "scale of row {row} block {b}");
            let want_sum: i32 = want_qs.iter().map(|&q| i32::from(q)).sum();
            assert_eq!(sum[0], want_sum, "sum of row {row} block {b}");
        }
        Ok(())
    }

    #[test]
    fn halves_round_away_from_zero_and_a_zero_block_stays_zero() {
        let x = awkward_rows(1, 96);
        let q = QuantizedRows::new(&x, 1, 96);
        let (qs, _, _) = q.block(0, 0, 1);
        assert_eq!(&qs[..8], &[127, 1, -1, 3, -3, 127, -2, 4]);
        let (qs, scale, sum) = q.block(1, 0, 1);
        assert!(qs.iter().all(|&v| v == 0));
        assert_eq!((scale[0], sum[0]), (0.0, 0));
    }
}
