//! The usage ledger: one [`UsageRecord`] per request, admitted or rejected, kept in SQLite (a
//! local file, the default) or PostgreSQL, each row chained to the one before by a hash so
//! that `tiergate ledger verify` finds any edited or deleted row.
//!
//! The request path never touches the disk: it takes a [`RecordSlot`] from the [`Ledger`] at
//! admission (a place in a bounded channel; none free means shed the request with 503) and
//! fills it when the request ends. A writer thread owns the store and appends records in
//! batches, one transaction each (`writer`). `report` turns a month of records into the
//! per-tenant usage report; `price` splits a request's cost into subsidy and tenant charge.

mod chain;
mod config;
#[doc(hidden)]
pub mod conformance;
mod month;
mod postgres;
mod price;
mod record;
mod report;
mod sqlite;
mod store;
mod writer;

#[cfg(test)]
mod tests;

pub use crate::outcome::Outcome;
pub use chain::{row_hash, verify, Break, BreakKind, ChainReport, VerifyReport, GENESIS};
pub use config::LedgerConfig;
pub use month::{civil_from_days, month_range, month_range_of};
pub use price::{cost_split, cost_split_cached, CostSplit, Price};
pub use record::UsageRecord;
pub use report::{build_report, hkd, Report, ReportFormat, ReportRow};
pub use store::{ChainedRecord, Store};
pub use writer::{Ledger, LedgerStats, LedgerWriter, RecordSlot};

/// Errors of the ledger layer: storage, configuration and the writer's life.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("sqlite ledger: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres ledger: {0}")]
    Postgres(#[from] ::postgres::Error),
    #[error("ledger url {0:?}: expected sqlite://PATH or postgres://...")]
    BadUrl(String),
    #[error("ledger row {chain}#{seq}: column `{column}` holds a value no record can have")]
    BadRow {
        chain: String,
        seq: i64,
        column: &'static str,
    },
    #[error("the ledger writer could not start: {0}")]
    Start(String),
    #[error("the ledger writer has stopped")]
    WriterGone,
    #[error("{0} usage records could not be stored before shutdown; they were logged in full")]
    Unflushed(usize),
    #[error("month {0:?}: expected YYYY-MM")]
    BadMonth(String),
}

/// Opens the store `cfg.url` names and brings its schema up to date. Blocking; from async
/// code call it inside `spawn_blocking` (required for PostgreSQL).
pub fn open_store(cfg: &LedgerConfig) -> Result<Box<dyn Store>, LedgerError> {
    if let Some(path) = cfg.url.strip_prefix("sqlite://") {
        return Ok(Box::new(sqlite::SqliteStore::open(path)?));
    }
    if cfg.url.starts_with("postgres://") || cfg.url.starts_with("postgresql://") {
        let store = postgres::PgStore::open(&cfg.url, cfg.pg_schema.as_deref())?;
        return Ok(Box::new(store));
    }
    Err(LedgerError::BadUrl(cfg.url.clone()))
}
