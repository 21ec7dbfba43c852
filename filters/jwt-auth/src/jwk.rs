//! JSON Web Key Sets (RFC 7517): the public keys (and HMAC secrets) tokens are checked with.
//!
//! Supported keys: `kty: RSA` (`n`, `e`; modulus of 2048 to 8192 bits), `kty: EC` with
//! `crv: P-256` or `P-384` (`x`, `y`), `kty: OKP` with `crv: Ed25519` (`x`) and `kty: oct`
//! (`k`, a non-empty HMAC secret). Optional members: `kid`, `alg` (must be an algorithm this
//! filter knows and must fit the key type) and `use` (must be `sig` when present). Other keys
//! (encryption keys, other curves) are skipped with a reason, so one odd key in a provider's
//! JWKS does not make the whole set unusable.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rsa::BigUint;
use serde_json::Value;

use crate::jwt::{Algorithm, KeyKind};

/// Smallest RSA modulus accepted, in bits (RFC 7518 §3.3).
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted, in bits (bounds the cost of one verification).
pub const MAX_RSA_BITS: usize = 8192;

/// The key material of one JWK, ready to verify with.
#[derive(Debug)]
pub enum KeyMaterial {
    Hmac(Vec<u8>),
    Rsa(rsa::RsaPublicKey),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl KeyMaterial {
    pub fn kind(&self) -> KeyKind {
        match self {
            KeyMaterial::Hmac(_) => KeyKind::Hmac,
            KeyMaterial::Rsa(_) => KeyKind::Rsa,
            KeyMaterial::P256(_) => KeyKind::P256,
            KeyMaterial::P384(_) => KeyKind::P384,
            KeyMaterial::Ed25519(_) => KeyKind::Ed25519,
        }
    }
}

#[derive(Debug)]
pub struct Jwk {
    pub kid: Option<String>,
    /// The JWK's `alg`: when present, the only algorithm the key may be used with.
    pub alg: Option<Algorithm>,
    pub material: KeyMaterial,
}

impl Jwk {
    /// Whether this key may check a signature made with `alg`: the key type must be the one
    /// the algorithm needs, and the key's own `alg`, if any, must be `alg`.
    pub fn fits(&self, alg: Algorithm) -> bool {
        self.material.kind() == alg.key_kind() && self.alg.is_none_or(|own| own == alg)
    }
}

/// The usable keys of a JWKS.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<Jwk>,
}

/// A parsed JWKS: its usable keys, and why the others were skipped (`"key 2: ..."`).
#[derive(Debug)]
pub struct Parsed {
    pub keys: KeySet,
    pub skipped: Vec<String>,
}

/// Parses JWKS JSON text.
pub fn parse_bytes(json: &[u8]) -> Result<Parsed, String> {
    let value: Value = serde_json::from_slice(json).map_err(|err| format!("not JSON: {err}"))?;
    parse(&value)
}

/// Parses a JWKS (`{"keys": [...]}`). Fails only when the set itself is malformed; keys
/// that cannot be used are skipped and listed in [`Parsed::skipped`].
pub fn parse(value: &Value) -> Result<Parsed, String> {
    let keys = value
        .as_object()
        .and_then(|set| set.get("keys"))
        .and_then(Value::as_array)
        .ok_or_else(|| "a JWKS must be an object with a `keys` array".to_owned())?;
    let mut parsed = Parsed {
        keys: KeySet::default(),
        skipped: Vec::new(),
    };
    for (i, key) in keys.iter().enumerate() {
        match parse_key(key) {
            Ok(jwk) => parsed.keys.keys.push(jwk),
            Err(why) => parsed.skipped.push(format!("key {i}: {why}")),
        }
    }
    Ok(parsed)
}

fn parse_key(key: &Value) -> Result<Jwk, String> {
    let key = key.as_object().ok_or("not an object")?;
    let text = |name: &str| -> Result<Option<&str>, String> {
        match key.get(name) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(_) => Err(format!("`{name}` is not a string")),
        }
    };
    let kty = text("kty")?.ok_or("no `kty`")?;
    if let Some(usage) = text("use")? {
        if usage != "sig" {
            return Err(format!("`use` is `{usage}`, not `sig`"));
        }
    }
    let kid = text("kid")?.map(str::to_owned);
    let alg = match text("alg")? {
        None => None,
        Some(name) => {
            Some(Algorithm::from_name(name).ok_or_else(|| format!("unsupported `alg` `{name}`"))?)
        }
    };
    let bytes = |name: &str| -> Result<Vec<u8>, String> {
        let encoded = text(name)?.ok_or_else(|| format!("no `{name}`"))?;
        // Some issuers pad their base64url; padding carries no information.
        URL_SAFE_NO_PAD
            .decode(encoded.trim_end_matches('='))
            .map_err(|_| format!("`{name}` is not base64url"))
    };
    let material = match kty {
        "RSA" => rsa_key(&bytes("n")?, &bytes("e")?)?,
        "EC" => match text("crv")? {
            Some("P-256") => {
                let point = sec1_point(&bytes("x")?, &bytes("y")?, 32)?;
                KeyMaterial::P256(
                    p256::ecdsa::VerifyingKey::from_sec1_bytes(&point)
                        .map_err(|_| "not a point of P-256")?,
                )
            }
            Some("P-384") => {
                let point = sec1_point(&bytes("x")?, &bytes("y")?, 48)?;
                KeyMaterial::P384(
                    p384::ecdsa::VerifyingKey::from_sec1_bytes(&point)
                        .map_err(|_| "not a point of P-384")?,
                )
            }
            other => return Err(format!("unsupported EC curve {other:?}")),
        },
        "OKP" => match text("crv")? {
            Some("Ed25519") => {
                let x: [u8; 32] = bytes("x")?
                    .try_into()
                    .map_err(|_| "an Ed25519 `x` has 32 bytes")?;
                KeyMaterial::Ed25519(
                    ed25519_dalek::VerifyingKey::from_bytes(&x)
                        .map_err(|_| "not an Ed25519 public key")?,
                )
            }
            other => return Err(format!("unsupported OKP curve {other:?}")),
        },
        "oct" => {
            let secret = bytes("k")?;
            if secret.is_empty() {
                return Err("empty `k`".to_owned());
            }
            KeyMaterial::Hmac(secret)
        }
        other => return Err(format!("unsupported `kty` `{other}`")),
    };
    if let Some(alg) = alg {
        if alg.key_kind() != material.kind() {
            return Err(format!("`alg` `{}` does not fit `kty` `{kty}`", alg.name()));
        }
    }
    Ok(Jwk { kid, alg, material })
}

fn rsa_key(n: &[u8], e: &[u8]) -> Result<KeyMaterial, String> {
    let n = BigUint::from_bytes_be(n);
    let bits = n.bits();
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "RSA modulus of {bits} bits (at least {MIN_RSA_BITS} needed)"
        ));
    }
    let key = rsa::RsaPublicKey::new_with_max_size(n, BigUint::from_bytes_be(e), MAX_RSA_BITS)
        .map_err(|err| format!("unusable RSA key: {err}"))?;
    Ok(KeyMaterial::Rsa(key))
}

/// The SEC1 uncompressed encoding `04 || x || y` of a point whose coordinates have `size`
/// bytes each.
fn sec1_point(x: &[u8], y: &[u8], size: usize) -> Result<Vec<u8>, String> {
    if x.len() != size || y.len() != size {
        return Err(format!("EC coordinates of this curve have {size} bytes"));
    }
    let mut point = Vec::with_capacity(1 + 2 * size);
    point.push(4);
    point.extend_from_slice(x);
    point.extend_from_slice(y);
    Ok(point)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_keys;
    use serde_json::json;

    #[test]
    fn parses_every_supported_key_type() {
        let keys = test_keys::get();
        let jwks = json!({"keys": [
            keys.rsa_jwk("rsa", None),
            keys.p256_jwk("p256", Some("ES256")),
            keys.p384_jwk("p384", None),
            keys.ed25519_jwk("ed", Some("EdDSA")),
            keys.hmac_jwk("hmac", Some("HS256")),
        ]});
        let parsed = parse(&jwks).unwrap();
        assert!(parsed.skipped.is_empty(), "{:?}", parsed.skipped);
        let kinds: Vec<KeyKind> = parsed.keys.keys.iter().map(|k| k.material.kind()).collect();
        assert_eq!(
            kinds,
            [
                KeyKind::Rsa,
                KeyKind::P256,
                KeyKind::P384,
                KeyKind::Ed25519,
                KeyKind::Hmac
            ]
        );
        assert_eq!(parsed.keys.keys[0].kid.as_deref(), Some("rsa"));
        assert_eq!(parsed.keys.keys[0].alg, None);
        assert_eq!(parsed.keys.keys[1].alg, Some(Algorithm::ES256));
    }

    #[test]
    fn a_key_fits_only_its_algorithms() {
        let keys = test_keys::get();
        let parsed = parse(&json!({"keys": [
            keys.rsa_jwk("rsa", None),
            keys.rsa_jwk("rsa-ps", Some("PS384")),
            keys.hmac_jwk("hmac", None),
        ]}))
        .unwrap();
        let [rsa, rsa_ps, hmac] = &parsed.keys.keys[..] else {
            panic!("three keys")
        };
        for alg in [Algorithm::RS256, Algorithm::RS512, Algorithm::PS256] {
            assert!(rsa.fits(alg));
        }
        assert!(!rsa.fits(Algorithm::HS256));
        assert!(!rsa.fits(Algorithm::ES256));
        assert!(rsa_ps.fits(Algorithm::PS384));
        assert!(!rsa_ps.fits(Algorithm::PS256));
        assert!(!rsa_ps.fits(Algorithm::RS384));
        assert!(hmac.fits(Algorithm::HS512));
        assert!(!hmac.fits(Algorithm::RS256));
    }

    #[test]
    fn skips_keys_it_cannot_use_and_says_why() {
        let keys = test_keys::get();
        let mut enc = keys.rsa_jwk("enc", None);
        enc["use"] = json!("enc");
        let mut wrong_alg = keys.p256_jwk("wrong-alg", None);
        wrong_alg["alg"] = json!("RS256");
        let mut unknown_alg = keys.rsa_jwk("oaep", None);
        unknown_alg["alg"] = json!("RSA-OAEP");
        let mut off_curve = keys.p256_jwk("off-curve", None);
        off_curve["y"] = off_curve["x"].clone();
        let mut p384_as_p256 = keys.p384_jwk("mixed", None);
        p384_as_p256["crv"] = json!("P-256");
        let jwks = json!({"keys": [
            enc,
            wrong_alg,
            unknown_alg,
            off_curve,
            p384_as_p256,
            {"kty": "EC", "crv": "secp256k1", "x": "AA", "y": "AA"},
            {"kty": "OKP", "crv": "X25519", "x": "AA"},
            {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"},
            {"kty": "oct", "k": ""},
            {"kty": "oct", "k": "not base64!"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
            {"kty": "XYZ"},
            {"kid": "no-kty"},
            "not an object",
            keys.hmac_jwk("good", None),
        ]});
        let parsed = parse(&jwks).unwrap();
        assert_eq!(parsed.keys.keys.len(), 1);
        assert_eq!(parsed.keys.keys[0].kid.as_deref(), Some("good"));
        assert_eq!(parsed.skipped.len(), 14, "{:#?}", parsed.skipped);
        assert!(parsed.skipped[0].contains("`use` is `enc`"));
        assert!(parsed.skipped[1].contains("does not fit"));
        assert!(parsed.skipped[2].contains("RSA-OAEP"));
        assert!(parsed.skipped[10].contains("RSA modulus of 17 bits"));
    }

    #[test]
    fn rejects_a_malformed_set() {
        for bad in [
            json!([]),
            json!({}),
            json!({"keys": {}}),
            json!({"keys": "x"}),
        ] {
            assert!(parse(&bad).is_err(), "{bad}");
        }
        assert!(parse_bytes(b"not json").is_err());
        assert!(parse_bytes(br#"{"keys": []}"#)
            .unwrap()
            .keys
            .keys
            .is_empty());
    }

    #[test]
    fn accepts_padded_base64url() {
        let keys = test_keys::get();
        let mut jwk = keys.hmac_jwk("padded", None);
        let k = jwk["k"].as_str().unwrap().to_owned();
        jwk["k"] = json!(format!("{k}=="));
        assert_eq!(parse(&json!({"keys": [jwk]})).unwrap().keys.keys.len(), 1);
    }
}
