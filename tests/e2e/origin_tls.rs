//! TLS to origins, end to end: HTTPS origins served in-process with certificates made at run
//! time by the test CA of `tls.rs`, the real binary in between. Verification against a
//! private CA, HTTP/2 by ALPN, SNI, verification failures as `502 upstream_tls`, mutual TLS,
//! health checks and filter callouts over TLS.

use edgeward_testkit::{client, filters, run_edgeward, Origin, OriginTls, Proxy};

use crate::support::{access_log_entry, config, eventually, metrics_showing, use_built_binary};
use crate::tls::Pki;

/// An HTTPS origin with a certificate for `names` from `pki`, offering `alpn`.
async fn https_origin(name: &str, pki: &Pki, names: &[&str], alpn: &[&'static str]) -> Origin {
    let leaf = pki.leaf(names);
    let tls = OriginTls {
        chain_pem: leaf.chain,
        key_pem: leaf.key,
        client_ca_pem: None,
        alpn: alpn.to_vec(),
    };
    Origin::start_tls(name, &tls).await
}

/// Starts the proxy with `yaml` (its `$name` placeholders filled from `vars`) and files.
async fn start(yaml: &str, vars: &[(&str, String)], files: &[(&str, String)]) -> Proxy {
    use_built_binary();
    let mut builder = Proxy::builder(&config(yaml, vars));
    for (name, contents) in files {
        builder = builder.file(name, contents.as_bytes());
    }
    builder.start().await
}

/// GETs `path` with a request id, and gives (status, JSON body).
async fn get(proxy: &Proxy, path: &str, id: &str) -> (u16, serde_json::Value) {
    let response = client::http1()
        .get(proxy.url(path))
        .header("x-request-id", id)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path} ({e}): {body}"));
    (status, json)
}

#[tokio::test]
async fn an_https_origin_is_verified_against_a_private_ca_and_speaks_http2() {
    let pki = Pki::new();
    let both = https_origin("both", &pki, &["127.0.0.1"], &["h2", "http/1.1"]).await;
    let h1 = https_origin("h1", &pki, &["127.0.0.1"], &["http/1.1"]).await;
    let named = https_origin("named", &pki, &["origin.test"], &["h2", "http/1.1"]).await;
    let proxy = start(
        r#"
listeners: [{address: "{{listen}}"}]
upstreams:
  both:
    endpoints: ["https://127.0.0.1:$both"]
    tls: {ca: ca.pem}
    health_check: {path: /healthz, interval: 200ms}
  pinned_h1:
    endpoints: ["https://127.0.0.1:$both"]
    tls: {ca: ca.pem}
    http2: false
  h1: {endpoints: ["https://127.0.0.1:$h1"], tls: {ca: ca.pem}}
  named: {endpoints: ["127.0.0.1:$named"], tls: {ca: ca.pem, sni: origin.test}}
routes:
  - {match: {path_prefix: /both/}, upstream: both}
  - {match: {path_prefix: /pinned/}, upstream: pinned_h1}
  - {match: {path_prefix: /h1/}, upstream: h1}
  - {match: {path_prefix: /named/}, upstream: named}
"#,
        &[
            ("both", both.addr().port().to_string()),
            ("h1", h1.addr().port().to_string()),
            ("named", named.addr().port().to_string()),
        ],
        &[("ca.pem", pki.root_pem())],
    )
    .await;

    // Offered both, the origin chose HTTP/2; the client's request was HTTP/1.1.
    let (status, json) = get(&proxy, "/both/a", "both").await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["origin"], "both");
    assert_eq!(json["version"], "HTTP/2.0", "{json}");
    // `http2: false` keeps to HTTP/1.1 with the same origin; an origin that offers only
    // HTTP/1.1 gets HTTP/1.1.
    let (status, json) = get(&proxy, "/pinned/a", "pinned").await;
    assert_eq!((status, json["version"].as_str()), (200, Some("HTTP/1.1")));
    let (status, json) = get(&proxy, "/h1/a", "h1").await;
    assert_eq!((status, json["version"].as_str()), (200, Some("HTTP/1.1")));
    // The certificate names only origin.test: `sni` is the name verified.
    let (status, json) = get(&proxy, "/named/a", "named").await;
    assert_eq!((status, json["origin"].as_str()), (200, Some("named")));

    // The health check reached /healthz over TLS (it is not counted as a hit).
    eventually("health checks over TLS", || async {
        (both.requests() > both.hits()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_origin_that_fails_verification_gets_502_upstream_tls_and_the_log_says_why() {
    let pki = Pki::new();
    let stranger = Pki::new();
    // Signed by a CA the proxy does not trust; then trusted, but for another name.
    let untrusted = https_origin("untrusted", &stranger, &["127.0.0.1"], &["http/1.1"]).await;
    let misnamed = https_origin("misnamed", &pki, &["other.test"], &["http/1.1"]).await;
    let proxy = start(
        r#"
listeners: [{address: "{{listen}}"}]
admin: {address: "{{admin}}"}
upstreams:
  untrusted: {endpoints: ["https://127.0.0.1:$untrusted"], tls: {ca: ca.pem}}
  misnamed: {endpoints: ["https://127.0.0.1:$misnamed"], tls: {ca: ca.pem}}
  unverified: {endpoints: ["https://127.0.0.1:$untrusted"], tls: {verify: false}}
routes:
  - {match: {path_prefix: /untrusted/}, upstream: untrusted}
  - {match: {path_prefix: /misnamed/}, upstream: misnamed}
  - {match: {path_prefix: /unverified/}, upstream: unverified}
"#,
        &[
            ("untrusted", untrusted.addr().port().to_string()),
            ("misnamed", misnamed.addr().port().to_string()),
        ],
        &[("ca.pem", pki.root_pem())],
    )
    .await;

    for (path, id, reason) in [
        ("/untrusted/x", "untrusted", "invalid peer certificate"),
        ("/misnamed/x", "misnamed", "not valid for name"),
    ] {
        let (status, json) = get(&proxy, path, id).await;
        assert_eq!(status, 502, "{json}");
        assert_eq!(json["error"], "upstream_tls", "{json}");
        let entry = access_log_entry(&proxy, id).await;
        assert_eq!(entry["error"], "upstream_tls", "{entry}");
        let detail = entry["error_detail"].as_str().unwrap_or_default();
        assert!(detail.contains(reason), "{id}: {entry}");
    }
    assert_eq!(untrusted.hits() + misnamed.hits(), 0);
    metrics_showing(
        &proxy,
        &[(
            r#"edgeward_upstream_failures_total{reason="upstream_tls",upstream="untrusted"}"#,
            1.0,
        )],
    )
    .await;

    // `verify: false` takes any certificate.
    let (status, json) = get(&proxy, "/unverified/x", "unverified").await;
    assert_eq!((status, json["origin"].as_str()), (200, Some("untrusted")));
}

#[tokio::test]
async fn an_origin_that_requires_a_client_certificate_gets_the_configured_one() {
    let pki = Pki::new();
    let leaf = pki.leaf(&["127.0.0.1"]);
    let tls = OriginTls {
        chain_pem: leaf.chain,
        key_pem: leaf.key,
        client_ca_pem: Some(pki.root_pem()),
        alpn: vec!["http/1.1"],
    };
    let origin = Origin::start_tls("mtls", &tls).await;
    let client_cert = pki.client_leaf("edgeward.test");
    let proxy = start(
        r#"
listeners: [{address: "{{listen}}"}]
upstreams:
  with_cert:
    endpoints: ["https://127.0.0.1:$port"]
    tls: {ca: ca.pem, client_cert: client.pem, client_key: client.key}
  without_cert: {endpoints: ["https://127.0.0.1:$port"], tls: {ca: ca.pem}}
routes:
  - {match: {path_prefix: /with/}, upstream: with_cert}
  - {match: {path_prefix: /without/}, upstream: without_cert}
"#,
        &[("port", origin.addr().port().to_string())],
        &[
            ("ca.pem", pki.root_pem()),
            ("client.pem", client_cert.chain),
            ("client.key", client_cert.key),
        ],
    )
    .await;
    let (status, json) = get(&proxy, "/with/x", "with").await;
    assert_eq!(
        (status, json["origin"].as_str()),
        (200, Some("mtls")),
        "{json}"
    );
    // The origin refuses the connection (in TLS 1.3 after the client's side of the
    // handshake is done, so the proxy may see a TLS failure or a broken connection).
    let (status, json) = get(&proxy, "/without/x", "without").await;
    assert_eq!(status, 502, "{json}");
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn filter_callouts_reach_https_upstreams() {
    let pki = Pki::new();
    let origin = Origin::start("origin").await;
    let auth = https_origin("auth", &pki, &["127.0.0.1"], &["h2", "http/1.1"]).await;
    let proxy = start(
        r#"
listeners: [{address: "{{listen}}"}]
upstreams:
  origin: {endpoints: ["$origin"]}
  auth: {endpoints: ["https://127.0.0.1:$auth"], tls: {ca: ca.pem}}
filters:
  check: {module: $callout, callouts: [auth], config: {upstream: auth, path: /status/200}}
routes: [{upstream: origin, filters: [check]}]
"#,
        &[
            ("origin", origin.addr().to_string()),
            ("auth", auth.addr().port().to_string()),
            ("callout", filters::CALLOUT.to_string()),
        ],
        &[("ca.pem", pki.root_pem())],
    )
    .await;
    let response = client::http1()
        .get(proxy.url("/protected"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    assert_eq!(header("x-callout-status").as_deref(), Some("200"));
    assert_eq!(header("x-callout-origin").as_deref(), Some("auth"));
    assert_eq!(auth.hits(), 1);
}

#[test]
fn validate_warns_about_verify_false_and_reports_bad_tls_files() {
    use_built_binary();
    let output = run_edgeward(
        &["validate", "--config", "edgeward.yaml"],
        &[(
            "edgeward.yaml",
            "listeners: [{address: 127.0.0.1:8080}]\nupstreams:\n  u: {endpoints: ['https://127.0.0.1:9443'], tls: {verify: false}}\nroutes: [{upstream: u}]\n",
        )],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("`verify: false` accepts any certificate"),
        "{stderr}"
    );

    let output = run_edgeward(
        &["validate", "--config", "edgeward.yaml"],
        &[
            (
                "edgeward.yaml",
                "listeners: [{address: 127.0.0.1:8080}]\nupstreams:\n  u: {endpoints: ['https://127.0.0.1:9443'], tls: {ca: ca.pem, client_cert: c.pem, client_key: c.pem}}\nroutes: [{upstream: u}]\n",
            ),
            ("ca.pem", "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"),
            ("c.pem", "nothing here"),
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("edgeward.yaml:3:56: error: tls: `ca.pem` is not valid PEM"),
        "{stderr}"
    );
    assert!(stderr.contains("c.pem` holds no certificate"), "{stderr}");
}
