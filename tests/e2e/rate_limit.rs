//! The `rate-limit` filter through the real proxy: many concurrent clients on several workers
//! get exactly the burst (shared and per-request instances), refusals carry `Retry-After` and
//! the RateLimit headers, buckets are keyed by the client behind a trusted proxy, a header, a
//! JWT claim from jwt-auth and the route, dry runs count without refusing, a flood of keys
//! cannot free a drained client, and a wrong configuration is refused naming the key.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use edgeward_testkit::{client, filters, Origin, Proxy};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::support::{
    config, metrics_showing, refused_by_validate, start_proxy, use_built_binary, wait_for_log,
};

/// A proxy in front of `origin` with an admin listener, `workers` worker threads and
/// `sections` (YAML: its filters, routes and anything else; `$rate_limit` is this filter's
/// module, `$jwt_auth` jwt-auth's, `$geo_db` the demo geo database).
async fn proxy(origin: &Origin, workers: usize, sections: &str) -> Proxy {
    let head = format!(
        "listeners: [{{address: \"{{{{listen}}}}\"}}]\nadmin: {{address: \"{{{{admin}}}}\"}}\n\
         workers: {workers}\nupstreams: {{origin: {{endpoints: [\"$origin\"]}}}}\n"
    );
    start_proxy(&config(
        &(head + sections),
        &[
            ("origin", origin.addr().to_string()),
            ("rate_limit", filters::RATE_LIMIT.to_string()),
            ("jwt_auth", filters::JWT_AUTH.to_string()),
            ("geo_db", demo_geo_database()),
        ],
    ))
    .await
}

fn demo_geo_database() -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config/geo/demo.mmdb")
        .display()
        .to_string()
}

/// Request headers: (name, value) pairs.
type Headers<'a> = &'a [(&'a str, &'a str)];

/// A response: its status, headers (lower-case names) and body.
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// `Retry-After` (or another header) as a number of seconds.
    fn seconds(&self, name: &str) -> u64 {
        let value = self.header(name).unwrap_or_else(|| panic!("no {name}"));
        value.parse().unwrap_or_else(|_| panic!("{name}: {value}"))
    }

    /// The `RateLimit` header's keys.
    fn ratelimit(&self) -> BTreeMap<String, u64> {
        let value = self.header("ratelimit").expect("a RateLimit header");
        value
            .split(", ")
            .map(|item| {
                let (key, number) = item.split_once('=').unwrap();
                (key.to_owned(), number.parse().unwrap())
            })
            .collect()
    }
}

async fn get(proxy: &Proxy, path: &str, headers: Headers<'_>) -> Answer {
    let mut request = client::http1().get(proxy.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("request through the proxy");
    Answer {
        status: response.status().as_u16(),
        headers: response
            .headers()
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
            .collect(),
        body: response.text().await.unwrap(),
    }
}

/// The statuses of `path` asked with each of `header_sets`, in order.
async fn statuses(proxy: &Proxy, path: &str, header_sets: &[Headers<'_>]) -> Vec<u16> {
    let mut statuses = Vec::new();
    for headers in header_sets {
        statuses.push(get(proxy, path, headers).await.status);
    }
    statuses
}

fn requests_series(filter: &str, limit: &str, outcome: &str) -> String {
    format!(
        r#"wasmcustom_rate_limit_requests{{filter="{filter}",limit="{limit}",outcome="{outcome}"}}"#
    )
}

#[tokio::test]
async fn concurrent_clients_on_several_workers_get_exactly_the_burst() {
    let origin = Origin::start("origin").await;
    // A burst of 50 and one token an hour: nothing refills during the test. One filter with
    // an instance per worker, one with an instance per request.
    let limit = r#"{limits: [{name: burst, rate: 1, per: 1h, burst: 50, key: [client_address]}]}"#;
    let proxy = proxy(
        &origin,
        4,
        &format!(
            r#"
filters:
  shared: {{module: $rate_limit, isolation: shared, config: {limit}}}
  fresh: {{module: $rate_limit, isolation: request, config: {limit}}}
routes:
  - {{match: {{path_prefix: /shared}}, upstream: origin, filters: [shared]}}
  - {{match: {{path_prefix: /fresh}}, upstream: origin, filters: [fresh]}}
"#
        ),
    )
    .await;

    // 200 requests on each route at once, from many connections.
    let client = client::http1();
    let mut requests = JoinSet::new();
    for n in 0..400 {
        let path = if n % 2 == 0 { "/shared" } else { "/fresh" };
        let request = client.get(proxy.url(path)).send();
        requests.spawn(async move { (path, request.await.expect("an answer").status().as_u16()) });
    }
    let mut counts: BTreeMap<(&str, u16), usize> = BTreeMap::new();
    while let Some(answer) = requests.join_next().await {
        *counts.entry(answer.unwrap()).or_default() += 1;
    }
    assert_eq!(
        counts,
        BTreeMap::from([
            (("/fresh", 200), 50),
            (("/fresh", 429), 150),
            (("/shared", 200), 50),
            (("/shared", 429), 150),
        ])
    );
    assert_eq!(origin.hits(), 100);
    metrics_showing(
        &proxy,
        &[
            (&requests_series("shared", "burst", "admitted"), 50.0),
            (&requests_series("shared", "burst", "refused"), 150.0),
            (&requests_series("fresh", "burst", "admitted"), 50.0),
            (&requests_series("fresh", "burst", "refused"), 150.0),
            (&requests_series("shared", "burst", "untracked"), 0.0),
            (&requests_series("fresh", "burst", "untracked"), 0.0),
        ],
    )
    .await;
}

#[tokio::test]
async fn refusals_carry_retry_after_and_the_ratelimit_headers() {
    let origin = Origin::start("origin").await;
    let limits = "[{name: hourly, rate: 2, per: 1h, key: [client_address]}, \
                  {name: daily, rate: 1000, per: 1d, burst: 100, key: [client_address]}]";
    let proxy = proxy(
        &origin,
        2,
        &format!(
            r#"
filters:
  always: {{module: $rate_limit, config: {{limits: {limits}, headers: always}}}}
  refused: {{module: $rate_limit, config: {{limits: {limits}}}}}
routes:
  - {{match: {{path_prefix: /always}}, upstream: origin, filters: [always]}}
  - {{match: {{path_prefix: /refused}}, upstream: origin, filters: [refused]}}
"#
        ),
    )
    .await;
    let policy = "2;w=3600, 1000;w=86400;burst=100";

    // With `headers: always`, admitted responses tell what is left of the limit closest to
    // refusing: the hourly one (a token back every 1800 s).
    let first = get(&proxy, "/always", &[]).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.header("ratelimit-policy"), Some(policy));
    let ratelimit = first.ratelimit();
    assert_eq!((ratelimit["limit"], ratelimit["remaining"]), (2, 1));
    assert!((1790..=1800).contains(&ratelimit["reset"]), "{ratelimit:?}");
    let second = get(&proxy, "/always", &[]).await.ratelimit();
    assert_eq!((second["limit"], second["remaining"]), (2, 0));
    assert!((3590..=3600).contains(&second["reset"]), "{second:?}");

    // The third is refused: 429, Retry-After until the next token, RateLimit pointing at the
    // same moment, and a JSON body naming the limit.
    let refused = get(&proxy, "/always", &[]).await;
    assert_eq!(refused.status, 429);
    let retry_after = refused.seconds("retry-after");
    assert!((1790..=1800).contains(&retry_after), "{retry_after}");
    assert_eq!(refused.header("ratelimit-policy"), Some(policy));
    assert_eq!(
        refused.ratelimit(),
        BTreeMap::from([
            ("limit".to_owned(), 2),
            ("remaining".to_owned(), 0),
            ("reset".to_owned(), retry_after),
        ])
    );
    assert_eq!(refused.header("content-type"), Some("application/json"));
    assert_eq!(
        serde_json::from_str::<Value>(&refused.body).unwrap(),
        json!({"error": "rate_limited", "limit": "hourly", "retry_after": retry_after})
    );
    assert_eq!(origin.hits(), 2);

    // By default only refusals carry the headers (this filter has buckets of its own).
    let admitted = get(&proxy, "/refused", &[]).await;
    assert_eq!(admitted.status, 200);
    assert_eq!(admitted.header("ratelimit"), None);
    assert_eq!(admitted.header("ratelimit-policy"), None);
    get(&proxy, "/refused", &[]).await;
    let refused = get(&proxy, "/refused", &[]).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("ratelimit-policy"), Some(policy));
    assert_eq!(refused.ratelimit()["reset"], refused.seconds("retry-after"));
}

#[tokio::test]
async fn clients_behind_a_trusted_proxy_have_buckets_of_their_own() {
    let origin = Origin::start("origin").await;
    for (trusted, expected) in [
        // The test client (127.0.0.1) is a trusted proxy: each forwarded client counts.
        ("127.0.0.1/32", [200, 429, 200, 429]),
        // It is not: X-Forwarded-For is the client's claim, and every request is 127.0.0.1's.
        ("10.0.0.0/8", [200, 429, 429, 429]),
    ] {
        let proxy = proxy(
            &origin,
            2,
            &format!(
                r#"
geo: {{database: "$geo_db", trusted_proxies: [{trusted}]}}
filters:
  per-client:
    module: $rate_limit
    config: {{limits: [{{name: per-client, rate: 1, per: 1h, key: [client_address]}}]}}
routes: [{{upstream: origin, filters: [per-client]}}]
"#
            ),
        )
        .await;
        let japan: Headers = &[("x-forwarded-for", "192.0.2.10")];
        let germany: Headers = &[("x-forwarded-for", "198.51.100.20")];
        assert_eq!(
            statuses(&proxy, "/", &[japan, japan, germany, germany]).await,
            expected,
            "trusted proxies {trusted}"
        );
    }
}

#[tokio::test]
async fn buckets_are_keyed_by_a_header_a_jwt_claim_and_the_route() {
    let origin = Origin::start("origin").await;
    let secret = b"a shared secret of the rate-limit test";
    let jwt = json!({
        "providers": [{"issuer": "https://issuer.example.com", "jwks": {"keys": [
            {"kty": "oct", "kid": "k1", "alg": "HS256", "k": URL_SAFE_NO_PAD.encode(secret)}
        ]}}],
        "forward_claims": {"sub": "x-user-id"},
    });
    let proxy = proxy(
        &origin,
        2,
        &format!(
            r#"
filters:
  by-key:
    module: $rate_limit
    config: {{limits: [{{name: api-key, rate: 1, per: 1h, key: [{{header: x-api-key}}]}}]}}
  jwt: {{module: $jwt_auth, config: {jwt}}}
  by-user:
    module: $rate_limit
    config:
      claim_headers: {{sub: x-user-id}}
      limits: [{{name: user, rate: 1, per: 1h, key: [{{claim: sub}}]}}]
  by-route:
    module: $rate_limit
    config: {{limits: [{{name: route, rate: 1, per: 1h, key: [route]}}]}}
routes:
  - {{match: {{path_prefix: /keys}}, upstream: origin, filters: [by-key]}}
  - {{match: {{path_prefix: /users}}, upstream: origin, filters: [jwt, by-user]}}
  - {{name: route-a, match: {{path_prefix: /a}}, upstream: origin, filters: [by-route]}}
  - {{name: route-b, match: {{path_prefix: /b}}, upstream: origin, filters: [by-route]}}
"#
        ),
    )
    .await;

    // A header: one bucket per API key; requests without the header are not limited by it.
    let (k1, k2): (Headers, Headers) = (&[("x-api-key", "k1")], &[("x-api-key", "k2")]);
    assert_eq!(
        statuses(&proxy, "/keys", &[k1, k1, k2, &[], &[], &[]]).await,
        [200, 429, 200, 200, 200, 200]
    );

    // A claim, from the header jwt-auth sets from the verified token: one bucket per user,
    // whatever `x-user-id` the client sends itself (jwt-auth replaces it).
    let token = |sub: &str| {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".to_owned());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = json!({"iss": "https://issuer.example.com", "sub": sub, "exp": now + 600});
        let token = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret));
        format!("Bearer {}", token.unwrap())
    };
    let (alice, bob) = (token("alice"), token("bob"));
    let alice: Headers = &[("authorization", &alice)];
    let bob_posing_as_alice: Headers = &[("authorization", &bob), ("x-user-id", "alice")];
    let bob_posing_as_carol: Headers = &[("authorization", &bob), ("x-user-id", "carol")];
    assert_eq!(
        statuses(
            &proxy,
            "/users",
            &[alice, alice, bob_posing_as_alice, bob_posing_as_carol]
        )
        .await,
        [200, 429, 200, 429]
    );

    // The route: each route the filter is on has its own bucket.
    assert_eq!(statuses(&proxy, "/a", &[&[], &[]]).await, [200, 429]);
    assert_eq!(statuses(&proxy, "/b", &[&[], &[]]).await, [200, 429]);
}

#[tokio::test]
async fn a_dry_run_counts_and_logs_refusals_but_lets_every_request_through() {
    let origin = Origin::start("origin").await;
    let proxy = proxy(
        &origin,
        2,
        r#"
filters:
  trial:
    module: $rate_limit
    config:
      dry_run: true
      headers: always
      limits: [{name: trial, rate: 1, per: 1h, burst: 2, key: [client_address]}]
routes: [{upstream: origin, filters: [trial]}]
"#,
    )
    .await;
    for _ in 0..5 {
        let answer = get(&proxy, "/", &[]).await;
        assert_eq!(answer.status, 200);
        assert_eq!(
            answer.header("ratelimit"),
            None,
            "a dry run shows clients nothing"
        );
    }
    assert_eq!(origin.hits(), 5);
    wait_for_log(
        &proxy,
        "rate-limit: dry run: limit `trial` would refuse client_address=127.0.0.1 (retry after",
    )
    .await;
    metrics_showing(
        &proxy,
        &[
            (&requests_series("trial", "trial", "admitted"), 2.0),
            (&requests_series("trial", "trial", "dry_run_refused"), 3.0),
            (&requests_series("trial", "trial", "refused"), 0.0),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_flood_of_new_keys_stays_in_the_table_and_cannot_free_a_drained_client() {
    let origin = Origin::start("origin").await;
    // A table of 8 keys (two rows of four).
    let proxy = proxy(
        &origin,
        2,
        r#"
filters:
  small:
    module: $rate_limit
    config:
      limits: [{name: small, rate: 1, per: 1h, burst: 3, capacity: 8, key: [{header: x-api-key}]}]
routes: [{upstream: origin, filters: [small]}]
"#,
    )
    .await;
    let heavy: Headers = &[("x-api-key", "heavy")];
    assert_eq!(
        statuses(&proxy, "/", &[heavy, heavy, heavy, heavy]).await,
        [200, 200, 200, 429]
    );
    // 300 new keys, one request each: every one is admitted; once the 7 free entries are
    // taken, each evicts the fullest bucket of its row, never the drained one.
    for n in 0..300 {
        let key = format!("flood-{n}");
        assert_eq!(get(&proxy, "/", &[("x-api-key", &key)]).await.status, 200);
    }
    assert_eq!(statuses(&proxy, "/", &[heavy]).await, [429]);
    metrics_showing(
        &proxy,
        &[
            (&requests_series("small", "small", "admitted"), 303.0),
            (&requests_series("small", "small", "refused"), 2.0),
            (
                r#"wasmcustom_rate_limit_evictions{filter="small",limit="small"}"#,
                293.0,
            ),
        ],
    )
    .await;
}

#[test]
fn a_wrong_configuration_is_refused_naming_the_key() {
    use_built_binary();
    for (limits, expected) in [
        (
            "[{name: hourly, rate: 10, per: 1w}]",
            "rate-limit: invalid configuration: limits[0] (`hourly`): per: `1w` is not",
        ),
        (
            "[{name: a, rate: 1, per: 1s, key: [{claim: sub}]}]",
            "limits[0] (`a`): key: claim: `sub` is not in `claim_headers`",
        ),
        (
            "[{name: a, rate: 1, per: 1s, burts: 2}]",
            "limits[0] (`a`): unknown field `burts`",
        ),
    ] {
        let yaml = config(
            r#"
listeners: [{address: "127.0.0.1:1"}]
upstreams: {origin: {builtin: echo}}
filters:
  limit: {module: "$module", config: {limits: $limits}}
routes: [{upstream: origin, filters: [limit]}]
"#,
            &[
                ("module", filters::RATE_LIMIT.to_string()),
                ("limits", limits.to_string()),
            ],
        );
        let stderr = refused_by_validate(&yaml);
        assert!(
            stderr.contains("filter `limit`") && stderr.contains(expected),
            "{limits}: {stderr}"
        );
    }
}
