//! The shared ledger home: PostgreSQL through the synchronous `postgres` crate, used only from
//! the writer thread and the command-line tools (it runs its own small runtime and must not be
//! called from inside tokio's). Several gateways may write one database, each on its own chain.

use super::store::{
    to_i64, to_replica, to_u64, ChainedRecord, Store, COLUMNS, COLUMN_COUNT, MIGRATIONS,
};
use super::{LedgerError, UsageRecord};
use postgres::types::ToSql;
use postgres::{Client, NoTls, Row};
use std::collections::HashMap;
use std::time::Duration;

/// Serialises migrations across every process using this database: `CREATE ... IF NOT
/// EXISTS` alone still races in PostgreSQL's catalogue. Any fixed number works ("tiergate").
const MIGRATION_LOCK: i64 = 0x7469_6572_6761_7465;

/// Rows per INSERT statement: 23 parameters each stays far below PostgreSQL's 65535.
const ROWS_PER_INSERT: usize = 1000;

pub(crate) struct PgStore {
    client: Client,
}

impl PgStore {
    /// Connects to `url` and migrates; with `schema`, the tables live in that schema (created
    /// if missing; the name was checked to be a plain identifier by `LedgerConfig::validate`).
    pub(crate) fn open(url: &str, schema: Option<&str>) -> Result<Self, LedgerError> {
        let mut config: postgres::Config = url
            .parse()
            .map_err(|_| LedgerError::BadUrl(url.to_string()))?;
        if config.get_connect_timeout().is_none() {
            // Fail at start-up with a clear error instead of hanging on a dead host.
            config.connect_timeout(Duration::from_secs(10));
        }
        // The migrations' `IF NOT EXISTS` make the server send notices ("already exists,
        // skipping") at every open after the first; the crate logs them at info, where they
        // land in the output of `usage report --format json` and read as problems.
        config.notice_callback(|notice| {
            tracing::debug!(notice = notice.message(), "postgres notice")
        });
        let mut client = config.connect(NoTls)?;
        if let Some(schema) = schema {
            client.batch_execute(&format!("SET search_path TO \"{schema}\""))?;
        }
        migrate(&mut client, schema)?;
        Ok(PgStore { client })
    }
}

fn migrate(client: &mut Client, schema: Option<&str>) -> Result<(), LedgerError> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    if let Some(schema) = schema {
        tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))?;
    }
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY)")?;
    for (version, sql) in MIGRATIONS {
        let done = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[version],
            )?
            .is_some();
        if !done {
            tx.batch_execute(sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)",
                &[version],
            )?;
        }
    }
    tx.commit()?;
    Ok(())
}

fn read_row(row: &Row) -> Result<ChainedRecord, LedgerError> {
    let chain: String = row.try_get(0)?;
    let seq: i64 = row.try_get(1)?;
    let replica = to_replica(row.try_get(10)?, &chain, seq)?;
    Ok(ChainedRecord {
        prev_hash: row.try_get(2)?,
        hash: row.try_get(3)?,
        record: UsageRecord {
            request_id: row.try_get(4)?,
            time_ms: row.try_get(5)?,
            tenant: row.try_get(6)?,
            tier: row.try_get(7)?,
            grant_id: row.try_get(8)?,
            model: row.try_get(9)?,
            replica,
            device: row.try_get(11)?,
            prompt_tokens: to_u64(row.try_get(12)?),
            completion_tokens: to_u64(row.try_get(13)?),
            queue_ms: row.try_get(14)?,
            compute_ms: row.try_get(15)?,
            device_seconds: row.try_get(16)?,
            list_micro_hkd: row.try_get(17)?,
            subsidy_rate: row.try_get(18)?,
            subsidy_micro_hkd: row.try_get(19)?,
            charge_micro_hkd: row.try_get(20)?,
            outcome: row.try_get(21)?,
            reason: row.try_get(22)?,
            cached_tokens: to_u64(row.try_get(23)?),
        },
        chain,
        seq,
    })
}

/// One multi-row INSERT: one round trip per statement instead of one per row.
fn insert_chunk(
    tx: &mut postgres::Transaction<'_>,
    rows: &[ChainedRecord],
) -> Result<(), LedgerError> {
    // BIGINT conversions need owned values the parameter list can borrow.
    let ints: Vec<[i64; 3]> = rows
        .iter()
        .map(|r| {
            [
                to_i64(r.record.prompt_tokens),
                to_i64(r.record.completion_tokens),
                to_i64(r.record.cached_tokens),
            ]
        })
        .collect();
    let replicas: Vec<Option<i64>> = rows
        .iter()
        .map(|r| r.record.replica.map(i64::from))
        .collect();
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(rows.len() * COLUMN_COUNT);
    let mut tuples = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let r = &row.record;
        params.extend_from_slice(&[
            &row.chain,
            &row.seq,
            &row.prev_hash,
            &row.hash,
            &r.request_id,
            &r.time_ms,
            &r.tenant,
            &r.tier,
            &r.grant_id,
            &r.model,
            &replicas[i],
            &r.device,
            &ints[i][0],
            &ints[i][1],
            &r.queue_ms,
            &r.compute_ms,
            &r.device_seconds,
            &r.list_micro_hkd,
            &r.subsidy_rate,
            &r.subsidy_micro_hkd,
            &r.charge_micro_hkd,
            &r.outcome,
            &r.reason,
            &ints[i][2],
        ]);
        let first = i * COLUMN_COUNT;
        let marks: Vec<String> = (1..=COLUMN_COUNT)
            .map(|c| format!("${}", first + c))
            .collect();
        tuples.push(format!("({})", marks.join(", ")));
    }
    let sql = format!(
        "INSERT INTO usage_records ({COLUMNS}) VALUES {}",
        tuples.join(", ")
    );
    tx.execute(sql.as_str(), &params)?;
    Ok(())
}

impl Store for PgStore {
    fn head(&mut self, chain: &str) -> Result<Option<(i64, String)>, LedgerError> {
        let sql = "SELECT seq, hash FROM usage_records WHERE chain = $1 ORDER BY seq DESC LIMIT 1";
        let row = self.client.query_opt(sql, &[&chain])?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    fn append(&mut self, rows: &[ChainedRecord]) -> Result<(), LedgerError> {
        let mut tx = self.client.transaction()?;
        for chunk in rows.chunks(ROWS_PER_INSERT) {
            insert_chunk(&mut tx, chunk)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn chains(&mut self) -> Result<Vec<String>, LedgerError> {
        let rows = self.client.query(
            "SELECT DISTINCT chain FROM usage_records ORDER BY chain",
            &[],
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn scan(
        &mut self,
        chain: &str,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<ChainedRecord>, LedgerError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM usage_records WHERE chain = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .client
            .query(sql.as_str(), &[&chain, &after_seq, &limit])?;
        rows.iter().map(read_row).collect()
    }

    fn records_between(
        &mut self,
        from_ms: i64,
        to_ms: i64,
        tenant: Option<&str>,
    ) -> Result<Vec<UsageRecord>, LedgerError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM usage_records WHERE time_ms >= $1 AND time_ms < $2 \
             AND ($3::TEXT IS NULL OR tenant = $3) ORDER BY time_ms, chain, seq"
        );
        let rows = self
            .client
            .query(sql.as_str(), &[&from_ms, &to_ms, &tenant])?;
        rows.iter().map(|r| Ok(read_row(r)?.record)).collect()
    }

    fn charges_between(
        &mut self,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<HashMap<String, i64>, LedgerError> {
        // SUM(BIGINT) is NUMERIC in PostgreSQL; a month of µHKD fits a BIGINT comfortably.
        let rows = self.client.query(
            "SELECT tenant, SUM(charge_micro_hkd)::BIGINT FROM usage_records \
             WHERE time_ms >= $1 AND time_ms < $2 GROUP BY tenant",
            &[&from_ms, &to_ms],
        )?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}
