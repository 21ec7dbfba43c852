//! TLS on listeners, end to end: certificates made at run time (a test root CA, an
//! intermediate, leaf certificates signed by it; no key is ever committed), the real binary,
//! and real clients: rustls through tokio-rustls (to see which certificate was served, the
//! version, ALPN and resumption), reqwest over HTTPS, `openssl s_client` for an old TLS
//! version, and raw bytes for what no client sends on purpose.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgeward_testkit::{client, run_edgeward, Origin, Proxy};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, HandshakeKind, ProtocolVersion, SupportedProtocolVersion};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{
    config, eventually, metrics_showing, read_until_closed, use_built_binary, wait_for_log,
};

/// Every test leaf certificate expires then: far off, and known for the expiry gauge.
const NOT_AFTER: (i32, u8, u8) = (2099, 1, 1);
const NOT_AFTER_UNIX: f64 = 4_070_908_800.0;
/// How long a test waits for a handshake or an answer: generous, for slow machines.
const PATIENCE: Duration = Duration::from_secs(30);

/// A test CA: a root, and the intermediate that signs the leaf certificates.
pub(crate) struct Pki {
    root: CertifiedIssuer<'static, KeyPair>,
    intermediate: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate as the proxy's files hold it: `chain` (the leaf, then the
/// intermediate) and `key`; `der` is the leaf, to tell which certificate a client saw.
pub(crate) struct Leaf {
    pub(crate) chain: String,
    pub(crate) key: String,
    der: CertificateDer<'static>,
}

impl Pki {
    pub(crate) fn new() -> Pki {
        let ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            params
        };
        let root =
            CertifiedIssuer::self_signed(ca("edgeward test root"), KeyPair::generate().unwrap())
                .unwrap();
        let intermediate = CertifiedIssuer::signed_by(
            ca("edgeward test intermediate"),
            KeyPair::generate().unwrap(),
            &root,
        )
        .unwrap();
        Pki { root, intermediate }
    }

    pub(crate) fn root_pem(&self) -> String {
        self.root.pem()
    }

    /// An ECDSA P-256 leaf for `names` (DNS names, or IP addresses).
    pub(crate) fn leaf(&self, names: &[&str]) -> Leaf {
        self.leaf_with_key(names, KeyPair::generate().unwrap())
    }

    fn leaf_with_key(&self, names: &[&str], key: KeyPair) -> Leaf {
        self.issue(names, key, ExtendedKeyUsagePurpose::ServerAuth, NOT_AFTER)
    }

    /// A leaf that expires on `not_after` (year, month, day).
    fn leaf_until(&self, names: &[&str], key: KeyPair, not_after: (i32, u8, u8)) -> Leaf {
        self.issue(names, key, ExtendedKeyUsagePurpose::ServerAuth, not_after)
    }

    /// An ECDSA P-256 client certificate (for mutual TLS) for `name`.
    pub(crate) fn client_leaf(&self, name: &str) -> Leaf {
        let key = KeyPair::generate().unwrap();
        self.issue(&[name], key, ExtendedKeyUsagePurpose::ClientAuth, NOT_AFTER)
    }

    fn issue(
        &self,
        names: &[&str],
        key: KeyPair,
        purpose: ExtendedKeyUsagePurpose,
        not_after: (i32, u8, u8),
    ) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        params.extended_key_usages = vec![purpose];
        let cert = params.signed_by(&key, &self.intermediate).unwrap();
        Leaf {
            chain: format!("{}{}", cert.pem(), self.intermediate.pem()),
            key: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// The client's trust: the root only, so that a server must send the intermediate.
    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.root.der().clone()).unwrap();
        roots
    }
}

/// Starts the proxy with `yaml` and `files` (PEM files, named as the config names them).
async fn start_with(yaml: &str, files: &[(&str, &str)]) -> Proxy {
    use_built_binary();
    let mut builder = Proxy::builder(yaml);
    for (name, contents) in files {
        builder = builder.file(name, *contents);
    }
    builder.start().await
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const BOTH: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
const TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// A rustls client that accepts any certificate (the tests look at which one it got) and
/// offers `alpn`.
fn any_certificate(
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A rustls client that trusts the test root only.
fn verifying(pki: &Pki, versions: &[&'static SupportedProtocolVersion]) -> Arc<ClientConfig> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(pki.roots())
        .with_no_client_auth();
    Arc::new(config)
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// A TLS connection to `addr` asking for `sni` (`None`: no SNI is sent; the certificate is
/// then checked against `no-sni.example.test`).
async fn connect(
    addr: SocketAddr,
    sni: Option<&str>,
    config: &Arc<ClientConfig>,
) -> std::io::Result<Tls> {
    let (name, config) = match sni {
        Some(name) => (name, config.clone()),
        None => {
            let mut config = (**config).clone();
            config.enable_sni = false;
            ("no-sni.example.test", Arc::new(config))
        }
    };
    let name = ServerName::try_from(name.to_string()).unwrap();
    let tcp = TcpStream::connect(addr).await?;
    tokio::time::timeout(
        PATIENCE,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .unwrap_or_else(|_| panic!("no handshake with {addr} within {PATIENCE:?}"))
}

/// The leaf certificate the server presented.
fn served(tls: &Tls) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// `GET path` over `stream` with `Connection: close`; the whole answer.
async fn get(stream: &mut (impl AsyncRead + AsyncWrite + Unpin), host: &str, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    let (answer, closed) = read_until_closed(stream, PATIENCE).await;
    assert!(closed.is_some(), "the answer to GET {path} did not end");
    String::from_utf8_lossy(&answer).into_owned()
}

/// The series of handshakes with `result` on `proxy`'s `{{listen}}` listener.
fn handshakes(proxy: &Proxy, result: &str) -> String {
    format!(
        "edgeward_tls_handshakes_total{{listener=\"{}\",result=\"{result}\"}}",
        proxy.addr()
    )
}

fn connections(proxy: &Proxy, version: &str, handshake: &str) -> String {
    format!(
        "edgeward_tls_connections_total{{listener=\"{}\",version=\"{version}\",handshake=\"{handshake}\"}}",
        proxy.addr()
    )
}

/// A ClientHello as a TLS 1.0 or 1.1 client sends one: `version` in the hello, no
/// `supported_versions`; `signature_algorithms` only when asked (TLS 1.1 clients do not send
/// it, which rustls refuses first; with it the version itself is refused).
fn legacy_client_hello(version: u16, signature_algorithms: bool) -> Vec<u8> {
    let mut hello = Vec::new();
    hello.extend(version.to_be_bytes());
    hello.extend([7u8; 32]);
    hello.push(0);
    let suites: [u16; 3] = [0xc02b, 0xc02f, 0x002f];
    hello.extend((suites.len() as u16 * 2).to_be_bytes());
    for suite in suites {
        hello.extend(suite.to_be_bytes());
    }
    hello.extend([1, 0]);
    if signature_algorithms {
        let extension = [0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x04, 0x03];
        hello.extend((extension.len() as u16).to_be_bytes());
        hello.extend(extension);
    }
    let mut handshake = vec![1];
    handshake.extend(&(hello.len() as u32).to_be_bytes()[1..]);
    handshake.extend(hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

/// The fatal alert the server answered `bytes` with (its description), and that it closed.
async fn alert_for(addr: SocketAddr, bytes: &[u8]) -> u8 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let (answer, closed) = read_until_closed(&mut stream, PATIENCE).await;
    assert!(closed.is_some(), "the connection stays open");
    assert!(
        answer.len() >= 7 && answer[0] == 0x15 && answer[5] == 2,
        "not a fatal alert: {answer:?}"
    );
    answer[6]
}

const PROTOCOL_VERSION_ALERT: u8 = 70;
const HANDSHAKE_FAILURE_ALERT: u8 = 40;

/// Three certificates (the default, an exact name, a wildcard) and one whose `hosts` replace
/// its own names, on the `{{listen}}` listener; `{{plain}}` is plain HTTP; both go to
/// `origin`.
fn sni_config(default: &str, origin: &Origin) -> String {
    config(
        r#"
listeners:
  - address: "{{listen}}"
    tls:
      certificates:
        - {cert: certs/default.pem, key: certs/default.key}
        - {cert: certs/api.pem, key: certs/api.key}
        - {cert: certs/wildcard.pem, key: certs/wildcard.key}
        - {cert: certs/hosts.pem, key: certs/hosts.key, hosts: [override.example.test]}
      default: $default
  - address: "{{plain}}"
admin: {address: "{{admin}}"}
upstreams: {o: {endpoints: ["$origin"]}}
routes: [{upstream: o}]
"#,
        &[
            ("default", default.to_string()),
            ("origin", origin.addr().to_string()),
        ],
    )
}

struct SniCertificates {
    default: Leaf,
    api: Leaf,
    wildcard: Leaf,
    hosts: Leaf,
}

impl SniCertificates {
    fn new(pki: &Pki) -> Self {
        SniCertificates {
            default: pki.leaf(&["default.example.test", "no-sni.example.test"]),
            api: pki.leaf(&["api.example.test"]),
            wildcard: pki.leaf(&["*.example.test"]),
            hosts: pki.leaf(&["its-own-name.example.org"]),
        }
    }

    fn files(&self) -> Vec<(&str, &str)> {
        vec![
            ("certs/default.pem", &self.default.chain),
            ("certs/default.key", &self.default.key),
            ("certs/api.pem", &self.api.chain),
            ("certs/api.key", &self.api.key),
            ("certs/wildcard.pem", &self.wildcard.chain),
            ("certs/wildcard.key", &self.wildcard.key),
            ("certs/hosts.pem", &self.hosts.chain),
            ("certs/hosts.key", &self.hosts.key),
        ]
        .into_iter()
        .map(|(name, contents)| (name, contents.as_str()))
        .collect()
    }
}

#[tokio::test]
async fn sni_picks_the_exact_name_then_the_wildcard_then_the_default_certificate() {
    let pki = Pki::new();
    let certs = SniCertificates::new(&pki);
    let origin = Origin::start("origin").await;
    let proxy = start_with(&sni_config("certs/default.pem", &origin), &certs.files()).await;
    let client = any_certificate(BOTH, &[]);
    for (sni, expected, which) in [
        // The wildcard covers api.example.test too: the exact name wins.
        (Some("api.example.test"), &certs.api, "exact"),
        (Some("API.Example.Test"), &certs.api, "exact, any case"),
        (Some("www.example.test"), &certs.wildcard, "wildcard"),
        // A wildcard covers one label.
        (Some("a.b.example.test"), &certs.default, "default"),
        (Some("example.test"), &certs.default, "default"),
        (Some("elsewhere.test"), &certs.default, "default"),
        (None, &certs.default, "default (no SNI)"),
        // `hosts` replaces the certificate's own names.
        (Some("override.example.test"), &certs.hosts, "hosts"),
        (Some("its-own-name.example.org"), &certs.default, "default"),
    ] {
        let mut tls = connect(proxy.addr(), sni, &client)
            .await
            .unwrap_or_else(|e| panic!("{sni:?}: {e}"));
        assert!(
            served(&tls) == expected.der,
            "{sni:?} should get the {which} certificate"
        );
        let answer = get(&mut tls, sni.unwrap_or("x"), "/sni").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    }
    // Every certificate verifies against the root with its chain, as a browser checks it.
    let verify = verifying(&pki, BOTH);
    for name in [
        "api.example.test",
        "www.example.test",
        "default.example.test",
    ] {
        connect(proxy.addr(), Some(name), &verify)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let expiry = |name: &str| {
        (
            format!("edgeward_tls_certificate_expiry_seconds{{certificate=\"certs/{name}.pem\"}}"),
            NOT_AFTER_UNIX,
        )
    };
    let expiries: Vec<(String, f64)> = ["default", "api", "wildcard", "hosts"]
        .into_iter()
        .map(expiry)
        .collect();
    let mut expected: Vec<(&str, f64)> = expiries.iter().map(|(s, v)| (s.as_str(), *v)).collect();
    let ok = handshakes(&proxy, "ok");
    expected.push((&ok, 12.0));
    metrics_showing(&proxy, &expected).await;
}

#[tokio::test]
async fn default_reject_refuses_an_unknown_or_missing_sni() {
    let pki = Pki::new();
    let certs = SniCertificates::new(&pki);
    let origin = Origin::start("origin").await;
    let proxy = start_with(&sni_config("reject", &origin), &certs.files()).await;
    let client = any_certificate(BOTH, &[]);
    for sni in [Some("elsewhere.test"), Some("a.b.example.test"), None] {
        let refused = connect(proxy.addr(), sni, &client).await;
        assert!(refused.is_err(), "{sni:?} got a certificate");
    }
    // Known names are served as before.
    let tls = connect(proxy.addr(), Some("www.example.test"), &client)
        .await
        .unwrap();
    assert!(served(&tls) == certs.wildcard.der);
    metrics_showing(
        &proxy,
        &[
            (&handshakes(&proxy, "no_certificate"), 3.0),
            (&handshakes(&proxy, "ok"), 1.0),
            (&handshakes(&proxy, "error"), 0.0),
        ],
    )
    .await;
}

#[tokio::test]
async fn alpn_gives_h2_or_http1_and_routes_still_match_the_host() {
    let pki = Pki::new();
    let api = Origin::start("api").await;
    let rest = Origin::start("rest").await;
    let leaf = pki.leaf(&["*.example.test"]);
    let proxy = start_with(
        &config(
            r#"
listeners:
  - address: "{{listen}}"
    tls: {certificates: [{cert: site.pem, key: site.key}]}
upstreams: {api: {endpoints: ["$api"]}, rest: {endpoints: ["$rest"]}}
routes:
  - {match: {host: api.example.test}, upstream: api}
  - {upstream: rest}
"#,
            &[
                ("api", api.addr().to_string()),
                ("rest", rest.addr().to_string()),
            ],
        ),
        &[("site.pem", &leaf.chain), ("site.key", &leaf.key)],
    )
    .await;
    let port = proxy.addr().port();
    let https = |builder: edgeward_testkit::reqwest::ClientBuilder| {
        builder
            .resolve("api.example.test", proxy.addr())
            .resolve("www.example.test", proxy.addr())
            .build()
            .unwrap()
    };
    let root = pki.root_pem();
    for (client, version) in [
        (https(client::https(root.as_bytes())), http::Version::HTTP_2),
        (
            https(client::https(root.as_bytes()).http1_only()),
            http::Version::HTTP_11,
        ),
    ] {
        for (host, origin) in [("api", "api"), ("www", "rest")] {
            let url = format!("https://{host}.example.test:{port}/where?x=1");
            let response = client.get(&url).send().await.unwrap();
            assert_eq!(response.version(), version, "{url}");
            assert_eq!(response.status(), 200, "{url}");
            let body: serde_json::Value = response.json().await.unwrap();
            // The route saw the host (HTTP/2's `:authority`), the origin the scheme.
            assert_eq!(body["origin"], origin, "{url}: {body}");
            assert_eq!(body["headers"]["x-forwarded-proto"], "https", "{body}");
            assert_eq!(body["path"], "/where?x=1", "{body}");
        }
    }
    // What ALPN chose, seen from a client offering one protocol, or none (then HTTP/1.1).
    for (offered, chosen) in [
        (&[&b"http/1.1"[..]][..], Some(&b"http/1.1"[..])),
        (&[&b"h2"[..]][..], Some(&b"h2"[..])),
        (&[][..], None),
    ] {
        let client = any_certificate(BOTH, offered);
        let mut tls = connect(proxy.addr(), Some("www.example.test"), &client)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), chosen);
        if chosen != Some(b"h2") {
            let answer = get(&mut tls, "www.example.test", "/h1").await;
            assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        }
    }
}

#[tokio::test]
async fn the_header_timeout_bounds_handshake_and_head_but_not_a_working_http2_connection() {
    let pki = Pki::new();
    let leaf = pki.leaf(&["site.example.test"]);
    let proxy = start_with(
        r#"
listeners:
  - address: "{{listen}}"
    client: {header_timeout: 1s, idle_timeout: 10s}
    tls: {certificates: [{cert: site.pem, key: site.key}]}
admin: {address: "{{admin}}"}
upstreams: {e: {builtin: echo}}
routes: [{upstream: e}]
"#,
        &[("site.pem", &leaf.chain), ("site.key", &leaf.key)],
    )
    .await;
    let h2 = client::https(pki.root_pem().as_bytes())
        .resolve("site.example.test", proxy.addr())
        .build()
        .unwrap();
    let url = format!("https://site.example.test:{}/", proxy.addr().port());
    let first = h2.get(&url).send().await.unwrap();
    assert_eq!(first.version(), http::Version::HTTP_2);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = h2.get(&url).send().await.unwrap();
    assert_eq!(second.status(), 200);
    // The HTTP/2 connection lived through the header timeout.
    let header_timeouts = format!(
        "edgeward_client_timeouts_total{{listener=\"{}\",timeout=\"header\"}}",
        proxy.addr()
    );
    assert_eq!(
        crate::support::metric_if_exposed(&proxy, &header_timeouts).await,
        None
    );
    // A client that finishes its handshake but sends no request is closed at the timeout,
    // counted as a header timeout, not as a failed handshake.
    let started = Instant::now();
    let mut idle = connect(
        proxy.addr(),
        Some("site.example.test"),
        &verifying(&pki, BOTH),
    )
    .await
    .unwrap();
    let (answer, closed) = read_until_closed(&mut idle, PATIENCE).await;
    assert_eq!(answer, b"");
    let lived = closed.expect("an idle TLS connection stayed open") - started;
    assert!(
        lived >= Duration::from_millis(900),
        "closed after {lived:?}"
    );
    metrics_showing(
        &proxy,
        &[
            (&header_timeouts, 1.0),
            (&handshakes(&proxy, "timeout"), 0.0),
            (&handshakes(&proxy, "ok"), 2.0),
        ],
    )
    .await;
}

#[tokio::test]
async fn x_forwarded_proto_follows_the_connection() {
    let pki = Pki::new();
    let certs = SniCertificates::new(&pki);
    let origin = Origin::start("origin").await;
    let proxy = start_with(&sni_config("certs/default.pem", &origin), &certs.files()).await;
    let plain = client::http1()
        .get(format!("http://{}/plain", proxy.placeholder_addr("plain")))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = plain.json().await.unwrap();
    // A client's own claim is replaced by what its connection is.
    assert_eq!(body["headers"]["x-forwarded-proto"], "http", "{body}");
    let h2c = client::h2c()
        .get(format!("http://{}/h2c", proxy.placeholder_addr("plain")))
        .send()
        .await
        .unwrap();
    assert_eq!(h2c.version(), http::Version::HTTP_2);
    let body: serde_json::Value = h2c.json().await.unwrap();
    assert_eq!(body["headers"]["x-forwarded-proto"], "http", "{body}");
    let mut tls = connect(
        proxy.addr(),
        Some("api.example.test"),
        &any_certificate(BOTH, &[]),
    )
    .await
    .unwrap();
    let answer = get(&mut tls, "api.example.test", "/tls").await;
    assert!(
        answer.contains(r#""x-forwarded-proto":"https""#),
        "{answer}"
    );
}

#[tokio::test]
async fn tls_1_0_and_1_1_are_refused() {
    let pki = Pki::new();
    let certs = SniCertificates::new(&pki);
    let origin = Origin::start("origin").await;
    let proxy = start_with(&sni_config("certs/default.pem", &origin), &certs.files()).await;
    // ClientHellos as TLS 1.0 and 1.1 clients send them: without the signature algorithms
    // that TLS 1.2 brought (refused first, with a handshake failure), and with them (then the
    // version itself is refused).
    for version in [0x0301, 0x0302] {
        assert_eq!(
            alert_for(proxy.addr(), &legacy_client_hello(version, false)).await,
            HANDSHAKE_FAILURE_ALERT
        );
        assert_eq!(
            alert_for(proxy.addr(), &legacy_client_hello(version, true)).await,
            PROTOCOL_VERSION_ALERT
        );
    }
    let mut refused = 4.0;
    // A real TLS 1.1 client, where the machine has one (OpenSSL 3 needs security level 0 to
    // even try).
    let addr = proxy.addr().to_string();
    let openssl = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &addr, "-tls1_1"])
        .args([
            "-cipher",
            "DEFAULT@SECLEVEL=0",
            "-servername",
            "api.example.test",
        ])
        .stdin(std::process::Stdio::null())
        .output();
    match openssl {
        Ok(output) => {
            let text = String::from_utf8_lossy(&output.stderr).into_owned()
                + &String::from_utf8_lossy(&output.stdout);
            assert!(
                !output.status.success(),
                "openssl -tls1_1 connected:\n{text}"
            );
            assert!(
                text.contains("alert"),
                "no alert for openssl -tls1_1:\n{text}"
            );
            refused += 1.0;
        }
        Err(e) => eprintln!("no openssl to try TLS 1.1 with ({e}); the raw ClientHellos did"),
    }
    metrics_showing(
        &proxy,
        &[
            (&handshakes(&proxy, "protocol_version"), refused),
            (&handshakes(&proxy, "ok"), 0.0),
        ],
    )
    .await;
    // The next client is served.
    connect(
        proxy.addr(),
        Some("api.example.test"),
        &verifying(&pki, BOTH),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn min_version_1_3_refuses_a_tls_1_2_client() {
    let pki = Pki::new();
    let leaf = pki.leaf(&["site.example.test"]);
    let proxy = start_with(
        r#"
listeners:
  - address: "{{listen}}"
    tls: {certificates: [{cert: site.pem, key: site.key}], min_version: "1.3"}
  - address: "{{default}}"
    tls: {certificates: [{cert: site.pem, key: site.key}]}
admin: {address: "{{admin}}"}
upstreams: {e: {builtin: echo}}
routes: [{upstream: e}]
"#,
        &[("site.pem", &leaf.chain), ("site.key", &leaf.key)],
    )
    .await;
    let sni = Some("site.example.test");
    assert!(connect(proxy.addr(), sni, &verifying(&pki, TLS12))
        .await
        .is_err());
    let tls = connect(proxy.addr(), sni, &verifying(&pki, TLS13))
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(ProtocolVersion::TLSv1_3)
    );
    // TLS 1.2 is accepted by default.
    let tls = connect(
        proxy.placeholder_addr("default"),
        sni,
        &verifying(&pki, TLS12),
    )
    .await
    .unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(ProtocolVersion::TLSv1_2)
    );
    let default = proxy.placeholder_addr("default");
    metrics_showing(
        &proxy,
        &[
            (&handshakes(&proxy, "protocol_version"), 1.0),
            (&connections(&proxy, "TLSv1.3", "full"), 1.0),
            (
                &format!("edgeward_tls_connections_total{{listener=\"{default}\",version=\"TLSv1.2\",handshake=\"full\"}}"),
                1.0,
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn sessions_resume_with_tickets_and_with_the_session_cache() {
    let pki = Pki::new();
    let certs = SniCertificates::new(&pki);
    let origin = Origin::start("origin").await;
    let proxy = start_with(&sni_config("certs/default.pem", &origin), &certs.files()).await;
    use rustls::client::{Resumption, Tls12Resumption};
    for (versions, resumption, what) in [
        (TLS13, Resumption::in_memory_sessions(8), "TLS 1.3 tickets"),
        (TLS12, Resumption::in_memory_sessions(8), "TLS 1.2 tickets"),
        (
            TLS12,
            Resumption::in_memory_sessions(8).tls12_resumption(Tls12Resumption::SessionIdOnly),
            "TLS 1.2 session ids",
        ),
    ] {
        let mut config = (*verifying(&pki, versions)).clone();
        config.resumption = resumption;
        let config = Arc::new(config);
        let sni = Some("api.example.test");
        let mut first = connect(proxy.addr(), sni, &config).await.unwrap();
        assert_eq!(
            first.get_ref().1.handshake_kind(),
            Some(HandshakeKind::Full)
        );
        // Reading the answer takes in the tickets a TLS 1.3 server sends after its handshake.
        let answer = get(&mut first, "api.example.test", "/first").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        let mut second = connect(proxy.addr(), sni, &config).await.unwrap();
        assert_eq!(
            second.get_ref().1.handshake_kind(),
            Some(HandshakeKind::Resumed),
            "{what}"
        );
        let answer = get(&mut second, "api.example.test", "/second").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    }
    metrics_showing(
        &proxy,
        &[
            (&connections(&proxy, "TLSv1.3", "full"), 1.0),
            (&connections(&proxy, "TLSv1.3", "resumed"), 1.0),
            (&connections(&proxy, "TLSv1.2", "full"), 2.0),
            (&connections(&proxy, "TLSv1.2", "resumed"), 2.0),
        ],
    )
    .await;
}

#[tokio::test]
async fn certificates_of_every_key_type_are_served_with_their_chain() {
    use rsa::pkcs8::EncodePrivateKey as _;
    let pki = Pki::new();
    let rsa_key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
    let rsa_pem = rsa_key.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF).unwrap();
    let rsa = KeyPair::from_pkcs8_pem_and_sign_algo(&rsa_pem, &rcgen::PKCS_RSA_SHA256).unwrap();
    let leaves = [
        ("rsa", pki.leaf_with_key(&["rsa.example.test"], rsa)),
        ("p256", pki.leaf(&["p256.example.test"])),
        (
            "p384",
            pki.leaf_with_key(
                &["p384.example.test"],
                KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap(),
            ),
        ),
        (
            "ed25519",
            pki.leaf_with_key(
                &["ed25519.example.test"],
                KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap(),
            ),
        ),
    ];
    // A certificate without its intermediate: clients that trust only the root refuse it.
    let unchained = {
        let leaf = pki.leaf(&["unchained.example.test"]);
        let end = leaf.chain.find("-----END CERTIFICATE-----").unwrap();
        let only_leaf = leaf.chain[..end + "-----END CERTIFICATE-----\n".len()].to_string();
        Leaf {
            chain: only_leaf,
            ..leaf
        }
    };
    let mut files: Vec<(String, String)> = Vec::new();
    let mut listed = String::new();
    for (name, leaf) in leaves.iter().chain([("unchained", unchained)].iter()) {
        files.push((format!("{name}.pem"), leaf.chain.clone()));
        files.push((format!("{name}.key"), leaf.key.clone()));
        listed.push_str(&format!(
            "        - {{cert: {name}.pem, key: {name}.key}}\n"
        ));
    }
    let yaml = format!(
        "listeners:\n  - address: \"{{{{listen}}}}\"\n    tls:\n      certificates:\n{listed}admin: {{address: \"{{{{admin}}}}\"}}\nupstreams: {{e: {{builtin: echo}}}}\nroutes: [{{upstream: e}}]\n"
    );
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, c)| (n.as_str(), c.as_str()))
        .collect();
    let proxy = start_with(&yaml, &files).await;
    for (name, leaf) in &leaves {
        for versions in [TLS13, TLS12] {
            let sni = format!("{name}.example.test");
            let mut tls = connect(proxy.addr(), Some(&sni), &verifying(&pki, versions))
                .await
                .unwrap_or_else(|e| panic!("{sni} over {versions:?}: {e}"));
            assert!(served(&tls) == leaf.der, "{sni}");
            let answer = get(&mut tls, &sni, "/").await;
            assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        }
    }
    let refused = connect(
        proxy.addr(),
        Some("unchained.example.test"),
        &verifying(&pki, BOTH),
    )
    .await;
    assert!(refused.is_err(), "a certificate without its chain verified");
    metrics_showing(
        &proxy,
        &[
            (&handshakes(&proxy, "ok"), 8.0),
            (&handshakes(&proxy, "certificate_rejected"), 1.0),
        ],
    )
    .await;
}

#[tokio::test]
async fn redirect_https_answers_308_to_the_same_url_on_https() {
    let origin = Origin::start("origin").await;
    let proxy = start_with(
        &config(
            r#"
listeners:
  - {address: "{{listen}}", redirect_https: true}
  - {address: "{{other}}", redirect_https: 8443}
admin: {address: "{{admin}}"}
upstreams: {o: {endpoints: ["$origin"]}}
routes: [{upstream: o}]
"#,
            &[("origin", origin.addr().to_string())],
        ),
        &[],
    )
    .await;
    let ask = |addr: SocketAddr, request: &'static str| async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let (answer, _) = read_until_closed(&mut stream, PATIENCE).await;
        String::from_utf8_lossy(&answer).into_owned()
    };
    let location = |answer: &str| {
        answer
            .lines()
            .find_map(|l| l.strip_prefix("location: "))
            .map(str::to_string)
    };
    for (addr, request, expected) in [
        (
            proxy.addr(),
            "GET /a/b?x=1&y=%20 HTTP/1.1\r\nHost: www.example.test:8080\r\nConnection: close\r\n\r\n",
            "https://www.example.test/a/b?x=1&y=%20",
        ),
        (
            proxy.addr(),
            "POST /form HTTP/1.1\r\nHost: www.example.test\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
            "https://www.example.test/form",
        ),
        (
            proxy.addr(),
            "GET /old HTTP/1.0\r\n\r\n",
            "https://127.0.0.1/old",
        ),
        (
            proxy.placeholder_addr("other"),
            "GET /p HTTP/1.1\r\nHost: www.example.test\r\nConnection: close\r\n\r\n",
            "https://www.example.test:8443/p",
        ),
    ] {
        let answer = ask(addr, request).await;
        assert!(
            answer.starts_with("HTTP/1.1 308 Permanent Redirect\r\n"),
            "{request:?}: {answer}"
        );
        assert_eq!(location(&answer).as_deref(), Some(expected), "{answer}");
    }
    let h2 = client::h2c()
        .get(format!("http://{}/h2?q", proxy.addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(h2.status(), 308);
    assert_eq!(h2.headers()["location"], "https://127.0.0.1/h2?q");
    assert_eq!(origin.hits(), 0, "a redirected request went upstream");
    metrics_showing(
        &proxy,
        &[(r#"edgeward_requests_total{route="",status="308"}"#, 5.0)],
    )
    .await;
}

#[tokio::test]
async fn plain_http_on_the_tls_port_gets_400_and_a_close() {
    let pki = Pki::new();
    let certs = SniCertificates::new(&pki);
    let origin = Origin::start("origin").await;
    let proxy = start_with(&sni_config("certs/default.pem", &origin), &certs.files()).await;
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream
        .write_all(b"GET /plain HTTP/1.1\r\nHost: api.example.test\r\n\r\n")
        .await
        .unwrap();
    let (answer, closed) = read_until_closed(&mut stream, PATIENCE).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains("The plain HTTP request was sent to HTTPS port"),
        "{answer}"
    );
    assert!(closed.is_some(), "the connection stays open");
    // A client library sees the answer too.
    let response = client::http1()
        .get(format!("http://{}/lib", proxy.addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(origin.hits(), 0);
    metrics_showing(&proxy, &[(&handshakes(&proxy, "plaintext_http"), 2.0)]).await;
    connect(
        proxy.addr(),
        Some("api.example.test"),
        &verifying(&pki, BOTH),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn garbage_and_a_truncated_client_hello_are_closed_and_the_next_client_is_served() {
    let pki = Pki::new();
    let leaf = pki.leaf(&["site.example.test"]);
    let proxy = start_with(
        r#"
listeners:
  - address: "{{listen}}"
    client: {header_timeout: 1s}
    tls: {certificates: [{cert: site.pem, key: site.key}]}
admin: {address: "{{admin}}"}
upstreams: {e: {builtin: echo}}
routes: [{upstream: e}]
"#,
        &[("site.pem", &leaf.chain), ("site.key", &leaf.key)],
    )
    .await;
    // Not TLS, not HTTP: closed without an answer.
    let mut garbage = TcpStream::connect(proxy.addr()).await.unwrap();
    garbage.write_all(b"\x00\xff\x13garbage").await.unwrap();
    let (answer, closed) = read_until_closed(&mut garbage, PATIENCE).await;
    assert_eq!(answer, b"");
    assert!(closed.is_some(), "garbage kept its connection");
    // A TLS record holding a ClientHello of one byte: an alert, and closed.
    let mut broken = TcpStream::connect(proxy.addr()).await.unwrap();
    broken
        .write_all(b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00")
        .await
        .unwrap();
    let (answer, closed) = read_until_closed(&mut broken, PATIENCE).await;
    assert_eq!(answer.first(), Some(&0x15), "{answer:?}");
    assert!(closed.is_some(), "a broken record kept its connection");
    // Half a ClientHello: held until the header timeout, then closed.
    let started = Instant::now();
    let mut truncated = TcpStream::connect(proxy.addr()).await.unwrap();
    truncated
        .write_all(&legacy_client_hello(0x0303, true)[..20])
        .await
        .unwrap();
    let (answer, closed) = read_until_closed(&mut truncated, PATIENCE).await;
    assert_eq!(answer, b"");
    let lived = closed.expect("a truncated ClientHello kept its connection") - started;
    assert!(lived >= Duration::from_secs(1), "closed after {lived:?}");
    // A connection closed before its first byte (a TCP health check) is no handshake.
    drop(TcpStream::connect(proxy.addr()).await.unwrap());
    let mut tls = connect(
        proxy.addr(),
        Some("site.example.test"),
        &verifying(&pki, BOTH),
    )
    .await
    .unwrap();
    let answer = get(&mut tls, "site.example.test", "/after").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let listener = proxy.addr();
    metrics_showing(
        &proxy,
        &[
            (&handshakes(&proxy, "not_tls"), 1.0),
            (&handshakes(&proxy, "error"), 1.0),
            (&handshakes(&proxy, "timeout"), 1.0),
            (&handshakes(&proxy, "ok"), 1.0),
            (&handshakes(&proxy, "plaintext_http"), 0.0),
            (
                &format!(
                    "edgeward_client_timeouts_total{{listener=\"{listener}\",timeout=\"header\"}}"
                ),
                1.0,
            ),
            (
                &format!("edgeward_client_connections{{listener=\"{listener}\"}}"),
                0.0,
            ),
        ],
    )
    .await;
}

#[test]
fn validate_reports_tls_problems_at_their_place_and_warns_of_expiry() {
    use_built_binary();
    let pki = Pki::new();
    let a = pki.leaf(&["a.example.test"]);
    let b = pki.leaf(&["b.example.test"]);
    let yaml = "listeners:\n  - address: 127.0.0.1:8443\n    tls:\n      certificates:\n        - {cert: missing.pem, key: a.key}\n        - {cert: a.pem, key: b.key}\n      default: c.pem\nupstreams: {u: {builtin: echo}}\nroutes: [{upstream: u}]\n";
    let output = run_edgeward(
        &["validate", "--config", "{dir}/edgeward.yaml"],
        &[
            ("edgeward.yaml", yaml),
            ("a.pem", &a.chain),
            ("a.key", &a.key),
            ("b.key", &b.key),
        ],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let expected = [
        (
            "edgeward.yaml:5:18: error: tls: cannot read `",
            "missing.pem`: No such file",
        ),
        (
            "edgeward.yaml:6:30: error: tls: the key in `",
            "b.key` does not belong to the certificate in `",
        ),
        (
            "edgeward.yaml:7:16: error: `default` names `c.pem`",
            "or write `default: reject`",
        ),
    ];
    assert_eq!(lines.len(), expected.len() + 1, "{stderr}");
    for (line, (place, message)) in lines.iter().zip(expected) {
        assert!(
            line.contains(place) && line.contains(message),
            "{line:?} lacks {place:?} or {message:?}:\n{stderr}"
        );
    }
    assert_eq!(lines[3], "3 problems found");

    // An expired certificate is served, with a warning: clients will refuse it, but a
    // listener with other certificates must not stop serving them.
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["old.example.test".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2001, 1, 1);
    params.not_after = rcgen::date_time_ymd(2002, 1, 1);
    let expired = params.self_signed(&key).unwrap();
    let yaml = "listeners:\n  - address: 127.0.0.1:8443\n    tls: {certificates: [{cert: old.pem, key: old.key}]}\nupstreams: {u: {builtin: echo}}\nroutes: [{upstream: u}]\n";
    let output = run_edgeward(
        &["validate", "--config", "{dir}/edgeward.yaml"],
        &[
            ("edgeward.yaml", yaml),
            ("old.pem", &expired.pem()),
            ("old.key", &key.serialize_pem()),
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "ok");
    assert!(
        stderr.contains("certificate `old.pem` expired on"),
        "{stderr}"
    );
}

/// A TLS listener serving `certs/site.pem` that looks at its files every 100 ms, and keeps
/// idle connections for long enough to outlast a slow test.
const ROTATION_CONFIG: &str = r#"
listeners:
  - address: "{{listen}}"
    client: {idle_timeout: 10m}
    tls:
      certificates: [{cert: certs/site.pem, key: certs/site.key}]
      reload_interval: 100ms
admin: {address: "{{admin}}"}
upstreams: {e: {builtin: echo}}
routes: [{upstream: e}]
"#;

/// Puts `contents` at `path` as certificate tools that write atomically do: a new file renamed
/// over the old one.
fn replace_file(path: &std::path::Path, contents: &str) {
    let new = path.with_extension("new");
    std::fs::write(&new, contents).unwrap();
    std::fs::rename(&new, path).unwrap();
}

/// `GET path` over `stream`, leaving the connection open: the answer, as far as its
/// `Content-Length` goes.
async fn get_kept_alive(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    host: &str,
    path: &str,
) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    let mut received = Vec::new();
    let answer = async {
        let mut buf = [0; 4096];
        loop {
            if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&received[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length:"))
                    .unwrap_or_else(|| panic!("no content-length: {head}"))
                    .trim()
                    .parse()
                    .unwrap();
                if received.len() >= end + 4 + length {
                    return;
                }
            }
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the connection closed after {received:?}");
            received.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(PATIENCE, answer)
        .await
        .unwrap_or_else(|_| panic!("no answer to GET {path} within {PATIENCE:?}"));
    String::from_utf8_lossy(&received).into_owned()
}

/// The series of `certs/site.pem`'s reloads with `result` on `proxy`'s `{{listen}}` listener.
fn reloads(proxy: &Proxy, result: &str) -> String {
    format!(
        "edgeward_tls_certificate_reloads_total{{listener=\"{}\",certificate=\"certs/site.pem\",result=\"{result}\"}}",
        proxy.addr()
    )
}

const SITE_EXPIRY: &str = "edgeward_tls_certificate_expiry_seconds{certificate=\"certs/site.pem\"}";

/// The proxy of [`ROTATION_CONFIG`], serving `leaf` at first.
async fn start_rotating(leaf: &Leaf) -> Proxy {
    start_with(
        ROTATION_CONFIG,
        &[
            ("certs/site.pem", &leaf.chain),
            ("certs/site.key", &leaf.key),
        ],
    )
    .await
}

/// Waits until a new handshake for `sni`, by a client trusting `pki`, gets `leaf`. Each try
/// has a client of its own: a resumed session would skip the certificate.
async fn until_served(proxy: &Proxy, sni: &str, pki: &Pki, leaf: &Leaf) {
    eventually(
        &format!("a new handshake for {sni} to get the new certificate"),
        || async {
            let tls = connect(proxy.addr(), Some(sni), &verifying(pki, BOTH))
                .await
                .ok()?;
            (served(&tls) == leaf.der).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_rotated_certificate_serves_new_handshakes_while_an_open_connection_goes_on() {
    let pki = Pki::new();
    let old = pki.leaf(&["site.example.test"]);
    let proxy = start_rotating(&old).await;
    let sni = Some("site.example.test");
    let mut open = connect(proxy.addr(), sni, &verifying(&pki, BOTH))
        .await
        .unwrap();
    let answer = get_kept_alive(&mut open, "site.example.test", "/before").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");

    // Renewed by another CA, with one more name and a later expiry; the key first, then the
    // certificate, each renamed into place.
    let renewed_pki = Pki::new();
    let renewed = renewed_pki.leaf_until(
        &["site.example.test", "www.example.test"],
        KeyPair::generate().unwrap(),
        (2098, 6, 1),
    );
    let certs = proxy.dir().join("certs");
    replace_file(&certs.join("site.key"), &renewed.key);
    replace_file(&certs.join("site.pem"), &renewed.chain);
    until_served(&proxy, "www.example.test", &renewed_pki, &renewed).await;
    let tls = connect(proxy.addr(), sni, &any_certificate(BOTH, &[]))
        .await
        .unwrap();
    assert!(served(&tls) == renewed.der);

    // The connection made before goes on, with the certificate it was made with.
    assert!(served(&open) == old.der);
    let answer = get(&mut open, "site.example.test", "/after").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    metrics_showing(
        &proxy,
        &[
            (&reloads(&proxy, "ok"), 1.0),
            (SITE_EXPIRY, 4_052_419_200.0),
        ],
    )
    .await;
    wait_for_log(&proxy, "certificate `certs/site.pem` reloaded").await;
}

#[tokio::test]
async fn a_configuration_reload_reads_changed_certificates_at_once() {
    let pki = Pki::new();
    let old = pki.leaf(&["site.example.test"]);
    // Files looked at hourly: only the reload can have made the renewal serve.
    let yaml = ROTATION_CONFIG.replace("reload_interval: 100ms", "reload_interval: 1h");
    let proxy = start_with(
        &yaml,
        &[("certs/site.pem", &old.chain), ("certs/site.key", &old.key)],
    )
    .await;
    let renewed = pki.leaf(&["site.example.test", "www.example.test"]);
    let certs = proxy.dir().join("certs");
    replace_file(&certs.join("site.key"), &renewed.key);
    replace_file(&certs.join("site.pem"), &renewed.chain);
    proxy.signal("HUP");
    until_served(&proxy, "www.example.test", &pki, &renewed).await;
}

#[tokio::test]
async fn a_broken_replacement_leaves_the_certificate_serving_and_is_reported() {
    let pki = Pki::new();
    let good = pki.leaf(&["site.example.test"]);
    let proxy = start_rotating(&good).await;
    let site_pem = proxy.dir().join("certs/site.pem");
    let other = pki.leaf(&["site.example.test"]);
    // With the served certificate's own key: only its dates are wrong.
    let expired = pki.leaf_until(
        &["site.example.test"],
        KeyPair::from_pem(&good.key).unwrap(),
        (2001, 1, 1),
    );
    // What `certs/site.pem` becomes (`None`: it is deleted), and what the log says of it.
    let breakages = [
        ("holds no certificate", Some("not a certificate\n")),
        (
            "does not belong to the certificate",
            Some(other.chain.as_str()),
        ),
        ("expired on", Some(expired.chain.as_str())),
        ("cannot read", None),
    ];
    for (errors, (reason, contents)) in (1..).zip(breakages) {
        match contents {
            Some(contents) => replace_file(&site_pem, contents),
            None => std::fs::remove_file(&site_pem).unwrap(),
        }
        metrics_showing(
            &proxy,
            &[
                (&reloads(&proxy, "error"), f64::from(errors)),
                (&reloads(&proxy, "ok"), 0.0),
                (SITE_EXPIRY, NOT_AFTER_UNIX),
            ],
        )
        .await;
        let line = wait_for_log(&proxy, reason).await;
        assert!(
            line.contains("ERROR")
                && line.contains("certificate `certs/site.pem` cannot be served")
                && line.contains(&format!("{}`", site_pem.display())),
            "the line names neither the certificate nor its file: {line}"
        );
        // New handshakes still get the certificate served before.
        let tls = connect(
            proxy.addr(),
            Some("site.example.test"),
            &verifying(&pki, BOTH),
        )
        .await
        .unwrap_or_else(|e| panic!("after a replacement that {reason}: {e}"));
        assert!(served(&tls) == good.der, "after {reason}");
    }

    // A good pair again is served.
    let fixed = pki.leaf(&["site.example.test"]);
    replace_file(&proxy.dir().join("certs/site.key"), &fixed.key);
    replace_file(&site_pem, &fixed.chain);
    until_served(&proxy, "site.example.test", &pki, &fixed).await;
    metrics_showing(&proxy, &[(&reloads(&proxy, "ok"), 1.0)]).await;
}

/// Accepts any certificate: for the tests that look at which certificate was served.
#[derive(Debug)]
struct AnyCertificate;

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[tokio::test]
async fn filters_see_the_scheme_tls_version_and_server_name_of_the_connection() {
    let pki = Pki::new();
    let leaf = pki.leaf(&["site.example.test"]);
    let origin = Origin::start("origin").await;
    let yaml = config(
        r#"
listeners:
  - address: "{{listen}}"
    tls: {certificates: [{cert: site.pem, key: site.key}]}
upstreams: {origin: {endpoints: ["$origin"]}}
filters:
  props:
    module: $props
    config: {paths: [[connection, tls_version], [request, scheme], [connection, mtls], [connection, requested_server_name]]}
routes: [{upstream: origin, filters: [props]}]
"#,
        &[
            ("origin", origin.addr().to_string()),
            ("props", edgeward_testkit::filters::PROPERTIES.to_string()),
        ],
    );
    let proxy = start_with(&yaml, &[("site.pem", &leaf.chain), ("site.key", &leaf.key)]).await;
    let client = client::https(pki.root_pem().as_bytes())
        .resolve("site.example.test", proxy.addr())
        .build()
        .unwrap();
    let url = format!("https://site.example.test:{}/", proxy.addr().port());
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let prop = |path: &str| {
        response
            .headers()
            .get(format!("x-prop-{path}"))
            .map(|v| v.to_str().unwrap().to_string())
    };
    assert_eq!(prop("connection.tls_version").as_deref(), Some("TLSv1.3"));
    assert_eq!(prop("request.scheme").as_deref(), Some("https"));
    assert_eq!(prop("connection.mtls").as_deref(), Some("false"));
    assert_eq!(
        prop("connection.requested_server_name").as_deref(),
        Some("site.example.test")
    );
}
