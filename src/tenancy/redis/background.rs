//! What runs beside the requests: the lease renewal every third of the TTL (so that only a
//! gateway that stopped loses its leases), and the start-up probe that says in the log whether
//! Redis answers.

use super::scripts::{self, Call, TenantKeys, Which};
use super::{CallError, Shared};
use std::collections::HashMap;
use std::sync::{Arc, PoisonError, Weak};

impl Shared {
    /// Renews every lease of this gateway's running requests: one call per tenant.
    pub(super) async fn renew_all(&self) {
        let mut by_tenant: HashMap<String, Vec<String>> = HashMap::new();
        for (id, tenant) in self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            by_tenant
                .entry(tenant.clone())
                .or_default()
                .push(scripts::lease_name(*id));
        }
        for (tenant, leases) in by_tenant {
            let mut args = vec![self.now_arg(), scripts::micros(self.lease_ttl).to_string()];
            args.extend(leases);
            let call = Call {
                which: Which::Renew,
                keys: TenantKeys::new(&self.prefix, &tenant).of_leases(),
                args,
            };
            let renewed = self.invoke(&call).await;
            if let Err(e) =
                renewed.and_then(|v| scripts::parse_count(&v).map_err(CallError::Broken))
            {
                tracing::debug!(tenant, error = ?e, "lease renewal failed; retried next round");
            }
        }
    }
}

/// Renews the leases of running requests every third of their TTL, until the limiter goes.
pub(super) async fn renew_loop(shared: Weak<Shared>) {
    let every = match shared.upgrade() {
        Some(s) => s.lease_ttl / 3,
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.renew_all().await;
    }
}

/// Says at start whether Redis answers, so that an outage shows in the log before traffic.
pub(super) async fn probe(shared: Arc<Shared>, url: String, policy: crate::config::OnUnavailable) {
    let mut conn = shared.conn.clone();
    let ping = redis::cmd("PING");
    match tokio::time::timeout(shared.timeout, ping.query_async::<String>(&mut conn)).await {
        Ok(Ok(_)) => tracing::info!(url, "tenant limits are shared in Redis"),
        Ok(Err(e)) => tracing::warn!(url, error = %e, on_unavailable = ?policy,
            "Redis for the tenant limits is unreachable at start; starting anyway"),
        Err(_) => tracing::warn!(url, on_unavailable = ?policy,
            "Redis for the tenant limits did not answer at start; starting anyway"),
    }
}

/// The URL without its password, for the log.
pub(super) fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}
