//! Signature checks (RFC 7518), with RustCrypto. Each algorithm is checked only with the key
//! type it is defined for: an HMAC "secret" is never made out of an RSA or EC public key.

use hmac::{Hmac, Mac};
use rsa::{Pkcs1v15Sign, Pss, RsaPublicKey};
use sha2::{Digest, Sha256, Sha384, Sha512};

use crate::jwk::KeyMaterial;
use crate::jwt::Algorithm;

/// Whether `signature` is a valid `alg` signature of `message` under `key`. A key of the
/// wrong type for `alg` never verifies.
pub fn verify(alg: Algorithm, key: &KeyMaterial, message: &[u8], signature: &[u8]) -> bool {
    match (alg, key) {
        (Algorithm::HS256, KeyMaterial::Hmac(secret)) => {
            hmac::<Hmac<Sha256>>(secret, message, signature)
        }
        (Algorithm::HS384, KeyMaterial::Hmac(secret)) => {
            hmac::<Hmac<Sha384>>(secret, message, signature)
        }
        (Algorithm::HS512, KeyMaterial::Hmac(secret)) => {
            hmac::<Hmac<Sha512>>(secret, message, signature)
        }
        (Algorithm::RS256, KeyMaterial::Rsa(key)) => pkcs1v15::<Sha256>(key, message, signature),
        (Algorithm::RS384, KeyMaterial::Rsa(key)) => pkcs1v15::<Sha384>(key, message, signature),
        (Algorithm::RS512, KeyMaterial::Rsa(key)) => pkcs1v15::<Sha512>(key, message, signature),
        (Algorithm::PS256, KeyMaterial::Rsa(key)) => pss::<Sha256>(key, message, signature),
        (Algorithm::PS384, KeyMaterial::Rsa(key)) => pss::<Sha384>(key, message, signature),
        (Algorithm::PS512, KeyMaterial::Rsa(key)) => pss::<Sha512>(key, message, signature),
        (Algorithm::ES256, KeyMaterial::P256(key)) => {
            use p256::ecdsa::signature::Verifier as _;
            // JWS ECDSA signatures are the fixed-size `r || s`, not DER.
            p256::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|sig| key.verify(message, &sig).is_ok())
        }
        (Algorithm::ES384, KeyMaterial::P384(key)) => {
            use p384::ecdsa::signature::Verifier as _;
            p384::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|sig| key.verify(message, &sig).is_ok())
        }
        (Algorithm::EdDSA, KeyMaterial::Ed25519(key)) => {
            ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|sig| key.verify_strict(message, &sig).is_ok())
        }
        _ => false,
    }
}

fn hmac<M: Mac + hmac::digest::KeyInit>(secret: &[u8], message: &[u8], signature: &[u8]) -> bool {
    let Ok(mut mac) = <M as Mac>::new_from_slice(secret) else {
        return false;
    };
    mac.update(message);
    // Constant-time comparison; a truncated MAC is not accepted.
    mac.verify_slice(signature).is_ok()
}

fn pkcs1v15<D>(key: &RsaPublicKey, message: &[u8], signature: &[u8]) -> bool
where
    D: Digest + sha2::digest::const_oid::AssociatedOid,
{
    key.verify(Pkcs1v15Sign::new::<D>(), &D::digest(message), signature)
        .is_ok()
}

fn pss<D>(key: &RsaPublicKey, message: &[u8], signature: &[u8]) -> bool
where
    D: Digest + sha2::digest::DynDigest + Send + Sync + 'static,
{
    // RFC 7518 §3.5: MGF1 with the same hash, salt as long as the hash.
    let scheme = Pss::new_with_salt::<D>(<D as Digest>::output_size());
    key.verify(scheme, &D::digest(message), signature).is_ok()
}
