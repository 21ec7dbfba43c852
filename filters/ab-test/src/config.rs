//! Reading and checking the configuration. SDK-free, tested natively.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::assign::Contender;
use crate::cookie::{is_token, Cookie, SameSite};
use crate::experiment::{Bucket, Experiment, HashKey, PrefixRewrite, Sticky};

/// Buckets per experiment: each costs a hash per new client and two metrics.
pub const MAX_BUCKETS: usize = 64;
/// Longest bucket name: names go into headers, cookies and metric labels.
pub const MAX_BUCKET_NAME: usize = 64;
/// The default request header that carries the bucket.
pub const DEFAULT_BUCKET_HEADER: &str = "x-ab-bucket";
/// The default cookie name.
pub const DEFAULT_COOKIE: &str = "ab_bucket";
/// The default cookie lifetime: 30 days.
pub const DEFAULT_MAX_AGE: u64 = 30 * DAY;
/// The longest cookie lifetime browsers keep (RFC 6265bis caps `Max-Age` at 400 days).
pub const MAX_MAX_AGE: u64 = 400 * DAY;
const DAY: u64 = 86_400;

/// Headers a bucket may not set: the bucket header is the filter's own, and the framing
/// headers are the proxy's.
const RESERVED_HEADERS: &[&str] = &["content-length", "transfer-encoding"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Name → a weight, or a bucket object; read by [`bucket`] to name the key in errors.
    buckets: BTreeMap<String, Value>,
    #[serde(default)]
    sticky: Option<Value>,
    #[serde(default)]
    bucket_header: Option<String>,
    #[serde(default)]
    force_header: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBucket {
    weight: u32,
    #[serde(default)]
    upstream: Option<String>,
    #[serde(default)]
    request_headers: BTreeMap<String, String>,
    #[serde(default)]
    prefix_rewrite: Option<RawPrefixRewrite>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrefixRewrite {
    from: String,
    to: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum RawSticky {
    Cookie(RawCookie),
    Hash(RawHashKey),
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawCookie {
    name: Option<String>,
    max_age: Option<Value>,
    domain: Option<String>,
    path: Option<String>,
    secure: bool,
    http_only: bool,
    same_site: Option<SameSite>,
}

/// The defaults: `ab_bucket`, 30 days, `Path=/`, `HttpOnly`, `SameSite=Lax`.
impl Default for RawCookie {
    fn default() -> RawCookie {
        RawCookie {
            name: None,
            max_age: None,
            domain: None,
            path: None,
            secure: false,
            http_only: true,
            same_site: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum RawHashKey {
    ClientAddress,
    Header(String),
    Cookie(String),
}

impl Experiment {
    /// Parses the plugin configuration (JSON). It is required, with at least one bucket of
    /// weight above 0. Errors name the key, e.g. ``buckets.b.weight: ...``.
    pub fn parse(raw: Option<&[u8]>) -> Result<Experiment, String> {
        let raw: RawConfig = match raw {
            Some(raw) if !raw.iter().all(u8::is_ascii_whitespace) => {
                serde_json::from_slice(raw).map_err(|err| err.to_string())?
            }
            _ => return Err("a configuration is required, with `buckets`".to_owned()),
        };
        let sticky = match raw.sticky {
            Some(value) => sticky(value)?,
            None => Sticky::Cookie(cookie(RawCookie::default())?),
        };
        let bucket_header = header_name(
            "bucket_header",
            raw.bucket_header
                .as_deref()
                .unwrap_or(DEFAULT_BUCKET_HEADER),
        )?;
        let force_header = match raw.force_header {
            Some(name) => Some(header_name("force_header", &name)?),
            None => None,
        };
        if raw.buckets.is_empty() {
            return Err("buckets: at least one bucket is required".to_owned());
        }
        if raw.buckets.len() > MAX_BUCKETS {
            return Err(format!(
                "buckets: {} buckets, at most {MAX_BUCKETS} are allowed",
                raw.buckets.len()
            ));
        }
        let buckets = raw
            .buckets
            .into_iter()
            .map(|(name, value)| bucket(name, value, &bucket_header, &sticky))
            .collect::<Result<Vec<_>, _>>()?;
        if buckets.iter().all(|bucket| bucket.weight == 0) {
            return Err("buckets: every weight is 0; at least one must be above 0".to_owned());
        }
        let contenders = buckets
            .iter()
            .map(|bucket| Contender::new(&bucket.name, bucket.weight))
            .collect();
        Ok(Experiment {
            buckets,
            contenders,
            sticky,
            bucket_header,
            force_header,
        })
    }
}

fn bucket(
    name: String,
    value: Value,
    bucket_header: &str,
    sticky: &Sticky,
) -> Result<Bucket, String> {
    let key = format!("buckets.{name}");
    check_bucket_name(&name).map_err(|err| format!("{key}: {err}"))?;
    let raw = match value {
        Value::Object(_) => RawBucket::deserialize(value).map_err(|err| format!("{key}: {err}"))?,
        weight => RawBucket {
            weight: u32::deserialize(weight).map_err(|err| {
                format!(
                    "{key}: a weight (an integer from 0 to {}) or a bucket is expected: {err}",
                    u32::MAX
                )
            })?,
            upstream: None,
            request_headers: BTreeMap::new(),
            prefix_rewrite: None,
        },
    };
    if let Some(upstream) = &raw.upstream {
        if upstream.trim().is_empty() {
            return Err(format!("{key}.upstream: empty upstream name"));
        }
    }
    let mut request_headers = Vec::with_capacity(raw.request_headers.len());
    for (header, value) in raw.request_headers {
        let field = format!("{key}.request_headers.{header}");
        let header = header_name(&field, &header)?;
        if header == bucket_header || RESERVED_HEADERS.contains(&header.as_str()) {
            return Err(format!("{field}: `{header}` cannot be set by a bucket"));
        }
        if request_headers.iter().any(|(known, _)| *known == header) {
            return Err(format!("{field}: given twice (names are case-insensitive)"));
        }
        if let Some(c) = value.chars().find(|&c| c.is_control() && c != '\t') {
            return Err(format!(
                "{field}: the value holds the control character {c:?}"
            ));
        }
        request_headers.push((header, value));
    }
    let prefix_rewrite = match raw.prefix_rewrite {
        Some(rewrite) => Some(PrefixRewrite {
            from: path(&format!("{key}.prefix_rewrite.from"), rewrite.from)?,
            to: path(&format!("{key}.prefix_rewrite.to"), rewrite.to)?,
        }),
        None => None,
    };
    let set_cookie = match sticky {
        Sticky::Cookie(cookie) => Some(cookie.set_cookie(&name)),
        Sticky::Hash(_) => None,
    };
    Ok(Bucket {
        name,
        weight: raw.weight,
        upstream: raw.upstream,
        request_headers,
        prefix_rewrite,
        set_cookie,
    })
}

/// Bucket names go into headers, cookies and metric labels: letters, digits, `-` and `_`.
fn check_bucket_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_BUCKET_NAME {
        return Err(format!(
            "a bucket name has 1 to {MAX_BUCKET_NAME} characters"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    {
        return Err(format!(
            "`{name}` is not a bucket name ({c:?}: only letters, digits, `-` and `_`)"
        ));
    }
    Ok(())
}

fn sticky(value: Value) -> Result<Sticky, String> {
    let raw = RawSticky::deserialize(value).map_err(|err| {
        format!("sticky: {err} (expected {{cookie: {{...}}}} or {{hash: client_address | {{header: NAME}} | {{cookie: NAME}}}})")
    })?;
    Ok(match raw {
        RawSticky::Cookie(raw) => Sticky::Cookie(cookie(raw)?),
        RawSticky::Hash(RawHashKey::ClientAddress) => Sticky::Hash(HashKey::ClientAddress),
        RawSticky::Hash(RawHashKey::Header(name)) => {
            Sticky::Hash(HashKey::Header(header_name("sticky.hash.header", &name)?))
        }
        RawSticky::Hash(RawHashKey::Cookie(name)) => {
            if !is_token(&name) {
                return Err(format!("sticky.hash.cookie: `{name}` is not a cookie name"));
            }
            Sticky::Hash(HashKey::Cookie(name))
        }
    })
}

fn cookie(raw: RawCookie) -> Result<Cookie, String> {
    let name = raw.name.unwrap_or_else(|| DEFAULT_COOKIE.to_owned());
    if !is_token(&name) {
        return Err(format!("sticky.cookie.name: `{name}` is not a cookie name"));
    }
    let max_age_seconds = match raw.max_age {
        Some(value) => max_age(&value).map_err(|err| format!("sticky.cookie.max_age: {err}"))?,
        None => DEFAULT_MAX_AGE,
    };
    let domain = match raw.domain {
        Some(domain) => {
            let host = domain.strip_prefix('.').unwrap_or(&domain);
            let valid = !host.is_empty()
                && host.len() <= 253
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
            if !valid {
                return Err(format!(
                    "sticky.cookie.domain: `{domain}` is not a domain name"
                ));
            }
            Some(domain)
        }
        None => None,
    };
    let path = match raw.path {
        Some(text) => cookie_path(text)?,
        None => "/".to_owned(),
    };
    let same_site = raw.same_site.unwrap_or(SameSite::Lax);
    if same_site == SameSite::None && !raw.secure {
        return Err(
            "sticky.cookie.same_site: `None` needs `secure: true` (browsers drop it otherwise)"
                .to_owned(),
        );
    }
    Ok(Cookie {
        name,
        max_age_seconds,
        domain,
        path,
        secure: raw.secure,
        http_only: raw.http_only,
        same_site,
    })
}

fn cookie_path(text: String) -> Result<String, String> {
    let valid = text.starts_with('/') && text.chars().all(|c| c.is_ascii_graphic() && c != ';');
    if !valid {
        return Err(format!(
            "sticky.cookie.path: `{text}` is not a path (it starts with `/`, without spaces or `;`)"
        ));
    }
    Ok(text)
}

/// `max_age`: a number of seconds, or `<integer><unit>` with unit `s`, `m`, `h` or `d`;
/// from 1 second to [`MAX_MAX_AGE`].
fn max_age(value: &Value) -> Result<u64, String> {
    let seconds = match value {
        Value::Number(number) => number.as_u64(),
        Value::String(text) => {
            let text = text.trim();
            let digits = text
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(text.len());
            let (number, unit) = text.split_at(digits);
            let scale = match unit {
                "s" => Some(1),
                "m" => Some(60),
                "h" => Some(3600),
                "d" => Some(DAY),
                _ => None,
            };
            number
                .parse::<u64>()
                .ok()
                .zip(scale)
                .and_then(|(number, scale)| number.checked_mul(scale))
        }
        _ => None,
    };
    match seconds {
        Some(seconds) if (1..=MAX_MAX_AGE).contains(&seconds) => Ok(seconds),
        _ => Err(format!(
            "`{value}` is not a lifetime from 1s to 400d (seconds, or a number with s, m, h or d)"
        )),
    }
}

/// A path prefix for a rewrite: starts with `/`, visible ASCII without `?` or `#`.
fn path(key: &str, text: String) -> Result<String, String> {
    let valid = text.starts_with('/')
        && text
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '?' && c != '#');
    if !valid {
        return Err(format!(
            "{key}: `{text}` is not a path prefix (it starts with `/`, without spaces, `?` or `#`)"
        ));
    }
    Ok(text)
}

/// Checks an HTTP header name (an RFC 9110 token) and lower-cases it.
fn header_name(key: &str, name: &str) -> Result<String, String> {
    if !is_token(name) {
        return Err(format!("{key}: `{name}` is not a header name"));
    }
    Ok(name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Experiment {
        Experiment::parse(Some(json.as_bytes())).unwrap_or_else(|err| panic!("{json}: {err}"))
    }

    /// A complete configuration, as the host delivers it (JSON).
    const FULL: &str = r#"{
        "buckets": {
            "control": 90,
            "new-checkout": {
                "weight": 10,
                "upstream": "origin-b",
                "request_headers": {"X-Variant": "new-checkout"},
                "prefix_rewrite": {"from": "/checkout/", "to": "/checkout-v2/"}
            }
        },
        "sticky": {"cookie": {"name": "exp1", "max_age": "7d", "domain": "example.com",
                              "path": "/shop/", "secure": true, "http_only": false,
                              "same_site": "Strict"}},
        "bucket_header": "X-Experiment",
        "force_header": "X-AB-Force"
    }"#;

    #[test]
    fn a_full_configuration() {
        let experiment = parse(FULL);
        assert_eq!(experiment.bucket_header, "x-experiment");
        assert_eq!(experiment.force_header.as_deref(), Some("x-ab-force"));
        let cookie = Cookie {
            name: "exp1".to_owned(),
            max_age_seconds: 7 * DAY,
            domain: Some("example.com".to_owned()),
            path: "/shop/".to_owned(),
            secure: true,
            http_only: false,
            same_site: SameSite::Strict,
        };
        assert_eq!(experiment.sticky, Sticky::Cookie(cookie));
        assert_eq!(
            experiment.buckets,
            vec![
                Bucket {
                    name: "control".to_owned(),
                    weight: 90,
                    upstream: None,
                    request_headers: vec![],
                    prefix_rewrite: None,
                    set_cookie: Some(
                        "exp1=control; Max-Age=604800; Path=/shop/; Domain=example.com; Secure; SameSite=Strict"
                            .to_owned()
                    ),
                },
                Bucket {
                    name: "new-checkout".to_owned(),
                    weight: 10,
                    upstream: Some("origin-b".to_owned()),
                    request_headers: vec![("x-variant".to_owned(), "new-checkout".to_owned())],
                    prefix_rewrite: Some(PrefixRewrite {
                        from: "/checkout/".to_owned(),
                        to: "/checkout-v2/".to_owned(),
                    }),
                    set_cookie: Some(
                        "exp1=new-checkout; Max-Age=604800; Path=/shop/; Domain=example.com; Secure; SameSite=Strict"
                            .to_owned()
                    ),
                },
            ]
        );
    }

    #[test]
    fn defaults_are_a_lax_http_only_cookie_for_thirty_days() {
        let experiment = parse(r#"{"buckets": {"a": 90, "b": 10}}"#);
        assert_eq!(experiment.bucket_header, "x-ab-bucket");
        assert_eq!(experiment.force_header, None);
        assert_eq!(
            experiment.buckets[1].set_cookie.as_deref(),
            Some("ab_bucket=b; Max-Age=2592000; Path=/; HttpOnly; SameSite=Lax")
        );
        let cookie_defaults = parse(r#"{"buckets": {"a": 1}, "sticky": {"cookie": {}}}"#);
        assert_eq!(cookie_defaults.sticky, experiment.sticky);
    }

    #[test]
    fn hash_keys() {
        let key = |sticky: &str| match parse(&format!(
            r#"{{"buckets": {{"a": 1}}, "sticky": {sticky}}}"#
        ))
        .sticky
        {
            Sticky::Hash(key) => key,
            other => panic!("{other:?}"),
        };
        assert_eq!(key(r#"{"hash": "client_address"}"#), HashKey::ClientAddress);
        assert_eq!(
            key(r#"{"hash": {"header": "X-User-Id"}}"#),
            HashKey::Header("x-user-id".to_owned())
        );
        assert_eq!(
            key(r#"{"hash": {"cookie": "session"}}"#),
            HashKey::Cookie("session".to_owned())
        );
        let hashed = parse(r#"{"buckets": {"a": 1}, "sticky": {"hash": "client_address"}}"#);
        assert_eq!(hashed.buckets[0].set_cookie, None);
    }

    #[test]
    fn max_age_takes_seconds_or_units() {
        for (value, seconds) in [
            ("1", 1),
            ("3600", 3600),
            (r#""90s""#, 90),
            (r#""15m""#, 900),
            (r#""12h""#, 43_200),
            (r#""400d""#, MAX_MAX_AGE),
            (r#"" 30d ""#, DEFAULT_MAX_AGE),
        ] {
            let experiment = parse(&format!(
                r#"{{"buckets": {{"a": 1}}, "sticky": {{"cookie": {{"max_age": {value}}}}}}}"#
            ));
            let Sticky::Cookie(cookie) = experiment.sticky else {
                panic!("cookie stickiness")
            };
            assert_eq!(cookie.max_age_seconds, seconds, "{value}");
        }
    }

    #[test]
    fn bad_configurations_are_refused_naming_the_key() {
        let cases = [
            ("{}", "missing field `buckets`"),
            (r#"{"buckets": {}}"#, "buckets: at least one bucket"),
            (r#"{"buckets": {"a": 0, "b": 0}}"#, "every weight is 0"),
            (
                r#"{"buckets": {"a": -1}}"#,
                "buckets.a: a weight (an integer from 0 to 4294967295)",
            ),
            (r#"{"buckets": {"a": 1.5}}"#, "buckets.a: a weight"),
            (r#"{"buckets": {"a": "90"}}"#, "buckets.a: a weight"),
            (r#"{"buckets": {"a": 4294967296}}"#, "buckets.a: a weight"),
            (
                r#"{"buckets": {"a b": 1}}"#,
                "buckets.a b: `a b` is not a bucket name",
            ),
            (r#"{"buckets": {"a=b": 1}}"#, "is not a bucket name ('=':"),
            (
                r#"{"buckets": {"": 1}}"#,
                "a bucket name has 1 to 64 characters",
            ),
            (
                r#"{"buckets": {"a": {"wieght": 1}}}"#,
                "buckets.a: unknown field `wieght`",
            ),
            (
                r#"{"buckets": {"a": {}}}"#,
                "buckets.a: missing field `weight`",
            ),
            (
                r#"{"buckets": {"a": {"weight": 1, "upstream": " "}}}"#,
                "buckets.a.upstream: empty upstream name",
            ),
            (
                r#"{"buckets": {"a": {"weight": 1, "request_headers": {"x y": "1"}}}}"#,
                "buckets.a.request_headers.x y: `x y` is not a header name",
            ),
            (
                r#"{"buckets": {"a": {"weight": 1, "request_headers": {"X-AB-Bucket": "1"}}}}"#,
                "buckets.a.request_headers.X-AB-Bucket: `x-ab-bucket` cannot be set by a bucket",
            ),
            (
                r#"{"buckets": {"a": {"weight": 1, "request_headers": {"content-length": "1"}}}}"#,
                "cannot be set by a bucket",
            ),
            (
                r#"{"buckets": {"a": {"weight": 1, "request_headers": {"x-v": "1", "X-V": "2"}}}}"#,
                "given twice",
            ),
            (
                r#"{"buckets": {"a": {"weight": 1, "request_headers": {"x-v": "a\nb"}}}}"#,
                "buckets.a.request_headers.x-v: the value holds the control character",
            ),
            (
                r#"{"buckets": {"a": {"weight": 1, "prefix_rewrite": {"from": "api", "to": "/"}}}}"#,
                "buckets.a.prefix_rewrite.from: `api` is not a path prefix",
            ),
            (
                r#"{"buckets": {"a": {"weight": 1, "prefix_rewrite": {"from": "/", "to": "/a b"}}}}"#,
                "buckets.a.prefix_rewrite.to:",
            ),
            (
                r#"{"buckets": {"a": {"weight": 1, "prefix_rewrite": {"from": "/"}}}}"#,
                "buckets.a: missing field `to`",
            ),
            (
                r#"{"buckets": {"a": 1}, "sticky": {"hash": "address"}}"#,
                "sticky: unknown variant `address`",
            ),
            (
                r#"{"buckets": {"a": 1}, "sticky": {"cookies": {}}}"#,
                "sticky: unknown variant `cookies`",
            ),
            (
                r#"{"buckets": {"a": 1}, "sticky": {"hash": {"header": "x:y"}}}"#,
                "sticky.hash.header: `x:y` is not a header name",
            ),
            (
                r#"{"buckets": {"a": 1}, "sticky": {"hash": {"cookie": "a;b"}}}"#,
                "sticky.hash.cookie: `a;b` is not a cookie name",
            ),
            (
                r#"{"buckets": {"a": 1}, "sticky": {"cookie": {"name": "a b"}}}"#,
                "sticky.cookie.name",
            ),
            (
                r#"{"buckets": {"a": 1}, "sticky": {"cookie": {"nmae": "x"}}}"#,
                "sticky: unknown field `nmae`",
            ),
            (
                r#"{"buckets": {"a": 1}, "sticky": {"cookie": {"max_age": 0}}}"#,
                "sticky.cookie.max_age: `0` is not a lifetime",
            ),
            (
                r#"{"buckets": {"a": 1}, "sticky": {"cookie": {"max_age": "401d"}}}"#,
                "sticky.cookie.max_age",
            ),
            (
                r#"{"buckets": {"a": 1}, "sticky": {"cookie": {"max_age": "1w"}}}"#,
                "sticky.cookie.max_age",
            ),
            (
                r#"{"buckets": {"a": 1}, "sticky": {"cookie": {"max_age": "-5s"}}}"#,
                "sticky.cookie.max_age",
            ),
            (
                r#"{"buckets": {"a": 1}, "sticky": {"cookie": {"domain": "a b"}}}"#,
                "sticky.cookie.domain",
            ),
            (
                r#"{"buckets": {"a": 1}, "sticky": {"cookie": {"path": "x"}}}"#,
                "sticky.cookie.path",
            ),
            (
                r#"{"buckets": {"a": 1}, "sticky": {"cookie": {"path": "/a;b"}}}"#,
                "sticky.cookie.path",
            ),
            (
                r#"{"buckets": {"a": 1}, "sticky": {"cookie": {"same_site": "None"}}}"#,
                "sticky.cookie.same_site: `None` needs `secure: true`",
            ),
            (
                r#"{"buckets": {"a": 1}, "sticky": {"cookie": {"same_site": "lax"}}}"#,
                "unknown variant `lax`",
            ),
            (
                r#"{"buckets": {"a": 1}, "bucket_header": "x y"}"#,
                "bucket_header: `x y` is not a header name",
            ),
            (
                r#"{"buckets": {"a": 1}, "force_header": ""}"#,
                "force_header: `` is not a header name",
            ),
            (
                r#"{"buckets": {"a": 1}, "weights": {}}"#,
                "unknown field `weights`",
            ),
            ("[", "EOF"),
        ];
        for (json, message) in cases {
            let err = Experiment::parse(Some(json.as_bytes())).unwrap_err();
            assert!(err.contains(message), "{json}: {err}");
        }
        for raw in [None, Some(&b""[..]), Some(&b"  "[..])] {
            let err = Experiment::parse(raw).unwrap_err();
            assert!(err.contains("a configuration is required"), "{err}");
        }
        let many: Vec<String> = (0..=MAX_BUCKETS).map(|n| format!("\"b{n}\": 1")).collect();
        let err = Experiment::parse(Some(
            format!(r#"{{"buckets": {{{}}}}}"#, many.join(",")).as_bytes(),
        ))
        .unwrap_err();
        assert!(err.contains("65 buckets, at most 64"), "{err}");
    }
}
