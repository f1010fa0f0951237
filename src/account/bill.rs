//! What a finished request cost, as the response headers tell the client.

use axum::http::{HeaderMap, HeaderValue};

/// What a finished request cost, for the response headers.
#[derive(Debug, Clone, Copy)]
pub struct Bill {
    pub queue_ms: f64,
    pub compute_ms: f64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub list_micro_hkd: i64,
    pub charge_micro_hkd: i64,
    pub subsidy_rate: f64,
}

impl Bill {
    /// `x-queue-time-ms`, `x-compute-time-ms`, token counts and the cost split.
    pub fn insert_headers(&self, headers: &mut HeaderMap) {
        let hkd = |micro: i64| format!("{:.6}", micro as f64 / 1e6);
        let pairs = [
            ("x-queue-time-ms", format!("{:.1}", self.queue_ms)),
            ("x-compute-time-ms", format!("{:.1}", self.compute_ms)),
            ("x-prompt-tokens", self.prompt_tokens.to_string()),
            ("x-completion-tokens", self.completion_tokens.to_string()),
            ("x-cost-list-hkd", hkd(self.list_micro_hkd)),
            ("x-cost-tenant-hkd", hkd(self.charge_micro_hkd)),
            ("x-subsidy-rate", self.subsidy_rate.to_string()),
        ];
        for (name, value) in pairs {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
    }
}
