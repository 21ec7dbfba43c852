//! The CDN cache through the real proxy, against a real origin that counts its requests:
//! hits, what is not stored, freshness rules, Vary, revalidation, stale serving, request
//! coalescing, the memory bound, ranges, purges and filters around the cache.

use std::time::Duration;

use edgeward_testkit::{client, expected_bytes_sha256, filters, reqwest, Origin, Proxy};
use serde_json::Value;

use crate::support::{config, eventually, metric, metric_if_exposed, start_proxy};

/// What came back: status, headers, body.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: bytes::Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn cache_status(&self) -> &str {
        self.header("cache-status").unwrap_or("")
    }

    /// The `Cache-Status` field, parsed.
    fn cache(&self) -> CacheStatus {
        CacheStatus::parse(self.cache_status())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The origin's hit count for the path when it made this response.
    fn n(&self) -> u64 {
        self.json()["n"].as_u64().unwrap()
    }
}

/// A `Cache-Status` field (RFC 9211) as edgeward writes it, taken apart: `edgeward; hit;
/// ttl=59`, `edgeward; fwd=miss`, `edgeward; fwd=stale; fwd-status=304; ttl=60`, ...
/// Parameters are compared whole and numbers as numbers (`ttl=10` is not `ttl=1`).
#[derive(Debug)]
struct CacheStatus {
    field: String,
    /// The parameters after the cache's name, in order: `hit` → `("hit", None)`.
    params: Vec<(String, Option<String>)>,
}

impl CacheStatus {
    fn parse(field: &str) -> CacheStatus {
        let mut parts = field.split(';').map(str::trim);
        assert_eq!(parts.next(), Some("edgeward"), "Cache-Status: {field:?}");
        let params = parts
            .map(|part| match part.split_once('=') {
                Some((key, value)) => (key.to_owned(), Some(value.to_owned())),
                None => (part.to_owned(), None),
            })
            .collect();
        CacheStatus {
            field: field.to_owned(),
            params,
        }
    }

    /// The value of parameter `key` (`Some(None)` for a bare one such as `hit`).
    fn param(&self, key: &str) -> Option<Option<&str>> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, value)| value.as_deref())
    }

    /// Served from the cache without asking the origin.
    fn is_hit(&self) -> bool {
        self.param("hit") == Some(None) && self.param("fwd").is_none()
    }

    /// Forwarded to the origin for `reason` (`miss`, `stale`, `bypass`).
    fn is_fwd(&self, reason: &str) -> bool {
        self.param("fwd") == Some(Some(reason)) && self.param("hit").is_none()
    }

    /// Forwarded because stale, and the origin answered `status`.
    fn is_stale_with_status(&self, status: u16) -> bool {
        self.is_fwd("stale") && self.fwd_status() == Some(status)
    }

    fn fwd_status(&self) -> Option<u16> {
        let value = self.param("fwd-status")??;
        Some(
            value
                .parse()
                .unwrap_or_else(|e| panic!("fwd-status in {self}: {e}")),
        )
    }

    /// Seconds of freshness left (negative when stale).
    fn ttl(&self) -> Option<i64> {
        let value = self.param("ttl")??;
        Some(
            value
                .parse()
                .unwrap_or_else(|e| panic!("ttl in {self}: {e}")),
        )
    }

    fn detail(&self) -> Option<&str> {
        self.param("detail")?
    }

    fn assert_hit_with_ttl(&self, expected: std::ops::RangeInclusive<i64>) {
        assert!(self.is_hit(), "not a hit: {self}");
        let ttl = self.ttl().unwrap_or_else(|| panic!("no ttl: {self}"));
        assert!(
            expected.contains(&ttl),
            "ttl {ttl} not in {expected:?}: {self}"
        );
    }
}

impl std::fmt::Display for CacheStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.field)
    }
}

async fn request(proxy: &Proxy, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = client::http1().request(method, proxy.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("request through the proxy");
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.bytes().await.expect("response body"),
    }
}

async fn get(proxy: &Proxy, path: &str) -> Answer {
    request(proxy, "GET", path, &[]).await
}

/// A proxy caching everything under `/cache/` from `origin` with the route cache settings
/// `route_cache` (YAML flow mapping entries) and the top-level `cache` section `cache`.
async fn caching_proxy(origin: &Origin, route_cache: &str, cache: &str) -> Proxy {
    start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
admin: {address: "{{admin}}"}
cache: {$cache}
upstreams:
  origin: {endpoints: ["$origin"], read_timeout: 5s}
routes:
  - {match: {path_prefix: /cache/}, upstream: origin, cache: {$route_cache}}
  - {upstream: origin}
"#,
        &[
            ("origin", origin.addr().to_string()),
            ("route_cache", route_cache.to_string()),
            ("cache", cache.to_string()),
        ],
    ))
    .await
}

#[tokio::test]
async fn a_second_request_is_a_hit_and_the_origin_is_not_asked_again() {
    let origin = Origin::start("origin").await;
    let proxy = caching_proxy(&origin, "enabled: true", "").await;
    let path = "/cache/hello?h=cache-control:max-age=60";

    let first = get(&proxy, path).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.cache_status(), "edgeward; fwd=miss");
    assert_eq!(first.n(), 1);

    let second = get(&proxy, path).await;
    assert_eq!(second.status, 200);
    // Stored for max-age=60: a hit with (at most) that much freshness left.
    second.cache().assert_hit_with_ttl(1..=60);
    assert_eq!(second.n(), 1, "the stored body");
    assert!(second.header("age").is_some(), "hits carry Age");
    assert_eq!(origin.hits_for("/cache/hello"), 1);

    // HEAD is answered from the same object, without a body.
    let head = request(&proxy, "HEAD", path, &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.cache().is_hit(), "{}", head.cache_status());
    assert!(head.body.is_empty());
    assert_eq!(origin.hits_for("/cache/hello"), 1);

    // Routes without `cache` are untouched.
    let uncached = get(&proxy, "/other").await;
    assert_eq!(uncached.header("cache-status"), None);
}

#[tokio::test]
async fn hop_by_hop_and_cdn_fields_reach_no_client_miss_or_hit() {
    let origin = Origin::start("origin").await;
    let proxy = caching_proxy(&origin, "enabled: true", "").await;
    let path = "/cache/hop?h=cache-control:max-age=60&h=connection:x-hop&h=x-hop:1\
                &h=keep-alive:5&h=surrogate-key:k1&h=x-kept:yes";
    for outcome in ["miss", "hit"] {
        let answer = get(&proxy, path).await;
        let cache = answer.cache();
        let as_expected = match outcome {
            "hit" => cache.is_hit(),
            _ => cache.is_fwd("miss"),
        };
        assert!(as_expected, "{outcome}: {cache}");
        for field in ["x-hop", "keep-alive", "surrogate-key"] {
            assert_eq!(answer.header(field), None, "{outcome}: {field}");
        }
        assert_eq!(answer.header("x-kept"), Some("yes"), "{outcome}");
    }
    assert_eq!(origin.hits_for("/cache/hop"), 1);

    // The same on a route that does not cache.
    let plain = start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
upstreams: {origin: {endpoints: ["$origin"]}}
routes: [{upstream: origin}]
"#,
        &[("origin", origin.addr().to_string())],
    ))
    .await;
    let answer = get(&plain, path).await;
    assert_eq!(answer.status, 200);
    for field in ["x-hop", "keep-alive"] {
        assert_eq!(answer.header(field), None, "plain route: {field}");
    }
    assert_eq!(answer.header("x-kept"), Some("yes"));
}

#[tokio::test]
async fn uncacheable_responses_are_not_stored() {
    let origin = Origin::start("origin").await;
    let proxy = caching_proxy(&origin, "default_ttl: 60s", "").await;
    for (name, query, detail) in [
        ("no-store", "h=cache-control:no-store", "no-store"),
        ("private", "h=cache-control:private,max-age=60", "private"),
        (
            "cookie",
            "h=cache-control:max-age=60&h=set-cookie:id=1",
            "set-cookie",
        ),
        ("no-ttl", "status=302&h=location:/x", "no-freshness"),
    ] {
        let path = format!("/cache/{name}?{query}");
        for round in 1..=2 {
            let answer = get(&proxy, &path).await;
            assert_eq!(
                answer.cache_status(),
                format!("edgeward; fwd=miss; detail={detail}"),
                "{name}, request {round}"
            );
        }
        assert_eq!(origin.hits_for(&format!("/cache/{name}")), 2, "{name}");
    }

    // `public` makes a Set-Cookie response storable, but the cookie is never replayed.
    let path = "/cache/public-cookie?h=cache-control:public,max-age=60&h=set-cookie:id=1";
    let first = get(&proxy, path).await;
    assert_eq!(first.header("set-cookie"), Some("id=1"));
    let hit = get(&proxy, path).await;
    assert!(hit.cache().is_hit(), "{}", hit.cache_status());
    assert_eq!(hit.header("set-cookie"), None);

    // Without explicit freshness, the route's default_ttl applies to cacheable statuses.
    get(&proxy, "/cache/default").await;
    let hit = get(&proxy, "/cache/default").await;
    assert!(hit.cache().is_hit(), "{}", hit.cache_status());
    assert_eq!(origin.hits_for("/cache/default"), 1);
}

#[tokio::test]
async fn targeted_fields_and_s_maxage_decide_freshness() {
    let origin = Origin::start("origin").await;
    let proxy = caching_proxy(&origin, "enabled: true", "").await;
    // s-maxage beats max-age for a shared cache.
    let path = "/cache/s?h=cache-control:max-age=0,s-maxage=120";
    get(&proxy, path).await;
    let hit = get(&proxy, path).await;
    // s-maxage=120 (not max-age=0, which would not even be a hit).
    hit.cache().assert_hit_with_ttl(61..=120);
    assert_eq!(origin.hits_for("/cache/s"), 1);

    // CDN-Cache-Control governs this cache, overriding a private Cache-Control; it is
    // kept for downstream CDNs, while Surrogate-Control and surrogate keys are removed.
    let path =
        "/cache/cdn?h=cache-control:private&h=cdn-cache-control:max-age=300&h=surrogate-key:a";
    let first = get(&proxy, path).await;
    let hit = get(&proxy, path).await;
    // CDN-Cache-Control's max-age=300.
    hit.cache().assert_hit_with_ttl(241..=300);
    assert_eq!(hit.header("cache-control"), Some("private"));
    assert_eq!(first.header("surrogate-key"), None);
    assert_eq!(hit.header("surrogate-key"), None);
    assert_eq!(origin.hits_for("/cache/cdn"), 1);

    // Surrogate-Control too, and it never reaches the client.
    let path = "/cache/surrogate?h=surrogate-control:max-age=50&h=cache-control:no-store";
    get(&proxy, path).await;
    let hit = get(&proxy, path).await;
    assert!(hit.cache().is_hit(), "{}", hit.cache_status());
    assert_eq!(hit.header("surrogate-control"), None);
}

#[tokio::test]
async fn vary_keeps_one_variant_per_accept_encoding() {
    let origin = Origin::start("origin").await;
    let proxy = caching_proxy(&origin, "enabled: true", "").await;
    let path = "/cache/vary?h=cache-control:max-age=60&h=vary:accept-encoding";
    let gzip = [("accept-encoding", "gzip")];
    let br = [("accept-encoding", "br")];

    let first_gzip = request(&proxy, "GET", path, &gzip).await;
    let first_br = request(&proxy, "GET", path, &br).await;
    assert_eq!((first_gzip.n(), first_br.n()), (1, 2));
    for _ in 0..2 {
        let gzip_hit = request(&proxy, "GET", path, &gzip).await;
        let br_hit = request(&proxy, "GET", path, &br).await;
        assert!(gzip_hit.cache().is_hit(), "{}", gzip_hit.cache_status());
        assert!(br_hit.cache().is_hit(), "{}", br_hit.cache_status());
        assert_eq!(gzip_hit.json()["headers"]["accept-encoding"], "gzip");
        assert_eq!(br_hit.json()["headers"]["accept-encoding"], "br");
    }
    assert_eq!(origin.hits_for("/cache/vary"), 2);
}

#[tokio::test]
async fn expired_objects_are_revalidated_and_a_304_refreshes_them() {
    let origin = Origin::start("origin").await;
    let proxy = caching_proxy(&origin, "enabled: true", "").await;
    let path = "/cache/etag?h=cache-control:max-age=1&etag=v1";
    let first = get(&proxy, path).await;
    assert_eq!(first.header("etag"), Some("\"v1\""));
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let revalidated = get(&proxy, path).await;
    assert_eq!(revalidated.status, 200);
    assert!(
        revalidated.cache().is_stale_with_status(304),
        "{}",
        revalidated.cache_status()
    );
    assert_eq!(
        revalidated.n(),
        1,
        "the stored body, confirmed by the origin"
    );
    assert_eq!(
        origin
            .last_request_headers()
            .get("if-none-match")
            .map(String::as_str),
        Some("\"v1\""),
        "the origin was asked conditionally"
    );
    // Refreshed: fresh again without asking the origin.
    let hit = get(&proxy, path).await;
    assert!(hit.cache().is_hit(), "{}", hit.cache_status());
    assert_eq!(origin.hits_for("/cache/etag"), 2);

    // A new version replaces the stored one.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let changed = "/cache/changed?h=cache-control:max-age=1";
    get(&proxy, changed).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let refetched = get(&proxy, changed).await;
    assert_eq!(refetched.cache_status(), "edgeward; fwd=stale");
    assert_eq!(refetched.n(), 2);
}

#[tokio::test]
async fn stale_while_revalidate_serves_stale_once_then_fresh() {
    let origin = Origin::start("origin").await;
    let proxy = caching_proxy(&origin, "stale_while_revalidate: 30s", "").await;
    let path = "/cache/swr?h=cache-control:max-age=1";
    assert_eq!(get(&proxy, path).await.n(), 1);
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let stale = get(&proxy, path).await;
    assert_eq!(
        stale.cache().detail(),
        Some("stale-while-revalidate"),
        "{}",
        stale.cache_status()
    );
    assert_eq!(stale.n(), 1, "served stale at once");
    // The background refresh lands; then the fresh copy is served.
    let fresh = eventually("the refreshed object", || async {
        let answer = get(&proxy, path).await;
        (answer.n() == 2).then_some(answer)
    })
    .await;
    assert!(fresh.cache().is_hit(), "{}", fresh.cache_status());
    assert_eq!(origin.hits_for("/cache/swr"), 2);
}

#[tokio::test]
async fn stale_if_error_serves_stale_while_the_origin_fails() {
    let origin = Origin::start("origin").await;
    let proxy = caching_proxy(&origin, "stale_if_error: 300s", "").await;
    let path = "/cache/sie?h=cache-control:max-age=1";
    get(&proxy, path).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // The origin answers 503: the stale copy is served.
    origin.set_failure(Some(503));
    let stale = get(&proxy, path).await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.n(), 1);
    assert!(
        stale.cache().is_stale_with_status(503),
        "{}",
        stale.cache_status()
    );
    assert_eq!(stale.cache().detail(), Some("stale-if-error"));

    // The origin is gone altogether: still served.
    drop(origin);
    let stale = get(&proxy, path).await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.n(), 1);
    assert_eq!(
        stale.cache().detail(),
        Some("stale-if-error"),
        "{}",
        stale.cache_status()
    );

    // Without stale-if-error, an error is an error.
    let strict_origin = Origin::start("origin").await;
    let strict = caching_proxy(&strict_origin, "enabled: true", "").await;
    get(&strict, path).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    strict_origin.set_failure(Some(503));
    assert_eq!(get(&strict, path).await.status, 503);
}

#[tokio::test]
async fn a_304_updates_the_stored_headers_it_carries() {
    let origin = Origin::start("origin").await;
    let proxy = caching_proxy(&origin, "enabled: true", "").await;
    // The 200 says version 1 and max-age=1; the 304 that revalidates it says version 2, a
    // longer max-age, a new field and a Content-Length of its own (empty) body.
    let path = "/cache/update304?etag=v1&h=cache-control:max-age=1&h=x-version:1\
                &h=content-type:text/plain&nm=x-version:2&nm=cache-control:max-age=60\
                &nm=x-added:yes&nm=content-type:text/plain;charset=utf-8";
    let first = get(&proxy, path).await;
    assert_eq!(first.header("x-version"), Some("1"));
    let stored_length = first.header("content-length").map(str::to_owned);
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let revalidated = get(&proxy, path).await;
    assert!(
        revalidated.cache().is_stale_with_status(304),
        "{}",
        revalidated.cache_status()
    );
    for answer in [&revalidated, &get(&proxy, path).await] {
        assert_eq!(answer.status, 200);
        assert_eq!(
            answer.header("x-version"),
            Some("2"),
            "{}",
            answer.cache_status()
        );
        assert_eq!(answer.header("x-added"), Some("yes"));
        assert_eq!(answer.header("cache-control"), Some("max-age=60"));
        assert_eq!(
            answer.header("content-type"),
            Some("text/plain;charset=utf-8")
        );
        // The stored body and its length are kept.
        assert_eq!(answer.header("content-length"), stored_length.as_deref());
        assert_eq!(answer.n(), 1);
    }
    // The 304's max-age=60 is the freshness now: a hit, not another revalidation.
    let hit = get(&proxy, path).await;
    hit.cache().assert_hit_with_ttl(50..=60);
    assert_eq!(origin.hits_for("/cache/update304"), 2);
}

#[tokio::test]
async fn hits_carry_the_age_the_origin_gave_plus_their_time_in_the_cache() {
    let origin = Origin::start("origin").await;
    let proxy = caching_proxy(&origin, "enabled: true", "").await;
    // Already 30 s old when it arrived: fresh for 30 s more, and Age counts from 30.
    let path = "/cache/aged?h=cache-control:max-age=60&h=age:30";
    assert_eq!(get(&proxy, path).await.header("age"), Some("30"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let hit = get(&proxy, path).await;
    hit.cache().assert_hit_with_ttl(25..=29);
    let age: u64 = hit.header("age").unwrap().parse().unwrap();
    assert!((31..=35).contains(&age), "Age {age}");
}

#[tokio::test]
async fn a_clients_conditional_request_is_answered_from_the_cache_or_passed_on() {
    let origin = Origin::start("origin").await;
    let proxy = caching_proxy(&origin, "enabled: true", "").await;
    let path = "/cache/conditional?etag=v1&h=cache-control:max-age=60";
    let matching = [("if-none-match", "\"v0\", \"v1\"")];
    let other = [("if-none-match", "\"v2\"")];

    // A miss: the origin is asked for the whole response (to store it), and the client still
    // gets its 304.
    let miss = request(&proxy, "GET", path, &matching).await;
    assert_eq!(miss.status, 304, "{}", miss.cache_status());
    assert!(miss.body.is_empty());
    assert_eq!(miss.header("etag"), Some("\"v1\""));
    assert!(!origin.last_request_headers().contains_key("if-none-match"));
    // Hits: 304 when a tag matches, the stored 200 when none does.
    let hit = request(&proxy, "GET", path, &matching).await;
    assert_eq!(hit.status, 304);
    assert!(hit.cache().is_hit(), "{}", hit.cache_status());
    let full = request(&proxy, "GET", path, &other).await;
    assert_eq!((full.status, full.n()), (200, 1));
    let head = request(&proxy, "HEAD", path, &matching).await;
    assert_eq!(head.status, 304);
    assert_eq!(origin.hits_for("/cache/conditional"), 1);

    // If-Modified-Since against a stored response without Last-Modified compares with its
    // Date (RFC 9111 §4.3.2).
    let dated = "/cache/dated?h=cache-control:max-age=60";
    let first = get(&proxy, dated).await;
    let date = first.header("date").unwrap().to_owned();
    let since = request(&proxy, "GET", dated, &[("if-modified-since", &date)]).await;
    assert_eq!(since.status, 304, "{}", since.cache_status());
    let earlier = "Thu, 01 Jan 2015 00:00:00 GMT";
    let before = request(&proxy, "GET", dated, &[("if-modified-since", earlier)]).await;
    assert_eq!((before.status, before.n()), (200, 1));
    assert_eq!(origin.hits_for("/cache/dated"), 1);

    // Responses the cache does not store: the client's validators are still honoured, by
    // the cache on the first request and by the origin once the URL is known uncacheable.
    let uncacheable = "/cache/uncacheable?etag=v1&h=cache-control:no-store";
    for round in 1..=2 {
        let answer = request(&proxy, "GET", uncacheable, &matching).await;
        assert_eq!(
            answer.status,
            304,
            "request {round}: {}",
            answer.cache_status()
        );
        let answer = request(&proxy, "GET", uncacheable, &other).await;
        assert_eq!(answer.status, 200, "request {round}");
    }
}

#[tokio::test]
async fn head_requests_fill_revalidate_and_use_the_stored_get() {
    let origin = Origin::start("origin").await;
    let proxy = caching_proxy(&origin, "enabled: true", "").await;

    // A HEAD miss fetches the whole GET response and stores it: a later GET is a hit with
    // the body.
    let path = "/cache/head-first?h=cache-control:max-age=60";
    let head = request(&proxy, "HEAD", path, &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    let length = head.header("content-length").map(str::to_owned);
    let hit = get(&proxy, path).await;
    assert!(hit.cache().is_hit(), "{}", hit.cache_status());
    assert_eq!(hit.n(), 1);
    assert_eq!(hit.header("content-length"), length.as_deref());
    assert_eq!(origin.hits_for("/cache/head-first"), 1);

    // A HEAD for a stale object revalidates it (RFC 9111 §4.3.5): the 304 updates the
    // stored GET, which later GETs are served.
    let path = "/cache/head-stale?etag=v1&h=cache-control:max-age=1&h=x-version:1\
                &nm=x-version:2&nm=cache-control:max-age=60";
    get(&proxy, path).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let head = request(&proxy, "HEAD", path, &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert!(
        head.cache().is_stale_with_status(304),
        "{}",
        head.cache_status()
    );
    assert_eq!(head.header("x-version"), Some("2"));
    let hit = get(&proxy, path).await;
    assert!(hit.cache().is_hit(), "{}", hit.cache_status());
    assert_eq!((hit.n(), hit.header("x-version")), (1, Some("2")));
    assert_eq!(origin.hits_for("/cache/head-stale"), 2);
}

#[tokio::test]
async fn an_origin_that_hangs_up_gets_the_client_a_502_or_a_stale_copy_never_a_closed_connection() {
    let origin = Origin::start("origin").await;
    let proxy = caching_proxy(&origin, "stale_if_error: 300s", "").await;
    let allowed = "/cache/hangup?h=cache-control:max-age=1";
    let forbidden = "/cache/hangup-strict?h=cache-control:max-age=1,must-revalidate";
    let s_maxage = "/cache/hangup-shared?h=cache-control:s-maxage=1";
    for path in [allowed, forbidden, s_maxage] {
        assert_eq!(get(&proxy, path).await.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    origin.set_hang_up(true);

    // Nothing stored: a 502 with the JSON error body, not a dropped connection.
    let missing = get(&proxy, "/cache/hangup-missing").await;
    assert_eq!(missing.status, 502);
    assert_eq!(missing.json()["status"], 502, "{:?}", missing.body);
    // Stale within the route's stale-if-error window: served stale.
    let stale = get(&proxy, allowed).await;
    assert_eq!((stale.status, stale.n()), (200, 1));
    assert_eq!(
        stale.cache().detail(),
        Some("stale-if-error"),
        "{}",
        stale.cache_status()
    );
    // must-revalidate, and s-maxage (proxy-revalidate for a shared cache), forbid it.
    for path in [forbidden, s_maxage] {
        let answer = get(&proxy, path).await;
        assert_eq!(answer.status, 502, "{path}: {}", answer.cache_status());
    }

    origin.set_hang_up(false);
    let recovered = get(&proxy, allowed).await;
    assert_eq!(recovered.status, 200);
    assert_eq!(recovered.cache_status(), "edgeward; fwd=stale");
    assert!(recovered.n() > 1, "a new response");
}

#[tokio::test]
async fn freshness_is_read_as_caches_commonly_read_it() {
    let origin = Origin::start("origin").await;
    let proxy = caching_proxy(&origin, "enabled: true", "").await;
    // Each path once more: a hit (stored, still fresh) or a miss (not stored, or stale).
    let old_date = ("h", "last-modified:Thu, 01 Jan 2015 00:00:00 GMT");
    let no_store = ("h", "cache-control:no-store");
    /// A path's name, its query pairs, and whether it is stored.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], bool);
    let cases: [Case; 12] = [
        // Heuristic freshness: a tenth of the time since Last-Modified, for statuses
        // cacheable by default or with `public`.
        ("heuristic", &[old_date], true),
        ("heuristic-599", &[("status", "599"), old_date], false),
        (
            "heuristic-599-public",
            &[("status", "599"), ("h", "cache-control:public"), old_date],
            true,
        ),
        // HTTP-dates in any letter case and in asctime form.
        (
            "expires-case",
            &[("h", "expires:THU, 01 JAN 2099 00:00:00 gmt")],
            true,
        ),
        (
            "expires-asctime",
            &[("h", "expires:Thu Jan  1 00:00:00 2099")],
            true,
        ),
        // An invalid CDN-Cache-Control is ignored: Cache-Control's no-store governs.
        (
            "cdn-wrong-type",
            &[("h", "cdn-cache-control:max-age=\"600\""), no_store],
            false,
        ),
        (
            "cdn-garbage",
            &[("h", "cdn-cache-control:max-age=600, &&&&&"), no_store],
            false,
        ),
        (
            "cdn-valid",
            &[("h", "cdn-cache-control:max-age=600"), no_store],
            true,
        ),
        // must-understand lets a known status be stored despite no-store.
        (
            "must-understand",
            &[("h", "cache-control:max-age=600, no-store, must-understand")],
            true,
        ),
        (
            "must-understand-599",
            &[
                ("status", "599"),
                ("h", "cache-control:max-age=600, no-store, must-understand"),
            ],
            false,
        ),
        // Age: the first value of the line.
        (
            "age-old-first",
            &[("h", "cache-control:max-age=600"), ("h", "age:7200, 0")],
            false,
        ),
        (
            "age-young-first",
            &[("h", "cache-control:max-age=600"), ("h", "age:0, 7200")],
            true,
        ),
    ];
    for (name, query, stored) in cases {
        let mut url = reqwest::Url::parse(&format!("http://origin/cache/{name}")).unwrap();
        url.query_pairs_mut().extend_pairs(query);
        let path = format!("{}?{}", url.path(), url.query().unwrap_or(""));
        get(&proxy, &path).await;
        let again = get(&proxy, &path).await;
        assert_eq!(
            again.cache().is_hit(),
            stored,
            "{name}: {}",
            again.cache_status()
        );
        let asked = if stored { 1 } else { 2 };
        assert_eq!(origin.hits_for(&format!("/cache/{name}")), asked, "{name}");
    }
}

#[tokio::test]
async fn language_preferences_in_another_order_or_case_select_the_same_variant() {
    let origin = Origin::start("origin").await;
    let proxy = caching_proxy(&origin, "enabled: true", "").await;
    let path = "/cache/lang?h=cache-control:max-age=60&h=vary:accept-language";
    let first = request(&proxy, "GET", path, &[("accept-language", "en, de;q=0.5")]).await;
    assert_eq!(first.n(), 1);
    for same in ["de;q=0.5, en", "EN , De;Q=0.500", "en;q=1.0,de;q=0.5"] {
        let answer = request(&proxy, "GET", path, &[("accept-language", same)]).await;
        assert!(answer.cache().is_hit(), "{same}: {}", answer.cache_status());
    }
    let other = request(&proxy, "GET", path, &[("accept-language", "de, en;q=0.5")]).await;
    assert_eq!(other.n(), 2, "another preference is another variant");
}

#[tokio::test]
async fn concurrent_misses_make_one_origin_request() {
    let origin = Origin::start("origin").await;
    let proxy = caching_proxy(&origin, "enabled: true", "").await;
    let path = "/cache/herd?h=cache-control:max-age=60&delay=500";
    let requests: Vec<_> = (0..50).map(|_| get(&proxy, path)).collect();
    let answers = futures_util::future::join_all(requests).await;
    for answer in &answers {
        assert_eq!(answer.status, 200);
        assert_eq!(answer.n(), 1);
    }
    assert_eq!(origin.hits_for("/cache/herd"), 1);
}

#[tokio::test]
async fn memory_stays_within_its_bound_while_filling_four_times_over() {
    let origin = Origin::start("origin").await;
    let proxy = caching_proxy(&origin, "enabled: true", "memory: 4MiB, max_object: 1MiB").await;
    // 16 MiB of 256 KiB objects into a 4 MiB cache.
    for i in 0..64 {
        let path = format!("/cache/fill-{i}?h=cache-control:max-age=600&size=262144");
        let answer = get(&proxy, &path).await;
        assert_eq!(answer.body.len(), 262_144);
        // (Exposed once the first object is stored.)
        let stored = metric_if_exposed(&proxy, "edgeward_cache_bytes{tier=\"memory\"}").await;
        assert!(
            stored.is_none_or(|stored| stored <= 4.0 * 1024.0 * 1024.0),
            "{stored:?} bytes stored"
        );
    }
    let stored = metric(&proxy, "edgeward_cache_bytes{tier=\"memory\"}").await;
    assert!(
        stored > 3.0 * 1024.0 * 1024.0 && stored <= 4.0 * 1024.0 * 1024.0,
        "{stored} bytes stored in a full 4 MiB tier"
    );
    let evictions = metric(&proxy, "edgeward_cache_evictions_total{tier=\"memory\"}").await;
    assert!(evictions >= 40.0, "{evictions} evictions");
    // The most recent objects are still there; the first ones are gone.
    let recent = get(
        &proxy,
        "/cache/fill-63?h=cache-control:max-age=600&size=262144",
    )
    .await;
    assert!(recent.cache().is_hit(), "{}", recent.cache_status());
    let evicted = get(
        &proxy,
        "/cache/fill-0?h=cache-control:max-age=600&size=262144",
    )
    .await;
    assert!(evicted.cache().is_fwd("miss"), "{}", evicted.cache_status());

    // Larger than max_object, with or without a length: streamed whole, not stored.
    for (name, chunked) in [("big", ""), ("big-chunked", "&chunked=1")] {
        let path = format!("/cache/{name}?h=cache-control:max-age=600&size=3000000{chunked}");
        for _ in 0..2 {
            let answer = get(&proxy, &path).await;
            assert_eq!(answer.body.len(), 3_000_000);
            assert_eq!(sha256_hex(&answer.body), expected_bytes_sha256(3_000_000));
            assert!(answer.cache().is_fwd("miss"), "{}", answer.cache_status());
        }
        assert_eq!(origin.hits_for(&format!("/cache/{name}")), 2, "{name}");
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

#[tokio::test]
async fn ranges_are_served_from_the_stored_object() {
    let origin = Origin::start("origin").await;
    let proxy = caching_proxy(&origin, "enabled: true", "").await;
    let path = "/cache/ranged?h=cache-control:max-age=60&size=10000";
    let full = get(&proxy, path).await;
    let ranged = request(&proxy, "GET", path, &[("range", "bytes=100-199")]).await;
    assert_eq!(ranged.status, 206);
    assert_eq!(ranged.header("content-range"), Some("bytes 100-199/10000"));
    assert_eq!(&ranged.body[..], &full.body[100..200]);
    assert!(ranged.cache().is_hit(), "{}", ranged.cache_status());
    assert_eq!(origin.hits_for("/cache/ranged"), 1);
}

#[tokio::test]
async fn bypass_rules_and_other_methods_skip_the_cache() {
    let origin = Origin::start("origin").await;
    let proxy = caching_proxy(
        &origin,
        "enabled: true, bypass: {headers: [authorization], cookies: [session]}",
        "",
    )
    .await;
    let path = "/cache/bypass?h=cache-control:public,max-age=60";
    get(&proxy, path).await;
    let with_auth = request(&proxy, "GET", path, &[("authorization", "Bearer x")]).await;
    assert_eq!(
        with_auth.cache_status(),
        "edgeward; fwd=bypass; detail=header"
    );
    let with_session = request(&proxy, "GET", path, &[("cookie", "a=1; session=abc")]).await;
    assert_eq!(
        with_session.cache_status(),
        "edgeward; fwd=bypass; detail=cookie"
    );
    let other_cookie = request(&proxy, "GET", path, &[("cookie", "theme=dark")]).await;
    assert!(other_cookie.cache().is_hit());
    assert_eq!(origin.hits_for("/cache/bypass"), 3);

    // PUT and DELETE pass through untouched and invalidate the URL's stored responses.
    let put = request(&proxy, "PUT", path, &[]).await;
    assert_eq!(put.status, 200);
    assert_eq!(put.cache_status(), "edgeward; fwd=bypass; detail=method");
    let after_put = get(&proxy, path).await;
    assert!(
        after_put.cache().is_fwd("miss"),
        "{}",
        after_put.cache_status()
    );
    assert!(get(&proxy, path).await.cache().is_hit());
    request(&proxy, "DELETE", path, &[]).await;
    assert!(get(&proxy, path).await.cache().is_fwd("miss"));
}

#[tokio::test]
async fn purges_by_url_and_surrogate_key() {
    let origin = Origin::start("origin").await;
    let proxy = caching_proxy(&origin, "enabled: true", "purge_allowed_from: [127.0.0.1]").await;
    let tagged = |name: &str, tags: &str| {
        format!("/cache/{name}?h=cache-control:max-age=600&h=surrogate-key:{tags}")
    };
    let a = tagged("a", "product-1+all");
    let b = tagged("b", "product-2+all");
    let vary = "/cache/v?h=cache-control:max-age=600&h=vary:accept-language";
    for path in [&a, &b] {
        get(&proxy, path).await;
    }
    request(&proxy, "GET", vary, &[("accept-language", "en")]).await;
    request(&proxy, "GET", vary, &[("accept-language", "fr")]).await;
    let cached = |answer: &Answer| answer.cache().is_hit();

    // PURGE of a URL removes every variant.
    let purge = request(&proxy, "PURGE", vary, &[]).await;
    assert_eq!(purge.status, 200);
    assert_eq!(
        purge.json(),
        serde_json::json!({"purged": 2, "mode": "hard"})
    );
    assert!(!cached(
        &request(&proxy, "GET", vary, &[("accept-language", "en")]).await
    ));

    // The admin API purges by surrogate key.
    let purged = admin_purge(&proxy, serde_json::json!({"surrogate_key": "product-1"})).await;
    assert_eq!(purged, serde_json::json!({"purged": 1, "mode": "hard"}));
    assert!(!cached(&get(&proxy, &a).await));
    assert!(cached(&get(&proxy, &b).await));
    let purged = admin_purge(&proxy, serde_json::json!({"surrogate_key": "all"})).await;
    assert_eq!(purged["purged"], 2);

    // ... and by URL, absolute or a bare path.
    get(&proxy, &a).await;
    let host = format!("http://{}{a}", proxy.addr());
    assert_eq!(
        admin_purge(&proxy, serde_json::json!({"url": host})).await["purged"],
        1
    );
    get(&proxy, &a).await;
    assert_eq!(
        admin_purge(&proxy, serde_json::json!({"url": a})).await["purged"],
        1
    );

    // A soft purge marks stale: the next request revalidates instead of refetching.
    let etagged = "/cache/soft?h=cache-control:max-age=600&etag=s1";
    get(&proxy, etagged).await;
    let soft = request(&proxy, "PURGE", etagged, &[("soft-purge", "1")]).await;
    assert_eq!(
        soft.json(),
        serde_json::json!({"purged": 1, "mode": "soft"})
    );
    let revalidated = get(&proxy, etagged).await;
    assert!(
        revalidated.cache().is_stale_with_status(304),
        "{}",
        revalidated.cache_status()
    );
    assert_eq!(origin.hits_for("/cache/soft"), 2);

    let metrics = metric(
        &proxy,
        "edgeward_cache_purged_objects_total{how=\"surrogate_key\",mode=\"hard\"}",
    )
    .await;
    assert_eq!(metrics, 3.0);
}

async fn admin_purge(proxy: &Proxy, body: Value) -> Value {
    let response = client::http1()
        .post(format!(
            "http://{}/cache/purge",
            proxy.placeholder_addr("admin")
        ))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn purge_is_refused_from_other_addresses() {
    let origin = Origin::start("origin").await;
    let proxy = caching_proxy(&origin, "enabled: true", "purge_allowed_from: [10.0.0.0/8]").await;
    let path = "/cache/kept?h=cache-control:max-age=600";
    get(&proxy, path).await;
    let refused = request(&proxy, "PURGE", path, &[]).await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.json()["error"], "purge_forbidden");
    assert!(get(&proxy, path).await.cache().is_hit());
    // The admin listener is trusted: it purges regardless.
    let bad = client::http1()
        .post(format!(
            "http://{}/cache/purge",
            proxy.placeholder_addr("admin")
        ))
        .header("content-type", "application/json")
        .body("{\"nonsense\": 1}")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(
        admin_purge(&proxy, serde_json::json!({"url": path})).await["purged"],
        1
    );
}

/// A proxy with filters around a caching route: `chain` names them, `filters` defines them.
async fn filtered_proxy(origin: &Origin, filters: &str, chain: &str) -> Proxy {
    start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
upstreams:
  origin: {endpoints: ["$origin"]}
filters:
$filters
routes:
  - {upstream: origin, filters: [$chain], cache: {enabled: true}}
"#,
        &[
            ("origin", origin.addr().to_string()),
            ("filters", filters.to_string()),
            ("chain", chain.to_string()),
        ],
    ))
    .await
}

#[tokio::test]
async fn response_filters_run_on_hits_and_never_change_what_is_stored() {
    let origin = Origin::start("origin").await;
    let filters = config(
        r#"
  per-client:
    module: $add_headers
    config: {response: {set: {x-for: "${request.headers.x-user}"}}}
  stored:
    module: $add_headers
    response_phase: before_cache
    config: {response: {set: {x-first: "${request.headers.x-user}"}}}
"#,
        &[("add_headers", filters::ADD_HEADERS.to_string())],
    );
    let proxy = filtered_proxy(&origin, &filters, "per-client, stored").await;
    let path = "/cache/filtered?h=cache-control:max-age=60";
    let alice = request(&proxy, "GET", path, &[("x-user", "alice")]).await;
    assert_eq!(alice.header("x-for"), Some("alice"));
    assert_eq!(alice.header("x-first"), Some("alice"));
    let bob = request(&proxy, "GET", path, &[("x-user", "bob")]).await;
    assert!(bob.cache().is_hit(), "{}", bob.cache_status());
    // After the cache: run for bob on his hit. Before it: alice's response, as stored.
    assert_eq!(bob.header("x-for"), Some("bob"));
    assert_eq!(bob.header("x-first"), Some("alice"));
    assert_eq!(origin.hits_for("/cache/filtered"), 1);
}

#[tokio::test]
async fn body_filters_see_whole_bodies_on_misses_hits_and_revalidations() {
    let origin = Origin::start("origin").await;
    let rewrite = |phase: &str| {
        format!(
            "    module: {}\n    response_phase: {phase}\n    config: {{response: {{find: \"\\\"origin\\\"\", replace: \"\\\"{phase}\\\"\"}}}}\n",
            filters::BODY_REWRITER
        )
    };
    let filters = format!(
        "  after:\n{}  before:\n{}",
        rewrite("after_cache"),
        rewrite("before_cache")
    );
    // `before` rewrites `"origin"` in the stored body to `"before_cache"`. `after` buffers
    // every body until its end before letting it out (finding nothing left to rewrite): a
    // complete JSON body proves that both filters saw the whole body and its end.
    let proxy = filtered_proxy(&origin, &filters, "after, before").await;
    let path = "/cache/rewritten?h=cache-control:max-age=1&etag=r1";
    let expect_whole = |answer: &Answer, what: &str| {
        let json = answer.json();
        assert_eq!(json["before_cache"], "before_cache", "{what}: {json}");
        assert_eq!(json["n"], 1, "{what}: {json}");
    };
    let miss = get(&proxy, path).await;
    assert!(miss.cache().is_fwd("miss"), "{}", miss.cache_status());
    expect_whole(&miss, "miss");
    let hit = get(&proxy, path).await;
    assert!(hit.cache().is_hit(), "{}", hit.cache_status());
    expect_whole(&hit, "hit");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let revalidated = get(&proxy, path).await;
    assert!(
        revalidated.cache().fwd_status() == Some(304),
        "{}",
        revalidated.cache_status()
    );
    expect_whole(&revalidated, "revalidation");
}

#[tokio::test]
async fn a_jwt_protected_cached_route_still_rejects_requests_without_a_token() {
    use base64::Engine as _;
    let origin = Origin::start("origin").await;
    let secret = b"a-secret-for-the-cache-test-0123";
    let jwks = serde_json::json!({"keys": [{
        "kty": "oct", "kid": "k1", "alg": "HS256",
        "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret),
    }]});
    let jwt_config = serde_json::json!({
        "providers": [{"issuer": "https://issuer.test", "audiences": ["edge"], "jwks": jwks}],
    });
    let filters = config(
        "  jwt: {module: $module, config: $config}\n",
        &[
            ("module", filters::JWT_AUTH.to_string()),
            ("config", jwt_config.to_string()),
        ],
    );
    let proxy = filtered_proxy(&origin, &filters, "jwt").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("k1".into());
    let claims = serde_json::json!({"iss": "https://issuer.test", "aud": "edge", "exp": now + 600});
    let token = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap();
    let bearer = format!("Bearer {token}");
    // The route's cache has no bypass rule for Authorization: the origin marks it public.
    let path = "/cache/private-data?h=cache-control:public,max-age=60";
    let authorized = [("authorization", bearer.as_str())];
    assert_eq!(request(&proxy, "GET", path, &authorized).await.status, 200);
    let hit = request(&proxy, "GET", path, &authorized).await;
    assert!(hit.cache().is_hit(), "{}", hit.cache_status());

    let anonymous = get(&proxy, path).await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(
        anonymous.header("cache-status"),
        None,
        "never reached the cache"
    );
    let forged = request(
        &proxy,
        "GET",
        path,
        &[("authorization", "Bearer not.a.token")],
    )
    .await;
    assert_eq!(forged.status, 401);
    assert_eq!(origin.hits_for("/cache/private-data"), 1);
}

/// A proxy with a 4 MiB memory tier and a disk tier of `disk_size` in `folder`.
async fn disk_caching_proxy(origin: &Origin, folder: &std::path::Path, disk_size: &str) -> Proxy {
    let cache = format!(
        "memory: 4MiB, max_object: 1MiB, disk: {{path: '{}', size: {disk_size}}}",
        folder.display()
    );
    caching_proxy(origin, "enabled: true", &cache).await
}

fn quarter_mebibyte(i: usize) -> String {
    format!("/cache/disk-{i}?h=cache-control:max-age=600&size=262144")
}

/// A hit on object `i` of [`quarter_mebibyte`], with its whole body.
fn assert_whole_hit(answer: &Answer, i: usize) {
    let status = answer.cache();
    assert!(status.is_hit(), "object {i}: {status}");
    assert_eq!(
        sha256_hex(&answer.body),
        expected_bytes_sha256(262_144),
        "object {i}"
    );
}

/// Waits until the disk tier holds `objects` objects.
async fn wait_for_disk_objects(proxy: &Proxy, objects: f64) {
    eventually(&format!("{objects} objects on disk"), || async {
        let stored = metric_if_exposed(proxy, "edgeward_cache_objects{tier=\"disk\"}").await;
        (stored == Some(objects)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_disk_tier_holds_more_than_memory_and_survives_a_restart() {
    let origin = Origin::start("origin").await;
    let folder = tempfile::tempdir().unwrap();
    let proxy = disk_caching_proxy(&origin, folder.path(), "64MiB").await;
    // 8 MiB of objects: twice the memory tier.
    for i in 0..32 {
        assert!(get(&proxy, &quarter_mebibyte(i))
            .await
            .cache()
            .is_fwd("miss"));
    }
    wait_for_disk_objects(&proxy, 32.0).await;
    let memory = metric(&proxy, "edgeward_cache_bytes{tier=\"memory\"}").await;
    assert!(memory <= 4.0 * 1024.0 * 1024.0, "{memory} bytes in memory");
    // The first objects left memory long ago: they come back from disk.
    for i in 0..4 {
        assert_whole_hit(&get(&proxy, &quarter_mebibyte(i)).await, i);
    }

    // Another process cannot share the folder: it refuses to start, naming it.
    let second = edgeward_testkit::run_edgeward(
        &["run", "--config", "{dir}/edgeward.yaml"],
        &[(
            "edgeward.yaml",
            &format!(
                "listeners: [{{address: '127.0.0.1:1'}}]\nupstreams: {{o: {{endpoints: ['{}']}}}}\n\
                 routes: [{{upstream: o}}]\ncache: {{disk: {{path: '{}', size: 64MiB}}}}\n",
                origin.addr(),
                folder.path().display()
            ),
        )],
    );
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{stderr}");
    assert!(
        stderr.contains("in use by another edgeward process"),
        "{stderr}"
    );

    drop(proxy);
    let proxy = disk_caching_proxy(&origin, folder.path(), "64MiB").await;
    wait_for_disk_objects(&proxy, 32.0).await;
    for i in 0..32 {
        let answer = get(&proxy, &quarter_mebibyte(i)).await;
        assert_whole_hit(&answer, i);
        assert!(answer.header("age").is_some());
        assert_eq!(origin.hits_for(&format!("/cache/disk-{i}")), 1, "{i}");
    }
}

#[tokio::test]
async fn damaged_files_are_never_served() {
    let origin = Origin::start("origin").await;
    let folder = tempfile::tempdir().unwrap();
    let proxy = disk_caching_proxy(&origin, folder.path(), "64MiB").await;
    for i in 0..8 {
        get(&proxy, &quarter_mebibyte(i)).await;
    }
    wait_for_disk_objects(&proxy, 8.0).await;
    drop(proxy);

    // Truncate one file (found at start-up) and flip a body byte of another (found on read).
    let mut files: Vec<std::path::PathBuf> = walk(folder.path())
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n != "lock"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 8, "{files:?}");
    let bytes = std::fs::read(&files[0]).unwrap();
    std::fs::write(&files[0], &bytes[..bytes.len() / 2]).unwrap();
    let mut bytes = std::fs::read(&files[1]).unwrap();
    let middle = bytes.len() - 1000;
    bytes[middle] ^= 0x55;
    std::fs::write(&files[1], &bytes).unwrap();

    let proxy = disk_caching_proxy(&origin, folder.path(), "64MiB").await;
    wait_for_disk_objects(&proxy, 7.0).await;
    let mut misses = 0;
    for i in 0..8 {
        let answer = get(&proxy, &quarter_mebibyte(i)).await;
        assert_eq!(
            sha256_hex(&answer.body),
            expected_bytes_sha256(262_144),
            "{i}"
        );
        misses += usize::from(answer.cache().is_fwd("miss"));
    }
    assert_eq!(misses, 2, "the two damaged objects are fetched again");
    let corrupt = metric(
        &proxy,
        "edgeward_cache_disk_errors_total{operation=\"corrupt\"}",
    )
    .await;
    assert_eq!(corrupt, 1.0);
}

#[tokio::test]
async fn the_disk_tier_stays_within_its_size() {
    let origin = Origin::start("origin").await;
    let folder = tempfile::tempdir().unwrap();
    let proxy = disk_caching_proxy(&origin, folder.path(), "2MiB").await;
    for i in 0..24 {
        get(&proxy, &quarter_mebibyte(i)).await;
        // (Exposed once the first object is stored.)
        let on_disk = metric_if_exposed(&proxy, "edgeward_cache_bytes{tier=\"disk\"}").await;
        assert!(
            on_disk.is_none_or(|on_disk| on_disk <= 2.0 * 1024.0 * 1024.0),
            "{on_disk:?} bytes on disk"
        );
    }
    eventually("disk evictions", || async {
        let evicted =
            metric_if_exposed(&proxy, "edgeward_cache_evictions_total{tier=\"disk\"}").await;
        evicted.is_some_and(|evicted| evicted >= 10.0).then_some(())
    })
    .await;
    let on_disk = metric(&proxy, "edgeward_cache_bytes{tier=\"disk\"}").await;
    assert!(
        on_disk > 0.0 && on_disk <= 2.0 * 1024.0 * 1024.0,
        "{on_disk} bytes on disk"
    );
    let on_disk: u64 = walk(folder.path())
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    assert!(on_disk <= 2 << 20, "{on_disk} bytes of files");
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test]
async fn a_body_the_origin_breaks_off_is_not_stored_and_never_said_to_be() {
    // An origin that announces 100 bytes, sends 10 and closes, counting its requests.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = listener.local_addr().unwrap();
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let server = tokio::spawn({
        let asked = asked.clone();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut head = [0; 4096];
                let _ = stream.read(&mut head).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nContent-Length: 100\r\n\r\n0123456789")
                    .await;
                let _ = stream.shutdown().await;
            }
        }
    });
    let proxy = start_proxy(&config(
        "listeners: [{address: \"{{listen}}\"}]\nupstreams: {u: {endpoints: [\"$origin\"], retries: 0}}\nroutes: [{upstream: u, cache: {}}]\n",
        &[("origin", origin.to_string())],
    ))
    .await;
    for attempt in 1..=2 {
        let response = client::http1()
            .get(proxy.url("/broken"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        // The head leaves before the body is known: it does not claim the response stored.
        assert_eq!(
            response.headers()["cache-status"],
            "edgeward; fwd=miss",
            "attempt {attempt}"
        );
        assert!(response.bytes().await.is_err(), "the body was cut short");
        // And it was not: the next request asks the origin again.
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), attempt);
    }
    server.abort();
}
