//! Correctness under continuous batching, over HTTP on the real model: sequences that join and
//! leave a running batch at different steps, with prompts of different lengths cut into
//! prefill chunks, produce exactly the tokens they produce alone.

mod common;
use common::*;
use serde_json::{json, Value};
use std::sync::OnceLock;

/// Four slots and small prefill chunks, so the mixed requests below share decode steps and
/// their prompts are prefilled in pieces between them.
fn batching_server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let mut config = test_config();
        config.models.retain(|m| m.name == CHAT_MODEL);
        let m = &mut config.models[0];
        m.max_batch_size = 4;
        m.max_prefill_tokens = 16;
        m.max_decode_steps_before_prefill = 1;
        spawn_server(config)
    })
}

fn requests() -> Vec<Value> {
    let long = "The history of the printing press begins in the fifteenth century, when ".repeat(4);
    vec![
        json!({"prompt": "Hi", "max_tokens": 20}),
        json!({"prompt": long, "max_tokens": 12}),
        json!({"prompt": "List three colours:", "max_tokens": 28}),
        json!({"prompt": "Once upon a time in a small village", "max_tokens": 6}),
        json!({"prompt": "def fibonacci(n):", "max_tokens": 24, "temperature": 0.8, "seed": 7}),
        json!({"prompt": "The weather today is", "max_tokens": 16, "temperature": 1.0, "top_k": 40, "seed": 11}),
    ]
}

async fn complete(mut body: Value) -> String {
    body["model"] = json!(CHAT_MODEL);
    body["ignore_eos"] = json!(true);
    if body.get("temperature").is_none() {
        body["temperature"] = json!(0);
    }
    let (status, resp) = post(batching_server(), "/v1/completions", body).await;
    assert_eq!(status, 200, "{resp}");
    resp["choices"][0]["text"]
        .as_str()
        .expect("text")
        .to_string()
}

/// Decode steps of the chat model that ran more than one sequence, from the batch-size
/// histogram: all steps minus those of one sequence.
async fn shared_steps() -> u64 {
    let text = client()
        .get(batching_server().metrics_url())
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    let value = |prefix: &str, also: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(prefix) && l.contains(CHAT_MODEL) && l.contains(also))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    value("tiergate_batch_size_count{", "") - value("tiergate_batch_size_bucket{", "le=\"1\"")
}

#[tokio::test]
async fn greedy_and_seeded_outputs_are_the_same_batched_or_alone() {
    let mut alone = Vec::new();
    for r in requests() {
        alone.push(complete(r).await);
    }
    let shared_before = shared_steps().await;
    // All at once: they join the batch as they arrive and leave at different lengths.
    let batched = futures_util::future::join_all(requests().into_iter().map(complete)).await;
    assert!(
        shared_steps().await > shared_before,
        "the requests sent together shared decode steps"
    );
    for (i, (a, b)) in alone.iter().zip(&batched).enumerate() {
        assert_eq!(a, b, "request {i} differs batched vs alone");
    }
}
