//! Drops per-request instances on a thread of its own: resetting an instance's memory takes
//! microseconds that no request should wait for.

use std::sync::Arc;
use std::time::Duration;

use super::error::WasmError;
use super::instance::SharedInstance;
use crate::sync::Batches;

/// How long the reaper lets finished instances gather before dropping them.
const REAP_INTERVAL: Duration = Duration::from_millis(1);

/// Where finished per-request instances wait for the reaper thread. The thread ends when the
/// last clone is dropped (a reload's old filters are gone).
#[derive(Clone)]
pub(crate) struct Reaper {
    pending: Arc<Batches<SharedInstance>>,
    _thread: Arc<ReaperThread>,
}

/// Closes the reaper's batches when dropped, which ends its thread.
struct ReaperThread(Arc<Batches<SharedInstance>>);

impl Drop for ReaperThread {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl Reaper {
    /// Starts the reaper thread.
    pub(crate) fn spawn() -> Result<Reaper, WasmError> {
        let pending = Batches::new(Vec::new());
        pending
            .spawn_handler("wasm-reaper", REAP_INTERVAL, |batches| drop(batches.take()))
            .map_err(|e| WasmError::Thread("instance reaper", e))?;
        Ok(Reaper {
            _thread: Arc::new(ReaperThread(pending.clone())),
            pending,
        })
    }

    pub(crate) fn reap(&self, instance: SharedInstance) {
        self.pending.add(|waiting| waiting.push(instance));
    }

    /// Drops the instances waiting for the thread on the calling thread, which frees their
    /// pool slots at once.
    pub(crate) fn drop_pending(&self) {
        drop(self.pending.take());
    }
}
