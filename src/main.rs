//! The `tiergate` command: `serve`, `models fetch|verify`, `ledger verify`, `usage report`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tiergate::app;
use tiergate::config::{Config, LogFormat};
use tiergate::ledger::{self, ReportFormat};
use tiergate::models::{self, Manifest};
use tiergate::tenancy::MonotonicClock;
use tiergate::AppState;

#[derive(Parser)]
#[command(
    name = "tiergate",
    version,
    about = "A tiered, OpenAI-compatible inference gateway on candle"
)]
struct Cli {
    /// Config file (TOML). Default: config/tiergate.toml when it exists, else built-in defaults.
    #[arg(long, global = true, env = "TIERGATE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the OpenAI-compatible API.
    Serve {
        /// Listen address, overriding the config's `listen` (and TIERGATE_LISTEN).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Model files.
    Models {
        #[command(subcommand)]
        action: ModelsAction,
    },
    /// The usage ledger (`[ledger]` in the config).
    Ledger {
        #[command(subcommand)]
        action: LedgerAction,
    },
    /// Usage and cost from the ledger.
    Usage {
        #[command(subcommand)]
        action: UsageAction,
    },
    /// Tenant API keys.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
}

#[derive(Subcommand)]
enum LedgerAction {
    /// Check every hash chain of the ledger; exits non-zero naming the first broken row.
    /// Prints each chain's head hash: keep it elsewhere, since deleting the newest rows is
    /// only detectable against such a copy.
    Verify,
}

#[derive(Subcommand)]
enum UsageAction {
    /// Per tenant and tier for one calendar month (UTC): requests by outcome, tokens,
    /// device-seconds, list cost, subsidy, tenant charge and budget left.
    Report {
        /// The month, as YYYY-MM.
        #[arg(long)]
        month: String,
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: ReportFormat,
    },
}

#[derive(Subcommand)]
enum KeysAction {
    /// Make a new key for a tenant: prints it once and appends only its SHA-256 to the
    /// keys file (tenancy.keys_file). A running server finds it on its first use, with no
    /// signal.
    Create {
        /// Tenant id, as in the tenants file.
        #[arg(long)]
        tenant: String,
    },
}

#[derive(Subcommand)]
enum ModelsAction {
    /// Install models' files into the cache, verifying each sha256: the named ones (any
    /// manifest `<models_dir>/NAME.toml`, served or not), else every configured model.
    Fetch { names: Vec<String> },
    /// Check installed files against their manifests without downloading (same choice).
    Verify { names: Vec<String> },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut config = load_config(cli.config.as_deref())?;
    init_tracing(config.log.format);
    match cli.command {
        Command::Models { action } => models_command(&config, action),
        Command::Ledger {
            action: LedgerAction::Verify,
        } => ledger_verify(&config),
        Command::Usage {
            action:
                UsageAction::Report {
                    month,
                    tenant,
                    format,
                },
        } => usage_report(&config, &month, tenant.as_deref(), format),
        Command::Keys {
            action: KeysAction::Create { tenant },
        } => create_key(&config, &tenant),
        Command::Serve { listen } => {
            if let Some(addr) = listen {
                config.listen = addr;
            }
            set_cpu_threads(config.cpu_threads());
            let mut shown = config.clone();
            shown.ledger.url = config.ledger.redacted_url();
            tracing::info!(config = %serde_json::to_string(&shown).unwrap_or_default(), "effective config");
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?
                .block_on(serve(config))
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = std::env::var("TIERGATE_LOG").unwrap_or_else(|_| "info".into());
    let builder =
        tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new(filter));
    if format == LogFormat::Json {
        // One JSON object per line, with the request span's fields (its id) on each line.
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init();
        return;
    }
    builder.with_target(false).init();
}

fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    let default = Path::new("config/tiergate.toml");
    let path = path.or_else(|| default.is_file().then_some(default));
    Ok(Config::load(path, std::env::vars())?)
}

/// candle's CPU thread pool is process-wide and reads these once, at first use. They are set
/// even for the default (0: one per available CPU) because without RAYON_NUM_THREADS candle
/// re-reads /proc/cpuinfo on every f32 matmul, which cost ~25% of decode speed here.
fn set_cpu_threads(threads: usize) {
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    std::env::set_var("CANDLE_NUM_THREADS", threads.to_string());
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
}

fn models_command(config: &Config, action: ModelsAction) -> anyhow::Result<()> {
    let cache = config.cache_dir();
    let (ModelsAction::Fetch { names } | ModelsAction::Verify { names }) = &action;
    let manifests: Vec<PathBuf> = if names.is_empty() {
        config
            .models
            .iter()
            .map(|mc| mc.manifest_path(&config.models_dir))
            .collect()
    } else {
        names
            .iter()
            .map(|n| config.models_dir.join(format!("{n}.toml")))
            .collect()
    };
    for path in manifests {
        let manifest = Manifest::load(&path).map_err(anyhow::Error::msg)?;
        let dir = match action {
            ModelsAction::Fetch { .. } => {
                models::fetch(&manifest, &cache, &mut |line| println!("{line}"))?
            }
            ModelsAction::Verify { .. } => models::resolve(&manifest, &cache)?,
        };
        println!("{}: ok ({})", manifest.name, dir.display());
    }
    Ok(())
}

/// Opens the configured ledger for reading; a missing SQLite file is an error here (a typo in
/// the path must not read as an empty ledger).
fn open_existing_ledger(config: &Config) -> anyhow::Result<Box<dyn ledger::Store>> {
    let url = config.ledger.redacted_url();
    if let Some(path) = config.ledger.url.strip_prefix("sqlite://") {
        anyhow::ensure!(Path::new(path).is_file(), "no ledger file at {path}");
    }
    ledger::open_store(&config.ledger).with_context(|| format!("cannot open the ledger {url}"))
}

fn ledger_verify(config: &Config) -> anyhow::Result<()> {
    let mut store = open_existing_ledger(config)?;
    let report = ledger::verify(store.as_mut())?;
    if report.chains.is_empty() {
        println!("ledger is empty");
        return Ok(());
    }
    for c in &report.chains {
        let head = c
            .head
            .as_ref()
            .map_or("-".into(), |(seq, hash)| format!("seq {seq} hash {hash}"));
        match &c.first_break {
            None => println!("chain {}: {} rows ok; head {head}", c.chain, c.rows_ok),
            Some(b) => println!(
                "chain {}: BROKEN: {b} ({} rows ok before it; last good {head})",
                c.chain, c.rows_ok
            ),
        }
    }
    if let Some(c) = report.chains.iter().find(|c| c.first_break.is_some()) {
        let b = c.first_break.as_ref().expect("found above");
        anyhow::bail!("ledger chain {:?} is broken: {b}", c.chain);
    }
    let rows: u64 = report.chains.iter().map(|c| c.rows_ok).sum();
    println!(
        "ledger intact: {} chain(s), {rows} rows; keep the head hashes above as anchors",
        report.chains.len()
    );
    Ok(())
}

fn usage_report(
    config: &Config,
    month: &str,
    tenant: Option<&str>,
    format: ReportFormat,
) -> anyhow::Result<()> {
    let (from, to) = ledger::month_range(month)?;
    let mut store = open_existing_ledger(config)?;
    let records = store.records_between(from, to, tenant)?;
    let report = ledger::build_report(&records, &tenant_budgets(config));
    print!("{}", report.render(format));
    Ok(())
}

/// Monthly budget of each tenant in micro-HKD (`None`: unlimited), for the report's "budget
/// left", from the tenant files; unknown budgets print as "-".
fn tenant_budgets(config: &Config) -> BTreeMap<String, Option<i64>> {
    match app::load_directory(config) {
        Ok(directory) => directory
            .tenants
            .values()
            .map(|t| (t.id.clone(), t.budget_micro()))
            .collect(),
        Err(e) => {
            eprintln!("note: budgets unknown ({e})");
            BTreeMap::new()
        }
    }
}

fn create_key(config: &Config, tenant: &str) -> anyhow::Result<()> {
    let key = app::create_key(config, tenant)?;
    eprintln!(
        "Key for {tenant} (shown once; only its hash is stored in {}):",
        config.tenancy.keys_file.display()
    );
    println!("{key}");
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let fetch = config.fetch_on_start;
    let start_config = config.clone();
    let clock = Arc::new(MonotonicClock::default());
    let app = tokio::task::spawn_blocking(move || app::start(start_config, fetch, clock)).await??;
    let (state, ledger_writer) = (app.state, app.ledger_writer);
    tokio::spawn(reload_on_sighup(state.clone()));
    tracing::info!(listen = %config.listen, "serving; /ready turns 200 once every replica has loaded");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ready_state = state.clone();
    let ready_stop = stop_tx.clone();
    let load = tokio::spawn(async move {
        let result = ready_state.engine.wait_ready().await;
        match &result {
            Ok(()) => tracing::info!("all replicas ready"),
            Err(_) => {
                let _ = ready_stop.send(true);
            }
        }
        result
    });
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    if config.metrics.enabled {
        let metrics = tokio::net::TcpListener::bind(config.metrics.listen)
            .await
            .with_context(|| format!("cannot listen on {} (metrics)", config.metrics.listen))?;
        tracing::info!(listen = %config.metrics.listen, "metrics on /metrics");
        let mut stop = stop_rx.clone();
        tokio::spawn(tiergate::serve_metrics(
            metrics,
            state.clone(),
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        ));
    }
    let mut stop = stop_rx.clone();
    let server = tokio::spawn(tiergate::serve(listener, state.clone(), async move {
        let _ = stop.wait_for(|s| *s).await;
    }));
    let bounds = Bounds {
        grace: Duration::from_secs(config.limits.shutdown_grace_secs),
        flush: Duration::from_secs(config.limits.shutdown_flush_secs),
    };
    drain(state, server, stop_rx, ledger_writer, bounds).await?;
    if load.is_finished() {
        load.await??;
    }
    Ok(())
}

/// How long shutdown may take: `grace` for running requests, then `flush` for the records of
/// those cut, the ledger and the replica threads. Exit comes within grace + flush.
struct Bounds {
    grace: Duration,
    flush: Duration,
}

/// Serves until the stop signal, then shuts down within `bounds`: no new connections or
/// requests, waiting requests answered 503 at once, running ones given the grace period and
/// then cut (their records say `interrupted`), the ledger flushed, the replica threads joined.
async fn drain(
    state: Arc<AppState>,
    mut server: tokio::task::JoinHandle<std::io::Result<()>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    ledger_writer: tiergate::ledger::LedgerWriter,
    bounds: Bounds,
) -> anyhow::Result<()> {
    tokio::select! {
        ended = &mut server => ended??,
        _ = stop.wait_for(|s| *s) => {}
    }
    state.engine.drain();
    let grace_end = tokio::time::Instant::now() + bounds.grace;
    let flush_end = grace_end + bounds.flush;
    if tokio::time::timeout_at(grace_end, &mut server)
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period over; interrupting the running requests");
        state.engine.interrupt();
        // Each cut request is answered and recorded as its stream ends (one engine step).
        if tokio::time::timeout_at(flush_end, &mut server)
            .await
            .is_err()
        {
            tracing::error!("connections still open at the shutdown bound; closing them");
            server.abort();
        }
    }
    // Settlements a shared (Redis) limiter still has on their way.
    let _ = tokio::time::timeout_at(flush_end, state.tenancy.limiter.flush()).await;
    // Flush the ledger: no new records, the writer stores what it has, then exits.
    state.ledger.close();
    let flushed = tokio::task::spawn_blocking(move || ledger_writer.join());
    match tokio::time::timeout_at(flush_end, flushed).await {
        Ok(Ok(Ok(()))) => tracing::info!("ledger flushed"),
        Ok(Ok(Err(e))) => tracing::error!(error = %e, "the ledger was not fully flushed"),
        Ok(Err(e)) => tracing::error!(error = %e, "the ledger writer panicked"),
        Err(_) => tracing::error!("the ledger writer did not finish within the shutdown bound"),
    }
    // Replica threads exit once their queue is closed and their requests have ended.
    let joined = tokio::task::spawn_blocking(move || state.engine.join());
    match tokio::time::timeout_at(flush_end, joined).await {
        Ok(_) => tracing::info!("replica threads joined"),
        Err(_) => tracing::error!("replica threads still running at the shutdown bound"),
    }
    Ok(())
}

/// SIGHUP re-reads the tenant files (a bad file keeps the old ones; `app::reload` logs why;
/// a SIGHUP during `POST /admin/reload` waits for it).
async fn reload_on_sighup(state: Arc<AppState>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            let _ = app::reload(&state);
        }
    }
    #[cfg(not(unix))]
    let _ = state;
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.unwrap_or(());
    tracing::info!("shutdown requested: no new connections; draining");
}
