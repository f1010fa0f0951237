//! The storage contract both homes of the ledger (SQLite, PostgreSQL) fulfil, and the schema
//! they share. Synchronous on purpose: only the writer thread and the command-line tools call
//! it, never async code (the `postgres` crate runs its own runtime and panics inside tokio's).

use super::{LedgerError, UsageRecord};
use std::collections::HashMap;

/// A record as stored: its place in a hash chain and the hashes that tie it to the row before.
#[derive(Clone, Debug, PartialEq)]
pub struct ChainedRecord {
    pub chain: String,
    /// 1 for the first row of a chain, then contiguous.
    pub seq: i64,
    /// `hash` of the row before; 64 zeros for the first row.
    pub prev_hash: String,
    pub hash: String,
    pub record: UsageRecord,
}

/// A ledger store. Implementations apply the schema migrations when opened.
pub trait Store: Send {
    /// The last `(seq, hash)` of `chain`, `None` for an empty chain.
    fn head(&mut self, chain: &str) -> Result<Option<(i64, String)>, LedgerError>;
    /// Appends `rows` in one transaction: all of them or none.
    fn append(&mut self, rows: &[ChainedRecord]) -> Result<(), LedgerError>;
    /// Names of every chain with at least one row, sorted.
    fn chains(&mut self) -> Result<Vec<String>, LedgerError>;
    /// Up to `limit` rows of `chain` with `seq > after_seq`, in `seq` order (a page of a scan).
    fn scan(
        &mut self,
        chain: &str,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<ChainedRecord>, LedgerError>;
    /// Records with `from_ms <= time_ms < to_ms`, of one tenant or all, in time order.
    fn records_between(
        &mut self,
        from_ms: i64,
        to_ms: i64,
        tenant: Option<&str>,
    ) -> Result<Vec<UsageRecord>, LedgerError>;
    /// Sum of `charge_micro_hkd` per tenant over `from_ms <= time_ms < to_ms`: restores each
    /// tenant's month-to-date budget use at start-up.
    fn charges_between(
        &mut self,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<HashMap<String, i64>, LedgerError>;
}

/// Every column of `usage_records`, in the order rows are written and read.
pub(crate) const COLUMNS: &str = "chain, seq, prev_hash, hash, request_id, time_ms, tenant, \
    tier, grant_id, model, replica, device, prompt_tokens, completion_tokens, queue_ms, \
    compute_ms, device_seconds, list_micro_hkd, subsidy_rate, subsidy_micro_hkd, \
    charge_micro_hkd, outcome, reason, cached_tokens";

/// How many entries `COLUMNS` has.
pub(crate) const COLUMN_COUNT: usize = 24;

/// Numbered schema migrations, applied in order, each once; never edit a released one, add
/// the next number. The SQL is portable between SQLite and PostgreSQL (SQLite reads BIGINT as
/// INTEGER and DOUBLE PRECISION as REAL, both 64-bit, so values round-trip exactly).
pub(crate) const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE IF NOT EXISTS usage_records (
        chain TEXT NOT NULL,
        seq BIGINT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL,
        request_id TEXT NOT NULL,
        time_ms BIGINT NOT NULL,
        tenant TEXT NOT NULL,
        tier TEXT NOT NULL,
        grant_id TEXT NOT NULL,
        model TEXT NOT NULL,
        replica BIGINT,
        device TEXT NOT NULL,
        prompt_tokens BIGINT NOT NULL,
        completion_tokens BIGINT NOT NULL,
        queue_ms DOUBLE PRECISION NOT NULL,
        compute_ms DOUBLE PRECISION NOT NULL,
        device_seconds DOUBLE PRECISION NOT NULL,
        list_micro_hkd BIGINT NOT NULL,
        subsidy_rate DOUBLE PRECISION NOT NULL,
        subsidy_micro_hkd BIGINT NOT NULL,
        charge_micro_hkd BIGINT NOT NULL,
        outcome TEXT NOT NULL,
        reason TEXT,
        UNIQUE (chain, seq)
    );
    CREATE INDEX IF NOT EXISTS usage_records_time ON usage_records (time_ms);",
    ),
    // Prompt tokens served from the prefix cache. Older rows read 0, which their hash
    // never included (`UsageRecord::cached_tokens`), so their chains still verify.
    (
        2,
        "ALTER TABLE usage_records ADD COLUMN cached_tokens BIGINT NOT NULL DEFAULT 0;",
    ),
];

/// Counts stored as BIGINT; `normalize` keeps them at most `i64::MAX`.
pub(crate) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Reads a BIGINT count back. A negative value (someone edited the row) maps to a distinct
/// huge count, so the row's hash no longer recomputes and `verify` reports it.
pub(crate) fn to_u64(n: i64) -> u64 {
    n as u64
}

/// Reads a replica index back; out of range only if edited, which is an error, not a
/// silent truncation that could make the edited row hash like the original.
pub(crate) fn to_replica(
    n: Option<i64>,
    chain: &str,
    seq: i64,
) -> Result<Option<u32>, LedgerError> {
    n.map(|n| {
        u32::try_from(n).map_err(|_| LedgerError::BadRow {
            chain: chain.to_string(),
            seq,
            column: "replica",
        })
    })
    .transpose()
}
