//! The live directory: requests read it lock-free (an `Arc` behind a read lock), reloads swap
//! in a new one without stopping them.
//!
//! Two things change it, both under one reload lock so they never interleave:
//! - a reload (SIGHUP or `POST /admin/reload`) re-reads all three files; a second reload
//!   waits for the running one, then reads the files itself;
//! - a key the live directory does not know makes the keys file be re-read, so that a key
//!   made by `tiergate keys create` (which only appends to the file) works at once, with no
//!   signal. Only when the file's size or mtime changed since it was read, and at most once
//!   per `KEYS_REREAD_INTERVAL` per gateway, so a flood of wrong keys costs a `stat` each,
//!   never a read each.

use super::directory::{read_keys, Directory, FileStamp, Sources, Tenant};
use super::limiter::{Clock, Limiter};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

/// The shortest time between two re-reads of the keys file on unknown keys.
pub const KEYS_REREAD_INTERVAL: Duration = Duration::from_secs(1);

pub struct Tenancy {
    directory: RwLock<Arc<Directory>>,
    pub limiter: Arc<dyn Limiter>,
    /// None when authentication is off: every request is `ANONYMOUS`.
    pub sources: Option<Sources>,
    /// Held for a whole reload or keys re-read (read, build, apply, swap). A reload numbers
    /// new tiers after the live directory's classes, so two at once could give two tiers one
    /// id; and the engine's weights must change in the order directories are swapped. A std
    /// mutex: reloads are synchronous file reads of a few ms, never held across an await.
    reloading: Mutex<()>,
    keys_reread: Throttle,
    clock: Arc<dyn Clock>,
    keys_rereads: AtomicU64,
}

impl Tenancy {
    /// `clock` paces the keys file re-reads (tests pass a manual one).
    pub fn new(
        directory: Directory,
        limiter: Arc<dyn Limiter>,
        sources: Option<Sources>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Tenancy {
            directory: RwLock::new(Arc::new(directory)),
            limiter,
            sources,
            reloading: Mutex::new(()),
            keys_reread: Throttle::new(KEYS_REREAD_INTERVAL),
            clock,
            keys_rereads: AtomicU64::new(0),
        }
    }

    pub fn directory(&self) -> Arc<Directory> {
        self.directory
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn auth_enabled(&self) -> bool {
        self.sources.is_some()
    }

    /// Re-reads the files. On error the old directory stays and the error is returned.
    pub fn reload(&self) -> Result<Arc<Directory>, String> {
        self.reload_with(|_| {})
    }

    /// `reload`, calling `apply` with the new directory before it goes live, under the reload
    /// lock. Before: a request can only name a new tier's class once the directory is live,
    /// and by then the engine's queues must have that class.
    pub fn reload_with(&self, apply: impl FnOnce(&Directory)) -> Result<Arc<Directory>, String> {
        let Some(sources) = &self.sources else {
            return Ok(self.directory());
        };
        let _serial = self.lock_reloads();
        let mut classes = self.directory().classes.clone();
        let fresh = Arc::new(Directory::load_with(sources, &mut classes)?);
        apply(&fresh);
        self.swap(fresh.clone());
        Ok(fresh)
    }

    /// The tenant of `key` and the directory it was found in; on a miss, the keys file is
    /// re-read when it changed (see the module doc) and the key looked up again. The re-read
    /// is blocking file I/O on the caller's thread: at most one per interval, of a small file.
    pub fn authenticate(&self, key: &str) -> Option<(Arc<Tenant>, Arc<Directory>)> {
        let directory = self.directory();
        if let Some(tenant) = directory.authenticate(key) {
            return Some((tenant, directory));
        }
        let sources = self.sources.as_ref()?;
        if FileStamp::of(&sources.keys) == directory.keys_stamp()
            || !self.keys_reread.try_pass(self.clock.now_ns())
        {
            return None;
        }
        let directory = self.reread_keys(sources)?;
        let tenant = directory.authenticate(key)?;
        Some((tenant, directory))
    }

    /// Times the keys file was re-read because of an unknown key.
    pub fn keys_rereads(&self) -> u64 {
        self.keys_rereads.load(Ordering::Relaxed)
    }

    /// Re-reads the keys file into the live directory, unless a reload that ran meanwhile
    /// already read it as it is now. None when the file does not parse (logged; old keys stay).
    fn reread_keys(&self, sources: &Sources) -> Option<Arc<Directory>> {
        let _serial = self.lock_reloads();
        let current = self.directory();
        // Stamped before reading: a write in between reads as a change next time.
        let stamp = FileStamp::of(&sources.keys);
        if stamp == current.keys_stamp() {
            return Some(current);
        }
        self.keys_rereads.fetch_add(1, Ordering::Relaxed);
        let built = read_keys(&sources.keys).and_then(|keys| current.with_keys(keys, stamp));
        match built {
            Ok(fresh) => {
                let fresh = Arc::new(fresh);
                tracing::info!(
                    keys = fresh.key_count(),
                    skipped = fresh.skipped_keys(),
                    "keys file changed; re-read it"
                );
                self.swap(fresh.clone());
                Some(fresh)
            }
            Err(e) => {
                tracing::warn!(error = %e, "keys file changed but does not load; keeping the old keys");
                None
            }
        }
    }

    fn lock_reloads(&self) -> MutexGuard<'_, ()> {
        // The guarded data is `()`: a panic in another reload leaves nothing half-done here.
        self.reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn swap(&self, fresh: Arc<Directory>) {
        *self
            .directory
            .write()
            .unwrap_or_else(PoisonError::into_inner) = fresh;
    }
}

/// Lets one caller through per interval, without a lock: of callers racing at the same
/// moment exactly one wins, and the others are refused rather than made to wait.
struct Throttle {
    interval_ns: u64,
    /// When the last caller went through; `NEVER` before the first.
    last_ns: AtomicU64,
}

const NEVER: u64 = u64::MAX;

impl Throttle {
    fn new(interval: Duration) -> Self {
        Throttle {
            interval_ns: interval.as_nanos() as u64,
            last_ns: AtomicU64::new(NEVER),
        }
    }

    fn try_pass(&self, now_ns: u64) -> bool {
        let last = self.last_ns.load(Ordering::Acquire);
        if last != NEVER && now_ns.saturating_sub(last) < self.interval_ns {
            return false;
        }
        self.last_ns
            .compare_exchange(last, now_ns, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenancy::{LocalLimiter, ManualClock};

    #[test]
    fn a_reload_applies_the_new_directory_under_the_lock_before_it_goes_live() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let sources = Sources {
            tiers: root.join("config/tiers.toml"),
            tenants: root.join("config/tenants.toml"),
            keys: root.join("config/no-such-keys-file.toml"),
        };
        let clock = Arc::new(ManualClock::default());
        let limiter = Arc::new(LocalLimiter::new(clock.clone()));
        let directory = Directory::load(&sources).expect("shipped files are valid");
        let tenancy = Tenancy::new(directory, limiter, Some(sources), clock);
        let old = tenancy.directory();
        let mut applied = false;
        let fresh = tenancy
            .reload_with(|_| {
                assert!(
                    tenancy.reloading.try_lock().is_err(),
                    "another reload would wait"
                );
                assert!(Arc::ptr_eq(&tenancy.directory(), &old), "not live yet");
                applied = true;
            })
            .expect("reload");
        assert!(applied);
        assert!(Arc::ptr_eq(&tenancy.directory(), &fresh));
    }

    #[test]
    fn throttle_passes_the_first_caller_then_one_per_interval() {
        let t = Throttle::new(Duration::from_secs(1));
        assert!(t.try_pass(0), "the first caller, even at time zero");
        assert!(!t.try_pass(0));
        assert!(!t.try_pass(999_999_999));
        assert!(t.try_pass(1_000_000_000));
        assert!(!t.try_pass(1_500_000_000));
    }

    #[test]
    fn throttle_lets_exactly_one_of_racing_callers_through() {
        let t = Arc::new(Throttle::new(Duration::from_secs(1)));
        let passed: usize = (0..8)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || (0..100).filter(|_| t.try_pass(5)).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .sum();
        assert_eq!(passed, 1);
    }
}
