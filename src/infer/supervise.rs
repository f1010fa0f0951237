//! The life of a replica thread: load the model, serve, and when the thread dies after
//! loading (a panic outside a guarded model call), mark it down, answer its waiting requests,
//! and load it again with backoff. `Engine::spawn` starts it.

use super::queue::Supervised;
use crate::backend::device::DeviceSpec;
use crate::backend::BackendError;
use crate::models::Manifest;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;

/// What a replica thread needs to load its model.
pub(crate) struct LoadSpec {
    pub manifest: Manifest,
    pub dir: PathBuf,
    pub dtype: String,
    pub max_slots: usize,
    pub max_seq_len: usize,
    /// Byte budget of the replica's prefix cache (0: none).
    pub prefix_cache_bytes: usize,
    pub device: DeviceSpec,
    pub replica: String,
    /// Index among the model's replicas.
    pub index: usize,
    /// The dedicated tier it serves; None: the shared pool.
    pub pool: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum LoadState {
    Loading,
    Ready,
    /// Failed to load at start-up (the start fails).
    Failed(String),
    /// Died (or failed to reload) after loading; being loaded again.
    Down(String),
}

/// First wait after a replica died; it doubles after each failure up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The life of one replica thread (see `Engine::spawn`).
pub(super) fn supervise(
    spec: &LoadSpec,
    queue: &dyn Supervised,
    state: &watch::Sender<LoadState>,
    load: impl Fn(&LoadSpec) -> Result<Box<dyn FnOnce() + Send>, BackendError>,
) {
    let mut backoff = FIRST_BACKOFF;
    let mut started = false;
    let restarts = crate::metrics::get()
        .replica_restarts
        .with_label_values(&[&spec.manifest.name, &spec.index.to_string()]);
    loop {
        match timed(|| load(spec)) {
            (Ok(serve), secs) => {
                // Resident memory is the whole process's (replicas load side by side): the
                // last replica's line shows what the configured models take.
                tracing::info!(replica = %spec.replica, device = %spec.device,
                    load_secs = format!("{secs:.1}"), process_rss_mb = resident_mb(), "replica ready");
                started = true;
                // Serving before it says ready: a request sent on `/ready`'s word is queued.
                queue.replica_up();
                state.send_replace(LoadState::Ready);
                let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(serve));
                if let Err(panic) = &served {
                    // Down before its waiting requests are answered, so that a client told
                    // 503 finds `/ready` saying why.
                    let why = panic_message(panic);
                    tracing::error!(replica = %spec.replica, error = %why, "replica died; restarting");
                    state.send_replace(LoadState::Down(why));
                    restarts.inc();
                }
                queue.replica_down(&spec.manifest.name);
                if served.is_ok() {
                    return; // the queue closed: shutdown
                }
            }
            (Err(e), _) if !started => {
                tracing::error!(replica = %spec.replica, error = %e, "replica failed to load");
                state.send_replace(LoadState::Failed(e.to_string()));
                return;
            }
            (Err(e), _) => {
                tracing::error!(replica = %spec.replica, error = %e, "replica failed to reload");
                state.send_replace(LoadState::Down(e.to_string()));
            }
        }
        if !wait_unless_closed(queue, backoff) {
            return;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Sleeps `backoff` in short naps so that a shutdown is not held up by a 30 s backoff;
/// false once the queue is closed.
fn wait_unless_closed(queue: &dyn Supervised, backoff: Duration) -> bool {
    let nap = Duration::from_millis(100);
    let until = std::time::Instant::now() + backoff;
    while std::time::Instant::now() < until {
        if queue.is_closed() {
            return false;
        }
        std::thread::sleep(nap);
    }
    !queue.is_closed()
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_string())
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let start = std::time::Instant::now();
    let out = f();
    (out, start.elapsed().as_secs_f64())
}

/// The process's resident set in MB (`VmRSS`; 0 where /proc is not there).
fn resident_mb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}
