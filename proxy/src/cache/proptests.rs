//! Property-based tests of the cache's pure parts: what `policy` decides about any response
//! (RFC 9111 admission, freshness, `Age`, `Vary`, HTTP dates, 304 updates), the keys `key`
//! builds and the `Cache-Status` values `status` writes. Whatever the heads say (directives
//! in any case, with any values and whitespace, fields repeated, dates and ages of any
//! shape), nothing panics and the rules the code documents hold. `make test` runs a few cases
//! of each property; `make fuzz` runs many (`PROPTEST_CASES`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::cache::cache_control::DELTA_SECONDS_OVERFLOW_VALUE;
use pingora::cache::key::CacheHashKey;
use pingora::cache::{CachePhase, NoCacheReason, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use proptest::prelude::*;

use super::key::{cache_key, cookie, ObjectUrl};
use super::meta::SerializedMeta;
use super::policy::{self, Decision, Defaults, SkipReason};
use super::status::Outcome;
use super::{admission, ttl};
use crate::config::proptests::proptest_config;
use crate::config::{KeyPart, RouteCache};

/// The most a delta-seconds value (`max-age`, `Age`, ...) counts for.
const CAP: Duration = Duration::from_secs(DELTA_SECONDS_OVERFLOW_VALUE as u64);
/// More than any `Expires` minus `Date` can be: HTTP-dates have four-digit years.
const TEN_THOUSAND_YEARS: Duration = Duration::from_secs(10_000 * 366 * 86_400);
/// `Tue, 14 Nov 2023 22:13:20 GMT`, the clock of the decisions.
const NOW_SECS: u64 = 1_700_000_000;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW_SECS)
}

// ---------------------------------------------------------------------------------------------
// Heads
// ---------------------------------------------------------------------------------------------

/// One field line: a name and a value (never one `HeaderValue` refuses).
type Line = (String, String);

fn value(text: &str) -> HeaderValue {
    HeaderValue::from_bytes(text.as_bytes()).unwrap_or_else(|_| HeaderValue::from_static("x"))
}

fn request(method: &str, uri: &str, lines: &[Line]) -> RequestHeader {
    let mut req = RequestHeader::build(method, uri.as_bytes(), None)
        .unwrap_or_else(|_| RequestHeader::build("GET", b"/", None).expect("GET /"));
    for (name, text) in lines {
        if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
            req.append_header(name, value(text))
                .expect("a request field");
        }
    }
    req
}

fn response(status: u16, lines: &[Line]) -> ResponseHeader {
    let mut resp = ResponseHeader::build(status, None).expect("a status of 100..=999");
    for (name, text) in lines {
        if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
            resp.append_header(name, value(text))
                .expect("a response field");
        }
    }
    resp
}

fn header_map(lines: &[Line]) -> HeaderMap {
    response(200, lines).headers.clone()
}

/// Any text a field value may hold: visible ASCII, spaces, tabs and non-ASCII.
fn junk() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~\t]{0,24}",
        any::<String>().prop_map(|s| {
            s.chars()
                .filter(|c| *c == '\t' || !c.is_control())
                .take(24)
                .collect()
        }),
    ]
}

/// `text` with each ASCII letter's case flipped where `flips` has a bit set.
fn recase(text: &str, flips: u64) -> String {
    text.chars()
        .enumerate()
        .map(|(i, c)| {
            if flips >> (i % 64) & 1 == 1 {
                if c.is_ascii_lowercase() {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                }
            } else {
                c
            }
        })
        .collect()
}

const DIRECTIVES: &[&str] = &[
    "max-age",
    "s-maxage",
    "no-store",
    "no-cache",
    "private",
    "public",
    "must-revalidate",
    "proxy-revalidate",
    "must-understand",
    "stale-while-revalidate",
    "stale-if-error",
    "no-transform",
    "immutable",
    "community",
];

/// A directive's value as written after `=`: numbers (overflowing too), negative and
/// fractional ones, tokens, and quoted strings, which may hold commas and directive names.
fn directive_value() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        3 => Just(None),
        3 => "[0-9]{1,25}".prop_map(Some),
        1 => "-[0-9]{1,3}".prop_map(Some),
        1 => "[0-9]{1,3}\\.[0-9]{1,2}".prop_map(Some),
        1 => "\"[0-9]{1,12}\"".prop_map(Some),
        1 => "[a-z]{1,6}".prop_map(Some),
        1 => "\"[a-z ,=;-]{0,12}\"".prop_map(Some),
        1 => prop::sample::select(DIRECTIVES).prop_map(|d| Some(format!("\"set-cookie, {d}\""))),
    ]
}

/// `name` in any letter case, with any value.
fn directive_named(name: &'static str) -> impl Strategy<Value = String> {
    (any::<u64>(), directive_value()).prop_map(move |(flips, value)| {
        let name = recase(name, flips);
        match value {
            Some(value) => format!("{name}={value}"),
            None => name,
        }
    })
}

/// Any directive of `names`.
fn directive_of(names: Vec<&'static str>) -> impl Strategy<Value = String> {
    prop::sample::select(names).prop_flat_map(directive_named)
}

fn separator() -> impl Strategy<Value = &'static str> {
    prop::sample::select(&[", ", ",", " , ", ";", ",\t", "  ,  ", ", ,"][..])
}

/// Whitespace a field line may start or end with (HTTP/1 parsers drop it; HTTP/2 and a
/// filter's header writes can keep it).
fn padding() -> impl Strategy<Value = &'static str> {
    prop::sample::select(&["", "", "", " ", "\t", "  "][..])
}

/// `directives` written as the lines of field `name`: split at random, separated and padded
/// at random.
fn field_lines(name: &'static str, directives: Vec<String>) -> impl Strategy<Value = Vec<Line>> {
    let count = directives.len();
    (
        prop::collection::vec(separator(), count),
        prop::collection::vec(any::<bool>(), count),
        prop::collection::vec((padding(), padding()), count + 1),
    )
        .prop_map(move |(separators, breaks, pads)| {
            let mut lines = Vec::new();
            let mut line = String::new();
            for (i, directive) in directives.iter().enumerate() {
                if i > 0 {
                    if breaks[i] {
                        lines.push(std::mem::take(&mut line));
                    } else {
                        line.push_str(separators[i]);
                    }
                }
                line.push_str(directive);
            }
            lines.push(line);
            lines
                .into_iter()
                .enumerate()
                .map(|(i, line)| {
                    let (before, after) = pads[i.min(pads.len() - 1)];
                    (name.to_string(), format!("{before}{line}{after}"))
                })
                .collect()
        })
}

/// A control field whose directives include `required` (in any case, with any value), among
/// `count` others drawn from `others`.
fn field_with(
    name: &'static str,
    required: &'static str,
    others: Vec<&'static str>,
) -> impl Strategy<Value = Vec<Line>> {
    (
        directive_named(required),
        prop::collection::vec(directive_of(others), 0..5),
        any::<prop::sample::Index>(),
    )
        .prop_flat_map(move |(required, mut directives, at)| {
            let at = at.index(directives.len() + 1);
            directives.insert(at, required);
            field_lines(name, directives)
        })
}

/// A control field of any directives, or junk.
fn any_field(name: &'static str) -> impl Strategy<Value = Vec<Line>> {
    prop_oneof![
        4 => prop::collection::vec(directive_of(DIRECTIVES.to_vec()), 0..6)
            .prop_flat_map(move |directives| field_lines(name, directives)),
        1 => junk().prop_map(move |text| vec![(name.to_string(), text)]),
    ]
}

/// Directives that change neither whether nor how long a response is stored.
const HARMLESS: &[&str] = &[
    "public",
    "immutable",
    "no-transform",
    "community",
    "stale-if-error",
];

/// A control field that says `no-store`, among any directives but `must-understand`.
fn no_store_field(name: &'static str) -> impl Strategy<Value = Vec<Line>> {
    field_with(name, "no-store", others(&["must-understand"]))
}

/// A control field that says `private`, among any directives.
fn private_field(name: &'static str) -> impl Strategy<Value = Vec<Line>> {
    field_with(name, "private", DIRECTIVES.to_vec())
}

fn without_control_fields(lines: Vec<Line>) -> Vec<Line> {
    lines
        .into_iter()
        .filter(|(name, _)| !name.ends_with("control"))
        .collect()
}

/// `DIRECTIVES` but `except`.
fn others(except: &[&str]) -> Vec<&'static str> {
    DIRECTIVES
        .iter()
        .copied()
        .filter(|d| !except.contains(d))
        .collect()
}

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const LONG_DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Seconds since the epoch of 0000-01-01 and of 9999-12-31T23:59:59.
const FIRST_DATE: i64 = -62_167_219_200;
const LAST_DATE: i64 = 253_402_300_799;

/// (year, month 1..=12, day 1..=31, weekday 0 = Monday) of a day count since 1970-01-01
/// (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, usize, i64, usize) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // 1970-01-01 was a Thursday.
    let weekday = (days + 3).rem_euclid(7);
    (year, month as usize, day, weekday as usize)
}

/// The three HTTP-date formats of a time.
#[derive(Debug, Clone, Copy)]
enum DateFormat {
    Imf,
    Rfc850,
    Asctime,
}

fn format_date(secs: i64, format: DateFormat) -> String {
    let (year, month, day, weekday) = civil(secs.div_euclid(86_400));
    let of_day = secs.rem_euclid(86_400);
    let (h, m, s) = (of_day / 3600, of_day / 60 % 60, of_day % 60);
    let month = MONTHS[month - 1];
    match format {
        DateFormat::Imf => {
            format!(
                "{}, {day:02} {month} {year:04} {h:02}:{m:02}:{s:02} GMT",
                DAYS[weekday]
            )
        }
        DateFormat::Rfc850 => format!(
            "{}, {day:02}-{month}-{:02} {h:02}:{m:02}:{s:02} GMT",
            LONG_DAYS[weekday],
            year % 100
        ),
        DateFormat::Asctime => {
            format!(
                "{} {month} {day:>2} {h:02}:{m:02}:{s:02} {year:04}",
                DAYS[weekday]
            )
        }
    }
}

fn time_of(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// A date field's value: a date near now or anywhere in the four-digit years, or junk.
fn date_text() -> impl Strategy<Value = String> {
    let near = (NOW_SECS as i64 - 10 * 365 * 86_400)..(NOW_SECS as i64 + 365 * 86_400);
    prop_oneof![
        3 => near.prop_map(|secs| format_date(secs, DateFormat::Imf)),
        1 => (FIRST_DATE..=LAST_DATE).prop_map(|secs| format_date(secs, DateFormat::Imf)),
        1 => prop::sample::select(
            &[
                "0",
                "-1",
                "Thu, 01 Jan 1970 00:00:00 GMT",
                "Fri, 31 Dec 9999 23:59:59 GMT",
                "Sat, 01 Jan 0000 00:00:00 GMT",
                "Tue, 14 Nov 2023 22:13:20 CET",
                "tue, 14 nov 2023 22:13:20 gmt",
                "Tuesday, 14-Nov-23 22:13:20 GMT",
                "Tue Nov 14 22:13:20 2023",
                "Tue, 14 Nov 2023 22:13:60 GMT",
                "Tue, 31 Feb 2023 22:13:20 GMT",
            ][..]
        )
        .prop_map(str::to_string),
        1 => junk(),
    ]
}

/// An `Age` value: digits (overflowing too), lists and parameters, junk.
fn age_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[0-9]{1,25}",
        1 => ("[0-9]{1,12}", padding(), prop::sample::select(&["", ", 5", ";x=1", ",junk"][..]))
            .prop_map(|(digits, pad, rest)| format!("{pad}{digits}{pad}{rest}")),
        1 => junk(),
    ]
}

/// Entity tags a client may send.
const ETAGS: &[&str] = &["\"v1\"", "W/\"v1\"", "*", "\"v2\", \"v1\""];

const VARIED: &[&str] = &[
    "accept-encoding",
    "accept-language",
    "x-device",
    "cookie",
    "user-agent",
    "origin",
];

fn vary_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        (
            prop_oneof![9 => prop::sample::select(VARIED), 1 => Just("*"), 1 => Just("")],
            any::<u64>(),
        ),
        0..4,
    )
    .prop_map(|names| {
        names
            .into_iter()
            .map(|(name, flips)| recase(name, flips))
            .collect::<Vec<_>>()
            .join(", ")
    })
}

/// Response fields that bear on the cache, with values of their kind or junk.
fn response_lines() -> impl Strategy<Value = Vec<Line>> {
    let one = |name: &'static str, text: BoxedStrategy<String>| {
        prop::collection::vec(text.prop_map(move |text| (name.to_string(), text)), 0..3)
    };
    (
        any_field("cache-control"),
        prop::option::of(any_field("cdn-cache-control")),
        prop::option::of(any_field("surrogate-control")),
        one("expires", date_text().boxed()),
        one("date", date_text().boxed()),
        one("age", age_text().boxed()),
        one("last-modified", date_text().boxed()),
        one("vary", vary_text().boxed()),
        one("set-cookie", junk().boxed()),
        one(
            "etag",
            prop_oneof![Just("\"v1\"".to_string()), junk()].boxed(),
        ),
        one("content-length", prop_oneof!["[0-9]{1,22}", junk()].boxed()),
    )
        .prop_map(
            |(cc, cdn, surrogate, expires, date, age, lm, vary, cookie, etag, length)| {
                [
                    cc,
                    cdn.unwrap_or_default(),
                    surrogate.unwrap_or_default(),
                    expires,
                    date,
                    age,
                    lm,
                    vary,
                    cookie,
                    etag,
                    length,
                ]
                .concat()
            },
        )
}

/// Request fields that bear on the cache.
fn request_lines() -> impl Strategy<Value = Vec<Line>> {
    let field = prop_oneof![
        Just("authorization"),
        Just("if-none-match"),
        Just("if-modified-since"),
        Just("accept-encoding"),
        Just("cookie"),
        Just("x-device"),
    ];
    prop::collection::vec(
        (
            field,
            prop_oneof![date_text(), junk(), Just("\"v1\"".to_string())],
        )
            .prop_map(|(name, text)| (name.to_string(), text)),
        0..4,
    )
}

fn status() -> impl Strategy<Value = u16> {
    prop_oneof![
        3 => prop::sample::select(&[200u16, 203, 204, 206, 301, 304, 404, 410, 500, 503][..]),
        1 => 100u16..=999,
    ]
}

fn method() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        6 => Just("GET"),
        2 => Just("HEAD"),
        1 => Just("POST"),
        1 => Just("PURGE"),
    ]
}

fn seconds_up_to(max: u64) -> impl Strategy<Value = Duration> {
    (0..=max).prop_map(Duration::from_secs)
}

fn defaults() -> impl Strategy<Value = Defaults> {
    (
        prop::option::of(seconds_up_to(10_000_000_000)),
        seconds_up_to(10_000_000_000),
        seconds_up_to(10_000_000_000),
    )
        .prop_map(
            |(default_ttl, stale_while_revalidate, stale_if_error)| Defaults {
                default_ttl,
                stale_while_revalidate,
                stale_if_error,
            },
        )
}

fn route(defaults: &Defaults) -> RouteCache {
    RouteCache {
        default_ttl: defaults.default_ttl,
        key: vec![KeyPart::Host, KeyPart::Path, KeyPart::Query],
        bypass_headers: Vec::new(),
        bypass_cookies: Vec::new(),
        stale_while_revalidate: defaults.stale_while_revalidate,
        stale_if_error: defaults.stale_if_error,
    }
}

/// What the code counts a delta-seconds text of digits for.
fn delta(digits: &str) -> Duration {
    let significant = digits.trim_start_matches('0');
    match significant.parse::<u64>() {
        _ if significant.is_empty() => Duration::ZERO,
        Ok(n) => Duration::from_secs(n).min(CAP),
        Err(_) => CAP,
    }
}

/// Whether the decision stores the response.
fn stored(decision: &Decision) -> bool {
    matches!(decision, Decision::Store(_))
}

// ---------------------------------------------------------------------------------------------
// Admission and freshness
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(proptest_config())]

    /// Any heads: a decision, bounded freshness, and when admitted a meta the store can keep
    /// (serialized and read back as the disk tier does).
    #[test]
    fn any_response_gets_a_bounded_decision_and_a_storable_meta(
        method in method(),
        status in status(),
        response_lines in response_lines(),
        request_lines in request_lines(),
        defaults in defaults(),
    ) {
        let req = request(method, "/a?b=1", &request_lines);
        let resp = response(status, &response_lines);
        let decision = policy::decide(&req, &resp, &defaults, now());
        if let Decision::Store(freshness) = decision {
            let default_ttl = defaults.default_ttl.unwrap_or_default();
            let bound = if resp.headers.contains_key(http::header::EXPIRES) {
                CAP.max(default_ttl).max(TEN_THOUSAND_YEARS)
            } else {
                CAP.max(default_ttl)
            };
            prop_assert!(freshness.fresh_for <= bound, "{:?} > {:?}", freshness, bound);
            let revalidate = CAP.max(defaults.stale_while_revalidate);
            prop_assert!(freshness.stale_while_revalidate <= revalidate);
            prop_assert!(freshness.stale_if_error <= CAP.max(defaults.stale_if_error));
            prop_assert!(!policy::varies_on_everything(&resp.headers));
        }
        let _ = policy::variance(&resp.headers, &req);
        let _ = policy::not_modified(&req, &resp);
        // `admission` reads the clock itself (a date a few nanoseconds from now could tell
        // the two decisions apart; the dates here are whole seconds, years from now).
        let decision = policy::decide(&req, &resp, &defaults, SystemTime::now());
        match admission(&req, &resp, &route(&defaults), u64::MAX) {
            RespCacheable::Cacheable(meta) => {
                prop_assert!(stored(&decision), "admitted but {:?}", decision);
                prop_assert!(meta.fresh_until() >= meta.created());
                prop_assert!(meta.epoch() <= meta.created());
                let cookies = meta.response_header().headers.get(http::header::SET_COOKIE);
                prop_assert!(cookies.is_none());
                let _ = ttl(&meta);
                let kept = SerializedMeta::of(&meta);
                prop_assert!(kept.is_ok(), "the meta does not serialize: {:?}", kept.err());
                if let Ok(kept) = kept {
                    let (internal, header) = (kept.internal().to_vec(), kept.header().to_vec());
                    let read = SerializedMeta::from_stored(internal, header).and_then(|r| r.meta());
                    prop_assert!(read.is_ok(), "the meta does not read back: {:?}", read.err());
                    if let Ok(read) = read {
                        prop_assert_eq!(read.fresh_until(), meta.fresh_until());
                        prop_assert_eq!(read.epoch(), meta.epoch());
                    }
                }
            }
            RespCacheable::Uncacheable(_) => prop_assert!(!stored(&decision)),
        }
    }

    /// A response whose every control field says `no-store` (without `must-understand`) is
    /// never stored, whichever field governs and however the directives are written.
    #[test]
    fn no_store_is_never_stored(
        method in method(),
        status in status(),
        cc in no_store_field("cache-control"),
        cdn in prop::option::of(no_store_field("cdn-cache-control")),
        surrogate in prop::option::of(no_store_field("surrogate-control")),
        more in response_lines().prop_map(without_control_fields),
        defaults in defaults(),
    ) {
        let lines = [cc, cdn.unwrap_or_default(), surrogate.unwrap_or_default(), more].concat();
        let req = request(method, "/", &[]);
        let resp = response(status, &lines);
        let decision = policy::decide(&req, &resp, &defaults, now());
        prop_assert!(
            matches!(
                decision,
                Decision::Skip(SkipReason::Method | SkipReason::Status | SkipReason::NoStore)
            ),
            "{:?} for {:?}", decision, lines
        );
        let admitted = admission(&req, &resp, &route(&defaults), u64::MAX);
        prop_assert!(matches!(admitted, RespCacheable::Uncacheable(_)));
    }

    /// Likewise `private`: a shared cache never stores it (with field names or without).
    #[test]
    fn private_is_never_stored(
        status in status(),
        cc in private_field("cache-control"),
        cdn in prop::option::of(private_field("cdn-cache-control")),
        surrogate in prop::option::of(private_field("surrogate-control")),
        defaults in defaults(),
    ) {
        let lines = [cc, cdn.unwrap_or_default(), surrogate.unwrap_or_default()].concat();
        let resp = response(status, &lines);
        let decision = policy::decide(&request("GET", "/", &[]), &resp, &defaults, now());
        prop_assert!(
            matches!(
                decision,
                Decision::Skip(SkipReason::Status | SkipReason::NoStore | SkipReason::Private)
            ),
            "{:?} for {:?}", decision, lines
        );
    }

    /// `max-age` gives the freshness, capped at 2^31 - 1 seconds, minus the `Age`, itself
    /// capped, the subtraction saturating at zero.
    #[test]
    fn max_age_minus_age_saturates(
        max_age in "[0-9]{1,25}",
        quoted in any::<bool>(),
        flips in any::<u64>(),
        fillers in prop::collection::vec(directive_of(HARMLESS.to_vec()), 0..3),
        age in prop::option::of("[0-9]{1,25}"),
        defaults in defaults(),
    ) {
        let value = if quoted { format!("\"{max_age}\"") } else { max_age.clone() };
        let mut directives = fillers;
        directives.push(format!("{}={value}", recase("max-age", flips)));
        let mut lines = vec![("cache-control".to_string(), directives.join(", "))];
        if let Some(age) = &age {
            lines.push(("age".to_string(), age.clone()));
        }
        let resp = response(200, &lines);
        let decision = policy::decide(&request("GET", "/", &[]), &resp, &defaults, now());
        let expected = delta(&max_age).saturating_sub(age.as_deref().map_or(Duration::ZERO, delta));
        match decision {
            Decision::Store(freshness) => prop_assert_eq!(freshness.fresh_for, expected),
            other => prop_assert!(false, "{:?} for {:?}", other, lines),
        }
    }

    /// `Age` is the first value of its first line, capped, and zero when unreadable.
    #[test]
    fn age_is_capped_and_never_fails(lines in prop::collection::vec(age_text(), 0..3)) {
        let lines: Vec<Line> = lines.iter().map(|l| ("age".to_string(), l.clone())).collect();
        let headers = header_map(&lines);
        let age = policy::age(&headers);
        prop_assert!(age <= CAP);
        if let Some((_, first)) = lines.first() {
            let item = first.split([',', ';']).next().unwrap_or_default().trim_matches([' ', '\t']);
            if !item.is_empty() && item.bytes().all(|b| b.is_ascii_digit()) {
                prop_assert_eq!(age, delta(item));
            }
        }
    }

    /// Every HTTP-date format of any time of the four-digit years reads back as that time, in
    /// any letter case; and no text makes the reader fail.
    #[test]
    fn http_dates_read_back(secs in FIRST_DATE..=LAST_DATE, flips in any::<u64>(), text in junk()) {
        let imf = format_date(secs, DateFormat::Imf);
        prop_assert_eq!(policy::http_date(imf.as_bytes()), Some(time_of(secs)), "{}", imf);
        prop_assert_eq!(policy::http_date(recase(&imf, flips).as_bytes()), Some(time_of(secs)));
        let asctime = format_date(secs, DateFormat::Asctime);
        prop_assert_eq!(policy::http_date(asctime.as_bytes()), Some(time_of(secs)), "{}", asctime);
        // Two-digit years: 70..99 are 19xx, 00..69 are 20xx.
        if (0..3_155_760_000).contains(&secs) {
            let rfc850 = format_date(secs, DateFormat::Rfc850);
            let read = policy::http_date(rfc850.as_bytes());
            prop_assert_eq!(read, Some(time_of(secs)), "{}", rfc850);
        }
        let _ = policy::http_date(text.as_bytes());
    }

    /// A 304's fields replace the stored ones, except the body's framing, `Vary` and cookies;
    /// the stored `Age` goes.
    #[test]
    fn a_304_updates_what_it_may(
        stored_lines in response_lines(),
        fresh_lines in response_lines(),
    ) {
        let stored = response(200, &stored_lines);
        let not_modified = response(304, &fresh_lines);
        let updated = policy::freshen(&stored, &not_modified);
        prop_assert!(updated.is_ok());
        let Ok(updated) = updated else { return Ok(()) };
        let all = |headers: &HeaderMap, name: &HeaderName| -> Vec<HeaderValue> {
            headers.get_all(name).iter().cloned().collect()
        };
        let kept = ["content-length", "transfer-encoding", "vary", "set-cookie"];
        for name in stored.headers.keys().chain(not_modified.headers.keys()) {
            let expected = if kept.contains(&name.as_str()) {
                all(&stored.headers, name)
            } else if not_modified.headers.contains_key(name) {
                all(&not_modified.headers, name)
            } else if name == http::header::AGE {
                Vec::new()
            } else {
                all(&stored.headers, name)
            };
            prop_assert_eq!(all(&updated.headers, name), expected, "{}", name);
        }
        prop_assert_eq!(updated.status, stored.status);
    }

    /// Without `max-age`, freshness is `Expires` minus `Date` (or now), none once past; an
    /// unreadable or repeated `Expires` is already stale; the route's default is not used.
    #[test]
    fn expires_minus_date_is_the_freshness(
        expires in prop_oneof![
            4 => (FIRST_DATE..=LAST_DATE).prop_map(Some),
            1 => Just(None),
        ],
        date in prop::option::of(FIRST_DATE..=LAST_DATE),
        twice in any::<bool>(),
        defaults in defaults(),
    ) {
        let mut lines = vec![(
            "expires".to_string(),
            expires.map_or_else(|| "0".to_string(), |e| format_date(e, DateFormat::Imf)),
        )];
        if twice {
            lines.push(lines[0].clone());
        }
        if let Some(date) = date {
            lines.push(("date".into(), format_date(date, DateFormat::Imf)));
        }
        let resp = response(200, &lines);
        let decision = policy::decide(&request("GET", "/", &[]), &resp, &defaults, now());
        let from = date.unwrap_or(NOW_SECS as i64);
        let expected = match expires {
            Some(expires) if !twice => Duration::from_secs((expires - from).max(0) as u64),
            _ => Duration::ZERO,
        };
        match decision {
            Decision::Store(freshness) => prop_assert_eq!(freshness.fresh_for, expected),
            other => prop_assert!(false, "{:?} for {:?}", other, lines),
        }
    }

    /// Heuristic freshness: a tenth of the time between `Last-Modified` and `Date` (or now),
    /// at most a day; none when `Last-Modified` is later, or for a status not cacheable by
    /// default unless the response is `public`.
    #[test]
    fn heuristic_freshness_is_a_tenth_of_the_age_at_most_a_day(
        modified in FIRST_DATE..=LAST_DATE,
        date in prop::option::of(FIRST_DATE..=LAST_DATE),
        status in status(),
        public in any::<bool>(),
    ) {
        let mut lines = vec![("last-modified".to_string(), format_date(modified, DateFormat::Imf))];
        if let Some(date) = date {
            lines.push(("date".into(), format_date(date, DateFormat::Imf)));
        }
        if public {
            lines.push(("cache-control".into(), "public".into()));
        }
        let no_defaults = Defaults {
            default_ttl: None,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
        };
        let resp = response(status, &lines);
        let decision = policy::decide(&request("GET", "/", &[]), &resp, &no_defaults, now());
        let unchanged_for = date.unwrap_or(NOW_SECS as i64) - modified;
        let by_default = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501].contains(&status);
        let never = status < 200 || status == 206 || status == 304;
        let expected = if never {
            Decision::Skip(SkipReason::Status)
        } else if unchanged_for < 0 || !(by_default || public) {
            Decision::Skip(SkipReason::NoFreshness)
        } else {
            let tenth = Duration::from_secs(unchanged_for as u64 / 10);
            let fresh_for = tenth.min(Duration::from_secs(86_400));
            Decision::Store(policy::Freshness {
                fresh_for,
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: Duration::ZERO,
            })
        };
        prop_assert_eq!(decision, expected);
    }

    /// `If-None-Match`, when present, decides alone (`If-Modified-Since` is then ignored); a
    /// response that is not a `200` never answers a conditional request with `304`.
    #[test]
    fn if_none_match_decides_alone(
        method in method(),
        status in status(),
        inm in prop::collection::vec(
            prop_oneof![prop::sample::select(ETAGS).prop_map(str::to_string), junk()],
            0..3,
        ),
        ims in prop::collection::vec(date_text(), 1..3),
        response_lines in response_lines(),
    ) {
        let mut with_ims: Vec<Line> =
            inm.iter().map(|v| ("if-none-match".to_string(), v.clone())).collect();
        let without_ims = with_ims.clone();
        with_ims.extend(ims.into_iter().map(|v| ("if-modified-since".to_string(), v)));
        let resp = response(status, &response_lines);
        let answer = policy::not_modified(&request(method, "/", &with_ims), &resp);
        if !inm.is_empty() {
            let without = policy::not_modified(&request(method, "/", &without_ims), &resp);
            prop_assert_eq!(answer, without);
            if !resp.headers.contains_key(http::header::ETAG) {
                prop_assert!(!answer);
            }
        }
        if status != 200 {
            prop_assert!(!answer);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Variance
// ---------------------------------------------------------------------------------------------

/// A request field's items: a token and a q-value in thousandths, if written.
type Items = Vec<(String, Option<u16>)>;

fn items() -> impl Strategy<Value = Items> {
    prop::collection::vec(
        (
            "[a-z][a-z0-9-]{0,5}",
            prop::option::of(prop_oneof![Just(1000u16), Just(0), 0u16..=1000]),
        ),
        0..4,
    )
}

/// How a q-value may be written: `0.5`, `0.500`, `1`, `1.0`, ...
fn qvalue_text(thousandths: u16, style: u8) -> String {
    if thousandths == 1000 {
        return ["1", "1.0", "1.000"][usize::from(style % 3)].to_string();
    }
    let full = format!("0.{thousandths:03}");
    match style % 3 {
        0 => full,
        _ => {
            let short = full.trim_end_matches('0');
            if short.ends_with('.') {
                "0".to_string()
            } else {
                short.to_string()
            }
        }
    }
}

/// `items` written as field lines: split into lines at `breaks`, with spaces around the
/// commas as `style` says, q-values as `q_style` says, tokens in the case of `flips`.
fn write_items(items: &Items, breaks: &[bool], style: u8, q_style: u8, flips: u64) -> Vec<String> {
    let separator = [",", ", ", " ,  ", "\t,"][usize::from(style % 4)];
    let mut lines = vec![String::new()];
    for (i, (token, q)) in items.iter().enumerate() {
        let mut item = recase(token, flips >> (i % 8));
        if let Some(q) = q {
            item.push_str(&format!(
                ";q={}",
                qvalue_text(*q, q_style.wrapping_add(i as u8))
            ));
        }
        if i > 0 && breaks.get(i).copied().unwrap_or(false) {
            lines.push(item);
        } else {
            let line = lines.last_mut().expect("a line");
            if i > 0 {
                line.push_str(separator);
            }
            line.push_str(&item);
        }
    }
    lines
}

fn is_preference_list(name: &str) -> bool {
    name == "accept-encoding" || name == "accept-language"
}

proptest! {
    #![proptest_config(proptest_config())]

    /// Requests whose varied fields are equal (field for field, line for line) get the same
    /// variance, whatever else they carry and however the response's `Vary` spells the
    /// names; and so do requests whose varied fields differ only in how their lists are
    /// written (lines, spaces; for Accept-Encoding and Accept-Language also the tokens' case,
    /// their order and how q-values are written).
    #[test]
    fn equal_varied_fields_give_equal_variance(
        varied in prop::collection::vec((prop::sample::select(VARIED), items()), 1..4),
        flips in any::<u64>(),
        breaks in prop::collection::vec(any::<bool>(), 8),
        styles in (any::<u8>(), any::<u8>()),
        shuffle in any::<u64>(),
        noise_a in prop::collection::vec(("x-noise-[a-c]", junk()), 0..3),
        noise_b in prop::collection::vec(("x-noise-[a-c]", junk()), 0..3),
    ) {
        let names: Vec<&str> = varied.iter().map(|(name, _)| *name).collect();
        let vary_a = vec![("vary".to_string(), names.join(","))];
        // The same names in another case, order and repeated, over several lines.
        let mut respelled: Vec<String> = names.iter().map(|n| recase(n, flips)).collect();
        respelled.reverse();
        respelled.push(recase(names[0], !flips));
        let vary_b = vec![
            ("vary".to_string(), format!(" {}", respelled[..1].join(", "))),
            ("vary".to_string(), format!("{} ,", respelled[1..].join(" ,  "))),
        ];
        let mut a = noise_a.clone();
        let mut same = noise_b.clone();
        let mut rewritten = noise_b;
        // A name listed twice in `varied` takes its first items (both requests alike).
        let mut seen = Vec::new();
        for (name, items) in &varied {
            if seen.contains(name) {
                continue;
            }
            seen.push(*name);
            let lines = write_items(items, &breaks, styles.0, styles.0, 0);
            for line in &lines {
                a.push((name.to_string(), line.clone()));
                same.push((name.to_string(), line.clone()));
            }
            let mut other_items = items.clone();
            let (mut q_style, mut token_flips) = (styles.0, 0);
            if is_preference_list(name) {
                if !other_items.is_empty() {
                    let by = (shuffle as usize) % other_items.len();
                    other_items.rotate_left(by);
                }
                (q_style, token_flips) = (styles.1, flips);
            }
            let other_breaks: Vec<bool> = breaks.iter().map(|b| !b).collect();
            for line in write_items(&other_items, &other_breaks, styles.1, q_style, token_flips) {
                rewritten.push((name.to_string(), line));
            }
        }
        let response_a = header_map(&vary_a);
        let response_b = header_map(&vary_b);
        let variance = policy::variance(&response_a, &request("GET", "/", &a));
        prop_assert!(variance.is_some());
        prop_assert_eq!(variance, policy::variance(&response_a, &request("GET", "/", &same)));
        prop_assert_eq!(variance, policy::variance(&response_b, &request("GET", "/", &same)));
        prop_assert_eq!(
            variance,
            policy::variance(&response_a, &request("GET", "/", &rewritten)),
            "{:?} / {:?}", a, rewritten
        );
    }

    /// Different values of a varied field select different variants.
    #[test]
    fn different_varied_values_give_different_variance(
        name in prop::sample::select(VARIED),
        first in "[a-z0-9]{1,8}",
        second in "[a-z0-9]{1,8}",
    ) {
        prop_assume!(first != second);
        let vary = header_map(&[("vary".to_string(), name.to_string())]);
        let one = policy::variance(&vary, &request("GET", "/", &[(name.to_string(), first)]));
        let two = policy::variance(&vary, &request("GET", "/", &[(name.to_string(), second)]));
        prop_assert_ne!(one, two);
    }

    /// Without a `Vary` naming a field there is no variance, whatever the request.
    #[test]
    fn no_vary_no_variance(
        vary in prop::collection::vec(prop::sample::select(&["", " ", " , ", ",,"][..]), 0..3),
        lines in request_lines(),
    ) {
        let vary: Vec<Line> = vary.iter().map(|v| ("vary".to_string(), v.to_string())).collect();
        prop_assert_eq!(policy::variance(&header_map(&vary), &request("GET", "/", &lines)), None);
    }
}

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

fn key_part() -> impl Strategy<Value = KeyPart> {
    prop_oneof![
        Just(KeyPart::Host),
        Just(KeyPart::Path),
        Just(KeyPart::Query),
        prop::sample::select(&["x-device", "accept-language"][..])
            .prop_map(|name| KeyPart::Header(HeaderName::from_static(name))),
        prop::sample::select(&["tier", "t"][..]).prop_map(|name| KeyPart::Cookie(name.into())),
    ]
}

fn upstream() -> impl Strategy<Value = &'static str> {
    prop::sample::select(&["o", "oo", ""][..])
}

/// A request from a small alphabet, so that two of them often share or almost share parts.
fn key_request() -> impl Strategy<Value = (String, Vec<Line>)> {
    (
        "/[ab/]{0,3}",
        prop::option::of("[ab=&?]{0,3}"),
        prop::option::of("[aA.]{1,2}(:[0-9])?"),
        prop::collection::vec(
            (
                prop::sample::select(&["x-device", "accept-language", "cookie", "x-other"][..]),
                prop_oneof![
                    "[ab,]{0,3}",
                    prop::sample::select(&["tier=a", "t=a; tier=b", "tier=", "tier", "t=ab"][..])
                        .prop_map(str::to_string),
                ],
            ),
            0..4,
        ),
    )
        .prop_map(|(path, query, host, fields)| {
            let uri = match query {
                Some(query) => format!("{path}?{query}"),
                None => path,
            };
            let mut lines: Vec<Line> = host.map(|h| ("host".to_string(), h)).into_iter().collect();
            lines.extend(fields.into_iter().map(|(n, v)| (n.to_string(), v)));
            (uri, lines)
        })
}

/// The values a key is made of, as `cache_key` documents them.
fn key_values(req: &RequestHeader, parts: &[KeyPart], upstream: &str) -> Vec<Vec<u8>> {
    let url = ObjectUrl::of(req);
    let mut values = vec![upstream.as_bytes().to_vec()];
    for part in parts {
        values.push(match part {
            KeyPart::Host => url.host.clone().into_bytes(),
            KeyPart::Path => req.uri.path().as_bytes().to_vec(),
            KeyPart::Query => req.uri.query().unwrap_or("").as_bytes().to_vec(),
            KeyPart::Header(name) => req
                .headers
                .get_all(name)
                .iter()
                .map(|v| v.as_bytes())
                .collect::<Vec<_>>()
                .join(&b","[..]),
            KeyPart::Cookie(name) => cookie(req, name).unwrap_or("").as_bytes().to_vec(),
        });
    }
    values
}

proptest! {
    #![proptest_config(proptest_config())]

    /// A key is the same for equal inputs (fields outside the key may differ), and two keys
    /// are equal exactly when the values they are made of are: framing keeps parts apart.
    #[test]
    fn keys_are_stable_and_tell_requests_apart(
        parts in prop::collection::vec(key_part(), 0..5),
        upstreams in (upstream(), upstream()),
        (uri_a, lines_a) in key_request(),
        (uri_b, lines_b) in key_request(),
        noise in prop::collection::vec(("x-noise", junk()), 0..3),
    ) {
        let a = request("GET", &uri_a, &lines_a);
        let again = request("GET", &uri_a, &[noise, lines_a.clone()].concat());
        let key = cache_key(&a, &parts, upstreams.0);
        let key_again = cache_key(&again, &parts, upstreams.0);
        prop_assert_eq!(key.primary_bin(), key_again.primary_bin());
        prop_assert_eq!(key.extensions.get::<ObjectUrl>(), key_again.extensions.get::<ObjectUrl>());

        let b = request("GET", &uri_b, &lines_b);
        let other = cache_key(&b, &parts, upstreams.1);
        let same_values =
            key_values(&a, &parts, upstreams.0) == key_values(&b, &parts, upstreams.1);
        prop_assert_eq!(
            key.primary_bin() == other.primary_bin(),
            same_values,
            "{:?} {:?} / {:?} {:?}", uri_a, lines_a, uri_b, lines_b
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Cache-Status
// ---------------------------------------------------------------------------------------------

fn detail() -> impl Strategy<Value = &'static str> {
    prop::sample::select(
        &[
            "no-store",
            "private",
            "method",
            "header",
            "cookie",
            "vary-star",
            "uncacheable",
        ][..],
    )
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        Just(Outcome::Hit),
        Just(Outcome::StaleWhileRevalidate),
        prop::option::of(100u16..=999).prop_map(|fwd_status| Outcome::StaleIfError { fwd_status }),
        Just(Outcome::Revalidated),
        Just(Outcome::Expired),
        prop::option::of(detail()).prop_map(|detail| Outcome::Miss { detail }),
        detail().prop_map(|detail| Outcome::Bypass { detail }),
    ]
}

fn phase() -> impl Strategy<Value = CachePhase> {
    prop_oneof![
        Just(CachePhase::Uninit),
        Just(CachePhase::CacheKey),
        Just(CachePhase::Hit),
        Just(CachePhase::Miss),
        Just(CachePhase::Stale),
        Just(CachePhase::StaleUpdating),
        Just(CachePhase::Expired),
        Just(CachePhase::Revalidated),
        Just(CachePhase::RevalidatedNoCache(
            NoCacheReason::OriginNotCache
        )),
        Just(CachePhase::Bypass),
        prop::sample::select(
            &[
                NoCacheReason::NeverEnabled,
                NoCacheReason::OriginNotCache,
                NoCacheReason::ResponseTooLarge,
                NoCacheReason::StorageError,
                NoCacheReason::InternalError,
                NoCacheReason::Deferred,
                NoCacheReason::DeclinedToUpstream,
                NoCacheReason::UpstreamError,
                NoCacheReason::CacheLockGiveUp,
                NoCacheReason::CacheLockTimeout,
                NoCacheReason::Custom("no-store"),
            ][..]
        )
        .prop_map(CachePhase::Disabled),
    ]
}

proptest! {
    #![proptest_config(proptest_config())]

    /// `Cache-Status` is one RFC 9211 member: `edgeward` with parameters, each named once,
    /// each a token, a known key or a key with a token or integer value; `ttl` only on what
    /// the cache served.
    #[test]
    fn cache_status_is_one_well_formed_member(
        outcome in prop_oneof![
            outcome(),
            (phase(), prop::option::of(100u16..=999)).prop_map(|(p, s)| Outcome::from_phase(p, s)),
        ],
        ttl in prop::option::of(-999_999_999_999_999i64..=999_999_999_999_999),
    ) {
        let value = outcome.header_value(ttl);
        let text = value.to_str();
        prop_assert!(text.is_ok());
        let text = text.unwrap_or_default();
        let mut members = text.split("; ");
        prop_assert_eq!(members.next(), Some("edgeward"));
        let mut keys = Vec::new();
        for param in members {
            let (key, value) = param.split_once('=').unwrap_or((param, "?1"));
            prop_assert!(!keys.contains(&key), "{} twice in {}", key, text);
            keys.push(key);
            let lower = key.bytes().all(|b| b.is_ascii_lowercase() || b == b'-');
            prop_assert!(!key.is_empty() && lower, "{}", text);
            let integer = value.strip_prefix('-').unwrap_or(value);
            let number = (1..=15).contains(&integer.len())
                && integer.bytes().all(|b| b.is_ascii_digit());
            let token = value.starts_with(|c: char| c.is_ascii_alphabetic())
                && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
            prop_assert!(number || token || value == "?1", "{}", text);
        }
        prop_assert_eq!(keys.contains(&"ttl"), ttl.is_some() && outcome.served_from_cache());
        prop_assert!(!outcome.metric_label().is_empty());
    }
}

// ---------------------------------------------------------------------------------------------
// Regressions: failures the properties found, kept as they were found
// ---------------------------------------------------------------------------------------------

/// Found by `any_response_gets_a_bounded_decision_and_a_storable_meta`: an `Age` older than
/// the epoch made a meta born before 1970, which the store could not serialize (so the
/// response was never stored, with `detail=storage-error`).
#[test]
fn an_age_older_than_the_epoch_still_gives_a_storable_meta() {
    let defaults = Defaults {
        default_ttl: Some(Duration::ZERO),
        stale_while_revalidate: Duration::ZERO,
        stale_if_error: Duration::ZERO,
    };
    let resp = response(
        200,
        &[
            ("cache-control".into(), String::new()),
            ("age".into(), "2000000000".into()),
        ],
    );
    let RespCacheable::Cacheable(meta) = admission(
        &request("GET", "/", &[]),
        &resp,
        &route(&defaults),
        u64::MAX,
    ) else {
        panic!("not admitted");
    };
    assert_eq!(meta.epoch(), UNIX_EPOCH);
    assert!(SerializedMeta::of(&meta).is_ok());
}
