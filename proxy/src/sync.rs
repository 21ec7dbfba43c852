//! Locking, and batches for background threads, shared by every module.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Work a part of the runtime needs done in the background (health checks, filter ticks,
/// callouts, builtin origins), run until its shutdown watch fires.
pub(crate) type BackgroundTask =
    Arc<dyn pingora::services::background::BackgroundService + Send + Sync>;

/// A background task and what ends it: its own watch, or (`None`) the retirement of the
/// configuration generation that starts it.
pub(crate) struct Task {
    pub(crate) work: BackgroundTask,
    pub(crate) until: Option<pingora::server::ShutdownWatch>,
}

/// Locks `mutex` even if a thread panicked while holding it. For state that stays consistent
/// between statements (every caller's case): failing every later request because one panicked
/// would turn a bug into an outage.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Waits on `condvar` until `ready` holds for the value `guard` protects, even if a thread
/// panicked while holding the lock (for the reason [`lock`] gives).
pub(crate) fn wait_until<'a, T>(
    condvar: &Condvar,
    guard: MutexGuard<'a, T>,
    mut ready: impl FnMut(&T) -> bool,
) -> MutexGuard<'a, T> {
    condvar
        .wait_while(guard, |value| !ready(value))
        .unwrap_or_else(PoisonError::into_inner)
}

/// Items handed to a background thread in batches. The first item of a batch wakes the
/// thread, which lets others join it for a while before dealing with them all: a wake-up per
/// item would cost more than the work. The thread sleeps while nothing is queued, so an idle
/// proxy does not wake it.
pub(crate) struct Batches<T> {
    pending: Mutex<Vec<T>>,
    arrived: Condvar,
    /// Set by [`Batches::close`]: the thread handles what is left and ends.
    closed: AtomicBool,
}

impl<T: Send + 'static> Batches<T> {
    pub(crate) fn new(pending: Vec<T>) -> Arc<Self> {
        Arc::new(Batches {
            pending: Mutex::new(pending),
            arrived: Condvar::new(),
            closed: AtomicBool::new(false),
        })
    }

    /// Changes the current batch with `add`, waking the thread if that started a batch.
    pub(crate) fn add<R>(&self, add: impl FnOnce(&mut Vec<T>) -> R) -> R {
        let mut pending = lock(&self.pending);
        let was_empty = pending.is_empty();
        let result = add(&mut pending);
        let started = was_empty && !pending.is_empty();
        drop(pending);
        if started {
            self.arrived.notify_one();
        }
        result
    }

    /// The current batch; an empty one takes its place.
    pub(crate) fn take(&self) -> Vec<T> {
        std::mem::take(&mut *lock(&self.pending))
    }

    /// Ends the thread once it has handled what is queued.
    pub(crate) fn close(&self) {
        // Set under the lock, so that the thread cannot miss it between its check and its wait.
        let pending = lock(&self.pending);
        self.closed.store(true, Ordering::Release);
        drop(pending);
        self.arrived.notify_all();
    }

    /// Keeps a spent batch's allocation for the next batch, unless one has started already.
    pub(crate) fn recycle(&self, mut spent: Vec<T>) {
        spent.clear();
        let mut pending = lock(&self.pending);
        if pending.is_empty() {
            *pending = spent;
        }
    }

    /// Starts the thread `name`: once an item arrives, it waits `gather` for more, then
    /// calls `handle`, which takes the batch (through [`Batches::take`]) and deals with it.
    pub(crate) fn spawn_handler(
        self: &Arc<Self>,
        name: &str,
        gather: Duration,
        mut handle: impl FnMut(&Batches<T>) + Send + 'static,
    ) -> std::io::Result<()> {
        let batches = self.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || loop {
                drop(wait_until(
                    &batches.arrived,
                    lock(&batches.pending),
                    |pending| !pending.is_empty() || batches.closed.load(Ordering::Acquire),
                ));
                if batches.closed.load(Ordering::Acquire) {
                    handle(&batches);
                    return;
                }
                std::thread::sleep(gather);
                handle(&batches);
            })
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handler_wakes_for_a_batch_and_gets_every_item() {
        let batches = Batches::new(Vec::new());
        let (handled, received) = std::sync::mpsc::channel();
        batches
            .spawn_handler("test-batches", Duration::from_millis(5), move |batches| {
                let _ = handled.send(batches.take());
            })
            .unwrap();
        for item in 0..3 {
            batches.add(|pending| pending.push(item));
        }
        let mut items = Vec::new();
        while items.len() < 3 {
            items.extend(received.recv_timeout(Duration::from_secs(30)).unwrap());
        }
        assert_eq!(items, [0, 1, 2]);
    }

    #[test]
    fn a_closed_batch_ends_its_thread_after_handling_what_is_left() {
        let batches = Batches::new(Vec::new());
        let (handled, received) = std::sync::mpsc::channel();
        batches
            .spawn_handler("test-close", Duration::from_millis(5), move |batches| {
                let _ = handled.send(batches.take());
            })
            .unwrap();
        batches.add(|pending| pending.push(7));
        batches.close();
        let mut items = Vec::new();
        // The sender is dropped when the thread ends.
        loop {
            match received.recv_timeout(Duration::from_secs(30)) {
                Ok(batch) => items.extend(batch),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("the thread goes on"),
            }
        }
        assert_eq!(items, [7]);
    }

    #[test]
    fn a_spent_batch_is_reused_only_while_no_new_one_has_started() {
        let batches: Arc<Batches<u8>> = Batches::new(Vec::new());
        batches.recycle(Vec::with_capacity(100));
        assert!(batches.take().capacity() >= 100);
        batches.add(|pending| pending.push(1));
        batches.recycle(vec![9; 100]);
        assert_eq!(batches.take(), [1]);
    }
}
