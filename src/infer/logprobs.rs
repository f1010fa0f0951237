//! The model's own log-probabilities of a token and of its most likely alternatives: the
//! log-softmax of the raw logits (before bias, penalties and temperature), as OpenAI and vLLM
//! report them. Computed only for requests that ask, in two passes over the vocabulary.

/// Most alternatives a request may ask for per token (OpenAI's cap).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// One token's log-probability and the `top` most likely tokens at its position, most likely
/// first (ties by lower id).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

impl TokenLogprob {
    /// `token`'s log-probability under `logits`, with the `top` most likely tokens.
    pub fn of(logits: &[f32], token: u32, top: usize) -> Self {
        let lse = log_sum_exp(logits);
        let logprob = logits
            .get(token as usize)
            .map_or(f32::NEG_INFINITY, |l| l - lse);
        let top = top_k(logits, top)
            .into_iter()
            .map(|(id, l)| (id, l - lse))
            .collect();
        TokenLogprob {
            token,
            logprob,
            top,
        }
    }
}

/// Lanes of the loops below: plain arrays the compiler turns into SIMD registers.
const LANES: usize = 8;

fn log_sum_exp(logits: &[f32]) -> f32 {
    let max = max_of(logits);
    if !max.is_finite() {
        return max;
    }
    // `f32::exp` is a libm call per element (~3 ms over a 150k vocabulary, a tenth of a
    // decode step); `exp_le0` vectorizes. Per-lane partial sums keep f32 rounding small.
    let mut sums = [0f32; LANES];
    let chunks = logits.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|&l| exp_le0(l - max)).sum();
    for chunk in chunks {
        for (s, &l) in sums.iter_mut().zip(chunk) {
            *s += exp_le0(l - max);
        }
    }
    max + (sums.iter().sum::<f32>() + tail).ln()
}

fn max_of(logits: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = logits.chunks_exact(LANES);
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for chunk in chunks {
        for (m, &l) in lanes.iter_mut().zip(chunk) {
            *m = if l > *m { l } else { *m };
        }
    }
    lanes.iter().copied().fold(tail, f32::max)
}

/// e^x for x <= 0 (relative error below 5e-6): 2^(x log2 e) split into an integer power,
/// written straight into the exponent bits, and a degree-7 polynomial for 2^f, f in (-1, 0].
fn exp_le0(x: f32) -> f32 {
    let t = x.max(-126.0 * std::f32::consts::LN_2) * std::f32::consts::LOG2_E;
    let n = t as i32; // toward zero: n = ceil(t), f = t - n in (-1, 0]
    let f = t - n as f32;
    const C: [f32; 7] = [
        std::f32::consts::LN_2,
        0.240_226_5,
        0.055_504_11,
        0.009_618_129,
        0.001_333_355_8,
        0.000_154_035_3,
        0.000_015_252_73,
    ];
    let mut p = C[6];
    for c in C[..6].iter().rev() {
        p = p * f + c;
    }
    let pow2 = f32::from_bits(((n + 127) as u32) << 23);
    pow2 * (1.0 + p * f)
}

/// The `k` largest logits, largest first, ties by lower id; one pass with a small sorted
/// buffer (k <= 20), no copy of the vocabulary. A block of lanes is looked into only when its
/// maximum beats the k-th best so far, which after the first blocks is rare.
fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k == 0 {
        return best;
    }
    let mut floor = f32::NEG_INFINITY;
    let offer = |i: usize, l: f32, best: &mut Vec<(u32, f32)>| {
        if l.is_nan() || (best.len() == k && l <= best[k - 1].1) {
            return;
        }
        let at = best.partition_point(|&(_, b)| b >= l);
        best.insert(at, (i as u32, l));
        best.truncate(k);
    };
    for (c, chunk) in logits.chunks(LANES).enumerate() {
        let block_max = chunk
            .iter()
            .fold(f32::NEG_INFINITY, |m, &l| if l > m { l } else { m });
        if best.len() == k && block_max <= floor {
            continue;
        }
        for (j, &l) in chunk.iter().enumerate() {
            offer(c * LANES + j, l, &mut best);
        }
        if best.len() == k {
            floor = best[k - 1].1;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_are_the_log_softmax_of_the_logits() {
        let lp = TokenLogprob::of(&[0.0, 0.0, 0.0, 0.0], 2, 0);
        assert!((lp.logprob - 0.25f32.ln()).abs() < 1e-6);
        assert!(lp.top.is_empty());
    }

    #[test]
    fn top_tokens_are_sorted_and_their_probabilities_sum_to_at_most_one() {
        let logits: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0)
            .collect();
        let lp = TokenLogprob::of(&logits, 5, 20);
        assert_eq!(lp.top.len(), 20);
        assert!(lp.top.windows(2).all(|w| w[0].1 >= w[1].1));
        let mass: f32 = lp.top.iter().map(|t| t.1.exp()).sum();
        assert!(mass <= 1.0 + 1e-5, "{mass}");
        // The same as sorting the whole vocabulary (ties by id).
        let mut sorted: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect();
        sorted.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let ids: Vec<u32> = lp.top.iter().map(|t| t.0).collect();
        let expected: Vec<u32> = sorted[..20].iter().map(|t| t.0).collect();
        assert_eq!(ids, expected);
    }

    #[test]
    fn fast_exp_follows_the_library_exp() {
        // Down to e^-87 (f32's smallest normal); below, it stays there (< 1.2e-38).
        for i in 0..=1740 {
            let x = -(i as f32) * 0.05;
            let (ours, exact) = (exp_le0(x), x.exp());
            assert!(
                (ours - exact).abs() <= 5e-6 * exact + 1e-38,
                "{x}: {ours} vs {exact}"
            );
        }
        assert!(exp_le0(-1e4) < 1.2e-38);
    }

    #[test]
    fn log_sum_exp_matches_the_f64_sum_over_a_large_vocabulary() {
        let logits: Vec<f32> = (0..151_936)
            .map(|i| ((i * 7919) % 2000) as f32 / 97.0 - 9.0)
            .collect();
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exact = max as f64
            + logits
                .iter()
                .map(|&l| ((l - max) as f64).exp())
                .sum::<f64>()
                .ln();
        assert!(
            (log_sum_exp(&logits) as f64 - exact).abs() < 1e-4,
            "{}",
            exact
        );
    }

    #[test]
    fn ties_keep_the_lower_id_first() {
        let lp = TokenLogprob::of(&[1.0, 3.0, 3.0, 2.0], 0, 3);
        let ids: Vec<u32> = lp.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, [1, 2, 3]);
    }
}
