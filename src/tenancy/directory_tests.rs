//! The tenant files: what the shipped ones hold, what validation refuses, how keys map to
//! tenants, that a bad reload keeps the old directory, that tiers keep their scheduling class
//! across reloads, and when an unknown key makes the keys file be re-read.

use super::directory::{Directory, Sources};
use super::live::KEYS_REREAD_INTERVAL;
use super::{keys, LocalLimiter, ManualClock, Tenancy};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn shipped() -> Sources {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    Sources {
        tiers: root.join("config/tiers.toml"),
        tenants: root.join("config/tenants.toml"),
        keys: root.join("config/no-such-keys-file.toml"),
    }
}

/// A directory of files for one test, removed on drop.
struct Files(PathBuf);

impl Files {
    fn new(tag: &str, tiers: &str, tenants: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tg-dir-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("tiers.toml"), tiers).expect("tiers");
        std::fs::write(dir.join("tenants.toml"), tenants).expect("tenants");
        Files(dir)
    }

    fn sources(&self) -> Sources {
        Sources {
            tiers: self.0.join("tiers.toml"),
            tenants: self.0.join("tenants.toml"),
            keys: self.0.join("keys.toml"),
        }
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

const TIER: &str = "[tiers.basic]\nrequests_per_minute = 10\ntokens_per_minute = 1000\nmax_concurrent = 2\nsubsidy_rate = 0.7\n";
const TENANT: &str = "[[tenants]]\nid = \"a\"\nname = \"A\"\ntier = \"basic\"\n";

/// The live directory of `f`'s files, its keys re-reads paced by `clock`.
fn tenancy_of(f: &Files, clock: Arc<ManualClock>) -> Tenancy {
    let d = Directory::load(&f.sources()).expect("valid");
    let limiter = Arc::new(LocalLimiter::new(clock.clone()));
    Tenancy::new(d, limiter, Some(f.sources()), clock)
}

#[test]
fn shipped_files_have_one_demo_tenant_per_tier_with_the_scheme_rates() {
    let d = Directory::load(&shipped()).expect("shipped files are valid");
    for tier in ["commercial", "aiss", "aiss-special", "research", "sandbox"] {
        let t = &d.tenants[&format!("demo-{tier}")];
        assert_eq!(t.tier, tier);
    }
    assert_eq!(d.tiers["commercial"].subsidy_rate, 0.0);
    assert_eq!(d.tiers["aiss"].subsidy_rate, 0.7);
    assert_eq!(d.tiers["aiss-special"].subsidy_rate, 0.9);
    assert!(d.tiers["sandbox"].dedicated);
}

#[test]
fn a_tenant_on_an_unknown_tier_is_refused_by_name() {
    let f = Files::new("unknown", TIER, &TENANT.replace("basic", "gold"));
    let err = Directory::load(&f.sources()).unwrap_err();
    assert!(err.contains("\"gold\"") && err.contains("\"a\""), "{err}");
}

#[test]
fn a_subsidy_above_ninety_percent_is_refused() {
    let f = Files::new("subsidy", &TIER.replace("0.7", "0.95"), TENANT);
    let err = Directory::load(&f.sources()).unwrap_err();
    assert!(err.contains("subsidy_rate"), "{err}");
}

#[test]
fn overrides_replace_the_tier_terms_for_one_tenant() {
    let tenants = format!("{TENANT}overrides = {{ max_concurrent = 5, subsidy_rate = 0.9 }}\n");
    let f = Files::new("overrides", TIER, &tenants);
    let d = Directory::load(&f.sources()).expect("valid");
    let a = &d.tenants["a"];
    assert_eq!((a.terms.max_concurrent, a.terms.subsidy_rate), (5, 0.9));
    assert_eq!(a.terms.requests_per_minute, 10);
}

#[test]
fn a_created_key_finds_its_tenant_and_a_near_miss_finds_none() {
    let f = Files::new("keys", TIER, TENANT);
    let key = keys::create(&f.sources().keys, "a").expect("key");
    let d = Directory::load(&f.sources()).expect("valid");
    assert_eq!(d.authenticate(&key).map(|t| t.id.clone()), Some("a".into()));
    let mut near = key.clone();
    near.pop();
    assert!(d.authenticate(&near).is_none());
    assert!(d.authenticate("").is_none());
}

#[test]
fn a_key_of_an_unknown_tenant_is_skipped_and_the_others_still_work() {
    let f = Files::new("orphan", TIER, TENANT);
    keys::create(&f.sources().keys, "ghost").expect("key");
    let key = keys::create(&f.sources().keys, "a").expect("key");
    let d = Directory::load(&f.sources()).expect("an orphan key does not stop a load");
    assert_eq!((d.key_count(), d.skipped_keys()), (1, 1));
    assert_eq!(d.authenticate(&key).map(|t| t.id.clone()), Some("a".into()));
}

#[test]
fn a_bad_reload_keeps_the_previous_directory() {
    let f = Files::new("reload", TIER, TENANT);
    let tenancy = tenancy_of(&f, Arc::default());
    std::fs::write(
        f.sources().tiers,
        "[tiers.basic]\nrequests_per_minute = \"lots\"\n",
    )
    .expect("write");
    assert!(tenancy.reload().is_err());
    assert!(tenancy.directory().tenants.contains_key("a"));
    let more = format!("{TENANT}\n[[tenants]]\nid = \"b\"\nname = \"B\"\ntier = \"basic\"\n");
    std::fs::write(f.sources().tiers, TIER).expect("write");
    std::fs::write(f.sources().tenants, more).expect("write");
    tenancy.reload().expect("good files load");
    assert!(tenancy.directory().tenants.contains_key("b"));
}

#[test]
fn a_reload_that_adds_a_tier_keeps_the_class_and_weight_of_the_others() {
    let two = format!("{TIER}{}", TIER.replace("basic", "silver"));
    let f = Files::new("classes", &two, TENANT);
    let tenancy = tenancy_of(&f, Arc::default());
    assert_eq!(tenancy.directory().tenants["a"].class, 0);
    // Sorts before both: by position it would take class 0 and "basic" would become 1.
    let first = TIER.replace("basic", "aardvark") + "weight = 5.0\n";
    std::fs::write(f.sources().tiers, format!("{two}{first}")).expect("write");
    let d = tenancy.reload().expect("reload");
    assert_eq!(d.tenants["a"].class, 0);
    assert_eq!(d.classes.class_of("silver"), Some(1));
    assert_eq!(d.classes.class_of("aardvark"), Some(2));
    assert_eq!(d.weights(), [1.0, 1.0, 5.0]);
}

#[test]
fn a_failed_reload_reserves_no_class() {
    let f = Files::new("no-class", TIER, TENANT);
    let tenancy = tenancy_of(&f, Arc::default());
    let gold = TIER.replace("basic", "gold");
    std::fs::write(&f.sources().tiers, format!("{TIER}{gold}")).expect("write");
    std::fs::write(&f.sources().tenants, TENANT.replace("basic", "lead")).expect("write");
    assert!(tenancy.reload().is_err(), "a tenant on an unknown tier");
    std::fs::write(&f.sources().tenants, TENANT).expect("write");
    let silver = TIER.replace("basic", "silver");
    std::fs::write(&f.sources().tiers, format!("{TIER}{silver}")).expect("write");
    let d = tenancy.reload().expect("reload");
    assert_eq!(d.classes.names(), ["basic", "silver"]);
}

#[test]
fn a_key_created_after_loading_is_found_on_its_first_use() {
    let f = Files::new("reread", TIER, TENANT);
    let tenancy = tenancy_of(&f, Arc::default());
    let key = keys::create(&f.sources().keys, "a").expect("key");
    let (tenant, d) = tenancy.authenticate(&key).expect("found without a reload");
    assert_eq!((tenant.id.as_str(), d.key_count()), ("a", 1));
    assert_eq!(tenancy.keys_rereads(), 1);
}

#[test]
fn unknown_keys_never_reread_an_unchanged_keys_file() {
    let f = Files::new("unchanged", TIER, TENANT);
    keys::create(&f.sources().keys, "a").expect("key");
    let clock = Arc::new(ManualClock::default());
    let tenancy = tenancy_of(&f, clock.clone());
    for i in 0..50 {
        clock.advance(KEYS_REREAD_INTERVAL);
        assert!(tenancy.authenticate(&format!("tg-wrong-{i}")).is_none());
    }
    assert_eq!(tenancy.keys_rereads(), 0);
}

#[test]
fn a_keys_file_changing_under_a_flood_is_reread_once_per_interval() {
    let f = Files::new("flood", TIER, TENANT);
    let clock = Arc::new(ManualClock::default());
    let tenancy = tenancy_of(&f, clock.clone());
    let mut newest = String::new();
    for _ in 0..20 {
        newest = keys::create(&f.sources().keys, "a").expect("key");
        assert!(tenancy.authenticate("tg-wrong").is_none());
    }
    assert_eq!(
        tenancy.keys_rereads(),
        1,
        "the first miss re-read; the others waited"
    );
    assert!(
        tenancy.authenticate(&newest).is_none(),
        "made after the one re-read"
    );
    clock.advance(KEYS_REREAD_INTERVAL);
    assert!(tenancy.authenticate(&newest).is_some());
    assert_eq!(tenancy.keys_rereads(), 2);
}

#[test]
fn a_keys_file_that_does_not_parse_keeps_the_old_keys() {
    let f = Files::new("bad-keys", TIER, TENANT);
    let key = keys::create(&f.sources().keys, "a").expect("key");
    let tenancy = tenancy_of(&f, Arc::default());
    let mut text = std::fs::read_to_string(&f.sources().keys).expect("read");
    text.push_str("\n[[keys]]\ntenant = \"a\"\n");
    std::fs::write(&f.sources().keys, text).expect("write");
    assert!(tenancy.authenticate("tg-wrong").is_none());
    assert_eq!(tenancy.keys_rereads(), 1);
    assert!(tenancy.authenticate(&key).is_some());
}

#[test]
fn the_prefix_cache_scope_comes_from_the_tier_and_defaults_to_the_tenant() {
    let d = Directory::load(&shipped()).expect("shipped files are valid");
    let scope = |tenant: &str| d.tenants[tenant].prefix_scope();
    assert_eq!(scope("demo-aiss").as_deref(), Some("tenant:demo-aiss"));
    assert_eq!(
        scope("demo-sandbox").as_deref(),
        Some("tenant:demo-sandbox")
    );
    for (setting, want) in [
        ("tier", Some("tier:basic")),
        ("global", Some("global")),
        ("off", None),
    ] {
        let tiers = format!("{TIER}prefix_cache = \"{setting}\"\n");
        let f = Files::new(&format!("scope-{setting}"), &tiers, TENANT);
        let d = Directory::load(&f.sources()).expect("valid");
        assert_eq!(d.tenants["a"].prefix_scope().as_deref(), want, "{setting}");
    }
}

#[test]
fn an_unknown_prefix_cache_scope_is_refused() {
    let tiers = format!("{TIER}prefix_cache = \"public\"\n");
    let f = Files::new("scope-bad", &tiers, TENANT);
    let err = Directory::load(&f.sources()).unwrap_err();
    assert!(err.contains("public"), "{err}");
}
