//! A real gateway on `127.0.0.1:0` with the real small models, shared by the tests of one
//! binary (loading the models once), plus small helpers for requests.
#![allow(dead_code)]

use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use tiergate::backend::device::DeviceSpec;
use tiergate::config::{AuthMode, Config};
use tiergate::tenancy::{Clock, MonotonicClock};
use tiergate::AppState;

pub const CHAT_MODEL: &str = "smollm2-135m-instruct";
pub const EMBED_MODEL: &str = "all-minilm-l6-v2";
pub const QWEN_MODEL: &str = "qwen2.5-coder-0.5b-instruct";

pub struct Server {
    pub addr: SocketAddr,
    /// The metrics listener (`GET /metrics`).
    pub metrics_addr: SocketAddr,
    /// The server's shared state: its limiter, ledger handle and engine.
    pub state: Arc<AppState>,
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.metrics_addr)
    }
}

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A fresh path under the system temp dir, unique in this process.
pub fn temp_path(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    std::env::temp_dir().join(format!("tiergate-test-{}-{n}-{name}", std::process::id()))
}

/// The device every replica of the test gateways runs on: `TIERGATE_TEST_DEVICE` (`cpu`
/// when unset, `cuda:0` in `loadtests/gpu-check.sh`), as the config and the ledger spell it.
pub fn test_device() -> String {
    DeviceSpec::for_tests().to_string()
}

/// The default configuration as shipped, with a small body limit so 413 is cheap to test,
/// the test tiers of `tests/config`, auth off (every request is `anonymous` on the `open`
/// tier, which never limits), a ledger of its own in a temporary SQLite file, and every
/// replica on the test device.
pub fn test_config() -> Config {
    let mut config = Config {
        models_dir: repo_path("models"),
        ..Config::default()
    };
    // The Qwen model has tests of its own (tests/qwen.rs); the rest run on the small two.
    config.models.retain(|m| m.name != QWEN_MODEL);
    for replica in config.models.iter_mut().flat_map(|m| &mut m.replicas) {
        replica.device = test_device();
    }
    config.limits.max_body_bytes = 64 * 1024;
    // Below the body limit, so that a body can carry a grammar over it.
    config.limits.max_grammar_bytes = 16 * 1024;
    let t = &mut config.tenancy;
    t.auth = AuthMode::Off;
    t.anonymous_tier = "open".into();
    t.tiers_file = repo_path("tests/config/tiers.toml");
    t.tenants_file = repo_path("tests/config/tenants.toml");
    t.keys_file = temp_path("keys.toml");
    // The tests send bursts from one address.
    t.ip_requests_per_second = 100_000;
    t.ip_burst = 100_000;
    config.ledger.url = format!("sqlite://{}", temp_path("ledger.db").display());
    config
}

/// `test_config` with authentication on: tenants of `tests/config/tenants.toml`.
pub fn tenant_config() -> Config {
    let mut config = test_config();
    config.tenancy.auth = AuthMode::On;
    config
}

/// Makes an API key for `tenant` in the config's keys file, as `tiergate keys create` does (a
/// running server finds it on first use).
pub fn create_key(config: &Config, tenant: &str) -> String {
    tiergate::app::create_key(config, tenant).expect("key")
}

/// Starts a gateway on its own thread and runtime, so that it outlives each test's runtime.
/// Blocks until every replica has loaded. Model files must be installed (`tiergate models
/// fetch`; `.ci/run` does it): the error says so otherwise.
pub fn spawn_server(config: Config) -> Server {
    spawn_server_with_clock(config, Arc::new(MonotonicClock::default()))
}

/// `spawn_server` with the limiter on `clock` (a `ManualClock` pauses limit time).
pub fn spawn_server_with_clock(config: Config, clock: Arc<dyn Clock>) -> Server {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        // Start-up blocks (it may open a PostgreSQL ledger with the sync client): outside
        // the async context.
        let app = tiergate::app::start(config, false, clock)
            .expect("models are installed (run `tiergate models fetch`)");
        runtime.block_on(async move {
            app.state.engine.wait_ready().await.expect("replicas load");
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let metrics = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addrs = (
                listener.local_addr().expect("addr"),
                metrics.local_addr().expect("addr"),
            );
            tx.send((addrs, app.state.clone())).expect("report address");
            let metrics_state = app.state.clone();
            tokio::spawn(tiergate::serve_metrics(
                metrics,
                metrics_state,
                std::future::pending(),
            ));
            // The writer thread lives as long as the process.
            std::mem::forget(app.ledger_writer);
            tiergate::serve(listener, app.state, std::future::pending())
                .await
                .expect("serve");
        });
    });
    let ((addr, metrics_addr), state) = rx.recv().expect("server started");
    Server {
        addr,
        metrics_addr,
        state,
    }
}

/// The shared gateway of this test binary.
pub fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| spawn_server(test_config()))
}

/// A gateway of this test binary serving only the Qwen model (the shared one serves the two
/// small ones), with one replica.
pub fn qwen_server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let mut config = test_config();
        config.models = tiergate::config::Config::default().models;
        config.models.retain(|m| m.name == QWEN_MODEL);
        config.models[0].replicas.truncate(1);
        config.models[0].replicas[0].device = test_device();
        config.models[0].max_seq_len = 1024;
        spawn_server(config)
    })
}

/// Both chat models, each with the gateway that serves it.
pub fn chat_models() -> [(&'static Server, &'static str); 2] {
    [(server(), CHAT_MODEL), (qwen_server(), QWEN_MODEL)]
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(120))
        .build()
        .expect("client")
}

/// Posts JSON and returns the status and the raw body text.
async fn post_text(server: &Server, path: &str, body: Value) -> (u16, String) {
    let resp = client()
        .post(server.url(path))
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

pub async fn post(server: &Server, path: &str, body: Value) -> (u16, Value) {
    let (status, text) = post_text(server, path, body).await;
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, json)
}

/// The `data:` payloads of an SSE response, in order.
pub async fn post_stream(server: &Server, path: &str, body: Value) -> (u16, Vec<String>) {
    let (status, text) = post_text(server, path, body).await;
    let events = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
        .map(|s| s.trim().to_string())
        .collect();
    (status, events)
}

/// Checks an OpenAI-shaped error body and returns its `error` object.
pub fn error_of(body: &Value) -> &Value {
    let e = &body["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "no message: {body}"
    );
    assert!(e["type"].is_string(), "no type: {body}");
    assert!(
        e.get("param").is_some() && e.get("code").is_some(),
        "no param/code: {body}"
    );
    e
}

/// After an error, the server must still answer real work.
pub async fn assert_still_serving(server: &Server) {
    let (status, body) = post(
        server,
        "/v1/completions",
        serde_json::json!({"model": CHAT_MODEL, "prompt": "1, 2, 3,", "max_tokens": 2, "temperature": 0}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 2);
}

pub fn chat_body(text: &str, max_tokens: u32) -> Value {
    serde_json::json!({
        "model": CHAT_MODEL,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "temperature": 0,
    })
}
