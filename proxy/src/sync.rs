//! Locking shared by every room.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex` even if a thread panicked while holding it. For state that stays consistent
/// between statements (every caller's case): failing every later request because one panicked
/// would turn a bug into an outage.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
