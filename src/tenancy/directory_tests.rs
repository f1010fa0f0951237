//! The tenant files: what the shipped ones hold, what validation refuses, how keys map to
//! tenants, and that a bad reload keeps the old directory.

use super::directory::{Directory, Sources};
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
fn a_key_of_an_unknown_tenant_is_refused() {
    let f = Files::new("orphan", TIER, TENANT);
    keys::create(&f.sources().keys, "ghost").expect("key");
    assert!(Directory::load(&f.sources()).unwrap_err().contains("ghost"));
}

#[test]
fn a_bad_reload_keeps_the_previous_directory() {
    let f = Files::new("reload", TIER, TENANT);
    let d = Directory::load(&f.sources()).expect("valid");
    let limiter = Arc::new(LocalLimiter::new(Arc::new(ManualClock::default())));
    let tenancy = Tenancy::new(d, limiter, Some(f.sources()));
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
