//! Checking a parsed token against its provider's keys and policy: key choice, signature,
//! then the time claims and the audience. (The issuer picked the provider already.)

use std::time::Duration;

use serde_json::Value;

use crate::jwk::KeySet;
use crate::jwt::Token;
use crate::verify::verify;
use crate::Rejection;

/// Validates `token` with `keys`, at `now` (seconds since the epoch), allowing `skew` of clock
/// difference, requiring one of `audiences` in `aud` unless `audiences` is empty. A valid
/// token's [`TimeWindow`] says until when it stays valid (for the cache of verified tokens).
///
/// Keys: with a `kid` in the token only the keys with that `kid` are candidates (none:
/// [`Rejection::UnknownKeyId`]); without one, every key. Of those, only the keys that fit the
/// token's algorithm (key type, and the key's `alg` if it has one) are tried (none:
/// [`Rejection::AlgorithmNotAllowed`]); one of them must verify the signature. The claims are
/// looked at only once the signature holds.
pub fn validate(
    token: &Token<'_>,
    keys: &KeySet,
    audiences: &[String],
    skew: Duration,
    now: f64,
) -> Result<TimeWindow, Rejection> {
    check_signature(token, keys)?;
    let window = time_window(token, skew)?;
    window.check(now)?;
    check_audience(token, audiences)?;
    Ok(window)
}

/// When a token's time claims hold: its `exp`, `nbf` and `iat` (each optional: absent claims
/// do not bound it) and the clock skew allowed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeWindow {
    exp: Option<f64>,
    nbf: Option<f64>,
    iat: Option<f64>,
    skew: f64,
}

/// The time claims of `token`, which must be numbers if present, with `skew` of leeway.
pub fn time_window(token: &Token<'_>, skew: Duration) -> Result<TimeWindow, Rejection> {
    Ok(TimeWindow {
        exp: numeric_date(token, "exp")?,
        nbf: numeric_date(token, "nbf")?,
        iat: numeric_date(token, "iat")?,
        skew: skew.as_secs_f64(),
    })
}

impl TimeWindow {
    /// Whether the claims hold at `now` (seconds since the epoch), and if not, why.
    pub fn check(&self, now: f64) -> Result<(), Rejection> {
        if let Some(exp) = self.exp {
            // The token is valid strictly before `exp` (RFC 7519 §4.1.4).
            if now >= exp + self.skew {
                return Err(Rejection::Expired);
            }
        }
        if let Some(nbf) = self.nbf {
            if now + self.skew < nbf {
                return Err(Rejection::NotYetValid);
            }
        }
        if let Some(iat) = self.iat {
            if iat > now + self.skew {
                return Err(Rejection::IssuedInFuture);
            }
        }
        Ok(())
    }
}

fn check_signature(token: &Token<'_>, keys: &KeySet) -> Result<(), Rejection> {
    let alg = token.algorithm;
    let mut candidates = keys
        .keys
        .iter()
        .filter(|key| token.kid.is_none() || key.kid == token.kid)
        .peekable();
    if candidates.peek().is_none() {
        return Err(if token.kid.is_some() {
            Rejection::UnknownKeyId
        } else {
            Rejection::AlgorithmNotAllowed
        });
    }
    let mut fitting = candidates.filter(|key| key.fits(alg)).peekable();
    if fitting.peek().is_none() {
        return Err(Rejection::AlgorithmNotAllowed);
    }
    let verified =
        fitting.any(|key| verify(alg, &key.material, token.signing_input, &token.signature));
    if verified {
        Ok(())
    } else {
        Err(Rejection::SignatureInvalid)
    }
}

/// A NumericDate claim: absent, or a (possibly fractional) number of seconds.
fn numeric_date(token: &Token<'_>, claim: &'static str) -> Result<Option<f64>, Rejection> {
    match token.claims.get(claim) {
        None => Ok(None),
        Some(value) => value
            .as_f64()
            .filter(|n| n.is_finite())
            .map(Some)
            .ok_or(Rejection::InvalidClaim(claim)),
    }
}

fn check_audience(token: &Token<'_>, audiences: &[String]) -> Result<(), Rejection> {
    if audiences.is_empty() {
        return Ok(());
    }
    let accepted = |aud: &Value| {
        aud.as_str()
            .is_some_and(|aud| audiences.iter().any(|a| a == aud))
    };
    let ok = match token.claims.get("aud") {
        Some(Value::Array(auds)) => auds.iter().any(accepted),
        Some(aud) => accepted(aud),
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Rejection::AudienceNotAccepted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwk;
    use crate::jwt::{self, Algorithm};
    use crate::test_keys::{self, sign, unsigned};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use serde_json::json;

    const NOW: u64 = 1_700_000_000;
    const SKEW: Duration = Duration::from_secs(60);

    /// A JWKS with one key of every type, `kid`s named after their type.
    fn all_keys() -> KeySet {
        let keys = test_keys::get();
        jwk::parse(&json!({"keys": [
            keys.rsa_jwk("rsa", None),
            keys.p256_jwk("p256", None),
            keys.p384_jwk("p384", None),
            keys.ed25519_jwk("ed", None),
            keys.hmac_jwk("hmac", None),
        ]}))
        .unwrap()
        .keys
    }

    fn claims() -> Value {
        json!({"iss": "https://issuer", "sub": "user-1", "aud": "edge-api",
               "iat": NOW, "nbf": NOW, "exp": NOW + 300})
    }

    fn check(raw: &str, keys: &KeySet) -> Result<(), Rejection> {
        let token = jwt::parse(raw)?;
        validate(&token, keys, &["edge-api".to_owned()], SKEW, NOW as f64).map(|_| ())
    }

    fn kid_for(alg: Algorithm) -> &'static str {
        match alg.key_kind() {
            jwt::KeyKind::Rsa => "rsa",
            jwt::KeyKind::P256 => "p256",
            jwt::KeyKind::P384 => "p384",
            jwt::KeyKind::Ed25519 => "ed",
            jwt::KeyKind::Hmac => "hmac",
        }
    }

    #[test]
    fn every_algorithm_verifies_with_and_without_kid() {
        let keys = all_keys();
        for alg in Algorithm::ALL {
            let with_kid = sign(alg, Some(kid_for(alg)), &claims());
            assert_eq!(check(&with_kid, &keys), Ok(()), "{alg:?} with kid");
            let without_kid = sign(alg, None, &claims());
            assert_eq!(check(&without_kid, &keys), Ok(()), "{alg:?} without kid");
        }
    }

    #[test]
    fn a_tampered_token_fails_for_every_algorithm() {
        let keys = all_keys();
        for alg in Algorithm::ALL {
            let good = sign(alg, Some(kid_for(alg)), &claims());
            let (input, signature) = good.rsplit_once('.').unwrap();
            // Other claims, same signature.
            let (header, _) = input.split_once('.').unwrap();
            let mut forged_claims = claims();
            forged_claims["sub"] = json!("admin");
            let forged = format!(
                "{header}.{}.{signature}",
                URL_SAFE_NO_PAD.encode(forged_claims.to_string())
            );
            assert_eq!(
                check(&forged, &keys),
                Err(Rejection::SignatureInvalid),
                "{alg:?}"
            );
            // Same claims, one bit of the signature flipped.
            let mut sig = URL_SAFE_NO_PAD.decode(signature).unwrap();
            sig[0] ^= 1;
            let flipped = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&sig));
            assert_eq!(
                check(&flipped, &keys),
                Err(Rejection::SignatureInvalid),
                "{alg:?}"
            );
            // A truncated signature.
            let short = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&sig[..sig.len() / 2]));
            assert_eq!(
                check(&short, &keys),
                Err(Rejection::SignatureInvalid),
                "{alg:?}"
            );
        }
    }

    #[test]
    fn signatures_by_other_keys_of_the_same_type_fail() {
        let other = test_keys::other();
        let keys = all_keys();
        for alg in Algorithm::ALL {
            let token = test_keys::sign_with(other, alg, Some(kid_for(alg)), &claims());
            assert_eq!(
                check(&token, &keys),
                Err(Rejection::SignatureInvalid),
                "{alg:?}"
            );
        }
    }

    #[test]
    fn unknown_kid() {
        let token = sign(Algorithm::RS256, Some("rotated-away"), &claims());
        assert_eq!(check(&token, &all_keys()), Err(Rejection::UnknownKeyId));
    }

    #[test]
    fn the_key_type_must_fit_the_algorithm() {
        let keys = test_keys::get();
        // HS256 with the RSA public key as HMAC secret: the classic confusion attack, with the
        // key named by kid, and without kid.
        let rsa_only = jwk::parse(&json!({"keys": [keys.rsa_jwk("rsa", None)]}))
            .unwrap()
            .keys;
        for secret in [keys.rsa_public_pem().into_bytes(), keys.rsa_public_der()] {
            for kid in [Some("rsa"), None] {
                let forged = test_keys::sign_hmac_with(&secret, Algorithm::HS256, kid, &claims());
                assert_eq!(
                    check(&forged, &rsa_only),
                    Err(Rejection::AlgorithmNotAllowed)
                );
            }
        }
        // ES384 with a P-256 key, ES256 with an RSA key, EdDSA with an EC key.
        let token = sign(Algorithm::ES384, Some("p256"), &claims());
        assert_eq!(
            check(&token, &all_keys()),
            Err(Rejection::AlgorithmNotAllowed)
        );
        let token = sign(Algorithm::ES256, Some("rsa"), &claims());
        assert_eq!(
            check(&token, &all_keys()),
            Err(Rejection::AlgorithmNotAllowed)
        );
        let token = sign(Algorithm::EdDSA, Some("p256"), &claims());
        assert_eq!(
            check(&token, &all_keys()),
            Err(Rejection::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn a_jwk_alg_restricts_its_key() {
        let keys = test_keys::get();
        let pinned = jwk::parse(&json!({"keys": [keys.rsa_jwk("rsa", Some("PS256"))]}))
            .unwrap()
            .keys;
        let token = sign(Algorithm::PS256, Some("rsa"), &claims());
        assert_eq!(check(&token, &pinned), Ok(()));
        let token = sign(Algorithm::RS256, Some("rsa"), &claims());
        assert_eq!(check(&token, &pinned), Err(Rejection::AlgorithmNotAllowed));
        let token = sign(Algorithm::RS256, None, &claims());
        assert_eq!(check(&token, &pinned), Err(Rejection::AlgorithmNotAllowed));
    }

    #[test]
    fn alg_none_is_never_accepted() {
        let token = unsigned(&claims());
        assert_eq!(
            check(&token, &all_keys()),
            Err(Rejection::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn time_claims() {
        let keys = all_keys();
        let with = |changes: Value| {
            let mut claims = claims();
            for (k, v) in changes.as_object().unwrap() {
                if v.is_null() {
                    claims.as_object_mut().unwrap().remove(k);
                } else {
                    claims[k] = v.clone();
                }
            }
            check(&sign(Algorithm::HS256, None, &claims), &keys)
        };
        // exp: valid strictly before exp + skew.
        assert_eq!(with(json!({"exp": NOW - 59})), Ok(()));
        assert_eq!(with(json!({"exp": NOW - 60})), Err(Rejection::Expired));
        assert_eq!(with(json!({"exp": NOW - 3600})), Err(Rejection::Expired));
        assert_eq!(with(json!({"exp": (NOW - 30) as f64 + 0.5})), Ok(()));
        // No exp at all is accepted.
        assert_eq!(with(json!({"exp": null})), Ok(()));
        // nbf and iat up to the skew in the future.
        assert_eq!(with(json!({"nbf": NOW + 60})), Ok(()));
        assert_eq!(with(json!({"nbf": NOW + 61})), Err(Rejection::NotYetValid));
        assert_eq!(with(json!({"iat": NOW + 60})), Ok(()));
        assert_eq!(
            with(json!({"iat": NOW + 61, "nbf": null})),
            Err(Rejection::IssuedInFuture)
        );
        // Not numbers.
        assert_eq!(
            with(json!({"exp": "tomorrow"})),
            Err(Rejection::InvalidClaim("exp"))
        );
        assert_eq!(
            with(json!({"nbf": true})),
            Err(Rejection::InvalidClaim("nbf"))
        );
        assert_eq!(
            with(json!({"iat": [1]})),
            Err(Rejection::InvalidClaim("iat"))
        );
    }

    #[test]
    fn zero_skew() {
        let raw = sign(Algorithm::HS256, None, &json!({"exp": NOW + 1}));
        let token = jwt::parse(&raw).unwrap();
        let keys = all_keys();
        assert!(validate(&token, &keys, &[], Duration::ZERO, NOW as f64).is_ok());
        assert_eq!(
            validate(&token, &keys, &[], Duration::ZERO, (NOW + 1) as f64),
            Err(Rejection::Expired)
        );
    }

    #[test]
    fn the_window_of_a_valid_token_holds_as_long_as_its_claims() {
        let raw = sign(Algorithm::HS256, None, &claims());
        let token = jwt::parse(&raw).unwrap();
        let window = validate(&token, &all_keys(), &[], SKEW, NOW as f64).unwrap();
        assert_eq!(window, time_window(&token, SKEW).unwrap());
        // exp is NOW + 300: valid until exp + skew, exclusive.
        assert_eq!(window.check((NOW + 359) as f64), Ok(()));
        assert_eq!(window.check((NOW + 360) as f64), Err(Rejection::Expired));
        // nbf and iat are NOW: valid from skew before them.
        assert_eq!(window.check((NOW - 60) as f64), Ok(()));
        assert_eq!(window.check((NOW - 61) as f64), Err(Rejection::NotYetValid));
        // Without time claims it never ends.
        let raw = sign(Algorithm::HS256, None, &json!({"sub": "forever"}));
        let window = time_window(&jwt::parse(&raw).unwrap(), Duration::ZERO).unwrap();
        assert_eq!(window.check(f64::MAX), Ok(()));
        assert_eq!(window.check(0.0), Ok(()));
    }

    #[test]
    fn audiences() {
        let keys = all_keys();
        let with_aud = |aud: Value| {
            let mut claims = claims();
            if aud.is_null() {
                claims.as_object_mut().unwrap().remove("aud");
            } else {
                claims["aud"] = aud;
            }
            check(&sign(Algorithm::ES256, None, &claims), &keys)
        };
        assert_eq!(with_aud(json!("edge-api")), Ok(()));
        assert_eq!(with_aud(json!(["other", "edge-api"])), Ok(()));
        assert_eq!(
            with_aud(json!("other")),
            Err(Rejection::AudienceNotAccepted)
        );
        assert_eq!(
            with_aud(json!(["other"])),
            Err(Rejection::AudienceNotAccepted)
        );
        assert_eq!(with_aud(json!([])), Err(Rejection::AudienceNotAccepted));
        assert_eq!(with_aud(json!(5)), Err(Rejection::AudienceNotAccepted));
        assert_eq!(
            with_aud(json!("EDGE-API")),
            Err(Rejection::AudienceNotAccepted)
        );
        assert_eq!(with_aud(Value::Null), Err(Rejection::AudienceNotAccepted));
        // No audiences configured: aud is not looked at.
        let token = sign(Algorithm::ES256, None, &json!({"aud": "anything"}));
        let token = jwt::parse(&token).unwrap();
        assert!(validate(&token, &keys, &[], SKEW, NOW as f64).is_ok());
    }

    #[test]
    fn the_signature_is_checked_before_the_claims() {
        let other = test_keys::other();
        let expired = json!({"exp": NOW - 3600, "aud": "nobody"});
        let token = test_keys::sign_with(other, Algorithm::HS256, None, &expired);
        assert_eq!(check(&token, &all_keys()), Err(Rejection::SignatureInvalid));
    }

    #[test]
    fn several_keys_without_kid_are_all_tried() {
        let keys = test_keys::get();
        let other = test_keys::other();
        let set = jwk::parse(&json!({"keys": [
            other.hmac_jwk("a", None),
            other.rsa_jwk("b", None),
            keys.hmac_jwk("c", None),
        ]}))
        .unwrap()
        .keys;
        let token = sign(Algorithm::HS384, None, &claims());
        assert_eq!(check(&token, &set), Ok(()));
        let token = sign(Algorithm::RS256, None, &claims());
        assert_eq!(check(&token, &set), Err(Rejection::SignatureInvalid));
        let token = sign(Algorithm::ES256, None, &claims());
        assert_eq!(check(&token, &set), Err(Rejection::AlgorithmNotAllowed));
    }
}
