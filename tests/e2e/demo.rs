//! The demo configuration, config/edgeward.yaml, served as `make run` serves it, answering
//! the requests `make run` suggests (and the README shows) with what they promise: the
//! echo origins, the JP client's APAC origin, the JWT filter with the demo token, the
//! cached /static/ route, PURGE, HTTPS with the demo's local CA, and the admin listener's
//! metrics.
//!
//! Only its addresses change (free ports instead of 8080, 8443 and 9901) and its relative paths
//! (they are relative to the file, which the testkit copies elsewhere); the filters are the
//! ones `make filters` builds, which the testkit's build script builds in the same place. The
//! HTTPS certificate is made here, as `make run` makes its own (`make demo-certs`, into the
//! git-ignored config/certs/): a local CA and an ECDSA P-256 certificate for localhost,
//! 127.0.0.1 and ::1, in `certs/` next to the file.

use std::path::{Path, PathBuf};

use edgeward_testkit::{client, filters, reqwest, Proxy};
use serde_json::{json, Value};

use crate::support::{metrics_showing, use_built_binary};
use crate::tls::Pki;

pub(crate) fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// Replaces the one occurrence of `from` in `text`, failing if there is not exactly one.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "config/edgeward.yaml should mention {from:?} once:\n{text}"
    );
    text.replace(from, to)
}

/// config/edgeward.yaml with free ports and absolute paths.
fn demo_config() -> String {
    let config_dir = repository().join("config");
    let text = std::fs::read_to_string(config_dir.join("edgeward.yaml")).unwrap();
    let text = replace_once(&text, "address: 127.0.0.1:8080", "address: \"{{listen}}\"");
    let text = replace_once(
        &text,
        "address: 127.0.0.1:8443",
        "address: \"{{listen_tls}}\"",
    );
    let text = replace_once(&text, "address: 127.0.0.1:9901", "address: \"{{admin}}\"");
    let text = replace_once(
        &text,
        "database: geo/demo.mmdb",
        &format!("database: {}", config_dir.join("geo/demo.mmdb").display()),
    );
    // The filters, where `make filters` (and the testkit's build script) put them.
    let built = Path::new(filters::JWT_AUTH).parent().unwrap();
    let relative = "module: ../filters/target/wasm32-wasip1/release/";
    assert_eq!(text.matches(relative).count(), 8, "{text}");
    let text = text.replace(relative, &format!("module: {}/", built.display()));
    for line in text
        .lines()
        .filter(|l| l.trim_start().starts_with("module:"))
    {
        let module = line.trim_start().trim_start_matches("module:").trim();
        assert!(Path::new(module).is_file(), "{module} is not built");
    }
    text
}

/// What `make demo-certs` makes: the files the demo configuration names (relative to it), and
/// the local CA's certificate that clients trust (`curl --cacert config/certs/ca.pem`).
pub(crate) struct DemoCertificates {
    pub(crate) files: [(&'static str, String); 2],
    pub(crate) ca_pem: String,
}

pub(crate) fn demo_certificates() -> DemoCertificates {
    let pki = Pki::new();
    let leaf = pki.leaf(&["localhost", "127.0.0.1", "::1"]);
    DemoCertificates {
        files: [
            ("certs/localhost.pem", leaf.chain),
            ("certs/localhost.key", leaf.key),
        ],
        ca_pem: pki.root_pem(),
    }
}

/// The token `make run` prints (the README shows the same), signed with the demo key.
fn demo_token() -> String {
    let makefile = std::fs::read_to_string(repository().join("Makefile")).unwrap();
    makefile
        .lines()
        .find_map(|line| line.strip_prefix("DEMO_TOKEN := "))
        .expect("DEMO_TOKEN in the Makefile")
        .trim()
        .to_owned()
}

/// The requests this test makes are those `make run` suggests, with the token the README
/// shows.
#[test]
fn the_requests_here_are_the_ones_make_run_suggests() {
    let makefile = std::fs::read_to_string(repository().join("Makefile")).unwrap();
    for line in [
        "curl -s localhost:8080/hello",
        "curl -s --cacert $(DEMO_CERTS)/ca.pem https://localhost:8443/hello",
        "curl -s -i -H 'X-Forwarded-For: 192.0.2.10' localhost:8080/hello",
        "curl -s -i localhost:8080/api/orders",
        "curl -s -H 'Authorization: Bearer $(DEMO_TOKEN)' localhost:8080/api/orders",
        "curl -s -i localhost:8080/static/app.js",
        "curl -s -X PURGE localhost:8080/static/app.js",
        "curl -s -H 'Cookie: ab_bucket=new-checkout' localhost:8080/shop/checkout/pay",
        "curl -s localhost:8080/public/orders",
        "curl -s 'localhost:8080/account/42?status=shipped'",
        "curl -s localhost:9901/metrics",
        "curl -s -X POST localhost:9901/config/reload",
    ] {
        assert!(
            makefile.contains(line),
            "`make run` no longer suggests {line}"
        );
    }
    assert!(
        makefile.contains("DEMO_CERTS := config/certs\n"),
        "the demo's certificates are no longer made in config/certs/, which config/edgeward.yaml names as certs/"
    );
    // The README shows the same token, and the same HTTPS request.
    let readme = std::fs::read_to_string(repository().join("README.md")).unwrap();
    assert!(
        readme.contains("curl -s --cacert config/certs/ca.pem https://localhost:8443/hello"),
        "README.md does not show the HTTPS request `make run` suggests"
    );
    assert!(
        readme.contains(&format!("Authorization: Bearer {}", demo_token())),
        "README.md shows another token than the Makefile's DEMO_TOKEN"
    );
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

async fn request(proxy: &Proxy, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = client::http1().request(method, proxy.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.text().await.unwrap(),
    }
}

#[tokio::test]
async fn the_demo_configuration_answers_the_readme_requests() {
    use_built_binary();
    let certificates = demo_certificates();
    let mut builder = Proxy::builder(&demo_config());
    for (name, contents) in &certificates.files {
        builder = builder.file(name, contents.as_str());
    }
    let proxy = builder.start().await;

    // curl -s localhost:8080/hello: the echo origin, through the geo and headers filters.
    let hello = request(&proxy, "GET", "/hello", &[]).await;
    assert_eq!(hello.status, 200, "{}", hello.body);
    let echo = hello.json();
    assert_eq!(echo["upstream"], "demo", "{echo}");
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/hello");
    assert_eq!(echo["body_bytes"], 0);
    assert_eq!(echo["headers"]["x-edge"], "1", "set by the headers filter");
    assert_eq!(hello.header("x-served-by"), Some("edgeward"));
    // Loopback is in no country of the demo database.
    assert_eq!(hello.header("x-edge-country"), Some("XX"));

    // The JP client (through loopback, a trusted proxy) reaches the APAC origin.
    let japan = request(
        &proxy,
        "GET",
        "/hello",
        &[("x-forwarded-for", "192.0.2.10")],
    )
    .await;
    assert_eq!(japan.status, 200, "{}", japan.body);
    assert_eq!(japan.header("x-edge-country"), Some("JP"));
    assert_eq!(japan.header("x-served-by"), Some("edgeward"));
    assert_eq!(japan.json()["upstream"], "origin-apac");

    // /api/ without a token: challenged by the JWT filter.
    let anonymous = request(&proxy, "GET", "/api/orders", &[]).await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    assert_eq!(anonymous.header("www-authenticate"), Some("Bearer"));
    assert_eq!(anonymous.json(), json!({"error": "missing_token"}));

    // With the demo token: its claims reach the origin as headers.
    let bearer = format!("Bearer {}", demo_token());
    let orders = request(&proxy, "GET", "/api/orders", &[("authorization", &bearer)]).await;
    assert_eq!(orders.status, 200, "{}", orders.body);
    let echo = orders.json();
    assert_eq!(echo["upstream"], "origin-us", "{echo}");
    assert_eq!(echo["headers"]["x-user-id"], "demo-user");
    assert_eq!(echo["headers"]["x-user-email"], "demo@example.com");
    assert_eq!(echo["headers"]["x-edge"], "1");

    // /static/ is cached for a minute (default_ttl): the second request is a hit, and the
    // headers filter runs on it too.
    let first = request(&proxy, "GET", "/static/app.js", &[]).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.header("cache-status"), Some("edgeward; fwd=miss"));
    let second = request(&proxy, "GET", "/static/app.js", &[]).await;
    assert_eq!(second.status, 200, "{}", second.body);
    let status = second.header("cache-status").unwrap();
    let ttl: i64 = status
        .strip_prefix("edgeward; hit; ttl=")
        .unwrap_or_else(|| panic!("not a hit: {status}"))
        .parse()
        .unwrap_or_else(|e| panic!("{status}: {e}"));
    assert!((1..=60).contains(&ttl), "{status}");
    assert_eq!(second.header("x-served-by"), Some("edgeward"));
    assert_eq!(second.body, first.body, "the stored answer");

    // PURGE from this machine removes it.
    let purge = request(&proxy, "PURGE", "/static/app.js", &[]).await;
    assert_eq!(purge.status, 200, "{}", purge.body);
    assert_eq!(purge.json(), json!({"mode": "hard", "purged": 1}));
    let refetched = request(&proxy, "GET", "/static/app.js", &[]).await;
    assert_eq!(refetched.header("cache-status"), Some("edgeward; fwd=miss"));

    // The A/B test: a new client is placed and told its bucket by a cookie; one holding the
    // new-checkout cookie keeps it, with the bucket's upstream, header and path.
    let shop = request(&proxy, "GET", "/shop/cart", &[]).await;
    assert_eq!(shop.status, 200, "{}", shop.body);
    let cookie = shop.header("set-cookie").unwrap_or_default();
    assert!(cookie.starts_with("ab_bucket="), "{cookie}");
    let returning = request(
        &proxy,
        "GET",
        "/shop/checkout/pay",
        &[("cookie", "ab_bucket=new-checkout")],
    )
    .await;
    assert_eq!(returning.header("set-cookie"), None);
    let echo = returning.json();
    assert_eq!(echo["upstream"], "shop-v2", "{echo}");
    assert_eq!(echo["path"], "/shop/checkout-v2/pay");
    assert_eq!(echo["headers"]["x-checkout"], "v2");
    assert_eq!(echo["headers"]["x-ab-bucket"], "new-checkout");

    // The echo's JSON as a public API shows it, and a composed document.
    let public = request(&proxy, "GET", "/public/orders", &[]).await;
    let shown = public.json();
    assert_eq!(shown["path"], "/public/orders", "{shown}");
    assert_eq!(shown["received_bytes"], 0, "{shown}");
    assert_eq!(shown["edge"]["country"], "XX", "{shown}");
    assert!(shown.get("body_sha256").is_none(), "{shown}");
    let account = request(&proxy, "GET", "/account/42?status=shipped", &[]).await;
    let document = account.json();
    assert_eq!(document["user"]["path"], "/users/42", "{document}");
    assert_eq!(document["user"]["upstream"], "origin-us");
    assert_eq!(document["orders"]["path"], "/orders?user=42&status=shipped");
    assert_eq!(document["orders"]["upstream"], "origin-eu");
    // The compose filter is the route's origin: its document is cached.
    let again = request(&proxy, "GET", "/account/42?status=shipped", &[]).await;
    let status = again.header("cache-status").unwrap_or_default();
    assert!(status.starts_with("edgeward; hit"), "{status}");
    assert_eq!(again.body, account.body);

    // /limited/ tells each client its allowance: 5 at once, then one a second.
    let limited = request(&proxy, "GET", "/limited/", &[]).await;
    assert_eq!(limited.status, 200, "{}", limited.body);
    assert_eq!(
        limited.header("ratelimit-policy"),
        Some("1;w=1;burst=5, 100;w=3600")
    );
    assert_eq!(
        limited.header("ratelimit"),
        Some("limit=1, remaining=4, reset=1")
    );

    // curl -s --cacert config/certs/ca.pem https://localhost:8443/hello: the same route over
    // HTTPS, HTTP/2 by ALPN, with a certificate for localhost that the local CA signed.
    let tls = proxy.placeholder_addr("listen_tls");
    let https = client::https(certificates.ca_pem.as_bytes())
        .resolve("localhost", tls)
        .build()
        .unwrap();
    let secure = https
        .get(format!("https://localhost:{}/hello", tls.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(secure.status(), 200);
    assert_eq!(secure.version(), reqwest::Version::HTTP_2);
    assert_eq!(
        secure.headers().get("x-served-by").unwrap(),
        "edgeward",
        "{:?}",
        secure.headers()
    );
    let echo: Value = secure.json().await.unwrap();
    assert_eq!(echo["upstream"], "demo", "{echo}");
    assert_eq!(echo["path"], "/hello");
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https", "{echo}");

    // The admin listener counts all of it (each request once its response is done).
    let expected = [
        (
            "edgeward_requests_total{route=\"demo\",status=\"200\"}",
            3.0,
        ),
        ("edgeward_requests_total{route=\"api\",status=\"401\"}", 1.0),
        ("edgeward_requests_total{route=\"api\",status=\"200\"}", 1.0),
        (
            "edgeward_requests_total{route=\"static\",status=\"200\"}",
            3.0,
        ),
        // PURGE is answered before routing.
        ("edgeward_requests_total{route=\"\",status=\"200\"}", 1.0),
        (
            "edgeward_cache_purged_objects_total{how=\"url\",mode=\"hard\"}",
            1.0,
        ),
        (
            "edgeward_cache_lookups_total{result=\"hit\",route=\"static\"}",
            1.0,
        ),
        (
            "edgeward_cache_lookups_total{result=\"miss\",route=\"static\"}",
            2.0,
        ),
    ];
    metrics_showing(&proxy, &expected).await;

    // curl -s -X POST localhost:9901/config/reload: the demo reloads as it is.
    let url = format!("http://{}/config/reload", proxy.placeholder_addr("admin"));
    let reloaded = client::http1().post(url).send().await.unwrap();
    assert_eq!(reloaded.status(), 200);
    let answer: Value = reloaded.json().await.unwrap();
    assert_eq!(answer["generation"], 2, "{answer}");
    let hello = request(&proxy, "GET", "/hello", &[]).await;
    assert_eq!(hello.header("x-served-by"), Some("edgeward"));
}
