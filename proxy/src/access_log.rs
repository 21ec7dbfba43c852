//! One structured line per request: JSON on stdout (or stderr, or a file), written in batches.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::AccessLog;
use crate::metrics;
use crate::sync::{lock, Batches};

/// What one access-log line says.
#[derive(Debug)]
pub(crate) struct Entry<'a> {
    pub time: SystemTime,
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
    /// Written as `duration_ms`, in milliseconds with microsecond precision.
    pub duration: Duration,
    /// Why the request failed, when edgeward answered with an error.
    pub error: Option<&'a str>,
    /// What the upstream's failure was, in words (a TLS verification error, say).
    pub error_detail: Option<&'a str>,
    /// The `access_log_properties` filters set, by name.
    pub properties: &'a [(&'a str, String)],
}

/// The longest property value a line shows; longer ones are cut (at a character boundary).
const MAX_PROPERTY_VALUE: usize = 256;

/// Where lines go. Requests append to a shared buffer; a background thread writes it out
/// [`FLUSH_INTERVAL`] after its first line, so a crash loses at most that much. The thread
/// sleeps while nothing is buffered: an idle proxy does not wake it.
#[derive(Clone, Default)]
pub(crate) struct AccessLogger(Option<Arc<Sink>>);

/// How long the first buffered line waits for others to join it in one write.
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_millis(10);
/// Buffered bytes beyond which lines are dropped (and counted) rather than held: the target
/// is not keeping up, and memory must stay bounded.
const MAX_PENDING: usize = 8 << 20;

struct Sink {
    pending: Arc<Batches<u8>>,
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
    pub(crate) fn open(target: &AccessLog) -> std::io::Result<Self> {
        let target = match target {
            AccessLog::Off => return Ok(AccessLogger(None)),
            AccessLog::Stdout => Target::Stdout,
            AccessLog::Stderr => Target::Stderr,
            AccessLog::File(path) => {
                Target::File(OpenOptions::new().create(true).append(true).open(path)?)
            }
        };
        let sink = Arc::new(Sink {
            pending: Batches::new(Vec::with_capacity(64 << 10)),
            target: Mutex::new(target),
        });
        let writer = sink.clone();
        sink.pending
            .spawn_handler("access-log", FLUSH_INTERVAL, move |_| writer.flush())?;
        Ok(AccessLogger(Some(sink)))
    }

    pub(crate) fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Queues one line; lines from concurrent requests never interleave.
    pub(crate) fn write(&self, entry: &Entry<'_>) {
        let Some(sink) = &self.0 else { return };
        LINE.with_borrow_mut(|line| {
            line.clear();
            entry.encode(line);
            line.push(b'\n');
            let kept = sink.pending.add(|pending| {
                let fits = pending.len() + line.len() <= MAX_PENDING;
                if fits {
                    pending.extend_from_slice(line);
                }
                fits
            });
            if !kept {
                metrics::global().access_log_dropped.inc();
            }
        });
    }

    /// Writes out what is buffered (at shutdown; the writer thread does it otherwise).
    pub(crate) fn flush(&self) {
        if let Some(sink) = &self.0 {
            sink.flush();
        }
    }
}

impl Sink {
    fn flush(&self) {
        let mut target = lock(&self.target);
        let lines = self.pending.take();
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
        if lines.capacity() <= 1 << 20 {
            self.pending.recycle(lines);
        }
    }
}

/// A value in an access-log line.
enum Field<'a> {
    Str(&'a str),
    OptStr(Option<&'a str>),
    Addr(Option<SocketAddr>),
    Int(u64),
}

/// `,"name":` as one literal (names need no escaping): one copy per key.
macro_rules! key {
    ($name:literal) => {
        concat!(",\"", $name, "\":")
    };
}

impl Entry<'_> {
    /// Appends the entry as one JSON object. Written by hand rather than through serde: this
    /// runs for every request, and serde_json's generic path (maps, `Display` for addresses,
    /// shortest-float formatting) costs several times as much.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"time\":\"");
        write_rfc3339(out, self.time);
        out.push(b'"');
        let fields = [
            (key!("request_id"), Field::Str(self.request_id)),
            (key!("client"), Field::Addr(self.client)),
            (key!("protocol"), Field::Str(self.protocol)),
            (key!("method"), Field::Str(self.method)),
            (key!("host"), Field::Str(self.host)),
            (key!("path"), Field::Str(self.path)),
            (key!("status"), Field::Int(u64::from(self.status))),
            (key!("bytes_sent"), Field::Int(self.bytes_sent as u64)),
            (
                key!("bytes_received"),
                Field::Int(self.bytes_received as u64),
            ),
            (key!("route"), Field::OptStr(self.route)),
            (key!("upstream"), Field::OptStr(self.upstream)),
            (key!("endpoint"), Field::Addr(self.endpoint)),
        ];
        for (key, value) in fields {
            out.extend_from_slice(key.as_bytes());
            match value {
                Field::Str(text) => write_str(out, text),
                Field::OptStr(Some(text)) => write_str(out, text),
                Field::OptStr(None) | Field::Addr(None) => out.extend_from_slice(b"null"),
                Field::Addr(Some(addr)) => write_addr(out, addr),
                Field::Int(value) => write_int(out, value),
            }
        }
        out.extend_from_slice(key!("duration_ms").as_bytes());
        let micros = self.duration.as_micros();
        write_int(out, u64::try_from(micros / 1000).unwrap_or(u64::MAX));
        out.push(b'.');
        write_digits(out, (micros % 1000) as u32, 3);
        if let Some(error) = self.error {
            out.extend_from_slice(key!("error").as_bytes());
            write_str(out, error);
        }
        if let Some(detail) = self.error_detail {
            out.extend_from_slice(key!("error_detail").as_bytes());
            write_str(out, detail);
        }
        if !self.properties.is_empty() {
            out.extend_from_slice(key!("properties").as_bytes());
            for (n, (name, value)) in self.properties.iter().enumerate() {
                out.push(if n == 0 { b'{' } else { b',' });
                write_str(out, name);
                out.push(b':');
                let mut end = value.len().min(MAX_PROPERTY_VALUE);
                while !value.is_char_boundary(end) {
                    end -= 1;
                }
                write_str(out, &value[..end]);
            }
            out.push(b'}');
        }
        out.push(b'}');
    }
}

/// A JSON string: quotes, backslashes and control characters escaped, everything else
/// (UTF-8 included) as it is.
fn write_str(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    let bytes = text.as_bytes();
    let mut plain_from = 0;
    let first = first_to_escape(bytes);
    for (i, &byte) in bytes.iter().enumerate().skip(first) {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[plain_from..i]);
        plain_from = i + 1;
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
    }
    out.extend_from_slice(&bytes[plain_from..]);
    out.push(b'"');
}

/// Where the first byte that JSON must escape (a control character, `"` or `\`) is, or the
/// length: eight bytes at a time, since most values need no escape at all.
fn first_to_escape(bytes: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // A byte's high bit in the result is set where the byte is zero (exact for "any").
    let zero_at = |word: u64| word.wrapping_sub(ONES) & !word & HIGHS;
    let mut words = 0;
    for chunk in bytes.chunks_exact(8) {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGHS;
        let quote = zero_at(word ^ (ONES * u64::from(b'"')));
        let backslash = zero_at(word ^ (ONES * u64::from(b'\\')));
        if below_space | quote | backslash != 0 {
            break;
        }
        words += 1;
    }
    let from = words * 8;
    bytes[from..]
        .iter()
        .position(|&byte| byte < 0x20 || byte == b'"' || byte == b'\\')
        .map_or(bytes.len(), |at| from + at)
}

/// `"192.0.2.1:443"` or `"[2001:db8::1]:443"`.
fn write_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(v4) => {
            out.push(b'"');
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                write_int(out, u64::from(octet));
            }
            out.push(b':');
            write_int(out, u64::from(v4.port()));
            out.push(b'"');
        }
        // Rare enough on the hot path to go through `Display`.
        SocketAddr::V6(v6) => {
            let _ = write!(out, "\"{v6}\"");
        }
    }
}

fn write_int(out: &mut Vec<u8>, value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = value;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// `value` in exactly `width` digits, zero-padded (the higher digits dropped).
fn write_digits(out: &mut Vec<u8>, value: u32, width: usize) {
    let mut rest = value;
    let start = out.len();
    out.resize(start + width, b'0');
    for slot in out[start..].iter_mut().rev() {
        *slot = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
}

thread_local! {
    /// The second last formatted on this thread and its `YYYY-MM-DDTHH:MM:SS.` text: lines
    /// of the same second only add their milliseconds.
    static SECOND: std::cell::Cell<(u64, [u8; 20])> = const { std::cell::Cell::new((u64::MAX, [0; 20])) };
}

/// RFC 3339 UTC time with milliseconds, e.g. `2026-11-24T03:17:05.123Z`.
fn write_rfc3339(out: &mut Vec<u8>, time: SystemTime) {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since_epoch.as_secs();
    let (cached_secs, mut prefix) = SECOND.get();
    if cached_secs != secs {
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (year, month, day) = civil_from_days(days as i64);
        let mut text = Vec::with_capacity(20);
        let fields = [
            (year.clamp(0, 9999) as u32, 4, b'-'),
            (month, 2, b'-'),
            (day, 2, b'T'),
            ((rem / 3600) as u32, 2, b':'),
            ((rem % 3600 / 60) as u32, 2, b':'),
            ((rem % 60) as u32, 2, b'.'),
        ];
        for (value, width, then) in fields {
            write_digits(&mut text, value, width);
            text.push(then);
        }
        prefix.copy_from_slice(&text);
        SECOND.set((secs, prefix));
    }
    out.extend_from_slice(&prefix);
    write_digits(out, since_epoch.subsec_millis(), 3);
    out.push(b'Z');
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

    fn rfc3339(time: SystemTime) -> String {
        let mut out = Vec::new();
        write_rfc3339(&mut out, time);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_916_225_123);
        assert_eq!(rfc3339(t), "2026-11-29T01:37:05.123Z");
        // The same second again comes from the cached prefix.
        let later = UNIX_EPOCH + Duration::from_millis(1_795_916_225_987);
        assert_eq!(rfc3339(later), "2026-11-29T01:37:05.987Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    fn entry<'a>() -> Entry<'a> {
        Entry {
            time: UNIX_EPOCH + Duration::from_millis(1_795_916_225_123),
            request_id: "0123456789abcdef",
            client: Some("192.0.2.7:50123".parse().unwrap()),
            protocol: "HTTP/1.1",
            method: "GET",
            host: "example.com",
            path: "/a?b=c",
            status: 200,
            bytes_sent: 1024,
            bytes_received: 0,
            route: Some("demo"),
            upstream: None,
            endpoint: Some("[2001:db8::1]:8080".parse().unwrap()),
            duration: Duration::from_micros(12_034),
            error: None,
            error_detail: None,
            properties: &[],
        }
    }

    fn decoded(entry: &Entry<'_>) -> serde_json::Value {
        let mut line = Vec::new();
        entry.encode(&mut line);
        serde_json::from_slice(&line).unwrap()
    }

    #[test]
    fn an_entry_is_one_json_object_with_every_field() {
        let json = decoded(&entry());
        assert_eq!(
            json,
            serde_json::json!({
                "time": "2026-11-29T01:37:05.123Z",
                "request_id": "0123456789abcdef",
                "client": "192.0.2.7:50123",
                "protocol": "HTTP/1.1",
                "method": "GET",
                "host": "example.com",
                "path": "/a?b=c",
                "status": 200,
                "bytes_sent": 1024,
                "bytes_received": 0,
                "route": "demo",
                "upstream": null,
                "endpoint": "[2001:db8::1]:8080",
                "duration_ms": 12.034,
            })
        );
        let failed = Entry {
            error: Some("upstream_unavailable"),
            error_detail: Some("ConnectRefused context: \"refused\""),
            client: None,
            duration: Duration::from_nanos(999),
            ..entry()
        };
        let json = decoded(&failed);
        assert_eq!(json["error"], "upstream_unavailable");
        assert_eq!(json["error_detail"], "ConnectRefused context: \"refused\"");
        assert_eq!(json["client"], serde_json::Value::Null);
        assert_eq!(json["duration_ms"], 0.0);
    }

    #[test]
    fn properties_filters_set_are_shown_cut_to_their_longest() {
        let long = "é".repeat(MAX_PROPERTY_VALUE);
        let properties = [("ab-test.bucket", "b".to_string()), ("note", long)];
        let json = decoded(&Entry {
            properties: &properties,
            ..entry()
        });
        assert_eq!(json["properties"]["ab-test.bucket"], "b");
        let note = json["properties"]["note"].as_str().unwrap();
        assert_eq!(note, "é".repeat(MAX_PROPERTY_VALUE / 2));
        assert!(decoded(&entry()).get("properties").is_none());
    }

    #[test]
    fn strings_from_the_client_are_escaped() {
        let nasty = "/\"quoted\"\\back\nline\r\t\u{1}\u{1f}\u{7f}é日本";
        let json = decoded(&Entry {
            path: nasty,
            host: "\"",
            ..entry()
        });
        assert_eq!(json["path"], nasty);
        assert_eq!(json["host"], "\"");
    }

    #[test]
    fn escapes_are_found_wherever_they_fall_in_a_word() {
        for special in ['"', '\\', '\n', '\u{0}', '\u{1f}'] {
            for at in 0..20 {
                let mut text: String = "abcdefghijklmnopqrstuvwx".chars().take(at).collect();
                text.push(special);
                text.push_str("é~\u{7f}tail");
                let mut out = Vec::new();
                write_str(&mut out, &text);
                let back: String = serde_json::from_slice(&out).unwrap();
                assert_eq!(back, text, "{special:?} at {at}");
            }
        }
        assert_eq!(first_to_escape(b"plain ascii, no escapes \x7f\xff"), 26);
    }
}
