//! The `ab-test` filter through the real proxy: new clients placed and given a cookie,
//! returning clients kept in their bucket (with its upstream, headers and path prefix), the
//! force header, hash stickiness, weights reloaded under cookie-holding clients, the
//! per-bucket metrics and a refused configuration. The ±2 % split over 10,000 new clients is
//! proven natively on the same assignment function (`cargo test -p ab-test` in `filters/`).

use std::collections::BTreeMap;

use edgeward_testkit::{client, filters, reqwest, Origin, Proxy};
use serde_json::Value;

use crate::support::{
    access_log_entry, config, metrics_showing, refused_by_validate, start_proxy, wait_for_log,
};

/// What a request through the proxy came to: which origin answered, what it saw, and the
/// `Set-Cookie` the client got (if any).
#[derive(Debug)]
struct Answer {
    origin: String,
    path: String,
    headers: BTreeMap<String, String>,
    set_cookie: Option<String>,
}

impl Answer {
    fn bucket(&self) -> &str {
        self.headers
            .get("x-ab-bucket")
            .map(String::as_str)
            .unwrap_or_else(|| panic!("the origin got no x-ab-bucket: {self:?}"))
    }
}

async fn get(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = client::http1().get(proxy.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response: reqwest::Response = request.send().await.unwrap();
    assert_eq!(response.status(), 200, "{path} {headers:?}");
    let set_cookie = response
        .headers()
        .get("set-cookie")
        .map(|value| value.to_str().unwrap().to_owned());
    let body: Value = response.json().await.unwrap();
    let headers = body["headers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, value)| (name.clone(), value.as_str().unwrap().to_owned()))
        .collect();
    Answer {
        origin: body["origin"].as_str().unwrap().to_owned(),
        path: body["path"].as_str().unwrap().to_owned(),
        headers,
        set_cookie,
    }
}

/// Two origins, `origin-a` (the route's) and `origin-b`, and a proxy with `filters` (YAML
/// under `filters:`) and `routes`, an admin listener for metrics and reloads.
struct Site {
    a: Origin,
    b: Origin,
}

impl Site {
    async fn start() -> Site {
        Site {
            a: Origin::start("origin-a").await,
            b: Origin::start("origin-b").await,
        }
    }

    fn yaml(&self, filters: &str, routes: &str) -> String {
        config(
            r#"
listeners: [{address: "{{listen}}"}]
admin: {address: "{{admin}}"}
access_log_properties: [ab.bucket]
upstreams:
  origin-a: {endpoints: ["$a"]}
  origin-b: {endpoints: ["$b"]}
filters:
$filters
routes:
$routes
"#,
            &[
                ("a", self.a.addr().to_string()),
                ("b", self.b.addr().to_string()),
                ("filters", filters.to_owned()),
                ("routes", routes.to_owned()),
            ],
        )
    }

    /// One `ab-test` filter called `ab` with `experiment` as its config, on every request.
    fn experiment(&self, experiment: &str) -> String {
        self.yaml(
            &format!(
                "  ab:\n    module: {}\n    config: {experiment}",
                filters::AB_TEST
            ),
            "  - {upstream: origin-a, filters: [ab]}",
        )
    }
}

/// `control` takes every new client (weight 1); `variant` (weight 0) and `typo` keep only
/// the clients whose cookie names them.
const COOKIE_EXPERIMENT: &str = r#"
      buckets:
        control: 1
        variant:
          weight: 0
          upstream: origin-b
          request_headers: {x-variant: new-checkout}
          prefix_rewrite: {from: /shop/, to: /shop-v2/}
        typo: {weight: 0, upstream: origin-typo}
      sticky:
        cookie: {name: exp, max_age: 1h, domain: example.test, secure: true, same_site: Strict}"#;

#[tokio::test]
async fn new_clients_get_a_bucket_and_its_cookie_and_returning_clients_keep_theirs() {
    let site = Site::start().await;
    let proxy = start_proxy(&site.experiment(COOKIE_EXPERIMENT)).await;

    // A new client: placed (in control, the only bucket with a weight) and told so.
    let new = get(&proxy, "/shop/cart?x=1", &[("cookie", "session=s1")]).await;
    assert_eq!((new.origin.as_str(), new.bucket()), ("origin-a", "control"));
    assert_eq!(new.path, "/shop/cart?x=1");
    assert_eq!(
        new.set_cookie.as_deref(),
        Some("exp=control; Max-Age=3600; Path=/; Domain=example.test; Secure; HttpOnly; SameSite=Strict")
    );
    assert!(!new.headers.contains_key("x-variant"));

    // A returning variant client, every time: its upstream, header and path, and no new
    // cookie. Its bucket takes no new clients (weight 0) but keeps the ones it has.
    for _ in 0..10 {
        let returning = get(
            &proxy,
            "/shop/cart?x=1",
            &[("cookie", "session=s2; exp=variant")],
        )
        .await;
        assert_eq!(
            (returning.origin.as_str(), returning.bucket()),
            ("origin-b", "variant")
        );
        assert_eq!(returning.path, "/shop-v2/cart?x=1");
        assert_eq!(returning.headers["x-variant"], "new-checkout");
        assert_eq!(returning.set_cookie, None);
    }
    // A path outside the rewritten prefix keeps its path. The access log names the bucket's
    // upstream.
    let elsewhere = get(&proxy, "/about", &[("cookie", "exp=variant")]).await;
    assert_eq!(
        (elsewhere.origin.as_str(), elsewhere.path.as_str()),
        ("origin-b", "/about")
    );
    let logged = access_log_entry(&proxy, &elsewhere.headers["x-request-id"]).await;
    assert_eq!(logged["upstream"], "origin-b", "{logged}");
    // The bucket reaches the access log as the property `<filter>.bucket` the filter sets.
    assert_eq!(logged["properties"]["ab.bucket"], "variant", "{logged}");

    // The client cannot name its bucket to the origin: the filter's header replaces its own.
    let spoofed = get(
        &proxy,
        "/",
        &[("cookie", "exp=control"), ("x-ab-bucket", "variant")],
    )
    .await;
    assert_eq!(
        (spoofed.bucket(), spoofed.set_cookie.as_deref()),
        ("control", None)
    );

    // A cookie naming no bucket (forged, or a bucket since removed) is replaced.
    for forged in ["exp=Variant", "exp=\"<script>\"", "exp="] {
        let answer = get(&proxy, "/", &[("cookie", forged)]).await;
        assert_eq!(answer.bucket(), "control", "{forged}");
        assert!(
            answer.set_cookie.unwrap().starts_with("exp=control;"),
            "{forged}"
        );
    }

    // A bucket whose upstream edgeward does not know keeps the route's, with a warning.
    let typo = get(&proxy, "/", &[("cookie", "exp=typo")]).await;
    assert_eq!((typo.origin.as_str(), typo.bucket()), ("origin-a", "typo"));
    wait_for_log(
        &proxy,
        "edgeward refused upstream `origin-typo` of bucket typo",
    )
    .await;

    // Requests per bucket, and clients placed by weight (the new one and three reassigned).
    metrics_showing(
        &proxy,
        &[
            (
                r#"wasmcustom_ab_test_requests{filter="ab",bucket="control"}"#,
                5.0,
            ),
            (
                r#"wasmcustom_ab_test_requests{filter="ab",bucket="variant"}"#,
                11.0,
            ),
            (
                r#"wasmcustom_ab_test_requests{filter="ab",bucket="typo"}"#,
                1.0,
            ),
            (
                r#"wasmcustom_ab_test_assignments{filter="ab",bucket="control"}"#,
                4.0,
            ),
            (
                r#"wasmcustom_ab_test_assignments{filter="ab",bucket="variant"}"#,
                0.0,
            ),
        ],
    )
    .await;
    assert_eq!(site.b.hits(), 11);
}

#[tokio::test]
async fn the_force_header_picks_a_known_bucket_only_where_it_is_configured() {
    let site = Site::start().await;
    let buckets = "buckets: {control: 1, variant: {weight: 0, upstream: origin-b}}";
    let filters = format!(
        r#"
  forcing:
    module: {module}
    config: {{{buckets}, force_header: x-ab-force}}
  plain:
    module: {module}
    config: {{{buckets}}}"#,
        module = filters::AB_TEST
    );
    let routes = r#"
  - {match: {path_prefix: /forcing/}, upstream: origin-a, filters: [forcing]}
  - {upstream: origin-a, filters: [plain]}"#;
    let proxy = start_proxy(&site.yaml(&filters, routes)).await;

    // Forced for this request only: the client's cookie is neither needed nor changed.
    for cookie in ["", "ab_bucket=control"] {
        let forced = get(
            &proxy,
            "/forcing/x",
            &[("x-ab-force", "variant"), ("cookie", cookie)],
        )
        .await;
        assert_eq!(
            (forced.origin.as_str(), forced.bucket()),
            ("origin-b", "variant")
        );
        assert_eq!(forced.set_cookie, None, "cookie {cookie:?}");
    }
    // An unknown bucket in the header is ignored: the client is placed as usual.
    let unknown = get(&proxy, "/forcing/x", &[("x-ab-force", "nope")]).await;
    assert_eq!(unknown.bucket(), "control");
    assert!(unknown.set_cookie.is_some());
    // Where no force header is configured, the header means nothing.
    let ignored = get(&proxy, "/x", &[("x-ab-force", "variant")]).await;
    assert_eq!(
        (ignored.origin.as_str(), ignored.bucket()),
        ("origin-a", "control")
    );
}

#[tokio::test]
async fn hashing_keeps_each_key_in_one_bucket_and_splits_keys_by_weight() {
    let site = Site::start().await;
    let proxy = start_proxy(&site.experiment(
        "{buckets: {a: 50, b: {weight: 50, upstream: origin-b}}, sticky: {hash: {header: x-user-id}}}",
    ))
    .await;
    let mut per_bucket = BTreeMap::new();
    for user in 0..200 {
        let user = format!("user-{user}");
        let first = get(&proxy, "/", &[("x-user-id", &user)]).await;
        let again = get(
            &proxy,
            "/",
            &[("x-user-id", &user), ("cookie", "ab_bucket=a")],
        )
        .await;
        assert_eq!(first.bucket(), again.bucket(), "{user}");
        assert_eq!(
            first.origin,
            if first.bucket() == "b" {
                "origin-b"
            } else {
                "origin-a"
            }
        );
        assert_eq!(
            (&first.set_cookie, &again.set_cookie),
            (&None, &None),
            "no cookies when hashing"
        );
        *per_bucket.entry(first.bucket().to_owned()).or_insert(0) += 1;
    }
    // Fixed keys, so a fixed split: near half each (the weights' 2-point bound is proven
    // natively over 10,000 keys).
    for bucket in ["a", "b"] {
        let count = per_bucket.get(bucket).copied().unwrap_or(0);
        assert!((80..=120).contains(&count), "{per_bucket:?}");
    }
    // Without the header, the client's address decides: always the same bucket.
    let keyless = get(&proxy, "/", &[]).await;
    for _ in 0..5 {
        assert_eq!(get(&proxy, "/", &[]).await.bucket(), keyless.bucket());
    }
}

/// `POST /config/reload`, which answers once the new configuration serves.
async fn reload(proxy: &Proxy, yaml: &str) {
    proxy.rewrite_config(yaml);
    let url = format!("http://{}/config/reload", proxy.placeholder_addr("admin"));
    let response = client::http1().post(url).send().await.unwrap();
    let status = response.status();
    let answer = response.text().await.unwrap();
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn reloaded_weights_keep_cookie_holders_in_buckets_that_still_exist() {
    let site = Site::start().await;
    let proxy = start_proxy(&site.experiment("{buckets: {a: 50, b: 50}}")).await;
    let holders = [("a", "ab_bucket=a"), ("b", "ab_bucket=b")];
    for (bucket, cookie) in holders {
        let answer = get(&proxy, "/", &[("cookie", cookie)]).await;
        assert_eq!(
            (answer.bucket(), answer.set_cookie.as_deref()),
            (bucket, None)
        );
    }

    // New weights, a new bucket: everyone holding a cookie stays where they are.
    reload(&proxy, &site.experiment("{buckets: {a: 0, b: 10, c: 90}}")).await;
    for (bucket, cookie) in holders {
        let answer = get(&proxy, "/", &[("cookie", cookie)]).await;
        assert_eq!(
            (answer.bucket(), answer.set_cookie.as_deref()),
            (bucket, None)
        );
    }

    // `a` is gone: its clients are placed anew (in `c`, the only bucket with a weight) and
    // given the new cookie; `b`'s clients stay.
    reload(&proxy, &site.experiment("{buckets: {b: 0, c: 1}}")).await;
    let moved = get(&proxy, "/", &[("cookie", "ab_bucket=a")]).await;
    assert_eq!(moved.bucket(), "c");
    assert!(moved.set_cookie.unwrap().starts_with("ab_bucket=c;"));
    let kept = get(&proxy, "/", &[("cookie", "ab_bucket=b")]).await;
    assert_eq!((kept.bucket(), kept.set_cookie.as_deref()), ("b", None));
}

#[test]
fn a_bad_configuration_is_refused_naming_the_key() {
    crate::support::use_built_binary();
    for (experiment, message) in [
        (
            "{buckets: {\"a b\": 1}}",
            "buckets.a b: `a b` is not a bucket name",
        ),
        ("{buckets: {a: 0}}", "buckets: every weight is 0"),
        (
            "{buckets: {a: 1}, sticky: {cookie: {same_site: None}}}",
            "sticky.cookie.same_site: `None` needs `secure: true`",
        ),
    ] {
        let yaml = format!(
            "listeners: [{{address: \"127.0.0.1:1\"}}]\nupstreams: {{origin: {{builtin: echo}}}}\n\
             filters:\n  ab: {{module: \"{}\", config: {experiment}}}\n\
             routes: [{{upstream: origin, filters: [ab]}}]\n",
            filters::AB_TEST
        );
        let stderr = refused_by_validate(&yaml);
        assert!(
            stderr.contains("filter `ab`")
                && stderr.contains(&format!("ab-test: invalid configuration: {message}")),
            "{experiment}: {stderr}"
        );
    }
}
