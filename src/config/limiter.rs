//! `[tenancy.limiter]`: where tenant limits live. `local` keeps them in this process (one
//! gateway); `redis` keeps them in one Redis shared by every gateway, so that N gateways hold a
//! tenant to its limits as one would (see `tenancy::redis`).

use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimiterBackend {
    Local,
    Redis,
}

/// What a Redis limiter does while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailable {
    /// Every request is answered 503 with Retry-After.
    Reject,
    /// Each gateway admits ceil(limit / gateways) locally; tenants with a money budget still get
    /// 503, since a budget split N ways cannot be reconciled afterwards.
    LocalShare,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimiterConfig {
    pub backend: LimiterBackend,
    /// `redis://[:password@]host:port/db` (or `rediss://`); used when `backend = "redis"`.
    pub url: String,
    pub on_unavailable: OnUnavailable,
    /// Gateways sharing the limits, for `local_share`.
    pub gateways: u32,
    /// Prefix of every key; gateways sharing limits must use the same one.
    pub key_prefix: String,
    /// A running request's concurrency lease lasts this long unless its gateway renews it
    /// (every third of it): a gateway that dies frees its slots within this time.
    pub lease_ttl_secs: u64,
    /// Longest one Redis call may take before it counts as Redis being unreachable.
    pub timeout_ms: u64,
    /// Redis calls in flight at once from this gateway; more wait (within `timeout_ms`).
    pub max_in_flight: usize,
}

impl Default for LimiterConfig {
    fn default() -> Self {
        LimiterConfig {
            backend: LimiterBackend::Local,
            url: "redis://127.0.0.1:6379/0".into(),
            on_unavailable: OnUnavailable::Reject,
            gateways: 1,
            key_prefix: "tiergate:".into(),
            lease_ttl_secs: 15,
            timeout_ms: 250,
            max_in_flight: 256,
        }
    }
}

impl LimiterConfig {
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl_secs)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The first bad key and why. The URL is checked only when it is used.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        for (key, v) in [
            ("tenancy.limiter.gateways", u64::from(self.gateways)),
            ("tenancy.limiter.lease_ttl_secs", self.lease_ttl_secs),
            ("tenancy.limiter.timeout_ms", self.timeout_ms),
            ("tenancy.limiter.max_in_flight", self.max_in_flight as u64),
        ] {
            if v == 0 {
                return Err((key, "must be positive".into()));
            }
        }
        // A brace would end the `{tenant}` hash tag early on Redis Cluster.
        if self.key_prefix.contains(['{', '}']) {
            return Err((
                "tenancy.limiter.key_prefix",
                "must not contain { or }".into(),
            ));
        }
        if self.backend == LimiterBackend::Redis {
            redis::Client::open(self.url.as_str()).map_err(|e| {
                (
                    "tenancy.limiter.url",
                    format!("is not a Redis URL (redis://host:port/db): {e}"),
                )
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_redis_url_names_its_key() {
        let config = LimiterConfig {
            backend: LimiterBackend::Redis,
            url: "127.0.0.1:6379".into(),
            ..LimiterConfig::default()
        };
        let (key, _) = config.check().unwrap_err();
        assert_eq!(key, "tenancy.limiter.url");
    }

    #[test]
    fn the_url_of_an_unused_redis_is_not_checked() {
        let config = LimiterConfig {
            url: "nonsense".into(),
            ..LimiterConfig::default()
        };
        assert!(config.check().is_ok());
    }
}
