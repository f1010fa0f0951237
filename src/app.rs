//! Start-up of everything a request needs, in one place for the server and the tests: the
//! tenant directory (auth on needs tenants; auth off must be said), the limiter with the
//! month's spending restored from the ledger, the ledger writer, and the engine with one
//! scheduling class per tier; reloads of the tenant files; and new API keys.

use crate::config::{AuthMode, Config, LimiterBackend};
use crate::conn::IpGuard;
use crate::infer::Engine;
use crate::ledger::{self, Ledger, LedgerWriter};
use crate::tenancy::keys::KeyHash;
use crate::tenancy::{self, Clock, Directory, Limiter, LocalLimiter, RedisLimiter, Tenancy};
use anyhow::{bail, Context};
use std::sync::Arc;

/// What every handler shares. Built by `start`.
pub struct AppState {
    pub engine: Engine,
    pub config: Config,
    pub tenancy: Tenancy,
    pub ledger: Ledger,
    pub ip_guard: IpGuard,
    /// Hash of the key of `/admin/*` routes; None: those routes always answer 401.
    pub admin_key: Option<KeyHash>,
    /// Unix time of start-up, reported as each model's `created`.
    pub started: u64,
}

/// A started gateway: the state to serve, and the ledger writer to join at shutdown.
pub struct App {
    pub state: Arc<AppState>,
    pub ledger_writer: LedgerWriter,
}

/// Loads the tenant files as configured.
pub fn load_directory(config: &Config) -> anyhow::Result<Directory> {
    let t = &config.tenancy;
    let sources = t.sources();
    let directory = match t.auth {
        AuthMode::On => Directory::load(&sources).map_err(anyhow::Error::msg)?,
        AuthMode::Off => {
            Directory::anonymous(&sources, &t.anonymous_tier).map_err(anyhow::Error::msg)?
        }
    };
    if t.auth == AuthMode::On && directory.tenants.is_empty() {
        bail!(
            "no tenants in {}: add tenants, or set tenancy.auth = \"off\" to serve everyone \
             as the `anonymous` tenant",
            t.tenants_file.display()
        );
    }
    Ok(directory)
}

/// Starts the gateway's parts (blocking: run it off the async runtime). Model replicas load
/// in the background; see `Engine::wait_ready`.
pub fn start(config: Config, fetch: bool, clock: Arc<dyn Clock>) -> anyhow::Result<App> {
    let directory = load_directory(&config)?;
    let limiter = start_limiter(&config, clock.clone())?;
    restore_budgets(&config, limiter.as_ref())?;
    let (ledger, ledger_writer) = Ledger::open(&config.ledger).context("cannot open the ledger")?;
    let engine = Engine::start_with(&config, fetch, &directory.weights())?;
    let sources = (config.tenancy.auth == AuthMode::On).then(|| config.tenancy.sources());
    let state = AppState {
        engine,
        ip_guard: IpGuard::new(
            config.tenancy.ip_requests_per_second,
            config.tenancy.ip_burst,
        ),
        admin_key: admin_key(&config)?,
        tenancy: Tenancy::new(directory, limiter, sources, clock),
        ledger,
        started: (tenancy::unix_ms_now() / 1000) as u64,
        config,
    };
    Ok(App {
        state: Arc::new(state),
        ledger_writer,
    })
}

/// The tenant limits' home: this process, or a Redis shared by several gateways.
fn start_limiter(config: &Config, clock: Arc<dyn Clock>) -> anyhow::Result<Arc<dyn Limiter>> {
    let limiter = &config.tenancy.limiter;
    Ok(match limiter.backend {
        LimiterBackend::Local => Arc::new(LocalLimiter::new(clock)),
        LimiterBackend::Redis => {
            let longest = std::time::Duration::from_secs(config.limits.request_timeout_secs);
            Arc::new(RedisLimiter::start(limiter, longest, clock)?)
        }
    })
}

/// The month's tenant charges so far, so that a restart does not hand out budgets again.
fn restore_budgets(config: &Config, limiter: &dyn Limiter) -> anyhow::Result<()> {
    let now = tenancy::unix_ms_now();
    let (from, to) = ledger::month_range_of(now);
    let mut store = ledger::open_store(&config.ledger).context("cannot open the ledger")?;
    let spent = store
        .charges_between(from, to)
        .context("cannot read this month's charges from the ledger")?;
    limiter.restore_spent(tenancy::month_of(now), &spent);
    Ok(())
}

/// Makes a key for `tenant` (which must be in the tenants file) and appends its hash to the
/// keys file: `tiergate keys create`. Returns the key, the only time it exists in clear. A
/// running gateway finds it on its first use (`Tenancy::authenticate`).
pub fn create_key(config: &Config, tenant: &str) -> anyhow::Result<String> {
    let t = &config.tenancy;
    let directory = Directory::load(&t.sources()).map_err(anyhow::Error::msg)?;
    if !directory.tenants.contains_key(tenant) {
        let known: Vec<&str> = directory.tenants.keys().map(String::as_str).collect();
        bail!(
            "no tenant {tenant:?} in {}; known: {}",
            t.tenants_file.display(),
            known.join(", ")
        );
    }
    tenancy::keys::create(&t.keys_file, tenant)
        .with_context(|| format!("cannot write {}", t.keys_file.display()))
}

fn admin_key(config: &Config) -> anyhow::Result<Option<KeyHash>> {
    if let Ok(raw) = std::env::var("TIERGATE_ADMIN_KEY") {
        if !raw.is_empty() {
            return Ok(Some(KeyHash::of(&raw)));
        }
    }
    match &config.tenancy.admin_key_sha256 {
        None => Ok(None),
        Some(hex) => KeyHash::parse(hex)
            .map(Some)
            .context("tenancy.admin_key_sha256 must be 64 hex digits"),
    }
}

/// Re-reads the tenant files into the live directory and the engine's tier weights. On error
/// nothing changes and the reason is logged and returned. Reloads are serialized: one that
/// comes while another runs (SIGHUP during `POST /admin/reload`) waits for it, then reads the
/// files itself, so the later one's view is what stays in force.
pub fn reload(state: &AppState) -> Result<Arc<Directory>, String> {
    let reloaded = state
        .tenancy
        .reload_with(|directory| state.engine.set_weights(&directory.weights()));
    match reloaded {
        Ok(directory) => {
            tracing::info!(
                tiers = directory.tiers.len(),
                tenants = directory.tenants.len(),
                keys = directory.key_count(),
                skipped_keys = directory.skipped_keys(),
                "tenant files reloaded"
            );
            Ok(directory)
        }
        Err(e) => {
            tracing::error!(error = %e, "reload failed; keeping the previous tenant files");
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with_no_tenants(auth: AuthMode) -> (Config, std::path::PathBuf) {
        let empty = std::env::temp_dir().join(format!(
            "tg-no-tenants-{}-{auth:?}.toml",
            std::process::id()
        ));
        std::fs::write(&empty, "# nobody\n").expect("write");
        let mut config = Config::default();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        config.tenancy.tiers_file = root.join("config/tiers.toml");
        config.tenancy.tenants_file = empty.clone();
        config.tenancy.auth = auth;
        (config, empty)
    }

    #[test]
    fn auth_on_without_tenants_refuses_to_start_and_says_how_to_opt_out() {
        let (config, file) = config_with_no_tenants(AuthMode::On);
        let err = load_directory(&config).unwrap_err().to_string();
        std::fs::remove_file(file).ok();
        assert!(err.contains("auth = \"off\""), "{err}");
    }

    #[test]
    fn auth_off_serves_everyone_as_the_anonymous_tenant() {
        let (config, file) = config_with_no_tenants(AuthMode::Off);
        let d = load_directory(&config).expect("starts");
        std::fs::remove_file(file).ok();
        assert_eq!(d.tenants.keys().collect::<Vec<_>>(), ["anonymous"]);
        assert_eq!(d.tenants["anonymous"].tier, "research");
    }
}
