//! Tenants over HTTP: keys, exact limits per tier, OpenAI's headers, dedicated replicas and
//! the ledger records every request leaves. The limiter's clock is frozen (a `ManualClock`
//! that no test advances), so buckets never refill during a test and every count is exact.

mod common;
use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tiergate::ledger::{open_store, UsageRecord};
use tiergate::tenancy::ManualClock;

struct Fixture {
    server: Server,
    keys: HashMap<&'static str, String>,
    config: tiergate::config::Config,
}

const TENANTS: [&str; 8] = [
    "t-open",
    "t-three-rpm",
    "t-small-tpm",
    "t-small-tpm-oversized",
    "t-one-at-a-time",
    "t-tiny-budget",
    "t-sandbox",
    "t-embeddings-only",
];

/// One gateway for the whole binary; each test uses its own tenant, so tests cannot spend
/// each other's limits.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let mut config = tenant_config();
        config.tenancy.admin_key_sha256 =
            Some(tiergate::tenancy::keys::KeyHash::of(ADMIN_KEY).to_hex());
        let keys = TENANTS
            .iter()
            .map(|&t| (t, create_key(&config, t)))
            .collect();
        let server = spawn_server_with_clock(config.clone(), Arc::new(ManualClock::default()));
        Fixture {
            server,
            keys,
            config,
        }
    })
}

const ADMIN_KEY: &str = "tg-admin-test-key";

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

async fn call(key: Option<&str>, path: &str, body: Value) -> Reply {
    let f = fixture();
    let mut req = client().post(f.server.url(path)).json(&body);
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Reply {
        status,
        headers,
        body,
    }
}

async fn as_tenant(tenant: &str, path: &str, body: Value) -> Reply {
    let key = fixture().keys[tenant].clone();
    call(Some(&key), path, body).await
}

/// A completion whose size is known exactly: `prompt_len` token ids, `max_tokens` tokens
/// always generated (`ignore_eos`), so every request uses all it reserved.
fn sized_completion(prompt_len: usize, max_tokens: usize) -> Value {
    let prompt: Vec<u32> = (0..prompt_len as u32).map(|i| 100 + i).collect();
    json!({"model": CHAT_MODEL, "prompt": prompt, "max_tokens": max_tokens,
           "temperature": 0, "ignore_eos": true})
}

fn header<'a>(r: &'a Reply, name: &str) -> &'a str {
    r.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .expect("ascii")
}

/// Go-style durations as OpenAI sends them (`1s`, `6m0s`, `8.64s`, `20ms`), in ms.
fn parse_go_duration(s: &str) -> f64 {
    let mut total = 0.0;
    let mut number = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let unit = if c == 'm' && chars.peek() == Some(&'s') {
            chars.next();
            1.0
        } else {
            match c {
                'h' => 3_600_000.0,
                'm' => 60_000.0,
                's' => 1000.0,
                _ => panic!("bad unit in {s}"),
            }
        };
        total += number.parse::<f64>().expect("number") * unit;
        number.clear();
    }
    assert!(number.is_empty(), "trailing number in {s}");
    total
}

/// Every record of `tenant`, once the writer has stored at least `at_least` of them.
async fn records_of(tenant: &str, at_least: usize) -> Vec<UsageRecord> {
    let cfg = fixture().config.ledger.clone();
    for _ in 0..200 {
        let mut store = open_store(&cfg).expect("ledger");
        let records = store
            .records_between(0, i64::MAX, Some(tenant))
            .expect("records");
        if records.len() >= at_least {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the ledger never held {at_least} records of {tenant}");
}

#[tokio::test]
async fn missing_and_wrong_keys_get_401_in_the_openai_shape() {
    let body = sized_completion(3, 1);
    for key in [None, Some("tg-not-a-key")] {
        let r = call(key, "/v1/completions", body.clone()).await;
        assert_eq!(r.status, 401);
        assert_eq!(error_of(&r.body)["code"], "invalid_api_key");
        assert!(!r.body.to_string().contains("tg-not-a-key"));
    }
}

#[tokio::test]
async fn health_needs_no_key() {
    let resp = client()
        .get(fixture().server.url("/health"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn ready_answers_a_probe_without_a_key_and_shows_details_only_with_one() {
    let get = |key: Option<String>| async move {
        let mut req = client().get(fixture().server.url("/ready"));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.json::<Value>().await.expect("JSON"))
    };
    let (status, probe) = get(None).await;
    assert_eq!((status, &probe), (200, &json!({"status": "ready"})));
    let key = fixture().keys.values().next().cloned();
    let (status, detailed) = get(key).await;
    assert_eq!(status, 200, "{detailed}");
    assert!(detailed["replicas"].is_array(), "{detailed}");
    let (status, _) = get(Some("tg-not-a-key".into())).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn three_rpm_tier_admits_exactly_three_then_429s_with_the_refill_wait() {
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..5 {
        let r = as_tenant("t-three-rpm", "/v1/completions", sized_completion(3, 1)).await;
        statuses.push(r.status);
        last = Some(r);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    let r = last.expect("replies");
    let e = error_of(&r.body);
    assert_eq!(e["code"], "rate_limit_exceeded");
    assert_eq!(e["type"], "requests");
    // 3 per minute: one request every 20 s, and the clock is frozen.
    assert_eq!(header(&r, "retry-after"), "20");
    assert_eq!(header(&r, "retry-after-ms"), "20000");
    assert_eq!(header(&r, "x-ratelimit-limit-requests"), "3");
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), "0");
    assert_eq!(
        parse_go_duration(header(&r, "x-ratelimit-reset-requests")),
        60_000.0
    );
}

#[tokio::test]
async fn successful_responses_carry_all_six_ratelimit_headers() {
    let r = as_tenant("t-open", "/v1/completions", sized_completion(5, 2)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    for name in [
        "x-ratelimit-limit-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-remaining-tokens",
    ] {
        header(&r, name).parse::<u64>().expect("integer");
    }
    for name in ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"] {
        assert!(parse_go_duration(header(&r, name)) >= 0.0);
    }
}

#[tokio::test]
async fn twenty_concurrent_reservations_never_exceed_the_token_bucket() {
    // 20 requests of 30 prompt + 10 output tokens against a 400-token bucket: exactly 10.
    let calls =
        (0..20).map(|_| as_tenant("t-small-tpm", "/v1/completions", sized_completion(30, 10)));
    let replies = futures_util::future::join_all(calls).await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let limited: Vec<&Reply> = replies.iter().filter(|r| r.status == 429).collect();
    assert_eq!((ok, limited.len()), (10, 10));
    for r in limited {
        assert_eq!(error_of(&r.body)["type"], "tokens");
        let remaining: u64 = header(r, "x-ratelimit-remaining-tokens").parse().unwrap();
        assert!(remaining < 40, "{remaining} tokens would have fitted");
    }
    let records = records_of("t-small-tpm", 20).await;
    let used: u64 = records
        .iter()
        .map(|r| r.prompt_tokens + r.completion_tokens)
        .sum();
    assert_eq!(used, 400);
}

#[tokio::test]
async fn a_request_larger_than_the_bucket_is_refused_without_retry() {
    let r = as_tenant(
        "t-small-tpm-oversized",
        "/v1/completions",
        sized_completion(300, 200),
    )
    .await;
    assert_eq!(r.status, 429);
    assert_eq!(header(&r, "x-should-retry"), "false");
}

#[tokio::test]
async fn a_second_concurrent_request_is_refused_until_the_first_ends() {
    let long = json!({"model": CHAT_MODEL, "prompt": "Count:", "max_tokens": 2000,
                      "temperature": 0, "ignore_eos": true, "stream": true});
    let key = fixture().keys["t-one-at-a-time"].clone();
    let mut stream = client()
        .post(fixture().server.url("/v1/completions"))
        .bearer_auth(&key)
        .json(&long)
        .send()
        .await
        .expect("stream");
    assert_eq!(stream.status(), 200);
    stream.chunk().await.expect("first chunk");
    let second = as_tenant("t-one-at-a-time", "/v1/completions", sized_completion(3, 1)).await;
    assert_eq!(second.status, 429);
    assert_eq!(error_of(&second.body)["code"], "rate_limit_exceeded");
    // The client leaves mid-stream: its reservation is settled and the next one passes.
    drop(stream);
    let limiter = &fixture().server.state.tenancy.limiter;
    for _ in 0..400 {
        if limiter.in_flight("t-one-at-a-time") == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(limiter.in_flight("t-one-at-a-time"), 0);
    let third = as_tenant("t-one-at-a-time", "/v1/completions", sized_completion(3, 1)).await;
    assert_eq!(third.status, 200, "{}", third.body);
    let records = records_of("t-one-at-a-time", 3).await;
    let outcomes: Vec<&str> = records.iter().map(|r| r.outcome.as_str()).collect();
    assert!(
        outcomes.contains(&"cancelled") && outcomes.contains(&"rate_limited"),
        "{outcomes:?}"
    );
}

#[tokio::test]
async fn budget_admits_what_it_can_pay_then_answers_insufficient_quota() {
    // Each request: 30 x 0.004 + 10 x 0.016 HKD per 1000 tokens = 280 micro-HKD list, half
    // subsidised: 140 charged. 1000 micro-HKD of budget pays for 7.
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..9 {
        let r = as_tenant("t-tiny-budget", "/v1/completions", sized_completion(30, 10)).await;
        statuses.push(r.status);
        last = Some(r);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 200, 429, 429]);
    let r = last.expect("replies");
    assert_eq!(error_of(&r.body)["code"], "insufficient_quota");
    assert_eq!(header(&r, "x-should-retry"), "false");
    let records = records_of("t-tiny-budget", 9).await;
    let ok: Vec<&UsageRecord> = records.iter().filter(|r| r.outcome == "ok").collect();
    assert_eq!(ok.len(), 7);
    for rec in ok {
        assert_eq!(
            (
                rec.list_micro_hkd,
                rec.subsidy_micro_hkd,
                rec.charge_micro_hkd
            ),
            (280, 140, 140)
        );
    }
    let over = records
        .iter()
        .filter(|r| r.outcome == "over_budget")
        .count();
    assert_eq!(over, 2);
}

#[tokio::test]
async fn dedicated_tier_runs_only_on_its_own_replica() {
    let r = as_tenant("t-sandbox", "/v1/completions", sized_completion(4, 2)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let e = as_tenant(
        "t-sandbox",
        "/v1/embeddings",
        json!({"model": EMBED_MODEL, "input": "hi"}),
    )
    .await;
    assert_eq!(e.status, 200, "{}", e.body);
    let open = as_tenant("t-open", "/v1/completions", sized_completion(4, 2)).await;
    assert_eq!(open.status, 200);
    // The shipped config reserves replica 1 of each model for the sandbox tier.
    for rec in records_of("t-sandbox", 2).await {
        assert_eq!(rec.replica, Some(1), "{rec:?}");
    }
    let open_records = records_of("t-open", 1).await;
    assert!(open_records
        .iter()
        .filter(|r| r.outcome == "ok")
        .all(|r| r.replica == Some(0)));
}

#[tokio::test]
async fn a_tier_limited_to_some_models_gets_404_for_the_others() {
    let r = as_tenant(
        "t-embeddings-only",
        "/v1/completions",
        sized_completion(3, 1),
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(error_of(&r.body)["code"], "model_not_found");
}

#[tokio::test]
async fn every_record_splits_its_cost_and_holds_no_text() {
    let marker = "zebra-quartz-marker";
    let body = json!({"model": CHAT_MODEL, "messages": [{"role": "user", "content": marker}],
                      "max_tokens": 3, "temperature": 0});
    let r = as_tenant("t-open", "/v1/chat/completions", body).await;
    assert_eq!(r.status, 200);
    let usage = &r.body["usage"];
    // The ledger's request id is the response's `x-request-id`.
    let id = header(&r, "x-request-id").to_string();
    let mut found = None;
    for _ in 0..200 {
        let records = records_of("t-open", 1).await;
        found = records.into_iter().find(|x| x.request_id == id);
        if found.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rec = found.expect("a record with the response's x-request-id");
    assert_eq!(rec.prompt_tokens, usage["prompt_tokens"].as_u64().unwrap());
    assert_eq!(
        rec.completion_tokens,
        usage["completion_tokens"].as_u64().unwrap()
    );
    assert_eq!(
        rec.list_micro_hkd,
        rec.subsidy_micro_hkd + rec.charge_micro_hkd
    );
    assert_eq!(rec.subsidy_rate, 0.7);
    assert_eq!(
        (rec.grant_id.as_str(), rec.tier.as_str()),
        ("G-OPEN", "open")
    );
    assert!(rec.device_seconds > 0.0 && rec.device == test_device());
    assert!(!serde_json::to_string(&rec).unwrap().contains(marker));
}

#[tokio::test]
async fn admin_routes_need_the_admin_key() {
    let f = fixture();
    let tenant_key = f.keys["t-open"].clone();
    for key in [None, Some(tenant_key.as_str())] {
        let r = call(key, "/admin/reload", json!({})).await;
        assert_eq!(r.status, 401);
    }
    let r = call(Some(ADMIN_KEY), "/admin/reload", json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn a_key_created_while_serving_works_after_a_reload() {
    let f = fixture();
    let key = create_key(&f.config, "t-open");
    // Another test may reload at any moment; either way, after our own reload it works.
    let r = call(Some(ADMIN_KEY), "/admin/reload", json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let ok = call(Some(&key), "/v1/completions", sized_completion(3, 1)).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
}
