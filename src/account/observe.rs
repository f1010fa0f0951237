//! What an ended request leaves in the metrics and the access log: counts and times, never
//! text of the request. The metered path (`ended`) and the gate's path for requests no meter
//! saw (`unmetered`) count into the same `tiergate_requests_total` with the same labels.

use crate::ledger::UsageRecord;
use crate::outcome::Outcome;
use std::time::Instant;

/// Metrics and the access line of a metered request; `ran`: a replica worked on it.
pub(super) fn ended(r: &UsageRecord, outcome: Outcome, route: &str, since: Instant, ran: bool) {
    let m = crate::metrics::get();
    let labels = [r.model.as_str(), r.tier.as_str()];
    m.requests
        .with_label_values(&[
            route,
            &r.model,
            &r.tier,
            outcome.status_class(),
            outcome.as_str(),
        ])
        .inc();
    let seconds = since.elapsed().as_secs_f64();
    if ran {
        m.e2e.with_label_values(&labels).observe(seconds);
        m.queue_time
            .with_label_values(&labels)
            .observe(r.queue_ms / 1e3);
        m.prompt_len
            .with_label_values(&labels)
            .observe(r.prompt_tokens as f64);
        m.output_len
            .with_label_values(&labels)
            .observe(r.completion_tokens as f64);
        m.prompt_tokens
            .with_label_values(&labels)
            .inc_by(r.prompt_tokens);
        m.generation_tokens
            .with_label_values(&labels)
            .inc_by(r.completion_tokens);
    }
    for (part, micro) in [
        ("list", r.list_micro_hkd),
        ("subsidy", r.subsidy_micro_hkd),
        ("tenant_charge", r.charge_micro_hkd),
    ] {
        m.cost_hkd
            .with_label_values(&[r.tier.as_str(), part])
            .inc_by(micro as f64 / 1e6);
    }
    tracing::info!(
        request_id = %r.request_id,
        tenant = %r.tenant,
        tier = %r.tier,
        model = %r.model,
        outcome = outcome.as_str(),
        result = outcome.log_text(),
        reason = r.reason.as_deref().unwrap_or(""),
        prompt_tokens = r.prompt_tokens,
        completion_tokens = r.completion_tokens,
        queue_ms = r.queue_ms,
        compute_ms = r.compute_ms,
        ms = seconds * 1e3,
        "access"
    );
}

/// A request answered before any meter saw it (no key, flood guard, bad JSON, model lists):
/// counted by its status; the caller's span carries the request id.
pub(crate) fn unmetered(route: &str, tier: &str, status: u16, since: Instant) {
    let outcome = Outcome::of_status(status);
    crate::metrics::get()
        .requests
        .with_label_values(&[
            route,
            "none",
            tier,
            crate::metrics::status_class(status),
            outcome.as_str(),
        ])
        .inc();
    let ms = since.elapsed().as_secs_f64() * 1e3;
    tracing::info!(
        status,
        tier,
        outcome = outcome.as_str(),
        result = outcome.log_text(),
        ms,
        "access"
    );
}
