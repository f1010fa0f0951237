//! The prefix cache over HTTP on the real SmolLM2 model: a repeated system prompt is served
//! from the cache (`usage.prompt_tokens_details.cached_tokens`), only within the scope the
//! tier sets, with outputs identical to an uncached run, and under a tiny budget too.
//!
//! Tests run concurrently in one gateway; each one's system prompt starts with its own tag,
//! so no test can hit another's blocks.

mod common;
use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::OnceLock;
use tiergate::ledger::{open_store, UsageRecord};

const TIERS: &str = r#"
[tiers.per-tenant]
requests_per_minute = 1000000
tokens_per_minute = 1000000000
max_concurrent = 1000
subsidy_rate = 0.0

[tiers.shared]
requests_per_minute = 1000000
tokens_per_minute = 1000000000
max_concurrent = 1000
subsidy_rate = 0.0
prefix_cache = "tier"

[tiers.uncached]
requests_per_minute = 1000000
tokens_per_minute = 1000000000
max_concurrent = 1000
subsidy_rate = 0.0
prefix_cache = "off"

[prices.smollm2-135m-instruct]
input_per_1k_hkd = 0.004
cached_input_per_1k_hkd = 0.001
output_per_1k_hkd = 0.016
"#;

/// Tenant id and tier.
const TENANTS: [(&str, &str); 6] = [
    ("alice", "per-tenant"),
    ("erin", "per-tenant"),
    ("bob", "per-tenant"),
    ("carol", "shared"),
    ("dave", "shared"),
    ("off", "uncached"),
];

struct Fixture {
    server: Server,
    keys: HashMap<&'static str, String>,
    ledger: tiergate::ledger::LedgerConfig,
}

/// A gateway serving only the chat model, one replica, with the test tiers above and a
/// prefix cache of `budget` bytes.
fn gateway(budget: usize) -> Fixture {
    let mut config = tenant_config();
    config.models.retain(|m| m.name == CHAT_MODEL);
    let model = &mut config.models[0];
    model.replicas.truncate(1);
    model.prefix_cache_bytes = budget;
    // Requests of the concurrent tests queue behind each other on one replica; a busy
    // machine must not turn that wait into 503s.
    config.limits.queue_timeout_secs = 600;
    let tiers = temp_path("tiers.toml");
    std::fs::write(&tiers, TIERS).expect("tiers file");
    let tenants: String = TENANTS
        .iter()
        .map(|(id, tier)| {
            format!(
                "[[tenants]]\nid = \"{id}\"\nname = \"{id}\"\ntier = \"{tier}\"\ngrant = \"G\"\n\n"
            )
        })
        .collect();
    let tenants_file = temp_path("tenants.toml");
    std::fs::write(&tenants_file, tenants).expect("tenants file");
    config.tenancy.tiers_file = tiers;
    config.tenancy.tenants_file = tenants_file;
    let keys = TENANTS
        .iter()
        .map(|(id, _)| (*id, create_key(&config, id)))
        .collect();
    Fixture {
        ledger: config.ledger.clone(),
        server: spawn_server(config),
        keys,
    }
}

/// The gateway with the default budget.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| gateway(tiergate::config::ModelConfig::named(CHAT_MODEL).prefix_cache_bytes))
}

/// A gateway whose cache holds three blocks of SmolLM2's KV (46,080 bytes a position).
fn tiny_fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| gateway(3 * 16 * 46_080))
}

async fn post_as(f: &Fixture, tenant: &str, path: &str, body: &Value) -> Value {
    let resp = client()
        .post(f.server.url(path))
        .bearer_auth(&f.keys[tenant])
        .json(body)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    assert_eq!(status, 200, "{text}");
    if body["stream"] == json!(true) {
        return Value::Array(
            text.lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .filter(|l| *l != "[DONE]")
                .map(|l| serde_json::from_str(l).expect("JSON chunk"))
                .collect(),
        );
    }
    serde_json::from_str(&text).expect("JSON body")
}

/// A system prompt of ~300 tokens that starts with `tag`.
fn system(tag: &str) -> String {
    format!(
        "[{tag}] You are the support assistant of a small bookshop. {}",
        "Answer in one short sentence, be polite, never invent prices or opening hours, and \
         suggest asking a member of staff when unsure. "
            .repeat(8)
    )
}

fn chat(tag: &str, question: &str) -> Value {
    json!({
        "model": CHAT_MODEL,
        "messages": [
            {"role": "system", "content": system(tag)},
            {"role": "user", "content": question},
        ],
        "max_tokens": 12,
        "temperature": 0,
    })
}

fn cached(body: &Value) -> u64 {
    body["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or_else(|| panic!("no cached_tokens: {body}"))
}

/// Whether all of the system prompt but a block or two came from the cache: the question
/// and the template's tail (~20 tokens) differ, and reuse is in 16-token blocks.
fn mostly_cached(body: &Value) -> bool {
    let prompt = body["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
    let hit = cached(body);
    hit.is_multiple_of(16) && hit < prompt && hit + 48 >= prompt
}

fn text(body: &Value) -> &str {
    body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
}

#[tokio::test]
async fn a_repeated_system_prompt_is_served_from_the_cache() {
    let f = fixture();
    let first = post_as(
        f,
        "alice",
        "/v1/chat/completions",
        &chat("repeat", "Hello?"),
    )
    .await;
    assert_eq!(cached(&first), 0, "{first}");
    let second = post_as(
        f,
        "alice",
        "/v1/chat/completions",
        &chat("repeat", "Are you open?"),
    )
    .await;
    assert!(mostly_cached(&second), "{second}");
}

#[tokio::test]
async fn another_tenant_of_a_per_tenant_tier_gets_no_cached_tokens() {
    let f = fixture();
    let body = chat("tenant-scope", "Hello?");
    post_as(f, "alice", "/v1/chat/completions", &body).await;
    let other = post_as(f, "bob", "/v1/chat/completions", &body).await;
    assert_eq!(cached(&other), 0, "{other}");
    let again = post_as(f, "alice", "/v1/chat/completions", &body).await;
    assert!(cached(&again) > 0, "{again}");
}

#[tokio::test]
async fn tenants_of_a_tier_scoped_tier_share_the_cache() {
    let f = fixture();
    let body = chat("tier-scope", "Hello?");
    post_as(f, "carol", "/v1/chat/completions", &body).await;
    let other = post_as(f, "dave", "/v1/chat/completions", &body).await;
    assert!(mostly_cached(&other), "{other}");
    // A tier-scoped tier's blocks are not another tier's.
    let outsider = post_as(f, "alice", "/v1/chat/completions", &body).await;
    assert_eq!(cached(&outsider), 0, "{outsider}");
}

#[tokio::test]
async fn a_tier_with_the_cache_off_never_reports_cached_tokens() {
    let f = fixture();
    let body = chat("off-scope", "Hello?");
    for _ in 0..2 {
        let reply = post_as(f, "off", "/v1/chat/completions", &body).await;
        assert_eq!(cached(&reply), 0, "{reply}");
    }
}

/// Greedy and seeded sampling, each request alone and then all at once (batched).
async fn outputs_on_and_off(f: &Fixture, tag: &str) {
    let questions = ["Do you sell maps?", "Can I pay by card?"];
    let bodies: Vec<Value> = questions
        .iter()
        .flat_map(|q| {
            let greedy = chat(tag, q);
            let mut seeded = chat(tag, q);
            seeded["temperature"] = json!(0.9);
            seeded["seed"] = json!(7);
            [greedy, seeded]
        })
        .collect();
    // Fills the cache with the system prompt.
    post_as(f, "alice", "/v1/chat/completions", &bodies[0]).await;
    for body in &bodies {
        let on = post_as(f, "alice", "/v1/chat/completions", body).await;
        let off = post_as(f, "off", "/v1/chat/completions", body).await;
        assert!(cached(&on) > 0 && cached(&off) == 0, "{on} {off}");
        assert_eq!(text(&on), text(&off), "{body}");
    }
    let together = bodies.iter().flat_map(|b| {
        [
            post_as(f, "alice", "/v1/chat/completions", b),
            post_as(f, "off", "/v1/chat/completions", b),
        ]
    });
    let replies = futures_util::future::join_all(together).await;
    for pair in replies.chunks(2) {
        assert_eq!(
            text(&pair[0]),
            text(&pair[1]),
            "batched: {} {}",
            pair[0],
            pair[1]
        );
    }
}

#[tokio::test]
async fn outputs_are_identical_with_the_cache_on_and_off() {
    outputs_on_and_off(fixture(), "identical").await;
}

#[tokio::test]
async fn a_tiny_budget_evicts_and_keeps_answering_as_without_a_cache() {
    let f = tiny_fixture();
    for tag in ["tiny-a", "tiny-b"] {
        outputs_on_and_off(f, tag).await;
    }
    let metrics = client()
        .get(f.server.metrics_url())
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let evictions: f64 = metrics
        .lines()
        .find(|l| l.starts_with("tiergate_prefix_cache_evictions_total{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no evictions metric:\n{metrics}"));
    assert!(evictions > 0.0, "{metrics}");
}

#[tokio::test]
async fn the_final_usage_chunk_of_a_stream_carries_cached_tokens() {
    let f = fixture();
    post_as(
        f,
        "alice",
        "/v1/chat/completions",
        &chat("stream", "Hello?"),
    )
    .await;
    let mut body = chat("stream", "Any news?");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let chunks = post_as(f, "alice", "/v1/chat/completions", &body).await;
    let last = chunks
        .as_array()
        .and_then(|c| c.last())
        .cloned()
        .unwrap_or_default();
    assert!(mostly_cached(&last), "{last}");
}

#[tokio::test]
async fn the_responses_api_reports_cached_input_tokens() {
    let f = fixture();
    post_as(
        f,
        "alice",
        "/v1/chat/completions",
        &chat("responses", "Hello?"),
    )
    .await;
    let body = json!({
        "model": CHAT_MODEL,
        "instructions": system("responses"),
        "input": "Are you open?",
        "max_output_tokens": 8,
        "temperature": 0,
    });
    let reply = post_as(f, "alice", "/v1/responses", &body).await;
    let hit = reply["usage"]["input_tokens_details"]["cached_tokens"].as_u64();
    assert!(hit.is_some_and(|n| n >= 192), "{reply}");
}

#[tokio::test]
async fn metrics_count_looked_up_and_cached_prompt_tokens_per_tier() {
    let f = fixture();
    post_as(
        f,
        "carol",
        "/v1/chat/completions",
        &chat("metrics", "Hello?"),
    )
    .await;
    post_as(f, "carol", "/v1/chat/completions", &chat("metrics", "Bye?")).await;
    let metrics = client()
        .get(f.server.metrics_url())
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let value = |name: &str| -> f64 {
        let prefix = format!("{name}{{model=\"{CHAT_MODEL}\",tier=\"shared\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix}:\n{metrics}"))
    };
    let (queries, hits) = (
        value("tiergate_prefix_cache_queries_total"),
        value("tiergate_prefix_cache_hits_total"),
    );
    assert!(hits >= 192.0 && queries > hits, "{queries} {hits}");
    assert!(
        metrics.contains("tiergate_prefix_cache_bytes{"),
        "{metrics}"
    );
}

/// The ledger's records of `tenant`, once the writer has stored `count` of them.
async fn records_of(f: &Fixture, tenant: &str, count: usize) -> Vec<UsageRecord> {
    for _ in 0..400 {
        let mut store = open_store(&f.ledger).expect("ledger");
        let records = store
            .records_between(0, i64::MAX, Some(tenant))
            .expect("records");
        if records.len() >= count {
            return records;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the ledger never held {count} records of {tenant}");
}

#[tokio::test]
async fn the_ledger_records_cached_tokens_and_bills_them_at_the_cached_price() {
    let f = fixture();
    post_as(f, "erin", "/v1/chat/completions", &chat("ledger", "Hello?")).await;
    let second = post_as(f, "erin", "/v1/chat/completions", &chat("ledger", "Bye?")).await;
    let records = records_of(f, "erin", 2).await;
    let last = records
        .iter()
        .find(|r| r.cached_tokens > 0)
        .expect("a cached record");
    assert_eq!(last.cached_tokens, cached(&second));
    assert_eq!(
        last.prompt_tokens,
        second["usage"]["prompt_tokens"].as_u64().unwrap()
    );
    // µHKD per token: 4 per prompt token, 1 per cached one, 16 per completion token.
    let (p, c, o) = (
        last.prompt_tokens,
        last.cached_tokens,
        last.completion_tokens,
    );
    assert_eq!(
        last.list_micro_hkd as u64,
        4 * (p - c) + c + 16 * o,
        "{last:?}"
    );
}
