//! The three Lua scripts and what travels to and from them: the key names (every key of a
//! tenant carries the hash tag `{tenant}`, so that on Redis Cluster they share one slot and one
//! script may touch them all), the arguments, and the replies, parsed strictly: a reply of any
//! other shape is an error, never an admission.

use redis::aio::ConnectionManager;
use redis::{Script, Value};
use std::sync::LazyLock;
use std::time::Duration;

static ADMIT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("admit.lua")));
static SETTLE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("settle.lua")));
static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("renew.lua")));

/// How long the spent total of a month is kept: past the month's end, so that a request
/// settled just after midnight on the 1st still finds its month.
pub(super) const SPENT_TTL: Duration = Duration::from_secs(40 * 86_400);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Which {
    Admit,
    Settle,
    Renew,
}

/// One script call, owned, so that it can run on the limiter's runtime (and run again).
#[derive(Debug, Clone)]
pub(super) struct Call {
    pub which: Which,
    pub keys: Vec<String>,
    pub args: Vec<String>,
}

impl Call {
    pub(super) async fn invoke(&self, conn: &mut ConnectionManager) -> redis::RedisResult<Value> {
        let script: &Script = match self.which {
            Which::Admit => &ADMIT,
            Which::Settle => &SETTLE,
            Which::Renew => &RENEW,
        };
        let mut invocation = script.prepare_invoke();
        for k in &self.keys {
            invocation.key(k);
        }
        for a in &self.args {
            invocation.arg(a);
        }
        // EVALSHA; EVAL only the first time a server meets the script.
        invocation.invoke_async(conn).await
    }
}

/// The names of one tenant's keys.
pub(super) struct TenantKeys(String);

impl TenantKeys {
    pub(super) fn new(prefix: &str, tenant: &str) -> Self {
        TenantKeys(format!("{prefix}{{{tenant}}}:"))
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.0)
    }

    /// The keys admit.lua and settle.lua take, in their order.
    pub(super) fn of_admission(&self, month: u32, lease: &str) -> Vec<String> {
        vec![
            self.key("requests"),
            self.key("tokens"),
            self.key("leases"),
            self.key("holds"),
            self.key(&format!("spent:{month}")),
            self.key(&format!("admitted:{lease}")),
            self.key(&format!("settled:{lease}")),
        ]
    }

    /// The keys renew.lua takes.
    pub(super) fn of_leases(&self) -> Vec<String> {
        vec![self.key("leases"), self.key("holds")]
    }
}

/// A lease id as the scripts see it.
pub(super) fn lease_name(id: u128) -> String {
    format!("{id:032x}")
}

/// Whole microseconds, at least 1 (a script's cell never costs nothing).
pub(super) fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

/// What admit.lua and settle.lua answer; times in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Reply {
    pub code: i64,
    pub wait_us: u64,
    pub requests_ahead_us: u64,
    pub tokens_ahead_us: u64,
    pub leases: u32,
}

/// Exactly five non-negative integers, or an error naming what came instead.
pub(super) fn parse_reply(v: &Value) -> Result<Reply, String> {
    let Value::Array(items) = v else {
        return Err(format!("expected an array of 5 integers, got {v:?}"));
    };
    let nums: Vec<i64> = items
        .iter()
        .map(|i| match i {
            Value::Int(n) if *n >= 0 => Ok(*n),
            other => Err(format!("expected a non-negative integer, got {other:?}")),
        })
        .collect::<Result<_, _>>()?;
    let [code, wait, req, tok, leases] = nums[..] else {
        return Err(format!("expected 5 integers, got {}", nums.len()));
    };
    Ok(Reply {
        code,
        wait_us: wait as u64,
        requests_ahead_us: req as u64,
        tokens_ahead_us: tok as u64,
        leases: u32::try_from(leases).map_err(|e| e.to_string())?,
    })
}

/// renew.lua's count.
pub(super) fn parse_count(v: &Value) -> Result<u64, String> {
    match v {
        Value::Int(n) if *n >= 0 => Ok(*n as u64),
        other => Err(format!("expected a count, got {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_tenant_shares_one_hash_tag() {
        let keys = TenantKeys::new("tg:", "acme").of_admission(202612, "ab");
        assert!(keys.iter().all(|k| k.starts_with("tg:{acme}:")), "{keys:?}");
        assert_eq!(keys[4], "tg:{acme}:spent:202612");
    }

    #[test]
    fn a_reply_of_another_shape_is_an_error() {
        let five = |v: Value| {
            Value::Array(vec![
                Value::Int(0),
                v,
                Value::Int(0),
                Value::Int(0),
                Value::Int(1),
            ])
        };
        assert!(parse_reply(&five(Value::Int(3))).is_ok());
        assert!(parse_reply(&Value::Int(42)).is_err());
        assert!(parse_reply(&five(Value::Nil)).is_err());
        assert!(parse_reply(&five(Value::Int(-1))).is_err());
        assert!(parse_reply(&Value::Array(vec![Value::Int(0)])).is_err());
    }
}
