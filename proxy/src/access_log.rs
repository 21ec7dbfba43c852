//! One structured line per request: JSON on stdout (or stderr, or a file).

use std::fs::{File, OpenOptions};
use std::io::{LineWriter, Write};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::AccessLog;

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

pub enum AccessLogger {
    Off,
    Stdout,
    Stderr,
    File(Mutex<LineWriter<File>>),
}

impl AccessLogger {
    pub fn open(target: &AccessLog) -> std::io::Result<Self> {
        Ok(match target {
            AccessLog::Off => AccessLogger::Off,
            AccessLog::Stdout => AccessLogger::Stdout,
            AccessLog::Stderr => AccessLogger::Stderr,
            AccessLog::File(path) => AccessLogger::File(Mutex::new(LineWriter::new(
                OpenOptions::new().create(true).append(true).open(path)?,
            ))),
        })
    }

    pub fn is_on(&self) -> bool {
        !matches!(self, AccessLogger::Off)
    }

    /// Writes the line in one call, so lines from concurrent requests never interleave.
    pub fn write(&self, entry: &Entry<'_>) {
        let mut line = match serde_json::to_vec(entry) {
            Ok(line) => line,
            Err(e) => {
                log::error!("cannot encode access log entry: {e}");
                return;
            }
        };
        line.push(b'\n');
        let result = match self {
            AccessLogger::Off => Ok(()),
            AccessLogger::Stdout => std::io::stdout().lock().write_all(&line),
            AccessLogger::Stderr => std::io::stderr().lock().write_all(&line),
            AccessLogger::File(file) => match file.lock() {
                Ok(mut file) => file.write_all(&line),
                Err(_) => Ok(()),
            },
        };
        if let Err(e) = result {
            log::warn!("cannot write access log: {e}");
        }
    }
}

/// RFC 3339 UTC time with milliseconds, e.g. `2026-11-24T03:17:05.123Z`.
pub fn rfc3339(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since_epoch.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since_epoch.subsec_millis()
    )
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
