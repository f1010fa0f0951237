//! The `[ledger]` section of the gateway config.

use serde::{Deserialize, Serialize};

/// Where usage records go and how the writer batches them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// `sqlite://PATH` (a file, relative to the working directory unless absolute) or a
    /// PostgreSQL URL `postgres://USER[:PASSWORD]@HOST[:PORT]/DB`.
    pub url: String,
    /// PostgreSQL only: schema holding the ledger tables, created if missing. Unset: the
    /// server's default (`public`).
    pub pg_schema: Option<String>,
    /// Name of this writer's hash chain: the gateway's id in a shared ledger. Gateways sharing
    /// one PostgreSQL ledger must each use their own name (the host name, or the pod name in
    /// Kubernetes: unique among live pods); `ledger verify` checks every chain and the usage
    /// report sums them all. Two live writers on one chain would contend for each sequence
    /// number: the database refuses the second row and the loser logs a chain clash and
    /// appends after the winner, so the chain stays intact but every clash costs a retry.
    pub chain: String,
    /// Records that may wait for the writer. Every admitted request holds one place from
    /// admission to its end, so this also caps requests in flight; when it is full, new
    /// requests are shed with 503 instead of losing their records.
    pub channel_capacity: usize,
    /// Most records appended in one transaction.
    pub batch_size: usize,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            url: "sqlite://tiergate-ledger.db".into(),
            pg_schema: None,
            chain: "main".into(),
            // ~1 KiB per record: at most ~4 MiB held, and at 1000 requests/s about four
            // seconds of a stalled disk absorbed before the gateway starts shedding.
            channel_capacity: 4096,
            // Large enough to amortise a commit under load, small enough that one
            // transaction stays in the milliseconds.
            batch_size: 256,
        }
    }
}

impl LedgerConfig {
    /// Checks the values; the error names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.url.starts_with("sqlite://")
            || self.url.starts_with("postgres://")
            || self.url.starts_with("postgresql://"))
        {
            return Err("`ledger.url` must start with sqlite:// or postgres://".into());
        }
        if self.chain.is_empty() {
            return Err("`ledger.chain` must not be empty".into());
        }
        if self.channel_capacity == 0 || self.batch_size == 0 {
            return Err(
                "`ledger.channel_capacity` and `ledger.batch_size` must be positive".into(),
            );
        }
        if let Some(s) = &self.pg_schema {
            let ok = !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err("`ledger.pg_schema` must be letters, digits and `_`".into());
            }
        }
        Ok(())
    }

    /// The URL with any password replaced by `***`, for logs.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }
}

fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_redacted_for_logs() {
        assert_eq!(
            redact("postgres://u:secret@db:5432/x"),
            "postgres://u:***@db:5432/x"
        );
        assert_eq!(redact("postgres://u@db/x"), "postgres://u@db/x");
        assert_eq!(redact("sqlite://a.db"), "sqlite://a.db");
    }

    #[test]
    fn unknown_scheme_is_rejected() {
        let cfg = LedgerConfig {
            url: "mysql://x".into(),
            ..LedgerConfig::default()
        };
        assert!(cfg.validate().unwrap_err().contains("ledger.url"));
    }

    #[test]
    fn schema_name_cannot_inject_sql() {
        let cfg = LedgerConfig {
            pg_schema: Some("x; drop table y".into()),
            ..LedgerConfig::default()
        };
        assert!(cfg.validate().unwrap_err().contains("pg_schema"));
    }
}
