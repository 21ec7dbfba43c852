//! JWS compact serialization: splitting a token into its header, claims and signature, and
//! the algorithms the filter accepts. Nothing here checks the signature or the claims (see
//! `validate`); the claims of a parsed token are not to be trusted yet.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{Map, Value};

use crate::Rejection;

/// Longest token accepted, in bytes (a bound on the work an unauthenticated client can cause).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The JWS algorithms the filter verifies (`none` is never one of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

/// The kind of key an algorithm needs: HS* only `oct`, RS*/PS* only `RSA`, ES256 only EC P-256,
/// ES384 only EC P-384, EdDSA only OKP Ed25519.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Hmac,
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl Algorithm {
    pub const ALL: [Algorithm; 12] = [
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];

    /// The algorithm named `name` (exact, case-sensitive: `alg` values are case-sensitive).
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|alg| alg.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::HS256 => "HS256",
            Algorithm::HS384 => "HS384",
            Algorithm::HS512 => "HS512",
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    pub fn key_kind(self) -> KeyKind {
        match self {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => KeyKind::Hmac,
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => KeyKind::Rsa,
            Algorithm::ES256 => KeyKind::P256,
            Algorithm::ES384 => KeyKind::P384,
            Algorithm::EdDSA => KeyKind::Ed25519,
        }
    }
}

/// A token split into its parts; its claims are unverified until `validate` says otherwise.
#[derive(Debug)]
pub struct Token<'a> {
    pub algorithm: Algorithm,
    pub kid: Option<String>,
    pub claims: Map<String, Value>,
    /// `base64url(header) "." base64url(payload)`: what the signature covers.
    pub signing_input: &'a [u8],
    pub signature: Vec<u8>,
}

impl Token<'_> {
    /// The `iss` claim, if it is a string.
    pub fn issuer(&self) -> Option<&str> {
        self.claims.get("iss").and_then(Value::as_str)
    }
}

/// Splits and decodes a compact JWS. Rejects anything that is not three base64url parts
/// with a JSON-object header and payload, `alg: none` or any algorithm not in
/// [`Algorithm`], and headers with `crit` (no extension is understood).
pub fn parse(token: &str) -> Result<Token<'_>, Rejection> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Rejection::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Rejection::Malformed);
    };
    let header = decode_object(header)?;
    let algorithm = match header.get("alg") {
        Some(Value::String(name)) => {
            Algorithm::from_name(name).ok_or(Rejection::AlgorithmNotAllowed)?
        }
        _ => return Err(Rejection::Malformed),
    };
    if header.contains_key("crit") {
        return Err(Rejection::UnsupportedCritical);
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(Rejection::Malformed),
    };
    let claims = decode_object(payload)?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| Rejection::Malformed)?;
    if signature.is_empty() {
        return Err(Rejection::SignatureInvalid);
    }
    let signing_input = &token.as_bytes()[..header_len(token)];
    Ok(Token {
        algorithm,
        kid,
        claims,
        signing_input,
        signature,
    })
}

/// The length of `header.payload` in `token` (everything before the last dot).
fn header_len(token: &str) -> usize {
    token.rfind('.').unwrap_or(token.len())
}

fn decode_object(part: &str) -> Result<Map<String, Value>, Rejection> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| Rejection::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(Rejection::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(text: &str) -> String {
        URL_SAFE_NO_PAD.encode(text)
    }

    fn token(header: &str, payload: &str, signature: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            b64(header),
            b64(payload),
            URL_SAFE_NO_PAD.encode(signature)
        )
    }

    #[test]
    fn algorithm_names_round_trip_and_are_case_sensitive() {
        for alg in Algorithm::ALL {
            assert_eq!(Algorithm::from_name(alg.name()), Some(alg));
        }
        assert_eq!(Algorithm::from_name("none"), None);
        assert_eq!(Algorithm::from_name("hs256"), None);
        assert_eq!(Algorithm::from_name("ES512"), None);
    }

    #[test]
    fn parses_header_claims_and_signature() {
        let raw = token(
            r#"{"alg":"RS256","kid":"k1","typ":"JWT"}"#,
            r#"{"iss":"https://i","sub":"u"}"#,
            b"sig",
        );
        let parsed = parse(&raw).unwrap();
        assert_eq!(parsed.algorithm, Algorithm::RS256);
        assert_eq!(parsed.kid.as_deref(), Some("k1"));
        assert_eq!(parsed.issuer(), Some("https://i"));
        assert_eq!(parsed.signature, b"sig");
        let dot = raw.rfind('.').unwrap();
        assert_eq!(parsed.signing_input, &raw.as_bytes()[..dot]);
    }

    #[test]
    fn rejects_alg_none_and_unknown_algorithms() {
        for alg in ["none", "None", "HS1", "RS1", "ES512", "ES256K"] {
            let raw = token(&format!(r#"{{"alg":"{alg}"}}"#), "{}", b"x");
            assert_eq!(
                parse(&raw).unwrap_err(),
                Rejection::AlgorithmNotAllowed,
                "{alg}"
            );
        }
        // `none` with the empty signature of an unsecured JWS.
        let raw = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64("{}"));
        assert_eq!(parse(&raw).unwrap_err(), Rejection::AlgorithmNotAllowed);
    }

    #[test]
    fn rejects_malformed_tokens() {
        let good_header = b64(r#"{"alg":"HS256"}"#);
        let good_payload = b64("{}");
        let cases = [
            String::new(),
            "garbage".to_owned(),
            "a.b".to_owned(),
            "a.b.c.d".to_owned(),
            format!("{good_header}.{good_payload}"),
            format!("{good_header}.{good_payload}.c.d"),
            format!("{good_header}.!!!.c2ln"),
            format!("{}.{good_payload}.c2ln", b64("not json")),
            format!("{}.{good_payload}.c2ln", b64("[1,2]")),
            format!("{good_header}.{}.c2ln", b64("\"string\"")),
            format!("{}.{good_payload}.c2ln", b64(r#"{"typ":"JWT"}"#)),
            format!("{}.{good_payload}.c2ln", b64(r#"{"alg":256}"#)),
            format!("{}.{good_payload}.c2ln", b64(r#"{"alg":"HS256","kid":5}"#)),
            // Padding is not part of base64url in JWS.
            format!("{good_header}=.{good_payload}.c2ln"),
            format!("{good_header}.{good_payload}.$$$"),
        ];
        for raw in cases {
            assert_eq!(parse(&raw).unwrap_err(), Rejection::Malformed, "{raw:?}");
        }
        let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(parse(&huge).unwrap_err(), Rejection::Malformed);
    }

    #[test]
    fn rejects_an_empty_signature_and_crit() {
        let raw = format!("{}.{}.", b64(r#"{"alg":"HS256"}"#), b64("{}"));
        assert_eq!(parse(&raw).unwrap_err(), Rejection::SignatureInvalid);
        let raw = token(r#"{"alg":"HS256","crit":["exp"]}"#, "{}", b"x");
        assert_eq!(parse(&raw).unwrap_err(), Rejection::UnsupportedCritical);
    }
}
