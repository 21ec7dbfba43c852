//! The `jwt-auth` filter through the real proxy: tokens of every algorithm signed by an
//! independent library (`jsonwebtoken`, RustCrypto backend) with keys generated here,
//! rejections with the right challenge, token sources, claim forwarding and anti-spoofing,
//! and JWKS served by a real local server: fetched, waited for, refreshed, and kept when the
//! server fails.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use edgeward_testkit::{client, filters, reqwest, serve_http, Origin, Proxy};
use http_body_util::Full;
use hyper::Response;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use p256::pkcs8::EncodePrivateKey as _;
use rand::rngs::OsRng;
use rand::RngCore as _;
use rsa::pkcs1::EncodeRsaPrivateKey as _;
use rsa::pkcs8::EncodePublicKey as _;
use rsa::traits::PublicKeyParts as _;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::support::{config, eventually, refused_by_validate, start_proxy, wait_for_log};

const ISSUER: &str = "https://issuer.example.com";
const AUDIENCE: &str = "edge-api";

// ---------------------------------------------------------------------------------------
// Keys, JWKS and tokens

/// One key of every type the filter supports.
struct Keys {
    rsa: rsa::RsaPrivateKey,
    p256: p256::SecretKey,
    p384: p384::SecretKey,
    ed25519: ed25519_dalek::SigningKey,
    hmac: Vec<u8>,
}

/// The keys the providers are configured with.
fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(Keys::generate)
}

/// Unrelated keys: what an attacker could sign with.
fn attacker_keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(Keys::generate)
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The `kid` of the key (of [`Keys::jwks`]) that checks `alg`.
fn kid_for(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => "rsa-1",
        Algorithm::ES256 => "ec256-1",
        Algorithm::ES384 => "ec384-1",
        Algorithm::EdDSA => "ed-1",
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => "hmac-1",
        other => panic!("no test key for {other:?}"),
    }
}

impl Keys {
    fn generate() -> Keys {
        let mut hmac = vec![0; 32];
        OsRng.fill_bytes(&mut hmac);
        Keys {
            rsa: rsa::RsaPrivateKey::new(&mut OsRng, 2048).expect("an RSA 2048 key"),
            p256: p256::SecretKey::random(&mut OsRng),
            p384: p384::SecretKey::random(&mut OsRng),
            ed25519: ed25519_dalek::SigningKey::generate(&mut OsRng),
            hmac,
        }
    }

    fn rsa_jwk(&self, kid: &str) -> Value {
        let public = self.rsa.to_public_key();
        json!({"kty": "RSA", "kid": kid, "use": "sig", "n": b64(&public.n().to_bytes_be()),
               "e": b64(&public.e().to_bytes_be())})
    }

    fn p256_jwk(&self, kid: &str) -> Value {
        let point = self.p256.public_key().to_encoded_point(false);
        json!({"kty": "EC", "kid": kid, "crv": "P-256", "x": b64(point.x().unwrap()),
               "y": b64(point.y().unwrap())})
    }

    fn p384_jwk(&self, kid: &str) -> Value {
        let point = self.p384.public_key().to_encoded_point(false);
        json!({"kty": "EC", "kid": kid, "crv": "P-384", "x": b64(point.x().unwrap()),
               "y": b64(point.y().unwrap())})
    }

    fn ed25519_jwk(&self, kid: &str) -> Value {
        let x = self.ed25519.verifying_key().to_bytes();
        json!({"kty": "OKP", "kid": kid, "crv": "Ed25519", "x": b64(&x)})
    }

    fn hmac_jwk(&self, kid: &str) -> Value {
        json!({"kty": "oct", "kid": kid, "k": b64(&self.hmac)})
    }

    /// A JWKS of the public keys (and the HMAC secret), `kid`s as [`kid_for`] says.
    fn jwks(&self) -> Value {
        json!({"keys": [
            self.rsa_jwk("rsa-1"),
            self.p256_jwk("ec256-1"),
            self.p384_jwk("ec384-1"),
            self.ed25519_jwk("ed-1"),
            self.hmac_jwk("hmac-1"),
        ]})
    }

    fn encoding_key(&self, alg: Algorithm) -> EncodingKey {
        match kid_for(alg) {
            "rsa-1" => EncodingKey::from_rsa_der(self.rsa.to_pkcs1_der().unwrap().as_bytes()),
            "ec256-1" => EncodingKey::from_ec_der(self.p256.to_pkcs8_der().unwrap().as_bytes()),
            "ec384-1" => EncodingKey::from_ec_der(self.p384.to_pkcs8_der().unwrap().as_bytes()),
            "ed-1" => EncodingKey::from_ed_der(self.ed25519.to_pkcs8_der().unwrap().as_bytes()),
            _ => EncodingKey::from_secret(&self.hmac),
        }
    }

    /// A token signed with this set's key for `alg`, carrying `kid`.
    fn sign(&self, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
        encode(alg, kid, claims, &self.encoding_key(alg))
    }

    fn rsa_public_pem(&self) -> String {
        let public = self.rsa.to_public_key();
        public
            .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
            .unwrap()
    }

    fn rsa_public_der(&self) -> Vec<u8> {
        let public = self.rsa.to_public_key();
        public.to_public_key_der().unwrap().as_bytes().to_vec()
    }
}

fn encode(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("signing a test token")
}

fn now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    i64::try_from(secs).unwrap()
}

/// Valid claims for user `sub` of [`ISSUER`], for [`AUDIENCE`], valid for 10 minutes.
fn claims(sub: &str) -> Value {
    let now = now();
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "email": format!("{sub}@example.com"),
           "iat": now, "nbf": now, "exp": now + 600})
}

/// [`claims`] with some claims replaced (`null` removes one).
fn claims_with(sub: &str, changes: Value) -> Value {
    let mut claims = claims(sub);
    for (name, value) in changes.as_object().unwrap() {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(name);
        } else {
            claims[name] = value.clone();
        }
    }
    claims
}

/// A valid RS256 token for `sub`.
fn token(sub: &str) -> String {
    keys().sign(Algorithm::RS256, Some("rsa-1"), &claims(sub))
}

// ---------------------------------------------------------------------------------------
// HTTP helpers

/// What came back: status, headers, body.
struct Answer {
    status: u16,
    www_authenticate: Option<String>,
    content_type: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|err| panic!("body is not JSON ({err}): {}", self.body))
    }

    /// The request headers the origin saw (its JSON echo).
    fn origin_headers(&self) -> Value {
        assert_eq!(
            self.status, 200,
            "expected the origin's echo: {}",
            self.body
        );
        self.json()["headers"].clone()
    }

    fn origin_header(&self, name: &str) -> Option<String> {
        self.origin_headers()[name].as_str().map(str::to_owned)
    }

    /// Asserts a `401 invalid_token` answer with `reason`, in the challenge and the body.
    fn assert_invalid(&self, reason: &str, what: &str) {
        assert_eq!(self.status, 401, "{what}: {}", self.body);
        assert_eq!(
            self.www_authenticate.as_deref(),
            Some(format!(r#"Bearer error="invalid_token", error_description="{reason}""#).as_str()),
            "{what}"
        );
        assert_eq!(
            self.content_type.as_deref(),
            Some("application/json"),
            "{what}"
        );
        assert_eq!(
            self.json(),
            json!({"error": "invalid_token", "error_description": reason}),
            "{what}"
        );
    }
}

async fn get(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> Answer {
    get_url(proxy.url(path), headers).await
}

async fn get_url(url: String, headers: &[(&str, &str)]) -> Answer {
    let mut request = client::http1().get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("request through the proxy");
    let header = |response: &reqwest::Response, name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    Answer {
        status: response.status().as_u16(),
        www_authenticate: header(&response, "www-authenticate"),
        content_type: header(&response, "content-type"),
        body: response.text().await.expect("response body"),
    }
}

async fn get_with_token(proxy: &Proxy, path: &str, token: &str) -> Answer {
    let bearer = format!("Bearer {token}");
    get(proxy, path, &[("authorization", &bearer)]).await
}

// ---------------------------------------------------------------------------------------
// A JWKS server

/// A small HTTP server standing in for an identity provider's JWKS endpoint: serves the
/// body it is given (changeable at any time) with a chosen status, counts requests, can
/// hold answers back until released, and stops (with its open connections) when dropped.
struct JwksServer {
    addr: SocketAddr,
    state: Arc<JwksState>,
    server: JoinHandle<()>,
}

struct JwksState {
    body: Mutex<String>,
    status: AtomicU16,
    requests: AtomicUsize,
    /// Answers wait while this is false.
    open: watch::Sender<bool>,
}

impl JwksServer {
    async fn start(body: &Value) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        JwksServer::serve(listener, body)
    }

    /// Starts serving on a socket a test reserved earlier (bound, not yet listening).
    fn start_on(socket: TcpSocket, body: &Value) -> JwksServer {
        JwksServer::serve(socket.listen(64).unwrap(), body)
    }

    fn serve(listener: TcpListener, body: &Value) -> JwksServer {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(JwksState {
            body: Mutex::new(body.to_string()),
            status: AtomicU16::new(200),
            requests: AtomicUsize::new(0),
            open: watch::channel(true).0,
        });
        let server = serve_http(listener, {
            let state = state.clone();
            move |_request| answer(state.clone())
        });
        JwksServer {
            addr,
            state,
            server,
        }
    }

    fn set_body(&self, body: &Value) {
        *self.state.body.lock().unwrap() = body.to_string();
    }

    fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }

    /// Requests received so far (answered or held).
    fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Holds answers back (`false`) or lets them go (`true`).
    fn set_open(&self, open: bool) {
        self.state.open.send_replace(open);
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn answer(state: Arc<JwksState>) -> Response<Full<Bytes>> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let mut open = state.open.subscribe();
    let _ = open.wait_for(|open| *open).await;
    let body = state.body.lock().unwrap().clone();
    Response::builder()
        .status(state.status.load(Ordering::SeqCst))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// Configs

/// A proxy with the filter on every route, keys inline: `/` needs a token; `/open` has
/// `allow_missing: true`.
async fn inline_proxy(origin: &Origin) -> Proxy {
    let provider = json!({"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": keys().jwks()});
    let strict = json!({
        "providers": [provider],
        "token_from": [
            {"header": "authorization", "prefix": "Bearer "},
            {"query": "access_token"},
            {"cookie": "session"},
        ],
        "forward_claims": {"sub": "x-user-id", "email": "x-user-email"},
    });
    let mut open = strict.clone();
    open["allow_missing"] = json!(true);
    start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
upstreams:
  origin: {endpoints: ["$origin"]}
filters:
  jwt: {module: "$module", config: $strict}
  jwt-open: {module: "$module", config: $open}
routes:
  - {match: {path_prefix: /open}, upstream: origin, filters: [jwt-open]}
  - {upstream: origin, filters: [jwt]}
"#,
        &[
            ("origin", origin.addr().to_string()),
            ("module", filters::JWT_AUTH.to_string()),
            ("strict", strict.to_string()),
            ("open", open.to_string()),
        ],
    ))
    .await
}

/// A proxy whose filter fetches its keys from `idp` (`refresh` as given): `/` with a shared
/// instance per worker, `/fresh` with a fresh instance per request.
async fn upstream_proxy(origin: &Origin, idp: SocketAddr, refresh: &str) -> Proxy {
    let jwt = json!({
        "providers": [{"issuer": ISSUER, "audiences": [AUDIENCE],
                       "jwks_upstream": {"upstream": "idp", "path": "/.well-known/jwks.json",
                                         "refresh": refresh}}],
        "forward_claims": {"sub": "x-user-id"},
    });
    start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
upstreams:
  origin: {endpoints: ["$origin"]}
  idp: {endpoints: ["$idp"], retries: 0}
filters:
  jwt: {module: "$module", callouts: [idp], config: $jwt}
  jwt-fresh: {module: "$module", callouts: [idp], isolation: request, config: $jwt}
routes:
  - {match: {path_prefix: /fresh}, upstream: origin, filters: [jwt-fresh]}
  - {upstream: origin, filters: [jwt]}
"#,
        &[
            ("origin", origin.addr().to_string()),
            ("idp", idp.to_string()),
            ("module", filters::JWT_AUTH.to_string()),
            ("jwt", jwt.to_string()),
        ],
    ))
    .await
}

// ---------------------------------------------------------------------------------------
// Scenarios: inline keys

#[tokio::test]
async fn tokens_of_every_algorithm_are_accepted_and_claims_forwarded() {
    let origin = Origin::start("origin").await;
    let proxy = inline_proxy(&origin).await;
    let algorithms = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
    ];
    for alg in algorithms {
        let sub = format!("user-{alg:?}");
        for kid in [Some(kid_for(alg)), None] {
            let token = keys().sign(alg, kid, &claims(&sub));
            let answer = get_with_token(&proxy, "/api", &token).await;
            let what = format!("{alg:?} kid {kid:?}");
            assert_eq!(answer.status, 200, "{what}: {}", answer.body);
            assert_eq!(
                answer.origin_header("x-user-id"),
                Some(sub.clone()),
                "{what}"
            );
            assert_eq!(
                answer.origin_header("x-user-email"),
                Some(format!("{sub}@example.com")),
                "{what}"
            );
            assert_eq!(
                answer.origin_header("authorization"),
                Some(format!("Bearer {token}")),
                "{what}: the token goes on to the upstream"
            );
        }
    }
    assert_eq!(origin.hits(), algorithms.len() * 2);
    // Tokens never reach the log.
    let token = token("user-log");
    assert_eq!(get_with_token(&proxy, "/", &token).await.status, 200);
    let signature = token.rsplit('.').next().unwrap();
    assert!(
        !proxy.stderr_lines().iter().any(|l| l.contains(signature)),
        "a token was logged"
    );
}

#[tokio::test]
async fn invalid_tokens_are_rejected_with_the_reason() {
    let origin = Origin::start("origin").await;
    let proxy = inline_proxy(&origin).await;
    let keys = keys();
    let now = now();
    let valid = token("user-1");
    let (signed_part, signature) = valid.rsplit_once('.').unwrap();
    let unsigned = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims("admin").to_string().as_bytes())
    );
    let mut cases: Vec<(String, String, &str)> = vec![
        (
            "expired".into(),
            keys.sign(
                Algorithm::ES256,
                Some("ec256-1"),
                &claims_with(
                    "u",
                    json!({"iat": now - 7200, "nbf": now - 7200, "exp": now - 3600}),
                ),
            ),
            "token expired",
        ),
        (
            "not yet valid".into(),
            keys.sign(
                Algorithm::EdDSA,
                Some("ed-1"),
                &claims_with("u", json!({"nbf": now + 3600, "iat": null})),
            ),
            "token not yet valid",
        ),
        (
            "wrong issuer".into(),
            keys.sign(
                Algorithm::RS256,
                Some("rsa-1"),
                &claims_with("u", json!({"iss": "https://evil.example.com"})),
            ),
            "issuer not accepted",
        ),
        (
            "wrong audience".into(),
            keys.sign(
                Algorithm::HS256,
                Some("hmac-1"),
                &claims_with("u", json!({"aud": ["other-api"]})),
            ),
            "audience not accepted",
        ),
        (
            "no audience".into(),
            keys.sign(
                Algorithm::PS256,
                None,
                &claims_with("u", json!({"aud": null})),
            ),
            "audience not accepted",
        ),
        (
            "signed by another key, same kid".into(),
            attacker_keys().sign(Algorithm::RS256, Some("rsa-1"), &claims("admin")),
            "signature invalid",
        ),
        (
            "signed by another EC key, no kid".into(),
            attacker_keys().sign(Algorithm::ES384, None, &claims("admin")),
            "signature invalid",
        ),
        (
            "claims changed after signing".into(),
            format!(
                "{}.{}.{signature}",
                signed_part.split('.').next().unwrap(),
                b64(claims("admin").to_string().as_bytes())
            ),
            "signature invalid",
        ),
        (
            "unknown kid".into(),
            keys.sign(Algorithm::RS256, Some("rsa-2"), &claims("u")),
            "unknown key id",
        ),
        ("alg none".into(), unsigned, "algorithm not allowed"),
        (
            "RS256 claimed with the EC key's kid".into(),
            keys.sign(Algorithm::RS256, Some("ec256-1"), &claims("u")),
            "algorithm not allowed",
        ),
        (
            "signature dropped".into(),
            format!("{signed_part}."),
            "signature invalid",
        ),
        (
            "no signature part".into(),
            signed_part.to_owned(),
            "malformed token",
        ),
        ("garbage".into(), "not-a-jwt".into(), "malformed token"),
        (
            "three garbage parts".into(),
            "a.b.c".into(),
            "malformed token",
        ),
    ];
    // The classic confusion attack: HS256 "signed" with the RSA public key (PEM or DER) as
    // the HMAC secret, naming the RSA key.
    for (form, secret) in [
        ("PEM", keys.rsa_public_pem().into_bytes()),
        ("DER", keys.rsa_public_der()),
    ] {
        let forged = encode(
            Algorithm::HS256,
            Some("rsa-1"),
            &claims("admin"),
            &EncodingKey::from_secret(&secret),
        );
        cases.push((
            format!("HS256 with the RSA public key {form}"),
            forged,
            "algorithm not allowed",
        ));
    }
    for (what, token, reason) in &cases {
        get_with_token(&proxy, "/api", token)
            .await
            .assert_invalid(reason, what);
    }
    // Without a kid the HS256 forgery is checked against the HMAC key: still refused.
    let forged = encode(
        Algorithm::HS256,
        None,
        &claims("admin"),
        &EncodingKey::from_secret(keys.rsa_public_pem().as_bytes()),
    );
    get_with_token(&proxy, "/api", &forged)
        .await
        .assert_invalid("signature invalid", "HS256 with the RSA PEM, no kid");
    // A truncated token: refused, whatever the reason.
    let truncated = &valid[..valid.len() - 7];
    let answer = get_with_token(&proxy, "/api", truncated).await;
    assert_eq!(answer.status, 401, "{}", answer.body);
    assert!(answer
        .www_authenticate
        .unwrap()
        .starts_with(r#"Bearer error="invalid_token""#));
    // With allow_missing, a token that is there must still be valid.
    get_with_token(&proxy, "/open", &forged)
        .await
        .assert_invalid("signature invalid", "allow_missing with a bad token");
    assert_eq!(origin.hits(), 0, "no rejected request reached the origin");
}

#[tokio::test]
async fn a_request_without_a_token_is_challenged() {
    let origin = Origin::start("origin").await;
    let proxy = inline_proxy(&origin).await;
    for headers in [
        vec![],
        vec![("authorization", "Basic dXNlcjpwYXNz")],
        vec![("authorization", "Bearer ")],
        vec![("cookie", "other=1")],
    ] {
        let answer = get(&proxy, "/api?other=1", &headers).await;
        assert_eq!(answer.status, 401, "{headers:?}: {}", answer.body);
        assert_eq!(
            answer.www_authenticate.as_deref(),
            Some("Bearer"),
            "{headers:?}"
        );
        assert_eq!(answer.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            answer.json(),
            json!({"error": "missing_token"}),
            "{headers:?}"
        );
    }
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn spoofed_claim_headers_are_stripped() {
    let origin = Origin::start("origin").await;
    let proxy = inline_proxy(&origin).await;
    let bearer = format!("Bearer {}", token("user-7"));
    let spoofs = [("x-user-id", "admin"), ("x-user-email", "root@example.com")];
    let answer = get(
        &proxy,
        "/api",
        &[&[("authorization", bearer.as_str())][..], &spoofs].concat(),
    )
    .await;
    assert_eq!(answer.origin_header("x-user-id").as_deref(), Some("user-7"));
    assert_eq!(
        answer.origin_header("x-user-email").as_deref(),
        Some("user-7@example.com")
    );
    // A token without the email claim: the client's copy is gone, no header at all.
    let no_email = keys().sign(
        Algorithm::ES256,
        None,
        &claims_with("user-8", json!({"email": null})),
    );
    let bearer = format!("Bearer {no_email}");
    let answer = get(
        &proxy,
        "/api",
        &[&[("authorization", bearer.as_str())][..], &spoofs].concat(),
    )
    .await;
    assert_eq!(answer.origin_header("x-user-id").as_deref(), Some("user-8"));
    assert_eq!(answer.origin_header("x-user-email"), None);
    // allow_missing lets a request without a token through, without the spoofed headers.
    let answer = get(&proxy, "/open", &spoofs).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.origin_header("x-user-id"), None);
    assert_eq!(answer.origin_header("x-user-email"), None);
    // ... and with a valid token it forwards the claims.
    let answer = get_with_token(&proxy, "/open", &token("user-9")).await;
    assert_eq!(answer.origin_header("x-user-id").as_deref(), Some("user-9"));
    // A copy that is not UTF-8 is removed as well.
    let response = client::http1()
        .get(proxy.url("/open"))
        .header(
            "x-user-id",
            reqwest::header::HeaderValue::from_bytes(b"adm\xefn").unwrap(),
        )
        .send()
        .await
        .expect("request through the proxy");
    assert_eq!(response.status(), 200);
    let echoed: Value = response.json().await.expect("the origin's echo");
    assert_eq!(echoed["headers"].get("x-user-id"), None, "{echoed}");
}

#[tokio::test]
async fn the_token_may_come_from_the_query_or_a_cookie() {
    let origin = Origin::start("origin").await;
    let proxy = inline_proxy(&origin).await;
    let from_query = token("query-user");
    let answer = get(&proxy, &format!("/api?x=1&access_token={from_query}"), &[]).await;
    assert_eq!(
        answer.origin_header("x-user-id").as_deref(),
        Some("query-user")
    );
    let from_cookie = keys().sign(Algorithm::EdDSA, Some("ed-1"), &claims("cookie-user"));
    let cookie = format!("theme=dark; session={from_cookie}; lang=en");
    let answer = get(&proxy, "/api", &[("cookie", &cookie)]).await;
    assert_eq!(
        answer.origin_header("x-user-id").as_deref(),
        Some("cookie-user")
    );
    // The header comes first: a bad header token is not saved by a good cookie.
    let bad = attacker_keys().sign(Algorithm::RS256, Some("rsa-1"), &claims("admin"));
    let bearer = format!("Bearer {bad}");
    get(
        &proxy,
        "/api",
        &[("authorization", &bearer), ("cookie", &cookie)],
    )
    .await
    .assert_invalid("signature invalid", "header before cookie");
    // An invalid query token is rejected like any other.
    get(&proxy, &format!("/api?access_token={bad}"), &[])
        .await
        .assert_invalid("signature invalid", "query");
}

#[tokio::test]
async fn a_token_from_the_cache_of_verified_tokens_still_expires() {
    let origin = Origin::start("origin").await;
    let jwt = json!({
        "providers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": keys().jwks()}],
        "forward_claims": {"sub": "x-user-id"},
        "clock_skew": 0,
        "token_cache": 10,
    });
    // One worker, so one instance: the token's later requests meet the cache it entered.
    let proxy = start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
workers: 1
upstreams:
  origin: {endpoints: ["$origin"]}
filters:
  jwt: {module: "$module", config: $jwt}
routes: [{upstream: origin, filters: [jwt]}]
"#,
        &[
            ("origin", origin.addr().to_string()),
            ("module", filters::JWT_AUTH.to_string()),
            ("jwt", jwt.to_string()),
        ],
    ))
    .await;
    // A first request readies the instance, so that the short-lived token's two requests
    // below take milliseconds, well inside its lifetime of 2 to 3 s.
    assert_eq!(
        get_with_token(&proxy, "/", &token("warm-up")).await.status,
        200
    );

    let exp = now() + 3;
    let short_lived = keys().sign(
        Algorithm::ES256,
        Some("ec256-1"),
        &claims_with("short-lived", json!({"exp": exp})),
    );
    for what in ["validated", "from the cache"] {
        let answer = get_with_token(&proxy, "/", &short_lived).await;
        assert_eq!(
            answer.origin_header("x-user-id").as_deref(),
            Some("short-lived"),
            "{what}"
        );
    }
    // Past `exp` (the clock skew is 0), the cached token is refused like any expired one.
    let expires = UNIX_EPOCH + Duration::from_secs(u64::try_from(exp).unwrap());
    if let Ok(left) = expires.duration_since(SystemTime::now()) {
        tokio::time::sleep(left + Duration::from_millis(100)).await;
    }
    get_with_token(&proxy, "/", &short_lived)
        .await
        .assert_invalid("token expired", "a cached token past its exp");
    assert_eq!(origin.hits(), 3);
}

// ---------------------------------------------------------------------------------------
// Scenarios: keys from a JWKS upstream

#[tokio::test]
async fn jwks_from_an_upstream_is_fetched_refreshed_and_kept_when_the_upstream_fails() {
    let origin = Origin::start("origin").await;
    let keys = keys();
    let rsa_only = json!({"keys": [keys.rsa_jwk("a1")]});
    let idp = JwksServer::start(&rsa_only).await;
    let proxy = upstream_proxy(&origin, idp.addr, "1s").await;
    let old_token = keys.sign(Algorithm::RS256, Some("a1"), &claims("old-key-user"));
    let new_token = keys.sign(Algorithm::ES256, Some("b1"), &claims("new-key-user"));

    // Fetched: the first request may wait for it, but is served.
    let answer = get_with_token(&proxy, "/api", &old_token).await;
    assert_eq!(
        answer.origin_header("x-user-id").as_deref(),
        Some("old-key-user")
    );
    assert!(idp.requests() >= 1);
    wait_for_log(&proxy, "fetched the JWKS of https://issuer.example.com").await;
    // A fresh instance per request finds it in shared data.
    let answer = get_with_token(&proxy, "/fresh", &old_token).await;
    assert_eq!(
        answer.origin_header("x-user-id").as_deref(),
        Some("old-key-user")
    );
    get_with_token(&proxy, "/api", &new_token)
        .await
        .assert_invalid("unknown key id", "before the rotation");

    // Rotated: the new key is accepted after a refresh, the old one refused. Each worker's
    // instance refreshes on its own schedule (within `refresh` of each other), so wait until
    // several requests in a row, over new connections and so any worker, agree.
    idp.set_body(&json!({"keys": [keys.p256_jwk("b1")]}));
    eventually(
        "every instance to accept the new key and refuse the old",
        || async {
            for _ in 0..6 {
                let new = get_with_token(&proxy, "/api", &new_token).await;
                let old = get_with_token(&proxy, "/api", &old_token).await;
                if new.status != 200 || old.status != 401 {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    get_with_token(&proxy, "/api", &old_token)
        .await
        .assert_invalid("unknown key id", "after the rotation");

    // The upstream answers 500: refreshes fail, the last good keys stay.
    idp.set_status(500);
    let seen = idp.requests();
    eventually("two failed refreshes", || async {
        (idp.requests() >= seen + 2).then_some(())
    })
    .await;
    wait_for_log(&proxy, "failed (status 500)").await;
    let answer = get_with_token(&proxy, "/api", &new_token).await;
    assert_eq!(
        answer.origin_header("x-user-id").as_deref(),
        Some("new-key-user")
    );

    // It serves garbage: same.
    idp.set_status(200);
    idp.set_body(&json!({"not": "a jwks"}));
    let seen = idp.requests();
    eventually("two more refreshes", || async {
        (idp.requests() >= seen + 2).then_some(())
    })
    .await;
    wait_for_log(&proxy, "a JWKS must be an object").await;
    assert_eq!(get_with_token(&proxy, "/api", &new_token).await.status, 200);

    // It is gone altogether: same.
    drop(idp);
    wait_for_log(&proxy, "failed (the callout failed)").await;
    let answer = get_with_token(&proxy, "/api", &new_token).await;
    assert_eq!(
        answer.origin_header("x-user-id").as_deref(),
        Some("new-key-user")
    );
    get_with_token(&proxy, "/api", &old_token)
        .await
        .assert_invalid("unknown key id", "with the upstream down");
    assert!(!proxy
        .stderr_lines()
        .iter()
        .any(|l| l.contains(new_token.rsplit('.').next().unwrap())));
}

#[tokio::test]
async fn instances_per_request_refresh_their_keys_too() {
    // Only `isolation: request`: no instance lives long enough to tick.
    let origin = Origin::start("origin").await;
    let keys = keys();
    let idp = JwksServer::start(&json!({"keys": [keys.rsa_jwk("a1")]})).await;
    let jwt = json!({
        "providers": [{"issuer": ISSUER, "jwks_upstream": {"upstream": "idp", "refresh": "1s"}}],
        "forward_claims": {"sub": "x-user-id"},
    });
    let proxy = start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
upstreams:
  origin: {endpoints: ["$origin"]}
  idp: {endpoints: ["$idp"]}
filters:
  jwt: {module: "$module", callouts: [idp], isolation: request, config: $jwt}
routes: [{upstream: origin, filters: [jwt]}]
"#,
        &[
            ("origin", origin.addr().to_string()),
            ("idp", idp.addr.to_string()),
            ("module", filters::JWT_AUTH.to_string()),
            ("jwt", jwt.to_string()),
        ],
    ))
    .await;
    let old_token = keys.sign(Algorithm::RS256, Some("a1"), &claims("old-key-user"));
    let answer = get_with_token(&proxy, "/", &old_token).await;
    assert_eq!(
        answer.origin_header("x-user-id").as_deref(),
        Some("old-key-user")
    );
    idp.set_body(&json!({"keys": [keys.ed25519_jwk("b1")]}));
    let new_token = keys.sign(Algorithm::EdDSA, Some("b1"), &claims("new-key-user"));
    let answer = eventually("a token of the new key to be accepted", || async {
        let answer = get_with_token(&proxy, "/", &new_token).await;
        (answer.status == 200).then_some(answer)
    })
    .await;
    assert_eq!(
        answer.origin_header("x-user-id").as_deref(),
        Some("new-key-user")
    );
}

#[tokio::test]
async fn requests_wait_for_the_first_jwks_and_are_then_decided() {
    let origin = Origin::start("origin").await;
    let keys = keys();
    let idp = JwksServer::start(&json!({"keys": [keys.ed25519_jwk("e1")]})).await;
    idp.set_open(false);
    let proxy = upstream_proxy(&origin, idp.addr, "300s").await;
    let good = keys.sign(Algorithm::EdDSA, Some("e1"), &claims("waiting-user"));
    let forged = attacker_keys().sign(Algorithm::EdDSA, Some("e1"), &claims("admin"));

    let spawn = |token: String, spoof: bool| {
        let url = proxy.url("/api");
        tokio::spawn(async move {
            let bearer = format!("Bearer {token}");
            let mut headers = vec![("authorization", bearer.as_str())];
            if spoof {
                headers.push(("x-user-id", "admin"));
            }
            get_url(url, &headers).await
        })
    };
    let waiting_good = spawn(good.clone(), true);
    let waiting_forged = spawn(forged, false);
    eventually("the JWKS fetch", || async {
        (idp.requests() >= 1).then_some(())
    })
    .await;
    // The keys are held back, so the requests can only be waiting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting_good.is_finished() && !waiting_forged.is_finished());
    assert_eq!(origin.hits(), 0);

    idp.set_open(true);
    let answer = waiting_good.await.unwrap();
    assert_eq!(
        answer.origin_header("x-user-id").as_deref(),
        Some("waiting-user")
    );
    waiting_forged
        .await
        .unwrap()
        .assert_invalid("signature invalid", "a forged token that waited");
    assert_eq!(origin.hits(), 1);
    // Later requests need no waiting.
    assert_eq!(get_with_token(&proxy, "/api", &good).await.status, 200);
}

#[tokio::test]
async fn without_any_jwks_requests_get_503_until_a_fetch_succeeds() {
    let origin = Origin::start("origin").await;
    let keys = keys();
    // A port of our own where nothing listens yet: every fetch is refused.
    let reserved = TcpSocket::new_v4().unwrap();
    reserved.bind(([127, 0, 0, 1], 0).into()).unwrap();
    let idp_addr = reserved.local_addr().unwrap();
    let proxy = upstream_proxy(&origin, idp_addr, "300s").await;
    let good = keys.sign(Algorithm::PS256, None, &claims("late-user"));
    let answer = get_with_token(&proxy, "/api", &good).await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(answer.content_type.as_deref(), Some("application/json"));
    assert_eq!(answer.json(), json!({"error": "jwks_unavailable"}));
    // A token of an issuer that is not configured is still just invalid.
    let stranger = keys.sign(
        Algorithm::PS256,
        None,
        &claims_with("u", json!({"iss": "https://other.example.com"})),
    );
    get_with_token(&proxy, "/api", &stranger)
        .await
        .assert_invalid("issuer not accepted", "unknown issuer");
    assert_eq!(origin.hits(), 0);

    // The identity provider comes up: the retries (1 s, 2 s, 4 s, ...) find it.
    let _idp = JwksServer::start_on(reserved, &json!({"keys": [keys.rsa_jwk("r1")]}));
    let answer = eventually("the JWKS to be fetched", || async {
        let answer = get_with_token(&proxy, "/api", &good).await;
        (answer.status != 503).then_some(answer)
    })
    .await;
    assert_eq!(
        answer.origin_header("x-user-id").as_deref(),
        Some("late-user")
    );
}

#[test]
fn a_jwks_upstream_missing_from_callouts_fails_the_configuration() {
    crate::support::use_built_binary();
    let jwt = json!({
        "providers": [{"issuer": ISSUER, "jwks_upstream": {"upstream": "idp"}}],
    });
    let yaml = config(
        r#"
listeners: [{address: "127.0.0.1:1"}]
upstreams:
  origin: {builtin: echo}
  idp: {builtin: echo}
filters:
  jwt: {module: "$module", config: $jwt}
routes: [{upstream: origin, filters: [jwt]}]
"#,
        &[
            ("module", filters::JWT_AUTH.to_string()),
            ("jwt", jwt.to_string()),
        ],
    );
    let stderr = refused_by_validate(&yaml);
    assert!(
        stderr.contains("on_configure returned false")
            && stderr.contains("filter `jwt`")
            && stderr.contains("the filter's `callouts` must list it"),
        "{stderr}"
    );
}
