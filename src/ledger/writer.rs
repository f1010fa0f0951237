//! The ledger writer: a dedicated OS thread owns the store and appends records in batches,
//! one transaction each, while request handlers only ever touch a bounded channel.
//!
//! Admission pattern: a handler calls [`Ledger::reserve`] when it admits a request and keeps
//! the [`RecordSlot`] for the life of the request; at the end it calls [`RecordSlot::write`],
//! which never waits. Because the place in the channel was taken up front, a finished request
//! always has room for its record; when no place is free, the gateway sheds the *new* request
//! (503) rather than lose a record. Memory is bounded by the channel capacity, including while
//! the store is failing: the writer keeps the batch it could not store and retries it.
//!
//! Shutdown: [`Ledger::close`] refuses new slots; slots already taken can still be written;
//! the writer stores everything and exits, and [`LedgerWriter::join`] waits for that.

use super::chain::link;
use super::open_store;
use super::store::Store;
use super::{LedgerConfig, LedgerError, UsageRecord};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::mpsc;

/// First retry delay after a failed write; doubles up to `RETRY_MAX`.
const RETRY_BASE: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Once shutting down, attempts per batch before its records are logged instead (about 16 s
/// with the delays above): a dead database must not hold the process forever.
const SHUTDOWN_ATTEMPTS: u32 = 8;

// All but one message are records: boxing them would cost an allocation per request to save
// space only in the single `Close`.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Record(UsageRecord),
    Close,
}

/// Counters of the writer, read by the metrics endpoint.
#[derive(Debug, Default)]
pub struct LedgerStats {
    pub records_written: AtomicU64,
    pub batches: AtomicU64,
    pub write_errors: AtomicU64,
}

struct Shared {
    stats: LedgerStats,
    closing: AtomicBool,
}

/// Cheap handle to the ledger, cloned into every request's state.
#[derive(Clone)]
pub struct Ledger {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
}

/// A place in the writer's channel, taken at admission. Dropping it unwritten gives the place
/// back but leaves the request without a record, which is a bug: it is logged.
pub struct RecordSlot {
    permit: Option<mpsc::OwnedPermit<Msg>>,
}

/// The writer thread; `join` it at shutdown, after `Ledger::close`, to know every record is
/// stored.
pub struct LedgerWriter {
    thread: JoinHandle<Result<(), LedgerError>>,
}

impl Ledger {
    /// Opens the store `cfg.url` names on a new writer thread and returns once it is open and
    /// migrated (an error if it cannot be). Blocking: from async code, use `spawn_blocking`.
    pub fn open(cfg: &LedgerConfig) -> Result<(Ledger, LedgerWriter), LedgerError> {
        let store_cfg = cfg.clone();
        Self::start(cfg, move || open_store(&store_cfg))
    }

    /// Like `open`, with the store made by `open_store` on the writer thread (tests).
    pub fn start<F>(
        cfg: &LedgerConfig,
        open_store: F,
    ) -> Result<(Ledger, LedgerWriter), LedgerError>
    where
        F: FnOnce() -> Result<Box<dyn Store>, LedgerError> + Send + 'static,
    {
        start(cfg, open_store, RETRY_BASE)
    }

    /// Takes a place for one record, or `None` when the channel is full or the ledger is
    /// closing: the caller must then refuse the request (503).
    pub fn reserve(&self) -> Option<RecordSlot> {
        if self.shared.closing.load(Ordering::SeqCst) {
            return None;
        }
        let permit = self.tx.clone().try_reserve_owned().ok()?;
        Some(RecordSlot {
            permit: Some(permit),
        })
    }

    /// Stops handing out slots; slots already taken may still be written. The writer stores
    /// what it has and exits once the last slot is written or dropped. Never waits.
    pub fn close(&self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        // With the channel full the writer is busy and sees `closing` after its batch.
        let _ = self.tx.try_send(Msg::Close);
    }

    pub fn stats(&self) -> &LedgerStats {
        &self.shared.stats
    }

    /// Places taken: records waiting for the writer plus slots held by running requests.
    pub fn in_use(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

impl RecordSlot {
    /// Hands the record to the writer; never waits.
    pub fn write(mut self, record: UsageRecord) {
        if let Some(permit) = self.permit.take() {
            permit.send(Msg::Record(record));
        }
    }
}

impl Drop for RecordSlot {
    fn drop(&mut self) {
        if self.permit.is_some() {
            tracing::warn!("a ledger slot was dropped without a record; a request went unrecorded");
        }
    }
}

impl LedgerWriter {
    /// Waits until the writer has stored every record and exited. `Err(Unflushed)` means the
    /// store stayed down through shutdown and the records were written to the log instead.
    pub fn join(self) -> Result<(), LedgerError> {
        self.thread.join().map_err(|_| LedgerError::WriterGone)?
    }
}

pub(crate) fn start<F>(
    cfg: &LedgerConfig,
    open_store: F,
    retry_base: Duration,
) -> Result<(Ledger, LedgerWriter), LedgerError>
where
    F: FnOnce() -> Result<Box<dyn Store>, LedgerError> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(cfg.channel_capacity);
    let shared = Arc::new(Shared {
        stats: LedgerStats::default(),
        closing: AtomicBool::new(false),
    });
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let (chain, batch_size, writer_shared) = (cfg.chain.clone(), cfg.batch_size, shared.clone());
    let thread = std::thread::Builder::new()
        .name("ledger-writer".into())
        .spawn(move || {
            let opened = open_store().and_then(|mut store| {
                let head = store.head(&chain)?;
                Ok((store, head))
            });
            let (store, head) = match opened {
                Ok(v) => v,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return Ok(());
                }
            };
            let _ = ready_tx.send(Ok(()));
            let writer = Writer {
                store,
                head,
                chain,
                rx,
                batch_size,
                shared: writer_shared,
                retry_base,
            };
            writer.run()
        })
        .map_err(|e| LedgerError::Start(e.to_string()))?;
    ready_rx
        .recv()
        .map_err(|_| LedgerError::Start("the writer thread died while opening".into()))??;
    Ok((Ledger { tx, shared }, LedgerWriter { thread }))
}

struct Writer {
    store: Box<dyn Store>,
    /// Last `(seq, hash)` of our chain as stored.
    head: Option<(i64, String)>,
    chain: String,
    rx: mpsc::Receiver<Msg>,
    batch_size: usize,
    shared: Arc<Shared>,
    retry_base: Duration,
}

enum Stored {
    Yes,
    GaveUp,
}

impl Writer {
    fn run(mut self) -> Result<(), LedgerError> {
        let mut batch = Vec::with_capacity(self.batch_size);
        while let Some(first) = self.next_blocking() {
            batch.push(first);
            self.fill(&mut batch);
            if let Stored::GaveUp = self.store_batch(&mut batch) {
                return Err(self.log_unstored(batch));
            }
            if self.shared.closing.load(Ordering::SeqCst) {
                self.rx.close();
            }
        }
        Ok(())
    }

    fn next_blocking(&mut self) -> Option<UsageRecord> {
        loop {
            match self.rx.blocking_recv()? {
                Msg::Record(r) => return Some(r),
                Msg::Close => self.rx.close(),
            }
        }
    }

    fn fill(&mut self, batch: &mut Vec<UsageRecord>) {
        while batch.len() < self.batch_size {
            match self.rx.try_recv() {
                Ok(Msg::Record(r)) => batch.push(r),
                Ok(Msg::Close) => self.rx.close(),
                Err(_) => break,
            }
        }
    }

    fn closing(&self) -> bool {
        self.shared.closing.load(Ordering::SeqCst) || self.rx.is_closed()
    }

    /// Appends `batch` in one transaction, retrying with backoff until it is stored (or, when
    /// shutting down, until `SHUTDOWN_ATTEMPTS`). After a failure the chain head is re-read:
    /// a commit whose reply was lost shows as our own last hash (stored, not written twice),
    /// and rows added by another writer on our chain are chained after, not forked.
    fn store_batch(&mut self, batch: &mut Vec<UsageRecord>) -> Stored {
        batch.iter_mut().for_each(UsageRecord::normalize);
        let shared = self.shared.clone();
        let stats = &shared.stats;
        let mut failures = 0u32;
        loop {
            let rows = link(self.head.as_ref(), &self.chain, batch);
            let last = rows.last().map(|r| (r.seq, r.hash.clone()));
            let stored = match self.store.append(&rows) {
                Ok(()) => true,
                Err(e) => {
                    failures += 1;
                    stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, records = batch.len(), attempt = failures,
                        "ledger write failed; records kept in memory and retried");
                    std::thread::sleep(self.backoff(failures));
                    self.reload_head(&last)
                }
            };
            if stored {
                self.head = last;
                stats.batches.fetch_add(1, Ordering::Relaxed);
                let n = batch.len() as u64;
                stats.records_written.fetch_add(n, Ordering::Relaxed);
                batch.clear();
                return Stored::Yes;
            }
            if self.closing() && failures >= SHUTDOWN_ATTEMPTS {
                return Stored::GaveUp;
            }
        }
    }

    /// Re-reads the chain head after a failed append; true when it shows the append did
    /// commit (its reply was lost).
    fn reload_head(&mut self, attempted: &Option<(i64, String)>) -> bool {
        let Ok(head) = self.store.head(&self.chain) else {
            return false;
        };
        if head == *attempted {
            return true;
        }
        if head != self.head {
            tracing::error!(chain = %self.chain, ?head, expected = ?self.head,
                "LEDGER CHAIN CLASH: another writer appends to this chain; give every gateway \
                 its own `ledger.chain`. Continuing after its rows.");
            self.head = head;
        }
        false
    }

    fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        (self.retry_base * factor).min(RETRY_MAX)
    }

    /// Shutdown with the store still down: log every record not stored, in full, so that an
    /// operator can replay them, and report how many.
    fn log_unstored(&mut self, mut batch: Vec<UsageRecord>) -> LedgerError {
        self.rx.close();
        while let Some(r) = self.next_blocking() {
            batch.push(r);
        }
        for r in &batch {
            let json = serde_json::to_string(r).unwrap_or_default();
            tracing::error!(record = %json, "UNSTORED USAGE RECORD");
        }
        LedgerError::Unflushed(batch.len())
    }
}
