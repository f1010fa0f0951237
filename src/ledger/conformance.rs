//! Behaviours every [`Store`] must show, written once and run against each home: SQLite in
//! the unit tests, the real PostgreSQL in `tests/ledger_pg.rs`. Each function panics on a
//! failure. `exec` runs one raw SQL statement on the same database (to tamper with rows);
//! the statements used are plain SQL that both databases accept.

use super::chain::link;
use super::{verify, BreakKind, ChainedRecord, Ledger, LedgerConfig, Store, UsageRecord};

/// 2026-11-01T00:00:00Z.
pub const NOV_2026_MS: i64 = 1_793_491_200_000;

/// A varied record: tenants `t0`..`t2`, one hour apart from November 2026, floats that are
/// not exact in decimal, a rejected one every fifth.
pub fn record(i: u64) -> UsageRecord {
    let rejected = i % 5 == 4;
    UsageRecord {
        request_id: format!("req-{i}"),
        time_ms: NOV_2026_MS + i as i64 * 3_600_000,
        tenant: format!("t{}", i % 3),
        tier: if i.is_multiple_of(2) {
            "aiss"
        } else {
            "commercial"
        }
        .into(),
        grant_id: "G-42".into(),
        model: "smollm2-135m-instruct".into(),
        replica: if rejected { None } else { Some(i as u32 % 2) },
        device: if rejected { "" } else { "cpu" }.into(),
        prompt_tokens: 10 + i,
        completion_tokens: if rejected { 0 } else { 3 * i },
        cached_tokens: if i % 3 == 1 { 16 } else { 0 },
        queue_ms: 0.1 + 0.2 * i as f64,
        compute_ms: 1e-7 + i as f64 / 3.0,
        device_seconds: (i as f64).sqrt() / 7.0,
        list_micro_hkd: 1000 + i as i64,
        subsidy_rate: 0.7,
        subsidy_micro_hkd: 700,
        charge_micro_hkd: 300 + i as i64,
        outcome: if rejected { "rate_limited" } else { "ok" }.into(),
        reason: rejected.then(|| "tokens per minute: 'quoted' \"text\"".into()),
    }
}

fn records(n: u64) -> Vec<UsageRecord> {
    (0..n).map(record).collect()
}

/// Appends `n` records to `chain` and returns the rows as chained.
pub fn fill(store: &mut dyn Store, chain: &str, n: u64) -> Vec<ChainedRecord> {
    let head = store.head(chain).expect("head");
    let rows = link(head.as_ref(), chain, &records(n));
    store.append(&rows).expect("append");
    rows
}

pub fn rows_round_trip_exactly(store: &mut dyn Store) {
    let rows = fill(store, "main", 12);
    assert_eq!(store.scan("main", 0, 100).expect("scan"), rows);
    assert_eq!(store.scan("main", 10, 100).expect("scan"), rows[10..]);
    assert_eq!(store.scan("main", 0, 5).expect("scan"), rows[..5]);
}

pub fn head_is_the_last_row_of_its_chain(store: &mut dyn Store) {
    assert_eq!(store.head("main").expect("head"), None);
    let rows = fill(store, "main", 3);
    fill(store, "other", 5);
    let last = rows.last().expect("rows");
    assert_eq!(
        store.head("main").expect("head"),
        Some((3, last.hash.clone()))
    );
    assert_eq!(store.chains().expect("chains"), ["main", "other"]);
}

pub fn duplicate_sequence_number_is_refused_whole(store: &mut dyn Store) {
    let rows = fill(store, "main", 2);
    let clash = link(Some(&(0, String::new())), "main", &records(3));
    assert!(store.append(&clash).is_err(), "seq 1 stored twice");
    assert_eq!(
        store.scan("main", 0, 100).expect("scan"),
        rows,
        "no partial batch"
    );
}

pub fn verify_accepts_intact_chains(store: &mut dyn Store) {
    let rows = fill(store, "a", 7);
    fill(store, "b", 3);
    let report = verify(store).expect("verify");
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.chains[0].rows_ok, 7);
    assert_eq!(report.chains[0].head, Some((7, rows[6].hash.clone())));
    assert_eq!(report.chains[1].rows_ok, 3);
}

fn first_break(store: &mut dyn Store) -> (i64, BreakKind) {
    let report = verify(store).expect("verify");
    let chain = &report.chains[0];
    let b = chain.first_break.clone().expect("a break");
    (b.seq, b.kind)
}

pub fn verify_finds_an_edited_field(store: &mut dyn Store, exec: &mut dyn FnMut(&str)) {
    fill(store, "main", 6);
    exec("UPDATE usage_records SET charge_micro_hkd = 1 WHERE chain = 'main' AND seq = 4");
    assert_eq!(first_break(store), (4, BreakKind::Edited));
}

pub fn verify_finds_an_edited_float(store: &mut dyn Store, exec: &mut dyn FnMut(&str)) {
    fill(store, "main", 6);
    exec("UPDATE usage_records SET device_seconds = device_seconds * 2 WHERE seq = 2");
    assert_eq!(first_break(store), (2, BreakKind::Edited));
}

pub fn verify_finds_a_row_deleted_in_the_middle(store: &mut dyn Store, exec: &mut dyn FnMut(&str)) {
    fill(store, "main", 6);
    exec("DELETE FROM usage_records WHERE seq = 3");
    assert_eq!(first_break(store), (4, BreakKind::Gap { expected: 3 }));
}

pub fn verify_finds_the_first_row_deleted(store: &mut dyn Store, exec: &mut dyn FnMut(&str)) {
    fill(store, "main", 4);
    exec("DELETE FROM usage_records WHERE seq = 1");
    assert_eq!(first_break(store), (2, BreakKind::Gap { expected: 1 }));
}

/// Deleting a row and renumbering the rest hides the gap but not the broken link.
pub fn verify_finds_a_deletion_with_renumbering(store: &mut dyn Store, exec: &mut dyn FnMut(&str)) {
    fill(store, "main", 6);
    exec("DELETE FROM usage_records WHERE seq = 3");
    for seq in 4..=6 {
        exec(&format!(
            "UPDATE usage_records SET seq = {} WHERE seq = {seq}",
            seq - 1
        ));
    }
    assert_eq!(first_break(store), (3, BreakKind::BrokenLink));
}

pub fn verify_finds_reordered_rows(store: &mut dyn Store, exec: &mut dyn FnMut(&str)) {
    fill(store, "main", 6);
    exec("UPDATE usage_records SET seq = 100 WHERE seq = 2");
    exec("UPDATE usage_records SET seq = 2 WHERE seq = 3");
    exec("UPDATE usage_records SET seq = 3 WHERE seq = 100");
    assert_eq!(first_break(store), (2, BreakKind::BrokenLink));
}

pub fn records_and_charges_between_filter_by_time_and_tenant(store: &mut dyn Store) {
    fill(store, "a", 30);
    fill(store, "b", 30); // the same records again on another chain
    let (from, to) = (NOV_2026_MS + 3_600_000 * 5, NOV_2026_MS + 3_600_000 * 20);
    let all = store.records_between(from, to, None).expect("records");
    assert_eq!(all.len(), 30, "hours 5..20 of both chains");
    assert!(
        all.windows(2).all(|w| w[0].time_ms <= w[1].time_ms),
        "time order"
    );
    let t1 = store
        .records_between(from, to, Some("t1"))
        .expect("records");
    assert!(!t1.is_empty() && t1.iter().all(|r| r.tenant == "t1"));
    let charges = store.charges_between(from, to).expect("charges");
    for tenant in ["t0", "t1", "t2"] {
        let want: i64 = all
            .iter()
            .filter(|r| r.tenant == tenant)
            .map(|r| r.charge_micro_hkd)
            .sum();
        assert_eq!(charges[tenant], want, "{tenant}");
    }
}

/// `open` makes a new connection to the same database each call.
pub fn concurrent_opens_migrate_once(open: &(dyn Fn() -> Box<dyn Store> + Sync)) {
    std::thread::scope(|s| {
        let opened: Vec<_> = (0..4).map(|_| s.spawn(open)).collect();
        for handle in opened {
            let mut store = handle.join().expect("open did not panic");
            store.head("main").expect("usable");
        }
    });
    let mut store = open();
    fill(store.as_mut(), "main", 1);
    assert_eq!(open().head("main").expect("head").map(|h| h.0), Some(1));
}

/// Through the writer thread: every record written before `close` is stored, in one valid
/// chain, and a second ledger on the same chain continues it.
pub fn writer_stores_every_record_and_continues_the_chain(cfg: &LedgerConfig) {
    let n = 1000;
    for round in 0..2 {
        let (ledger, writer) = Ledger::open(cfg).expect("open");
        for i in 0..n {
            let slot = ledger.reserve().expect("room");
            slot.write(record(i));
        }
        ledger.close();
        assert!(
            ledger.reserve().is_none(),
            "closed ledger hands out no slots"
        );
        writer.join().expect("flushed");
        let stats = ledger.stats();
        assert_eq!(
            stats
                .records_written
                .load(std::sync::atomic::Ordering::Relaxed),
            n
        );
        let mut store = super::open_store(cfg).expect("open store");
        let report = verify(store.as_mut()).expect("verify");
        assert!(report.is_intact(), "{report:?}");
        assert_eq!(report.chains[0].rows_ok, n * (round + 1));
    }
}
