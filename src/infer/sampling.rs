//! Choosing the next token from logits: one pipeline per sequence, in this fixed order:
//!
//! 1. `logit_bias`: added to the named tokens' logits (±100 bans or forces a token);
//! 2. presence and frequency penalties, OpenAI's formula over the tokens generated so far:
//!    `logit[t] -= count[t] * frequency_penalty + (count[t] > 0) * presence_penalty`;
//! 3. `repetition_penalty` (vLLM's extension; prompt and output tokens): a seen token's
//!    logit is divided by the penalty when positive and multiplied by it when negative;
//! 4. the grammar mask (`response_format`, tools): tokens the request's grammar does not
//!    allow next get -inf (see `grammar`);
//! 5. temperature 0 (or top_k 1): argmax, exact; otherwise temperature, then top_k, top_p
//!    and min_p over the tempered distribution, then a draw from the sequence's own seeded
//!    generator, so the same seed gives the same text alone or in a batch.
//!
//! Stages 1-4 run only when the request set them, on a scratch copy: the raw logits stay
//! intact for log-probabilities, and a request that sets nothing pays nothing.

use super::grammar::Grammar;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Nucleus mass in (0, 1]; 1 disables it.
    pub top_p: f32,
    /// Keep the k most likely tokens; 0 disables it.
    pub top_k: usize,
    /// Drop tokens less likely than `min_p` × the most likely one; 0 disables it.
    pub min_p: f32,
    pub seed: u64,
    /// OpenAI's penalties, in -2..=2; 0 disables them.
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// vLLM's multiplicative penalty, > 0; 1 disables it.
    pub repetition_penalty: f32,
    /// `(token, bias)` pairs, each bias in -100..=100.
    pub logit_bias: Arc<[(u32, f32)]>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            seed: 0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            logit_bias: Arc::new([]),
        }
    }
}

impl SamplingParams {
    /// The parameters of choice `index` of an n > 1 request: each choice draws from its own
    /// generator, and choice 0 is what the same request with n = 1 gives.
    pub fn for_choice(&self, index: usize) -> Self {
        SamplingParams {
            seed: self.seed.wrapping_add(index as u64),
            ..self.clone()
        }
    }

    fn adjusts_logits(&self) -> bool {
        !self.logit_bias.is_empty() || self.penalizes() || self.repetition_penalty != 1.0
    }

    fn penalizes(&self) -> bool {
        self.presence_penalty != 0.0 || self.frequency_penalty != 0.0
    }
}

/// Per-sequence sampler. It owns its generator and its history, so sequences batched
/// together never share state.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Occurrences of each generated token (penalties only).
    counts: HashMap<u32, u32>,
    /// Tokens of the prompt and the output (repetition penalty only).
    seen: std::collections::HashSet<u32>,
    /// The output's grammar, if the request constrains it.
    grammar: Option<Grammar>,
    /// Logits after stages 1-4, when any is set.
    adjusted: Vec<f32>,
    /// Scratch buffer of (token, probability), reused across steps.
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    /// `prompt` feeds the repetition penalty; it is not kept otherwise.
    pub fn new(params: SamplingParams, prompt: &[u32]) -> Self {
        let seen = if params.repetition_penalty != 1.0 {
            prompt.iter().copied().collect()
        } else {
            Default::default()
        };
        Sampler {
            rng: StdRng::seed_from_u64(params.seed),
            params,
            counts: HashMap::new(),
            seen,
            grammar: None,
            adjusted: Vec::new(),
            candidates: Vec::new(),
        }
    }

    /// Holds the output to `grammar` (stage 4).
    pub fn with_grammar(mut self, grammar: Option<Grammar>) -> Self {
        self.grammar = grammar;
        self
    }

    /// The grammar, for a copy at the same position (n > 1) or to prepare its next mask.
    pub fn grammar_mut(&mut self) -> Option<&mut Grammar> {
        self.grammar.as_mut()
    }

    pub fn has_grammar(&self) -> bool {
        self.grammar.is_some()
    }

    /// Picks the next token and records it in the sequence's history. Returns the token and
    /// whether it completed the grammar; an error is the grammar's (its work limits).
    pub fn sample(&mut self, logits: &[f32]) -> Result<(u32, bool), String> {
        let token = if self.params.adjusts_logits() || self.grammar.is_some() {
            let mut adjusted = std::mem::take(&mut self.adjusted);
            adjusted.clear();
            adjusted.extend_from_slice(logits);
            self.adjust(&mut adjusted);
            if let Some(g) = &mut self.grammar {
                g.mask(&mut adjusted)?;
            }
            let token = self.draw(&adjusted);
            self.adjusted = adjusted;
            token
        } else {
            self.draw(logits)
        };
        self.record(token);
        let complete = match &mut self.grammar {
            Some(g) => g.commit(token)?,
            None => false,
        };
        Ok((token, complete))
    }

    fn record(&mut self, token: u32) {
        if self.params.penalizes() {
            *self.counts.entry(token).or_default() += 1;
        }
        if self.params.repetition_penalty != 1.0 {
            self.seen.insert(token);
        }
    }

    /// Stages 1-3.
    fn adjust(&self, logits: &mut [f32]) {
        let p = &self.params;
        for &(token, bias) in p.logit_bias.iter() {
            if let Some(l) = logits.get_mut(token as usize) {
                *l += bias;
            }
        }
        for (&token, &count) in &self.counts {
            if let Some(l) = logits.get_mut(token as usize) {
                *l -= count as f32 * p.frequency_penalty + p.presence_penalty;
            }
        }
        let r = p.repetition_penalty;
        for &token in &self.seen {
            if let Some(l) = logits.get_mut(token as usize) {
                *l = if *l > 0.0 { *l / r } else { *l * r };
            }
        }
    }

    /// Stage 5.
    fn draw(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        if p.temperature <= 0.0 || p.top_k == 1 {
            return argmax(logits);
        }
        let inv_t = 1.0 / p.temperature;
        self.candidates.clear();
        self.candidates.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| l.is_finite())
                .map(|(i, &l)| (i as u32, l * inv_t)),
        );
        if self.candidates.is_empty() {
            return argmax(logits);
        }
        // Sort by logit descending; ties by id so the order never depends on the sort.
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let k = p.top_k;
        if k > 0 && k < self.candidates.len() {
            self.candidates.select_nth_unstable_by(k - 1, by_logit);
            self.candidates.truncate(k);
        }
        self.candidates.sort_unstable_by(by_logit);
        softmax_in_place(&mut self.candidates);
        if p.top_p < 1.0 {
            let mut mass = 0.0;
            let keep = self
                .candidates
                .iter()
                .position(|&(_, q)| {
                    mass += q;
                    mass >= p.top_p
                })
                .map_or(self.candidates.len(), |i| i + 1);
            self.candidates.truncate(keep);
        }
        if p.min_p > 0.0 {
            // Sorted: the first candidate is the most likely.
            let floor = self.candidates[0].1 * p.min_p;
            let keep = self.candidates.partition_point(|&(_, q)| q >= floor);
            self.candidates.truncate(keep.max(1));
        }
        let total: f32 = self.candidates.iter().map(|c| c.1).sum();
        let mut r = self.rng.random::<f32>() * total;
        for &(id, q) in &self.candidates {
            if r < q {
                return id;
            }
            r -= q;
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
#[path = "sampling_tests.rs"]
mod tests;
