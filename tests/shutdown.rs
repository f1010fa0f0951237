//! SIGTERM to the real `tiergate serve` process, as Kubernetes sends it: the waiting request
//! is answered 503 with Retry-After at once, the running one is cut when the grace period
//! ends, the process exits within grace + flush, and the ledger holds both, chain intact.

mod common;
use common::*;
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tiergate::ledger::{open_store, verify, UsageRecord};

const GRACE_SECS: u64 = 2;
const FLUSH_SECS: u64 = 5;

/// The gateway binary on a free port with one replica of one slot, so that a second request
/// waits in the queue.
struct Gateway {
    child: Child,
    base: String,
    ledger: tiergate::ledger::LedgerConfig,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_gateway() -> Gateway {
    let mut config = test_config();
    config.models.retain(|m| m.name == CHAT_MODEL);
    config.models[0].max_batch_size = 1;
    config.limits.shutdown_grace_secs = GRACE_SECS;
    config.limits.shutdown_flush_secs = FLUSH_SECS;
    config.metrics.listen = "127.0.0.1:0".parse().expect("addr");
    let path = temp_path("shutdown.toml");
    std::fs::write(&path, toml::to_string(&config).expect("config as TOML")).expect("write");
    // A free port: bound and released just before the gateway binds it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_tiergate"))
        .args(["--config", path.to_str().expect("utf-8 path"), "serve"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("TIERGATE_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start tiergate");
    Gateway {
        child,
        base: format!("http://127.0.0.1:{port}"),
        ledger: config.ledger.clone(),
    }
}

impl Gateway {
    async fn wait_ready(&self) {
        for _ in 0..600 {
            if let Ok(r) = client().get(format!("{}/ready", self.base)).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("the gateway did not become ready");
    }

    /// Requests waiting in the chat model's queue, as `/ready`'s details say.
    async fn queued(&self) -> u64 {
        let r: Value = client()
            .get(format!("{}/ready", self.base))
            .send()
            .await
            .expect("ready")
            .json()
            .await
            .expect("json");
        r["models"][CHAT_MODEL]["queued"].as_u64().unwrap_or(0)
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the exit up to `bound` (a hang fails the test; the bound is the contract).
    fn wait_exit(&mut self, bound: Duration) -> std::process::ExitStatus {
        let until = Instant::now() + bound;
        while Instant::now() < until {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("tiergate still running {bound:?} after SIGTERM");
    }
}

fn long_completion(stream: bool) -> Value {
    json!({"model": CHAT_MODEL, "prompt": "Count: 1, 2, 3,", "max_tokens": 1500,
           "ignore_eos": true, "temperature": 0, "stream": stream})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_refuses_the_waiting_cuts_the_running_at_the_grace_and_records_both() {
    let mut gw = start_gateway();
    gw.wait_ready().await;
    // The running request: its first chunk says it holds the only slot.
    let mut running = client()
        .post(format!("{}/v1/completions", gw.base))
        .json(&long_completion(true))
        .send()
        .await
        .expect("running request");
    assert_eq!(running.status(), 200);
    let first = running.chunk().await.expect("first chunk");
    assert!(first.is_some(), "the running request streams");
    // The waiting request.
    let url = format!("{}/v1/completions", gw.base);
    let waiting = tokio::spawn(async move {
        client()
            .post(url)
            .json(&long_completion(false))
            .send()
            .await
            .expect("waiting request")
    });
    while gw.queued().await < 1 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let signalled = Instant::now();
    gw.sigterm();
    let refused = waiting.await.expect("task");
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["error"]["code"], "shutting_down");
    // Answered while the running one still streams: it was not held to the grace period.
    let mut rest = String::new();
    let mut chunks_after_refusal = 0;
    while let Some(chunk) = running.chunk().await.expect("stream") {
        chunks_after_refusal += 1;
        rest.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(chunks_after_refusal > 1, "the running request went on");
    assert!(
        rest.contains("shutting_down"),
        "the stream says why it ended"
    );

    let status = gw.wait_exit(Duration::from_secs(GRACE_SECS + FLUSH_SECS + 5));
    assert!(status.success(), "{status}");
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_secs(GRACE_SECS),
        "running request got its grace"
    );

    let records = tokio::task::spawn_blocking({
        let cfg = gw.ledger.clone();
        move || {
            let mut store = open_store(&cfg).expect("ledger");
            assert!(verify(store.as_mut()).expect("verify").is_intact());
            store.records_between(0, i64::MAX, None).expect("records")
        }
    })
    .await
    .expect("ledger task");
    let by_outcome =
        |o: &str| -> Vec<&UsageRecord> { records.iter().filter(|r| r.outcome == o).collect() };
    let cut = by_outcome("interrupted");
    assert_eq!(cut.len(), 1, "{records:?}");
    assert!(cut[0].completion_tokens > 0, "billed for what it got");
    let shed = by_outcome("overloaded");
    assert_eq!(shed.len(), 1, "{records:?}");
    assert_eq!(shed[0].reason.as_deref(), Some("shutting_down"));
    assert_eq!(shed[0].completion_tokens, 0);
}
