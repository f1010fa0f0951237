//! From the samples of one load level to the figures of one results row.

use super::client::{Outcome, Sample};
use std::collections::BTreeMap;
use std::time::Duration;

/// Percentile `p` (0–100) of ascending `sorted` values, interpolated linearly between the two
/// nearest ranks (numpy's default), so p50 of an even count is the mean of the middle two.
/// `None` for no values: an empty column, never a made-up zero.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let rank = (p.clamp(0.0, 100.0) / 100.0) * last as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64))
}

/// Values in milliseconds, sorted for [`percentile`].
fn sorted_ms(values: impl Iterator<Item = Duration>) -> Vec<f64> {
    let mut v: Vec<f64> = values.map(|d| d.as_secs_f64() * 1000.0).collect();
    v.sort_by(f64::total_cmp);
    v
}

/// Where the output token counts came from: the servers' usage or counted content chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    Usage,
    Chunks,
    Mixed,
    None,
}

impl TokenSource {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenSource::Usage => "usage",
            TokenSource::Chunks => "chunks",
            TokenSource::Mixed => "mixed",
            TokenSource::None => "",
        }
    }
}

/// The figures of one load level. Latencies are in ms and cover successful requests only.
#[derive(Debug, Clone)]
pub struct Summary {
    pub requests: usize,
    pub ok: usize,
    /// Failed requests by outcome label (`"503"`, `"timeout"`, …).
    pub errors: BTreeMap<String, usize>,
    pub output_tokens: u64,
    pub wall_s: f64,
    /// Aggregate output tokens/s of the successful requests over the level's wall time.
    pub output_tok_s: f64,
    pub ttft_ms: [Option<f64>; 3],
    pub itl_ms: [Option<f64>; 2],
    pub e2e_ms: [Option<f64>; 2],
    /// Mean e2e latency: with a closed loop, the cost of one request that a fixed change
    /// (e.g. per-request overhead) shifts one for one.
    pub e2e_mean_ms: Option<f64>,
    pub prompt_tokens_mean: Option<f64>,
    pub tokens_from: TokenSource,
}

impl Summary {
    pub fn error_count(&self) -> usize {
        self.errors.values().sum()
    }

    /// `503×2 timeout×1` (with `times` = `×`, `sep` = ` `), or `0`.
    pub fn errors_text(&self, times: &str, sep: &str) -> String {
        if self.errors.is_empty() {
            return "0".into();
        }
        let parts: Vec<String> = self
            .errors
            .iter()
            .map(|(k, n)| format!("{k}{times}{n}"))
            .collect();
        parts.join(sep)
    }
}

pub fn summarize(samples: &[Sample], wall: Duration) -> Summary {
    let ok: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.outcome == Outcome::Ok)
        .collect();
    let mut errors = BTreeMap::new();
    for s in samples.iter().filter(|s| s.outcome != Outcome::Ok) {
        *errors.entry(s.outcome.label()).or_insert(0) += 1;
    }
    let output_tokens: u64 = ok.iter().map(|s| s.output_tokens).sum();
    let wall_s = wall.as_secs_f64();
    let ttft = sorted_ms(ok.iter().filter_map(|s| s.ttft));
    let itl = sorted_ms(ok.iter().flat_map(|s| s.itl.iter().copied()));
    let e2e = sorted_ms(ok.iter().map(|s| s.e2e));
    let prompt: Vec<u64> = ok.iter().filter_map(|s| s.prompt_tokens).collect();
    let prompt_tokens_mean =
        (!prompt.is_empty()).then(|| prompt.iter().sum::<u64>() as f64 / prompt.len() as f64);
    Summary {
        requests: samples.len(),
        ok: ok.len(),
        errors,
        output_tokens,
        wall_s,
        output_tok_s: if wall_s > 0.0 {
            output_tokens as f64 / wall_s
        } else {
            0.0
        },
        ttft_ms: [50.0, 95.0, 99.0].map(|p| percentile(&ttft, p)),
        itl_ms: [50.0, 95.0].map(|p| percentile(&itl, p)),
        e2e_ms: [50.0, 95.0].map(|p| percentile(&e2e, p)),
        e2e_mean_ms: (!e2e.is_empty()).then(|| e2e.iter().sum::<f64>() / e2e.len() as f64),
        prompt_tokens_mean,
        tokens_from: token_source(&ok),
    }
}

fn token_source(ok: &[&Sample]) -> TokenSource {
    let from_usage = ok.iter().filter(|s| s.tokens_from_usage).count();
    match (from_usage, ok.len()) {
        (_, 0) => TokenSource::None,
        (u, n) if u == n => TokenSource::Usage,
        (0, _) => TokenSource::Chunks,
        _ => TokenSource::Mixed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    #[test]
    fn percentiles_match_numpy_linear_interpolation() {
        // numpy.percentile(range(1, 11), [0, 50, 95, 99, 100]) = 1, 5.5, 9.55, 9.91, 10
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert!(close(percentile(&v, 0.0), 1.0));
        assert!(close(percentile(&v, 50.0), 5.5));
        assert!(close(percentile(&v, 95.0), 9.55));
        assert!(close(percentile(&v, 99.0), 9.91));
        assert!(close(percentile(&v, 100.0), 10.0));
    }

    #[test]
    fn percentile_of_one_value_is_that_value_and_of_none_is_none() {
        assert!(close(percentile(&[42.0], 99.0), 42.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    fn sample(outcome: Outcome, tokens: u64, e2e_ms: u64, from_usage: bool) -> Sample {
        Sample {
            outcome,
            ttft: Some(Duration::from_millis(e2e_ms / 4)),
            itl: vec![Duration::from_millis(10), Duration::from_millis(30)],
            e2e: Duration::from_millis(e2e_ms),
            output_tokens: tokens,
            tokens_from_usage: from_usage,
            prompt_tokens: Some(20),
            detail: None,
            retry_after: None,
        }
    }

    #[test]
    fn summary_counts_errors_by_outcome_and_tokens_of_successes_only() {
        let samples = vec![
            sample(Outcome::Ok, 100, 1000, true),
            sample(Outcome::Ok, 50, 3000, false),
            sample(Outcome::Status(503), 0, 5, false),
            sample(Outcome::Status(503), 0, 5, false),
            sample(Outcome::Timeout, 7, 9000, false),
        ];
        let s = summarize(&samples, Duration::from_secs(2));
        assert_eq!((s.requests, s.ok, s.error_count()), (5, 2, 3));
        assert_eq!(s.errors_text("×", " "), "503×2 timeout×1");
        assert_eq!(s.output_tokens, 150);
        assert!((s.output_tok_s - 75.0).abs() < 1e-9);
        assert!(close(s.e2e_ms[0], 2000.0));
        assert!(close(s.e2e_mean_ms, 2000.0));
        assert!(close(s.itl_ms[0], 20.0));
        assert!(close(s.prompt_tokens_mean, 20.0));
        assert_eq!(s.tokens_from, TokenSource::Mixed);
    }

    #[test]
    fn no_successes_leave_latency_columns_empty() {
        let s = summarize(
            &[sample(Outcome::Transport, 0, 1, false)],
            Duration::from_secs(1),
        );
        assert_eq!(s.ttft_ms, [None; 3]);
        assert_eq!(s.e2e_mean_ms, None);
        assert_eq!(s.tokens_from, TokenSource::None);
        assert_eq!(s.output_tok_s, 0.0);
    }
}
