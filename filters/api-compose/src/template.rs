//! Templates of a part's callout path and headers: literal text with `{source.key}`
//! placeholders filled from the client's request. SDK-free, tested natively.
//!
//! Placeholders:
//! - `{path.N}`: the Nth segment of the request path (1-based: in `/account/7/orders`,
//!   `{path.1}` is `account` and `{path.2}` is `7`), percent-decoded;
//! - `{query.NAME}`: the first `NAME` parameter of the query string, decoded (`+` is a space);
//! - `{header.NAME}`: the request header `NAME` (case-insensitive);
//! - `{property.a.b}`: the host property at path `["a", "b"]` (`{property.request.id}`,
//!   `{property.geo.country_code}`), integers as decimal numbers;
//! - `{SOURCE.KEY:-text}`: the same, but `text` when the value is missing or empty.
//!
//! A value that is missing or empty, without a default, is an error of the part ([`Missing`]):
//! an empty segment would change what the path asks for (`/users/` is not `/users/7`).
//!
//! Values are inserted encoded for where they go ([`Target`]): in a path every byte but
//! `A-Z a-z 0-9 - . _ ~` is percent-encoded, so that a value stays one segment (or one query
//! value) whatever it holds: `/`, `?`, `&`, `#` and `%` cannot change the request; in a header
//! the value is text without control characters.

use std::fmt;

/// Where a request value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// 1-based index of a path segment.
    PathSegment(usize),
    Query(String),
    /// Lower case.
    Header(String),
    Property(Vec<String>),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::PathSegment(n) => write!(f, "{{path.{n}}}"),
            Source::Query(name) => write!(f, "{{query.{name}}}"),
            Source::Header(name) => write!(f, "{{header.{name}}}"),
            Source::Property(path) => write!(f, "{{property.{}}}", path.join(".")),
        }
    }
}

/// Where a rendered template goes, which decides how values are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Path,
    Header,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Value {
        source: Source,
        default: Option<String>,
    },
}

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

/// A placeholder without a value (nor a default) for this request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missing(pub Source);

/// The deepest `{path.N}`: request paths are not longer in practice, and the bound keeps the
/// configuration honest.
pub const MAX_PATH_SEGMENT: usize = 64;

impl Template {
    /// Parses `text`. Literal text may not hold `{` or `}` other than around placeholders,
    /// nor control characters; `check_literal` refuses what else the target forbids.
    pub fn parse(text: &str, check_literal: impl Fn(char) -> bool) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let literal_end = rest.find(['{', '}']).unwrap_or(rest.len());
            let (literal, after) = rest.split_at(literal_end);
            if let Some(c) = literal
                .chars()
                .find(|&c| c.is_control() || !check_literal(c))
            {
                return Err(format!("{c:?} is not allowed in `{text}`"));
            }
            if !literal.is_empty() {
                pieces.push(Piece::Literal(literal.to_owned()));
            }
            let Some(inner_and_rest) = after.strip_prefix('{') else {
                if after.is_empty() {
                    break;
                }
                return Err(format!("`}}` without its `{{` in `{text}`"));
            };
            let Some(close) = inner_and_rest.find('}') else {
                return Err(format!("`{{` without its `}}` in `{text}`"));
            };
            let (inner, after_close) = inner_and_rest.split_at(close);
            pieces.push(placeholder(inner)?);
            rest = after_close.get(1..).unwrap_or_default();
        }
        Ok(Template { pieces })
    }

    /// The text with every placeholder filled by `value` (which reads a value from the
    /// request, `None` when it has none) and encoded for `target`.
    pub fn render(
        &self,
        target: Target,
        mut value: impl FnMut(&Source) -> Option<Vec<u8>>,
    ) -> Result<String, Missing> {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(text) => out.push_str(text),
                Piece::Value { source, default } => {
                    let found = value(source).filter(|v| !v.is_empty());
                    let bytes = match (&found, default) {
                        (Some(bytes), _) => bytes.as_slice(),
                        (None, Some(default)) if !default.is_empty() => default.as_bytes(),
                        (None, _) => return Err(Missing(source.clone())),
                    };
                    match target {
                        Target::Path => percent_encode(bytes, &mut out),
                        Target::Header => out.extend(
                            String::from_utf8_lossy(bytes)
                                .chars()
                                .filter(|c| !c.is_control() || *c == '\t'),
                        ),
                    }
                }
            }
        }
        Ok(out)
    }

    /// The text with every placeholder replaced by `x`: what the template's own literal text
    /// makes of the path, for checks at configure time.
    pub fn sample(&self) -> String {
        self.render(Target::Path, |_| Some(b"x".to_vec()))
            .unwrap_or_default()
    }
}

/// Parses the inside of `{...}`.
fn placeholder(inner: &str) -> Result<Piece, String> {
    let (name, default) = match inner.split_once(":-") {
        Some((name, default)) => (name, Some(default.to_owned())),
        None => (inner, None),
    };
    let (kind, key) = name.split_once('.').unwrap_or((name, ""));
    if key.is_empty() {
        return Err(format!(
            "`{{{inner}}}`: a placeholder is `{{path.N}}`, `{{query.NAME}}`, `{{header.NAME}}` \
             or `{{property.a.b}}`"
        ));
    }
    let source = match kind {
        "path" => match key.parse::<usize>() {
            Ok(n) if (1..=MAX_PATH_SEGMENT).contains(&n) => Source::PathSegment(n),
            _ => {
                return Err(format!(
                    "`{{{inner}}}`: the segment number must be 1 to {MAX_PATH_SEGMENT}"
                ))
            }
        },
        "query" if key.chars().all(|c| !c.is_control() && c != ':') => {
            Source::Query(key.to_owned())
        }
        "header" if key.chars().all(is_token_char) => Source::Header(key.to_ascii_lowercase()),
        "property"
            if key
                .split('.')
                .all(|s| !s.is_empty() && s.chars().all(is_token_char)) =>
        {
            Source::Property(key.split('.').map(str::to_owned).collect())
        }
        "query" | "header" | "property" => {
            return Err(format!("`{{{inner}}}`: `{key}` is not a valid {kind} name"))
        }
        _ => {
            return Err(format!(
                "`{{{inner}}}`: unknown source `{kind}` (path, query, header or property)"
            ))
        }
    };
    if let Some(c) = default
        .as_deref()
        .and_then(|d| d.chars().find(|c| c.is_control()))
    {
        return Err(format!("`{{{inner}}}`: {c:?} is not allowed in a default"));
    }
    Ok(Piece::Value { source, default })
}

/// A character of an HTTP token (RFC 9110 §5.6.2): header names.
pub fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// Appends `bytes` with everything but RFC 3986's unreserved characters percent-encoded.
fn percent_encode(bytes: &[u8], out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &byte in bytes {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
    }
}

/// Percent-decodes `text`; with `plus_is_space` (query strings) `+` is a space. A `%` not
/// followed by two hex digits stays as it is.
pub fn percent_decode(text: &[u8], plus_is_space: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while let Some(&byte) = text.get(i) {
        let hex = |at: usize| text.get(at).and_then(|b| char::from(*b).to_digit(16));
        match (byte, hex(i + 1), hex(i + 2)) {
            (b'%', Some(high), Some(low)) => {
                // Two hex digits make at most 0xff.
                out.push(u8::try_from(high * 16 + low).unwrap_or(b'%'));
                i += 3;
            }
            (b'+', _, _) if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

/// The `n`th (1-based) segment of `path` (no query), percent-decoded; `None` beyond the last.
pub fn path_segment(path: &[u8], n: usize) -> Option<Vec<u8>> {
    let segments = path.strip_prefix(b"/").unwrap_or(path);
    let segment = segments.split(|b| *b == b'/').nth(n.checked_sub(1)?)?;
    Some(percent_decode(segment, false))
}

/// The value of the first parameter `name` of `query` (without `?`), decoded.
pub fn query_param(query: &[u8], name: &str) -> Option<Vec<u8>> {
    query.split(|b| *b == b'&').find_map(|pair| {
        let (key, value) = match pair.iter().position(|b| *b == b'=') {
            Some(at) => (pair.get(..at)?, pair.get(at + 1..)?),
            None => (pair, &b""[..]),
        };
        (percent_decode(key, true) == name.as_bytes()).then(|| percent_decode(value, true))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path_template(text: &str) -> Template {
        Template::parse(text, |_| true).unwrap()
    }

    fn values(source: &Source) -> Option<Vec<u8>> {
        let value: &[u8] = match source {
            Source::PathSegment(2) => b"7",
            Source::PathSegment(3) => b"../../admin?x=1#frag",
            Source::Query(name) if name == "user" => b"1&admin=true",
            Source::Query(name) if name == "empty" => b"",
            Source::Header(name) if name == "x-tenant" => b"acme corp\r\nx-evil: 1",
            Source::Property(path) if path == &["request", "id"] => b"r-1",
            _ => return None,
        };
        Some(value.to_vec())
    }

    #[test]
    fn placeholders_are_filled_and_encoded_for_paths() {
        let template =
            path_template("/users/{path.2}/orders?since={query.user}&id={property.request.id}");
        assert_eq!(
            template.render(Target::Path, values).unwrap(),
            "/users/7/orders?since=1%26admin%3Dtrue&id=r-1"
        );
        // Nothing a client sends leaves its place: `/`, `?`, `#`, `%`, spaces, controls.
        let template = path_template("/users/{path.3}/{header.X-Tenant}");
        assert_eq!(
            template.render(Target::Path, values).unwrap(),
            "/users/..%2F..%2Fadmin%3Fx%3D1%23frag/acme%20corp%0D%0Ax-evil%3A%201"
        );
    }

    #[test]
    fn header_values_lose_their_control_characters() {
        let template = Template::parse("tenant={header.x-tenant}", |_| true).unwrap();
        assert_eq!(
            template.render(Target::Header, values).unwrap(),
            "tenant=acme corpx-evil: 1"
        );
    }

    #[test]
    fn a_missing_or_empty_value_takes_the_default_or_fails() {
        let template = path_template("/a/{path.9}");
        assert_eq!(
            template.render(Target::Path, values),
            Err(Missing(Source::PathSegment(9)))
        );
        let template = path_template("/a?e={query.empty}");
        assert_eq!(
            template.render(Target::Path, values),
            Err(Missing(Source::Query("empty".into())))
        );
        let template = path_template("/a?e={query.empty:-none}&p={query.page:-1 2}");
        assert_eq!(
            template.render(Target::Path, values).unwrap(),
            "/a?e=none&p=1%202"
        );
        // An empty default is no default.
        let template = path_template("/a?e={query.empty:-}");
        assert!(template.render(Target::Path, values).is_err());
        assert_eq!(Missing(Source::PathSegment(9)).0.to_string(), "{path.9}");
    }

    #[test]
    fn bad_templates_are_refused() {
        for (text, message) in [
            ("/a/{path.0}", "the segment number must be 1 to 64"),
            ("/a/{path.65}", "the segment number must be 1 to 64"),
            ("/a/{path.x}", "the segment number"),
            ("/a/{path}", "a placeholder is"),
            ("/a/{cookie.x}", "unknown source `cookie`"),
            ("/a/{header.x y}", "not a valid header name"),
            ("/a/{property.a..b}", "not a valid property name"),
            ("/a/{path.1", "without its `}`"),
            ("/a/}", "without its `{`"),
            ("/a/{query.q:-a\nb}", "not allowed in a default"),
            ("/a\tb", "not allowed"),
        ] {
            let err = Template::parse(text, |_| true).unwrap_err();
            assert!(err.contains(message), "{text}: {err}");
        }
        let err = Template::parse("/a b", |c| c != ' ').unwrap_err();
        assert!(err.contains("' ' is not allowed"), "{err}");
    }

    #[test]
    fn the_sample_shows_the_literal_structure() {
        assert_eq!(
            path_template("/a/{path.1}/../{query.q}").sample(),
            "/a/x/../x"
        );
    }

    #[test]
    fn path_segments_are_one_based_and_decoded() {
        let path = b"/account/7/a%2Fb%20c/%zz";
        assert_eq!(path_segment(path, 1).unwrap(), b"account");
        assert_eq!(path_segment(path, 2).unwrap(), b"7");
        assert_eq!(path_segment(path, 3).unwrap(), b"a/b c");
        assert_eq!(path_segment(path, 4).unwrap(), b"%zz");
        assert_eq!(path_segment(path, 5), None);
        assert_eq!(path_segment(path, 0), None);
        assert_eq!(path_segment(b"/", 1).unwrap(), b"");
    }

    #[test]
    fn query_parameters_are_found_by_decoded_name() {
        let query = b"a=1&user=x%2By+z&b&user=second&sp%61ce=%20";
        assert_eq!(query_param(query, "a").unwrap(), b"1");
        assert_eq!(query_param(query, "user").unwrap(), b"x+y z");
        assert_eq!(query_param(query, "b").unwrap(), b"");
        assert_eq!(query_param(query, "space").unwrap(), b" ");
        assert_eq!(query_param(query, "c"), None);
        assert_eq!(query_param(b"", "a"), None);
    }

    #[test]
    fn percent_decoding_leaves_broken_escapes_alone() {
        assert_eq!(percent_decode(b"%41%4a%", false), b"AJ%");
        assert_eq!(percent_decode(b"%4", false), b"%4");
        assert_eq!(percent_decode(b"a+b", false), b"a+b");
        assert_eq!(percent_decode(b"a+b", true), b"a b");
        assert_eq!(percent_decode(b"%ff", false), [0xff]);
    }
}
