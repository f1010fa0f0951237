//! The waiting room of one model, shared by its replicas: a `FairQueue` behind a std mutex,
//! with a condvar that wakes idle replicas. Async handlers only push (a short critical
//! section, no await inside), replica threads pop between engine steps, so a plain mutex is
//! both sufficient and cheaper than an async one. It also keeps what a refused client is
//! told to wait (`backlog`): the replicas record how long each request held a slot.

use super::backlog::{self, ServiceTime};
use super::policy::{FairQueue, PushError};
use super::InferError;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

pub(crate) struct ModelQueue<T> {
    state: Mutex<FairQueue<T>>,
    wake: Condvar,
    closed: AtomicBool,
    /// Shutdown's grace period is over: replicas end their running requests now.
    interrupted: AtomicBool,
    /// Replicas of this pool that have loaded and serve now.
    serving: AtomicUsize,
    /// Test hook: the next replica to look panics (`Engine::inject_fault`).
    fault: AtomicBool,
    service: ServiceTime,
    /// Requests the queue's replicas run at once (their slots, summed).
    slots: AtomicUsize,
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
            interrupted: AtomicBool::new(false),
            serving: AtomicUsize::new(0),
            fault: AtomicBool::new(false),
            service: ServiceTime::default(),
            slots: AtomicUsize::new(0),
        }
    }

    /// A replica that runs `slots` requests at once now serves this queue.
    pub fn add_slots(&self, slots: usize) {
        self.slots.fetch_add(slots, Ordering::Relaxed);
    }

    /// A request held one of the slots for `took` (its share of a round, for embeddings).
    pub fn record_service(&self, took: Duration) {
        self.service.record(took);
    }

    /// Retry-After for a client refused now (locks the queue to count it).
    pub fn retry_after(&self) -> Duration {
        let depth = self.lock().len();
        self.retry_after_at(depth)
    }

    /// Retry-After with `depth` requests waiting, for a caller that holds the lock.
    pub fn retry_after_at(&self, depth: usize) -> Duration {
        backlog::retry_after(
            depth,
            self.service.get(),
            self.slots.load(Ordering::Relaxed),
        )
    }

    pub fn push(&self, class: usize, cost: usize, item: T) -> Result<(), Refused<T>> {
        let mut state = self.lock();
        // Checked under the lock: `close_and_refuse` empties the queue under it, so nothing
        // pushed after it can be left waiting for a replica that is gone.
        if self.closed.load(Ordering::Acquire) {
            return Err(Refused::Closed(item));
        }
        state.push(class, cost, item).map_err(|e| match e {
            PushError::Full(item) => Refused::Full(item),
            PushError::TooLarge(item) => Refused::TooLarge(item),
        })?;
        drop(state);
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

    /// Shutdown, at the end of its grace period: replicas end their running requests
    /// (`InferError::Interrupted`) at their next step instead of finishing them.
    pub fn interrupt(&self) {
        self.interrupted.store(true, Ordering::Release);
        self.close();
    }

    pub fn is_interrupted(&self) -> bool {
        self.interrupted.load(Ordering::Acquire)
    }

    #[cfg(test)]
    fn is_closed_for_tests(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

impl<T: Refusable> ModelQueue<T> {
    /// Shutdown, first step: no new requests, and every waiting one is answered 503
    /// `shutting_down` at once (running ones go on until the grace period ends).
    pub fn close_and_refuse(&self) {
        let waiting = {
            let mut state = self.lock();
            self.closed.store(true, Ordering::Release);
            state.drain()
        };
        self.wake.notify_all();
        for job in waiting {
            job.refuse(InferError::ShuttingDown);
        }
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

impl<T: Refusable> Pools<T> {
    pub fn close_and_refuse(&self) {
        self.all().for_each(|q| q.close_and_refuse());
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

    pub fn interrupt(&self) {
        self.all().for_each(|q| q.interrupt());
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

    /// The longest Retry-After of the pools.
    pub fn retry_after(&self) -> Duration {
        self.all()
            .map(|q| q.retry_after())
            .max()
            .unwrap_or(backlog::MIN_RETRY_AFTER)
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
    fn retry_after_counts_the_waiting_requests_against_the_replicas_slots() {
        let q = ModelQueue::new(FairQueue::new(&[1.0], 8, 10));
        q.add_slots(2);
        q.add_slots(2);
        for i in 0..6 {
            assert!(q.push(0, 1, i).is_ok());
        }
        q.record_service(Duration::from_secs(4));
        // 6 waiting x 4 s over 4 slots.
        assert_eq!(q.retry_after(), Duration::from_secs(6));
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

    /// A job that records the error it was refused with.
    struct Job(std::sync::mpsc::Sender<String>);

    impl Refusable for Job {
        fn refuse(self, error: InferError) {
            let _ = self.0.send(error.code().to_string());
        }
    }

    #[test]
    fn close_and_refuse_answers_every_waiting_request_and_refuses_new_ones() {
        let q = ModelQueue::new(FairQueue::new(&[1.0], 8, 10));
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..3 {
            assert!(q.push(0, 1, Job(tx.clone())).is_ok());
        }
        q.close_and_refuse();
        let answers: Vec<String> = rx.try_iter().collect();
        assert_eq!(answers, ["shutting_down"; 3]);
        assert!(q.lock().is_empty());
        assert!(matches!(q.push(0, 1, Job(tx)), Err(Refused::Closed(_))));
        assert!(!q.wait_for_work(), "an idle replica exits");
    }

    #[test]
    fn interrupt_closes_the_queue_and_tells_the_replicas() {
        let q = ModelQueue::<u32>::new(FairQueue::new(&[1.0], 8, 10));
        assert!(!q.is_interrupted());
        q.interrupt();
        assert!(q.is_interrupted() && q.is_closed_for_tests());
    }
}
