//! Property templates: literal text with `${a.b.c}` property expansions, the values of
//! add-headers' headers and of json-transform's `set` strings.
//!
//! SDK-free (tested natively): parsing happens once, at configure time, and rendering takes a
//! closure that reads a property by its path segments.
//!
//! Syntax:
//! - `${a.b.c}`: the property at path `["a", "b", "c"]` (the text between `${` and `}` split on
//!   `.`). Segments are non-empty and contain no whitespace, control characters, `$`, `{`, `}`
//!   or `:`. `${request.headers.user-agent}` is the 3-segment path
//!   `["request", "headers", "user-agent"]`, so a header name cannot contain a `.`.
//! - `${a.b:-text}`: the same, but `text` when the property is missing or renders empty.
//!   `text` is plain text, possibly empty, without `$`, `{`, `}` or control characters.
//! - `$$`: a literal `$`.
//! - Any other `$` (alone, followed by another character, or last) is an error, as is a `${`
//!   without its `}` or an empty path or segment.
//! - Literal text may be any UTF-8 except control characters (tab allowed), which are not
//!   valid in a header value (the rule is the same wherever a template is used).
//!
//! Rendering: a missing property renders as the empty string (or the default). A present one
//! renders as a decimal number when its path is one of the host's integer properties
//! ([`INTEGER_PROPERTIES`], 8-byte little-endian values), `true`/`false` for
//! [`BOOLEAN_PROPERTIES`], and as UTF-8 text otherwise (invalid sequences replaced with
//! U+FFFD). Control characters (other than tab) of a property's value are dropped, so the
//! result is always a valid header value.

use std::fmt;

/// Properties whose values are signed 64-bit integers, 8 bytes little-endian (as in Envoy),
/// as dot-joined paths. An integer property of any other length renders as text.
pub const INTEGER_PROPERTIES: &[&str] = &[
    "request.size",
    "request.total_size",
    "request.headers_bytes",
    "request.time",
    "request.duration",
    "response.code",
    "response.size",
    "response.total_size",
    "response.headers_bytes",
    "source.port",
    "destination.port",
    "upstream.port",
];

/// Properties whose values are unsigned 64-bit integers, 8 bytes little-endian.
pub const UNSIGNED_PROPERTIES: &[&str] = &["connection.id"];

/// Properties whose values are booleans, one byte (0 is false).
pub const BOOLEAN_PROPERTIES: &[&str] = &["connection.mtls"];

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Property {
        path: Vec<String>,
        default: Option<String>,
    },
}

/// Why a template does not parse: a message and the byte offset where the problem starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateError {
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at byte {}: {}", self.offset, self.message)
    }
}

impl std::error::Error for TemplateError {}

fn error(offset: usize, message: impl Into<String>) -> TemplateError {
    TemplateError {
        offset,
        message: message.into(),
    }
}

impl Template {
    /// Parses `text`; see the module documentation for the syntax.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            if c != '$' {
                if is_forbidden_control(c) {
                    return Err(error(
                        at,
                        format!("control character {c:?} is not allowed in a header value"),
                    ));
                }
                literal.push(c);
                continue;
            }
            match chars.next() {
                Some((_, '$')) => literal.push('$'),
                Some((open, '{')) => {
                    let start = open + 1;
                    let Some(len) = text[start..].find('}') else {
                        return Err(error(at, "`${` without its closing `}`"));
                    };
                    let end = start + len;
                    let (path, default) = expansion(&text[start..end], start)?;
                    while chars.next_if(|&(i, _)| i <= end).is_some() {}
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Property { path, default });
                }
                Some(_) => {
                    return Err(error(
                        at,
                        "`$` must start `${property}` or be doubled (`$$` for a literal `$`)",
                    ))
                }
                None => return Err(error(at, "`$` at the end: write `$$` for a literal `$`")),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template { parts })
    }

    /// Whether the template has no expansion (its text never changes).
    pub fn is_literal(&self) -> bool {
        self.parts
            .iter()
            .all(|part| matches!(part, Part::Literal(_)))
    }

    /// The property paths the template reads, in order.
    pub fn properties(&self) -> impl Iterator<Item = &[String]> {
        self.parts.iter().filter_map(|part| match part {
            Part::Property { path, .. } => Some(path.as_slice()),
            Part::Literal(_) => None,
        })
    }

    /// Expands the template; `property` reads a property by its path segments (`None` when the
    /// host has no such property).
    pub fn render<F>(&self, mut property: F) -> String
    where
        F: FnMut(&[&str]) -> Option<Vec<u8>>,
    {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Property { path, default } => {
                    let segments: Vec<&str> = path.iter().map(String::as_str).collect();
                    let value = property(&segments)
                        .map(|bytes| render_value(&segments, &bytes))
                        .unwrap_or_default();
                    match default {
                        Some(default) if value.is_empty() => out.push_str(default),
                        _ => out.push_str(&value),
                    }
                }
            }
        }
        out
    }
}

/// Parses the inside of `${...}` (which starts at byte `offset` of the template).
fn expansion(inner: &str, offset: usize) -> Result<(Vec<String>, Option<String>), TemplateError> {
    let (path, default) = match inner.split_once(":-") {
        Some((path, default)) => (path, Some(default)),
        None => (inner, None),
    };
    if path.is_empty() {
        return Err(error(offset, "empty property path in `${}`"));
    }
    let mut segments = Vec::new();
    let mut at = offset;
    for segment in path.split('.') {
        if segment.is_empty() {
            return Err(error(
                at,
                format!("empty segment in property path `{path}`"),
            ));
        }
        if let Some((i, c)) = segment.char_indices().find(|&(_, c)| !is_segment_char(c)) {
            let hint = if c == ':' {
                " (a default is written `${path:-default}`)"
            } else {
                ""
            };
            return Err(error(
                at + i,
                format!("{c:?} is not allowed in property path `{path}`{hint}"),
            ));
        }
        segments.push(segment.to_owned());
        at += segment.len() + 1;
    }
    if let Some(default) = default {
        let default_at = offset + path.len() + 2;
        if let Some((i, c)) = default
            .char_indices()
            .find(|&(_, c)| matches!(c, '$' | '{') || is_forbidden_control(c))
        {
            return Err(error(
                default_at + i,
                format!("{c:?} is not allowed in a default: it is plain text"),
            ));
        }
    }
    Ok((segments, default.map(str::to_owned)))
}

fn is_segment_char(c: char) -> bool {
    !(c.is_whitespace() || c.is_control() || matches!(c, '$' | '{' | '}' | ':' | '.'))
}

/// Control characters are invalid in header values, except horizontal tab.
fn is_forbidden_control(c: char) -> bool {
    c.is_ascii_control() && c != '\t'
}

/// Renders a property value read at `path`: a decimal integer, a boolean or text (see the
/// module documentation), without the control characters a header value cannot hold.
pub fn render_value(path: &[&str], bytes: &[u8]) -> String {
    let joined = path.join(".");
    let joined = joined.as_str();
    if let Ok(raw) = <[u8; 8]>::try_from(bytes) {
        if INTEGER_PROPERTIES.contains(&joined) {
            return i64::from_le_bytes(raw).to_string();
        }
        if UNSIGNED_PROPERTIES.contains(&joined) {
            return u64::from_le_bytes(raw).to_string();
        }
    }
    if let [byte] = bytes {
        if BOOLEAN_PROPERTIES.contains(&joined) {
            return (*byte != 0).to_string();
        }
    }
    String::from_utf8_lossy(bytes)
        .chars()
        .filter(|&c| !is_forbidden_control(c))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn props(entries: &[(&str, &[u8])]) -> HashMap<String, Vec<u8>> {
        entries
            .iter()
            .map(|(path, value)| ((*path).to_owned(), value.to_vec()))
            .collect()
    }

    fn render(template: &str, properties: &HashMap<String, Vec<u8>>) -> String {
        Template::parse(template)
            .unwrap()
            .render(|path| properties.get(&path.join(".")).cloned())
    }

    #[test]
    fn literal_text_stays_as_it_is() {
        let template = Template::parse("edgeward 1.0 ünïcode\tand tab").unwrap();
        assert!(template.is_literal());
        assert_eq!(template.properties().count(), 0);
        assert_eq!(template.render(|_| None), "edgeward 1.0 ünïcode\tand tab");
        assert_eq!(Template::parse("").unwrap().render(|_| None), "");
    }

    #[test]
    fn properties_expand_by_path_segments() {
        let properties = props(&[
            ("request.id", b"abc-123"),
            ("geo.country_code", b"JP"),
            ("request.headers.user-agent", b"curl/8.0"),
        ]);
        assert_eq!(render("${request.id}", &properties), "abc-123");
        assert_eq!(
            render("id=${request.id}; cc=${geo.country_code}!", &properties),
            "id=abc-123; cc=JP!"
        );
        assert_eq!(
            render("${request.headers.user-agent}", &properties),
            "curl/8.0"
        );
        let template = Template::parse("${request.headers.user-agent}${request.id}").unwrap();
        assert!(!template.is_literal());
        let paths: Vec<&[String]> = template.properties().collect();
        assert_eq!(
            paths,
            [
                &["request", "headers", "user-agent"].map(String::from)[..],
                &["request", "id"].map(String::from)[..],
            ]
        );
    }

    #[test]
    fn the_closure_gets_the_split_path() {
        let mut seen = Vec::new();
        let template = Template::parse("${request.headers.x-a_b}${plugin_name}").unwrap();
        template.render(|path| {
            seen.push(path.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
            None
        });
        assert_eq!(
            seen,
            [vec!["request", "headers", "x-a_b"], vec!["plugin_name"]]
        );
    }

    #[test]
    fn missing_properties_are_empty_or_the_default() {
        let properties = props(&[("geo.country_code", b""), ("request.id", b"r1")]);
        assert_eq!(render("[${geo.city}]", &properties), "[]");
        assert_eq!(render("${geo.city:-XX}", &properties), "XX");
        // Present but empty: the default too.
        assert_eq!(render("${geo.country_code:-XX}", &properties), "XX");
        assert_eq!(render("${geo.country_code}", &properties), "");
        // Present: the value, not the default.
        assert_eq!(render("${request.id:-none}", &properties), "r1");
        // An empty default is allowed.
        assert_eq!(render("a${geo.city:-}b", &properties), "ab");
        // A default may hold spaces, `:`, `-` and `}`-free punctuation.
        assert_eq!(
            render("${geo.city:-not known: n/a}", &properties),
            "not known: n/a"
        );
    }

    #[test]
    fn dollar_dollar_is_a_literal_dollar() {
        assert_eq!(render("$$", &HashMap::new()), "$");
        assert_eq!(render("cost: $$5 $${x}", &HashMap::new()), "cost: $5 ${x}");
        let properties = props(&[("a", b"1")]);
        assert_eq!(render("$$${a}$$", &properties), "$1$");
    }

    #[test]
    fn integer_properties_render_as_decimal() {
        let properties = props(&[
            ("response.code", &200i64.to_le_bytes()),
            ("source.port", &51234i64.to_le_bytes()),
            ("request.size", &(-1i64).to_le_bytes()),
            ("request.time", &1_764_000_000_000_000_000i64.to_le_bytes()),
            ("connection.id", &u64::MAX.to_le_bytes()),
            ("connection.mtls", &[0]),
        ]);
        assert_eq!(
            render(
                "${response.code} ${source.port} ${request.size} ${request.time}",
                &properties
            ),
            "200 51234 -1 1764000000000000000"
        );
        assert_eq!(
            render("${connection.id}", &properties),
            "18446744073709551615"
        );
        assert_eq!(render("${connection.mtls}", &properties), "false");
        for path in INTEGER_PROPERTIES {
            assert_eq!(
                render_value(&path.split('.').collect::<Vec<_>>(), &7i64.to_le_bytes()),
                "7",
                "{path}"
            );
        }
    }

    #[test]
    fn other_properties_render_as_text() {
        // 8 bytes at a path not known as an integer: text.
        assert_eq!(render_value(&["request", "id"], b"12345678"), "12345678");
        // An integer path with the wrong length: text too.
        assert_eq!(render_value(&["response", "code"], b"200"), "200");
        // Invalid UTF-8 is replaced, control characters dropped.
        assert_eq!(render_value(&["x"], b"a\xffb"), "a\u{fffd}b");
        assert_eq!(render_value(&["x"], b"a\r\nb\0c\td\x7f"), "abc\td");
    }

    #[test]
    fn errors_name_the_problem_and_where() {
        let cases = [
            ("abc$", 3, "`$` at the end"),
            ("a$b", 1, "`$` must start"),
            ("${request.id", 0, "without its closing"),
            ("x${}", 3, "empty property path"),
            ("${a..b}", 4, "empty segment"),
            ("${.a}", 2, "empty segment"),
            ("${a b}", 3, "' ' is not allowed"),
            ("${a:b}", 3, "a default is written"),
            ("${a:-x$y}", 6, "not allowed in a default"),
            ("${a:-{}", 5, "not allowed in a default"),
            ("a\nb", 1, "control character"),
        ];
        for (text, offset, message) in cases {
            let err = Template::parse(text).unwrap_err();
            assert_eq!(err.offset, offset, "{text:?}: {err}");
            assert!(err.message.contains(message), "{text:?}: {err}");
        }
        assert_eq!(
            Template::parse("$").unwrap_err().to_string(),
            "at byte 0: `$` at the end: write `$$` for a literal `$`"
        );
    }

    #[test]
    fn text_after_an_expansion_is_kept() {
        let properties = props(&[("a", b"1")]);
        assert_eq!(render("${a}}", &properties), "1}");
        assert_eq!(render("{${a}}", &properties), "{1}");
    }
}
