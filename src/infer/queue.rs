//! The waiting room of one model, shared by its replicas: a `FairQueue` behind a std mutex,
//! with a condvar that wakes idle replicas. Async handlers only push (a short critical
//! section, no await inside), replica threads pop between engine steps, so a plain mutex is
//! both sufficient and cheaper than an async one.

use super::policy::{FairQueue, PushError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

pub(crate) struct ModelQueue<T> {
    state: Mutex<FairQueue<T>>,
    wake: Condvar,
    closed: AtomicBool,
}

/// Why `push` refused a request.
pub(crate) enum Refused<T> {
    Full(T),
    TooLarge(T),
    Closed(T),
}

impl<T> ModelQueue<T> {
    pub fn new(queue: FairQueue<T>) -> Self {
        ModelQueue {
            state: Mutex::new(queue),
            wake: Condvar::new(),
            closed: AtomicBool::new(false),
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
            if !state.is_empty() {
                return true;
            }
            state = self.wake.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Stops accepting work and wakes every idle replica so it can exit.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let _guard = self.lock();
        self.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

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
