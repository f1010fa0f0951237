//! `/metrics` after known requests: counts per outcome, histogram counts, token counters equal
//! to the `usage` the clients got, labels from bounded sets only, scrapes that never wait for
//! the engine; and the per-response headers. Each test uses its own tenant and tier, so the
//! tests of this binary, which share one process-wide registry, cannot disturb each other.

mod common;
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use tiergate::outcome::Outcome;
use tiergate::tenancy::ManualClock;

struct Fixture {
    server: Server,
    keys: BTreeMap<&'static str, String>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let config = tenant_config();
        let keys = ["t-three-rpm", "t-open", "t-one-at-a-time", "t-small-tpm"]
            .into_iter()
            .map(|t| (t, create_key(&config, t)))
            .collect();
        Fixture {
            // Limit time stands still: the rate-limited counts below do not depend on speed.
            server: spawn_server_with_clock(config, Arc::new(ManualClock::default())),
            keys,
        }
    })
}

type Labels = BTreeMap<String, String>;

/// `(name, labels, value)` of every sample in an exposition text.
fn samples(text: &str) -> Vec<(String, Labels, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("value");
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').expect("label");
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect();
            (name.to_string(), labels, value.parse().expect("number"))
        })
        .collect()
}

async fn scrape() -> Vec<(String, Labels, f64)> {
    let text = client()
        .get(fixture().server.metrics_url())
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    samples(&text)
}

/// Sum of the samples of `name` whose labels include all of `want`.
fn total(all: &[(String, Labels, f64)], name: &str, want: &[(&str, &str)]) -> f64 {
    all.iter()
        .filter(|(n, l, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

async fn completion(tenant: &str, max_tokens: u32) -> reqwest::Response {
    let body = json!({"model": CHAT_MODEL, "prompt": "1, 2, 3,", "max_tokens": max_tokens,
                      "temperature": 0, "ignore_eos": true});
    client()
        .post(fixture().server.url("/v1/completions"))
        .bearer_auth(&fixture().keys[tenant])
        .json(&body)
        .send()
        .await
        .expect("request")
}

#[tokio::test]
async fn counts_histograms_and_tokens_match_the_requests_sent() {
    let mut usage = (0u64, 0u64);
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let resp = completion("t-three-rpm", 4).await;
        statuses.push(resp.status().as_u16());
        let body: Value = resp.json().await.expect("json");
        usage.0 += body["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
        usage.1 += body["usage"]["completion_tokens"].as_u64().unwrap_or(0);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    let all = scrape().await;
    let tier = ("tier", "three-rpm");
    let req = "tiergate_requests_total";
    assert_eq!(
        total(
            &all,
            req,
            &[tier, ("outcome", "ok"), ("status_class", "2xx")]
        ),
        3.0
    );
    assert_eq!(total(&all, req, &[tier, ("outcome", "rate_limited")]), 2.0);
    assert_eq!(
        total(
            &all,
            req,
            &[tier, ("route", "/v1/completions"), ("model", CHAT_MODEL)]
        ),
        5.0
    );
    for h in [
        "tiergate_time_to_first_token_seconds_count",
        "tiergate_e2e_request_latency_seconds_count",
        "tiergate_request_queue_time_seconds_count",
        "tiergate_request_generation_tokens_count",
    ] {
        assert_eq!(total(&all, h, &[tier]), 3.0, "{h}");
    }
    // 4 tokens each: 3 gaps between them per request.
    assert_eq!(
        total(&all, "tiergate_inter_token_latency_seconds_count", &[tier]),
        9.0
    );
    assert_eq!(
        total(&all, "tiergate_prompt_tokens_total", &[tier]),
        usage.0 as f64
    );
    assert_eq!(
        total(&all, "tiergate_generation_tokens_total", &[tier]),
        usage.1 as f64
    );
    let list = total(&all, "tiergate_cost_hkd_total", &[tier, ("part", "list")]);
    let parts = total(
        &all,
        "tiergate_cost_hkd_total",
        &[tier, ("part", "subsidy")],
    ) + total(
        &all,
        "tiergate_cost_hkd_total",
        &[tier, ("part", "tenant_charge")],
    );
    assert!(
        list > 0.0 && (list - parts).abs() < 1e-9,
        "{list} vs {parts}"
    );
}

#[tokio::test]
async fn label_values_stay_in_bounded_sets() {
    // Values a client controls must not become label values.
    let f = fixture();
    let key = &f.keys["t-open"];
    let odd = json!({"model": "no-such-model-9f3a", "prompt": "x", "max_tokens": 1});
    for path in ["/v1/completions", "/v1/no-such-route-9f3a"] {
        client()
            .post(f.server.url(path))
            .bearer_auth(key)
            .json(&odd)
            .send()
            .await
            .expect("request");
    }
    client()
        .post(f.server.url("/v1/completions"))
        .bearer_auth("tg-wrong-9f3a")
        .json(&odd)
        .send()
        .await
        .expect("request");
    let dir = &f.server.state.tenancy.directory();
    let models = [CHAT_MODEL, EMBED_MODEL, "none"];
    let routes = [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/models/{id}",
        "/tokenize",
        "/detokenize",
        "/health",
        "/ready",
        "/admin/reload",
        "/admin/tenants",
        "/v1/responses",
        "/v1/responses/{id}",
        "unmatched",
    ];
    for (name, labels, _) in scrape().await {
        for (k, v) in &labels {
            let ok = match k.as_str() {
                "model" => models.contains(&v.as_str()),
                "tier" => dir.tiers.contains_key(v) || v == "none" || v == "admin",
                "route" => routes.contains(&v.as_str()),
                "outcome" => Outcome::parse(v).is_some(),
                "status_class" => ["1xx", "2xx", "3xx", "4xx", "5xx"].contains(&v.as_str()),
                "replica" => v.parse::<usize>().is_ok(),
                "device" => v == "cpu" || v.starts_with("cuda:"),
                "part" => ["list", "subsidy", "tenant_charge"].contains(&v.as_str()),
                "listener" => ["api", "metrics"].contains(&v.as_str()),
                "reason" => ["refused", "header_timeout", "idle_timeout"].contains(&v.as_str()),
                "le" | "quantile" => true,
                _ => false,
            };
            assert!(ok, "{name}: label {k}={v:?} is outside its bounded set");
            assert!(
                !v.contains("9f3a"),
                "{name}: client-controlled value leaked: {v}"
            );
        }
    }
}

#[tokio::test]
async fn scrapes_answer_while_a_generation_is_running() {
    let f = fixture();
    let long = json!({"model": CHAT_MODEL, "prompt": "Count:", "max_tokens": 2000,
                      "temperature": 0, "ignore_eos": true, "stream": true});
    let mut stream = client()
        .post(f.server.url("/v1/completions"))
        .bearer_auth(&f.keys["t-one-at-a-time"])
        .json(&long)
        .send()
        .await
        .expect("stream");
    stream.chunk().await.expect("first chunk");
    for _ in 0..10 {
        let all = scrape().await;
        assert!(total(&all, "tiergate_replica_ready", &[("model", CHAT_MODEL)]) >= 1.0);
    }
    // The generation is still running: the scrapes did not wait for it. The gauge is set
    // at the end of the replica's step, which may lag the first chunk on a busy machine.
    let mut running = 0.0;
    for _ in 0..200 {
        let all = scrape().await;
        running = total(
            &all,
            "tiergate_num_requests_running",
            &[("model", CHAT_MODEL)],
        );
        if running >= 1.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(running >= 1.0, "the running generation shows in the gauge");
    assert!(stream.chunk().await.expect("more").is_some());
    // The client leaves: its slot is counted as cancelled.
    drop(stream);
    let mut cancelled = 0.0;
    for _ in 0..200 {
        let all = scrape().await;
        cancelled = total(
            &all,
            "tiergate_cancelled_slots_total",
            &[("model", CHAT_MODEL)],
        );
        if cancelled >= 1.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(cancelled >= 1.0);
}

#[tokio::test]
async fn responses_carry_request_id_timings_tokens_and_cost_headers() {
    let f = fixture();
    let resp = client()
        .post(f.server.url("/v1/completions"))
        .bearer_auth(&f.keys["t-small-tpm"])
        .header("x-request-id", "trace-42")
        .json(
            &json!({"model": CHAT_MODEL, "prompt": "1, 2, 3,", "max_tokens": 3,
                      "temperature": 0, "ignore_eos": true}),
        )
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    let get = |n: &str| {
        h.get(n)
            .unwrap_or_else(|| panic!("{n}"))
            .to_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(get("x-request-id"), "trace-42");
    assert_eq!(get("x-completion-tokens"), "3");
    assert_eq!(get("x-subsidy-rate"), "0");
    let list: f64 = get("x-cost-list-hkd").parse().unwrap();
    let tenant: f64 = get("x-cost-tenant-hkd").parse().unwrap();
    assert!(
        list > 0.0 && (list - tenant).abs() < 1e-9,
        "no subsidy on this tier"
    );
    for n in ["x-queue-time-ms", "x-compute-time-ms", "x-prompt-tokens"] {
        get(n).parse::<f64>().expect("number");
    }
    let body: Value = resp.json().await.expect("json");
    assert_eq!(
        get("x-prompt-tokens"),
        body["usage"]["prompt_tokens"].to_string()
    );
    // Without one, the gateway makes an id.
    let plain = client()
        .get(f.server.url("/health"))
        .send()
        .await
        .expect("health");
    assert!(plain.headers().contains_key("x-request-id"));
}
