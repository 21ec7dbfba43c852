//! Locking shared by every room.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// Locks `mutex` even if a thread panicked while holding it. For state that stays consistent
/// between statements (every caller's case): failing every later request because one panicked
/// would turn a bug into an outage.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Waits on `condvar` until `ready` holds for the value `guard` protects, even if a thread
/// panicked while holding the lock (for the reason [`lock`] gives).
pub fn wait_until<'a, T>(
    condvar: &Condvar,
    guard: MutexGuard<'a, T>,
    mut ready: impl FnMut(&T) -> bool,
) -> MutexGuard<'a, T> {
    condvar
        .wait_while(guard, |value| !ready(value))
        .unwrap_or_else(PoisonError::into_inner)
}
