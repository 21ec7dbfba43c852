//! The configuration: the parts of the document and the bounds. SDK-free, tested natively.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::compose::Failure;
use crate::template::{is_token_char, Missing, Source, Target, Template};

/// Most parts one document may have: each is a callout per request.
pub const MAX_PARTS: usize = 32;
/// The host waits at most this long for a callout.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_PART_BYTES: usize = 256 * 1024;
pub const DEFAULT_MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// The host's own bound on a callout's answer body (16 MiB).
pub const HOST_MAX_CALLOUT_BYTES: usize = 16 * 1024 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    parts: BTreeMap<String, RawPart>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    max_part_bytes: Option<usize>,
    #[serde(default)]
    max_document_bytes: Option<usize>,
    #[serde(default)]
    cache_control: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPart {
    from: String,
    path: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    authority: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    required: bool,
}

/// One part of the document: a key and the callout that fills it.
#[derive(Debug)]
pub struct Part {
    pub name: String,
    pub upstream: String,
    pub path: Template,
    /// Lower-case names, in name order.
    pub headers: Vec<(String, Template)>,
    pub authority: String,
    pub timeout: Duration,
    pub required: bool,
}

/// What a part asks its upstream for one request (besides `:method`, `:authority`).
#[derive(Debug, PartialEq, Eq)]
pub struct CalloutRequest {
    pub path: String,
    pub headers: Vec<(String, String)>,
}

/// The whole configuration, checked.
#[derive(Debug)]
pub struct Composition {
    /// In name order: the order of the document's keys.
    pub parts: Vec<Part>,
    pub max_part_bytes: usize,
    pub max_document_bytes: usize,
    /// Sent with complete documents; documents with a failed part get `no-store`.
    pub cache_control: Option<String>,
}

impl Composition {
    /// Parses the plugin configuration (JSON); errors name the key.
    pub fn parse(raw: Option<&[u8]>) -> Result<Composition, String> {
        let raw: RawConfig = match raw {
            Some(raw) if !raw.iter().all(u8::is_ascii_whitespace) => {
                serde_json::from_slice(raw).map_err(|err| err.to_string())?
            }
            _ => return Err("a configuration with `parts` is required".to_owned()),
        };
        if raw.parts.is_empty() || raw.parts.len() > MAX_PARTS {
            return Err(format!(
                "parts: between 1 and {MAX_PARTS} parts are needed, found {}",
                raw.parts.len()
            ));
        }
        let default_timeout = match &raw.timeout {
            Some(text) => timeout("timeout", text)?,
            None => DEFAULT_TIMEOUT,
        };
        let max_part_bytes = bound(
            "max_part_bytes",
            raw.max_part_bytes,
            DEFAULT_MAX_PART_BYTES,
            HOST_MAX_CALLOUT_BYTES,
        )?;
        let max_document_bytes = bound(
            "max_document_bytes",
            raw.max_document_bytes,
            DEFAULT_MAX_DOCUMENT_BYTES,
            MAX_PARTS * HOST_MAX_CALLOUT_BYTES,
        )?;
        if let Some(value) = &raw.cache_control {
            if value.is_empty() || value.chars().any(|c| c.is_control() || !c.is_ascii()) {
                return Err(format!(
                    "cache_control: `{value}` is not a valid header value"
                ));
            }
        }
        let parts = raw
            .parts
            .into_iter()
            .map(|(name, part)| Part::parse(name, part, default_timeout))
            .collect::<Result<_, _>>()?;
        Ok(Composition {
            parts,
            max_part_bytes,
            max_document_bytes,
            cache_control: raw.cache_control,
        })
    }

    /// The first upstream a part names that is not in `callouts` (the filter's `callouts`,
    /// as the host lists them: names joined by `,`), with the part's name.
    pub fn uncallable(&self, callouts: &str) -> Option<(&str, &str)> {
        self.parts
            .iter()
            .find(|part| !callouts.split(',').any(|name| name == part.upstream))
            .map(|part| (part.name.as_str(), part.upstream.as_str()))
    }
}

impl Part {
    /// The callout for a request whose values `value` reads, or why there is none.
    pub fn request(
        &self,
        mut value: impl FnMut(&Source) -> Option<Vec<u8>>,
    ) -> Result<CalloutRequest, Failure> {
        let missing = |Missing(source)| Failure::MissingValue(source);
        let path = self
            .path
            .render(Target::Path, &mut value)
            .map_err(missing)?;
        if has_dot_segment(&path) {
            return Err(Failure::DotSegment);
        }
        let headers = self
            .headers
            .iter()
            .map(|(name, template)| {
                Ok((name.clone(), template.render(Target::Header, &mut value)?))
            })
            .collect::<Result<_, Missing>>()
            .map_err(missing)?;
        Ok(CalloutRequest { path, headers })
    }

    fn parse(name: String, raw: RawPart, default_timeout: Duration) -> Result<Part, String> {
        let key = format!("parts.{name}");
        if name.is_empty() || name == "errors" {
            return Err(format!(
                "{key}: a part needs a name other than `errors` (the key of the failures)"
            ));
        }
        if raw.from.trim().is_empty() {
            return Err(format!("{key}.from: empty upstream name"));
        }
        let path =
            Template::parse(&raw.path, is_path_char).map_err(|err| format!("{key}.path: {err}"))?;
        let sample = path.sample();
        if !sample.starts_with('/') {
            return Err(format!("{key}.path: `{}` must start with `/`", raw.path));
        }
        if has_dot_segment(&sample) {
            return Err(format!(
                "{key}.path: `{}` has a `.` or `..` segment",
                raw.path
            ));
        }
        let headers = raw
            .headers
            .into_iter()
            .map(|(header, value)| {
                let header_key = format!("{key}.headers.{header}");
                let lower = header.to_ascii_lowercase();
                if lower.is_empty() || !lower.chars().all(is_token_char) {
                    return Err(format!("{header_key}: not a valid header name"));
                }
                if lower == "host" {
                    return Err(format!("{header_key}: set the host with `authority`"));
                }
                let template = Template::parse(&value, |_| true)
                    .map_err(|err| format!("{header_key}: {err}"))?;
                Ok((lower, template))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let authority = raw.authority.unwrap_or_else(|| raw.from.clone());
        if authority.is_empty() || !authority.chars().all(|c| c.is_ascii_graphic()) {
            return Err(format!("{key}.authority: `{authority}` is not a host"));
        }
        let timeout = match &raw.timeout {
            Some(text) => timeout(&format!("{key}.timeout"), text)?,
            None => default_timeout,
        };
        Ok(Part {
            name,
            upstream: raw.from,
            path,
            headers,
            authority,
            timeout,
            required: raw.required,
        })
    }
}

/// Whether `path` (query excluded) has a `.` or `..` segment, which servers resolve away:
/// `/users/..` would ask for `/`.
pub fn has_dot_segment(path: &str) -> bool {
    let path = path.split('?').next().unwrap_or(path);
    path.split('/')
        .any(|segment| segment == "." || segment == "..")
}

/// Literal characters of a path template: visible ASCII, without what a URL may not hold
/// unencoded (RFC 3986) or what ends its path and query (`#`).
fn is_path_char(c: char) -> bool {
    c.is_ascii_graphic() && !matches!(c, '#' | '"' | '<' | '>' | '\\' | '^' | '`' | '|')
}

/// `500ms`, `2s`, `1m`: between 1 ms and the host's 300 s.
fn timeout(key: &str, text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, ""), |at| text.split_at(at));
    let duration = match (number.parse::<u64>(), unit) {
        (Ok(n), "ms") => Duration::from_millis(n),
        (Ok(n), "s") => Duration::from_secs(n),
        (Ok(n), "m") => Duration::from_secs(n.saturating_mul(60)),
        _ => {
            return Err(format!(
                "{key}: expected a duration like `500ms`, `2s` or `1m`, found `{text}`"
            ))
        }
    };
    if duration.is_zero() || duration > MAX_TIMEOUT {
        return Err(format!(
            "{key}: `{text}` is not between 1ms and {}s",
            MAX_TIMEOUT.as_secs()
        ));
    }
    Ok(duration)
}

fn bound(key: &str, value: Option<usize>, default: usize, max: usize) -> Result<usize, String> {
    match value {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(format!("{key}: {n} is not between 1 and {max}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{
        "parts": {
            "user": {"from": "users", "path": "/users/{path.2}"},
            "orders": {"from": "orders", "path": "/orders?user={path.2}", "timeout": "250ms",
                       "required": true, "authority": "orders.internal",
                       "headers": {"X-Request-Id": "{header.x-request-id}"}}
        },
        "timeout": "2s",
        "cache_control": "public, max-age=30"
    }"#;

    fn parse_error(json: &str) -> String {
        Composition::parse(Some(json.as_bytes())).unwrap_err()
    }

    #[test]
    fn the_example_parses_with_its_defaults() {
        let composition = Composition::parse(Some(EXAMPLE.as_bytes())).unwrap();
        let names: Vec<&str> = composition.parts.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["orders", "user"], "name order");
        let orders = &composition.parts[0];
        assert_eq!(orders.upstream, "orders");
        assert_eq!(orders.authority, "orders.internal");
        assert_eq!(orders.timeout, Duration::from_millis(250));
        assert!(orders.required);
        assert_eq!(orders.headers.len(), 1);
        assert_eq!(orders.headers[0].0, "x-request-id");
        let user = &composition.parts[1];
        assert_eq!(user.authority, "users");
        assert_eq!(user.timeout, Duration::from_secs(2));
        assert!(!user.required);
        assert_eq!(composition.max_part_bytes, DEFAULT_MAX_PART_BYTES);
        assert_eq!(composition.max_document_bytes, DEFAULT_MAX_DOCUMENT_BYTES);
        assert_eq!(
            composition.cache_control.as_deref(),
            Some("public, max-age=30")
        );

        let minimal =
            Composition::parse(Some(br#"{"parts": {"a": {"from": "u", "path": "/"}}}"#)).unwrap();
        assert_eq!(minimal.parts[0].timeout, DEFAULT_TIMEOUT);
        assert_eq!(minimal.cache_control, None);
    }

    #[test]
    fn upstreams_outside_the_callouts_are_found() {
        let composition = Composition::parse(Some(EXAMPLE.as_bytes())).unwrap();
        assert_eq!(composition.uncallable("users,orders"), None);
        assert_eq!(composition.uncallable("orders,users,other"), None);
        assert_eq!(composition.uncallable("users"), Some(("orders", "orders")));
        assert_eq!(
            composition.uncallable("order,users"),
            Some(("orders", "orders"))
        );
        assert_eq!(composition.uncallable(""), Some(("orders", "orders")));
    }

    #[test]
    fn bad_configurations_are_refused_naming_the_key() {
        let part = |json: &str| format!(r#"{{"parts": {{"p": {json}}}}}"#);
        let cases = [
            ("{}".to_owned(), "missing field `parts`"),
            (r#"{"parts": {}}"#.to_owned(), "parts: between 1 and 32"),
            (
                r#"{"parts": {"a": {"from": "u", "path": "/"}}, "extra": 1}"#.to_owned(),
                "unknown field `extra`",
            ),
            (
                part(r#"{"from": "u", "path": "/", "requird": true}"#),
                "unknown field `requird`",
            ),
            (part(r#"{"path": "/"}"#), "missing field `from`"),
            (
                part(r#"{"from": " ", "path": "/"}"#),
                "parts.p.from: empty upstream name",
            ),
            (
                part(r#"{"from": "u", "path": "users"}"#),
                "parts.p.path: `users` must start with `/`",
            ),
            (
                part(r#"{"from": "u", "path": "{path.1}"}"#),
                "must start with `/`",
            ),
            (
                part(r#"{"from": "u", "path": "/a/../b"}"#),
                "parts.p.path: `/a/../b` has a `.` or `..` segment",
            ),
            (
                part(r#"{"from": "u", "path": "/a/{nope.1}"}"#),
                "parts.p.path: `{nope.1}`: unknown source `nope`",
            ),
            (
                part(r#"{"from": "u", "path": "/a b"}"#),
                "parts.p.path: ' ' is not allowed",
            ),
            (
                part(r#"{"from": "u", "path": "/a#b"}"#),
                "'#' is not allowed",
            ),
            (
                part(r#"{"from": "u", "path": "/", "timeout": "soon"}"#),
                "parts.p.timeout: expected a duration",
            ),
            (
                part(r#"{"from": "u", "path": "/", "timeout": "0s"}"#),
                "parts.p.timeout: `0s` is not between 1ms and 300s",
            ),
            (
                part(r#"{"from": "u", "path": "/", "timeout": "301s"}"#),
                "not between 1ms and 300s",
            ),
            (
                part(r#"{"from": "u", "path": "/", "headers": {"x y": "1"}}"#),
                "parts.p.headers.x y: not a valid header name",
            ),
            (
                part(r#"{"from": "u", "path": "/", "headers": {":path": "1"}}"#),
                "not a valid header name",
            ),
            (
                part(r#"{"from": "u", "path": "/", "headers": {"Host": "1"}}"#),
                "set the host with `authority`",
            ),
            (
                part(r#"{"from": "u", "path": "/", "headers": {"x": "{header.}"}}"#),
                "parts.p.headers.x: `{header.}`",
            ),
            (
                part(r#"{"from": "u", "path": "/", "authority": "a b"}"#),
                "parts.p.authority: `a b` is not a host",
            ),
            (
                r#"{"parts": {"errors": {"from": "u", "path": "/"}}}"#.to_owned(),
                "parts.errors: a part needs a name other than `errors`",
            ),
            (
                r#"{"parts": {"a": {"from": "u", "path": "/"}}, "timeout": "1h"}"#.to_owned(),
                "timeout: expected a duration",
            ),
            (
                r#"{"parts": {"a": {"from": "u", "path": "/"}}, "max_part_bytes": 0}"#.to_owned(),
                "max_part_bytes: 0 is not between 1 and 16777216",
            ),
            (
                r#"{"parts": {"a": {"from": "u", "path": "/"}}, "max_document_bytes": 0}"#
                    .to_owned(),
                "max_document_bytes: 0 is not between",
            ),
            (
                r#"{"parts": {"a": {"from": "u", "path": "/"}}, "cache_control": "a\nb"}"#
                    .to_owned(),
                "cache_control: `a\nb` is not a valid header value",
            ),
            ("[".to_owned(), "EOF"),
        ];
        for (json, message) in cases {
            let err = parse_error(&json);
            assert!(err.contains(message), "{json}: {err}");
        }
        let too_many: Vec<String> = (0..=MAX_PARTS)
            .map(|i| format!(r#""p{i}": {{"from": "u", "path": "/"}}"#))
            .collect();
        let err = parse_error(&format!(r#"{{"parts": {{{}}}}}"#, too_many.join(",")));
        assert!(err.contains("found 33"), "{err}");
        assert!(Composition::parse(None).unwrap_err().contains("required"));
        assert!(Composition::parse(Some(b" "))
            .unwrap_err()
            .contains("required"));
    }

    #[test]
    fn requests_are_made_from_the_request_values() {
        let composition = Composition::parse(Some(EXAMPLE.as_bytes())).unwrap();
        let value = |id: &'static [u8]| {
            move |source: &Source| match source {
                Source::PathSegment(2) => Some(id.to_vec()),
                Source::Header(name) if name == "x-request-id" => Some(b"r\r\n1".to_vec()),
                _ => None,
            }
        };
        assert_eq!(
            composition.parts[0].request(value(b"7")),
            Ok(CalloutRequest {
                path: "/orders?user=7".to_owned(),
                headers: vec![("x-request-id".to_owned(), "r1".to_owned())],
            })
        );
        assert_eq!(
            composition.parts[1].request(value(b"a/b")).unwrap().path,
            "/users/a%2Fb"
        );
        assert_eq!(
            composition.parts[1].request(value(b"..")),
            Err(Failure::DotSegment)
        );
        assert_eq!(
            composition.parts[1].request(|_| None),
            Err(Failure::MissingValue(Source::PathSegment(2)))
        );
        assert_eq!(
            composition.parts[0].request(|source| match source {
                Source::PathSegment(_) => Some(b"7".to_vec()),
                _ => None,
            }),
            Err(Failure::MissingValue(Source::Header("x-request-id".into())))
        );
    }

    #[test]
    fn dot_segments_are_found_in_the_path_only() {
        assert!(has_dot_segment("/a/.."));
        assert!(has_dot_segment("/a/./b"));
        assert!(has_dot_segment("/../b?x=1"));
        assert!(!has_dot_segment("/a/..%2F/b"));
        assert!(!has_dot_segment("/a/.../b"));
        assert!(!has_dot_segment("/a/b?x=.."));
        assert!(!has_dot_segment("/a.b/c."));
    }
}
