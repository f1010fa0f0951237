//! The ledger's store behaviours against the real PostgreSQL at 127.0.0.1:5432 (user
//! `postgres`, database `test`; `.ci/run` starts it). Each test works in a fresh schema and
//! drops it at the end. These tests fail, never skip, when PostgreSQL cannot be reached.
//! `TIERGATE_TEST_PG_URL` points them at another server.
//!
//! Several gateways share one ledger: each writes its own hash chain (`ledger.chain`), and
//! `tiergate ledger verify` and `tiergate usage report` (run here as the real command) cover
//! every chain.

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use tiergate::ledger::{
    conformance as c, open_store, verify, Ledger, LedgerConfig, Store, UsageRecord,
};

fn pg_url() -> String {
    std::env::var("TIERGATE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A schema no other test uses, dropped with everything in it on drop (also after a panic).
struct Schema {
    name: String,
}

impl Schema {
    fn new(test: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        Schema {
            name: format!("tg_ledger_{}_{n}_{test}", std::process::id()),
        }
    }

    fn config(&self) -> LedgerConfig {
        LedgerConfig {
            url: pg_url(),
            pg_schema: Some(self.name.clone()),
            ..LedgerConfig::default()
        }
    }

    fn open(&self) -> Box<dyn Store> {
        open_store(&self.config()).expect("PostgreSQL at 127.0.0.1:5432 must be reachable")
    }

    fn client(&self) -> postgres::Client {
        let mut client = postgres::Client::connect(&pg_url(), postgres::NoTls).expect("connect");
        let path = format!("SET search_path TO \"{}\"", self.name);
        client.batch_execute(&path).expect("search_path");
        client
    }

    fn exec(&self) -> impl FnMut(&str) {
        let mut client = self.client();
        move |sql| client.batch_execute(sql).expect("tamper statement")
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        if let Ok(mut client) = postgres::Client::connect(&pg_url(), postgres::NoTls) {
            let _ =
                client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name));
        }
    }
}

macro_rules! pg_case {
    ($name:ident) => {
        #[test]
        fn $name() {
            let schema = Schema::new(stringify!($name));
            c::$name(schema.open().as_mut());
        }
    };
    ($name:ident, tamper) => {
        #[test]
        fn $name() {
            let schema = Schema::new(stringify!($name));
            let mut store = schema.open();
            c::$name(store.as_mut(), &mut schema.exec());
        }
    };
}

pg_case!(rows_round_trip_exactly);
pg_case!(head_is_the_last_row_of_its_chain);
pg_case!(duplicate_sequence_number_is_refused_whole);
pg_case!(verify_accepts_intact_chains);
pg_case!(records_and_charges_between_filter_by_time_and_tenant);
pg_case!(verify_finds_an_edited_field, tamper);
pg_case!(verify_finds_an_edited_float, tamper);
pg_case!(verify_finds_a_row_deleted_in_the_middle, tamper);
pg_case!(verify_finds_the_first_row_deleted, tamper);
pg_case!(verify_finds_a_deletion_with_renumbering, tamper);
pg_case!(verify_finds_reordered_rows, tamper);

#[test]
fn concurrent_opens_migrate_once() {
    let schema = Schema::new("concurrent");
    c::concurrent_opens_migrate_once(&|| schema.open());
}

#[test]
fn writer_stores_every_record_and_continues_the_chain() {
    let schema = Schema::new("writer");
    c::writer_stores_every_record_and_continues_the_chain(&schema.config());
}

#[test]
fn migrations_are_recorded_once() {
    let schema = Schema::new("migrations");
    drop(schema.open());
    drop(schema.open());
    let rows = schema
        .client()
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .expect("query");
    let versions: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(versions, [1, 2]);
}

#[test]
fn unreachable_server_is_an_error_not_a_hang() {
    let cfg = LedgerConfig {
        url: "postgres://postgres@127.0.0.1:1/test?connect_timeout=2".into(),
        ..LedgerConfig::default()
    };
    assert!(open_store(&cfg).is_err());
}

/// The records of gateway `gateway` (0 or 1): 40 each, all in November 2026, over the same
/// three tenants, so every tenant's report row needs both gateways' records.
fn gateway_records(gateway: u64) -> Vec<UsageRecord> {
    (0..40).map(|i| c::record(gateway * 300 + i)).collect()
}

/// Two gateway ledger writers, `gw-a` and `gw-b`, writing their records into one schema at
/// the same time in small batches (so their transactions interleave), then shut down as the
/// gateway does. Returns every record written.
fn two_gateways_write(schema: &Schema) -> Vec<UsageRecord> {
    let gateways: Vec<_> = ["gw-a", "gw-b"]
        .iter()
        .map(|chain| {
            let cfg = LedgerConfig {
                chain: chain.to_string(),
                batch_size: 3,
                ..schema.config()
            };
            Ledger::open(&cfg).expect("PostgreSQL at 127.0.0.1:5432 must be reachable")
        })
        .collect();
    std::thread::scope(|s| {
        for (g, (ledger, _)) in gateways.iter().enumerate() {
            s.spawn(move || {
                for record in gateway_records(g as u64) {
                    ledger.reserve().expect("a free slot").write(record);
                }
            });
        }
    });
    for (ledger, writer) in gateways {
        ledger.close();
        writer.join().expect("every record stored");
    }
    [gateway_records(0), gateway_records(1)].concat()
}

/// Runs the `tiergate` command on the test's schema, with the repository's config files.
fn tiergate(schema: &Schema, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tiergate"));
    // Only our own overrides: every TIERGATE_* variable is read as a config key.
    for (var, _) in std::env::vars().filter(|(v, _)| v.starts_with("TIERGATE_")) {
        cmd.env_remove(var);
    }
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("TIERGATE_LEDGER__URL", pg_url())
        .env("TIERGATE_LEDGER__PG_SCHEMA", &schema.name)
        .args(["--config", "config/tiergate.toml"])
        .args(args)
        .output()
        .expect("run tiergate")
}

#[test]
fn gateways_sharing_a_ledger_each_keep_an_intact_chain() {
    let schema = Schema::new("two_chains");
    two_gateways_write(&schema);
    let report = verify(schema.open().as_mut()).expect("verify");
    let chains: Vec<(&str, u64)> = report
        .chains
        .iter()
        .map(|c| (c.chain.as_str(), c.rows_ok))
        .collect();
    assert_eq!(chains, [("gw-a", 40), ("gw-b", 40)]);
    assert!(report.is_intact(), "{report:?}");

    let out = tiergate(&schema, &["ledger", "verify"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("chain gw-a: 40 rows ok"), "{text}");
    assert!(text.contains("chain gw-b: 40 rows ok"), "{text}");
    assert!(
        text.contains("ledger intact: 2 chain(s), 80 rows"),
        "{text}"
    );
}

#[test]
fn ledger_verify_names_the_broken_gateway_chain() {
    let schema = Schema::new("one_broken");
    two_gateways_write(&schema);
    schema.exec()("UPDATE usage_records SET prompt_tokens = 1 WHERE chain = 'gw-b' AND seq = 7");

    let out = tiergate(&schema, &["ledger", "verify"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("chain gw-a: 40 rows ok"), "{text}");
    assert!(text.contains("chain gw-b: BROKEN: seq 7"), "{text}");
}

#[test]
fn usage_report_sums_the_records_of_every_gateway() {
    let schema = Schema::new("report");
    let records = two_gateways_write(&schema);
    // Expected per tenant, summed here from the records as written, over both gateways.
    let mut expected: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    for r in &records {
        let e = expected.entry(r.tenant.clone()).or_default();
        e.0 += 1;
        e.1 += r.charge_micro_hkd;
    }

    let out = tiergate(
        &schema,
        &["usage", "report", "--month", "2026-11", "--format", "json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    let mut got: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    for row in report["rows"].as_array().expect("rows") {
        let e = got
            .entry(row["tenant"].as_str().expect("tenant").to_string())
            .or_default();
        e.0 += row["requests"].as_u64().expect("requests");
        e.1 += row["charge_micro_hkd"].as_i64().expect("charge");
    }
    assert_eq!(got, expected);
    assert_eq!(report["totals"]["requests"], 80);
    let total_charge: i64 = records.iter().map(|r| r.charge_micro_hkd).sum();
    assert_eq!(report["totals"]["charge_micro_hkd"], total_charge);
}
