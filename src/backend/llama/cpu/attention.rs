//! Causal grouped-query attention of the plain-Rust forward, per sequence over its own KV.
//!
//! Work is split into items of (segment, KV head, block of query rows). An item computes
//! every query head of its KV head's group for its rows, so each key and value row is
//! loaded once for all heads that share it. Each query row is computed alone, in an order
//! fixed by its position and the head dim: results do not depend on which rows share the
//! step, how a prompt was chunked, or how items were spread over threads.

use super::kv::KEY_BLOCK as KEYS;
use super::ops::{exp, madd, max, sum};

/// Query rows per work item: small enough to spread one long prefill over the threads,
/// large enough that a decode step (one row per segment) is one item per KV head.
const ROWS_PER_ITEM: usize = 16;

/// Below this many multiply-adds a step's attention runs on the calling thread: waking the
/// pool costs a few microseconds, more than a short decode's attention takes.
const PARALLEL_MIN_MACS: usize = 1 << 16;

/// Head counts of the model.
#[derive(Debug, Clone, Copy)]
pub(super) struct Heads {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Where one sequence's queries are: `rows` query rows from `offset` in the step's
/// activation, at positions `start..start + rows`.
#[derive(Debug, Clone, Copy)]
pub(super) struct SegRows {
    pub offset: usize,
    pub start: usize,
    pub rows: usize,
}

/// One unit of parallel work: rows `r0..r1` of segment `seg`, KV head `kv_head`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Item {
    seg: usize,
    kv_head: usize,
    r0: usize,
    r1: usize,
}

/// The work items of a step, and its total multiply-adds (to decide on threads).
pub(super) fn plan(segments: &[SegRows], kv_heads: usize) -> (Vec<Item>, usize) {
    let mut items = Vec::new();
    let mut cost = 0;
    for (seg, s) in segments.iter().enumerate() {
        for kv_head in 0..kv_heads {
            for r0 in (0..s.rows).step_by(ROWS_PER_ITEM) {
                let r1 = (r0 + ROWS_PER_ITEM).min(s.rows);
                items.push(Item {
                    seg,
                    kv_head,
                    r0,
                    r1,
                });
                // Rows see start + r + 1 keys each.
                cost += (r0..r1).map(|r| s.start + r + 1).sum::<usize>();
            }
        }
    }
    (items, cost)
}

/// Inputs of one layer's attention.
pub(super) struct AttnInputs<'a> {
    pub heads: Heads,
    pub segments: &'a [SegRows],
    /// `[step rows, q_stride]`; query head h of a row at columns `h * head_dim..`.
    pub q: &'a [f32],
    pub q_stride: usize,
    /// Keys and values of segment s and KV head h at `s * kv_heads + h`, covering positions
    /// `0..start + rows`: keys as transposed blocks `[blocks, head_dim, KEYS]` (the KV
    /// cache's layout), values `[positions, head_dim]`.
    pub kv: &'a [(&'a [f32], &'a [f32])],
}

/// Attention output `[step rows, heads * head_dim]` into `out`.
pub(super) fn attend(inp: &AttnInputs<'_>, items: &[Item], cost: usize, out: &mut [f32]) {
    let width = inp.heads.heads * inp.heads.head_dim;
    let rows: usize = inp.segments.iter().map(|s| s.rows).sum();
    assert_eq!(out.len(), rows * width, "attention output size");
    let out = SharedOut(out.as_mut_ptr());
    let run = |range: std::ops::Range<usize>| {
        let mut scratch = Scratch::default();
        for item in &items[range] {
            // SAFETY: items cover disjoint (row, head) blocks of `out` (see `plan`), and each
            // item runs on exactly one thread.
            unsafe { attend_item(inp, *item, &mut scratch, &out) };
        }
    };
    let macs = cost * inp.heads.heads * inp.heads.head_dim * 2;
    if macs < PARALLEL_MIN_MACS {
        run(0..items.len());
    } else {
        candle_core::utils::barrier_pool().execute_chunked(items.len(), run);
    }
}

/// Per-thread buffers: the item's scores `[query vectors, keys rounded up to KEYS]`, their
/// softmax sums, and output sums for head widths without a fixed-size path.
#[derive(Default)]
struct Scratch {
    scores: Vec<f32>,
    sums: Vec<f32>,
    acc: Vec<f32>,
}

/// The output pointer, shared by the pool's threads; items write disjoint blocks.
struct SharedOut(*mut f32);
// SAFETY: see `attend`: writes through it never overlap between threads.
unsafe impl Sync for SharedOut {}

/// # Safety
/// `out` points to `[step rows, heads * head_dim]` floats and no other thread writes the
/// block of this item (its rows, its KV head's group of query heads).
unsafe fn attend_item(inp: &AttnInputs<'_>, item: Item, scratch: &mut Scratch, out: &SharedOut) {
    let Heads {
        heads,
        kv_heads,
        head_dim: hd,
    } = inp.heads;
    let groups = heads / kv_heads;
    let seg = inp.segments[item.seg];
    let (keys, values) = inp.kv[item.seg * kv_heads + item.kv_head];
    let first_head = item.kv_head * groups;
    // Query vectors in (row, group) order: vector i is head `first_head + i % groups` of
    // row r0 + i / groups, and sees that row's keys. Derived, not collected: this runs for
    // every item of every layer of every decode step.
    let n = (item.r1 - item.r0) * groups;
    let query = |i: usize| {
        let row = seg.offset + item.r0 + i / groups;
        &inp.q[row * inp.q_stride + (first_head + i % groups) * hd..][..hd]
    };
    let len = |i: usize| seg.start + item.r0 + i / groups + 1;
    let stride = (seg.start + item.r1).next_multiple_of(KEYS);
    scratch.scores.resize(n * stride, 0.0);
    scores((n, query, len), keys, stride, &mut scratch.scores);
    scratch.sums.clear();
    let sqrt_hd = (hd as f32).sqrt();
    for i in 0..n {
        let s = &mut scratch.scores[i * stride..][..len(i)];
        scratch.sums.push(softmax_unnormalised(s, sqrt_hd));
    }
    let out_at = |i: usize| {
        let (r, g) = (item.r0 + i / groups, i % groups);
        // SAFETY: this item's block of `out` (the caller's contract): hd floats there.
        unsafe {
            let dst = out
                .0
                .add((seg.offset + r) * heads * hd + (first_head + g) * hd);
            std::slice::from_raw_parts_mut(dst, hd)
        }
    };
    let mut i = 0;
    while i < n {
        let probs = |i: usize| &scratch.scores[i * stride..][..len(i)];
        // Three heads of one row at once share each value row's load (SmolLM2's group).
        if hd == 64 && i % groups + 3 <= groups {
            let sums = [scratch.sums[i], scratch.sums[i + 1], scratch.sums[i + 2]];
            let dsts = [out_at(i), out_at(i + 1), out_at(i + 2)];
            weighted_values_heads::<64, 3>(
                [probs(i), probs(i + 1), probs(i + 2)],
                values,
                sums,
                dsts,
            );
            i += 3;
        } else {
            let (probs, sum) = (probs(i), scratch.sums[i]);
            weighted_values(probs, values, sum, &mut scratch.acc, out_at(i));
            i += 1;
        }
    }
}

/// Raw scores `q · k` of each of `n` query vectors (`query(i)`, seeing keys `0..len(i)`)
/// into row i of `scores` (`stride` floats apart). Keys come in transposed blocks of KEYS
/// (the KV cache's layout), so a score is a sum of `q[d] · kᵀ[d]` over d in order with one
/// key per lane: no horizontal sum per key, and a score's bits depend only on its query and
/// key, never on the block or the item it was computed in.
fn scores<'q>(
    (n, query, len): (usize, impl Fn(usize) -> &'q [f32], impl Fn(usize) -> usize),
    keys_t: &[f32],
    stride: usize,
    scores: &mut [f32],
) {
    if n == 0 {
        return;
    }
    let hd = query(0).len();
    for (b, block) in keys_t.chunks_exact(hd * KEYS).enumerate() {
        let k0 = b * KEYS;
        for i in (0..n).filter(|&i| k0 < len(i)) {
            let dst = &mut scores[i * stride + k0..][..KEYS];
            dst.copy_from_slice(&key_block(query(i), block));
        }
    }
}

/// `q · k_l` for the KEYS keys of one transposed block (`keys_t[d * KEYS + l]`); lanes past
/// the block's keys hold leftovers and are never read as scores.
#[inline(always)]
fn key_block(q: &[f32], keys_t: &[f32]) -> [f32; KEYS] {
    let mut acc = [0f32; KEYS];
    for (qd, kt) in q.iter().zip(keys_t.chunks_exact(KEYS)) {
        let kt: &[f32; KEYS] = kt.try_into().expect("KEYS lanes");
        for (a, k) in acc.iter_mut().zip(kt) {
            *a = madd(*a, *qd, *k);
        }
    }
    acc
}

/// `dst = Σ_j probs[j] · values[j] / sum` over `hd`-wide value rows, summed in j order.
/// Common head widths get accumulators of a size known at compile time, which stay in
/// registers across the rows instead of being loaded and stored for every value row
/// (the same arithmetic in the same order, so the same bits).
#[inline(always)]
fn weighted_values(probs: &[f32], values: &[f32], sum: f32, acc: &mut Vec<f32>, dst: &mut [f32]) {
    match dst.len() {
        64 => weighted_values_heads::<64, 1>([probs], values, [sum], [dst]),
        128 => weighted_values_heads::<128, 1>([probs], values, [sum], [dst]),
        hd => {
            acc.clear();
            acc.resize(hd, 0.0);
            for (p, v) in probs.iter().zip(values.chunks_exact(hd)) {
                for (a, x) in acc.iter_mut().zip(v) {
                    *a = madd(*a, *p, *x);
                }
            }
            for (d, a) in dst.iter_mut().zip(acc.iter()) {
                *d = a / sum;
            }
        }
    }
}

/// [`weighted_values`] for `G` heads that read the same values (query heads of one KV
/// head, same row, so the same number of keys), each value row loaded once for all of them;
/// every head's sum keeps the single-head order and bits.
#[inline(always)]
fn weighted_values_heads<const D: usize, const G: usize>(
    probs: [&[f32]; G],
    values: &[f32],
    sums: [f32; G],
    dsts: [&mut [f32]; G],
) {
    let mut acc = [[0f32; D]; G];
    for (j, v) in values.chunks_exact(D).take(probs[0].len()).enumerate() {
        let v: &[f32; D] = v.try_into().expect("D-wide value row");
        for (acc, probs) in acc.iter_mut().zip(&probs) {
            let p = probs[j];
            for (a, x) in acc.iter_mut().zip(v) {
                *a = madd(*a, p, *x);
            }
        }
    }
    for ((dst, acc), sum) in dsts.into_iter().zip(&acc).zip(sums) {
        for (d, a) in dst.iter_mut().zip(acc) {
            *d = a / sum;
        }
    }
}

/// Replaces raw dot products `s` by `exp(s / scale - max)` and returns their sum: softmax
/// without the division, which is applied once to the weighted sum of values instead of
/// to every score. The scaling is its own pass so that it vectorises.
#[inline(always)]
fn softmax_unnormalised(s: &mut [f32], scale: f32) -> f32 {
    let inv = 1.0 / scale;
    for x in s.iter_mut() {
        *x *= inv;
    }
    let max = max(s);
    // Exponentials in a pass of their own, so that they vectorise; then the sum.
    for x in s.iter_mut() {
        *x = exp(*x - max);
    }
    sum(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Textbook attention of one query head over keys 0..len, in f64.
    fn naive(q: &[f32], keys: &[f32], values: &[f32], len: usize, hd: usize) -> Vec<f64> {
        let scores: Vec<f64> = (0..len)
            .map(|j| {
                let k = &keys[j * hd..][..hd];
                let s: f64 = q
                    .iter()
                    .zip(k)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum();
                s / (hd as f64).sqrt()
            })
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f64 = exps.iter().sum();
        (0..hd)
            .map(|d| {
                (0..len)
                    .map(|j| exps[j] / sum * f64::from(values[j * hd + d]))
                    .sum()
            })
            .collect()
    }

    fn values(n: usize, salt: u32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as u32).wrapping_mul(2654435761) ^ salt) % 2000)
            .map(|v| v as f32 / 500.0 - 2.0)
            .collect()
    }

    const HEADS: Heads = Heads {
        heads: 6,
        kv_heads: 2,
        head_dim: 8,
    };

    /// A step of several sequences: queries of all rows, and random K/V per segment and
    /// KV head covering every position a row may see.
    struct Case {
        segments: Vec<SegRows>,
        q: Vec<f32>,
        q_stride: usize,
        kv: Vec<Vec<(Vec<f32>, Vec<f32>)>>,
    }

    /// Segments given as (start, rows).
    fn case(starts_rows: &[(usize, usize)]) -> Case {
        let hd = HEADS.head_dim;
        let mut segments = Vec::new();
        let mut offset = 0;
        for &(start, rows) in starts_rows {
            segments.push(SegRows {
                offset,
                start,
                rows,
            });
            offset += rows;
        }
        // Wider than the query heads, as the fused q|k|v output is.
        let q_stride = HEADS.heads * hd + 5;
        let kv = segments
            .iter()
            .enumerate()
            .map(|(i, s)| {
                (0..HEADS.kv_heads)
                    .map(|h| {
                        let n = (s.start + s.rows) * hd;
                        let salt = (i * 10 + h) as u32;
                        (values(n, salt), values(n, salt + 100))
                    })
                    .collect()
            })
            .collect();
        Case {
            segments,
            q: values(offset * q_stride, 7),
            q_stride,
            kv,
        }
    }

    /// Row-major keys `[n, hd]` in the KV cache's transposed blocks, padded with NaN: lanes
    /// past the keys must never reach a result.
    fn transposed(keys: &[f32], hd: usize) -> Vec<f32> {
        let n = keys.len() / hd;
        let mut t = vec![f32::NAN; n.div_ceil(KEYS) * KEYS * hd];
        for (pos, key) in keys.chunks_exact(hd).enumerate() {
            for (d, x) in key.iter().enumerate() {
                t[((pos / KEYS) * hd + d) * KEYS + pos % KEYS] = *x;
            }
        }
        t
    }

    fn run(c: &Case, parallel: bool) -> Vec<f32> {
        let keys_t: Vec<Vec<Vec<f32>>> =
            c.kv.iter()
                .map(|heads| {
                    let t = |(k, _): &(Vec<f32>, Vec<f32>)| transposed(k, HEADS.head_dim);
                    heads.iter().map(t).collect()
                })
                .collect();
        let kv: Vec<(&[f32], &[f32])> = c
            .kv
            .iter()
            .zip(&keys_t)
            .flat_map(|(heads, keys)| heads.iter().zip(keys).map(|((_, v), k)| (&k[..], &v[..])))
            .collect();
        let inp = AttnInputs {
            heads: HEADS,
            segments: &c.segments,
            q: &c.q,
            q_stride: c.q_stride,
            kv: &kv,
        };
        let (items, cost) = plan(&c.segments, HEADS.kv_heads);
        let rows: usize = c.segments.iter().map(|s| s.rows).sum();
        let mut out = vec![0f32; rows * HEADS.heads * HEADS.head_dim];
        // The threshold as the cost forces the pool; 0 forces the calling thread.
        let cost = if parallel {
            PARALLEL_MIN_MACS.max(cost)
        } else {
            0
        };
        attend(&inp, &items, cost, &mut out);
        out
    }

    #[test]
    fn grouped_causal_attention_with_offsets_matches_naive_per_head_attention() {
        let c = case(&[(5, 3), (20, 1), (0, 40)]);
        let got = run(&c, false);
        let (hd, groups) = (HEADS.head_dim, HEADS.heads / HEADS.kv_heads);
        let width = HEADS.heads * hd;
        for (si, s) in c.segments.iter().enumerate() {
            for r in 0..s.rows {
                let row = s.offset + r;
                for h in 0..HEADS.heads {
                    let q = &c.q[row * c.q_stride + h * hd..][..hd];
                    let (k, v) = &c.kv[si][h / groups];
                    let want = naive(q, k, v, s.start + r + 1, hd);
                    let got = &got[row * width + h * hd..][..hd];
                    for (g, w) in got.iter().zip(&want) {
                        assert!(
                            (f64::from(*g) - w).abs() < 1e-5,
                            "seg {si} row {r} head {h}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn attention_is_bit_identical_on_the_pool_and_on_one_thread() {
        let c = case(&[(5, 3), (20, 1), (0, 40)]);
        assert_eq!(run(&c, true), run(&c, false));
    }

    #[test]
    fn a_rows_attention_does_not_depend_on_the_other_rows_of_its_step() {
        // The same 40-token sequence as one segment, and split in chunks of 13 | 27 next to
        // an unrelated decode row: each of its rows must come out with the same bits.
        let whole = case(&[(0, 40)]);
        let mut split = case(&[(0, 13), (7, 1), (13, 27)]);
        let width = HEADS.heads * HEADS.head_dim;
        split.kv[0] = whole.kv[0].clone();
        split.kv[2] = whole.kv[0].clone();
        // Query rows of the split step: whole rows 0..13, a foreign row, whole rows 13..40.
        let stride = whole.q_stride;
        let mut q = whole.q[..13 * stride].to_vec();
        q.extend_from_slice(&split.q[13 * stride..14 * stride]);
        q.extend_from_slice(&whole.q[13 * stride..]);
        split.q = q;
        let (a, b) = (run(&whole, true), run(&split, true));
        assert_eq!(a[..13 * width], b[..13 * width]);
        assert_eq!(a[13 * width..], b[14 * width..]);
    }
}
