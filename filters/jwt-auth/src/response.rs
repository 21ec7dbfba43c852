//! What the filter answers when it turns a request away, and the claim headers it forwards.

use serde_json::{json, Map, Value};

use crate::Rejection;

/// A local response: status, headers, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u32,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

const JSON: &str = "application/json";

/// `401` for a token that is there but not valid (RFC 6750 §3.1).
pub fn invalid_token(rejection: Rejection) -> LocalResponse {
    let reason = rejection.reason();
    LocalResponse {
        status: 401,
        headers: vec![
            (
                "www-authenticate",
                format!(r#"Bearer error="invalid_token", error_description="{reason}""#),
            ),
            ("content-type", JSON.to_owned()),
        ],
        body: json!({"error": "invalid_token", "error_description": reason}).to_string(),
    }
}

/// `401` for a request without a token: a bare challenge (RFC 6750 §3.1: no error code when
/// the request has no authentication information).
pub fn missing_token() -> LocalResponse {
    LocalResponse {
        status: 401,
        headers: vec![
            ("www-authenticate", "Bearer".to_owned()),
            ("content-type", JSON.to_owned()),
        ],
        body: json!({"error": "missing_token"}).to_string(),
    }
}

/// `503` when the keys of the token's issuer could not be fetched.
pub fn jwks_unavailable() -> LocalResponse {
    LocalResponse {
        status: 503,
        headers: vec![("content-type", JSON.to_owned())],
        body: json!({"error": "jwks_unavailable"}).to_string(),
    }
}

/// The request headers `forward` (claim → header) asks for, from `claims`: strings as they
/// are, anything else as JSON text. A missing or `null` claim, and a value that cannot be a
/// header value (control characters), give no header.
pub fn claim_headers(
    forward: &[(String, String)],
    claims: &Map<String, Value>,
) -> Vec<(String, String)> {
    forward
        .iter()
        .filter_map(|(claim, header)| {
            let value = header_value(claims.get(claim)?)?;
            Some((header.clone(), value))
        })
        .collect()
}

/// A claim as a header value, if it can be one.
pub fn header_value(claim: &Value) -> Option<String> {
    let text = match claim {
        Value::Null => return None,
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    let allowed = |c: char| c == '\t' || !(c.is_ascii_control());
    text.chars().all(allowed).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_token_response() {
        let response = invalid_token(Rejection::Expired);
        assert_eq!(response.status, 401);
        assert_eq!(
            response.headers,
            [
                (
                    "www-authenticate",
                    r#"Bearer error="invalid_token", error_description="token expired""#.to_owned()
                ),
                ("content-type", "application/json".to_owned()),
            ]
        );
        let body: Value = serde_json::from_str(&response.body).unwrap();
        assert_eq!(
            body,
            json!({"error": "invalid_token", "error_description": "token expired"})
        );
    }

    #[test]
    fn missing_and_unavailable_responses() {
        let missing = missing_token();
        assert_eq!(missing.status, 401);
        assert_eq!(
            missing.headers[0],
            ("www-authenticate", "Bearer".to_owned())
        );
        assert_eq!(missing.body, r#"{"error":"missing_token"}"#);
        let unavailable = jwks_unavailable();
        assert_eq!(unavailable.status, 503);
        assert_eq!(unavailable.body, r#"{"error":"jwks_unavailable"}"#);
    }

    #[test]
    fn claims_become_header_values() {
        let claims = json!({
            "sub": "user-1", "n": 42, "f": 1.5, "admin": true, "groups": ["a", "b"],
            "obj": {"k": "v"}, "nul": null, "evil": "a\r\nx-injected: 1", "tab": "a\tb",
            "utf8": "Zoë",
        });
        let claims = claims.as_object().unwrap();
        let forward: Vec<(String, String)> = [
            "sub", "n", "f", "admin", "groups", "obj", "nul", "evil", "tab", "utf8", "absent",
        ]
        .iter()
        .map(|claim| ((*claim).to_owned(), format!("x-{claim}")))
        .collect();
        let headers = claim_headers(&forward, claims);
        let expected = [
            ("x-sub", "user-1"),
            ("x-n", "42"),
            ("x-f", "1.5"),
            ("x-admin", "true"),
            ("x-groups", r#"["a","b"]"#),
            ("x-obj", r#"{"k":"v"}"#),
            ("x-tab", "a\tb"),
            ("x-utf8", "Zoë"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(h, v)| ((*h).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(headers, expected);
    }

    #[test]
    fn every_reason_is_short_and_safe_in_a_quoted_string() {
        for rejection in [
            Rejection::Malformed,
            Rejection::AlgorithmNotAllowed,
            Rejection::UnsupportedCritical,
            Rejection::IssuerNotAccepted,
            Rejection::UnknownKeyId,
            Rejection::SignatureInvalid,
            Rejection::Expired,
            Rejection::NotYetValid,
            Rejection::IssuedInFuture,
            Rejection::AudienceNotAccepted,
            Rejection::InvalidClaim("exp"),
            Rejection::InvalidClaim("other"),
        ] {
            let reason = rejection.reason();
            assert!(!reason.is_empty() && reason.len() < 40, "{reason}");
            assert!(!reason.contains(['"', '\\']), "{reason}");
        }
    }
}
