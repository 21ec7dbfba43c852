//! The filter's configuration: JSON (the proxy hands over its YAML `config:` as JSON), parsed
//! and checked once in `on_configure`. See the crate documentation for the schema.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// Keys tracked per limit unless `capacity` says otherwise.
pub const DEFAULT_CAPACITY: u32 = 10_000;
/// The largest `capacity`: about 52 bytes of shared data per key, so 13 MB per limit.
pub const MAX_CAPACITY: u32 = 250_000;
/// Entries per row of a limit's table: a key may live in any of its row's entries.
pub const WAYS: u32 = 4;
/// Most limits one filter applies: each costs a shared-data read and write per request.
pub const MAX_LIMITS: usize = 16;
/// Most parts one key is made of.
pub const MAX_KEY_PARTS: usize = 8;
/// The largest `rate` and `burst`.
pub const MAX_TOKENS: u64 = 1_000_000;
/// The longest `per`: 30 days.
pub const MAX_PERIOD_SECS: u64 = 30 * 86_400;

#[derive(Debug, PartialEq, Eq)]
pub struct Config {
    pub limits: Vec<Limit>,
    pub dry_run: bool,
    pub headers: HeadersOn,
}

/// Which responses carry the `RateLimit-Policy` and `RateLimit` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadersOn {
    /// Only refusals (`429`).
    Refused,
    /// Every response of a request the limits counted.
    Always,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// Letters, digits, `-` and `_`: it is a metric label and part of shared-data keys.
    pub name: String,
    /// Tokens added per `period_secs`.
    pub rate: u64,
    pub period_secs: u64,
    /// The bucket's size: the most requests admitted at once.
    pub burst: u64,
    /// What the bucket is keyed by, in order; empty: one bucket for every request.
    pub key: Vec<KeyPart>,
    /// Rows of `WAYS` entries in the limit's shared table.
    pub rows: u32,
}

/// One part of a limit's key: where its value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    /// The client's IP (`source.effective_address`: after edgeward's trusted proxies).
    ClientAddress,
    /// The route's name.
    Route,
    /// A request header (lower case).
    Header(String),
    /// A JWT claim, read from the request header jwt-auth forwards it in (lower case).
    Claim { claim: String, header: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Any JSON values, so that an error names the limit.
    limits: Vec<Value>,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    headers: Option<HeadersOn>,
    #[serde(default)]
    claim_headers: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    name: String,
    rate: u64,
    per: RawPeriod,
    #[serde(default)]
    burst: Option<u64>,
    #[serde(default)]
    key: Vec<RawKeyPart>,
    #[serde(default)]
    capacity: Option<u32>,
}

/// `1s`, `30s`, `1m`, `1h`, `1d`, or a number of seconds.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawPeriod {
    Seconds(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum RawKeyPart {
    ClientAddress,
    Route,
    Header(String),
    Claim(String),
}

impl Config {
    /// Parses and checks the configuration; the error names the key that is wrong, e.g.
    /// ``limits[1] (`hourly`).burst: must be at least 1``.
    pub fn parse(json: &[u8]) -> Result<Config, String> {
        let raw: RawConfig = serde_json::from_slice(json).map_err(|err| err.to_string())?;
        let claim_headers = raw
            .claim_headers
            .into_iter()
            .map(|(claim, header)| {
                header_name(&header)
                    .map(|header| (claim.clone(), header))
                    .map_err(|err| format!("claim_headers.{claim}: {err}"))
            })
            .collect::<Result<BTreeMap<_, _>, _>>()?;
        if raw.limits.is_empty() {
            return Err("`limits` must list at least one limit".to_owned());
        }
        if raw.limits.len() > MAX_LIMITS {
            return Err(format!("`limits`: at most {MAX_LIMITS} limits per filter"));
        }
        let mut limits: Vec<Limit> = Vec::with_capacity(raw.limits.len());
        for (i, value) in raw.limits.into_iter().enumerate() {
            let name = value.get("name").and_then(Value::as_str).unwrap_or("");
            let at = if name.is_empty() {
                format!("limits[{i}]")
            } else {
                format!("limits[{i}] (`{name}`)")
            };
            let limit = serde_json::from_value::<RawLimit>(value)
                .map_err(|err| err.to_string())
                .and_then(|raw| raw.check(&claim_headers))
                .map_err(|err| format!("{at}: {err}"))?;
            if limits.iter().any(|other| other.name == limit.name) {
                return Err(format!("{at}.name: `{}` is used twice", limit.name));
            }
            limits.push(limit);
        }
        Ok(Config {
            limits,
            dry_run: raw.dry_run,
            headers: raw.headers.unwrap_or(HeadersOn::Refused),
        })
    }
}

impl RawLimit {
    fn check(self, claim_headers: &BTreeMap<String, String>) -> Result<Limit, String> {
        let name_ok = (1..=64).contains(&self.name.len())
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name_ok {
            return Err(format!(
                "name: `{}` must be 1 to 64 letters, digits, `-` or `_`",
                self.name
            ));
        }
        let tokens = |field: &str, value: u64| {
            if (1..=MAX_TOKENS).contains(&value) {
                Ok(value)
            } else {
                Err(format!("{field}: must be between 1 and {MAX_TOKENS}"))
            }
        };
        let rate = tokens("rate", self.rate)?;
        let burst = tokens("burst", self.burst.unwrap_or(rate))?;
        let period_secs = self.per.seconds().map_err(|err| format!("per: {err}"))?;
        let capacity = self.capacity.unwrap_or(DEFAULT_CAPACITY);
        if !(WAYS..=MAX_CAPACITY).contains(&capacity) {
            return Err(format!(
                "capacity: must be between {WAYS} and {MAX_CAPACITY} keys"
            ));
        }
        if self.key.len() > MAX_KEY_PARTS {
            return Err(format!("key: at most {MAX_KEY_PARTS} parts"));
        }
        let key = self
            .key
            .into_iter()
            .map(|part| part.check(claim_headers))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| format!("key: {err}"))?;
        Ok(Limit {
            name: self.name,
            rate,
            period_secs,
            burst,
            key,
            rows: capacity.div_ceil(WAYS),
        })
    }
}

impl RawPeriod {
    fn seconds(&self) -> Result<u64, String> {
        let secs = match self {
            RawPeriod::Seconds(secs) => Some(*secs),
            RawPeriod::Text(text) => parse_period(text),
        };
        let bad = || match self {
            RawPeriod::Seconds(secs) => format!("{secs} seconds"),
            RawPeriod::Text(text) => format!("`{text}`"),
        };
        match secs {
            Some(secs) if (1..=MAX_PERIOD_SECS).contains(&secs) => Ok(secs),
            _ => Err(format!(
                "{} is not a whole number of seconds, minutes, hours or days from 1s to 30d \
                 (such as 1s, 10s, 1m, 1h, 1d)",
                bad()
            )),
        }
    }
}

/// `<whole number><s|m|h|d>` in seconds.
fn parse_period(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let scale = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    number.parse::<u64>().ok()?.checked_mul(scale)
}

impl RawKeyPart {
    fn check(self, claim_headers: &BTreeMap<String, String>) -> Result<KeyPart, String> {
        Ok(match self {
            RawKeyPart::ClientAddress => KeyPart::ClientAddress,
            RawKeyPart::Route => KeyPart::Route,
            RawKeyPart::Header(name) => {
                KeyPart::Header(header_name(&name).map_err(|err| format!("header: {err}"))?)
            }
            RawKeyPart::Claim(claim) => match claim_headers.get(&claim) {
                Some(header) => KeyPart::Claim {
                    claim,
                    header: header.clone(),
                },
                None => {
                    return Err(format!(
                        "claim: `{claim}` is not in `claim_headers` (the claim -> header map \
                         of jwt-auth's `forward_claims`)"
                    ))
                }
            },
        })
    }
}

/// A request header name, lower-cased; pseudo-headers and names with characters HTTP does
/// not allow are refused.
fn header_name(name: &str) -> Result<String, String> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(format!("`{name}` is not a header name"));
    }
    Ok(name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Value) -> Result<Config, String> {
        Config::parse(value.to_string().as_bytes())
    }

    #[test]
    fn a_full_configuration() {
        let config = parse(json!({
            "claim_headers": {"sub": "X-User-Id"},
            "limits": [
                {"name": "per-second", "rate": 10, "per": "1s", "burst": 20,
                 "key": ["client_address", {"header": "X-Api-Key"}]},
                {"name": "hourly", "rate": 1000, "per": "1h", "capacity": 10,
                 "key": [{"claim": "sub"}, "route"]},
                {"name": "global", "rate": 5, "per": 60},
            ],
            "dry_run": true,
            "headers": "always",
        }))
        .unwrap();
        assert_eq!(
            config,
            Config {
                limits: vec![
                    Limit {
                        name: "per-second".into(),
                        rate: 10,
                        period_secs: 1,
                        burst: 20,
                        key: vec![KeyPart::ClientAddress, KeyPart::Header("x-api-key".into())],
                        rows: 2500,
                    },
                    Limit {
                        name: "hourly".into(),
                        rate: 1000,
                        period_secs: 3600,
                        burst: 1000,
                        key: vec![
                            KeyPart::Claim {
                                claim: "sub".into(),
                                header: "x-user-id".into()
                            },
                            KeyPart::Route
                        ],
                        rows: 3,
                    },
                    Limit {
                        name: "global".into(),
                        rate: 5,
                        period_secs: 60,
                        burst: 5,
                        key: vec![],
                        rows: 2500,
                    },
                ],
                dry_run: true,
                headers: HeadersOn::Always,
            }
        );
    }

    #[test]
    fn defaults() {
        let config = parse(json!({"limits": [{"name": "a", "rate": 1, "per": "1d"}]})).unwrap();
        assert!(!config.dry_run);
        assert_eq!(config.headers, HeadersOn::Refused);
        assert_eq!(config.limits[0].period_secs, 86_400);
        assert_eq!(config.limits[0].burst, 1);
    }

    #[test]
    fn periods() {
        for (text, secs) in [
            ("1s", 1),
            ("10s", 10),
            ("5m", 300),
            ("2h", 7200),
            ("30d", 2_592_000),
        ] {
            assert_eq!(RawPeriod::Text(text.into()).seconds(), Ok(secs), "{text}");
        }
        for bad in [
            "",
            "s",
            "1",
            "0s",
            "1.5s",
            "500ms",
            "31d",
            "-1s",
            "1w",
            "99999999999999999999d",
        ] {
            assert!(RawPeriod::Text(bad.into()).seconds().is_err(), "{bad}");
        }
        assert!(RawPeriod::Seconds(0).seconds().is_err());
    }

    #[test]
    fn errors_name_the_key() {
        let limit = |extra: Value| {
            let mut limit = json!({"name": "hourly", "rate": 10, "per": "1h"});
            for (key, value) in extra.as_object().unwrap() {
                limit[key] = value.clone();
            }
            parse(json!({"limits": [limit]})).unwrap_err()
        };
        for (extra, expected) in [
            (
                json!({"burst": 0}),
                "limits[0] (`hourly`): burst: must be between 1 and",
            ),
            (
                json!({"rate": 0}),
                "limits[0] (`hourly`): rate: must be between 1 and",
            ),
            (
                json!({"per": "1w"}),
                "limits[0] (`hourly`): per: `1w` is not",
            ),
            (
                json!({"capacity": 2}),
                "limits[0] (`hourly`): capacity: must be between 4",
            ),
            (
                json!({"name": "a b"}),
                "limits[0] (`a b`): name: `a b` must be",
            ),
            (
                json!({"key": ["ip"]}),
                "limits[0] (`hourly`): unknown variant `ip`",
            ),
            (
                json!({"key": [{"header": ":path"}]}),
                "key: header: `:path` is not a header",
            ),
            (
                json!({"key": [{"claim": "sub"}]}),
                "key: claim: `sub` is not in `claim_headers`",
            ),
            (
                json!({"burts": 3}),
                "limits[0] (`hourly`): unknown field `burts`",
            ),
        ] {
            let err = limit(extra.clone());
            assert!(err.contains(expected), "{extra}: {err}");
        }
        let two = json!({"name": "x", "rate": 1, "per": "1s"});
        assert!(parse(json!({"limits": [two, two]}))
            .unwrap_err()
            .contains("limits[1] (`x`).name: `x` is used twice"));
        assert!(parse(json!({"limits": []}))
            .unwrap_err()
            .contains("`limits` must list"));
        assert!(parse(json!({}))
            .unwrap_err()
            .contains("missing field `limits`"));
        assert!(parse(json!({"limits": [two], "dry": true}))
            .unwrap_err()
            .contains("unknown field `dry`"));
        assert!(parse(json!({"limits": [two], "headers": "sometimes"}))
            .unwrap_err()
            .contains("unknown variant `sometimes`"));
        assert!(
            parse(json!({"limits": [two], "claim_headers": {"sub": "a b"}}))
                .unwrap_err()
                .contains("claim_headers.sub: `a b` is not a header name")
        );
        let many: Vec<Value> = (0..17)
            .map(|i| json!({"name": format!("l{i}"), "rate": 1, "per": "1s"}))
            .collect();
        assert!(parse(json!({"limits": many}))
            .unwrap_err()
            .contains("at most 16"));
        assert!(Config::parse(b"not json").is_err());
    }
}
