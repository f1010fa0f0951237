//! The replica loop's use of the model's prefix cache (`backend::prefix_cache`): a newly
//! admitted sequence starts from the longest cached prefix of its prompt, and an ended one
//! leaves its whole blocks behind. The scope comes with the job (set by the server from the
//! tenant's tier); a job without one neither reads nor writes the cache.

use super::gen_sequence::Sequence;
use crate::backend::Generator;

/// A replica's prefix-cache metrics (labels: model, replica), and the model name for the
/// per-tier token counters.
pub(super) struct PrefixMetrics {
    model: String,
    bytes: prometheus::IntGauge,
    evictions: prometheus::IntCounter,
    /// Evictions the backend had reported at the last update (it counts since load).
    seen_evictions: u64,
}

impl PrefixMetrics {
    pub fn new(model: &str, replica: usize) -> Self {
        let m = crate::metrics::get();
        let replica = replica.to_string();
        let labels = [model, replica.as_str()];
        PrefixMetrics {
            model: model.to_string(),
            bytes: m.prefix_bytes.with_label_values(&labels),
            evictions: m.prefix_evictions.with_label_values(&labels),
            seen_evictions: 0,
        }
    }

    /// Copies the cache's size and evictions into the metrics.
    pub fn update(&mut self, model: &dyn Generator) {
        let stats = model.prefix_stats();
        self.bytes.set(stats.bytes as i64);
        let new = stats.evictions.saturating_sub(self.seen_evictions);
        self.evictions.inc_by(new);
        self.seen_evictions = stats.evictions;
    }
}

/// Fills `seq`'s fresh slot from the cache. Not for prompts whose log-probabilities are
/// asked for: every prompt position must then be computed. A failed copy leaves the
/// sequence to prefill everything from an empty slot.
pub(super) fn reuse(model: &mut dyn Generator, seq: &mut Sequence, metrics: &PrefixMetrics) {
    let Some(scope) = seq.prefix_scope.clone() else {
        return;
    };
    if seq.prompt_logprobs {
        return;
    }
    let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        model.reuse_prefix(seq.slot, &scope, &seq.prompt)
    }));
    let reused = match found {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => {
            tracing::warn!(parent: &seq.span, error = %e, "prefix cache reuse failed");
            model.release(seq.slot);
            0
        }
        Err(_) => {
            tracing::warn!(parent: &seq.span, "prefix cache reuse panicked");
            model.release(seq.slot);
            0
        }
    };
    seq.prefilled = reused;
    seq.progress.set_cached(reused);
    let m = crate::metrics::get();
    let labels = [metrics.model.as_str(), seq.tier()];
    m.prefix_queries
        .with_label_values(&labels)
        .inc_by(seq.prompt.len() as u64);
    m.prefix_hits
        .with_label_values(&labels)
        .inc_by(reused as u64);
    tracing::debug!(parent: &seq.span, reused, prompt = seq.prompt.len(), "prefix cache lookup");
}

/// Offers what `seq`'s slot holds (prompt, then all sampled tokens but the last) to the
/// cache before the slot is released. A failed sequence offers nothing.
pub(super) fn keep(model: &mut dyn Generator, seq: &Sequence) {
    let Some(scope) = &seq.prefix_scope else {
        return;
    };
    if seq.failed {
        return;
    }
    let tokens: Vec<u32> = seq.prompt.iter().chain(&seq.output).copied().collect();
    let kept = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        model.keep_prefix(seq.slot, scope, &tokens)
    }));
    if kept.is_err() {
        tracing::warn!(parent: &seq.span, "prefix cache insert panicked");
    }
}
