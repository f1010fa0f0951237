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

fn log_sum_exp(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return max;
    }
    // f64 accumulation: the vocabulary has up to ~150k terms.
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    max + sum.ln() as f32
}

/// The `k` largest logits, largest first, ties by lower id; one pass with a small sorted
/// buffer (k <= 20), no copy of the vocabulary.
fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k == 0 {
        return best;
    }
    for (i, &l) in logits.iter().enumerate() {
        if l.is_nan() || (best.len() == k && l <= best[k - 1].1) {
            continue;
        }
        let at = best.partition_point(|&(_, b)| b >= l);
        best.insert(at, (i as u32, l));
        best.truncate(k);
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
        let best = crate::infer::sampling::argmax(&logits);
        assert_eq!(lp.top[0].0, best);
    }

    #[test]
    fn ties_keep_the_lower_id_first() {
        let lp = TokenLogprob::of(&[1.0, 3.0, 3.0, 2.0], 0, 3);
        let ids: Vec<u32> = lp.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, [1, 2, 3]);
    }
}
