//! Guest CPU time, measured cheaply enough for the hot path.
//!
//! The thread's CPU clock is what `limits.cpu` is about, but reading it is a system call, too
//! dear for every guest callback. So each thread keeps a checkpoint
//! (wall time, thread CPU time) refreshed at most once per [`CHECKPOINT_EVERY`], and a
//! [`CpuMeter`] started at a callback reads the clock only when the callback has run long
//! enough for it to matter: at the epoch deadline, and at the end of long callbacks.
//!
//! The CPU a callback used since it started is at least the thread's CPU time since the
//! checkpoint minus the wall time between checkpoint and start (the thread cannot have used
//! more CPU than that before the callback). That lower bound is what limits are checked
//! against, so a guest is stopped only when it provably used its budget: a thread the kernel
//! left waiting on a busy machine is not mistaken for a looping guest.

use std::cell::Cell;
use std::time::{Duration, Instant};

use nix::time::{clock_gettime, ClockId};

/// How stale a thread's checkpoint may get; also the most a lower bound under-counts.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(1);

/// Callbacks shorter than this are accounted by wall time (an upper bound, and close: a short
/// callback is rarely descheduled); longer ones by the thread's CPU clock.
const PRECISE_AFTER: Duration = Duration::from_millis(1);

#[derive(Clone, Copy)]
struct Checkpoint {
    wall: Instant,
    cpu: Duration,
}

thread_local! {
    static CHECKPOINT: Cell<Option<Checkpoint>> = const { Cell::new(None) };
}

/// The calling thread's CPU time; `None` where the clock is unavailable.
fn thread_cpu() -> Option<Duration> {
    let now = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).ok()?;
    Some(Duration::from(now))
}

/// Measures one stretch of guest work on the current thread.
#[derive(Clone, Copy)]
pub(crate) struct CpuMeter {
    started: Instant,
    checkpoint: Option<Checkpoint>,
}

impl CpuMeter {
    pub(crate) fn start() -> CpuMeter {
        let started = Instant::now();
        let checkpoint = CHECKPOINT.with(|cell| {
            let fresh = cell
                .get()
                .filter(|c| started.duration_since(c.wall) < CHECKPOINT_EVERY);
            let checkpoint = fresh.or_else(|| {
                Some(Checkpoint {
                    wall: Instant::now(),
                    cpu: thread_cpu()?,
                })
            });
            cell.set(checkpoint);
            checkpoint
        });
        CpuMeter {
            started,
            checkpoint,
        }
    }

    /// CPU time used since [`CpuMeter::start`], never over-counted: the lower bound from the
    /// thread clock (wall time where the clock is unavailable).
    pub(crate) fn used_at_least(&self) -> Duration {
        let wall = self.started.elapsed();
        let (Some(checkpoint), Some(now)) = (self.checkpoint, thread_cpu()) else {
            return wall;
        };
        let before_start = self.started.saturating_duration_since(checkpoint.wall);
        now.saturating_sub(checkpoint.cpu)
            .saturating_sub(before_start)
            .min(wall)
    }

    /// CPU time to account for the work: wall time for short work, where it is nearly exact
    /// and free, else [`CpuMeter::used_at_least`].
    pub(crate) fn used(&self) -> Duration {
        self.elapsed_and_used().1
    }

    /// The wall time since [`CpuMeter::start`] and [`CpuMeter::used`], from one reading of
    /// the clock for short work.
    pub(crate) fn elapsed_and_used(&self) -> (Duration, Duration) {
        let wall = self.started.elapsed();
        let used = if wall < PRECISE_AFTER {
            wall
        } else {
            self.used_at_least()
        };
        (wall, used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs until the thread has used `cpu` of CPU time, however long that takes.
    fn spin(cpu: Duration) {
        let start = thread_cpu().unwrap();
        while thread_cpu().unwrap() - start < cpu {
            std::hint::black_box(0u64);
        }
    }

    #[test]
    fn busy_work_is_counted() {
        let meter = CpuMeter::start();
        spin(Duration::from_millis(20));
        let used = meter.used_at_least();
        // Under-counted by at most one checkpoint interval, never over the wall time.
        assert!(
            used >= Duration::from_millis(20) - CHECKPOINT_EVERY,
            "{used:?}"
        );
        assert!(used <= meter.started.elapsed());
        assert!(
            meter.used() >= used,
            "long work is accounted by the thread clock"
        );
    }

    #[test]
    fn sleeping_is_not_counted() {
        let meter = CpuMeter::start();
        std::thread::sleep(Duration::from_millis(30));
        assert!(meter.used_at_least() < Duration::from_millis(15));
        assert!(meter.used() < Duration::from_millis(15));
    }

    #[test]
    fn work_before_the_start_is_not_counted() {
        // Burn CPU right after a fresh checkpoint, then start: the bound excludes it.
        let _ = CpuMeter::start();
        let started = Instant::now();
        while started.elapsed() < Duration::from_micros(900) {
            std::hint::black_box(0u64);
        }
        let meter = CpuMeter::start();
        std::thread::sleep(Duration::from_millis(5));
        assert!(meter.used_at_least() < Duration::from_millis(2));
    }
}
