//! The waiting room of one model, shared by its replicas: a `FairQueue` behind a std mutex,
//! with a condvar that wakes idle replicas. Async handlers only push (a short critical
//! section, no await inside), replica threads pop between engine steps, so a plain mutex is
//! both sufficient and cheaper than an async one.

use super::policy::{FairQueue, PushError};
use super::InferError;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

pub(crate) struct ModelQueue<T> {
    state: Mutex<FairQueue<T>>,
    wake: Condvar,
    closed: AtomicBool,
    /// Replicas of this pool that have loaded and serve now.
    serving: AtomicUsize,
    /// Test hook: the next replica to look panics (`Engine::inject_fault`).
    fault: AtomicBool,
}

/// Why `push` refused a request.
pub(crate) enum Refused<T> {
    Full(T),
    TooLarge(T),
    Closed(T),
}

/// A queued request that can be answered without a replica (with an error).
pub(crate) trait Refusable {
    fn refuse(self, error: InferError);
}

/// What a replica's supervisor (`Engine::spawn`) needs of its queue, whatever its jobs.
pub(crate) trait Supervised: Send + Sync {
    fn replica_up(&self);
    /// One replica fewer; with none left, every waiting request is answered 503
    /// `model_not_ready` at once.
    fn replica_down(&self, model: &str);
    fn is_closed(&self) -> bool;
}

impl<T: Refusable + Send> Supervised for ModelQueue<T> {
    fn replica_up(&self) {
        self.serving.fetch_add(1, Ordering::AcqRel);
    }

    fn replica_down(&self, model: &str) {
        if self.serving.fetch_sub(1, Ordering::AcqRel) > 1 {
            return;
        }
        let waiting = self.lock().drain();
        for job in waiting {
            job.refuse(InferError::NotReady(model.to_string()));
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

impl<T> ModelQueue<T> {
    pub fn new(queue: FairQueue<T>) -> Self {
        ModelQueue {
            state: Mutex::new(queue),
            wake: Condvar::new(),
            closed: AtomicBool::new(false),
            serving: AtomicUsize::new(0),
            fault: AtomicBool::new(false),
        }
    }

    pub fn push(&self, class: usize, cost: usize, item: T) -> Result<(), Refused<T>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Refused::Closed(item));
        }
        self.lock().push(class, cost, item).map_err(|e| match e {
            PushError::Full(item) => Refused::Full(item),
            PushError::TooLarge(item) => Refused::TooLarge(item),
        })?;
        self.wake.notify_one();
        Ok(())
    }

    /// Locks the queue for a replica's admission decisions.
    pub fn lock(&self) -> MutexGuard<'_, FairQueue<T>> {
        // A panic while holding the lock cannot leave the queue half-updated in a way that
        // matters more than stopping the model would, so keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Blocks an idle replica until there is work; false once the queue is closed.
    pub fn wait_for_work(&self) -> bool {
        let mut state = self.lock();
        loop {
            if self.closed.load(Ordering::Acquire) {
                return false;
            }
            if !state.is_empty() || self.fault.load(Ordering::Acquire) {
                return true;
            }
            state = self.wake.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Whether a replica of this pool serves now. When none does (loading, or down and
    /// restarting), a request is answered 503 at once: waiting would only run into the
    /// queue timeout.
    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Acquire) > 0
    }

    /// Test hook: makes the next replica of this pool that looks for work panic.
    pub fn inject_fault(&self) {
        self.fault.store(true, Ordering::Release);
        let _guard = self.lock();
        self.wake.notify_all();
    }

    /// Whether a fault was injected (and takes it).
    pub fn take_fault(&self) -> bool {
        self.fault.swap(false, Ordering::AcqRel)
    }

    /// Stops accepting work and wakes every idle replica so it can exit.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let _guard = self.lock();
        self.wake.notify_all();
    }
}

/// The queues of one model: the shared pool (`None`) and one per tier with dedicated
/// replicas. A dedicated tier's requests wait only in its own pool and other tiers' never do,
/// so a regulated pilot's prompts never meet another tenant's batch.
pub(crate) struct Pools<T> {
    pools: Vec<(Option<String>, Arc<ModelQueue<T>>)>,
}

impl<T> Default for Pools<T> {
    fn default() -> Self {
        Pools { pools: Vec::new() }
    }
}

impl<T> Pools<T> {
    /// The queue of `pool`, made by `make` the first time it is asked for.
    pub fn get_or_insert(
        &mut self,
        pool: Option<&str>,
        make: impl FnOnce() -> ModelQueue<T>,
    ) -> Arc<ModelQueue<T>> {
        if let Some(q) = self.get(pool) {
            return q.clone();
        }
        let q = Arc::new(make());
        self.pools.push((pool.map(str::to_string), q.clone()));
        q
    }

    /// The queue for requests of `pool` (None: tiers without dedicated replicas).
    pub fn get(&self, pool: Option<&str>) -> Option<&Arc<ModelQueue<T>>> {
        self.pools
            .iter()
            .find(|(p, _)| p.as_deref() == pool)
            .map(|(_, q)| q)
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<ModelQueue<T>>> {
        self.pools.iter().map(|(_, q)| q)
    }

    pub fn close(&self) {
        self.all().for_each(|q| q.close());
    }

    /// Waiting requests over all pools.
    pub fn len(&self) -> usize {
        self.all().map(|q| q.lock().len()).sum()
    }

    /// Tokens admitted per class, summed over the pools.
    pub fn served_tokens(&self) -> Vec<u64> {
        let mut total: Vec<u64> = Vec::new();
        for q in self.all() {
            for (i, t) in q.lock().served_tokens().into_iter().enumerate() {
                if total.len() <= i {
                    total.resize(i + 1, 0);
                }
                total[i] += t;
            }
        }
        total
    }

    pub fn set_weights(&self, weights: &[f64]) {
        self.all().for_each(|q| q.lock().set_weights(weights));
    }

    /// Each pool's class weights.
    pub fn weights(&self) -> Vec<Vec<f64>> {
        self.all().map(|q| q.lock().weights()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_wakes_an_idle_waiter() {
        let q = Arc::new(ModelQueue::<u32>::new(FairQueue::new(&[1.0], 4, 10)));
        let waiter = {
            let q = q.clone();
            std::thread::spawn(move || q.wait_for_work())
        };
        q.close();
        assert!(!waiter.join().expect("thread"));
    }

    #[test]
    fn push_wakes_an_idle_waiter_and_closed_refuses() {
        let q = Arc::new(ModelQueue::new(FairQueue::new(&[1.0], 4, 10)));
        let waiter = {
            let q = q.clone();
            std::thread::spawn(move || q.wait_for_work())
        };
        assert!(q.push(0, 1, 7u32).is_ok());
        assert!(waiter.join().expect("thread"));
        q.close();
        assert!(matches!(q.push(0, 1, 8), Err(Refused::Closed(8))));
    }
}
