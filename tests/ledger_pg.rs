//! The ledger's store behaviours against the real PostgreSQL at 127.0.0.1:5432 (user
//! `postgres`, database `test`; `.ci/run` starts it). Each test works in a fresh schema and
//! drops it at the end. These tests fail, never skip, when PostgreSQL cannot be reached.
//! `TIERGATE_TEST_PG_URL` points them at another server.

use std::sync::atomic::{AtomicUsize, Ordering};
use tiergate::ledger::{conformance as c, open_store, LedgerConfig, Store};

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
    assert_eq!(versions, [1]);
}

#[test]
fn unreachable_server_is_an_error_not_a_hang() {
    let cfg = LedgerConfig {
        url: "postgres://postgres@127.0.0.1:1/test?connect_timeout=2".into(),
        ..LedgerConfig::default()
    };
    assert!(open_store(&cfg).is_err());
}
