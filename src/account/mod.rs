//! The one owner of a request's accounting, outside the HTTP layer: its place in the ledger
//! (taken first, so that a record always has room), its admission by the tenant's limits,
//! and, when it ends however it ends, the usage settled with the limiter, the cost split, one
//! ledger record, the metrics and the access line (`observe`). How it ended is an
//! [`Outcome`]. `Drop` covers the endings nobody reports: a client that disconnects
//! mid-stream is billed for the tokens it got. Handlers only open, admit, report progress
//! and end a `Meter`.

mod bill;
mod observe;

pub use bill::Bill;
pub(crate) use observe::unmetered;

use crate::app::AppState;
use crate::error::ApiError;
use crate::infer::{InferError, Progress};
use crate::ledger::{cost_split, cost_split_cached, Price, RecordSlot, UsageRecord};
use crate::outcome::Outcome;
use crate::tenancy::{self, Admission, Ask, Directory, LimitKind, RateStatus, Tenant, Usage};
use axum::http::StatusCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The authenticated caller, put in the request's extensions for the handlers.
#[derive(Clone)]
pub struct Caller {
    pub tenant: Arc<Tenant>,
    /// The directory the tenant was found in (prices, tiers), consistent for the request.
    pub directory: Arc<Directory>,
    /// `x-request-id`: the client's (when sane) or ours; also the ledger's request id.
    pub request_id: String,
    /// Route template, the metrics' `route` label.
    pub route: String,
    /// Set by the meter: it counts and logs the request itself, with its real outcome.
    pub metered: Arc<AtomicBool>,
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

    /// Ended with an error: its outcome and reason follow the error.
    pub fn fail(self, error: &InferError) {
        let completion = self.progress.as_ref().map_or(0, |p| p.generated());
        self.end(
            Outcome::of_error(error),
            completion,
            Some(error.code().into()),
        );
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
        // Prefix cache (issue 17): cached prompt tokens are billed at the cached price.
        let cached = progress.map_or(0, |p| p.cached()).min(prompt);
        let split = cost_split_cached(
            &self.price,
            (prompt, cached),
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
            cached_tokens: cached,
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
        observe::ended(&record, outcome, &self.route, self.started_at, ran);
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
