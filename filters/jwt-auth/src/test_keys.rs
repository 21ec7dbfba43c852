//! Test keys, generated once per test run, their JWKs, and tokens signed with them by an
//! independent implementation (the `jsonwebtoken` crate).

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{EncodingKey, Header};
use p256_keys::elliptic_curve::sec1::ToEncodedPoint as _;
use p256_keys::pkcs8::EncodePrivateKey as _;
use rand::rngs::OsRng;
use rand::RngCore as _;
use rsa::pkcs1::EncodeRsaPrivateKey as _;
use rsa::pkcs8::EncodePublicKey as _;
use rsa::traits::PublicKeyParts as _;
use serde_json::{json, Value};

use crate::jwt::{Algorithm, KeyKind};

/// One key of every type.
pub struct Keys {
    rsa: rsa::RsaPrivateKey,
    p256: p256_keys::SecretKey,
    p384: p384_keys::SecretKey,
    ed25519: ed25519_dalek::SigningKey,
    hmac: Vec<u8>,
}

/// The keys most tests sign with.
pub fn get() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(Keys::generate)
}

/// A second, unrelated set of keys (signatures an attacker could make).
pub fn other() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(Keys::generate)
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn with_meta(mut jwk: Value, kid: &str, alg: Option<&str>) -> Value {
    jwk["kid"] = json!(kid);
    if let Some(alg) = alg {
        jwk["alg"] = json!(alg);
    }
    jwk
}

impl Keys {
    fn generate() -> Keys {
        let mut hmac = vec![0; 32];
        OsRng.fill_bytes(&mut hmac);
        Keys {
            rsa: rsa::RsaPrivateKey::new(&mut OsRng, 2048).unwrap(),
            p256: p256_keys::SecretKey::random(&mut OsRng),
            p384: p384_keys::SecretKey::random(&mut OsRng),
            ed25519: ed25519_dalek::SigningKey::generate(&mut OsRng),
            hmac,
        }
    }

    pub fn rsa_jwk(&self, kid: &str, alg: Option<&str>) -> Value {
        let public = self.rsa.to_public_key();
        let jwk = json!({"kty": "RSA", "use": "sig", "n": b64(&public.n().to_bytes_be()),
                         "e": b64(&public.e().to_bytes_be())});
        with_meta(jwk, kid, alg)
    }

    pub fn p256_jwk(&self, kid: &str, alg: Option<&str>) -> Value {
        let point = self.p256.public_key().to_encoded_point(false);
        let jwk = json!({"kty": "EC", "crv": "P-256", "x": b64(point.x().unwrap()),
                         "y": b64(point.y().unwrap())});
        with_meta(jwk, kid, alg)
    }

    pub fn p384_jwk(&self, kid: &str, alg: Option<&str>) -> Value {
        let point = self.p384.public_key().to_encoded_point(false);
        let jwk = json!({"kty": "EC", "crv": "P-384", "x": b64(point.x().unwrap()),
                         "y": b64(point.y().unwrap())});
        with_meta(jwk, kid, alg)
    }

    pub fn ed25519_jwk(&self, kid: &str, alg: Option<&str>) -> Value {
        let x = self.ed25519.verifying_key().to_bytes();
        with_meta(
            json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&x)}),
            kid,
            alg,
        )
    }

    pub fn hmac_jwk(&self, kid: &str, alg: Option<&str>) -> Value {
        with_meta(json!({"kty": "oct", "k": b64(&self.hmac)}), kid, alg)
    }

    /// The RSA public key as SPKI PEM text.
    pub fn rsa_public_pem(&self) -> String {
        self.rsa
            .to_public_key()
            .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
            .unwrap()
    }

    /// The RSA public key as SPKI DER.
    pub fn rsa_public_der(&self) -> Vec<u8> {
        self.rsa
            .to_public_key()
            .to_public_key_der()
            .unwrap()
            .as_bytes()
            .to_vec()
    }

    fn encoding_key(&self, alg: Algorithm) -> EncodingKey {
        match alg.key_kind() {
            KeyKind::Hmac => EncodingKey::from_secret(&self.hmac),
            KeyKind::Rsa => EncodingKey::from_rsa_der(self.rsa.to_pkcs1_der().unwrap().as_bytes()),
            KeyKind::P256 => EncodingKey::from_ec_der(self.p256.to_pkcs8_der().unwrap().as_bytes()),
            KeyKind::P384 => EncodingKey::from_ec_der(self.p384.to_pkcs8_der().unwrap().as_bytes()),
            KeyKind::Ed25519 => {
                EncodingKey::from_ed_der(self.ed25519.to_pkcs8_der().unwrap().as_bytes())
            }
        }
    }
}

fn their_algorithm(alg: Algorithm) -> jsonwebtoken::Algorithm {
    use jsonwebtoken::Algorithm as J;
    match alg {
        Algorithm::HS256 => J::HS256,
        Algorithm::HS384 => J::HS384,
        Algorithm::HS512 => J::HS512,
        Algorithm::RS256 => J::RS256,
        Algorithm::RS384 => J::RS384,
        Algorithm::RS512 => J::RS512,
        Algorithm::PS256 => J::PS256,
        Algorithm::PS384 => J::PS384,
        Algorithm::PS512 => J::PS512,
        Algorithm::ES256 => J::ES256,
        Algorithm::ES384 => J::ES384,
        Algorithm::EdDSA => J::EdDSA,
    }
}

fn encode(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(their_algorithm(alg));
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// A token signed with [`get`]'s key for `alg`.
pub fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    sign_with(get(), alg, kid, claims)
}

pub fn sign_with(keys: &Keys, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    encode(alg, kid, claims, &keys.encoding_key(alg))
}

/// A token MACed with `secret`, whatever it is.
pub fn sign_hmac_with(secret: &[u8], alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    encode(alg, kid, claims, &EncodingKey::from_secret(secret))
}

/// An unsecured JWS (`alg: none`, empty signature).
pub fn unsigned(claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims.to_string().as_bytes())
    )
}
