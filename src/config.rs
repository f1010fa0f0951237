//! Gateway configuration: one struct, read from a TOML file, then `TIERGATE_*` environment
//! variables, then command-line flags, each overriding the one before. `validate` runs once at
//! start-up so that a bad value stops the process with the offending key, not a later request.

mod connections;
mod limiter;

pub use connections::ConnectionLimits;
pub use limiter::{LimiterBackend, LimiterConfig, OnUnavailable};

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Environment variables with the prefix that are not config keys.
const NON_KEY_VARS: &[&str] = &[
    "TIERGATE_CONFIG",
    "TIERGATE_PYTHON",
    "TIERGATE_LOG",
    "TIERGATE_ADMIN_KEY",
    // Test harness settings (`.ci/run`, `loadtests/gpu-check.sh`): a gateway started by a
    // test inherits them.
    "TIERGATE_ISA_LOG",
    "TIERGATE_TEST_DEVICE",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the OpenAI-compatible API.
    pub listen: SocketAddr,
    /// Directory of model manifests (`<name>.toml`), relative to the working directory.
    pub models_dir: PathBuf,
    /// Where model files are installed; empty means `$TIERGATE_CACHE_DIR`, `$XDG_CACHE_HOME/tiergate`
    /// or `~/.cache/tiergate`.
    pub cache_dir: Option<PathBuf>,
    /// Install missing model files on start (verified by sha256) instead of failing.
    pub fetch_on_start: bool,
    pub limits: Limits,
    /// Timeouts and the cap on open connections (`[connections]`).
    pub connections: ConnectionLimits,
    /// Where usage records are kept (`[ledger]`).
    pub ledger: crate::ledger::LedgerConfig,
    pub tenancy: TenancyConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub models: Vec<ModelConfig>,
}

/// The Prometheus endpoint, on its own listener so that it can stay private.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// Address of `GET /metrics` (default: localhost only).
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `pretty` (for people) or `json` (one object per line, for log pipelines).
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Pretty,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Who may call: the tenant files and the guard in front of authentication.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenancyConfig {
    /// `on`: every route but /health needs a tenant's key. `off` must be said explicitly:
    /// every request is then the `anonymous` tenant on `anonymous_tier`.
    pub auth: AuthMode,
    pub tiers_file: PathBuf,
    pub tenants_file: PathBuf,
    /// Where `tiergate keys create` appends key hashes; may be missing (no keys yet).
    pub keys_file: PathBuf,
    /// Tier of the `anonymous` tenant when auth is off.
    pub anonymous_tier: String,
    /// SHA-256 (hex) of the admin key for /admin routes; the raw key may instead come from
    /// the TIERGATE_ADMIN_KEY environment variable. Neither set: admin routes answer 401.
    pub admin_key_sha256: Option<String>,
    /// Per-client-IP flood guard in front of authentication: requests per second and burst.
    pub ip_requests_per_second: u32,
    pub ip_burst: u32,
    /// Where the tenant limits live (`[tenancy.limiter]`).
    pub limiter: LimiterConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    On,
    Off,
}

impl Default for TenancyConfig {
    fn default() -> Self {
        TenancyConfig {
            auth: AuthMode::On,
            tiers_file: PathBuf::from("config/tiers.toml"),
            tenants_file: PathBuf::from("config/tenants.toml"),
            keys_file: PathBuf::from("config/keys.toml"),
            anonymous_tier: "research".into(),
            admin_key_sha256: None,
            ip_requests_per_second: 500,
            ip_burst: 1000,
            limiter: LimiterConfig::default(),
        }
    }
}

impl TenancyConfig {
    pub fn sources(&self) -> crate::tenancy::Sources {
        crate::tenancy::Sources {
            tiers: self.tiers_file.clone(),
            tenants: self.tenants_file.clone(),
            keys: self.keys_file.clone(),
        }
    }
}

/// Bounds on every request, so that no input can hold the gateway hostage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body in bytes; larger bodies get 413.
    pub max_body_bytes: usize,
    /// Longest prompt in tokens (also capped by each model's context length).
    pub max_prompt_tokens: usize,
    /// Largest `max_tokens` a request may ask for.
    pub max_output_tokens: usize,
    /// `max_tokens` when a request gives none (capped by what the context has left).
    pub default_max_tokens: usize,
    /// Most inputs in one embeddings request.
    pub max_embedding_inputs: usize,
    /// Largest `n` (choices per chat or completions request); also capped by a replica's
    /// `max_batch_size`, since the choices of one request run side by side.
    pub max_n: usize,
    /// Longest JSON schema or grammar (`response_format`, tools), in bytes.
    pub max_grammar_bytes: usize,
    /// Largest compiled grammar, in llguidance's symbols: bounds its memory.
    pub max_grammar_size: usize,
    /// Lexer work allowed to compile one grammar (llguidance's fuel, ~50,000 per ms): bounds
    /// its compile time.
    pub grammar_compile_fuel: u64,
    /// Longest a request may wait in a model's queue before it is answered 503.
    pub queue_timeout_secs: u64,
    /// Longest a whole request may take; a stream past it ends with an error event.
    pub request_timeout_secs: u64,
    /// On shutdown, how long running requests may take to finish; then they are cut.
    pub shutdown_grace_secs: u64,
    /// After the grace period, the longest the cut requests' records, the ledger flush and
    /// the replica threads' exit may take. Exit comes at most grace + flush after SIGTERM.
    pub shutdown_flush_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Model id; its manifest is `<models_dir>/<name>.toml` unless `manifest` says otherwise.
    pub name: String,
    #[serde(default)]
    pub manifest: Option<PathBuf>,
    /// Weight dtype override (see the manifest's `default_dtype`: "q8_0", "q4_0", "native"
    /// for GGUF models).
    #[serde(default)]
    pub dtype: Option<String>,
    /// Live sequences one replica decodes together (its KV slots).
    #[serde(default = "default_batch")]
    pub max_batch_size: usize,
    /// KV capacity of one slot in tokens (prompt + output); capped by the context length.
    #[serde(default = "default_seq_len")]
    pub max_seq_len: usize,
    /// Generation: KV budget of a replica, the sum over live sequences of prompt + max_tokens
    /// (default max_batch_size x max_seq_len). Embeddings: padded tokens in one forward pass
    /// (default 16384).
    #[serde(default)]
    pub max_batch_tokens: Option<usize>,
    /// Prompt tokens prefilled per engine step, so a long prompt stalls decodes only briefly.
    #[serde(default = "default_prefill")]
    pub max_prefill_tokens: usize,
    /// Decode steps that may run while prompt work waits; 0 prefills at every step. Higher
    /// smooths inter-token latency of running streams at the cost of newcomers' first token.
    #[serde(default = "default_decode_steps")]
    pub max_decode_steps_before_prefill: usize,
    /// How long a slot is kept free for a tier that just finished a request and is below its
    /// weighted share of slots, so that a flood from another tier cannot take it meanwhile
    /// (0: off). Longer than a client's turnaround between two requests.
    #[serde(default = "default_grace")]
    pub fair_share_grace_ms: u64,
    /// Requests waiting for this model beyond which new ones get 503 at once.
    #[serde(default = "default_queue")]
    pub max_queue: usize,
    /// Longest wait in this model's queue (default `limits.queue_timeout_secs`).
    #[serde(default)]
    pub queue_timeout_secs: Option<u64>,
    /// Byte budget of each replica's prefix cache: KV of ended sequences' token blocks,
    /// reused by later prompts that start the same way (0: off). Which requests may share
    /// blocks is the tier's `prefix_cache` scope, not a model setting.
    #[serde(default = "default_prefix_cache_bytes")]
    pub prefix_cache_bytes: usize,
    #[serde(default = "default_replicas")]
    pub replicas: Vec<ReplicaConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaConfig {
    /// `cpu` or `cuda:N` (the latter needs a build with the `cuda` feature).
    pub device: String,
    /// CPU compute threads. candle's CPU pool is process-wide, so CPU replicas share one pool
    /// sized by the largest value here; 0 means one per available CPU.
    #[serde(default)]
    pub threads: usize,
    /// Reserve this replica for one tier with `dedicated = true` (tiers.toml): it runs that
    /// tier's requests only, and that tier's requests run only on such replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
}

fn default_batch() -> usize {
    8
}
fn default_seq_len() -> usize {
    4096
}
fn default_grace() -> u64 {
    250
}
fn default_queue() -> usize {
    64
}
fn default_prefill() -> usize {
    256
}
fn default_decode_steps() -> usize {
    2
}
/// 512 MiB per replica. KV costs ~46 KB a position for SmolLM2-135M (30 layers x 2 x 3 KV
/// heads x 64 x 4 B) and ~25 KB for Qwen2.5-0.5B, so this keeps ~11,000 / ~21,000 positions:
/// a handful of 2,000-token system prompts and the recent turns of their conversations,
/// which is where the reuse is. It is a third of what 8 slots at 4,096 positions may hold for
/// SmolLM2, so the cache never dominates a replica's memory.
fn default_prefix_cache_bytes() -> usize {
    512 * 1024 * 1024
}
fn default_replicas() -> Vec<ReplicaConfig> {
    vec![
        ReplicaConfig {
            device: "cpu".into(),
            threads: 0,
            tier: None,
        },
        ReplicaConfig {
            device: "cpu".into(),
            threads: 0,
            tier: Some("sandbox".into()),
        },
    ]
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 2 * 1024 * 1024,
            max_prompt_tokens: 4096,
            max_output_tokens: 2048,
            default_max_tokens: 256,
            max_embedding_inputs: 256,
            max_n: 8,
            max_grammar_bytes: 64 * 1024,
            max_grammar_size: 200_000,
            grammar_compile_fuel: 1_000_000,
            queue_timeout_secs: 30,
            request_timeout_secs: 600,
            // 20 + 5: inside Kubernetes' default 30 s termination grace period.
            shutdown_grace_secs: 20,
            shutdown_flush_secs: 5,
        }
    }
}

impl ModelConfig {
    pub fn named(name: &str) -> Self {
        ModelConfig {
            name: name.into(),
            manifest: None,
            dtype: None,
            max_batch_size: default_batch(),
            max_seq_len: default_seq_len(),
            max_batch_tokens: None,
            max_prefill_tokens: default_prefill(),
            prefix_cache_bytes: default_prefix_cache_bytes(),
            max_decode_steps_before_prefill: default_decode_steps(),
            fair_share_grace_ms: default_grace(),
            max_queue: default_queue(),
            queue_timeout_secs: None,
            replicas: default_replicas(),
        }
    }

    /// Padded tokens in one embedding forward pass.
    pub fn embed_batch_tokens(&self) -> usize {
        self.max_batch_tokens.unwrap_or(16384)
    }

    pub fn manifest_path(&self, models_dir: &Path) -> PathBuf {
        self.manifest
            .clone()
            .unwrap_or_else(|| models_dir.join(format!("{}.toml", self.name)))
    }
}

impl Default for Config {
    /// The embedded defaults: the three models of `config/tiergate.toml` (two chat models and
    /// an embedding model), on the CPU.
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            models_dir: PathBuf::from("models"),
            cache_dir: None,
            fetch_on_start: true,
            limits: Limits::default(),
            connections: ConnectionLimits::default(),
            ledger: crate::ledger::LedgerConfig::default(),
            tenancy: TenancyConfig::default(),
            metrics: MetricsConfig::default(),
            log: LogConfig::default(),
            models: vec![
                ModelConfig::named("qwen2.5-coder-0.5b-instruct"),
                ModelConfig::named("smollm2-135m-instruct"),
                ModelConfig {
                    max_batch_size: 32,
                    max_batch_tokens: Some(16384),
                    ..ModelConfig::named("all-minilm-l6-v2")
                },
            ],
        }
    }
}

impl Config {
    /// Reads `file` (if any), applies `env` (pairs like `("TIERGATE_LIMITS__MAX_BODY_BYTES",
    /// "1000")`: `__` separates nested keys) and returns the validated result.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut value = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                toml::from_str::<toml::Table>(&text)
                    .map_err(|e| ConfigError::Invalid(e.to_string()))?
            }
            None => toml::Table::new(),
        };
        for (key, raw) in env {
            apply_env(&mut value, &key, &raw)?;
        }
        // Re-parse as text so that errors point at the offending key and line.
        let text = toml::to_string(&value).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let config: Config =
            toml::from_str(&text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(crate::models::default_cache_dir)
    }

    /// Threads for candle's process-wide CPU pool (0 = candle's default).
    pub fn cpu_threads(&self) -> usize {
        let replicas = self.models.iter().flat_map(|m| &m.replicas);
        replicas
            .filter(|r| r.device == "cpu")
            .map(|r| r.threads)
            .max()
            .unwrap_or(0)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError::Invalid(format!("`{key}` {why}")));
        let l = &self.limits;
        for (key, v) in [
            ("limits.max_body_bytes", l.max_body_bytes),
            ("limits.max_prompt_tokens", l.max_prompt_tokens),
            ("limits.max_output_tokens", l.max_output_tokens),
            ("limits.default_max_tokens", l.default_max_tokens),
            ("limits.max_embedding_inputs", l.max_embedding_inputs),
        ] {
            if v == 0 {
                return bad(key, "must be positive");
            }
        }
        if l.default_max_tokens > l.max_output_tokens {
            return bad(
                "limits.default_max_tokens",
                "must not exceed limits.max_output_tokens",
            );
        }
        if l.queue_timeout_secs == 0 || l.request_timeout_secs == 0 {
            return bad("limits.*_timeout_secs", "must be positive");
        }
        if let Some(key) = self.connections.zero_key() {
            return bad(key, "must be positive");
        }
        self.ledger.validate().map_err(ConfigError::Invalid)?;
        if let Err((key, why)) = self.tenancy.limiter.check() {
            return bad(key, &why);
        }
        if self.models.is_empty() {
            return bad("models", "must list at least one model");
        }
        for (i, m) in self.models.iter().enumerate() {
            let key = |field: &str| format!("models[{i}].{field}");
            if self.models[..i].iter().any(|o| o.name == m.name) {
                return bad(
                    &key("name"),
                    &format!("repeats the model name {:?}", m.name),
                );
            }
            let sizes = [
                m.max_batch_size,
                m.max_queue,
                m.max_seq_len.saturating_sub(1),
                m.max_prefill_tokens,
            ];
            if sizes.contains(&0) {
                return bad(
                    &key("max_batch_size/max_queue/max_seq_len/max_prefill_tokens"),
                    "must be positive (max_seq_len at least 2)",
                );
            }
            if m.max_batch_tokens.is_some_and(|t| t < m.max_seq_len) {
                return bad(
                    &key("max_batch_tokens"),
                    "must be at least max_seq_len, or one long request could never run",
                );
            }
            if m.queue_timeout_secs == Some(0) {
                return bad(&key("queue_timeout_secs"), "must be positive");
            }
            if m.replicas.is_empty() {
                return bad(&key("replicas"), "must list at least one replica");
            }
            for (j, r) in m.replicas.iter().enumerate() {
                if let Err(e) = crate::backend::device::DeviceSpec::parse(&r.device) {
                    return bad(&key(&format!("replicas[{j}].device")), &e);
                }
            }
        }
        Ok(())
    }
}

/// Sets one nested key from an environment variable. The value is read as TOML when it parses
/// (numbers, booleans, arrays), otherwise as a plain string.
fn apply_env(root: &mut toml::Table, var: &str, raw: &str) -> Result<(), ConfigError> {
    let Some(rest) = var.strip_prefix("TIERGATE_") else {
        return Ok(());
    };
    if NON_KEY_VARS.contains(&var) || rest.is_empty() {
        return Ok(());
    }
    let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let mut table = root;
    for part in &path[..path.len() - 1] {
        let entry = table
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| ConfigError::Invalid(format!("{var}: `{part}` is not a table")))?;
    }
    table.insert(path[path.len() - 1].clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn shipped_config_file_is_valid_and_equals_the_embedded_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tiergate.toml");
        let config = Config::load(Some(&path), env(&[])).expect("valid");
        let json = |c: &Config| serde_json::to_value(c).expect("serialises");
        assert_eq!(json(&config), json(&Config::default()));
    }

    #[test]
    fn environment_overrides_nested_keys() {
        let config = Config::load(
            None,
            env(&[
                ("TIERGATE_LIMITS__MAX_BODY_BYTES", "1234"),
                ("TIERGATE_LISTEN", "127.0.0.1:9"),
            ]),
        )
        .expect("valid");
        assert_eq!(config.limits.max_body_bytes, 1234);
        assert_eq!(config.listen.port(), 9);
    }

    #[test]
    fn wrong_type_names_the_offending_key() {
        let err = Config::load(None, env(&[("TIERGATE_LIMITS__MAX_BODY_BYTES", "lots")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_body_bytes"), "{err}");
    }

    #[test]
    fn unknown_key_is_rejected() {
        let err = Config::load(None, env(&[("TIERGATE_LIMITS__MAX_BODY", "1")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_body"), "{err}");
    }

    #[test]
    fn default_max_tokens_above_the_cap_is_rejected() {
        let err = Config::load(
            None,
            env(&[("TIERGATE_LIMITS__DEFAULT_MAX_TOKENS", "99999")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("limits.default_max_tokens"), "{err}");
    }

    #[test]
    fn zero_connection_timeout_is_rejected_with_its_key() {
        let err = Config::load(
            None,
            env(&[("TIERGATE_CONNECTIONS__IDLE_TIMEOUT_SECS", "0")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("connections.idle_timeout_secs"), "{err}");
    }

    #[test]
    fn ledger_url_comes_from_the_environment() {
        let url = "postgres://postgres@127.0.0.1:5432/test";
        let config = Config::load(None, env(&[("TIERGATE_LEDGER__URL", url)])).expect("valid");
        assert_eq!(config.ledger.url, url);
    }

    #[test]
    fn bad_device_is_rejected_with_its_replica() {
        let mut config = Config::default();
        config.models[0].replicas[0].device = "tpu:0".into();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("models[0].replicas[0].device"), "{err}");
    }
}
