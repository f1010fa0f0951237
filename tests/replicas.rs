//! A replica that dies after loading (a panic outside a model call, made to happen through
//! the engine's test hook): its running stream ends with an error event instead of hanging, its
//! waiting requests are answered 503 `model_not_ready` at once, `/ready` says it is down, and
//! it is loaded again and serves.

mod common;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

async fn get_ready(server: &Server) -> (u16, Value) {
    let resp = client()
        .get(server.url("/ready"))
        .send()
        .await
        .expect("ready");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("json"))
}

fn long_request() -> Value {
    json!({"model": CHAT_MODEL, "prompt": "Once upon a time", "max_tokens": 400,
        "ignore_eos": true, "temperature": 0})
}

#[tokio::test]
async fn a_replica_that_dies_answers_its_queue_at_once_and_comes_back() {
    let mut config = test_config();
    config.models.retain(|m| m.name == CHAT_MODEL);
    // One slot: the second request waits in the queue behind the first.
    config.models[0].max_batch_size = 1;
    config.models[0].replicas.truncate(1);
    let server = spawn_server(config);

    // The first request holds the slot: its first chunk says it runs.
    let mut stream_body = long_request();
    stream_body["stream"] = json!(true);
    let mut running = client()
        .post(server.url("/v1/completions"))
        .json(&stream_body)
        .send()
        .await
        .expect("stream");
    assert_eq!(running.status(), 200);
    let mut streamed =
        String::from_utf8_lossy(&running.chunk().await.unwrap().unwrap()).to_string();
    let waiting = tokio::spawn({
        let url = server.url("/v1/completions");
        async move { client().post(url).json(&long_request()).send().await }
    });
    wait_until(&server, |body| body["models"][CHAT_MODEL]["queued"] == 1).await;

    assert!(server.state.engine.inject_fault(CHAT_MODEL));
    let waiting = waiting.await.unwrap().expect("answered");
    assert_eq!(waiting.status(), 503);
    assert!(waiting.headers().contains_key("retry-after"));
    let body: Value = waiting.json().await.unwrap();
    assert_eq!(error_of(&body)["code"], "model_not_ready", "{body}");
    // Marked down before that answer, and for at least the first backoff (1 s) after it.
    let (status, body) = get_ready(&server).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (503, Some("down")),
        "{body}"
    );
    assert_eq!(body["replicas"][0]["state"], "down");
    while let Some(chunk) = running.chunk().await.expect("the stream ends, never hangs") {
        streamed.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(streamed.contains("\"error\""), "{streamed}");
    assert!(streamed.trim_end().ends_with("data: [DONE]"), "{streamed}");

    // Loaded again after the first backoff (1 s), and serving.
    wait_until(&server, |body| body["status"] == "ready").await;
    let (status, body) = post(&server, "/v1/completions", chat_prompt()).await;
    assert_eq!(status, 200, "{body}");
    let metrics = client()
        .get(server.metrics_url())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "tiergate_replica_restarts_total{{model=\"{CHAT_MODEL}\",replica=\"0\"}} 1"
        )),
        "{metrics}"
    );
}

fn chat_prompt() -> Value {
    json!({"model": CHAT_MODEL, "prompt": "1, 2, 3,", "max_tokens": 2, "temperature": 0})
}

/// Polls `/ready` (auth is off: it shows the details) until `done` holds; 120 s at most.
async fn wait_until(server: &Server, done: impl Fn(&Value) -> bool) {
    for _ in 0..6000 {
        let (_, body) = get_ready(server).await;
        if done(&body) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("/ready never reached the expected state");
}
