//! The default ledger home: one SQLite file in WAL mode, so that `ledger verify` and `usage
//! report` can read while the gateway writes. `synchronous=NORMAL` in WAL mode never corrupts
//! the file; a power cut may lose the last commits, which an OS crash would lose anyway.

use super::store::{
    to_i64, to_replica, to_u64, ChainedRecord, Store, COLUMNS, COLUMN_COUNT, MIGRATIONS,
};
use super::{LedgerError, UsageRecord};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::collections::HashMap;
use std::time::Duration;

/// Owns one connection; used by one thread at a time (the writer, or a command-line tool).
pub(crate) struct SqliteStore {
    conn: Connection,
}

impl SqliteStore {
    pub(crate) fn open(path: &str) -> Result<Self, LedgerError> {
        let mut conn = Connection::open(path)?;
        // Another process (a second gateway, `ledger verify`) may hold the write lock for a
        // moment; wait for it rather than fail.
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Switching a new file to WAL, and a lock upgrade that could deadlock, fail at once
        // with SQLITE_BUSY without consulting the busy timeout: retry those steps ourselves.
        retry_busy(|| {
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "NORMAL")
        })?;
        retry_busy(|| migrate(&mut conn))?;
        Ok(SqliteStore { conn })
    }
}

const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

fn retry_busy<T, E>(mut step: impl FnMut() -> Result<T, E>) -> Result<T, LedgerError>
where
    LedgerError: From<E>,
{
    let start = std::time::Instant::now();
    loop {
        match step().map_err(LedgerError::from) {
            Err(LedgerError::Sqlite(e))
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                    && start.elapsed() < BUSY_TIMEOUT =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Applies the missing migrations under SQLite's write lock (`BEGIN IMMEDIATE`), so two
/// processes opening a new file at once apply each migration exactly once.
fn migrate(conn: &mut Connection) -> Result<(), LedgerError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY)")?;
    for (version, sql) in MIGRATIONS {
        let done = tx
            .query_row(
                "SELECT 1 FROM schema_migrations WHERE version = ?1",
                [version],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if !done {
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES (?1)",
                [version],
            )?;
        }
    }
    tx.commit()?;
    Ok(())
}

fn read_row(row: &rusqlite::Row<'_>) -> Result<ChainedRecord, LedgerError> {
    let chain: String = row.get(0)?;
    let seq: i64 = row.get(1)?;
    let replica = to_replica(row.get(10)?, &chain, seq)?;
    Ok(ChainedRecord {
        prev_hash: row.get(2)?,
        hash: row.get(3)?,
        record: UsageRecord {
            request_id: row.get(4)?,
            time_ms: row.get(5)?,
            tenant: row.get(6)?,
            tier: row.get(7)?,
            grant_id: row.get(8)?,
            model: row.get(9)?,
            replica,
            device: row.get(11)?,
            prompt_tokens: to_u64(row.get(12)?),
            completion_tokens: to_u64(row.get(13)?),
            queue_ms: row.get(14)?,
            compute_ms: row.get(15)?,
            device_seconds: row.get(16)?,
            list_micro_hkd: row.get(17)?,
            subsidy_rate: row.get(18)?,
            subsidy_micro_hkd: row.get(19)?,
            charge_micro_hkd: row.get(20)?,
            outcome: row.get(21)?,
            reason: row.get(22)?,
            cached_tokens: to_u64(row.get(23)?),
        },
        chain,
        seq,
    })
}

fn query_rows(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<ChainedRecord>, LedgerError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(read_row(row)?);
    }
    Ok(out)
}

impl Store for SqliteStore {
    fn head(&mut self, chain: &str) -> Result<Option<(i64, String)>, LedgerError> {
        let sql = "SELECT seq, hash FROM usage_records WHERE chain = ?1 ORDER BY seq DESC LIMIT 1";
        let head = self
            .conn
            .query_row(sql, [chain], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        Ok(head)
    }

    fn append(&mut self, rows: &[ChainedRecord]) -> Result<(), LedgerError> {
        let placeholders: Vec<String> = (1..=COLUMN_COUNT).map(|i| format!("?{i}")).collect();
        let sql = format!(
            "INSERT INTO usage_records ({COLUMNS}) VALUES ({})",
            placeholders.join(", ")
        );
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(&sql)?;
            for row in rows {
                let r = &row.record;
                stmt.execute(params![
                    row.chain,
                    row.seq,
                    row.prev_hash,
                    row.hash,
                    r.request_id,
                    r.time_ms,
                    r.tenant,
                    r.tier,
                    r.grant_id,
                    r.model,
                    r.replica.map(i64::from),
                    r.device,
                    to_i64(r.prompt_tokens),
                    to_i64(r.completion_tokens),
                    r.queue_ms,
                    r.compute_ms,
                    r.device_seconds,
                    r.list_micro_hkd,
                    r.subsidy_rate,
                    r.subsidy_micro_hkd,
                    r.charge_micro_hkd,
                    r.outcome,
                    r.reason,
                    to_i64(r.cached_tokens),
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn chains(&mut self) -> Result<Vec<String>, LedgerError> {
        let mut stmt = self
            .conn
            .prepare("SELECT DISTINCT chain FROM usage_records ORDER BY chain")?;
        let names = stmt.query_map([], |r| r.get(0))?;
        Ok(names.collect::<Result<_, _>>()?)
    }

    fn scan(
        &mut self,
        chain: &str,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<ChainedRecord>, LedgerError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM usage_records WHERE chain = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        query_rows(&self.conn, &sql, params![chain, after_seq, limit])
    }

    fn records_between(
        &mut self,
        from_ms: i64,
        to_ms: i64,
        tenant: Option<&str>,
    ) -> Result<Vec<UsageRecord>, LedgerError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM usage_records WHERE time_ms >= ?1 AND time_ms < ?2 \
             AND (?3 IS NULL OR tenant = ?3) ORDER BY time_ms, chain, seq"
        );
        let rows = query_rows(&self.conn, &sql, params![from_ms, to_ms, tenant])?;
        Ok(rows.into_iter().map(|r| r.record).collect())
    }

    fn charges_between(
        &mut self,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<HashMap<String, i64>, LedgerError> {
        let mut stmt = self.conn.prepare(
            "SELECT tenant, SUM(charge_micro_hkd) FROM usage_records \
             WHERE time_ms >= ?1 AND time_ms < ?2 GROUP BY tenant",
        )?;
        let sums = stmt.query_map([from_ms, to_ms], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(sums.collect::<Result<_, _>>()?)
    }
}
