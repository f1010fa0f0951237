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
use axum::http::StatusCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Meter {
    state: Arc<AppState>,
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
    pub fn open(
        state: &Arc<AppState>,
        caller: &Caller,
        model: &str,
        request_id: String,
    ) -> Result<Meter, ApiError> {
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
            e.retry_after = Some(Duration::from_secs(1));
            e
        })?;
        Ok(Meter {
            state: state.clone(),
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
            request_id,
            started: Instant::now(),
            prompt_tokens: 0,
            progress: None,
            ran: None,
        })
    }

    /// Reserves `prompt + max_tokens` tokens, a request, a concurrency slot and the worst-case
    /// charge; a denial is recorded and answered 429.
    pub fn admit(
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
        match limiter.admit(&self.tenant, ask) {
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
    pub fn end(mut self, outcome: Outcome, completion: u64, reason: Option<String>) {
        self.record(outcome, completion, reason);
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
        self.end(outcome, completion, Some(reason.into()))
    }

    fn record(&mut self, outcome: Outcome, completion: u64, reason: Option<String>) {
        let Some(slot) = self.slot.take() else {
            return;
        };
        let progress = self.progress.as_deref();
        let (replica, queued, device_seconds) = match (progress, self.ran) {
            (Some(p), _) => (p.replica(), p.queued(), p.device_seconds()),
            (None, Some((r, q, d))) => (Some(r), q, d),
            (None, None) => (None, Duration::ZERO, 0.0),
        };
        let ran = self.admission.is_some();
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
        slot.write(UsageRecord {
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
        });
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
