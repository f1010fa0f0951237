//! What the int8 weight kernels (`q8_0`, `q4_0`) share: activations quantized once per row,
//! and the driver that spreads a matrix's 16-row tiles over candle's thread pool.
//!
//! Both kernels store weights as unsigned bytes (`w + bias`, bias 128 for Q8_0 and 8 for
//! Q4_0) so that `vpdpbusd` (u8 × i8) applies; the activations keep their raw block sums and
//! each kernel removes its own `bias · Σa`.

/// Output rows per tile: one 512-bit register of i32/f32 lanes.
pub const TILE_ROWS: usize = 16;
/// Weights and activations per block (Q8_0 and Q4_0 alike).
pub(super) const BLOCK: usize = 32;
/// Batch rows one tile call computes at most: each weight register is reused this often.
pub(super) const MAX_ROWS: usize = 8;

/// Rows of activations quantized to Q8_0 blocks, as ggml's `quantize_row_q8_0` does it
/// (scale `amax / 127` kept as f16, values rounded half away from zero), so that our sums
/// see the same integers as candle's own quantized matmuls.
///
/// Stored block-major (`[block][row]`): the rows that a kernel call shares a weight load
/// between then lie at fixed offsets from one pointer per block, instead of needing one
/// register per row.
#[derive(Debug)]
pub struct QuantizedRows {
    rows: usize,
    k: usize,
    /// `[block][row][32]`.
    qs: Vec<i8>,
    /// `[block][row]` activation scale, f16-rounded.
    scales: Vec<f32>,
    /// `[block][row]` `Σ a`: times the weights' bias, what the unsigned weights add to each
    /// block's sum.
    sums: Vec<i32>,
}

impl QuantizedRows {
    /// Quantizes `rows` rows of `k` floats (`x.len() == rows * k`, k a multiple of 32).
    pub fn new(x: &[f32], rows: usize, k: usize) -> Self {
        assert!(
            k.is_multiple_of(BLOCK),
            "k = {k} is not a multiple of {BLOCK}"
        );
        assert_eq!(x.len(), rows * k, "input size");
        let blocks = k / BLOCK;
        let mut this = Self {
            rows,
            k,
            qs: vec![0; rows * k],
            scales: vec![0.0; rows * blocks],
            sums: vec![0; rows * blocks],
        };
        for (i, xs) in x.chunks_exact(BLOCK).enumerate() {
            let (row, b) = (i / blocks, i % blocks);
            let at = b * rows + row;
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut sum = 0i32;
            for (q, v) in this.qs[at * BLOCK..][..BLOCK].iter_mut().zip(xs) {
                *q = (v * inv).round() as i8;
                sum += i32::from(*q);
            }
            this.scales[at] = half::f16::from_f32(d).to_f32();
            this.sums[at] = sum;
        }
        this
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// Block `b` of rows `r0..r0 + m`: values (`m × 32`), scales and sums (`m` each).
    pub(super) fn block(&self, b: usize, r0: usize, m: usize) -> (&[i8], &[f32], &[i32]) {
        let at = b * self.rows + r0;
        (
            &self.qs[at * BLOCK..][..m * BLOCK],
            &self.scales[at..][..m],
            &self.sums[at..][..m],
        )
    }
}

/// Four activation bytes from `at`, as the i32 that `vpdpbusd` broadcasts.
#[inline(always)]
#[cfg(target_arch = "x86_64")]
pub(super) fn four(a: &[i8], at: usize) -> i32 {
    let bytes: [i8; 4] = a[at..at + 4].try_into().expect("four bytes");
    i32::from_le_bytes(bytes.map(|v| v as u8))
}

/// One packed weight matrix as the tile driver sees it.
pub(super) trait TileKernel: Sync {
    /// Output columns (weight rows), before padding to whole tiles.
    fn n(&self) -> usize;
    fn tiles(&self) -> usize;
    /// Computes up to [`MAX_ROWS`] rows from `r0` of one tile into `res`; returns how many.
    fn run_tile(
        &self,
        tile: usize,
        acts: &QuantizedRows,
        r0: usize,
        res: &mut [[f32; TILE_ROWS]; MAX_ROWS],
    ) -> usize;
}

/// `out[r][..n] = acts[r] · Wᵀ` for every row of `acts`, tiles spread over the pool.
pub(super) fn matmul_tiles(w: &impl TileKernel, acts: &QuantizedRows, out: &mut [f32]) {
    let n = w.n();
    assert_eq!(out.len(), acts.rows * n, "output size");
    if acts.rows == 0 {
        return;
    }
    let out = SharedOut(out.as_mut_ptr());
    // Tiles write disjoint columns of `out`, so threads may take any of them.
    candle_core::utils::barrier_pool().execute_chunked(w.tiles(), |tiles| {
        let mut res = [[0f32; TILE_ROWS]; MAX_ROWS];
        for tile in tiles {
            let mut r0 = 0;
            while r0 < acts.rows {
                let m = w.run_tile(tile, acts, r0, &mut res);
                // SAFETY: each tile is handed to exactly one thread, and `store` writes
                // only this tile's columns of rows r0..r0 + m.
                unsafe { store(&out, n, tile, r0, &res[..m]) };
                r0 += m;
            }
        }
    });
}

/// The output pointer, shared by the pool's threads; each writes its own tiles' columns.
struct SharedOut(*mut f32);
// SAFETY: see `matmul_tiles`: writes through it never overlap between threads.
unsafe impl Sync for SharedOut {}

/// Writes one tile's results into `rows × n` output, dropping the padding columns past n.
///
/// # Safety
/// `out` points to `rows × n` floats, and no other thread writes these columns.
unsafe fn store(out: &SharedOut, n: usize, tile: usize, r0: usize, res: &[[f32; TILE_ROWS]]) {
    let col = tile * TILE_ROWS;
    let width = TILE_ROWS.min(n - col);
    for (r, values) in res.iter().enumerate() {
        let dst = out.0.add((r0 + r) * n + col);
        std::ptr::copy_nonoverlapping(values.as_ptr(), dst, width);
    }
}

/// Picks the row count (a const generic, so accumulators stay in registers) for up to
/// `$max` rows from `r0`, and how many independent partial sums each row keeps: a block's
/// vpdpbusd into one sum form a chain as long as their latency, so few rows split the chain
/// to keep the unit busy, while many rows interleave their chains anyway and need the
/// registers. Returns how many rows were done.
#[cfg(target_arch = "x86_64")]
macro_rules! dispatch_rows {
    ($kernel:ident, $max:literal, $w:ident, $tile:ident, $acts:ident, $r0:ident, $res:ident) => {{
        let m = ($acts.rows() - $r0).min($max);
        let res = &mut $res[..m];
        match m {
            1 => $kernel::<1, 4>($w, $tile, $acts, $r0, res.try_into().expect("1 row")),
            2 => $kernel::<2, 4>($w, $tile, $acts, $r0, res.try_into().expect("2 rows")),
            3 => $kernel::<3, 2>($w, $tile, $acts, $r0, res.try_into().expect("3 rows")),
            4 => $kernel::<4, 2>($w, $tile, $acts, $r0, res.try_into().expect("4 rows")),
            5 => $kernel::<5, 1>($w, $tile, $acts, $r0, res.try_into().expect("5 rows")),
            6 => $kernel::<6, 1>($w, $tile, $acts, $r0, res.try_into().expect("6 rows")),
            7 => $kernel::<7, 1>($w, $tile, $acts, $r0, res.try_into().expect("7 rows")),
            _ => $kernel::<8, 1>($w, $tile, $acts, $r0, res.try_into().expect("8 rows")),
        }
        m
    }};
}
#[cfg(target_arch = "x86_64")]
pub(super) use dispatch_rows;
