//! The configuration and the choice of an upstream. SDK-free, tested natively.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::Deserialize;

/// The response header value when the request had no country.
pub const UNKNOWN_COUNTRY: &str = "unknown";

/// MaxMind's continent codes.
pub const CONTINENTS: &[&str] = &["AF", "AN", "AS", "EU", "NA", "OC", "SA"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    countries: BTreeMap<String, String>,
    #[serde(default)]
    continents: BTreeMap<String, String>,
    #[serde(default)]
    default: Option<String>,
    #[serde(default)]
    response_header: Option<String>,
}

/// The routing table, built once at configure time.
#[derive(Debug, PartialEq, Eq)]
pub struct Router {
    /// Upper-case ISO 3166-1 alpha-2 code → upstream.
    countries: HashMap<String, String>,
    /// Upper-case continent code → upstream.
    continents: HashMap<String, String>,
    default: Option<String>,
    response_header: Option<String>,
}

/// Which rule chose the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    Country,
    Continent,
    Default,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rule::Country => "country",
            Rule::Continent => "continent",
            Rule::Default => "default",
        })
    }
}

/// The upstream picked for a request, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice<'a> {
    pub upstream: &'a str,
    pub rule: Rule,
}

impl Router {
    /// Parses the plugin configuration (JSON). It is required: a missing or empty one, or one
    /// that routes nothing (no `countries`, `continents` nor `default`), is refused, as are
    /// unknown keys, country codes that are not two letters, unknown continent codes, codes
    /// given twice (case-insensitively), empty upstream names and invalid header names.
    pub fn parse(raw: Option<&[u8]>) -> Result<Router, String> {
        let raw: RawConfig = match raw {
            Some(raw) if !raw.iter().all(u8::is_ascii_whitespace) => {
                serde_json::from_slice(raw).map_err(|err| err.to_string())?
            }
            _ => {
                return Err(
                    "a configuration is required, with `countries`, `continents` or `default`"
                        .to_owned(),
                )
            }
        };
        let countries = codes("countries", raw.countries, |code| {
            code.len() == 2 && code.bytes().all(|b| b.is_ascii_alphabetic())
        })?;
        let continents = codes("continents", raw.continents, |code| {
            CONTINENTS.contains(&code)
        })?;
        let default = match raw.default {
            Some(name) => Some(upstream_name("default", name)?),
            None => None,
        };
        let response_header = match raw.response_header {
            Some(name) => Some(header_name(&name)?),
            None => None,
        };
        if countries.is_empty() && continents.is_empty() && default.is_none() {
            return Err(
                "the configuration routes nothing: give `countries`, `continents` or `default`"
                    .to_owned(),
            );
        }
        Ok(Router {
            countries,
            continents,
            default,
            response_header,
        })
    }

    /// The response header that tells the client the country, if configured (lower case).
    pub fn response_header(&self) -> Option<&str> {
        self.response_header.as_deref()
    }

    /// Picks the upstream for a request from `country` (an upper-case code, see
    /// [`normalize_code`]): by country, else by continent (`continent` is only called when the
    /// country did not decide and continents are configured), else the default. `None`: no
    /// rule applies, the route's own upstream is kept.
    pub fn choose<F>(&self, country: Option<&str>, continent: F) -> Option<Choice<'_>>
    where
        F: FnOnce() -> Option<String>,
    {
        if let Some(upstream) = country.and_then(|code| self.countries.get(code)) {
            return Some(Choice {
                upstream,
                rule: Rule::Country,
            });
        }
        if !self.continents.is_empty() {
            if let Some(upstream) = continent().and_then(|code| self.continents.get(&code)) {
                return Some(Choice {
                    upstream,
                    rule: Rule::Continent,
                });
            }
        }
        self.default.as_deref().map(|upstream| Choice {
            upstream,
            rule: Rule::Default,
        })
    }
}

/// A country or continent code as read from a property: UTF-8, trimmed, upper-cased; `None`
/// for a missing, empty or non-UTF-8 value.
pub fn normalize_code(value: Option<Vec<u8>>) -> Option<String> {
    let text = String::from_utf8(value?).ok()?;
    let code = text.trim();
    (!code.is_empty()).then(|| code.to_ascii_uppercase())
}

/// The value of the response header: the country code, or [`UNKNOWN_COUNTRY`].
pub fn country_header_value(country: Option<&str>) -> &str {
    country.unwrap_or(UNKNOWN_COUNTRY)
}

fn codes(
    key: &str,
    raw: BTreeMap<String, String>,
    valid: impl Fn(&str) -> bool,
) -> Result<HashMap<String, String>, String> {
    let mut table = HashMap::with_capacity(raw.len());
    for (code, upstream) in raw {
        let upper = code.trim().to_ascii_uppercase();
        if !valid(&upper) {
            let expected = if key == "countries" {
                "a two-letter ISO 3166-1 country code such as `JP`".to_owned()
            } else {
                format!("one of {}", CONTINENTS.join(", "))
            };
            return Err(format!("{key}: `{code}` is not {expected}"));
        }
        let upstream = upstream_name(&format!("{key}.{code}"), upstream)?;
        if table.insert(upper.clone(), upstream).is_some() {
            return Err(format!(
                "{key}: `{upper}` is given twice (codes are case-insensitive)"
            ));
        }
    }
    Ok(table)
}

fn upstream_name(key: &str, name: String) -> Result<String, String> {
    if name.trim().is_empty() {
        return Err(format!("{key}: empty upstream name"));
    }
    Ok(name)
}

fn header_name(name: &str) -> Result<String, String> {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c));
    if !valid {
        return Err(format!(
            "response_header: `{name}` is not a valid header name"
        ));
    }
    Ok(name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The brief's example configuration, as the host delivers it (JSON).
    const EXAMPLE: &str = r#"{
        "countries": { "JP": "origin-apac", "KR": "origin-apac", "SG": "origin-apac",
                       "DE": "origin-eu", "FR": "origin-eu", "GB": "origin-eu" },
        "continents": { "OC": "origin-apac" },
        "default": "origin-us",
        "response_header": "x-edge-country"
    }"#;

    fn router(json: &str) -> Router {
        Router::parse(Some(json.as_bytes())).unwrap()
    }

    fn parse_error(json: &str) -> String {
        Router::parse(Some(json.as_bytes())).unwrap_err()
    }

    fn choose<'a>(
        router: &'a Router,
        country: Option<&str>,
        continent: Option<&str>,
    ) -> Option<(&'a str, Rule)> {
        router
            .choose(country, || continent.map(str::to_owned))
            .map(|choice| (choice.upstream, choice.rule))
    }

    #[test]
    fn country_then_continent_then_default() {
        let router = router(EXAMPLE);
        assert_eq!(
            choose(&router, Some("JP"), Some("AS")),
            Some(("origin-apac", Rule::Country))
        );
        assert_eq!(
            choose(&router, Some("DE"), Some("EU")),
            Some(("origin-eu", Rule::Country))
        );
        // AU is not listed, but Oceania is.
        assert_eq!(
            choose(&router, Some("AU"), Some("OC")),
            Some(("origin-apac", Rule::Continent))
        );
        // Neither listed: the default.
        assert_eq!(
            choose(&router, Some("US"), Some("NA")),
            Some(("origin-us", Rule::Default))
        );
        // No geo data at all: the default.
        assert_eq!(
            choose(&router, None, None),
            Some(("origin-us", Rule::Default))
        );
        // A continent alone (no country) still routes.
        assert_eq!(
            choose(&router, None, Some("OC")),
            Some(("origin-apac", Rule::Continent))
        );
        assert_eq!(router.response_header(), Some("x-edge-country"));
    }

    #[test]
    fn without_default_unmatched_requests_keep_their_route() {
        let router = router(r#"{"countries": {"JP": "origin-apac"}}"#);
        assert_eq!(
            choose(&router, Some("JP"), None),
            Some(("origin-apac", Rule::Country))
        );
        assert_eq!(choose(&router, Some("FR"), Some("EU")), None);
        assert_eq!(choose(&router, None, None), None);
        assert_eq!(router.response_header(), None);
    }

    #[test]
    fn the_continent_is_read_only_when_needed() {
        let router = router(EXAMPLE);
        let mut reads = 0;
        router.choose(Some("JP"), || {
            reads += 1;
            None
        });
        assert_eq!(reads, 0, "a country match needs no continent");
        router.choose(Some("US"), || {
            reads += 1;
            None
        });
        assert_eq!(reads, 1);

        let no_continents = Router::parse(Some(br#"{"default": "origin-us"}"#)).unwrap();
        no_continents.choose(Some("US"), || {
            reads += 1;
            None
        });
        assert_eq!(reads, 1, "no continents configured: never read");
    }

    #[test]
    fn codes_are_case_insensitive() {
        let router =
            router(r#"{"countries": {"jp": "origin-apac"}, "continents": {"oc": "origin-oc"}}"#);
        let country = normalize_code(Some(b"jp".to_vec()));
        assert_eq!(country.as_deref(), Some("JP"));
        assert_eq!(
            choose(&router, country.as_deref(), None),
            Some(("origin-apac", Rule::Country))
        );
        let continent = normalize_code(Some(b" Oc ".to_vec()));
        assert_eq!(
            choose(&router, None, continent.as_deref()),
            Some(("origin-oc", Rule::Continent))
        );
    }

    #[test]
    fn codes_from_properties_are_normalized() {
        assert_eq!(normalize_code(None), None);
        assert_eq!(normalize_code(Some(Vec::new())), None);
        assert_eq!(normalize_code(Some(b"  ".to_vec())), None);
        assert_eq!(normalize_code(Some(b"\xff\xfe".to_vec())), None);
        assert_eq!(normalize_code(Some(b"de".to_vec())).as_deref(), Some("DE"));
    }

    #[test]
    fn the_response_header_says_unknown_without_a_country() {
        assert_eq!(country_header_value(Some("JP")), "JP");
        assert_eq!(country_header_value(None), "unknown");
    }

    #[test]
    fn bad_configurations_are_refused() {
        let cases = [
            ("{}", "routes nothing"),
            (r#"{"response_header": "x-c"}"#, "routes nothing"),
            (
                r#"{"countries": {"Japan": "a"}}"#,
                "`Japan` is not a two-letter ISO 3166-1",
            ),
            (r#"{"countries": {"J1": "a"}}"#, "`J1` is not a two-letter"),
            (
                r#"{"continents": {"XX": "a"}}"#,
                "`XX` is not one of AF, AN, AS, EU, NA, OC, SA",
            ),
            (
                r#"{"countries": {"JP": "a", "jp": "b"}}"#,
                "`JP` is given twice",
            ),
            (
                r#"{"countries": {"JP": ""}}"#,
                "countries.JP: empty upstream name",
            ),
            (r#"{"default": " "}"#, "default: empty upstream name"),
            (
                r#"{"default": "a", "response_header": "x c"}"#,
                "`x c` is not a valid header name",
            ),
            (
                r#"{"default": "a", "response_header": ""}"#,
                "is not a valid header name",
            ),
            (
                r#"{"default": "a", "contries": {}}"#,
                "unknown field `contries`",
            ),
            (r#"{"countries": {"JP": 1}}"#, "invalid type"),
            ("[", "EOF"),
        ];
        for (json, message) in cases {
            let err = parse_error(json);
            assert!(err.contains(message), "{json}: {err}");
        }
        assert!(Router::parse(None)
            .unwrap_err()
            .contains("a configuration is required"));
        assert!(Router::parse(Some(b""))
            .unwrap_err()
            .contains("a configuration is required"));
    }

    #[test]
    fn a_default_alone_is_enough() {
        let router = router(r#"{"default": "origin-us", "response_header": "X-Edge-Country"}"#);
        assert_eq!(
            choose(&router, Some("JP"), Some("AS")),
            Some(("origin-us", Rule::Default))
        );
        assert_eq!(router.response_header(), Some("x-edge-country"));
    }
}
