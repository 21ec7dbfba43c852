//! What the HTTP cache may store and for how long, as a shared cache (RFC 9111) that obeys the
//! fields targeted at it (RFC 9213 `CDN-Cache-Control`, Edge Architecture `Surrogate-Control`),
//! and which request headers pick a stored variant. Pure decisions: no I/O, the clock is passed in.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use http::header::{AGE, AUTHORIZATION, DATE, EXPIRES, SET_COOKIE, VARY};
use http::{HeaderMap, Method, StatusCode};
use pingora::cache::cache_control::{CacheControl, DirectiveKey, DELTA_SECONDS_OVERFLOW_VALUE};
use pingora::cache::key::HashBinary;
use pingora::cache::VarianceBuilder;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::conditional_filter::resp_header_as_http_date;

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
    if directives.has("no-store") {
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
        let field = [ControlField::Surrogate, ControlField::Cdn]
            .into_iter()
            .find(|targeted| headers.contains_key(targeted.header_name()))
            .unwrap_or(ControlField::Cache);
        Directives {
            field,
            parsed: CacheControl::from_headers_named(field.header_name(), headers),
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
}

/// `Expires` minus `Date` (or `now` without a usable `Date`); `None` without `Expires`. An invalid
/// `Expires` such as `0` is a time in the past (RFC 9111 §5.3).
fn expires_lifetime(response: &ResponseHeader, now: SystemTime) -> Option<Duration> {
    match resp_header_as_http_date(response, EXPIRES) {
        Ok(None) => None,
        Err(_) => Some(Duration::ZERO),
        Ok(Some(expires)) => {
            let date = match resp_header_as_http_date(response, DATE) {
                Ok(Some(date)) => SystemTime::from(date),
                Ok(None) | Err(_) => now,
            };
            Some(
                SystemTime::from(expires)
                    .duration_since(date)
                    .unwrap_or(Duration::ZERO),
            )
        }
    }
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
    (
        directives
            .seconds(DirectiveKey::StaleWhileRevalidate)
            .unwrap_or(defaults.stale_while_revalidate),
        directives
            .seconds(DirectiveKey::StaleIfError)
            .unwrap_or(defaults.stale_if_error),
    )
}

/// How old the response already was when we received it; an unreadable `Age` is ignored.
fn age(headers: &HeaderMap) -> Duration {
    headers
        .get(AGE)
        .and_then(|value| delta_seconds(value.as_bytes().trim_ascii()))
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
fn normalized_request_value(headers: &HeaderMap, name: &str) -> Vec<u8> {
    let items: Vec<&[u8]> = headers
        .get_all(name)
        .iter()
        .flat_map(|line| line.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .collect();
    items.join(&b',')
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
        for value in [
            "max-age=soon",
            "max-age",
            "max-age=-5",
            "s-maxage=1.5, max-age=60",
        ] {
            let decision = decide_get(200, &[("cache-control", value)], &ROUTE);
            assert_eq!(decision, stored(0, 10, 20), "{value}");
        }
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
        let decision = decide_get(200, &[("cdn-cache-control", "max-age=60+30")], &NO_DEFAULTS);
        assert_eq!(decision, fresh(0));
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
        for age in ["", "old", "-20", "20.5", "1, 2"] {
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
        let decision = decide_get(200, &[("cache-control", "s-maxage=60")], &ROUTE);
        assert_eq!(decision, stored(60, 10, 20));
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
}
