//! One structured line per request: JSON on stdout (or stderr, or a file), written in batches.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::AccessLog;
use crate::metrics;
use crate::sync::lock;

/// What one access-log line says.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    pub time: String,
    pub request_id: &'a str,
    pub client: Option<SocketAddr>,
    pub protocol: &'a str,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub status: u16,
    /// Response body bytes sent to the client.
    pub bytes_sent: usize,
    /// Request body bytes read from the client.
    pub bytes_received: usize,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub endpoint: Option<SocketAddr>,
    pub duration_ms: f64,
    /// Why the request failed, when edgeward answered with an error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
}

/// Where lines go. Requests append to a shared buffer (no system call on the request path); a
/// background thread writes it out every [`FLUSH_INTERVAL`], so a crash loses at most that much.
#[derive(Clone, Default)]
pub struct AccessLogger(Option<Arc<Sink>>);

/// How often buffered lines are written.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(10);
/// Buffered bytes beyond which lines are dropped (and counted) rather than held: the target
/// is not keeping up, and memory must stay bounded.
const MAX_PENDING: usize = 8 << 20;

struct Sink {
    pending: Mutex<Vec<u8>>,
    /// Held while writing, so that a shutdown flush and the writer thread keep lines in order.
    target: Mutex<Target>,
}

enum Target {
    Stdout,
    Stderr,
    File(File),
}

thread_local! {
    /// Each worker thread encodes its lines here, outside the shared buffer's lock.
    static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl AccessLogger {
    /// Opens the target and starts the writer thread.
    pub fn open(target: &AccessLog) -> std::io::Result<Self> {
        let target = match target {
            AccessLog::Off => return Ok(AccessLogger(None)),
            AccessLog::Stdout => Target::Stdout,
            AccessLog::Stderr => Target::Stderr,
            AccessLog::File(path) => {
                Target::File(OpenOptions::new().create(true).append(true).open(path)?)
            }
        };
        let sink = Arc::new(Sink {
            pending: Mutex::new(Vec::with_capacity(64 << 10)),
            target: Mutex::new(target),
        });
        let writer = sink.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || loop {
                std::thread::sleep(FLUSH_INTERVAL);
                writer.flush();
            })?;
        Ok(AccessLogger(Some(sink)))
    }

    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Queues one line; lines from concurrent requests never interleave.
    pub fn write(&self, entry: &Entry<'_>) {
        let Some(sink) = &self.0 else { return };
        LINE.with_borrow_mut(|line| {
            line.clear();
            if let Err(e) = serde_json::to_writer(&mut *line, entry) {
                log::error!("cannot encode access log entry: {e}");
                return;
            }
            line.push(b'\n');
            let mut pending = lock(&sink.pending);
            if pending.len() + line.len() > MAX_PENDING {
                metrics::global().access_log_dropped.inc();
                return;
            }
            pending.extend_from_slice(line);
        });
    }

    /// Writes out what is buffered (at shutdown; the writer thread does it otherwise).
    pub fn flush(&self) {
        if let Some(sink) = &self.0 {
            sink.flush();
        }
    }
}

impl Sink {
    fn flush(&self) {
        let mut target = lock(&self.target);
        let lines = std::mem::take(&mut *lock(&self.pending));
        if lines.is_empty() {
            return;
        }
        let result = match &mut *target {
            Target::Stdout => std::io::stdout().lock().write_all(&lines),
            Target::Stderr => std::io::stderr().lock().write_all(&lines),
            Target::File(file) => file.write_all(&lines),
        };
        if let Err(e) = result {
            log::warn!("cannot write access log: {e}");
        }
        // Keep the allocation for the next round, unless a burst made it large.
        let mut pending = lock(&self.pending);
        if pending.is_empty() && lines.capacity() <= 1 << 20 {
            let mut lines = lines;
            lines.clear();
            *pending = lines;
        }
    }
}

/// RFC 3339 UTC time with milliseconds, e.g. `2026-11-24T03:17:05.123Z`.
pub fn rfc3339(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since_epoch.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    // Digit by digit: this runs for every access-log line, where `format!` cost ten times more.
    let mut out = String::with_capacity(24);
    let fields = [
        (year.clamp(0, 9999) as u32, 4, '-'),
        (month, 2, '-'),
        (day, 2, 'T'),
        ((rem / 3600) as u32, 2, ':'),
        ((rem % 3600 / 60) as u32, 2, ':'),
        ((rem % 60) as u32, 2, '.'),
        (since_epoch.subsec_millis(), 3, 'Z'),
    ];
    for (value, width, then) in fields {
        for place in (0..width).rev() {
            let digit = (value / 10u32.pow(place) % 10) as u8;
            out.push(char::from(b'0' + digit));
        }
        out.push(then);
    }
    out
}

/// Days since 1970-01-01 → (year, month, day), after Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_916_225_123);
        assert_eq!(rfc3339(t), "2026-11-29T01:37:05.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
