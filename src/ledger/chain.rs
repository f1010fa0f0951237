//! The hash chain over ledger rows and its verification.
//!
//! Row `seq` of a chain stores `prev_hash` (the hash of row `seq - 1`, 64 zeros for row 1) and
//! `hash = sha256_hex(prev_hash + "\n" + canonical)`, where `canonical` is the JSON of
//! `{chain, seq, record}` with the record's fields in declaration order. Editing any field,
//! deleting or reordering rows, or moving a row to another chain breaks a link that `verify`
//! finds. The limit: deleting the *newest* rows leaves a shorter chain that is still valid;
//! only a copy of the head hash kept elsewhere (an anchor: `ledger verify` prints it) shows it.
//!
//! Canonical JSON is stable across database round trips: strings and integers come back as
//! they went in, and floats are 64-bit in both homes and printed by serde_json as the
//! shortest text that reads back to the same bits (`UsageRecord::normalize` removes the few
//! values a database cannot hold). Changing `UsageRecord`'s fields changes the canonical form:
//! that needs a schema migration and a rule for hashing older rows as they were written.

use super::store::{ChainedRecord, Store};
use super::{LedgerError, UsageRecord};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// `prev_hash` of the first row of every chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Rows read per page while verifying: bounds memory on a large ledger.
const VERIFY_PAGE: usize = 10_000;

#[derive(Serialize)]
struct Canonical<'a> {
    chain: &'a str,
    seq: i64,
    record: &'a UsageRecord,
}

/// The hash of one row given the hash of the row before.
pub fn row_hash(prev_hash: &str, chain: &str, seq: i64, record: &UsageRecord) -> String {
    let canonical = serde_json::to_string(&Canonical { chain, seq, record })
        .expect("a UsageRecord always serialises");
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.as_bytes());
    hasher.update(b"\n");
    hasher.update(canonical.as_bytes());
    hex::encode(hasher.finalize())
}

/// Chains `records` after `head` (the chain's last `(seq, hash)`, `None` when empty).
pub(crate) fn link(
    head: Option<&(i64, String)>,
    chain: &str,
    records: &[UsageRecord],
) -> Vec<ChainedRecord> {
    let (mut seq, mut prev) = match head {
        Some((seq, hash)) => (*seq, hash.clone()),
        None => (0, GENESIS.to_string()),
    };
    records
        .iter()
        .map(|record| {
            seq += 1;
            let hash = row_hash(&prev, chain, seq, record);
            ChainedRecord {
                chain: chain.to_string(),
                seq,
                prev_hash: std::mem::replace(&mut prev, hash.clone()),
                hash,
                record: record.clone(),
            }
        })
        .collect()
}

/// What `verify` found, chain by chain.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyReport {
    pub chains: Vec<ChainReport>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChainReport {
    pub chain: String,
    /// Rows that checked out before the first break (all rows when intact).
    pub rows_ok: u64,
    /// Last good `(seq, hash)`: the value to anchor outside the database.
    pub head: Option<(i64, String)>,
    pub first_break: Option<Break>,
}

/// The first row of a chain that does not check out.
#[derive(Debug, Clone, PartialEq)]
pub struct Break {
    pub seq: i64,
    pub kind: BreakKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum BreakKind {
    /// Rows are missing before this one (deleted): `expected` was the next sequence number.
    Gap { expected: i64 },
    /// `prev_hash` is not the hash of the row before (rows deleted or replaced).
    BrokenLink,
    /// The row's content no longer hashes to its `hash` (edited).
    Edited,
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            BreakKind::Gap { expected } => write!(
                f,
                "seq {} follows seq {}: rows {expected}..{} are missing",
                self.seq,
                expected - 1,
                self.seq - 1
            ),
            BreakKind::BrokenLink => write!(
                f,
                "seq {}: prev_hash is not the hash of the row before (rows deleted or replaced)",
                self.seq
            ),
            BreakKind::Edited => write!(
                f,
                "seq {}: content does not match its hash (row edited)",
                self.seq
            ),
        }
    }
}

impl VerifyReport {
    pub fn is_intact(&self) -> bool {
        self.chains.iter().all(|c| c.first_break.is_none())
    }
}

/// Checks every chain in `store`: sequence contiguous from 1, each `prev_hash` the hash of
/// the row before, each `hash` recomputed from the row. Stops each chain at its first break.
pub fn verify(store: &mut dyn Store) -> Result<VerifyReport, LedgerError> {
    let mut chains = Vec::new();
    for chain in store.chains()? {
        chains.push(verify_chain(store, &chain)?);
    }
    Ok(VerifyReport { chains })
}

fn verify_chain(store: &mut dyn Store, chain: &str) -> Result<ChainReport, LedgerError> {
    let mut report = ChainReport {
        chain: chain.to_string(),
        rows_ok: 0,
        head: None,
        first_break: None,
    };
    let mut prev = (0i64, GENESIS.to_string());
    loop {
        let page = store.scan(chain, prev.0, VERIFY_PAGE)?;
        if page.is_empty() {
            return Ok(report);
        }
        for row in &page {
            if let Some(kind) = check_row(&prev, row) {
                report.first_break = Some(Break { seq: row.seq, kind });
                return Ok(report);
            }
            prev = (row.seq, row.hash.clone());
            report.rows_ok += 1;
            report.head = Some(prev.clone());
        }
    }
}

fn check_row(prev: &(i64, String), row: &ChainedRecord) -> Option<BreakKind> {
    if row.seq != prev.0 + 1 {
        return Some(BreakKind::Gap {
            expected: prev.0 + 1,
        });
    }
    if row.prev_hash != prev.1 {
        return Some(BreakKind::BrokenLink);
    }
    if row_hash(&row.prev_hash, &row.chain, row.seq, &row.record) != row.hash {
        return Some(BreakKind::Edited);
    }
    None
}
