//! One request's account: its place in the ledger (taken first, so that a record always has
//! room), its admission by the tenant's limits, and, when it ends however it ends, the usage
//! settled with the limiter and one record written. `Drop` covers the endings nobody
//! reports: a client that disconnects mid-stream is billed for the tokens it got.

use super::auth::Caller;
use super::AppState;
use crate::error::ApiError;
use crate::infer::{InferError, Progress};
use crate::ledger::{cost_split, Outcome, Price, RecordSlot, UsageRecord};
use crate::tenancy::{self, Admission, Ask, LimitKind, RateStatus, Tenant, Usage};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

pub struct Meter {
    state: Arc<AppState>,
    route: String,
    started_at: Instant,
    slot: Option<RecordSlot>,
    admission: Option<Admission>,
    tenant: Arc<Tenant>,
    price: Price,
    model: String,
    pub request_id: String,
    started: Instant,
    prompt_tokens: u64,
    progress: Option<Arc<Progress>>,
    /// Where and how long work not tracked by `progress` (embeddings) ran.
    ran: Option<(usize, Duration, f64)>,
}

impl Meter {
    /// Takes a ledger place for the request; none free means the writer is behind: 503.
    pub fn open(state: &Arc<AppState>, caller: &Caller, model: &str) -> Result<Meter, ApiError> {
        if !caller.tenant.may_use(model) {
            return Err(ApiError::not_found(format!(
                "The model `{model}` does not exist or your tier has no access to it"
            ))
            .with_code("model_not_found"));
        }
        let slot = state.ledger.reserve().ok_or_else(|| {
            let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "The usage ledger is behind; retry shortly",
            )
            .with_code("overloaded");
            // Places free up as requests end: the model's backlog is the hint.
            e.retry_after = Some(state.engine.retry_after(model));
            e
        })?;
        // From here on the meter counts and logs this request with its real outcome.
        caller.metered.store(true, Ordering::Release);
        Ok(Meter {
            state: state.clone(),
            route: caller.route.clone(),
            started_at: Instant::now(),
            slot: Some(slot),
            admission: None,
            tenant: caller.tenant.clone(),
            price: caller
                .directory
                .prices
                .get(model)
                .cloned()
                .unwrap_or_default(),
            model: model.to_string(),
            request_id: caller.request_id.clone(),
            started: Instant::now(),
            prompt_tokens: 0,
            progress: None,
            ran: None,
        })
    }

    /// Reserves `prompt + max_tokens` tokens, a request, a concurrency slot and the worst-case
    /// charge; a denial is recorded and answered 429.
    pub async fn admit(
        &mut self,
        prompt_tokens: usize,
        max_tokens: usize,
    ) -> Result<RateStatus, ApiError> {
        self.prompt_tokens = prompt_tokens as u64;
        let terms = &self.tenant.terms;
        // The longest a request can hold a device is the request timeout.
        let worst_seconds = self.state.config.limits.request_timeout_secs as f64;
        let worst = cost_split(
            &self.price,
            prompt_tokens as u64,
            max_tokens as u64,
            if self.price.device_second_hkd > 0.0 {
                worst_seconds
            } else {
                0.0
            },
            terms.subsidy_rate,
        );
        let ask = Ask {
            tokens: (prompt_tokens + max_tokens) as u64,
            worst_charge: worst.charge,
            month: tenancy::month_of(tenancy::unix_ms_now()),
        };
        let limiter = self.state.tenancy.limiter.clone();
        match limiter.admit(&self.tenant, ask).await {
            Ok((reservation, status)) => {
                self.admission = Some(Admission::new(
                    limiter,
                    self.tenant.clone(),
                    reservation,
                    status,
                ));
                Ok(status)
            }
            Err(denied) => {
                let outcome = match denied.kind {
                    LimitKind::Budget => Outcome::OverBudget,
                    LimitKind::Unavailable => Outcome::Overloaded,
                    _ => Outcome::RateLimited,
                };
                self.record(outcome, 0, Some(denied.kind.as_str().to_string()));
                Err(ApiError::rate_limited(&denied, &self.tenant))
            }
        }
    }

    /// The request reached a replica; its progress is what it will be billed for.
    pub fn running(&mut self, progress: Arc<Progress>) {
        self.progress = Some(progress);
    }

    /// Embeddings: the replica, queue wait and model time the batcher reported.
    pub fn ran(&mut self, replica: usize, queued: Duration, device_seconds: f64) {
        self.ran = Some((replica, queued, device_seconds));
    }

    /// The request ended with `outcome`; `completion` tokens were produced.
    pub fn end(
        mut self,
        outcome: Outcome,
        completion: u64,
        reason: Option<String>,
    ) -> Option<Bill> {
        self.record(outcome, completion, reason)
    }

    /// Ended with an error: its outcome follows the error.
    pub fn fail(self, error: &InferError) {
        let outcome = match error {
            InferError::Overloaded { .. }
            | InferError::QueueTimeout { .. }
            | InferError::NotReady(_)
            | InferError::ShuttingDown => Outcome::Overloaded,
            InferError::RequestTimeout(_) => Outcome::Timeout,
            InferError::Backend(_) => Outcome::Error,
            _ => Outcome::Invalid,
        };
        let completion = self.progress.as_ref().map_or(0, |p| p.generated());
        let reason = error_code(error);
        self.end(outcome, completion, Some(reason.into()));
    }

    fn record(
        &mut self,
        outcome: Outcome,
        completion: u64,
        reason: Option<String>,
    ) -> Option<Bill> {
        let slot = self.slot.take()?;
        let progress = self.progress.as_deref();
        let (replica, queued, device_seconds) = match (progress, self.ran) {
            (Some(p), _) => (p.replica(), p.queued(), p.device_seconds()),
            (None, Some((r, q, d))) => (Some(r), q, d),
            (None, None) => (None, Duration::ZERO, 0.0),
        };
        // Billed only for work a replica did: a request refused by the queue (full, timed
        // out) or abandoned while waiting used no tokens.
        let ran = replica.is_some();
        let (prompt, completion) = if ran {
            (self.prompt_tokens, completion)
        } else {
            (0, 0)
        };
        let split = cost_split(
            &self.price,
            prompt,
            completion,
            device_seconds,
            self.tenant.terms.subsidy_rate,
        );
        if let Some(admission) = self.admission.take() {
            admission.settle(Usage {
                tokens: prompt + completion,
                charge: split.charge,
            });
        }
        let queue_ms = queued.as_secs_f64() * 1e3;
        let record = UsageRecord {
            request_id: self.request_id.clone(),
            time_ms: tenancy::unix_ms_now(),
            tenant: self.tenant.id.clone(),
            tier: self.tenant.tier.clone(),
            grant_id: self.tenant.grant.clone(),
            model: self.model.clone(),
            replica: replica.map(|r| r as u32),
            device: replica
                .and_then(|r| self.state.engine.device_of(&self.model, r))
                .unwrap_or_default(),
            prompt_tokens: prompt,
            completion_tokens: completion,
            queue_ms,
            compute_ms: (self.started.elapsed().as_secs_f64() * 1e3 - queue_ms).max(0.0),
            device_seconds,
            list_micro_hkd: split.list,
            subsidy_rate: self.tenant.terms.subsidy_rate,
            subsidy_micro_hkd: split.subsidy,
            charge_micro_hkd: split.charge,
            outcome: outcome.as_str().to_string(),
            reason,
        };
        self.observe(&record, ran);
        let bill = Bill {
            queue_ms,
            compute_ms: record.compute_ms,
            prompt_tokens: prompt,
            completion_tokens: completion,
            list_micro_hkd: split.list,
            charge_micro_hkd: split.charge,
            subsidy_rate: record.subsidy_rate,
        };
        slot.write(record);
        Some(bill)
    }

    /// Metrics and the access line of the ended request (counts and times, never text).
    fn observe(&self, r: &UsageRecord, ran: bool) {
        let m = crate::metrics::get();
        let outcome = r.outcome.as_str();
        let status = match outcome {
            "ok" | "cancelled" => "2xx",
            "rate_limited" | "over_budget" | "invalid" => "4xx",
            _ => "5xx",
        };
        let labels = [r.model.as_str(), r.tier.as_str()];
        m.requests
            .with_label_values(&[&self.route, &r.model, &r.tier, status, outcome])
            .inc();
        let seconds = self.started_at.elapsed().as_secs_f64();
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
            outcome,
            reason = r.reason.as_deref().unwrap_or(""),
            prompt_tokens = r.prompt_tokens,
            completion_tokens = r.completion_tokens,
            queue_ms = r.queue_ms,
            compute_ms = r.compute_ms,
            ms = seconds * 1e3,
            "access"
        );
    }
}

impl Drop for Meter {
    /// Admitted but never ended: the client went away (or the handler failed validation
    /// after taking the slot, before admission: nothing ran, nothing is charged).
    fn drop(&mut self) {
        if self.admission.is_some() {
            let completion = self.progress.as_ref().map_or(0, |p| p.generated());
            self.record(Outcome::Cancelled, completion, None);
        } else {
            self.record(Outcome::Invalid, 0, None);
        }
    }
}

fn error_code(error: &InferError) -> &'static str {
    match error {
        InferError::Overloaded { .. } => "overloaded",
        InferError::QueueTimeout { .. } => "queue_timeout",
        InferError::NotReady(_) => "model_not_ready",
        InferError::ShuttingDown => "shutting_down",
        InferError::RequestTimeout(_) => "request_timeout",
        InferError::Backend(_) => "model_error",
        _ => "invalid_request",
    }
}
