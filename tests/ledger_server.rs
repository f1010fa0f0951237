//! The gateway and its ledger together: records land in the real PostgreSQL (127.0.0.1:5432,
//! started by `.ci/run`), chain intact, and the monthly report adds up to what the clients
//! were told; a ledger that cannot take another record sheds requests with 503.

mod common;
use common::*;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tiergate::ledger::{build_report, open_store, verify, LedgerConfig, UsageRecord};
use tiergate::tenancy::ManualClock;

fn pg_ledger(tag: &str) -> LedgerConfig {
    let url = std::env::var("TIERGATE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    LedgerConfig {
        url,
        pg_schema: Some(format!("tg_server_{}_{tag}", std::process::id())),
        ..LedgerConfig::default()
    }
}

fn drop_schema(cfg: &LedgerConfig) {
    if let Ok(mut c) = postgres::Client::connect(&cfg.url, postgres::NoTls) {
        let schema = cfg.pg_schema.as_deref().unwrap_or_default();
        let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"));
    }
}

async fn completion(server: &Server, key: &str, max_tokens: u32) -> (u16, Value) {
    let body = json!({"model": CHAT_MODEL, "prompt": "1, 2, 3,", "max_tokens": max_tokens,
                      "temperature": 0, "ignore_eos": true});
    let resp = client()
        .post(server.url("/v1/completions"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("json"))
}

/// The sync PostgreSQL client must not run on the async test's thread.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

async fn wait_for_records(cfg: &LedgerConfig, n: usize) -> Vec<UsageRecord> {
    for _ in 0..200 {
        let cfg = cfg.clone();
        let records = blocking(move || {
            open_store(&cfg)
                .expect("ledger")
                .records_between(0, i64::MAX, None)
                .expect("records")
        })
        .await;
        if records.len() >= n {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fewer than {n} records were stored");
}

#[tokio::test]
async fn records_land_in_postgresql_chained_and_the_report_adds_up() {
    let ledger = pg_ledger("report");
    let mut config = tenant_config();
    config.models.retain(|m| m.name == CHAT_MODEL);
    config.ledger = ledger.clone();
    let key = create_key(&config, "t-three-rpm");
    // Limit time stands still: the fourth request is over 3 per minute however slow we are.
    let server = spawn_server_with_clock(config, Arc::new(ManualClock::default()));
    let mut told = 0;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let (status, body) = completion(&server, &key, 3).await;
        statuses.push(status);
        told += body["usage"]["total_tokens"].as_u64().unwrap_or(0);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    let records = wait_for_records(&ledger, 5).await;
    let cfg = ledger.clone();
    let chains = blocking(move || {
        let chains = verify(open_store(&cfg).expect("ledger").as_mut()).expect("verify");
        drop_schema(&cfg);
        chains
    })
    .await;
    assert!(chains.chains.iter().all(|c| c.first_break.is_none()));
    let report = build_report(&records, &Default::default());
    let t = &report.totals;
    assert_eq!(t.requests, 5);
    assert_eq!((t.outcomes["ok"], t.outcomes["rate_limited"]), (3, 2));
    assert_eq!(t.prompt_tokens + t.completion_tokens, told);
    let charged: i64 = records.iter().map(|r| r.charge_micro_hkd).sum();
    assert_eq!(t.charge_micro_hkd, charged);
    assert_eq!(t.list_micro_hkd, t.subsidy_micro_hkd + t.charge_micro_hkd);
}

#[tokio::test]
async fn a_full_ledger_channel_sheds_new_requests_with_503() {
    let mut config = tenant_config();
    config.models.retain(|m| m.name == CHAT_MODEL);
    config.ledger.channel_capacity = 1;
    let key = create_key(&config, "t-open");
    let server = spawn_server(config);
    // A long stream holds the only ledger place from admission to its end.
    let long = json!({"model": CHAT_MODEL, "prompt": "Count:", "max_tokens": 2000,
                      "temperature": 0, "ignore_eos": true, "stream": true});
    let mut stream = client()
        .post(server.url("/v1/completions"))
        .bearer_auth(&key)
        .json(&long)
        .send()
        .await
        .expect("stream");
    stream.chunk().await.expect("first chunk");
    let (status, body) = completion(&server, &key, 1).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(error_of(&body)["code"], "overloaded");
    drop(stream);
    // Once the stream's record is written the place is free again.
    let mut last = 0;
    for _ in 0..200 {
        last = completion(&server, &key, 1).await.0;
        if last == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last, 200);
}
