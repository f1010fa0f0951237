//! Choosing the next token from logits: greedy, or temperature / top-k / top-p with a seeded
//! generator so that the same seed gives the same text.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Nucleus mass in (0, 1]; 1 disables it.
    pub top_p: f32,
    /// Keep the k most likely tokens; 0 disables it.
    pub top_k: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
        }
    }
}

/// Per-sequence sampler. It owns its generator, so sequences batched together never share
/// random state: a seeded request gives the same tokens alone or in a batch.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Scratch buffer of (token, probability), reused across steps.
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        Sampler {
            rng: StdRng::seed_from_u64(params.seed),
            params,
            candidates: Vec::new(),
        }
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature <= 0.0 || self.params.top_k == 1 {
            return argmax(logits);
        }
        let inv_t = 1.0 / self.params.temperature;
        self.candidates.clear();
        self.candidates.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, l * inv_t)),
        );
        // Sort by logit descending; ties by id so the order never depends on the sort.
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let k = self.params.top_k;
        if k > 0 && k < self.candidates.len() {
            self.candidates.select_nth_unstable_by(k - 1, by_logit);
            self.candidates.truncate(k);
        }
        self.candidates.sort_unstable_by(by_logit);
        softmax_in_place(&mut self.candidates);
        if self.params.top_p < 1.0 {
            let mut mass = 0.0;
            let keep = self
                .candidates
                .iter()
                .position(|&(_, p)| {
                    mass += p;
                    mass >= self.params.top_p
                })
                .map_or(self.candidates.len(), |i| i + 1);
            self.candidates.truncate(keep);
        }
        let total: f32 = self.candidates.iter().map(|c| c.1).sum();
        let mut r = self.rng.random::<f32>() * total;
        for &(id, p) in &self.candidates {
            if r < p {
                return id;
            }
            r -= p;
        }
        self.candidates.last().map_or(0, |c| c.0)
    }
}

/// Index of the largest logit; the lowest index wins ties (NaN never wins).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

fn softmax_in_place(c: &mut [(u32, f32)]) {
    let max = c.iter().map(|x| x.1).fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for x in c.iter_mut() {
        x.1 = (x.1 - max).exp();
        sum += x.1;
    }
    for x in c.iter_mut() {
        x.1 /= sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_p: f32, top_k: usize, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature,
            top_p,
            top_k,
            seed,
        }
    }

    #[test]
    fn zero_temperature_is_argmax() {
        let mut s = Sampler::new(params(0.0, 1.0, 0, 1));
        assert_eq!(s.sample(&[0.1, 3.0, 2.9, -1.0]), 1);
    }

    #[test]
    fn same_seed_gives_same_sequence() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = |seed| {
            let mut s = Sampler::new(params(1.0, 1.0, 0, seed));
            (0..20).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_restricts_to_the_k_most_likely() {
        let logits = [5.0, 4.9, 0.0, 0.1, 4.8];
        let mut s = Sampler::new(params(5.0, 1.0, 2, 3));
        for _ in 0..200 {
            assert!(matches!(s.sample(&logits), 0 | 1));
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_the_mass() {
        // Probabilities ~ [0.64, 0.24, 0.09, 0.03]: top_p 0.8 keeps the first two.
        let logits = [2.0, 1.0, 0.0, -1.0];
        let mut s = Sampler::new(params(1.0, 0.8, 0, 11));
        let mut seen = [0usize; 4];
        for _ in 0..500 {
            seen[s.sample(&logits) as usize] += 1;
        }
        assert_eq!(seen[2] + seen[3], 0);
        assert!(seen[0] > seen[1] && seen[1] > 0);
    }

    #[test]
    fn sampling_follows_the_distribution() {
        // p = [0.5, 0.5] at temperature 1: both appear in roughly equal shares.
        let mut s = Sampler::new(params(1.0, 1.0, 0, 5));
        let ones = (0..2000).filter(|_| s.sample(&[0.0, 0.0]) == 1).count();
        assert!((800..1200).contains(&ones), "{ones}");
    }
}
