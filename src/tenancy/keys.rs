//! API keys: generated once, shown once, stored only as SHA-256 hashes. Keys are 192 random
//! bits, so a plain (unsalted) hash is enough: nobody can guess one to look it up.

use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;
use subtle::ConstantTimeEq;

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

/// Every key starts with this, so leaked keys are easy to grep for.
pub const KEY_PREFIX: &str = "tg-";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    pub fn of(key: &str) -> Self {
        KeyHash(Sha256::digest(key.as_bytes()).into())
    }

    pub fn parse(hex_digits: &str) -> Option<Self> {
        let bytes = hex::decode(hex_digits.trim()).ok()?;
        Some(KeyHash(bytes.try_into().ok()?))
    }

    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    pub fn ct_eq(&self, other: &KeyHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

/// A new random key: the prefix and 32 base62 characters (~190 bits).
pub fn generate() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    let body: String = (0..32)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{KEY_PREFIX}{body}")
}

/// Makes a key for `tenant`, appends its hash to `keys_file` and returns the key (the only
/// time it exists in clear). Appending keeps earlier entries and comments untouched; a
/// running server re-reads the file when it meets the new key (`Tenancy::authenticate`).
pub fn create(keys_file: &Path, tenant: &str) -> std::io::Result<String> {
    let key = generate();
    let entry = KeyEntry {
        tenant: tenant.to_string(),
        sha256: KeyHash::of(&key).to_hex(),
        prefix: key[..KEY_PREFIX.len() + 4].to_string(),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    let block = toml::to_string(&entry).map_err(std::io::Error::other)?;
    if let Some(dir) = keys_file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(keys_file)?;
    // In one write, so that a server re-reading the file meanwhile hardly ever sees half an
    // entry (if it does, it keeps its old keys and reads the file again on the next miss).
    file.write_all(format!("\n[[keys]]\n{block}\n").as_bytes())?;
    file.sync_all()?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_distinct_and_prefixed() {
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX) && a.len() == KEY_PREFIX.len() + 32);
    }

    #[test]
    fn hash_round_trips_through_hex() {
        let h = KeyHash::of("tg-secret");
        assert_eq!(KeyHash::parse(&h.to_hex()), Some(h));
        assert!(h.ct_eq(&KeyHash::of("tg-secret")));
        assert!(!h.ct_eq(&KeyHash::of("tg-secreT")));
    }

    #[test]
    fn created_key_is_stored_only_as_its_hash() {
        let dir = std::env::temp_dir().join(format!("tg-keys-{}", std::process::id()));
        let file = dir.join("keys.toml");
        let key = create(&file, "demo-aiss").expect("create");
        let text = std::fs::read_to_string(&file).expect("read");
        std::fs::remove_dir_all(&dir).ok();
        assert!(!text.contains(&key));
        assert!(text.contains(&KeyHash::of(&key).to_hex()));
        assert!(text.contains("tenant = \"demo-aiss\""));
    }
}
