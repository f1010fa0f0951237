//! Who may call and on what terms: subsidy tiers, tenants and API-key hashes, read from three
//! TOML files (`tiers.toml`, `tenants.toml`, and the keys file that `tiergate keys create`
//! appends to) into one immutable `Directory`. A reload builds a new one and swaps it in; a
//! file that does not validate leaves the old one serving.

use super::keys::KeyHash;
use crate::ledger::Price;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// One stored API key: only its hash, and a short prefix so an operator can tell keys apart.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    pub tenant: String,
    pub sha256: String,
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub created_unix: u64,
}

/// A tenant with its effective terms (tier + overrides), as requests see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub tier: String,
    /// The tier's scheduling class (its index among the tiers).
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

/// Everything tenancy knows at one moment. Immutable; shared as `Arc<Directory>`.
#[derive(Debug, Default)]
pub struct Directory {
    /// Tier names in class order.
    pub tier_names: Vec<String>,
    pub tiers: BTreeMap<String, Tier>,
    pub tenants: BTreeMap<String, Arc<Tenant>>,
    pub prices: BTreeMap<String, Price>,
    keys: HashMap<KeyHash, String>,
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

impl Directory {
    /// Reads and validates all three files. The keys file may be missing (no keys yet).
    pub fn load(sources: &Sources) -> Result<Directory, String> {
        let tiers: TiersFile = read_toml(&sources.tiers, false)?;
        let tenants: TenantsFile = read_toml(&sources.tenants, false)?;
        let keys: KeysFile = read_toml(&sources.keys, true)?;
        Self::build(tiers.tiers, tiers.prices, tenants.tenants, keys.keys)
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
        Self::build(tiers.tiers, tiers.prices, vec![tenant], Vec::new())
    }

    fn build(
        tiers: BTreeMap<String, Tier>,
        prices: BTreeMap<String, Price>,
        entries: Vec<TenantEntry>,
        keys: Vec<KeyEntry>,
    ) -> Result<Directory, String> {
        for (name, tier) in &tiers {
            validate_tier(name, tier)?;
        }
        let tier_names: Vec<String> = tiers.keys().cloned().collect();
        let mut tenants = BTreeMap::new();
        for entry in entries {
            let tenant = effective(&entry, &tiers, &tier_names)?;
            if tenants.insert(entry.id.clone(), Arc::new(tenant)).is_some() {
                return Err(format!("tenant {:?} is listed twice", entry.id));
            }
        }
        let mut key_map = HashMap::new();
        for key in keys {
            if !tenants.contains_key(&key.tenant) {
                return Err(format!(
                    "a key ({}) names unknown tenant {:?}",
                    key.prefix, key.tenant
                ));
            }
            let hash = KeyHash::parse(&key.sha256).ok_or_else(|| {
                format!(
                    "key {} of {}: sha256 is not 64 hex digits",
                    key.prefix, key.tenant
                )
            })?;
            key_map.insert(hash, key.tenant);
        }
        Ok(Directory {
            tier_names,
            tiers,
            tenants,
            prices,
            keys: key_map,
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

    pub fn weights(&self) -> Vec<f64> {
        self.tier_names
            .iter()
            .map(|t| self.tiers[t].weight)
            .collect()
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }
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
    names: &[String],
) -> Result<Tenant, String> {
    let Some(tier) = tiers.get(&entry.tier) else {
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
        class: names.iter().position(|n| n == &entry.tier).unwrap_or(0),
        grant: entry.grant.clone(),
        terms,
    })
}
