//! Bounded queues and cancellation, on a gateway with one KV slot and a queue of one, so that
//! every state is reached by counting requests, not by timing.

mod common;
use common::*;
use serde_json::json;
use std::time::Duration;
use tiergate::infer::ModelHandle;

/// Each test gets its own gateway (one slot, queue of one) so tests cannot disturb each other.
fn tight_server() -> &'static Server {
    tight_server_with(|_| {})
}

fn tight_server_with(adjust: impl FnOnce(&mut tiergate::config::Config)) -> &'static Server {
    let mut config = test_config();
    config.models.retain(|m| m.name == CHAT_MODEL);
    config.models[0].max_batch_size = 1;
    config.models[0].max_queue = 1;
    config.limits.max_output_tokens = 4000;
    adjust(&mut config);
    Box::leak(Box::new(spawn_server(config)))
}

fn long_stream_body() -> serde_json::Value {
    // 4000 tokens: most of a minute of decoding here, so it is still running while we probe.
    json!({"model": CHAT_MODEL, "prompt": "Count:", "max_tokens": 4000, "temperature": 0, "ignore_eos": true, "stream": true})
}

/// A client whose patience is far below the long generation's duration: a request stuck
/// behind it fails, one that got the freed slot succeeds.
fn impatient_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client")
}

/// Sends a two-token request.
async fn send_small(server: &'static Server) -> reqwest::Response {
    let body = json!({"model": CHAT_MODEL, "prompt": "Hi", "max_tokens": 2, "temperature": 0});
    impatient_client()
        .post(server.url("/v1/completions"))
        .json(&body)
        .send()
        .await
        .expect("answer within 15 s")
}

/// A response header as a number.
fn header_number(resp: &reqwest::Response, name: &str) -> Option<u64> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok()?.parse().ok())
}

/// A two-token request: its status, `Retry-After` header and body.
async fn small_request(server: &'static Server) -> (u16, Option<u64>, serde_json::Value) {
    let resp = send_small(server).await;
    let status = resp.status().as_u16();
    let retry_after = header_number(&resp, "retry-after");
    (status, retry_after, resp.json().await.expect("JSON"))
}

/// The chat model's request counters, as `/ready` reports them.
async fn counters(server: &Server) -> serde_json::Value {
    let resp = client()
        .get(server.url("/ready"))
        .send()
        .await
        .expect("ready");
    let body: serde_json::Value = resp.json().await.expect("JSON");
    body["models"][CHAT_MODEL].clone()
}

/// Starts a long streamed generation and returns once its first token has arrived, i.e. once
/// it holds the only slot.
async fn occupy_the_slot(server: &Server) -> reqwest::Response {
    let mut resp = client()
        .post(server.url("/v1/completions"))
        .json(&long_stream_body())
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let first = resp.chunk().await.expect("chunk").expect("a first chunk");
    assert!(!first.is_empty());
    resp
}

#[tokio::test]
async fn full_queue_answers_503_with_retry_after_at_once_and_cancelling_frees_the_slot() {
    let server = tight_server();
    let running = occupy_the_slot(server).await;
    // The slot is taken and the queue holds one: of two more requests, one waits in the
    // queue and the other is refused at once, whichever arrives second.
    let mut first = tokio::spawn(small_request(server));
    let mut second = tokio::spawn(small_request(server));
    let (refused, queued) = tokio::select! {
        r = &mut first => (r.expect("task"), second),
        r = &mut second => (r.expect("task"), first),
    };
    let (status, retry_after, body) = refused;
    assert_eq!(status, 503, "{body}");
    assert!(
        retry_after.is_some_and(|s| s >= 1),
        "Retry-After in whole seconds"
    );
    assert_eq!(error_of(&body)["code"], "overloaded");
    assert_eq!(counters(server).await["rejected_full"], 1);
    // Dropping the running stream cancels it; its slot goes to the queued request, which
    // completes long before the 4000-token generation could have.
    drop(running);
    let (status, _, body) = queued.await.expect("task");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 2);
    let c = counters(server).await;
    assert_eq!(c["cancelled"], 1, "the running stream was cancelled: {c}");
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_stops_its_generation() {
    let server = tight_server();
    let running = occupy_the_slot(server).await;
    drop(running);
    // With the slot freed, a new request is admitted and finishes; had the 4000-token
    // generation kept running, this would wait behind it past the client's timeout.
    let (status, _, body) = small_request(server).await;
    assert_eq!(status, 200, "{body}");
    let c = counters(server).await;
    assert_eq!(c["cancelled"], 1, "{c}");
    assert_eq!(c["finished"], 1, "{c}");
}

#[tokio::test]
async fn a_request_that_waits_past_the_queue_timeout_gets_503_and_the_running_stream_goes_on() {
    let server = tight_server_with(|c| c.models[0].queue_timeout_secs = Some(1));
    let running = occupy_the_slot(server).await;
    // The only slot stays busy, so this request waits its full second in the queue.
    let (status, retry_after, body) = small_request(server).await;
    assert_eq!(status, 503, "{body}");
    assert!(retry_after.is_some());
    assert_eq!(error_of(&body)["code"], "queue_timeout");
    assert_eq!(counters(server).await["queue_timeouts"], 1);
    // The running stream was not disturbed: it still delivers tokens.
    let mut running = running;
    assert!(running.chunk().await.expect("chunk").is_some());
}

/// The refusal of a request that finds a full queue of `max_queue` behind the only slot, with
/// the service-time estimate fixed at 5 s (nothing finishes meanwhile to move it): its status
/// and its `retry-after` and `retry-after-ms` headers.
async fn refusal_of_a_full_queue(max_queue: usize) -> (u16, Option<u64>, Option<u64>) {
    let server = tight_server_with(|c| c.models[0].max_queue = max_queue);
    let Ok(ModelHandle::Generate(model)) = server.state.engine.model(CHAT_MODEL) else {
        panic!("{CHAT_MODEL} generates");
    };
    model.record_service_time(Duration::from_secs(5));
    let running = occupy_the_slot(server).await;
    // One more than the queue holds: the first to come back is the one refused.
    let requests = (0..=max_queue).map(|_| tokio::spawn(send_small(server)));
    let (first, _, _queued) = futures_util::future::select_all(requests).await;
    let refused = first.expect("task");
    drop(running);
    let status = refused.status().as_u16();
    let hints = (
        header_number(&refused, "retry-after"),
        header_number(&refused, "retry-after-ms"),
    );
    (status, hints.0, hints.1)
}

#[tokio::test]
async fn retry_after_of_a_full_queue_is_its_depth_times_the_service_time() {
    // One slot: one waiting request is 5 s of work ahead, three are 15 s.
    assert_eq!(refusal_of_a_full_queue(1).await, (503, Some(5), Some(5000)));
    assert_eq!(
        refusal_of_a_full_queue(3).await,
        (503, Some(15), Some(15000))
    );
}
