//! Several gateways sharing one set of limits in the real Redis at 127.0.0.1:6379 (`.ci/run`
//! starts it), over HTTP: two gateways hold a tenant to its limit as one would, a gateway whose
//! Redis is down starts and refuses with 503 rather than admit unchecked, and a malformed Redis
//! URL stops the start naming its key.

mod common;
use common::*;
use serde_json::json;
use tiergate::config::{Config, LimiterBackend, OnUnavailable};

/// Gateways of one test share this prefix; its keys are deleted when it is dropped.
struct Prefix(String);

impl Prefix {
    fn new(test: &str) -> Self {
        Prefix(format!("tgtest-http:{}:{test}:", std::process::id()))
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        let client = redis::Client::open("redis://127.0.0.1:6379/0").expect("url");
        let Ok(mut conn) = client.get_connection() else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.0))
            .query(&mut conn)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut conn);
        }
    }
}

/// Tenants with keys on, the embedding model only (the cheapest request), limits in Redis.
fn redis_config(prefix: &Prefix) -> Config {
    let mut config = tenant_config();
    config.models.retain(|m| m.name == EMBED_MODEL);
    let limiter = &mut config.tenancy.limiter;
    limiter.backend = LimiterBackend::Redis;
    limiter.key_prefix = prefix.0.clone();
    config
}

async fn embed(server: &Server, key: &str) -> reqwest::Response {
    client()
        .post(server.url("/v1/embeddings"))
        .bearer_auth(key)
        .json(&json!({"model": EMBED_MODEL, "input": "hello"}))
        .send()
        .await
        .expect("request")
}

#[tokio::test]
async fn two_gateways_hold_a_tenant_to_one_shared_request_limit() {
    let prefix = Prefix::new("shared");
    let config = redis_config(&prefix);
    // Both gateways read the same tenant and key files.
    let key = create_key(&config, "t-three-rpm");
    let gateways = [spawn_server(config.clone()), spawn_server(config)];
    let mut statuses = Vec::new();
    for i in 0..6 {
        statuses.push(embed(&gateways[i % 2], &key).await.status().as_u16());
    }
    // Three a minute across both, not three each.
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429]);
    let refused = embed(&gateways[1], &key).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn a_gateway_whose_redis_is_down_starts_and_refuses_with_503() {
    let prefix = Prefix::new("down");
    let mut config = redis_config(&prefix);
    // Nothing listens on port 1.
    config.tenancy.limiter.url = "redis://127.0.0.1:1/0".into();
    config.tenancy.limiter.on_unavailable = OnUnavailable::Reject;
    let key = create_key(&config, "t-open");
    let gateway = spawn_server(config);
    let resp = embed(&gateway, &key).await;
    assert_eq!(resp.status(), 503);
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(retry_after >= 1);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "limiter_unavailable");
}

#[test]
fn a_malformed_redis_url_stops_the_start_naming_its_key() {
    let env = [
        ("TIERGATE_TENANCY__LIMITER__BACKEND", "redis"),
        ("TIERGATE_TENANCY__LIMITER__URL", "localhost:6379"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    let err = Config::load(None, env).unwrap_err().to_string();
    assert!(err.contains("tenancy.limiter.url"), "{err}");
}
