//! A real gateway on `127.0.0.1:0` with the real small models, shared by the tests of one
//! binary (loading the models once), plus small helpers for requests.
#![allow(dead_code)]

use serde_json::Value;
use std::net::SocketAddr;
use std::sync::OnceLock;
use tiergate::config::Config;
use tiergate::infer::Engine;
use tiergate::AppState;

pub const CHAT_MODEL: &str = "smollm2-135m-instruct";
pub const EMBED_MODEL: &str = "all-minilm-l6-v2";

pub struct Server {
    pub addr: SocketAddr,
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// The default configuration as shipped, with a small body limit so 413 is cheap to test.
pub fn test_config() -> Config {
    let limits = tiergate::config::Limits {
        max_body_bytes: 64 * 1024,
        ..Default::default()
    };
    Config {
        models_dir: std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models"),
        limits,
        ..Config::default()
    }
}

/// Starts a gateway on its own thread and runtime, so that it outlives each test's runtime.
/// Blocks until every replica has loaded. Model files must be installed (`tiergate models
/// fetch`; `.ci/run` does it): the error says so otherwise.
pub fn spawn_server(config: Config) -> Server {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let engine = Engine::start(&config, false)
                .expect("models are installed (run `tiergate models fetch`)");
            engine.wait_ready().await.expect("replicas load");
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            tx.send(listener.local_addr().expect("addr"))
                .expect("report address");
            let state = AppState::new(engine, config);
            tiergate::serve(listener, state, std::future::pending())
                .await
                .expect("serve");
        });
    });
    Server {
        addr: rx.recv().expect("server started"),
    }
}

/// The shared gateway of this test binary.
pub fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| spawn_server(test_config()))
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
