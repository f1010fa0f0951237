//! The store conformance suite against SQLite, and the writer's behaviour with stores that
//! fail on purpose.

use super::conformance as c;
use super::sqlite::SqliteStore;
use super::store::Store;
use super::writer::start;
use super::*;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A SQLite file under the temp dir with a name no other test uses; removed (with its WAL
/// files) on drop.
struct TempDb(PathBuf);

impl TempDb {
    fn new(name: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let unique = format!(
            "tiergate-ledger-{}-{}-{name}.db",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        TempDb(std::env::temp_dir().join(unique))
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }

    fn open(&self) -> SqliteStore {
        SqliteStore::open(self.path()).expect("open sqlite")
    }

    fn exec(&self) -> impl FnMut(&str) + '_ {
        let conn = rusqlite::Connection::open(self.path()).expect("open raw");
        move |sql| {
            conn.execute_batch(sql).expect("tamper statement");
        }
    }

    fn config(&self) -> LedgerConfig {
        LedgerConfig {
            url: format!("sqlite://{}", self.path()),
            ..LedgerConfig::default()
        }
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.path()));
        }
    }
}

macro_rules! sqlite_case {
    ($name:ident) => {
        #[test]
        fn $name() {
            let db = TempDb::new(stringify!($name));
            c::$name(&mut db.open());
        }
    };
    ($name:ident, tamper) => {
        #[test]
        fn $name() {
            let db = TempDb::new(stringify!($name));
            let mut store = db.open();
            c::$name(&mut store, &mut db.exec());
        }
    };
}

sqlite_case!(rows_round_trip_exactly);
sqlite_case!(head_is_the_last_row_of_its_chain);
sqlite_case!(duplicate_sequence_number_is_refused_whole);
sqlite_case!(verify_accepts_intact_chains);
sqlite_case!(records_and_charges_between_filter_by_time_and_tenant);
sqlite_case!(verify_finds_an_edited_field, tamper);
sqlite_case!(verify_finds_an_edited_float, tamper);
sqlite_case!(verify_finds_a_row_deleted_in_the_middle, tamper);
sqlite_case!(verify_finds_the_first_row_deleted, tamper);
sqlite_case!(verify_finds_a_deletion_with_renumbering, tamper);
sqlite_case!(verify_finds_reordered_rows, tamper);

#[test]
fn concurrent_opens_migrate_once() {
    let db = TempDb::new("concurrent");
    c::concurrent_opens_migrate_once(&|| Box::new(db.open()) as Box<dyn Store>);
}

#[test]
fn writer_stores_every_record_and_continues_the_chain() {
    let db = TempDb::new("writer");
    c::writer_stores_every_record_and_continues_the_chain(&db.config());
}

#[test]
fn file_is_in_wal_mode() {
    let db = TempDb::new("wal");
    drop(db.open());
    let conn = rusqlite::Connection::open(db.path()).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

/// An in-memory store whose appends fail on demand, shared with the test that drives it.
#[derive(Clone, Default)]
struct FlakyStore {
    rows: Arc<Mutex<Vec<ChainedRecord>>>,
    /// Appends still to fail; `usize::MAX` fails for ever.
    fail_next: Arc<AtomicUsize>,
    /// Appends still to commit while reporting a failure (a lost reply).
    lose_reply_next: Arc<AtomicUsize>,
}

fn take_one(n: &AtomicUsize) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| match v {
        0 => None,
        usize::MAX => Some(v),
        v => Some(v - 1),
    })
    .is_ok()
}

fn storage_error() -> LedgerError {
    LedgerError::Start("injected storage failure".into())
}

impl Store for FlakyStore {
    fn head(&mut self, chain: &str) -> Result<Option<(i64, String)>, LedgerError> {
        let rows = self.rows.lock().unwrap();
        let last = rows.iter().rev().find(|r| r.chain == chain);
        Ok(last.map(|r| (r.seq, r.hash.clone())))
    }
    fn append(&mut self, rows: &[ChainedRecord]) -> Result<(), LedgerError> {
        if take_one(&self.fail_next) {
            return Err(storage_error());
        }
        let mut stored = self.rows.lock().unwrap();
        let clash = rows
            .iter()
            .any(|r| stored.iter().any(|s| s.chain == r.chain && s.seq == r.seq));
        if clash {
            return Err(storage_error());
        }
        stored.extend_from_slice(rows);
        if take_one(&self.lose_reply_next) {
            return Err(storage_error());
        }
        Ok(())
    }
    fn chains(&mut self) -> Result<Vec<String>, LedgerError> {
        let mut names: Vec<String> = self
            .rows
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.chain.clone())
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }
    fn scan(
        &mut self,
        chain: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<ChainedRecord>, LedgerError> {
        let mut rows: Vec<ChainedRecord> = self
            .rows
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.chain == chain && r.seq > after)
            .cloned()
            .collect();
        rows.sort_by_key(|r| r.seq);
        rows.truncate(limit);
        Ok(rows)
    }
    fn records_between(
        &mut self,
        _: i64,
        _: i64,
        _: Option<&str>,
    ) -> Result<Vec<UsageRecord>, LedgerError> {
        unimplemented!("not used by the writer")
    }
    fn charges_between(&mut self, _: i64, _: i64) -> Result<HashMap<String, i64>, LedgerError> {
        unimplemented!("not used by the writer")
    }
}

fn start_flaky(store: &FlakyStore, capacity: usize) -> (Ledger, LedgerWriter) {
    let cfg = LedgerConfig {
        channel_capacity: capacity,
        batch_size: 8,
        ..LedgerConfig::default()
    };
    let s = store.clone();
    // Retries 1 ms apart: the backoff's length is not what these tests are about.
    start(
        &cfg,
        move || Ok(Box::new(s) as Box<dyn Store>),
        Duration::from_millis(1),
    )
    .expect("start")
}

fn write_n(ledger: &Ledger, n: u64) {
    for i in 0..n {
        ledger.reserve().expect("room").write(c::record(i));
    }
}

#[test]
fn reserve_returns_none_when_every_place_is_taken() {
    let store = FlakyStore::default();
    let (ledger, writer) = start_flaky(&store, 2);
    let held = [
        ledger.reserve().expect("first"),
        ledger.reserve().expect("second"),
    ];
    assert!(
        ledger.reserve().is_none(),
        "full channel must shed the request"
    );
    assert_eq!(ledger.in_use(), 2);
    let [a, b] = held;
    a.write(c::record(0));
    b.write(c::record(1));
    ledger.close();
    writer.join().expect("flushed");
    assert_eq!(store.rows.lock().unwrap().len(), 2);
}

#[test]
fn slot_taken_before_close_can_still_be_written() {
    let store = FlakyStore::default();
    let (ledger, writer) = start_flaky(&store, 4);
    let slot = ledger.reserve().expect("room");
    ledger.close();
    assert!(ledger.reserve().is_none());
    slot.write(c::record(7));
    writer.join().expect("flushed");
    assert_eq!(store.rows.lock().unwrap()[0].record, c::record(7));
}

#[test]
fn dropping_every_handle_flushes_and_stops_the_writer() {
    let store = FlakyStore::default();
    let (ledger, writer) = start_flaky(&store, 64);
    write_n(&ledger.clone(), 30);
    drop(ledger);
    writer.join().expect("flushed");
    assert_eq!(store.rows.lock().unwrap().len(), 30);
}

#[test]
fn failed_writes_are_retried_until_stored() {
    let store = FlakyStore::default();
    store.fail_next.store(3, Ordering::SeqCst);
    let (ledger, writer) = start_flaky(&store, 64);
    write_n(&ledger, 20);
    ledger.close();
    writer.join().expect("flushed");
    assert_eq!(ledger.stats().write_errors.load(Ordering::Relaxed), 3);
    assert_eq!(ledger.stats().records_written.load(Ordering::Relaxed), 20);
    let mut s = store.clone();
    let report = verify(&mut s).unwrap();
    assert!(
        report.is_intact() && report.chains[0].rows_ok == 20,
        "{report:?}"
    );
}

#[test]
fn a_commit_whose_reply_was_lost_is_not_stored_twice() {
    let store = FlakyStore::default();
    store.lose_reply_next.store(1, Ordering::SeqCst);
    let (ledger, writer) = start_flaky(&store, 64);
    write_n(&ledger, 5);
    ledger.close();
    writer.join().expect("flushed");
    assert_eq!(store.rows.lock().unwrap().len(), 5);
    assert!(verify(&mut store.clone()).unwrap().is_intact());
}

#[test]
fn rows_of_another_writer_on_the_same_chain_are_chained_after() {
    let store = FlakyStore::default();
    let (ledger, writer) = start_flaky(&store, 64);
    write_n(&ledger, 3);
    // Wait for the writer, then let "another gateway" append two rows to chain `main`.
    while ledger.stats().records_written.load(Ordering::SeqCst) < 3 {
        std::thread::yield_now();
    }
    c::fill(&mut store.clone(), "main", 2);
    write_n(&ledger, 3);
    ledger.close();
    writer.join().expect("flushed");
    let report = verify(&mut store.clone()).unwrap();
    assert!(
        report.is_intact() && report.chains[0].rows_ok == 8,
        "{report:?}"
    );
}

#[test]
fn a_store_down_through_shutdown_reports_the_unstored_records() {
    let store = FlakyStore::default();
    store.fail_next.store(usize::MAX, Ordering::SeqCst);
    let (ledger, writer) = start_flaky(&store, 64);
    write_n(&ledger, 10);
    ledger.close();
    let err = writer.join().unwrap_err();
    assert!(matches!(err, LedgerError::Unflushed(10)), "{err}");
}

#[test]
fn a_store_that_cannot_open_fails_the_start() {
    let cfg = LedgerConfig::default();
    let err = Ledger::start(&cfg, || Err(storage_error()))
        .err()
        .expect("error");
    assert!(err.to_string().contains("injected"), "{err}");
}

/// A ledger written before `cached_tokens` existed (schema version 1) still verifies after
/// the migration that adds it, and rows with cached tokens chain after its rows.
#[test]
fn rows_written_before_cached_tokens_existed_still_verify_after_the_migration() {
    let db = TempDb::new("v1");
    let old = record::sample("old", "t", 5);
    let linked = chain::link(None, "main", std::slice::from_ref(&old));
    let row = &linked[0];
    {
        let mut exec = db.exec();
        exec(store::MIGRATIONS[0].1);
        exec(
            "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY);
              INSERT INTO schema_migrations (version) VALUES (1);",
        );
        let columns = store::COLUMNS.replace(", cached_tokens", "");
        exec(&format!(
            "INSERT INTO usage_records ({columns}) VALUES ('main', 1, '{}', '{}', '{}', {}, \
             '{}', '{}', '{}', '{}', {}, '{}', {}, {}, {}, {}, {}, {}, {}, {}, {}, '{}', NULL)",
            row.prev_hash,
            row.hash,
            old.request_id,
            old.time_ms,
            old.tenant,
            old.tier,
            old.grant_id,
            old.model,
            old.replica.unwrap_or_default(),
            old.device,
            old.prompt_tokens,
            old.completion_tokens,
            old.queue_ms,
            old.compute_ms,
            old.device_seconds,
            old.list_micro_hkd,
            old.subsidy_rate,
            old.subsidy_micro_hkd,
            old.charge_micro_hkd,
            old.outcome,
        ));
    }
    let mut store = db.open();
    let head = store.head("main").expect("head");
    let new = UsageRecord {
        cached_tokens: 7,
        ..record::sample("new", "t", 5)
    };
    store
        .append(&chain::link(
            head.as_ref(),
            "main",
            std::slice::from_ref(&new),
        ))
        .expect("append");
    let report = verify(&mut store).expect("verify");
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.chains[0].rows_ok, 2);
    let stored = store.scan("main", 0, 10).expect("scan");
    assert_eq!(stored[0].record.cached_tokens, 0);
    assert_eq!(stored[1].record, new);
}
