//! API keys and tenant files of a running gateway, over HTTP: a key made by `keys create`
//! while it serves works at once, a key of a removed tenant does not stop a start, unknown
//! keys re-read the keys file at a bounded rate, and a reload that adds a tier leaves every
//! other tier its scheduling class and weight. Each test has a gateway of its own (its files
//! are edited under it), serving the embedding model alone, with a frozen keys-reread clock.

mod common;
use common::*;
use std::sync::Arc;
use tiergate::config::Config;
use tiergate::tenancy::keys::KeyHash;
use tiergate::tenancy::live::KEYS_REREAD_INTERVAL;
use tiergate::tenancy::ManualClock;

const ADMIN_KEY: &str = "tg-admin-keys-test";

struct Gateway {
    server: Server,
    config: Config,
    clock: Arc<ManualClock>,
}

/// The test tenant config with tier and tenant files copied to a directory of `name`'s own
/// (so a test may edit them), an empty keys file there, and the embedding model on one
/// replica: authentication never reaches a model, and the class weights are per queue.
fn own_files(name: &str) -> Config {
    let mut config = tenant_config();
    config.models.retain(|m| m.name == EMBED_MODEL);
    config.models[0].replicas.truncate(1);
    let dir = temp_path(name);
    std::fs::create_dir_all(&dir).expect("dir");
    let t = &mut config.tenancy;
    for (file, source) in [
        (&mut t.tiers_file, "tests/config/tiers.toml"),
        (&mut t.tenants_file, "tests/config/tenants.toml"),
    ] {
        *file = dir.join(source.rsplit('/').next().expect("name"));
        std::fs::copy(repo_path(source), &*file).expect("copy");
    }
    t.keys_file = dir.join("keys.toml");
    t.admin_key_sha256 = Some(KeyHash::of(ADMIN_KEY).to_hex());
    config
}

fn start(config: Config) -> Gateway {
    let clock = Arc::new(ManualClock::default());
    let server = spawn_server_with_clock(config.clone(), clock.clone());
    Gateway {
        server,
        config,
        clock,
    }
}

/// The status of an authenticated request that reaches no model.
async fn status_with(g: &Gateway, key: &str) -> u16 {
    let resp = client()
        .get(g.server.url("/v1/models"))
        .bearer_auth(key)
        .send()
        .await
        .expect("request");
    resp.status().as_u16()
}

/// `n` requests at once with wrong keys; all must be refused.
async fn flood(g: &Gateway, n: usize) {
    let keys: Vec<String> = (0..n).map(|i| format!("tg-wrong-{i}")).collect();
    let statuses = futures_util::future::join_all(keys.iter().map(|k| status_with(g, k))).await;
    assert!(statuses.iter().all(|&s| s == 401), "{statuses:?}");
}

#[tokio::test]
async fn a_key_created_while_serving_authenticates_on_its_first_request() {
    let g = start(own_files("first-use"));
    let key = create_key(&g.config, "t-open");
    assert_eq!(status_with(&g, &key).await, 200, "no signal, no reload");
}

#[tokio::test]
async fn a_key_of_a_removed_tenant_does_not_stop_the_start_and_other_keys_work() {
    let config = own_files("removed");
    let orphan = create_key(&config, "t-three-rpm");
    let kept = create_key(&config, "t-open");
    let tenants = "[[tenants]]\nid = \"t-open\"\nname = \"Open\"\ntier = \"open\"\n";
    std::fs::write(&config.tenancy.tenants_file, tenants).expect("write");
    let g = start(config);
    assert_eq!(g.server.state.tenancy.directory().skipped_keys(), 1);
    assert_eq!(status_with(&g, &kept).await, 200);
    assert_eq!(status_with(&g, &orphan).await, 401);
}

#[tokio::test]
async fn a_flood_of_unknown_keys_rereads_the_keys_file_at_most_once_per_interval() {
    let g = start(own_files("flood"));
    let tenancy = &g.server.state.tenancy;
    flood(&g, 30).await;
    assert_eq!(tenancy.keys_rereads(), 0, "an unchanged file is never read");
    let first = create_key(&g.config, "t-open");
    flood(&g, 30).await;
    assert_eq!(
        tenancy.keys_rereads(),
        1,
        "one of the flood read the changed file"
    );
    let second = create_key(&g.config, "t-open");
    flood(&g, 30).await;
    assert_eq!(tenancy.keys_rereads(), 1, "the clock has not moved");
    assert_eq!(status_with(&g, &first).await, 200);
    assert_eq!(
        status_with(&g, &second).await,
        401,
        "made after the one read"
    );
    g.clock.advance(KEYS_REREAD_INTERVAL);
    assert_eq!(status_with(&g, &second).await, 200);
    assert_eq!(tenancy.keys_rereads(), 2);
}

#[tokio::test]
async fn a_reload_that_adds_a_tier_keeps_every_tiers_class_and_queue_weight() {
    let g = start(own_files("classes"));
    let state = &g.server.state;
    let before = state.tenancy.directory();
    let weights_before = state.engine.class_weights();
    // Sorts before every tier, with a weight no other tier has: by position it would take
    // class 0 and every other tier's requests would wait with the wrong weight.
    let tier = "\n[tiers.aaa-first]\nrequests_per_minute = 1000\ntokens_per_minute = 1000000\n\
                max_concurrent = 100\nsubsidy_rate = 0.7\nweight = 7.5\n";
    let tenant = "\n[[tenants]]\nid = \"t-first\"\nname = \"First\"\ntier = \"aaa-first\"\n";
    for (file, block) in [
        (&g.config.tenancy.tiers_file, tier),
        (&g.config.tenancy.tenants_file, tenant),
    ] {
        let text = std::fs::read_to_string(file).expect("read");
        std::fs::write(file, text + block).expect("write");
    }
    let reload = client()
        .post(g.server.url("/admin/reload"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("reload");
    assert_eq!(reload.status(), 200);
    let after = state.tenancy.directory();
    for (id, tenant) in &before.tenants {
        assert_eq!(after.tenants[id].class, tenant.class, "{id}");
    }
    assert_eq!(after.tenants["t-first"].class, before.classes.names().len());
    let weights_after = state.engine.class_weights();
    assert!(!weights_before.is_empty());
    for (was, now) in weights_before.into_iter().zip(weights_after) {
        assert_eq!(now, [was, vec![7.5]].concat());
    }
}
