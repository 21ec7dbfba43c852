//! Property-based tests of token handling, from the raw token to the decision (`State::decide`
//! with inline keys of every type): whatever a client sends (any text, base64url segments of
//! anything, well-formed headers with any claims, huge numbers, deep nesting), nothing panics
//! and nothing is accepted unless validly signed. Tokens signed with the test keys are
//! accepted, and any change to their bytes, their claims or their algorithm is rejected. Key
//! sets of arbitrary keys, and token extraction from arbitrary requests, never panic either.
//! `cargo test` runs a few cases of each property; `make fuzz` runs many (`PROPTEST_CASES`).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde_json::{json, Map, Value};

use crate::config::{Config, TokenSource};
use crate::jwk;
use crate::jwt::{self, Algorithm, KeyKind, MAX_TOKEN_BYTES};
use crate::response::header_value;
use crate::state::{Decision, SharedStore, State};
use crate::test_keys::{self, sign};
use crate::validate::validate;

/// Cases per property when `PROPTEST_CASES` does not say: few, as `cargo test` runs them.
const DEFAULT_CASES: u32 = 64;

fn proptest_config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = DEFAULT_CASES;
    }
    // A failure prints its shrunk input; no regression files are written into the tree.
    config.failure_persistence = None;
    config
}

const ISSUER: &str = "https://fuzz.example";
const NOW_MS: u64 = 1_700_000_000_000;
const NOW: u64 = NOW_MS / 1000;

/// No shared data: the keys are inline.
struct Nothing;

impl SharedStore for Nothing {
    fn get(&self, _: &str) -> Option<Vec<u8>> {
        None
    }
    fn set(&self, _: &str, _: &[u8]) {}
}

/// The test keys of every type, by `kid`.
fn jwks() -> Value {
    let keys = test_keys::get();
    json!({"keys": [
        keys.rsa_jwk("rsa", None),
        keys.p256_jwk("p256", None),
        keys.p384_jwk("p384", None),
        keys.ed25519_jwk("ed", None),
        keys.hmac_jwk("hmac", None),
    ]})
}

/// A filter whose one provider has every test key, forwarding some claims.
fn state() -> State {
    // Written once: the EC public keys cost a point multiplication each (in a debug build).
    static CONFIG: OnceLock<String> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        json!({
            "providers": [{"issuer": ISSUER, "jwks": jwks()}],
            "forward_claims": {
                "sub": "x-user-id", "email": "x-email", "nested": "x-nested", "n": "x-n"
            },
        })
        .to_string()
    });
    let config = Config::parse(config.as_bytes()).expect("the configuration");
    State::new(config, NOW_MS, &Nothing)
}

fn kid_of(alg: Algorithm) -> &'static str {
    match alg.key_kind() {
        KeyKind::Hmac => "hmac",
        KeyKind::Rsa => "rsa",
        KeyKind::P256 => "p256",
        KeyKind::P384 => "p384",
        KeyKind::Ed25519 => "ed",
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// What the filter (one instance, serving every case of a test thread, as an instance serves
/// request after request) decides on `token`.
fn decide(token: &str) -> Decision {
    thread_local! {
        static FILTER: std::cell::RefCell<State> = std::cell::RefCell::new(state());
    }
    FILTER.with(|filter| filter.borrow_mut().decide(token, NOW_MS, &Nothing))
}

/// `alg` values that are no algorithm the filter verifies.
const NOT_ALGORITHMS: &[&str] = &["none", "None", "hs256", "ES512", ""];
/// The test keys' `kid`s, and one no key has.
const KIDS: &[&str] = &["rsa", "p256", "p384", "ed", "hmac", "other"];
/// Where the filter looks for tokens, and a header name in capitals.
const SOURCES: &[&str] = &[
    ":path",
    "authorization",
    "cookie",
    "x-token",
    "Authorization",
];

/// Random bytes of one of `sizes`.
fn bytes_of(sizes: Vec<usize>) -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(sizes).prop_flat_map(|n| prop::collection::vec(any::<u8>(), n))
}

/// Whether `decision` lets the request through.
fn accepted(decision: &Decision) -> bool {
    matches!(decision, Decision::Accept { .. })
}

// ---------------------------------------------------------------------------------------------
// Claims and tokens
// ---------------------------------------------------------------------------------------------

/// Numbers at the edges of what JSON and f64 hold.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop::sample::select(&[f64::MAX, f64::MIN, f64::MIN_POSITIVE, 5e-324, 1e300, -0.0][..])
            .prop_map(Value::from),
    ]
}

/// Any JSON value, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        any::<String>().prop_map(Value::String),
        "[a-z@.]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-z]{0,4}", inner), 0..4)
                .prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    })
}

/// Claims any client may send: the issuer (mostly), and any values of claims the filter
/// reads (`exp`, `nbf`, `iat`, `aud`, forwarded ones) and others.
fn any_claims() -> impl Strategy<Value = Map<String, Value>> {
    (
        prop_oneof![4 => Just(json!(ISSUER)), 1 => json_value()],
        prop::collection::vec(
            (
                prop::sample::select(
                    &[
                        "sub", "email", "nested", "n", "exp", "nbf", "iat", "aud", "jti", "x",
                    ][..],
                ),
                json_value(),
            ),
            0..6,
        ),
    )
        .prop_map(|(iss, members)| {
            let mut claims = Map::new();
            claims.insert("iss".into(), iss);
            for (name, value) in members {
                claims.insert(name.into(), value);
            }
            claims
        })
}

/// Claims of a token that is valid at [`NOW`]: the issuer, time claims that hold (or none),
/// and any other claims.
fn valid_claims() -> impl Strategy<Value = Map<String, Value>> {
    (
        prop::option::of(prop_oneof![
            (NOW + 1..NOW + 10_000_000).prop_map(Value::from),
            Just(json!(1e300)),
            Just(json!(u64::MAX)),
        ]),
        prop::option::of((0..NOW).prop_map(Value::from)),
        prop::collection::vec(
            (
                prop::sample::select(&["sub", "email", "nested", "n", "jti", "x"][..]),
                json_value(),
            ),
            0..5,
        ),
    )
        .prop_map(|(exp, iat, members)| {
            let mut claims = Map::new();
            claims.insert("iss".into(), json!(ISSUER));
            if let Some(exp) = exp {
                claims.insert("exp".into(), exp);
            }
            if let Some(iat) = iat {
                claims.insert("iat".into(), iat.clone());
                claims.insert("nbf".into(), iat);
            }
            for (name, value) in members {
                claims.insert(name.into(), value);
            }
            claims
        })
}

/// The claims RSA and EC tokens are signed with: their signatures cost too much (in a debug
/// build) to make one per case, so each (algorithm, kid) is signed once.
fn fixed_claims() -> Value {
    json!({"iss": ISSUER, "sub": "fuzz", "exp": NOW + 3600, "nested": {"a": [1, 2.5, null]}})
}

/// A token signed with the test key for `alg`: with `claims` when signing is cheap (HMAC,
/// EdDSA), else with [`fixed_claims`], signed once.
fn signed(alg: Algorithm, with_kid: bool, claims: &Map<String, Value>) -> String {
    let kid = with_kid.then(|| kid_of(alg));
    if matches!(alg.key_kind(), KeyKind::Hmac | KeyKind::Ed25519) {
        return sign(alg, kid, &Value::Object(claims.clone()));
    }
    static SIGNED: OnceLock<Mutex<HashMap<(&'static str, bool), String>>> = OnceLock::new();
    let mut signed = SIGNED
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    signed
        .entry((alg.name(), with_kid))
        .or_insert_with(|| sign(alg, kid, &fixed_claims()))
        .clone()
}

/// Claims that only name the issuer.
fn issuer_only() -> Map<String, Value> {
    let mut claims = Map::new();
    claims.insert("iss".into(), json!(ISSUER));
    claims
}

fn algorithm() -> impl Strategy<Value = Algorithm> {
    prop::sample::select(Algorithm::ALL.to_vec())
}

/// A change to a token's text.
#[derive(Debug, Clone)]
enum Edit {
    Replace(prop::sample::Index, char),
    Insert(prop::sample::Index, char),
    Delete(prop::sample::Index),
    Truncate(prop::sample::Index),
    Swap(prop::sample::Index, prop::sample::Index),
    FlipCase(prop::sample::Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    let character = prop_oneof![
        4 => prop::sample::select(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
                .chars()
                .collect::<Vec<_>>()
        ),
        1 => prop::sample::select(vec!['.', '=', '+', '/', ' ', '\t', '\0', 'é', '\u{feff}']),
    ];
    let index = any::<prop::sample::Index>;
    prop_oneof![
        3 => (index(), character.clone()).prop_map(|(at, c)| Edit::Replace(at, c)),
        2 => (index(), character).prop_map(|(at, c)| Edit::Insert(at, c)),
        2 => index().prop_map(Edit::Delete),
        1 => index().prop_map(Edit::Truncate),
        1 => (index(), index()).prop_map(|(a, b)| Edit::Swap(a, b)),
        1 => index().prop_map(Edit::FlipCase),
    ]
}

fn apply(token: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = token.chars().collect();
    for edit in edits {
        let len = chars.len().max(1);
        match edit {
            Edit::Replace(at, c) if !chars.is_empty() => chars[at.index(len)] = *c,
            Edit::Insert(at, c) => chars.insert(at.index(chars.len() + 1), *c),
            Edit::Delete(at) if !chars.is_empty() => {
                chars.remove(at.index(len));
            }
            Edit::Truncate(at) => chars.truncate(at.index(len)),
            Edit::Swap(a, b) if !chars.is_empty() => chars.swap(a.index(len), b.index(len)),
            Edit::FlipCase(at) if !chars.is_empty() => {
                let c = &mut chars[at.index(len)];
                *c = if c.is_ascii_lowercase() {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                };
            }
            _ => {}
        }
    }
    chars.into_iter().collect()
}

/// A token's three parts, decoded (header and claims as JSON).
fn parts(token: &str) -> (Value, Value, String) {
    let mut parts = token.split('.');
    let mut json = || -> Value {
        let bytes = URL_SAFE_NO_PAD
            .decode(parts.next().unwrap_or_default())
            .unwrap_or_default();
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    let (header, claims) = (json(), json());
    (header, claims, parts.next().unwrap_or_default().to_owned())
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(proptest_config())]

    /// Any text, and text of the token alphabet, is rejected without panic.
    #[test]
    fn any_text_is_rejected(
        text in prop_oneof![any::<String>(), "[A-Za-z0-9_.=-]{0,400}"],
    ) {
        let _ = jwt::parse(&text);
        let decision = decide(&text);
        prop_assert!(matches!(decision, Decision::Reject(_)), "{:?}", decision);
    }

    /// Dot-separated base64url segments of anything (bytes, JSON of any shape, text) are
    /// rejected without panic.
    #[test]
    fn base64url_segments_of_anything_are_rejected(
        segments in prop::collection::vec(
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..80).prop_map(|bytes| b64(&bytes)),
                json_value().prop_map(|value| b64(value.to_string().as_bytes())),
                any_claims().prop_map(|claims| b64(Value::Object(claims).to_string().as_bytes())),
                "[A-Za-z0-9_-]{0,40}",
            ],
            0..6,
        ),
    ) {
        let token = segments.join(".");
        let decision = decide(&token);
        prop_assert!(matches!(decision, Decision::Reject(_)), "{:?} for {}", decision, token);
    }

    /// Well-formed headers (any algorithm name, any `kid`, `crit` or not) with any claims
    /// and a signature of random bytes are rejected.
    #[test]
    fn forged_signatures_are_rejected(
        alg in prop_oneof![
            4 => algorithm().prop_map(|alg| json!(alg.name())),
            1 => prop::sample::select(NOT_ALGORITHMS).prop_map(|n| json!(n)),
            1 => json_value(),
        ],
        kid in prop::option::of(prop_oneof![
            prop::sample::select(KIDS).prop_map(|k| json!(k)),
            json_value(),
        ]),
        crit in any::<bool>(),
        claims in any_claims(),
        signature in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..600),
            bytes_of(vec![32, 48, 64, 96, 256]),
        ],
    ) {
        let mut header = json!({"alg": alg, "typ": "JWT"});
        if let Some(kid) = kid {
            header["kid"] = kid;
        }
        if crit {
            header["crit"] = json!(["exp"]);
        }
        let token = format!(
            "{}.{}.{}",
            b64(header.to_string().as_bytes()),
            b64(Value::Object(claims).to_string().as_bytes()),
            b64(&signature)
        );
        let decision = decide(&token);
        prop_assert!(matches!(decision, Decision::Reject(_)), "{:?} for {}", decision, token);
    }

    /// A payload nested deeper than any parser should follow, up to the longest token, is
    /// rejected without exhausting the stack.
    #[test]
    fn deep_nesting_is_rejected(
        depth in 1usize..12_000,
        open in prop::sample::select(vec!["[", "{\"a\":"]),
    ) {
        let payload = open.repeat(depth);
        let header = b64(br#"{"alg":"HS256"}"#);
        let token = format!("{header}.{}.{}", b64(payload.as_bytes()), b64(b"sig"));
        let decision = decide(&token);
        prop_assert!(matches!(decision, Decision::Reject(_)));
        if token.len() > MAX_TOKEN_BYTES {
            prop_assert_eq!(decision, Decision::Reject(crate::Rejection::Malformed));
        }
    }

    /// A token signed with a test key is accepted (and again, from the cache of verified
    /// tokens), its forwarded claims as header values; any edit of its text is rejected.
    #[test]
    fn signed_tokens_are_accepted_and_any_edit_is_rejected(
        alg in algorithm(),
        with_kid in any::<bool>(),
        claims in valid_claims(),
        edits in prop::collection::vec(edit(), 1..4),
    ) {
        let token = signed(alg, with_kid, &claims);
        let edited = apply(&token, &edits);
        prop_assume!(edited != token);
        let decision = decide(&token);
        let Decision::Accept { headers } = &decision else {
            return Err(TestCaseError::fail(format!("{decision:?} for {token}")));
        };
        for (_, value) in headers {
            prop_assert!(!value.chars().any(|c| c.is_ascii_control() && c != '\t'), "{:?}", value);
        }
        let rejected = decide(&edited);
        prop_assert!(!accepted(&rejected), "{} was accepted, edited from {}", edited, token);
        prop_assert!(accepted(&decide(&token)));
    }

    /// A signed token whose claims are changed (a claim edited, added or removed, or only
    /// re-encoded with other whitespace) or whose header names another algorithm or key,
    /// with the signature kept, is rejected.
    #[test]
    fn tampered_claims_and_headers_are_rejected(
        alg in algorithm(),
        shift in 1usize..Algorithm::ALL.len(),
        claims in valid_claims(),
        tamper in 0u8..5,
        value in json_value(),
    ) {
        let token = signed(alg, true, &claims);
        let (mut header, mut payload, signature) = parts(&token);
        // Another algorithm, and another key's kid.
        let at = Algorithm::ALL.iter().position(|a| *a == alg).unwrap_or_default();
        let other = Algorithm::ALL[(at + shift) % Algorithm::ALL.len()];
        let other_kid = KIDS.iter().find(|kid| **kid != kid_of(alg)).copied();
        let mut payload_text = None;
        match tamper {
            // A changed claim (wrapped when it happens to be the same).
            0 => {
                let same = payload.get("sub") == Some(&value);
                payload["sub"] = if same { json!([value]) } else { value };
            }
            1 => payload["x-added"] = value,
            // Claims that may be the same, written with other whitespace.
            2 => {
                if let Some(claims) = payload.as_object_mut() {
                    claims.remove("exp");
                    claims.insert("n".into(), value);
                }
                payload_text = Some(format!(" {payload}"));
            }
            3 => header["alg"] = json!(other.name()),
            _ => header["kid"] = json!(other_kid),
        }
        let payload_text = payload_text.unwrap_or_else(|| payload.to_string());
        let forged = format!(
            "{}.{}.{signature}",
            b64(header.to_string().as_bytes()),
            b64(payload_text.as_bytes()),
        );
        prop_assert_ne!(&forged, &token);
        let decision = decide(&forged);
        prop_assert!(!accepted(&decision), "{} accepted ({:?})", forged, decision);
    }

    /// Key sets of arbitrary keys parse (usable keys kept, the others skipped) without panic,
    /// and none of their keys verifies a token signed with the test keys, nor a forged one.
    #[test]
    fn arbitrary_keys_verify_nothing(
        keys in prop::collection::vec(arbitrary_jwk(), 0..4),
        alg in algorithm(),
        signature in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let set = json!({"keys": keys});
        let Ok(parsed) = jwk::parse(&set) else {
            return Err(TestCaseError::fail("a keys array is a key set"));
        };
        let signed_token = signed(alg, false, &issuer_only());
        let signing_input = &signed_token[..signed_token.rfind('.').unwrap_or(0)];
        let forged = format!("{signing_input}.{}", b64(&signature));
        for token in [signed_token.as_str(), forged.as_str()] {
            if let Ok(parsed_token) = jwt::parse(token) {
                let now = NOW as f64;
                let verdict = validate(&parsed_token, &parsed.keys, &[], Duration::ZERO, now);
                prop_assert!(verdict.is_err(), "{} verified by {}", token, set);
            }
        }
        let _ = jwk::parse_bytes(set.to_string().as_bytes());
    }

    /// Token sources find a trimmed, non-empty token or none, whatever the request holds.
    #[test]
    fn extraction_finds_a_token_or_none(
        headers in prop::collection::vec(
            (
                prop::sample::select(SOURCES),
                prop_oneof![
                    any::<String>(),
                    "(Bearer|bearer|BEARER)?[ \t]{0,2}[A-Za-z0-9._%=;? -]{0,20}",
                    "/[a-z]{0,3}\\?([a-z_%0-9]{0,6}=?[A-Za-z0-9%._-]{0,8}&?){0,3}",
                ],
            ),
            0..5,
        ),
    ) {
        let sources = [
            TokenSource::Header { name: "authorization".into(), prefix: "Bearer ".into() },
            TokenSource::Header { name: "x-token".into(), prefix: String::new() },
            TokenSource::Query("access_token".into()),
            TokenSource::Cookie("session".into()),
        ];
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        if let Some(token) = crate::extract::find_token(&sources, &headers) {
            prop_assert!(!token.is_empty());
        }
        for (_, value) in &headers {
            let _ = crate::extract::query(value, "access_token");
            let _ = crate::extract::cookie(value, "session");
        }
    }

    /// A claim becomes a header value only without control characters (tabs allowed).
    #[test]
    fn claims_become_header_values_or_nothing(claim in json_value()) {
        if let Some(value) = header_value(&claim) {
            prop_assert!(!value.chars().any(|c| c.is_ascii_control() && c != '\t'));
        }
    }
}

/// A JWK of any type with members of the right shape or not: random coordinates, moduli and
/// exponents of the sizes the types use, random `alg`, `use` and `kid`.
fn arbitrary_jwk() -> impl Strategy<Value = Value> {
    let bytes = |sizes: Vec<usize>| bytes_of(sizes).prop_map(|bytes| json!(b64(&bytes)));
    let member = prop_oneof![
        (
            Just("kty"),
            prop::sample::select(&["RSA", "EC", "OKP", "oct", "rsa", ""][..])
                .prop_map(|k| json!(k))
        ),
        (
            Just("crv"),
            prop::sample::select(&["P-256", "P-384", "Ed25519", "X25519", "P-521"][..])
                .prop_map(|c| json!(c))
        ),
        (Just("x"), bytes(vec![0, 31, 32, 33, 48])),
        (Just("y"), bytes(vec![0, 32, 48])),
        (Just("n"), bytes(vec![1, 255, 256, 257, 384, 1025])),
        (
            Just("e"),
            prop_oneof![bytes(vec![0, 1, 3, 5, 9]), Just(json!("AQAB"))]
        ),
        (Just("k"), bytes(vec![0, 1, 32, 200])),
        (
            Just("alg"),
            prop_oneof![
                algorithm().prop_map(|a| json!(a.name())),
                Just(json!("none")),
                Just(json!(5))
            ]
        ),
        (
            Just("use"),
            prop::sample::select(&["sig", "enc"][..]).prop_map(|u| json!(u))
        ),
        (
            Just("kid"),
            prop_oneof![Just(json!("rsa")), Just(json!("hmac")), Just(json!(null))]
        ),
    ];
    (
        prop::sample::select(&["RSA", "EC", "OKP", "oct"][..]),
        prop::collection::vec(member, 0..8),
    )
        .prop_map(|(kty, members)| {
            let mut key = Map::new();
            key.insert("kty".into(), json!(kty));
            for (name, value) in members {
                key.insert(name.into(), value);
            }
            Value::Object(key)
        })
}

#[test]
fn the_test_keys_sign_tokens_the_filter_accepts() {
    // A smoke test of the harness: each algorithm, with and without a kid.
    for alg in Algorithm::ALL {
        for with_kid in [false, true] {
            let token = signed(alg, with_kid, &issuer_only());
            let decision = decide(&token);
            assert!(accepted(&decision), "{}: {decision:?}", alg.name());
        }
    }
}
