//! One usage record per request, admitted or rejected: who asked, what ran where, how long it
//! took, what it cost and how that cost splits between the subsidy and the tenant.

use serde::{Deserialize, Serialize};

/// What the gateway knows about one request after it ended.
///
/// It holds **no prompt or completion text, ever**: only counts, times and money. Keep it so;
/// the ledger is kept for years and read by people who must not see what tenants asked.
///
/// Money is in integer micro-HKD (1 HKD = 1_000_000 µHKD) so that sums over a month are exact
/// and `list_micro_hkd == subsidy_micro_hkd + charge_micro_hkd` holds for every record.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct UsageRecord {
    /// The gateway's id of the request (also sent to the client).
    pub request_id: String,
    /// When the request ended, in unix milliseconds (UTC).
    pub time_ms: i64,
    pub tenant: String,
    pub tier: String,
    /// Grant or project the tenant's use is billed to.
    pub grant_id: String,
    pub model: String,
    /// Replica index that ran the request; `None` when it never reached one (rejected).
    pub replica: Option<u32>,
    /// Device of that replica (`cpu`, `cuda:0`), empty when none.
    pub device: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Prompt tokens served from the prefix cache (part of `prompt_tokens`). Left out of the
    /// canonical JSON when 0, so rows written before the field existed hash as they did.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cached_tokens: u64,
    /// Time spent waiting in the model's queue.
    pub queue_ms: f64,
    /// Time from the first scheduled step to the last token.
    pub compute_ms: f64,
    /// This request's share of the device time of the batches it ran in.
    pub device_seconds: f64,
    /// Price before subsidy.
    pub list_micro_hkd: i64,
    /// Share of the list price covered by the subsidy, 0.0 to 0.9.
    pub subsidy_rate: f64,
    pub subsidy_micro_hkd: i64,
    /// What the tenant pays: `list - subsidy`.
    pub charge_micro_hkd: i64,
    /// One of [`crate::outcome::Outcome::as_str`].
    pub outcome: String,
    /// Why a request was rejected or failed, for people (not parsed).
    pub reason: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl UsageRecord {
    /// Makes the record survive a round trip through either database bit for bit, so that its
    /// hash recomputes: SQLite stores NaN as NULL and may store `-0.0` as the integer 0, and
    /// counts above `i64::MAX` do not fit a BIGINT. Such values are never meaningful here.
    pub(crate) fn normalize(&mut self) {
        for x in [
            &mut self.queue_ms,
            &mut self.compute_ms,
            &mut self.device_seconds,
            &mut self.subsidy_rate,
        ] {
            // `+ 0.0` turns -0.0 into 0.0 and leaves every other finite value alone.
            *x = if x.is_finite() { *x + 0.0 } else { 0.0 };
        }
        let max = i64::MAX as u64;
        self.prompt_tokens = self.prompt_tokens.min(max);
        self.completion_tokens = self.completion_tokens.min(max);
        self.cached_tokens = self.cached_tokens.min(self.prompt_tokens);
    }
}

#[cfg(test)]
pub(crate) fn sample(request_id: &str, tenant: &str, charge: i64) -> UsageRecord {
    UsageRecord {
        request_id: request_id.into(),
        time_ms: 1_793_491_200_000,
        tenant: tenant.into(),
        tier: "aiss".into(),
        grant_id: "G-1".into(),
        model: "smollm2-135m-instruct".into(),
        replica: Some(0),
        device: "cpu".into(),
        prompt_tokens: 12,
        completion_tokens: 30,
        cached_tokens: 0,
        queue_ms: 1.25,
        compute_ms: 480.5,
        device_seconds: 0.1234567,
        list_micro_hkd: charge * 10,
        subsidy_rate: 0.9,
        subsidy_micro_hkd: charge * 9,
        charge_micro_hkd: charge,
        outcome: crate::outcome::Outcome::Ok.as_str().into(),
        reason: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_clears_values_a_database_cannot_hold() {
        let mut r = sample("r", "t", 1);
        r.queue_ms = -0.0;
        r.compute_ms = f64::NAN;
        r.device_seconds = f64::INFINITY;
        r.prompt_tokens = u64::MAX;
        r.normalize();
        assert!(r.queue_ms.is_sign_positive() && r.queue_ms == 0.0);
        assert_eq!((r.compute_ms, r.device_seconds), (0.0, 0.0));
        assert_eq!(r.prompt_tokens, i64::MAX as u64);
        assert_eq!(r.subsidy_rate, 0.9);
    }
}
