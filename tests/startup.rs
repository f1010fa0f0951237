//! Start-up: a replica that cannot load reports its error (no zombie thread) and the gateway
//! stays not-ready instead of serving half a configuration.

mod common;
use common::*;
use std::sync::Arc;
use tiergate::tenancy::MonotonicClock;

/// A GPU no machine has: without the `cuda` feature every `cuda:N` fails to load, and with it
/// this ordinal does, so every build, with or without a GPU, can produce a load failure.
const MISSING_GPU: &str = "cuda:99";

#[tokio::test]
async fn a_replica_that_cannot_load_names_itself_and_ready_stays_503() {
    let mut config = test_config();
    config.models.retain(|m| m.name == EMBED_MODEL);
    config.models[0].replicas[0].device = MISSING_GPU.into();
    let app = tiergate::app::start(config, false, Arc::new(MonotonicClock::default()))
        .expect("start spawns the replica threads");
    let err = app
        .state
        .engine
        .wait_ready()
        .await
        .expect_err("the load fails")
        .to_string();
    assert!(
        err.contains("all-minilm-l6-v2#0") && err.contains("cuda"),
        "{err}"
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(tiergate::serve(listener, app.state, std::future::pending()));
    let ready = client()
        .get(format!("http://{addr}/ready"))
        .send()
        .await
        .expect("request");
    assert_eq!(ready.status(), 503);
    let health = client()
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .expect("request");
    assert_eq!(
        health.status(),
        200,
        "liveness does not depend on the models"
    );
}
