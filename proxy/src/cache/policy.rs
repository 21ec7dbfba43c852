//! What the HTTP cache may store and for how long, as a shared cache (RFC 9111) that obeys the
//! fields targeted at it (RFC 9213 `CDN-Cache-Control`, Edge Architecture `Surrogate-Control`),
//! and which request headers pick a stored variant. Pure decisions: no I/O, the clock is passed in.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use http::header::{
    AGE, AUTHORIZATION, CONTENT_LENGTH, DATE, ETAG, EXPIRES, IF_MODIFIED_SINCE, IF_NONE_MATCH,
    LAST_MODIFIED, SET_COOKIE, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use pingora::cache::cache_control::{CacheControl, DirectiveKey, DELTA_SECONDS_OVERFLOW_VALUE};
use pingora::cache::key::HashBinary;
use pingora::cache::VarianceBuilder;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::conditional_filter::weak_validate_etag;

/// What a route says when the response does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Defaults {
    /// Freshness for responses without explicit freshness; `None`: such responses are not stored.
    pub default_ttl: Option<Duration>,
    /// How long past freshness a response may be served while it is refetched in the background.
    pub stale_while_revalidate: Duration,
    /// How long past freshness a response may be served when refetching it fails.
    pub stale_if_error: Duration,
}

/// How a stored response may be reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Freshness {
    /// How long the response is fresh from now (already reduced by its `Age`).
    pub fresh_for: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Store(Freshness),
    Skip(SkipReason),
}

/// Why a response is not stored: the first rule of [`decide`] it fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SkipReason {
    Method,
    Status,
    NoStore,
    Private,
    Authorization,
    SetCookie,
    VaryStar,
    NoFreshness,
}

impl SkipReason {
    /// Short lower-case token for logs and the `Cache-Status` `detail` parameter.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SkipReason::Method => "method",
            SkipReason::Status => "status",
            SkipReason::NoStore => "no-store",
            SkipReason::Private => "private",
            SkipReason::Authorization => "authorization",
            SkipReason::SetCookie => "set-cookie",
            SkipReason::VaryStar => "vary-star",
            SkipReason::NoFreshness => "no-freshness",
        }
    }
}

/// Whether and for how long the response to `request` may be stored by this shared cache.
pub(crate) fn decide(
    request: &RequestHeader,
    response: &ResponseHeader,
    defaults: &Defaults,
    now: SystemTime,
) -> Decision {
    if !matches!(request.method, Method::GET | Method::HEAD) {
        return Decision::Skip(SkipReason::Method);
    }
    let status = response.status;
    if status.is_informational()
        || status == StatusCode::PARTIAL_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Decision::Skip(SkipReason::Status);
    }
    let directives = Directives::governing(&response.headers);
    // RFC 9111 §5.2.2.3: `must-understand` lets a cache that knows the status's caching rules
    // ignore `no-store`; one that does not (a status unknown to it) must not store.
    let understood = directives.has("must-understand") && understood_status(status);
    if directives.has("no-store") && !understood {
        return Decision::Skip(SkipReason::NoStore);
    }
    // RFC 9111 lets a shared cache store the rest of a `private="field"` response; we do not
    // strip fields, so such a response is not stored at all.
    if directives.has("private") {
        return Decision::Skip(SkipReason::Private);
    }
    if varies_on_everything(&response.headers) {
        return Decision::Skip(SkipReason::VaryStar);
    }
    // RFC 9111 §3.5: only these directives let a shared cache reuse an authenticated response.
    if request.headers.contains_key(AUTHORIZATION)
        && !(directives.has("public")
            || directives.has("s-maxage")
            || directives.has("must-revalidate"))
    {
        return Decision::Skip(SkipReason::Authorization);
    }
    // A cookie is usually meant for one client; only an explicit `public` says otherwise.
    if response.headers.contains_key(SET_COOKIE) && !directives.has("public") {
        return Decision::Skip(SkipReason::SetCookie);
    }
    let Some(lifetime) = freshness_lifetime(&directives, response, defaults, now) else {
        return Decision::Skip(SkipReason::NoFreshness);
    };
    let (stale_while_revalidate, stale_if_error) = stale_windows(&directives, defaults);
    Decision::Store(Freshness {
        fresh_for: lifetime.saturating_sub(age(&response.headers)),
        stale_while_revalidate,
        stale_if_error,
    })
}

/// The variance of `request` for a stored response with these headers: `None` when the response
/// has no `Vary` (or only empty Vary values).
pub(crate) fn variance(
    response_headers: &HeaderMap,
    request: &RequestHeader,
) -> Option<HashBinary> {
    let names: BTreeSet<String> = vary_names(response_headers)
        .filter(|name| name != "*")
        .collect();
    let mut builder = VarianceBuilder::new();
    for name in names {
        let value = normalized_request_value(&request.headers, &name);
        builder.add_owned_name_value(name, value);
    }
    builder.finalize()
}

/// Whether the response's `Vary` is `*` (never served from cache).
pub(crate) fn varies_on_everything(response_headers: &HeaderMap) -> bool {
    vary_names(response_headers).any(|name| name == "*")
}

/// The response header whose directives govern this cache: `Surrogate-Control`,
/// `CDN-Cache-Control` or `Cache-Control`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ControlField {
    Surrogate,
    Cdn,
    Cache,
}

impl ControlField {
    fn header_name(self) -> &'static str {
        match self {
            ControlField::Surrogate => "surrogate-control",
            ControlField::Cdn => "cdn-cache-control",
            ControlField::Cache => "cache-control",
        }
    }
}

/// The directives of the one header this cache obeys; the others are ignored entirely
/// (RFC 9213 §2.1: a targeted field replaces `Cache-Control`, not merges with it).
struct Directives {
    field: ControlField,
    /// `None` when the header is absent or could not be parsed: no directives at all.
    parsed: Option<CacheControl>,
}

impl Directives {
    fn governing(headers: &HeaderMap) -> Self {
        // RFC 9213 §2.1: a `CDN-Cache-Control` that is not a valid Structured Field Dictionary
        // is ignored entirely, as if absent.
        let field = [ControlField::Surrogate, ControlField::Cdn]
            .into_iter()
            .find(|targeted| match targeted {
                ControlField::Cdn => sf::valid_cdn_cache_control(headers),
                other => headers.contains_key(other.header_name()),
            })
            .unwrap_or(ControlField::Cache);
        Directives {
            field,
            parsed: parse_directives(field.header_name(), headers),
        }
    }

    /// Whether the directive is present, with or without a value (`private="x"` counts).
    fn has(&self, directive: &str) -> bool {
        self.parsed.as_ref().is_some_and(|cc| cc.has_key(directive))
    }

    /// A delta-seconds directive; `None` when absent. A present but invalid value counts as 0:
    /// RFC 9111 §4.2.1 asks to treat invalid freshness as stale, and 0 is the safe reading of
    /// an unreadable stale window too.
    fn seconds(&self, key: DirectiveKey) -> Option<Duration> {
        let value = self.parsed.as_ref()?.directives.get(&key)?;
        // A bare `max-age` has no value and is as invalid as `max-age=soon`.
        let bytes = value
            .as_ref()
            .map_or(&[][..], |value| value.parse_as_bytes());
        // Edge Architecture: Surrogate-Control's `max-age=60+30` adds a stale window we do not use.
        let bytes = match (self.field, &key) {
            (ControlField::Surrogate, DirectiveKey::MaxAge) => {
                bytes.split(|&b| b == b'+').next().unwrap_or(bytes)
            }
            _ => bytes,
        };
        Some(delta_seconds(bytes).unwrap_or(Duration::ZERO))
    }
}

/// The directives of field `name`. Whitespace at the start of a line is not part of its value
/// (RFC 9110 §5.5): the HTTP/1 parser drops it, but a filter's header writes (`before_cache`)
/// can keep it, and Pingora's parser would then miss the line's first directive (`\tprivate`).
fn parse_directives(name: &'static str, headers: &HeaderMap) -> Option<CacheControl> {
    let lines = headers.get_all(name);
    if !lines
        .iter()
        .any(|line| line.as_bytes().first().is_some_and(u8::is_ascii_whitespace))
    {
        return CacheControl::from_headers_named(name, headers);
    }
    let mut trimmed = HeaderMap::new();
    for line in lines {
        if let Ok(value) = HeaderValue::from_bytes(line.as_bytes().trim_ascii_start()) {
            trimmed.append(HeaderName::from_static(name), value);
        }
    }
    CacheControl::from_headers_named(name, &trimmed)
}

/// How long the response is fresh from its generation (RFC 9111 §4.2.1), or `None` when it gives
/// no freshness and the route offers none for its status.
fn freshness_lifetime(
    directives: &Directives,
    response: &ResponseHeader,
    defaults: &Defaults,
    now: SystemTime,
) -> Option<Duration> {
    // With or without field names: we do not strip fields, so the whole response revalidates.
    if directives.has("no-cache") {
        return Some(Duration::ZERO);
    }
    directives
        .seconds(DirectiveKey::SMaxAge)
        .or_else(|| directives.seconds(DirectiveKey::MaxAge))
        .or_else(|| match directives.field {
            ControlField::Cache => expires_lifetime(response, now),
            ControlField::Surrogate | ControlField::Cdn => None,
        })
        .or_else(|| {
            defaults
                .default_ttl
                .filter(|_| cacheable_by_default(response.status))
        })
        .or_else(|| match directives.field {
            ControlField::Cache => heuristic_lifetime(directives, response, now),
            ControlField::Surrogate | ControlField::Cdn => None,
        })
}

/// Most heuristic freshness a response gets, however old its `Last-Modified`.
const MAX_HEURISTIC_FRESHNESS: Duration = Duration::from_secs(24 * 60 * 60);

/// RFC 9111 §4.2.2 heuristic freshness: a tenth of the time since `Last-Modified` (at most a
/// day), for statuses cacheable by default or a response marked `public`; `None` without a
/// usable `Last-Modified`, or with one later than the response's `Date`.
fn heuristic_lifetime(
    directives: &Directives,
    response: &ResponseHeader,
    now: SystemTime,
) -> Option<Duration> {
    if !(cacheable_by_default(response.status) || directives.has("public")) {
        return None;
    }
    let last_modified = single_date(&response.headers, &LAST_MODIFIED)?;
    let date = single_date(&response.headers, &DATE).unwrap_or(now);
    let unchanged_for = date.duration_since(last_modified).ok()?;
    Some((unchanged_for / 10).min(MAX_HEURISTIC_FRESHNESS))
}

/// The date in a field that appears once, read as any HTTP-date format allows (see
/// [`http_date`]); `None` when absent, repeated or unreadable.
fn single_date(headers: &HeaderMap, name: &HeaderName) -> Option<SystemTime> {
    let mut lines = headers.get_all(name).iter();
    let value = lines.next()?;
    if lines.next().is_some() {
        return None;
    }
    http_date(value.as_bytes())
}

/// `Expires` minus `Date` (or `now` without a usable `Date`); `None` without `Expires`. An invalid
/// `Expires` such as `0`, or one given twice, is a time in the past (RFC 9111 §5.3).
fn expires_lifetime(response: &ResponseHeader, now: SystemTime) -> Option<Duration> {
    if !response.headers.contains_key(EXPIRES) {
        return None;
    }
    let Some(expires) = single_date(&response.headers, &EXPIRES) else {
        return Some(Duration::ZERO);
    };
    let date = single_date(&response.headers, &DATE).unwrap_or(now);
    Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
}

/// RFC 9110 §15.1: the statuses a cache may store without explicit freshness (206 is never stored).
fn cacheable_by_default(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// How long the response may be served stale while revalidating and when the origin fails: the
/// response's own windows, else the route's, and none when it demands revalidation.
fn stale_windows(directives: &Directives, defaults: &Defaults) -> (Duration, Duration) {
    if directives.has("must-revalidate")
        || directives.has("proxy-revalidate")
        || directives.has("no-cache")
    {
        return (Duration::ZERO, Duration::ZERO);
    }
    // `s-maxage` carries `proxy-revalidate` for a shared cache (RFC 9111 §5.2.2.10): the
    // route's windows do not apply, only windows the response grants itself.
    let (route_revalidate, route_error) = if directives.has("s-maxage") {
        (Duration::ZERO, Duration::ZERO)
    } else {
        (defaults.stale_while_revalidate, defaults.stale_if_error)
    };
    (
        directives
            .seconds(DirectiveKey::StaleWhileRevalidate)
            .unwrap_or(route_revalidate),
        directives
            .seconds(DirectiveKey::StaleIfError)
            .unwrap_or(route_error),
    )
}

/// How old the response already was when we received it (RFC 9111 §5.1): the first value of
/// the first `Age` line, without parameters; an unreadable `Age` is ignored.
pub(crate) fn age(headers: &HeaderMap) -> Duration {
    headers
        .get(AGE)
        .and_then(|value| {
            let first = value.as_bytes().split(|&b| b == b',').next()?;
            let first = first.split(|&b| b == b';').next()?;
            delta_seconds(first.trim_ascii())
        })
        .unwrap_or(Duration::ZERO)
}

/// RFC 9111 §1.2.2 delta-seconds: digits only; a value too large to hold is capped, not rejected.
fn delta_seconds(bytes: &[u8]) -> Option<Duration> {
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let seconds = std::str::from_utf8(bytes)
        .ok()?
        .parse::<u32>()
        .map_or(DELTA_SECONDS_OVERFLOW_VALUE, |seconds| {
            seconds.min(DELTA_SECONDS_OVERFLOW_VALUE)
        });
    Some(Duration::from_secs(u64::from(seconds)))
}

/// The field names listed in the response's `Vary` lines, lower-case, possibly repeated.
fn vary_names(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(VARY)
        .iter()
        .flat_map(|line| line.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|item| !item.is_empty())
        .map(|item| String::from_utf8_lossy(item).to_ascii_lowercase())
}

/// All of the request's values for `name` as one list with the whitespace around its items
/// removed, so `gzip, br`, `gzip,br` and two lines `gzip` and `br` select the same variant.
/// `Accept-Encoding` and `Accept-Language` are preference lists of case-insensitive tokens:
/// those are also put in order of preference, so `en, de` and `De, EN` are one variant.
fn normalized_request_value(headers: &HeaderMap, name: &str) -> Vec<u8> {
    let items: Vec<&[u8]> = headers
        .get_all(name)
        .iter()
        .flat_map(|line| line.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .collect();
    match name {
        "accept-encoding" | "accept-language" => preference_list(&items),
        _ => items.join(&b','),
    }
}

/// Items of a preference list (`token;q=0.5`), lower-case, without spaces, most preferred first
/// and in byte order among equals; `q=1` (the default) is left out.
fn preference_list(items: &[&[u8]]) -> Vec<u8> {
    let mut ranked: Vec<(u16, Vec<u8>)> = items
        .iter()
        .filter(|item| !item.is_empty())
        .map(|item| {
            let lower = item.to_ascii_lowercase();
            let mut parts = lower.split(|&b| b == b';').map(<[u8]>::trim_ascii);
            let token = parts.next().unwrap_or_default().to_vec();
            let weight = parts
                .find_map(|param| param.strip_prefix(b"q="))
                .and_then(qvalue)
                .unwrap_or(1000);
            (weight, token)
        })
        .collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let mut list = Vec::new();
    for (i, (weight, token)) in ranked.into_iter().enumerate() {
        if i > 0 {
            list.push(b',');
        }
        list.extend_from_slice(&token);
        if weight != 1000 {
            list.extend_from_slice(format!(";q={weight}").as_bytes());
        }
    }
    list
}

/// An RFC 9110 §12.4.2 qvalue in thousandths: `0`, `0.5`, `1.000`; `None` when not one.
fn qvalue(text: &[u8]) -> Option<u16> {
    let (whole, fraction) = match text.iter().position(|&b| b == b'.') {
        Some(dot) => (&text[..dot], &text[dot + 1..]),
        None => (text, &[][..]),
    };
    if whole.len() != 1 || fraction.len() > 3 || !fraction.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut thousandths = 0u16;
    for i in 0..3 {
        thousandths = thousandths * 10 + fraction.get(i).map_or(0, |d| u16::from(d - b'0'));
    }
    match whole[0] {
        b'0' => Some(thousandths),
        b'1' if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// RFC 9110 §13.1: whether a request's `If-None-Match` or `If-Modified-Since` is satisfied by
/// the response the cache would send (a `200`), so that a `304` answers it. `If-None-Match`
/// compares entity tags weakly and, when present, makes `If-Modified-Since` ignored; a
/// response without `Last-Modified` is compared by its `Date` (RFC 9111 §4.3.2).
pub(crate) fn not_modified(request: &RequestHeader, response: &ResponseHeader) -> bool {
    if response.status != StatusCode::OK {
        return false;
    }
    if request.headers.contains_key(IF_NONE_MATCH) {
        return response.headers.get(ETAG).is_some_and(|etag| {
            request
                .headers
                .get_all(IF_NONE_MATCH)
                .iter()
                .any(|candidates| weak_validate_etag(candidates.as_bytes(), etag.as_bytes()))
        });
    }
    if !matches!(request.method, Method::GET | Method::HEAD) {
        return false;
    }
    let Some(since) = single_date(&request.headers, &IF_MODIFIED_SINCE) else {
        return false;
    };
    let modified = if response.headers.contains_key(LAST_MODIFIED) {
        single_date(&response.headers, &LAST_MODIFIED)
    } else {
        single_date(&response.headers, &DATE)
    };
    modified.is_some_and(|modified| modified <= since)
}

/// Fields a `304` does not change in the stored response it validates: the stored body's
/// framing, the variant's `Vary` (the variance stays as stored), and cookies, which are never
/// stored.
const KEPT_ON_UPDATE: [HeaderName; 4] = [
    CONTENT_LENGTH,
    http::header::TRANSFER_ENCODING,
    VARY,
    SET_COOKIE,
];

/// The stored response's head updated with the fields of the `304` that validated it (RFC 9111
/// §3.2, §4.3.4): each field the `304` carries replaces the stored one, except
/// [`KEPT_ON_UPDATE`]. The stored `Age` goes: the age is the `304`'s now.
pub(crate) fn freshen(
    stored: &ResponseHeader,
    not_modified: &ResponseHeader,
) -> pingora::Result<ResponseHeader> {
    let mut updated = stored.clone();
    updated.remove_header(&AGE);
    for name in not_modified.headers.keys() {
        if KEPT_ON_UPDATE.contains(name) {
            continue;
        }
        updated.remove_header(name);
        for value in not_modified.headers.get_all(name) {
            updated.append_header(name.clone(), value.clone())?;
        }
    }
    Ok(updated)
}

/// RFC 9110 §5.6.7 HTTP-date in any of its three formats (IMF-fixdate, obsolete RFC 850,
/// asctime), read the way caches commonly do: letter case is ignored and so is a weekday that
/// does not match the date. Anything else (another time zone, missing or extra separators,
/// a one-digit hour) is not a date.
pub(crate) fn http_date(value: &[u8]) -> Option<SystemTime> {
    // ASCII only: the fixed positions below then fall on character boundaries.
    if !value.is_ascii() {
        return None;
    }
    let text = std::str::from_utf8(value).ok()?.trim_matches(' ');
    let lower = text.to_ascii_lowercase();
    let (year, month, day, time) = if let Some((weekday, rest)) = lower.split_once(", ") {
        if SHORT_DAYS.contains(&weekday) {
            // IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
            let [day, month, year, time, zone] = split_exact::<5>(rest, ' ')?;
            (zone == "gmt").then_some(())?;
            (
                digits(year, 4)?,
                month_number(month)?,
                digits(day, 2)?,
                time,
            )
        } else if LONG_DAYS.contains(&weekday) {
            // RFC 850: `Sunday, 06-Nov-94 08:49:37 GMT`; two-digit years up to 69 are 20xx.
            let [date, time, zone] = split_exact::<3>(rest, ' ')?;
            (zone == "gmt").then_some(())?;
            let [day, month, year] = split_exact::<3>(date, '-')?;
            let year = digits(year, 2)?;
            let year = if year < 70 { 2000 + year } else { 1900 + year };
            (year, month_number(month)?, digits(day, 2)?, time)
        } else {
            return None;
        }
    } else {
        // asctime: `Sun Nov  6 08:49:37 1994`.
        let bytes = lower.as_bytes();
        if bytes.len() != 24 || [3, 7, 10, 19].iter().any(|&i| bytes[i] != b' ') {
            return None;
        }
        SHORT_DAYS.contains(&&lower[..3]).then_some(())?;
        let day = lower[8..10].trim_start_matches(' ');
        (
            digits(&lower[20..], 4)?,
            month_number(&lower[4..7])?,
            digits(day, day.len().max(1))?,
            &lower[11..19],
        )
    };
    let [hour, minute, second] = split_exact::<3>(time, ':')?;
    let (hour, minute, second) = (digits(hour, 2)?, digits(minute, 2)?, digits(second, 2)?);
    if !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second.min(59));
    let offset = Duration::from_secs(seconds.unsigned_abs());
    if seconds >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(offset)
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(offset)
    }
}

const SHORT_DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const LONG_DAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];
const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

/// `text` split at `separator` into exactly `N` non-empty parts.
fn split_exact<const N: usize>(text: &str, separator: char) -> Option<[&str; N]> {
    let mut parts = text.split(separator);
    let mut out = [""; N];
    for slot in &mut out {
        *slot = parts.next().filter(|part| !part.is_empty())?;
    }
    parts.next().is_none().then_some(out)
}

/// Exactly `len` ASCII digits, as a number.
fn digits(text: &str, len: usize) -> Option<u32> {
    (text.len() == len && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

fn month_number(name: &str) -> Option<u32> {
    MONTHS
        .iter()
        .position(|m| *m == name)
        .and_then(|i| u32::try_from(i + 1).ok())
}

/// Days from 1970-01-01 to the given proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: u32, month: u32, day: u32) -> i64 {
    let year = i64::from(year) - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// RFC 9111 §5.2.2.3: statuses whose caching rules this cache knows (those of RFC 9110), for
/// `must-understand`.
fn understood_status(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200..=206 | 300..=305 | 307 | 308 | 400..=417 | 421 | 422 | 426 | 500..=505
    )
}

/// Structured Field Dictionaries (RFC 8941 §3.2), as `CDN-Cache-Control` is written.
mod sf {
    use http::HeaderMap;

    /// Directives whose value is a number of seconds: any other type makes the field invalid.
    const DELTA_SECONDS: [&[u8]; 4] = [
        b"max-age",
        b"s-maxage",
        b"stale-while-revalidate",
        b"stale-if-error",
    ];

    /// Whether the response has a `CDN-Cache-Control` that is a valid dictionary, its lines
    /// joined (without the whitespace around them, which is not part of a field's value),
    /// with integers for the directives that count seconds.
    pub(super) fn valid_cdn_cache_control(headers: &HeaderMap) -> bool {
        let mut lines = headers.get_all("cdn-cache-control").iter().peekable();
        if lines.peek().is_none() {
            return false;
        }
        let joined: Vec<&[u8]> = lines.map(|line| line.as_bytes().trim_ascii()).collect();
        let joined = joined.join(&b","[..]);
        Parser {
            input: &joined,
            at: 0,
        }
        .dictionary()
        .is_some()
    }

    #[derive(PartialEq)]
    enum Item {
        Integer,
        Other,
    }

    struct Parser<'a> {
        input: &'a [u8],
        at: usize,
    }

    impl Parser<'_> {
        fn peek(&self) -> Option<u8> {
            self.input.get(self.at).copied()
        }

        fn eat(&mut self, byte: u8) -> bool {
            let found = self.peek() == Some(byte);
            self.at += usize::from(found);
            found
        }

        fn skip(&mut self, space: impl Fn(u8) -> bool) {
            while self.peek().is_some_and(&space) {
                self.at += 1;
            }
        }

        fn dictionary(&mut self) -> Option<()> {
            self.skip(|b| b == b' ');
            if self.peek().is_none() {
                return Some(());
            }
            loop {
                let key = self.key()?.to_ascii_lowercase();
                let numeric = DELTA_SECONDS.contains(&key.as_slice());
                if self.eat(b'=') {
                    if self.peek() == Some(b'(') {
                        (!numeric).then_some(())?;
                        self.inner_list()?;
                    } else {
                        let item = self.bare_item()?;
                        (!numeric || item == Item::Integer).then_some(())?;
                        self.parameters()?;
                    }
                } else {
                    // A bare key is the boolean true.
                    (!numeric).then_some(())?;
                    self.parameters()?;
                }
                self.skip(|b| b == b' ' || b == b'\t');
                if self.peek().is_none() {
                    return Some(());
                }
                self.eat(b',').then_some(())?;
                self.skip(|b| b == b' ' || b == b'\t');
                self.peek()?;
            }
        }

        /// A key; upper-case letters are let through (`Max-Age`), as directives are commonly
        /// written, though RFC 8941 keys are lower-case.
        fn key(&mut self) -> Option<&[u8]> {
            let start = self.at;
            let first = self.peek()?;
            (first.is_ascii_alphabetic() || first == b'*').then_some(())?;
            self.skip(|b| b.is_ascii_alphanumeric() || b"_-.*".contains(&b));
            Some(&self.input[start..self.at])
        }

        fn parameters(&mut self) -> Option<()> {
            while self.eat(b';') {
                self.skip(|b| b == b' ');
                self.key()?;
                if self.eat(b'=') {
                    self.bare_item()?;
                }
            }
            Some(())
        }

        fn inner_list(&mut self) -> Option<()> {
            self.eat(b'(').then_some(())?;
            loop {
                self.skip(|b| b == b' ');
                if self.eat(b')') {
                    return self.parameters();
                }
                self.bare_item()?;
                self.parameters()?;
                matches!(self.peek(), Some(b' ' | b')')).then_some(())?;
            }
        }

        fn bare_item(&mut self) -> Option<Item> {
            match self.peek()? {
                b'-' | b'0'..=b'9' => self.number(),
                b'"' => self.string(),
                b':' => self.bytes(),
                b'?' => {
                    self.at += 1;
                    matches!(self.peek(), Some(b'0' | b'1')).then_some(())?;
                    self.at += 1;
                    Some(Item::Other)
                }
                b if b.is_ascii_alphabetic() || b == b'*' => {
                    self.skip(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&b));
                    Some(Item::Other)
                }
                _ => None,
            }
        }

        fn number(&mut self) -> Option<Item> {
            self.eat(b'-');
            let start = self.at;
            self.skip(|b| b.is_ascii_digit());
            let whole = self.at - start;
            (1..=15).contains(&whole).then_some(())?;
            if !self.eat(b'.') {
                return Some(Item::Integer);
            }
            let start = self.at;
            self.skip(|b| b.is_ascii_digit());
            (whole <= 12 && (1..=3).contains(&(self.at - start))).then_some(Item::Other)
        }

        fn string(&mut self) -> Option<Item> {
            self.eat(b'"');
            loop {
                match self.peek()? {
                    b'"' => {
                        self.at += 1;
                        return Some(Item::Other);
                    }
                    b'\\' => {
                        self.at += 1;
                        matches!(self.peek(), Some(b'"' | b'\\')).then_some(())?;
                        self.at += 1;
                    }
                    0x20..=0x7e => self.at += 1,
                    _ => return None,
                }
            }
        }

        fn bytes(&mut self) -> Option<Item> {
            self.eat(b':');
            self.skip(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
            self.eat(b':').then_some(Item::Other)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    /// `Tue, 14 Nov 2023 22:13:20 GMT`.
    const NOW_SECS: u64 = 1_700_000_000;
    const NOW_DATE: &str = "Tue, 14 Nov 2023 22:13:20 GMT";
    const NOW_PLUS_60_DATE: &str = "Tue, 14 Nov 2023 22:14:20 GMT";
    const NOW_MINUS_10_DATE: &str = "Tue, 14 Nov 2023 22:13:10 GMT";

    const NO_DEFAULTS: Defaults = Defaults {
        default_ttl: None,
        stale_while_revalidate: Duration::ZERO,
        stale_if_error: Duration::ZERO,
    };
    const ROUTE: Defaults = Defaults {
        default_ttl: Some(Duration::from_secs(300)),
        stale_while_revalidate: Duration::from_secs(10),
        stale_if_error: Duration::from_secs(20),
    };

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW_SECS)
    }

    fn secs(seconds: u64) -> Duration {
        Duration::from_secs(seconds)
    }

    fn request(method: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut request = RequestHeader::build(method, b"/", None).unwrap();
        for (name, value) in headers {
            request.append_header(name.to_string(), *value).unwrap();
        }
        request
    }

    fn response(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut response = ResponseHeader::build(status, None).unwrap();
        for (name, value) in headers {
            response.append_header(name.to_string(), *value).unwrap();
        }
        response
    }

    fn decide_get(status: u16, headers: &[(&str, &str)], defaults: &Defaults) -> Decision {
        decide(
            &request("GET", &[]),
            &response(status, headers),
            defaults,
            now(),
        )
    }

    /// Stored, fresh for `fresh_for` seconds, with no stale serving.
    fn fresh(fresh_for: u64) -> Decision {
        stored(fresh_for, 0, 0)
    }

    fn stored(fresh_for: u64, stale_while_revalidate: u64, stale_if_error: u64) -> Decision {
        Decision::Store(Freshness {
            fresh_for: secs(fresh_for),
            stale_while_revalidate: secs(stale_while_revalidate),
            stale_if_error: secs(stale_if_error),
        })
    }

    fn skip(reason: SkipReason) -> Decision {
        Decision::Skip(reason)
    }

    fn response_headers(headers: &[(&str, &str)]) -> HeaderMap {
        response(200, headers).headers.clone()
    }

    fn variance_of(vary: &[&str], request_headers: &[(&str, &str)]) -> Option<HashBinary> {
        let vary: Vec<(&str, &str)> = vary.iter().map(|line| ("vary", *line)).collect();
        variance(&response_headers(&vary), &request("GET", request_headers))
    }

    #[test]
    fn only_get_and_head_are_stored() {
        let cacheable = response(200, &[("cache-control", "max-age=60")]);
        for method in ["GET", "HEAD"] {
            let decision = decide(&request(method, &[]), &cacheable, &NO_DEFAULTS, now());
            assert_eq!(decision, fresh(60), "{method}");
        }
        for method in ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"] {
            let decision = decide(&request(method, &[]), &cacheable, &NO_DEFAULTS, now());
            assert_eq!(decision, skip(SkipReason::Method), "{method}");
        }
    }

    #[test]
    fn informational_partial_and_not_modified_are_never_stored() {
        for status in [100, 103, 206, 304] {
            let decision = decide_get(status, &[("cache-control", "public, max-age=60")], &ROUTE);
            assert_eq!(decision, skip(SkipReason::Status), "{status}");
        }
    }

    #[test]
    fn max_age_gives_freshness() {
        let decision = decide_get(200, &[("cache-control", "max-age=60")], &NO_DEFAULTS);
        assert_eq!(decision, fresh(60));
    }

    #[test]
    fn s_maxage_beats_max_age() {
        let decision = decide_get(
            200,
            &[("cache-control", "max-age=10, s-maxage=60")],
            &NO_DEFAULTS,
        );
        assert_eq!(decision, fresh(60));
    }

    #[test]
    fn directives_are_case_insensitive_and_may_span_lines() {
        let decision = decide_get(
            200,
            &[("cache-control", "Public"), ("cache-control", "Max-Age=60")],
            &NO_DEFAULTS,
        );
        assert_eq!(decision, fresh(60));
    }

    #[test]
    fn invalid_max_age_is_already_stale() {
        for value in ["max-age=soon", "max-age", "max-age=-5"] {
            let decision = decide_get(200, &[("cache-control", value)], &ROUTE);
            assert_eq!(decision, stored(0, 10, 20), "{value}");
        }
        // An invalid s-maxage still forbids the route's stale windows.
        let decision = decide_get(
            200,
            &[("cache-control", "s-maxage=1.5, max-age=60")],
            &ROUTE,
        );
        assert_eq!(decision, stored(0, 0, 0));
    }

    #[test]
    fn huge_max_age_is_capped_at_two_to_the_thirty_one() {
        let decision = decide_get(
            200,
            &[("cache-control", "max-age=99999999999999999999")],
            &NO_DEFAULTS,
        );
        assert_eq!(decision, fresh(u64::from(DELTA_SECONDS_OVERFLOW_VALUE)));
    }

    #[test]
    fn no_store_is_not_stored() {
        let decision = decide_get(200, &[("cache-control", "no-store, max-age=60")], &ROUTE);
        assert_eq!(decision, skip(SkipReason::NoStore));
    }

    #[test]
    fn private_is_not_stored_with_or_without_field_names() {
        for value in [
            "private",
            "private, max-age=60",
            "private=\"set-cookie\", max-age=60",
        ] {
            let decision = decide_get(200, &[("cache-control", value)], &ROUTE);
            assert_eq!(decision, skip(SkipReason::Private), "{value}");
        }
    }

    /// Found by `cache::proptests::no_store_is_never_stored` and `private_is_never_stored`:
    /// a line that started with whitespace hid its first directive.
    #[test]
    fn whitespace_before_a_line_hides_no_directive() {
        for (field, value) in [
            ("cache-control", "  No-stOre=23.68"),
            ("cache-control", "\tprivate, max-age=60"),
            ("cdn-cache-control", "\tprivate"),
            ("surrogate-control", " no-store"),
        ] {
            let headers = [("cache-control", "public, max-age=60"), (field, value)];
            let decision = decide_get(
                200,
                &headers[usize::from(field == "cache-control")..],
                &ROUTE,
            );
            assert!(
                matches!(
                    decision,
                    Decision::Skip(SkipReason::NoStore | SkipReason::Private)
                ),
                "{field}: {value:?} gave {decision:?}"
            );
        }
        // The regression of the property: `CDN-Cache-Control` governs, its second line private.
        let decision = decide_get(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("cdn-cache-control", "immutable=qgo"),
                (
                    "cdn-cache-control",
                    "\tprivate=\"set-cookie, must-revalidate\"",
                ),
            ],
            &ROUTE,
        );
        assert_eq!(decision, skip(SkipReason::Private));
    }

    #[test]
    fn cdn_cache_control_overrides_cache_control_private() {
        let decision = decide_get(
            200,
            &[
                ("cache-control", "private, no-store"),
                ("cdn-cache-control", "max-age=60"),
            ],
            &NO_DEFAULTS,
        );
        assert_eq!(decision, fresh(60));
    }

    #[test]
    fn cdn_cache_control_no_store_beats_a_cacheable_cache_control() {
        let decision = decide_get(
            200,
            &[
                ("cache-control", "public, max-age=60"),
                ("cdn-cache-control", "no-store"),
            ],
            &ROUTE,
        );
        assert_eq!(decision, skip(SkipReason::NoStore));
    }

    #[test]
    fn targeted_field_ignores_cache_control_freshness_and_expires() {
        let untargeted = [
            ("cache-control", "max-age=10, stale-while-revalidate=5"),
            ("date", NOW_DATE),
            ("expires", NOW_PLUS_60_DATE),
        ];
        for targeted in ["cdn-cache-control", "surrogate-control"] {
            let mut headers = untargeted.to_vec();
            headers.push((targeted, "max-age=30"));
            assert_eq!(decide_get(200, &headers, &ROUTE), stored(30, 10, 20));

            let mut headers = untargeted.to_vec();
            headers.push((targeted, "stale-if-error=5"));
            assert_eq!(decide_get(200, &headers, &ROUTE), stored(300, 10, 5));
            assert_eq!(
                decide_get(200, &headers, &NO_DEFAULTS),
                skip(SkipReason::NoFreshness),
                "{targeted}: neither max-age=10 nor Expires counts"
            );
        }
    }

    #[test]
    fn surrogate_control_overrides_cdn_cache_control_and_cache_control() {
        let decision = decide_get(
            200,
            &[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "private"),
                ("surrogate-control", "max-age=120"),
            ],
            &NO_DEFAULTS,
        );
        assert_eq!(decision, fresh(120));
    }

    #[test]
    fn surrogate_control_max_age_with_plus() {
        let decision = decide_get(200, &[("surrogate-control", "max-age=60+30")], &NO_DEFAULTS);
        assert_eq!(decision, fresh(60));
    }

    #[test]
    fn plus_suffix_is_invalid_outside_surrogate_control_max_age() {
        // Not a structured field at all: CDN-Cache-Control is ignored, and nothing else gives
        // freshness.
        let decision = decide_get(200, &[("cdn-cache-control", "max-age=60+30")], &NO_DEFAULTS);
        assert_eq!(decision, skip(SkipReason::NoFreshness));
        let decision = decide_get(200, &[("cache-control", "max-age=60+30")], &NO_DEFAULTS);
        assert_eq!(decision, fresh(0));
    }

    #[test]
    fn unparseable_targeted_field_still_replaces_cache_control() {
        for garbage in ["", "===", ",,;;", "\"unterminated"] {
            let decision = decide_get(
                200,
                &[
                    ("cache-control", "no-store"),
                    ("surrogate-control", garbage),
                ],
                &ROUTE,
            );
            assert_eq!(decision, stored(300, 10, 20), "{garbage:?}");
        }
    }

    #[test]
    fn vary_star() {
        for vary in ["*", "accept-encoding, *"] {
            let decision = decide_get(
                200,
                &[("cache-control", "max-age=60"), ("vary", vary)],
                &ROUTE,
            );
            assert_eq!(decision, skip(SkipReason::VaryStar), "{vary}");
        }
        let decision = decide_get(
            200,
            &[("cache-control", "max-age=60"), ("vary", "accept-encoding")],
            &ROUTE,
        );
        assert_eq!(decision, stored(60, 10, 20));
    }

    #[test]
    fn authorization_needs_public_s_maxage_or_must_revalidate() {
        let authorized = request("GET", &[("authorization", "Bearer token")]);
        let decide_authorized = |cache_control: &str| {
            decide(
                &authorized,
                &response(200, &[("cache-control", cache_control)]),
                &NO_DEFAULTS,
                now(),
            )
        };
        assert_eq!(
            decide_authorized("max-age=60"),
            skip(SkipReason::Authorization)
        );
        assert_eq!(
            decide_authorized("proxy-revalidate, max-age=60"),
            skip(SkipReason::Authorization)
        );
        assert_eq!(decide_authorized("public, max-age=60"), fresh(60));
        assert_eq!(decide_authorized("s-maxage=60"), fresh(60));
        assert_eq!(decide_authorized("must-revalidate, max-age=60"), fresh(60));
    }

    #[test]
    fn authorization_allowance_comes_from_the_governing_field() {
        let authorized = request("GET", &[("authorization", "Basic dXNlcjpwYXNz")]);
        let ignored_public = response(
            200,
            &[
                ("cache-control", "public"),
                ("cdn-cache-control", "max-age=60"),
            ],
        );
        assert_eq!(
            decide(&authorized, &ignored_public, &NO_DEFAULTS, now()),
            skip(SkipReason::Authorization)
        );
        let targeted_public = response(
            200,
            &[
                ("cache-control", "private"),
                ("cdn-cache-control", "public, max-age=60"),
            ],
        );
        assert_eq!(
            decide(&authorized, &targeted_public, &NO_DEFAULTS, now()),
            fresh(60)
        );
    }

    #[test]
    fn set_cookie_needs_public() {
        let decision = decide_get(
            200,
            &[("cache-control", "max-age=60"), ("set-cookie", "id=1")],
            &ROUTE,
        );
        assert_eq!(decision, skip(SkipReason::SetCookie));
        let decision = decide_get(
            200,
            &[
                ("cache-control", "s-maxage=60, must-revalidate"),
                ("set-cookie", "id=1"),
            ],
            &ROUTE,
        );
        assert_eq!(decision, skip(SkipReason::SetCookie));
        let decision = decide_get(
            200,
            &[
                ("cache-control", "public, max-age=60"),
                ("set-cookie", "id=1"),
            ],
            &NO_DEFAULTS,
        );
        assert_eq!(decision, fresh(60));
    }

    #[test]
    fn skip_reasons_are_checked_in_rule_order() {
        let everything_wrong = [
            ("cache-control", "no-store, private"),
            ("vary", "*"),
            ("set-cookie", "id=1"),
        ];
        let authorized = [("authorization", "Bearer token")];
        let check = |method: &str, status: u16, headers: &[(&str, &str)], reason: SkipReason| {
            let decision = decide(
                &request(method, &authorized),
                &response(status, headers),
                &NO_DEFAULTS,
                now(),
            );
            assert_eq!(decision, skip(reason), "{method} {status} {headers:?}");
        };
        check("POST", 206, &everything_wrong, SkipReason::Method);
        check("GET", 206, &everything_wrong, SkipReason::Status);
        check("GET", 200, &everything_wrong, SkipReason::NoStore);
        check(
            "GET",
            200,
            &[("cache-control", "private"), ("vary", "*")],
            SkipReason::Private,
        );
        check(
            "GET",
            200,
            &[("vary", "*"), ("set-cookie", "id=1")],
            SkipReason::VaryStar,
        );
        check(
            "GET",
            200,
            &[("set-cookie", "id=1")],
            SkipReason::Authorization,
        );
        check(
            "GET",
            200,
            &[("cache-control", "s-maxage=60"), ("set-cookie", "id=1")],
            SkipReason::SetCookie,
        );
        check(
            "GET",
            200,
            &[("cache-control", "public")],
            SkipReason::NoFreshness,
        );
    }

    #[test]
    fn expires_minus_date() {
        let decision = decide_get(
            200,
            &[("date", NOW_MINUS_10_DATE), ("expires", NOW_PLUS_60_DATE)],
            &NO_DEFAULTS,
        );
        assert_eq!(decision, fresh(70));
    }

    #[test]
    fn expires_counts_from_now_without_a_usable_date() {
        for date in [None, Some("yesterday")] {
            let mut headers = vec![("expires", NOW_PLUS_60_DATE)];
            headers.extend(date.map(|date| ("date", date)));
            assert_eq!(
                decide_get(200, &headers, &NO_DEFAULTS),
                fresh(60),
                "{date:?}"
            );
        }
    }

    #[test]
    fn expires_accepts_obsolete_date_formats() {
        let decision = decide_get(
            200,
            &[
                ("date", "Tuesday, 14-Nov-23 22:13:20 GMT"),
                ("expires", "Tue Nov 14 22:14:20 2023"),
            ],
            &NO_DEFAULTS,
        );
        assert_eq!(decision, fresh(60));
    }

    #[test]
    fn unparseable_expires_is_already_expired() {
        for expires in ["0", "-1", "never"] {
            let decision = decide_get(200, &[("expires", expires)], &ROUTE);
            assert_eq!(decision, stored(0, 10, 20), "{expires}");
        }
    }

    #[test]
    fn expires_before_date_is_already_expired() {
        let decision = decide_get(
            200,
            &[("date", NOW_DATE), ("expires", NOW_MINUS_10_DATE)],
            &ROUTE,
        );
        assert_eq!(decision, stored(0, 10, 20));
    }

    #[test]
    fn max_age_beats_expires() {
        let decision = decide_get(
            200,
            &[
                ("cache-control", "max-age=5"),
                ("date", NOW_DATE),
                ("expires", NOW_PLUS_60_DATE),
            ],
            &NO_DEFAULTS,
        );
        assert_eq!(decision, fresh(5));
    }

    #[test]
    fn expires_beats_the_route_default() {
        let decision = decide_get(
            200,
            &[("date", NOW_DATE), ("expires", NOW_PLUS_60_DATE)],
            &ROUTE,
        );
        assert_eq!(decision, stored(60, 10, 20));
    }

    #[test]
    fn age_is_subtracted() {
        let with_age = |age: &str| {
            decide_get(
                200,
                &[("cache-control", "max-age=60"), ("age", age)],
                &NO_DEFAULTS,
            )
        };
        assert_eq!(with_age("20"), fresh(40));
        assert_eq!(with_age(" 20 "), fresh(40));
        assert_eq!(with_age("60"), fresh(0));
        assert_eq!(with_age("100"), fresh(0));
        assert_eq!(with_age("99999999999999999999"), fresh(0));
    }

    #[test]
    fn unparseable_age_is_ignored() {
        for age in ["", "old", "-20", "20.5", ", 2"] {
            let decision = decide_get(
                200,
                &[("cache-control", "max-age=60"), ("age", age)],
                &NO_DEFAULTS,
            );
            assert_eq!(decision, fresh(60), "{age:?}");
        }
    }

    #[test]
    fn age_is_subtracted_from_expires_and_route_default() {
        let decision = decide_get(
            200,
            &[
                ("date", NOW_DATE),
                ("expires", NOW_PLUS_60_DATE),
                ("age", "15"),
            ],
            &NO_DEFAULTS,
        );
        assert_eq!(decision, fresh(45));
        let decision = decide_get(200, &[("age", "100")], &ROUTE);
        assert_eq!(decision, stored(200, 10, 20));
    }

    #[test]
    fn no_cache_stores_with_zero_freshness_and_no_stale() {
        for value in [
            "no-cache",
            "no-cache, max-age=60, stale-while-revalidate=30, stale-if-error=30",
            "no-cache=\"set-cookie\", s-maxage=60",
        ] {
            let decision = decide_get(200, &[("cache-control", value)], &ROUTE);
            assert_eq!(decision, fresh(0), "{value}");
        }
    }

    #[test]
    fn route_default_ttl_only_for_default_cacheable_statuses() {
        for status in [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501] {
            assert_eq!(
                decide_get(status, &[], &ROUTE),
                stored(300, 10, 20),
                "{status}"
            );
        }
        for status in [201, 302, 303, 307, 400, 403, 500, 502, 503] {
            assert_eq!(
                decide_get(status, &[], &ROUTE),
                skip(SkipReason::NoFreshness),
                "{status}"
            );
        }
    }

    #[test]
    fn public_alone_does_not_extend_the_route_default_to_other_statuses() {
        let decision = decide_get(302, &[("cache-control", "public")], &ROUTE);
        assert_eq!(decision, skip(SkipReason::NoFreshness));
    }

    #[test]
    fn without_a_route_default_implicit_freshness_is_not_stored() {
        let decision = decide_get(200, &[("cache-control", "public")], &NO_DEFAULTS);
        assert_eq!(decision, skip(SkipReason::NoFreshness));
    }

    #[test]
    fn explicit_freshness_stores_a_302() {
        for (status, headers) in [
            (302, vec![("cache-control", "max-age=60")]),
            (500, vec![("cache-control", "s-maxage=60")]),
            (307, vec![("date", NOW_DATE), ("expires", NOW_PLUS_60_DATE)]),
            (403, vec![("surrogate-control", "max-age=60")]),
        ] {
            assert_eq!(
                decide_get(status, &headers, &NO_DEFAULTS),
                fresh(60),
                "{status}"
            );
        }
    }

    #[test]
    fn must_revalidate_disables_stale_serving() {
        for value in [
            "max-age=60, must-revalidate",
            "max-age=60, proxy-revalidate",
            "max-age=60, must-revalidate, stale-while-revalidate=30, stale-if-error=30",
        ] {
            let decision = decide_get(200, &[("cache-control", value)], &ROUTE);
            assert_eq!(decision, fresh(60), "{value}");
        }
    }

    #[test]
    fn response_stale_directives_override_route_defaults() {
        let decision = decide_get(
            200,
            &[(
                "cache-control",
                "max-age=60, stale-while-revalidate=30, stale-if-error=3600",
            )],
            &ROUTE,
        );
        assert_eq!(decision, stored(60, 30, 3600));
        let decision = decide_get(
            200,
            &[("cache-control", "max-age=60, stale-while-revalidate=0")],
            &ROUTE,
        );
        assert_eq!(decision, stored(60, 0, 20));
    }

    #[test]
    fn route_stale_defaults_apply_without_stale_directives() {
        let decision = decide_get(200, &[("cache-control", "max-age=60")], &ROUTE);
        assert_eq!(decision, stored(60, 10, 20));
    }

    #[test]
    fn s_maxage_keeps_only_the_responses_own_stale_windows() {
        // RFC 9111 §5.2.2.10: s-maxage means proxy-revalidate for a shared cache.
        let decision = decide_get(200, &[("cache-control", "s-maxage=60")], &ROUTE);
        assert_eq!(decision, stored(60, 0, 0));
        let decision = decide_get(
            200,
            &[("cache-control", "s-maxage=60, stale-if-error=30")],
            &ROUTE,
        );
        assert_eq!(decision, stored(60, 0, 30));
    }

    #[test]
    fn invalid_stale_directive_means_no_stale_serving() {
        let decision = decide_get(
            200,
            &[("cache-control", "max-age=60, stale-if-error=forever")],
            &ROUTE,
        );
        assert_eq!(decision, stored(60, 10, 0));
    }

    #[test]
    fn stale_directives_come_from_the_governing_field() {
        let decision = decide_get(
            200,
            &[
                (
                    "cache-control",
                    "must-revalidate, stale-while-revalidate=99",
                ),
                ("cdn-cache-control", "max-age=60, stale-if-error=5"),
            ],
            &ROUTE,
        );
        assert_eq!(decision, stored(60, 10, 5));
    }

    #[test]
    fn skip_reason_tokens() {
        let tokens: Vec<&str> = [
            SkipReason::Method,
            SkipReason::Status,
            SkipReason::NoStore,
            SkipReason::Private,
            SkipReason::Authorization,
            SkipReason::SetCookie,
            SkipReason::VaryStar,
            SkipReason::NoFreshness,
        ]
        .into_iter()
        .map(SkipReason::as_str)
        .collect();
        assert_eq!(
            tokens,
            [
                "method",
                "status",
                "no-store",
                "private",
                "authorization",
                "set-cookie",
                "vary-star",
                "no-freshness"
            ]
        );
    }

    #[test]
    fn no_vary_no_variance() {
        let request = request("GET", &[("accept-encoding", "gzip")]);
        assert_eq!(variance(&response_headers(&[]), &request), None);
    }

    #[test]
    fn empty_vary_no_variance() {
        assert_eq!(
            variance_of(&["", " , ,"], &[("accept-encoding", "gzip")]),
            None
        );
    }

    #[test]
    fn vary_star_alone_has_no_variance() {
        assert_eq!(variance_of(&["*"], &[("accept-encoding", "gzip")]), None);
    }

    #[test]
    fn variance_ignores_whitespace_and_case() {
        let expected = variance_of(&["accept-encoding"], &[("accept-encoding", "gzip,br")]);
        assert!(expected.is_some());
        for (vary, request_headers) in [
            (
                vec!["Accept-Encoding"],
                vec![("accept-encoding", "gzip, br")],
            ),
            (
                vec![" ACCEPT-ENCODING ,"],
                vec![("Accept-Encoding", " gzip ,  br ")],
            ),
            (
                vec!["accept-encoding"],
                vec![("accept-encoding", "gzip"), ("accept-encoding", "br")],
            ),
        ] {
            assert_eq!(
                variance_of(&vary, &request_headers),
                expected,
                "{vary:?} {request_headers:?}"
            );
        }
    }

    #[test]
    fn different_accept_encoding_gives_different_variance() {
        let gzip = variance_of(&["accept-encoding"], &[("accept-encoding", "gzip")]);
        let br = variance_of(&["accept-encoding"], &[("accept-encoding", "br")]);
        assert!(gzip.is_some() && br.is_some());
        assert_ne!(gzip, br);
    }

    #[test]
    fn missing_request_header_is_its_own_variant() {
        let missing = variance_of(&["accept-language"], &[]);
        let present = variance_of(&["accept-language"], &[("accept-language", "fr")]);
        assert!(missing.is_some());
        assert_ne!(missing, present);
    }

    #[test]
    fn vary_lines_are_combined_and_deduplicated() {
        let request_headers = [("accept-encoding", "gzip"), ("accept-language", "fr")];
        let expected = variance_of(&["accept-encoding, accept-language"], &request_headers);
        assert_eq!(
            variance_of(
                &["accept-language", "Accept-Encoding, accept-language"],
                &request_headers
            ),
            expected
        );
        assert_ne!(
            variance_of(&["accept-encoding"], &request_headers),
            expected
        );
    }

    #[test]
    fn variance_depends_only_on_listed_headers() {
        let a = variance_of(
            &["accept-encoding"],
            &[("accept-encoding", "gzip"), ("user-agent", "a")],
        );
        let b = variance_of(
            &["accept-encoding"],
            &[("accept-encoding", "gzip"), ("user-agent", "b")],
        );
        assert_eq!(a, b);
    }

    #[test]
    fn variance_skips_a_star_among_names() {
        let request_headers = [("accept-encoding", "gzip")];
        assert_eq!(
            variance_of(&["accept-encoding, *"], &request_headers),
            variance_of(&["accept-encoding"], &request_headers)
        );
    }

    #[test]
    fn varies_on_everything_only_with_a_star() {
        assert!(varies_on_everything(&response_headers(&[("vary", "*")])));
        assert!(varies_on_everything(&response_headers(&[("vary", " * ")])));
        assert!(varies_on_everything(&response_headers(&[
            ("vary", "accept-encoding"),
            ("vary", "*")
        ])));
        assert!(!varies_on_everything(&response_headers(&[])));
        assert!(!varies_on_everything(&response_headers(&[(
            "vary",
            "accept-encoding, origin"
        )])));
    }

    #[test]
    fn age_is_the_first_value_of_the_first_line_without_parameters() {
        let with_age = |age: &str| {
            decide_get(
                200,
                &[("cache-control", "max-age=60"), ("age", age)],
                &NO_DEFAULTS,
            )
        };
        assert_eq!(with_age("1, 2"), fresh(59));
        assert_eq!(with_age("7200, 0"), fresh(0));
        assert_eq!(with_age("0, 7200"), fresh(60));
        assert_eq!(with_age("20;foo=bar"), fresh(40));
    }

    #[test]
    fn http_dates_are_read_in_any_letter_case_and_all_three_formats() {
        let at = |secs: u64| Some(UNIX_EPOCH + secs_of(secs));
        fn secs_of(secs: u64) -> Duration {
            Duration::from_secs(secs)
        }
        // 1994-11-06 08:49:37 UTC, the RFC's example.
        let example = at(784_111_777);
        for text in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "SUN, 06 NOV 1994 08:49:37 gmt",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            // A weekday that does not match the date is ignored.
            "Thu, 06 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(http_date(text.as_bytes()), example, "{text:?}");
        }
        assert_eq!(http_date(NOW_DATE.as_bytes()), Some(now()));
        assert_eq!(
            http_date(b"Thursday, 18-Aug-50 02:01:18 GMT"),
            http_date(b"Thu, 18 Aug 2050 02:01:18 GMT")
        );
        assert_eq!(http_date(b"Thu, 01 Jan 1970 00:00:00 GMT"), at(0));
        assert!(http_date(b"Wed, 31 Dec 1969 23:59:59 GMT").is_some());
        for invalid in [
            "",
            "0",
            "Thu, 18 Aug 2050 02:01:18 UTC",
            "Thu, 18 Aug 2050 02:01:18 AEST",
            "Thu, 18 Aug 50 02:01:18 GMT",
            "Thu 18 Aug 2050 02:01:18 GMT",
            "Thu, 18  Aug  2050 02:01:18 GMT",
            "Thu, 18-Aug-2050 02:01:18 GMT",
            "Thu, 18 Aug 2050 02.01.18 GMT",
            "Thu, 18 Aug 2050 2:01:18 GMT",
            "Thu, 32 Aug 2050 02:01:18 GMT",
            "Thu, 18 Aug 2050 24:01:18 GMT",
            "Thu, 18 Foo 2050 02:01:18 GMT",
            "Xyz, 18 Aug 2050 02:01:18 GMT",
            // 24 bytes, as asctime, but not ASCII.
            "Thü Aug  8 02:01:18 205",
            "ü, 18 Aug 2050 02:01:18 GMT",
        ] {
            assert_eq!(http_date(invalid.as_bytes()), None, "{invalid:?}");
        }
    }

    #[test]
    fn expires_is_read_leniently_but_only_once() {
        let decision = decide_get(
            200,
            &[
                ("date", NOW_DATE),
                ("expires", "TUE, 14 NOV 2023 22:14:20 gmt"),
            ],
            &NO_DEFAULTS,
        );
        assert_eq!(decision, fresh(60));
        let decision = decide_get(
            200,
            &[
                ("date", NOW_DATE),
                ("expires", NOW_PLUS_60_DATE),
                ("expires", NOW_PLUS_60_DATE),
            ],
            &NO_DEFAULTS,
        );
        assert_eq!(decision, fresh(0));
    }

    #[test]
    fn last_modified_gives_a_tenth_of_its_age_as_heuristic_freshness() {
        // Modified 1000 s before the response's Date: fresh for 100 s.
        let modified = "Tue, 14 Nov 2023 21:56:40 GMT";
        let decision = decide_get(
            200,
            &[("date", NOW_DATE), ("last-modified", modified)],
            &NO_DEFAULTS,
        );
        assert_eq!(decision, fresh(100));
        // Statuses not cacheable by default need `public`.
        let decision = decide_get(
            599,
            &[("date", NOW_DATE), ("last-modified", modified)],
            &NO_DEFAULTS,
        );
        assert_eq!(decision, skip(SkipReason::NoFreshness));
        let decision = decide_get(
            599,
            &[
                ("date", NOW_DATE),
                ("last-modified", modified),
                ("cache-control", "public"),
            ],
            &NO_DEFAULTS,
        );
        assert_eq!(decision, fresh(100));
        // At most a day, however old.
        let decision = decide_get(
            200,
            &[
                ("date", NOW_DATE),
                ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ],
            &NO_DEFAULTS,
        );
        assert_eq!(decision, fresh(86_400));
        // A route's default_ttl is the operator's word and comes first; explicit freshness
        // before both.
        let decision = decide_get(
            200,
            &[("date", NOW_DATE), ("last-modified", modified)],
            &ROUTE,
        );
        assert_eq!(decision, stored(300, 10, 20));
        let decision = decide_get(
            200,
            &[
                ("date", NOW_DATE),
                ("last-modified", modified),
                ("cache-control", "max-age=5"),
            ],
            &NO_DEFAULTS,
        );
        assert_eq!(decision, fresh(5));
        // Modified after its own Date, or a targeted field that gives no freshness: none.
        let decision = decide_get(
            200,
            &[("date", NOW_DATE), ("last-modified", NOW_PLUS_60_DATE)],
            &NO_DEFAULTS,
        );
        assert_eq!(decision, skip(SkipReason::NoFreshness));
        let decision = decide_get(
            200,
            &[
                ("date", NOW_DATE),
                ("last-modified", modified),
                ("cdn-cache-control", "public"),
            ],
            &NO_DEFAULTS,
        );
        assert_eq!(decision, skip(SkipReason::NoFreshness));
    }

    #[test]
    fn must_understand_overrides_no_store_for_known_statuses_only() {
        let cache_control = ("cache-control", "max-age=60, no-store, must-understand");
        assert_eq!(decide_get(200, &[cache_control], &NO_DEFAULTS), fresh(60));
        assert_eq!(
            decide_get(599, &[cache_control], &NO_DEFAULTS),
            skip(SkipReason::NoStore)
        );
    }

    #[test]
    fn an_invalid_cdn_cache_control_is_ignored() {
        for invalid in [
            "max-age=10000, &&&&&",
            "max-age=\"10000\"",
            "max-age",
            "max-age=60,",
            "max-age=(1 2)",
            "private=\"unterminated",
        ] {
            let decision = decide_get(
                200,
                &[
                    ("cdn-cache-control", invalid),
                    ("cache-control", "no-store"),
                ],
                &NO_DEFAULTS,
            );
            assert_eq!(decision, skip(SkipReason::NoStore), "{invalid:?}");
        }
        for valid in [
            "max-age=60",
            "MaX-aGe=60",
            "max-age=60, stale-if-error=10;x=?1, public",
            "max-age=60, foo=\"bar\", baz=(a b \"c\"), q=0.5, t=:aGk=:",
        ] {
            let decision = decide_get(
                200,
                &[("cdn-cache-control", valid), ("cache-control", "no-store")],
                &NO_DEFAULTS,
            );
            assert!(matches!(decision, Decision::Store(_)), "{valid:?}");
        }
    }

    #[test]
    fn language_and_encoding_preferences_are_normalised() {
        for header in ["accept-language", "accept-encoding"] {
            let of = |value: &str| variance_of(&[header], &[(header, value)]);
            assert_eq!(of("en, de"), of("de, en"), "{header}");
            assert_eq!(of("en, de"), of("De , EN"), "{header}");
            assert_eq!(of("en;q=0.5, de"), of("de;q=1.0, en;q=0.500"), "{header}");
            assert_ne!(of("en;q=0.5, de"), of("en, de"), "{header}");
        }
        // Other fields keep their order and case.
        let of = |value: &str| variance_of(&["x-list"], &[("x-list", value)]);
        assert_ne!(of("a, b"), of("b, a"));
    }

    #[test]
    fn conditional_requests_are_answered_by_validators() {
        let stored = response(
            200,
            &[
                ("etag", "W/\"v1\""),
                ("date", NOW_DATE),
                ("last-modified", NOW_MINUS_10_DATE),
            ],
        );
        let answers = |headers: &[(&str, &str)]| not_modified(&request("GET", headers), &stored);
        assert!(answers(&[("if-none-match", "\"v1\"")]));
        assert!(answers(&[("if-none-match", "\"v0\", W/\"v1\"")]));
        assert!(!answers(&[("if-none-match", "\"v2\"")]));
        // If-None-Match wins over If-Modified-Since.
        assert!(!answers(&[
            ("if-none-match", "\"v2\""),
            ("if-modified-since", NOW_DATE)
        ]));
        assert!(answers(&[("if-modified-since", NOW_MINUS_10_DATE)]));
        assert!(!answers(&[(
            "if-modified-since",
            "Tue, 14 Nov 2023 22:13:09 GMT"
        )]));
        assert!(!answers(&[]));
        // Without Last-Modified, the stored Date stands in for it.
        let undated = response(200, &[("date", NOW_DATE)]);
        let since = |date: &str| request("GET", &[("if-modified-since", date)]);
        assert!(not_modified(&since(NOW_DATE), &undated));
        assert!(!not_modified(&since(NOW_MINUS_10_DATE), &undated));
        // Only a 200 becomes a 304.
        let missing = response(404, &[("etag", "\"v1\"")]);
        assert!(!not_modified(
            &request("GET", &[("if-none-match", "\"v1\"")]),
            &missing
        ));
    }

    #[test]
    fn a_304_updates_the_stored_fields_except_framing_vary_and_cookies() {
        let stored = response(
            200,
            &[
                ("content-length", "36"),
                ("content-type", "text/plain"),
                ("x-kept", "old"),
                ("x-updated", "old"),
                ("x-updated", "older"),
                ("vary", "accept-encoding"),
                ("age", "30"),
                ("cache-control", "max-age=1"),
            ],
        );
        let not_modified = response(
            304,
            &[
                ("content-length", "0"),
                ("x-updated", "new"),
                ("vary", "origin"),
                ("set-cookie", "a=b"),
                ("cache-control", "max-age=3600"),
                ("content-type", "text/plain; charset=utf-8"),
            ],
        );
        let updated = freshen(&stored, &not_modified).unwrap();
        let values = |name: &str| -> Vec<&str> {
            updated
                .headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect()
        };
        assert_eq!(updated.status, 200);
        assert_eq!(values("content-length"), ["36"]);
        assert_eq!(values("x-kept"), ["old"]);
        assert_eq!(values("x-updated"), ["new"]);
        assert_eq!(values("vary"), ["accept-encoding"]);
        assert_eq!(values("cache-control"), ["max-age=3600"]);
        assert_eq!(values("content-type"), ["text/plain; charset=utf-8"]);
        assert!(values("set-cookie").is_empty());
        assert!(values("age").is_empty());
    }
}
