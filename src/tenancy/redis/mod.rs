//! The tenant limits in Redis, shared by every gateway: the same rules as `LocalLimiter`
//! (GCRA for requests and tokens per minute, concurrency, the monthly budget held then
//! settled), each admission one Lua script that checks everything and then writes (so no
//! other gateway can slip in between), with Redis `TIME` as the one clock.
//!
//! - Concurrency is a lease per running request (a sorted set of expiries): this gateway
//!   renews its leases every third of their TTL, so a gateway that dies frees its slots
//!   within one TTL, and its budget holds with them.
//! - Settling is a second script, idempotent by the admission's id: it runs in the background
//!   (it is called from `Drop`) and is retried; a retry of one that ran changes nothing.
//! - Redis unreachable (refused, timed out): `on_unavailable` decides, `reject` (503) or
//!   `local_share` (`fallback`); a reply of the wrong shape or a script error is a 503,
//!   never an admission without a limit.
//!
//! All Redis I/O runs on a runtime of the limiter's own (one thread): the connection outlives
//! whichever runtime asks (tests start several), and `Drop` can hand a settlement over from
//! anywhere.

mod background;
mod fallback;
mod scripts;
#[cfg(test)]
pub(crate) mod tests;

use super::directory::Tenant;
use super::limiter::{
    AdmitFuture, Ask, Clock, Denied, FlushFuture, LimitKind, Limiter, RateStatus, Reservation,
    Usage,
};
use crate::config::LimiterConfig;
use fallback::{Fallback, Known};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use scripts::{Call, Reply, TenantKeys, Which};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::runtime::{Handle, Runtime};
use tokio::sync::{Notify, Semaphore};

/// Tries of one settlement (the first and retries), and the pause before the first retry
/// (doubled each time): about 3 s in all, longer than a Redis failover usually takes.
const SETTLE_TRIES: u32 = 5;
const SETTLE_RETRY: Duration = Duration::from_millis(200);
/// After Redis failed to answer, admissions skip it for this long (`on_unavailable` in force
/// at once, instead of each request waiting out a timeout); then one call probes it again.
const SKIP_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// How long a settled id is remembered, against retries: far longer than any retry pause.
const SETTLED_TTL: Duration = Duration::from_secs(600);

/// Why a Redis call gave no usable answer.
#[derive(Debug)]
enum CallError {
    /// Refused, dropped, timed out: `on_unavailable` applies.
    Unreachable(String),
    /// It answered, but not what our script answers (garbage, a script error): 503.
    Broken(String),
}

impl From<redis::RedisError> for CallError {
    fn from(e: redis::RedisError) -> Self {
        if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
        {
            CallError::Unreachable(e.to_string())
        } else {
            CallError::Broken(e.to_string())
        }
    }
}

pub struct RedisLimiter {
    shared: Arc<Shared>,
    handle: Handle,
    /// Shut down without waiting when the limiter goes (`Drop` may run on an async thread).
    runtime: Option<Runtime>,
}

struct Shared {
    conn: ConnectionManager,
    prefix: String,
    /// Tests drive the scripts' clock; `None` means Redis `TIME`.
    script_clock: Option<Arc<dyn Clock>>,
    timeout: Duration,
    lease_ttl: Duration,
    /// How long an admission's record waits for its settlement: the longest a request runs.
    record_ttl: Duration,
    /// Bounds the Redis calls in flight from this gateway.
    permits: Semaphore,
    fallback: Fallback,
    /// Leases of requests running here, to renew: one per running request.
    running: Mutex<HashMap<u128, String>>,
    skip_until: Mutex<Option<Instant>>,
    settling: AtomicUsize,
    settled: Notify,
    round_trips: AtomicU64,
}

impl RedisLimiter {
    /// Connects lazily: a Redis that is down at start is logged, and `on_unavailable` is in
    /// force until it answers. `max_request` is the longest a request may run.
    pub fn start(
        config: &LimiterConfig,
        max_request: Duration,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        Self::start_with(config, max_request, clock, None)
    }

    /// `start` with the scripts on `script_clock` instead of Redis `TIME` (tests).
    pub fn start_with(
        config: &LimiterConfig,
        max_request: Duration,
        clock: Arc<dyn Clock>,
        script_clock: Option<Arc<dyn Clock>>,
    ) -> anyhow::Result<Self> {
        let client = redis::Client::open(config.url.as_str()).map_err(|e| {
            anyhow::anyhow!("`tenancy.limiter.url` is not a Redis URL (redis://host:port/db): {e}")
        })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("redis-limiter")
            .enable_all()
            .build()?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout()))
            .set_response_timeout(Some(config.timeout()))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = {
            let _entered = runtime.enter();
            ConnectionManager::new_lazy_with_config(client, manager_config)?
        };
        let shared = Arc::new(Shared {
            conn,
            prefix: config.key_prefix.clone(),
            script_clock,
            timeout: config.timeout(),
            lease_ttl: config.lease_ttl(),
            record_ttl: max_request + config.lease_ttl() + SETTLED_TTL,
            permits: Semaphore::new(config.max_in_flight),
            fallback: Fallback::new(config.on_unavailable, config.gateways, clock),
            running: Mutex::new(HashMap::new()),
            skip_until: Mutex::new(None),
            settling: AtomicUsize::new(0),
            settled: Notify::new(),
            round_trips: AtomicU64::new(0),
        });
        let handle = runtime.handle().clone();
        handle.spawn(background::renew_loop(Arc::downgrade(&shared)));
        handle.spawn(background::probe(
            shared.clone(),
            background::redacted(&config.url),
            config.on_unavailable,
        ));
        Ok(RedisLimiter {
            shared,
            handle,
            runtime: Some(runtime),
        })
    }

    /// Script calls made so far (admissions, settlements, renewals): the benchmark's count.
    pub fn round_trips(&self) -> u64 {
        self.shared.round_trips.load(Ordering::Relaxed)
    }

    /// Renews this gateway's leases now (the background loop does it every third of the TTL).
    pub async fn renew_now(&self) {
        let shared = self.shared.clone();
        let _ = self
            .handle
            .spawn(async move { shared.renew_all().await })
            .await;
    }

    async fn call(&self, call: Call) -> Result<Reply, CallError> {
        let shared = self.shared.clone();
        let task = self.handle.spawn(async move { shared.invoke(&call).await });
        let value = task.await.map_err(|e| CallError::Broken(e.to_string()))??;
        scripts::parse_reply(&value).map_err(CallError::Broken)
    }

    /// Books a settlement in the background, retrying; `flush` waits for it.
    fn spawn_settle(&self, tenant: Arc<str>, call: Call, charge: i64) {
        let shared = self.shared.clone();
        shared.settling.fetch_add(1, Ordering::SeqCst);
        self.handle.spawn(async move {
            let mut pause = SETTLE_RETRY;
            for attempt in 1..=SETTLE_TRIES {
                let reply = shared
                    .invoke(&call)
                    .await
                    .and_then(|v| scripts::parse_reply(&v).map_err(CallError::Broken));
                match reply {
                    Ok(r) => {
                        shared.fallback.saw(&tenant, Known::from_reply(&r));
                        break;
                    }
                    Err(e) if attempt == SETTLE_TRIES => tracing::warn!(
                        tenant = %tenant, charge, error = ?e,
                        "could not settle an admission in Redis; its lease expires on its own, \
                         its charge is in the ledger but not in the shared budget"
                    ),
                    Err(_) => {
                        tokio::time::sleep(pause).await;
                        pause *= 2;
                    }
                }
            }
            if shared.settling.fetch_sub(1, Ordering::SeqCst) == 1 {
                shared.settled.notify_waiters();
            }
        });
    }

    fn denied_unavailable(&self, tenant: &Tenant) -> Denied {
        Denied {
            kind: LimitKind::Unavailable,
            wait: SKIP_AFTER_FAILURE,
            status: self.status(tenant),
        }
    }
}

impl Shared {
    fn now_arg(&self) -> String {
        self.script_clock
            .as_ref()
            .map_or(String::new(), |c| (c.now_ns() / 1000).to_string())
    }

    /// One script call within the timeout and the in-flight bound.
    async fn invoke(&self, call: &Call) -> Result<redis::Value, CallError> {
        let work = async {
            let _permit = self
                .permits
                .acquire()
                .await
                .map_err(|e| CallError::Broken(e.to_string()))?;
            self.round_trips.fetch_add(1, Ordering::Relaxed);
            let mut conn = self.conn.clone();
            Ok(call.invoke(&mut conn).await?)
        };
        let result = tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_| Err(CallError::Unreachable("timed out".into())));
        if let Err(CallError::Unreachable(e)) = &result {
            let mut skip = self
                .skip_until
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if skip.is_none() {
                tracing::warn!(error = %e, "Redis limiter unreachable; on_unavailable in force");
            }
            *skip = Some(Instant::now() + SKIP_AFTER_FAILURE);
        } else if call.which != Which::Renew {
            let mut skip = self
                .skip_until
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if skip.take().is_some() {
                tracing::info!("Redis limiter answers again");
            }
        }
        result
    }

    /// Whether admissions should skip Redis for now (it just failed to answer).
    fn skipping(&self) -> bool {
        let skip = self
            .skip_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        skip.is_some_and(|until| Instant::now() < until)
    }

    fn admit_call(&self, tenant: &Tenant, ask: Ask, lease: &str) -> Call {
        let (req, tok) = super::limiter::buckets(tenant);
        let args = [
            self.now_arg(),
            lease.to_string(),
            scripts::micros(req.interval()).to_string(),
            req.burst().to_string(),
            scripts::micros(tok.interval()).to_string(),
            tok.burst().to_string(),
            ask.tokens.to_string(),
            tenant.terms.max_concurrent.to_string(),
            tenant.budget_micro().unwrap_or(-1).to_string(),
            ask.worst_charge.to_string(),
            self.fallback.seed(&tenant.id, ask.month).to_string(),
            scripts::micros(self.lease_ttl).to_string(),
            self.record_ttl.as_millis().to_string(),
            scripts::SPENT_TTL.as_millis().to_string(),
        ];
        Call {
            which: Which::Admit,
            keys: TenantKeys::new(&self.prefix, &tenant.id).of_admission(ask.month, lease),
            args: args.into(),
        }
    }

    fn settle_call(&self, tenant: &Tenant, r: &Reservation, used: Usage, lease: &str) -> Call {
        let (_, tok) = super::limiter::buckets(tenant);
        let args = [
            self.now_arg(),
            lease.to_string(),
            scripts::micros(tok.interval()).to_string(),
            r.tokens.saturating_sub(used.tokens).to_string(),
            used.charge.max(0).to_string(),
            self.fallback.seed(&tenant.id, r.month).to_string(),
            SETTLED_TTL.as_millis().to_string(),
            scripts::SPENT_TTL.as_millis().to_string(),
        ];
        Call {
            which: Which::Settle,
            keys: TenantKeys::new(&self.prefix, &tenant.id).of_admission(r.month, lease),
            args: args.into(),
        }
    }
}

impl Limiter for RedisLimiter {
    fn admit<'a>(&'a self, tenant: &'a Tenant, ask: Ask) -> AdmitFuture<'a> {
        Box::pin(async move {
            if self.shared.skipping() {
                return self
                    .shared
                    .fallback
                    .admit(tenant, ask)
                    .ok_or_else(|| self.denied_unavailable(tenant))?;
            }
            let id: u128 = rand::random();
            let lease = scripts::lease_name(id);
            let call = self.shared.admit_call(tenant, ask, &lease);
            match self.call(call).await {
                Ok(reply) => self.admitted(tenant, ask, id, reply),
                Err(CallError::Unreachable(e)) => {
                    tracing::debug!(tenant = %tenant.id, error = %e, "admission fell back");
                    // The script may have run: settle the id (nothing used), which also keeps
                    // a late run of it out.
                    let r = Reservation {
                        tokens: ask.tokens,
                        hold: ask.worst_charge,
                        month: ask.month,
                        lease: Some(id),
                    };
                    let call = self
                        .shared
                        .settle_call(tenant, &r, Usage::default(), &lease);
                    self.spawn_settle(tenant.id.as_str().into(), call, 0);
                    self.shared
                        .fallback
                        .admit(tenant, ask)
                        .ok_or_else(|| self.denied_unavailable(tenant))?
                }
                Err(CallError::Broken(e)) => {
                    tracing::error!(tenant = %tenant.id, error = %e, "Redis limiter answered nonsense; refusing");
                    Err(self.denied_unavailable(tenant))
                }
            }
        })
    }

    fn settle(&self, tenant: &Tenant, r: Reservation, used: Usage) {
        let Some(id) = r.lease else {
            return self.shared.fallback.settle(tenant, r, used);
        };
        self.shared
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        let call = self
            .shared
            .settle_call(tenant, &r, used, &scripts::lease_name(id));
        self.spawn_settle(tenant.id.as_str().into(), call, used.charge);
    }

    fn flush(&self) -> FlushFuture<'_> {
        Box::pin(async move {
            loop {
                let notified = self.shared.settled.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.shared.settling.load(Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        })
    }

    fn status(&self, tenant: &Tenant) -> RateStatus {
        self.shared.fallback.status(tenant)
    }

    fn restore_spent(&self, month: u32, spent: &HashMap<String, i64>) {
        self.shared.fallback.restore_spent(month, spent);
    }

    fn in_flight(&self, tenant: &str) -> u32 {
        self.shared.fallback.in_flight(tenant)
    }
}

impl RedisLimiter {
    /// Turns admit.lua's reply into the decision.
    fn admitted(
        &self,
        tenant: &Tenant,
        ask: Ask,
        id: u128,
        reply: Reply,
    ) -> super::limiter::Admitted {
        let known = Known::from_reply(&reply);
        self.shared.fallback.saw(&tenant.id, known);
        let status = fallback::status_of(tenant, &known, 0);
        let kind = match reply.code {
            0 => {
                self.shared
                    .running
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(id, tenant.id.clone());
                let r = Reservation {
                    tokens: ask.tokens,
                    hold: ask.worst_charge,
                    month: ask.month,
                    lease: Some(id),
                };
                return Ok((r, status));
            }
            1 => LimitKind::Requests,
            2 => LimitKind::Tokens,
            3 => LimitKind::TooLarge,
            4 => LimitKind::Concurrency,
            5 => LimitKind::Budget,
            other => {
                tracing::error!(code = other, "admit.lua answered an unknown code; refusing");
                LimitKind::Unavailable
            }
        };
        let wait = match kind {
            LimitKind::Unavailable => SKIP_AFTER_FAILURE,
            _ => Duration::from_micros(reply.wait_us),
        };
        Err(Denied { kind, wait, status })
    }
}

impl Drop for RedisLimiter {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
