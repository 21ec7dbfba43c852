//! The filter's configuration: JSON (the proxy hands over its YAML `config:` as JSON), parsed
//! and checked once in `on_configure`. See the crate documentation for the schema.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::jwk::{self, KeySet};

pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(60);
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_JWKS_PATH: &str = "/.well-known/jwks.json";
/// The shortest `refresh` accepted.
pub const MIN_REFRESH: Duration = Duration::from_millis(100);
/// Verified tokens kept per instance unless configured (Envoy's default too).
pub const DEFAULT_TOKEN_CACHE: usize = 100;
/// The largest `token_cache`: at most 4 KiB per entry (see `cache`), about 40 MiB, well
/// inside the default `limits.memory` of 128 MiB.
pub const MAX_TOKEN_CACHE: usize = 10_000;

#[derive(Debug)]
pub struct Config {
    pub providers: Vec<Provider>,
    pub token_from: Vec<TokenSource>,
    /// (claim name, request header name), the header in lower case; in header-name order.
    pub forward_claims: Vec<(String, String)>,
    pub clock_skew: Duration,
    pub allow_missing: bool,
    /// How many verified tokens an instance keeps (0: none).
    pub token_cache: usize,
}

#[derive(Debug)]
pub struct Provider {
    pub issuer: String,
    /// Empty: the `aud` claim is not checked.
    pub audiences: Vec<String>,
    pub keys: KeysFrom,
}

#[derive(Debug)]
pub enum KeysFrom {
    Inline(Rc<KeySet>),
    Upstream(JwksUpstream),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksUpstream {
    pub upstream: String,
    pub path: String,
    /// The callout's `:authority`; the upstream's name unless configured.
    pub authority: String,
    pub refresh: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// A request header (name in lower case) whose value starts with `prefix` (compared
    /// case-insensitively; empty: the whole value is the token).
    Header { name: String, prefix: String },
    /// A parameter of the query string.
    Query(String),
    /// A cookie.
    Cookie(String),
}

impl Config {
    /// Parses and checks the configuration; the error says what is wrong, naming the field.
    pub fn parse(json: &[u8]) -> Result<Config, String> {
        let raw: RawConfig = serde_json::from_slice(json).map_err(|err| err.to_string())?;
        raw.check()
    }

    /// The index of the provider whose issuer is `issuer` (compared exactly).
    pub fn provider_for(&self, issuer: &str) -> Option<usize> {
        self.providers.iter().position(|p| p.issuer == issuer)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    providers: Vec<RawProvider>,
    #[serde(default)]
    token_from: Option<Vec<RawSource>>,
    #[serde(default)]
    forward_claims: BTreeMap<String, String>,
    #[serde(default)]
    clock_skew: Option<RawDuration>,
    #[serde(default)]
    allow_missing: bool,
    /// Any JSON value, so that a wrong one gets an error naming the field.
    #[serde(default)]
    token_cache: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    issuer: String,
    #[serde(default)]
    audiences: Option<OneOrMany>,
    #[serde(default)]
    jwks: Option<Value>,
    #[serde(default)]
    jwks_upstream: Option<RawUpstream>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    upstream: String,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    authority: Option<String>,
    #[serde(default)]
    refresh: Option<RawDuration>,
    #[serde(default)]
    timeout: Option<RawDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    cookie: Option<String>,
}

/// `300s`, `5m`, `500ms`, `1h`, `1.5s`, or a number of seconds.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawDuration {
    Seconds(f64),
    Text(String),
}

impl RawDuration {
    fn get(&self, field: &str) -> Result<Duration, String> {
        let parsed = match self {
            RawDuration::Seconds(secs) => seconds(*secs),
            RawDuration::Text(text) => parse_duration(text),
        };
        parsed.map_err(|err| format!("`{field}`: {err}"))
    }
}

fn seconds(secs: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{secs} is not a duration"))
}

/// Parses `<number><unit>` with unit `ms`, `s`, `m` or `h` (`300s`, `1.5s`, `5m`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || format!("`{text}` is not a duration such as 500ms, 30s, 5m or 1h");
    let number: f64 = number.parse().map_err(|_| bad())?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    seconds(number * scale).map_err(|_| bad())
}

impl RawConfig {
    fn check(self) -> Result<Config, String> {
        if self.providers.is_empty() {
            return Err("`providers` must list at least one provider".to_owned());
        }
        let mut providers: Vec<Provider> = Vec::with_capacity(self.providers.len());
        for (i, raw) in self.providers.into_iter().enumerate() {
            let provider = raw
                .check()
                .map_err(|err| format!("providers[{i}]: {err}"))?;
            if providers.iter().any(|p| p.issuer == provider.issuer) {
                return Err(format!(
                    "providers[{i}]: issuer `{}` is configured twice",
                    provider.issuer
                ));
            }
            providers.push(provider);
        }
        let token_from = match self.token_from {
            None => vec![TokenSource::Header {
                name: "authorization".to_owned(),
                prefix: "Bearer ".to_owned(),
            }],
            Some(sources) if sources.is_empty() => {
                return Err("`token_from` must list at least one source".to_owned())
            }
            Some(sources) => sources
                .into_iter()
                .enumerate()
                .map(|(i, s)| s.check().map_err(|err| format!("token_from[{i}]: {err}")))
                .collect::<Result<_, _>>()?,
        };
        let mut forward_claims = Vec::with_capacity(self.forward_claims.len());
        for (claim, header) in self.forward_claims {
            if claim.is_empty() {
                return Err("forward_claims: a claim name is empty".to_owned());
            }
            let header =
                header_name(&header).map_err(|err| format!("forward_claims.{claim}: {err}"))?;
            if forward_claims.iter().any(|(_, h)| *h == header) {
                return Err(format!(
                    "forward_claims: header `{header}` is named for two claims"
                ));
            }
            let is_source = token_from
                .iter()
                .any(|s| matches!(s, TokenSource::Header { name, .. } if *name == header));
            if is_source || header == "cookie" {
                return Err(format!(
                    "forward_claims.{claim}: header `{header}` carries the token; it cannot \
                     also receive a claim"
                ));
            }
            forward_claims.push((claim, header));
        }
        forward_claims.sort_by(|a, b| a.1.cmp(&b.1));
        let clock_skew = match self.clock_skew {
            Some(skew) => skew.get("clock_skew")?,
            None => DEFAULT_CLOCK_SKEW,
        };
        let token_cache = match self.token_cache {
            None => DEFAULT_TOKEN_CACHE,
            Some(value) => value
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| *n <= MAX_TOKEN_CACHE)
                .ok_or_else(|| {
                    format!(
                        "`token_cache`: {value} is not a number of tokens from 0 (no cache) \
                         to {MAX_TOKEN_CACHE}"
                    )
                })?,
        };
        Ok(Config {
            providers,
            token_from,
            forward_claims,
            clock_skew,
            allow_missing: self.allow_missing,
            token_cache,
        })
    }
}

impl RawProvider {
    fn check(self) -> Result<Provider, String> {
        if self.issuer.is_empty() {
            return Err("`issuer` must not be empty".to_owned());
        }
        let audiences = match self.audiences {
            None => Vec::new(),
            Some(OneOrMany::One(aud)) => vec![aud],
            Some(OneOrMany::Many(auds)) => auds,
        };
        if audiences.iter().any(String::is_empty) {
            return Err("`audiences` must not contain an empty audience".to_owned());
        }
        let keys = match (self.jwks, self.jwks_upstream) {
            (Some(jwks), None) => {
                let parsed = jwk::parse(&jwks).map_err(|err| format!("jwks: {err}"))?;
                if let Some(problem) = parsed.skipped.first() {
                    return Err(format!("jwks: {problem}"));
                }
                if parsed.keys.keys.is_empty() {
                    return Err("jwks: no keys".to_owned());
                }
                KeysFrom::Inline(Rc::new(parsed.keys))
            }
            (None, Some(upstream)) => KeysFrom::Upstream(upstream.check()?),
            _ => {
                return Err(
                    "exactly one of `jwks` (inline keys) and `jwks_upstream` is required"
                        .to_owned(),
                )
            }
        };
        Ok(Provider {
            issuer: self.issuer,
            audiences,
            keys,
        })
    }
}

impl RawUpstream {
    fn check(self) -> Result<JwksUpstream, String> {
        if self.upstream.is_empty() {
            return Err("jwks_upstream: `upstream` must not be empty".to_owned());
        }
        let path = self.path.unwrap_or_else(|| DEFAULT_JWKS_PATH.to_owned());
        if !path.starts_with('/') {
            return Err(format!("jwks_upstream: `path` `{path}` must start with /"));
        }
        let refresh = match self.refresh {
            Some(refresh) => refresh.get("jwks_upstream.refresh")?,
            None => DEFAULT_REFRESH,
        };
        if refresh < MIN_REFRESH {
            return Err(format!(
                "jwks_upstream.refresh: {refresh:?} is shorter than {MIN_REFRESH:?}"
            ));
        }
        let timeout = match self.timeout {
            Some(timeout) => timeout.get("jwks_upstream.timeout")?,
            None => DEFAULT_FETCH_TIMEOUT,
        };
        if timeout.is_zero() {
            return Err("jwks_upstream.timeout: must not be 0".to_owned());
        }
        let authority = self.authority.unwrap_or_else(|| self.upstream.clone());
        if authority.is_empty() {
            return Err("jwks_upstream: `authority` must not be empty".to_owned());
        }
        Ok(JwksUpstream {
            upstream: self.upstream,
            path,
            authority,
            refresh,
            timeout,
        })
    }
}

impl RawSource {
    fn check(self) -> Result<TokenSource, String> {
        let prefix_only_with_header = || "`prefix` goes only with `header`".to_owned();
        let source = match (self.header, self.query, self.cookie) {
            (Some(header), None, None) => TokenSource::Header {
                name: header_name(&header)?,
                prefix: self.prefix.unwrap_or_default(),
            },
            (None, Some(_), None) | (None, None, Some(_)) if self.prefix.is_some() => {
                return Err(prefix_only_with_header())
            }
            (None, Some(query), None) => TokenSource::Query(query),
            (None, None, Some(cookie)) => TokenSource::Cookie(cookie),
            _ => return Err("a source is exactly one of `header`, `query` and `cookie`".to_owned()),
        };
        match &source {
            TokenSource::Query(name) | TokenSource::Cookie(name) if name.is_empty() => {
                Err("the parameter or cookie name must not be empty".to_owned())
            }
            _ => Ok(source),
        }
    }
}

/// A request header name a filter may read and write: an HTTP token, not a pseudo-header,
/// in lower case.
fn header_name(name: &str) -> Result<String, String> {
    let is_token_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(is_token_char) {
        return Err(format!("`{name}` is not a valid header name"));
    }
    let name = name.to_ascii_lowercase();
    if name == "host" {
        return Err("`host` cannot be used".to_owned());
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_keys;
    use serde_json::json;

    fn parse(value: Value) -> Result<Config, String> {
        Config::parse(value.to_string().as_bytes())
    }

    fn inline_jwks() -> Value {
        json!({"keys": [test_keys::get().hmac_jwk("h", None)]})
    }

    #[test]
    fn the_documented_example_parses() {
        let config = parse(json!({
            "providers": [
                {"issuer": "https://issuer.example.com", "audiences": ["edge-api"],
                 "jwks": inline_jwks()},
                {"issuer": "https://idp.example.com",
                 "jwks_upstream": {"upstream": "idp", "path": "/.well-known/jwks.json",
                                   "refresh": "300s"}},
            ],
            "token_from": [
                {"header": "Authorization", "prefix": "Bearer "},
                {"query": "access_token"},
                {"cookie": "session"},
            ],
            "forward_claims": {"sub": "x-user-id", "email": "X-User-Email"},
            "clock_skew": "60s",
            "allow_missing": false,
            "token_cache": 100,
        }))
        .unwrap();
        assert_eq!(config.providers.len(), 2);
        assert_eq!(config.providers[0].audiences, ["edge-api"]);
        assert!(matches!(config.providers[0].keys, KeysFrom::Inline(_)));
        let KeysFrom::Upstream(upstream) = &config.providers[1].keys else {
            panic!("an upstream provider")
        };
        assert_eq!(
            *upstream,
            JwksUpstream {
                upstream: "idp".into(),
                path: "/.well-known/jwks.json".into(),
                authority: "idp".into(),
                refresh: Duration::from_secs(300),
                timeout: DEFAULT_FETCH_TIMEOUT,
            }
        );
        assert_eq!(
            config.token_from,
            [
                TokenSource::Header {
                    name: "authorization".into(),
                    prefix: "Bearer ".into()
                },
                TokenSource::Query("access_token".into()),
                TokenSource::Cookie("session".into()),
            ]
        );
        assert_eq!(
            config.forward_claims,
            [
                ("email".to_owned(), "x-user-email".to_owned()),
                ("sub".to_owned(), "x-user-id".to_owned())
            ]
        );
        assert_eq!(config.clock_skew, Duration::from_secs(60));
        assert_eq!(config.token_cache, 100);
        assert_eq!(config.provider_for("https://idp.example.com"), Some(1));
        assert_eq!(config.provider_for("https://idp.example.com/"), None);
    }

    #[test]
    fn defaults() {
        let config = parse(json!({
            "providers": [{"issuer": "i", "audiences": "one",
                           "jwks_upstream": {"upstream": "idp"}}],
        }))
        .unwrap();
        assert_eq!(
            config.token_from,
            [TokenSource::Header {
                name: "authorization".into(),
                prefix: "Bearer ".into()
            }]
        );
        assert!(config.forward_claims.is_empty());
        assert_eq!(config.clock_skew, DEFAULT_CLOCK_SKEW);
        assert!(!config.allow_missing);
        assert_eq!(config.token_cache, DEFAULT_TOKEN_CACHE);
        assert_eq!(config.providers[0].audiences, ["one"]);
        let KeysFrom::Upstream(upstream) = &config.providers[0].keys else {
            panic!("an upstream provider")
        };
        assert_eq!(upstream.path, DEFAULT_JWKS_PATH);
        assert_eq!(upstream.refresh, DEFAULT_REFRESH);
    }

    #[test]
    fn durations() {
        for (text, expected) in [
            ("300s", Duration::from_secs(300)),
            ("5m", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
            ("500ms", Duration::from_millis(500)),
            ("1.5s", Duration::from_millis(1500)),
            ("0s", Duration::ZERO),
            (" 2 s ", Duration::from_secs(2)),
        ] {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
        for bad in ["", "s", "10", "10d", "-1s", "1e3s", "1..2s", "ten s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        let config = parse(json!({
            "providers": [{"issuer": "i", "jwks_upstream": {"upstream": "u", "refresh": 2}}],
            "clock_skew": 0,
        }))
        .unwrap();
        assert_eq!(config.clock_skew, Duration::ZERO);
        let KeysFrom::Upstream(upstream) = &config.providers[0].keys else {
            panic!("an upstream provider")
        };
        assert_eq!(upstream.refresh, Duration::from_secs(2));
    }

    #[test]
    fn token_cache_sizes() {
        let with = |size: Value| {
            parse(
                json!({"providers": [{"issuer": "i", "jwks": inline_jwks()}],
                         "token_cache": size}),
            )
            .map(|config| config.token_cache)
        };
        assert_eq!(with(json!(0)), Ok(0));
        assert_eq!(with(json!(1)), Ok(1));
        assert_eq!(with(json!(MAX_TOKEN_CACHE)), Ok(MAX_TOKEN_CACHE));
        assert!(with(json!(MAX_TOKEN_CACHE + 1)).is_err());
        // Like every optional key, null is the default.
        assert_eq!(with(json!(null)), Ok(DEFAULT_TOKEN_CACHE));
    }

    #[test]
    fn mistakes_are_named() {
        let jwks = inline_jwks();
        let cases = [
            (json!({}), "missing field `providers`"),
            (json!({"providers": []}), "at least one provider"),
            (json!({"providers": [{"issuer": "i"}]}), "exactly one of"),
            (
                json!({"providers": [{"issuer": "i", "jwks": jwks, "jwks_upstream": {"upstream": "u"}}]}),
                "exactly one of",
            ),
            (
                json!({"providers": [{"issuer": "", "jwks": jwks}]}),
                "`issuer`",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": jwks}, {"issuer": "i", "jwks": jwks}]}),
                "providers[1]: issuer `i` is configured twice",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": {"keys": []}}]}),
                "no keys",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": {"keys": [{"kty": "oct", "k": ""}]}}]}),
                "providers[0]: jwks: key 0: empty `k`",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks_upstream": {"upstream": "u", "path": "x"}}]}),
                "must start with /",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks_upstream": {"upstream": "u", "refresh": "10ms"}}]}),
                "shorter than",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks_upstream": {"upstream": "u", "refresh": "soon"}}]}),
                "jwks_upstream.refresh",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks_upstream": {"upstream": ""}}]}),
                "`upstream` must not be empty",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": jwks, "audience": "x"}]}),
                "unknown field `audience`",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": jwks}], "token_from": []}),
                "at least one source",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": jwks}], "token_from": [{"header": "a", "query": "b"}]}),
                "token_from[0]: a source is exactly one of",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": jwks}], "token_from": [{"query": "a", "prefix": "b"}]}),
                "`prefix` goes only with `header`",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": jwks}], "token_from": [{"header": "bad header"}]}),
                "not a valid header name",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": jwks}], "forward_claims": {"sub": ":path"}}),
                "not a valid header name",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": jwks}], "forward_claims": {"sub": "x-a", "id": "X-A"}}),
                "named for two claims",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": jwks}], "forward_claims": {"sub": "Authorization"}}),
                "carries the token",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": jwks}], "clock_skew": "later"}),
                "`clock_skew`",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": jwks}], "extra": 1}),
                "unknown field `extra`",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": jwks}], "token_cache": -1}),
                "`token_cache`: -1 is not a number of tokens from 0 (no cache) to 10000",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": jwks}], "token_cache": 10_001}),
                "`token_cache`: 10001 is not",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": jwks}], "token_cache": 1.5}),
                "`token_cache`: 1.5 is not",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": jwks}], "token_cache": "100"}),
                "`token_cache`: \"100\" is not",
            ),
        ];
        for (config, expected) in cases {
            let err = parse(config.clone()).unwrap_err();
            assert!(err.contains(expected), "{config}: {err}");
        }
    }
}
