//! Who may call and on what terms: subsidy tiers, tenants and API-key hashes, read from three
//! TOML files (`tiers.toml`, `tenants.toml`, and the keys file that `tiergate keys create`
//! appends to) into one immutable `Directory`. A reload builds a new one and swaps it in; a
//! file that does not validate leaves the old one serving. A key whose tenant is not in the
//! tenants file is skipped with a warning, so removing a tenant never stops the next start.

use super::classes::TierClasses;
use super::keys::{KeyEntry, KeyHash};
use crate::ledger::Price;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// The highest subsidy the scheme allows ("special cases").
pub const MAX_SUBSIDY: f64 = 0.9;

/// Terms of a subsidy tier. Limits are per tenant of the tier, not shared by the tier.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// Requests admitted per minute (GCRA: smooth, with `burst_requests` at once).
    pub requests_per_minute: u64,
    /// Prompt + completion tokens per minute, reserved at admission as prompt + max_tokens.
    pub tokens_per_minute: u64,
    /// Requests that may arrive at once from a full bucket (default: requests_per_minute).
    #[serde(default)]
    pub burst_requests: u64,
    /// Tokens one burst may reserve; also the largest single request (default: tokens_per_minute).
    #[serde(default)]
    pub burst_tokens: u64,
    /// Requests running at the same time.
    pub max_concurrent: u32,
    /// Share of decode slots and prefill tokens relative to other tiers under contention.
    #[serde(default = "one")]
    pub weight: f64,
    /// Part of list price the scheme pays, 0.0 to 0.9.
    pub subsidy_rate: f64,
    /// Tenant charge allowed per calendar month (UTC), in HKD; unset = no budget limit.
    #[serde(default)]
    pub monthly_budget_hkd: Option<f64>,
    /// Models the tier may use; empty = all.
    #[serde(default)]
    pub models: Vec<String>,
    /// Requests run only on replicas reserved for this tier (`replicas[].tier`), and those
    /// replicas run nothing else: the isolation regulated pilots need.
    #[serde(default)]
    pub dedicated: bool,
    /// Which requests may share prefix-cache blocks with this tier's: the hash chain of a
    /// cached prefix is salted with the scope, so requests of different scopes never hit
    /// each other's blocks (nor can time-to-first-token reveal them).
    #[serde(default)]
    pub prefix_cache: PrefixScope,
}

/// Who shares a tier's prefix cache (`prefix_cache` in tiers.toml).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PrefixScope {
    /// Each tenant has its own: no tenant can learn anything about another's prompts.
    #[default]
    Tenant,
    /// The tenants of the tier share one (e.g. one organisation's apps).
    Tier,
    /// Every tier with `global` shares one.
    Global,
    /// No reuse: every prompt is prefilled in full.
    Off,
}

fn one() -> f64 {
    1.0
}

/// Per-tenant exceptions to its tier's terms.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub max_concurrent: Option<u32>,
    pub subsidy_rate: Option<f64>,
    pub monthly_budget_hkd: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TenantEntry {
    pub id: String,
    pub name: String,
    pub tier: String,
    /// Grant or project the compute is booked against.
    #[serde(default)]
    pub grant: String,
    #[serde(default)]
    pub overrides: Overrides,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TiersFile {
    #[serde(default)]
    tiers: BTreeMap<String, Tier>,
    /// List prices per model.
    #[serde(default)]
    prices: BTreeMap<String, Price>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantsFile {
    #[serde(default)]
    tenants: Vec<TenantEntry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<KeyEntry>,
}

/// A tenant with its effective terms (tier + overrides), as requests see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub tier: String,
    /// The tier's scheduling class, fixed for the life of the process (`TierClasses`).
    pub class: usize,
    pub grant: String,
    pub terms: Tier,
}

impl Tenant {
    /// Monthly budget in micro-HKD, if any.
    pub fn budget_micro(&self) -> Option<i64> {
        self.terms
            .monthly_budget_hkd
            .map(|hkd| (hkd * 1e6).round() as i64)
    }

    /// The replica pool its requests run in: its tier's own when the tier is dedicated.
    pub fn pool(&self) -> Option<&str> {
        self.terms.dedicated.then_some(self.tier.as_str())
    }

    /// The salt of this tenant's prefix-cache chains (see `PrefixScope`); None: no cache.
    /// Derived from server-side names only: nothing a request carries reaches it.
    pub fn prefix_scope(&self) -> Option<String> {
        match self.terms.prefix_cache {
            PrefixScope::Tenant => Some(format!("tenant:{}", self.id)),
            PrefixScope::Tier => Some(format!("tier:{}", self.tier)),
            PrefixScope::Global => Some("global".into()),
            PrefixScope::Off => None,
        }
    }

    pub fn may_use(&self, model: &str) -> bool {
        self.terms.models.is_empty() || self.terms.models.iter().any(|m| m == model)
    }
}

/// The files a directory is read from.
#[derive(Debug, Clone)]
pub struct Sources {
    pub tiers: PathBuf,
    pub tenants: PathBuf,
    pub keys: PathBuf,
}

/// A file's size and modification time when it was read: if either differs now, it was
/// written since. (`keys create` appends, so the size alone already tells.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
}

impl FileStamp {
    /// None when the file is missing or cannot be read.
    pub fn of(path: &Path) -> Option<FileStamp> {
        let meta = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }
}

/// Everything tenancy knows at one moment. Immutable; shared as `Arc<Directory>`.
#[derive(Debug, Default)]
pub struct Directory {
    /// Class id of every tier this process has seen, removed ones included.
    pub classes: TierClasses,
    pub tiers: BTreeMap<String, Tier>,
    pub tenants: BTreeMap<String, Arc<Tenant>>,
    pub prices: BTreeMap<String, Price>,
    keys: HashMap<KeyHash, String>,
    /// Keys of tenants that are not in the tenants file (logged, not loaded).
    skipped_keys: usize,
    /// The keys file as it was just before it was read (None: missing).
    keys_stamp: Option<FileStamp>,
}

fn read_toml<T: Default + for<'de> Deserialize<'de>>(
    path: &Path,
    optional: bool,
) -> Result<T, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// The entries of a keys file; a missing file has none.
pub fn read_keys(path: &Path) -> Result<Vec<KeyEntry>, String> {
    read_toml::<KeysFile>(path, true).map(|f| f.keys)
}

impl Directory {
    /// Reads and validates all three files, numbering the tiers from scratch. The keys file
    /// may be missing (no keys yet).
    pub fn load(sources: &Sources) -> Result<Directory, String> {
        Self::load_with(sources, &mut TierClasses::default())
    }

    /// `load`, keeping the class ids in `classes` and adding new tiers to it (a caller that
    /// may discard the result passes a copy).
    pub fn load_with(sources: &Sources, classes: &mut TierClasses) -> Result<Directory, String> {
        let tiers: TiersFile = read_toml(&sources.tiers, false)?;
        let tenants: TenantsFile = read_toml(&sources.tenants, false)?;
        // Stamped before reading: a write in between reads as a change next time.
        let keys_stamp = FileStamp::of(&sources.keys);
        let keys = read_keys(&sources.keys)?;
        let mut directory = Self::build(classes, tiers, tenants.tenants, keys)?;
        directory.keys_stamp = keys_stamp;
        Ok(directory)
    }

    /// The directory of `auth = "off"`: one `anonymous` tenant on `tier`.
    pub fn anonymous(sources: &Sources, tier: &str) -> Result<Directory, String> {
        let tiers: TiersFile = read_toml(&sources.tiers, false)?;
        let tenant = TenantEntry {
            id: super::ANONYMOUS.into(),
            name: "anonymous (auth off)".into(),
            tier: tier.into(),
            grant: String::new(),
            overrides: Overrides::default(),
        };
        Self::build(&mut TierClasses::default(), tiers, vec![tenant], Vec::new())
    }

    fn build(
        classes: &mut TierClasses,
        files: TiersFile,
        entries: Vec<TenantEntry>,
        keys: Vec<KeyEntry>,
    ) -> Result<Directory, String> {
        let TiersFile { tiers, prices } = files;
        for (name, tier) in &tiers {
            validate_tier(name, tier)?;
        }
        classes.assign(tiers.iter().map(|(name, t)| (name.as_str(), t.weight)));
        let mut tenants = BTreeMap::new();
        for entry in entries {
            let tenant = effective(&entry, &tiers, classes)?;
            if tenants.insert(entry.id.clone(), Arc::new(tenant)).is_some() {
                return Err(format!("tenant {:?} is listed twice", entry.id));
            }
        }
        let (keys, skipped_keys) = key_map(keys, &tenants)?;
        Ok(Directory {
            classes: classes.clone(),
            tiers,
            tenants,
            prices,
            keys,
            skipped_keys,
            keys_stamp: None,
        })
    }

    /// This directory with the keys of `entries` in place of its own: a re-read of the keys
    /// file alone, leaving tier and tenant edits for the next reload.
    pub fn with_keys(
        &self,
        entries: Vec<KeyEntry>,
        keys_stamp: Option<FileStamp>,
    ) -> Result<Directory, String> {
        let (keys, skipped_keys) = key_map(entries, &self.tenants)?;
        Ok(Directory {
            classes: self.classes.clone(),
            tiers: self.tiers.clone(),
            tenants: self.tenants.clone(),
            prices: self.prices.clone(),
            keys,
            skipped_keys,
            keys_stamp,
        })
    }

    /// The tenant whose key this is. The map is keyed by the key's SHA-256, so no stored
    /// secret is ever compared; the found hash is still compared in constant time.
    pub fn authenticate(&self, key: &str) -> Option<Arc<Tenant>> {
        let presented = KeyHash::of(key);
        let (stored, tenant) = self.keys.get_key_value(&presented)?;
        if !stored.ct_eq(&presented) {
            return None;
        }
        self.tenants.get(tenant).cloned()
    }

    /// Scheduling weight of each class, by class id (removed tiers keep their last one).
    pub fn weights(&self) -> Vec<f64> {
        self.classes.weights().to_vec()
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Keys in the file whose tenant is not in the tenants file.
    pub fn skipped_keys(&self) -> usize {
        self.skipped_keys
    }

    /// The keys file as it was when this directory's keys were read.
    pub fn keys_stamp(&self) -> Option<FileStamp> {
        self.keys_stamp
    }
}

/// Key hashes to tenant ids, and how many keys were skipped. A key whose tenant is gone
/// (removed from the tenants file while its keys stayed) is skipped with a warning naming
/// the key by its stored prefix and the head of its hash (never anything secret), so
/// removing a tenant revokes its keys instead of stopping the next start. A hash that is not
/// 64 hex digits is a damaged file: an error.
fn key_map(
    keys: Vec<KeyEntry>,
    tenants: &BTreeMap<String, Arc<Tenant>>,
) -> Result<(HashMap<KeyHash, String>, usize), String> {
    let mut map = HashMap::new();
    let mut skipped = 0;
    for key in keys {
        let hash = KeyHash::parse(&key.sha256).ok_or_else(|| {
            format!(
                "key {} of {}: sha256 is not 64 hex digits",
                key.prefix, key.tenant
            )
        })?;
        if !tenants.contains_key(&key.tenant) {
            tracing::warn!(
                key = %key.prefix,
                sha256 = %key.sha256.trim().get(..12).unwrap_or_default(),
                tenant = %key.tenant,
                "skipping a key whose tenant is not in the tenants file"
            );
            skipped += 1;
            continue;
        }
        map.insert(hash, key.tenant);
    }
    Ok((map, skipped))
}

fn validate_tier(name: &str, tier: &Tier) -> Result<(), String> {
    let bad = |why: &str| Err(format!("tier {name:?}: {why}"));
    if tier.requests_per_minute == 0 || tier.tokens_per_minute == 0 || tier.max_concurrent == 0 {
        return bad("requests_per_minute, tokens_per_minute and max_concurrent must be positive");
    }
    if !(0.0..=MAX_SUBSIDY).contains(&tier.subsidy_rate) {
        return bad("subsidy_rate must be between 0.0 and 0.9");
    }
    if !(tier.weight > 0.0 && tier.weight.is_finite()) {
        return bad("weight must be a positive number");
    }
    if tier
        .monthly_budget_hkd
        .is_some_and(|b| b.is_nan() || b < 0.0)
    {
        return bad("monthly_budget_hkd must not be negative");
    }
    Ok(())
}

/// A tenant's terms: its tier's, with its overrides applied and checked.
fn effective(
    entry: &TenantEntry,
    tiers: &BTreeMap<String, Tier>,
    classes: &TierClasses,
) -> Result<Tenant, String> {
    let (Some(tier), Some(class)) = (tiers.get(&entry.tier), classes.class_of(&entry.tier)) else {
        return Err(format!(
            "tenant {:?} names unknown tier {:?}",
            entry.id, entry.tier
        ));
    };
    if entry.id.is_empty()
        || entry
            .id
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "tenant id {:?} must be non-empty without spaces",
            entry.id
        ));
    }
    let o = &entry.overrides;
    let mut terms = tier.clone();
    terms.requests_per_minute = o.requests_per_minute.unwrap_or(terms.requests_per_minute);
    terms.tokens_per_minute = o.tokens_per_minute.unwrap_or(terms.tokens_per_minute);
    terms.max_concurrent = o.max_concurrent.unwrap_or(terms.max_concurrent);
    terms.subsidy_rate = o.subsidy_rate.unwrap_or(terms.subsidy_rate);
    if o.monthly_budget_hkd.is_some() {
        terms.monthly_budget_hkd = o.monthly_budget_hkd;
    }
    validate_tier(&format!("{} (tenant {})", entry.tier, entry.id), &terms)?;
    Ok(Tenant {
        id: entry.id.clone(),
        name: entry.name.clone(),
        tier: entry.tier.clone(),
        class,
        grant: entry.grant.clone(),
        terms,
    })
}
