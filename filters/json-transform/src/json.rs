//! A JSON document as the filter edits it: object members in their order, numbers as the text
//! they were written with, strings borrowed from the body unless they had escapes. Parsing and
//! writing back leave every untouched value as it was (numbers are never rounded through
//! `f64`, members never re-sorted); only insignificant whitespace and string escapes change.
//!
//! SDK-free, tested natively. Parsing is iterative in the input and recursive in the nesting,
//! which [`MAX_DEPTH`] bounds.

use std::borrow::Cow;
use std::fmt;

/// How deeply arrays and objects may nest (serde_json's own limit): deeper documents are
/// refused rather than risking the guest's stack.
pub const MAX_DEPTH: usize = 128;

/// One JSON value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Json<'a> {
    Null,
    Bool(bool),
    /// The number's text, valid JSON number syntax.
    Number(Cow<'a, str>),
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    /// Members in document order, names unique (see [`parse`]).
    Object(Vec<Member<'a>>),
}

/// An object member: its name and value.
pub type Member<'a> = (Cow<'a, str>, Json<'a>);

/// Why a body is not a JSON document this filter edits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Not UTF-8 (RFC 8259 §8.1), from this byte on.
    NotUtf8 { offset: usize },
    /// Nested deeper than [`MAX_DEPTH`] at this byte.
    TooDeep { offset: usize },
    /// Not JSON: what was expected at this byte (or the body ended).
    Syntax {
        offset: usize,
        message: &'static str,
    },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::NotUtf8 { offset } => write!(f, "not UTF-8 at byte {offset}"),
            ParseError::TooDeep { offset } => {
                write!(f, "nested deeper than {MAX_DEPTH} levels at byte {offset}")
            }
            ParseError::Syntax { offset, message } => {
                write!(f, "not valid JSON at byte {offset}: {message}")
            }
        }
    }
}

/// Parses one JSON text (RFC 8259: any value, surrounded by optional whitespace). An object
/// with a repeated member name keeps one member, at the first one's place, with the last
/// one's value (the value serde_json and JavaScript read), so that no later reader sees a
/// member this filter did not edit.
pub fn parse(body: &[u8]) -> Result<Json<'_>, ParseError> {
    let text = std::str::from_utf8(body).map_err(|err| ParseError::NotUtf8 {
        offset: err.valid_up_to(),
    })?;
    let mut parser = Parser {
        text,
        bytes: text.as_bytes(),
        at: 0,
    };
    parser.skip_whitespace();
    let value = parser.value(0)?;
    parser.skip_whitespace();
    match parser.peek() {
        None => Ok(value),
        Some(_) => Err(parser.syntax("nothing after the value")),
    }
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    /// What is left of the body.
    fn rest(&self) -> &[u8] {
        self.bytes.get(self.at..).unwrap_or_default()
    }

    fn syntax(&self, message: &'static str) -> ParseError {
        ParseError::Syntax {
            offset: self.at,
            message,
        }
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// Consumes `byte` (after whitespace) or fails with `message`.
    fn expect(&mut self, byte: u8, message: &'static str) -> Result<(), ParseError> {
        self.skip_whitespace();
        if self.peek() == Some(byte) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.syntax(message))
        }
    }

    /// A value at `depth` containers deep; whitespace before it is already skipped.
    fn value(&mut self, depth: usize) -> Result<Json<'a>, ParseError> {
        match self.peek() {
            Some(b'{') | Some(b'[') if depth >= MAX_DEPTH => {
                Err(ParseError::TooDeep { offset: self.at })
            }
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => self.string().map(Json::String),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'n') => self.literal("null", Json::Null),
            Some(_) => Err(self.syntax("expected a value")),
            None => Err(self.syntax("the body ends where a value was expected")),
        }
    }

    fn literal(&mut self, word: &'static str, value: Json<'a>) -> Result<Json<'a>, ParseError> {
        if self.rest().starts_with(word.as_bytes()) {
            self.at += word.len();
            Ok(value)
        } else {
            Err(self.syntax("expected `true`, `false` or `null`"))
        }
    }

    fn array(&mut self, depth: usize) -> Result<Json<'a>, ParseError> {
        self.at += 1; // `[`
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(Json::Array(items));
        }
        loop {
            self.skip_whitespace();
            items.push(self.value(depth)?);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    return Ok(Json::Array(items));
                }
                _ => return Err(self.syntax("expected `,` or `]`")),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Json<'a>, ParseError> {
        self.at += 1; // `{`
        let mut members = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(Json::Object(members));
        }
        loop {
            self.skip_whitespace();
            if self.peek() != Some(b'"') {
                return Err(self.syntax("expected a member name"));
            }
            let name = self.string()?;
            self.expect(b':', "expected `:` after the member name")?;
            self.skip_whitespace();
            members.push((name, self.value(depth)?));
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    keep_last_of_repeated_names(&mut members);
                    return Ok(Json::Object(members));
                }
                _ => return Err(self.syntax("expected `,` or `}`")),
            }
        }
    }

    /// A string, the opening quote at `self.at`: borrowed when it has no escapes.
    fn string(&mut self) -> Result<Cow<'a, str>, ParseError> {
        self.at += 1; // `"`
        let start = self.at;
        loop {
            match self.peek() {
                Some(b'"') => {
                    let text = self.text.get(start..self.at).unwrap_or_default();
                    self.at += 1;
                    return Ok(Cow::Borrowed(text));
                }
                Some(b'\\') => break,
                Some(0..=0x1f) => return Err(self.syntax("control character in a string")),
                Some(_) => self.at += 1,
                None => return Err(self.syntax("the body ends inside a string")),
            }
        }
        // An escape: decode into an owned string from here on.
        let mut decoded = String::from(self.text.get(start..self.at).unwrap_or_default());
        loop {
            let run_start = self.at;
            while matches!(self.peek(), Some(byte) if byte != b'"' && byte != b'\\' && byte >= 0x20)
            {
                self.at += 1;
            }
            decoded.push_str(self.text.get(run_start..self.at).unwrap_or_default());
            match self.peek() {
                Some(b'"') => {
                    self.at += 1;
                    return Ok(Cow::Owned(decoded));
                }
                Some(b'\\') => {
                    self.at += 1;
                    decoded.push(self.escape()?);
                }
                Some(_) => return Err(self.syntax("control character in a string")),
                None => return Err(self.syntax("the body ends inside a string")),
            }
        }
    }

    /// The character of an escape whose `\` is consumed.
    fn escape(&mut self) -> Result<char, ParseError> {
        let Some(byte) = self.peek() else {
            return Err(self.syntax("the body ends inside a string"));
        };
        self.at += 1;
        Ok(match byte {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => return self.unicode_escape(),
            _ => {
                self.at -= 1;
                return Err(self.syntax("unknown escape in a string"));
            }
        })
    }

    /// `\uXXXX` (its `\u` consumed), a surrogate pair as two of them.
    fn unicode_escape(&mut self) -> Result<char, ParseError> {
        let first = self.hex4()?;
        let code = match first {
            0xD800..=0xDBFF => {
                if !self.rest().starts_with(b"\\u") {
                    return Err(self.syntax("a lone surrogate in a \\u escape"));
                }
                self.at += 2;
                let second = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err(self.syntax("a lone surrogate in a \\u escape"));
                }
                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(self.syntax("a lone surrogate in a \\u escape")),
            code => code,
        };
        char::from_u32(code).ok_or_else(|| self.syntax("an invalid \\u escape"))
    }

    fn hex4(&mut self) -> Result<u32, ParseError> {
        let digits = self
            .text
            .get(self.at..self.at + 4)
            .filter(|digits| digits.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| self.syntax("expected four hex digits after \\u"))?;
        let code = u32::from_str_radix(digits, 16)
            .map_err(|_| self.syntax("expected four hex digits after \\u"))?;
        self.at += 4;
        Ok(code)
    }

    /// A number (RFC 8259 §6), kept as its text.
    fn number(&mut self) -> Result<Json<'a>, ParseError> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.syntax("expected a digit")),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.required_digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            self.required_digits()?;
        }
        let text = self.text.get(start..self.at).unwrap_or_default();
        Ok(Json::Number(Cow::Borrowed(text)))
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
    }

    fn required_digits(&mut self) -> Result<(), ParseError> {
        if !matches!(self.peek(), Some(b'0'..=b'9')) {
            return Err(self.syntax("expected a digit"));
        }
        self.digits();
        Ok(())
    }
}

/// Leaves one member per name: the first one's place, the last one's value. Sorting member
/// positions by name keeps this O(n log n) for objects of any size.
fn keep_last_of_repeated_names(members: &mut Vec<Member<'_>>) {
    if members.len() < 2 {
        return;
    }
    let mut order: Vec<usize> = (0..members.len()).collect();
    order.sort_by(|&a, &b| members[a].0.cmp(&members[b].0).then(a.cmp(&b)));
    let mut repeated = vec![false; members.len()];
    let mut moves = Vec::new();
    for group in order.chunk_by(|&a, &b| members[a].0 == members[b].0) {
        if let (Some(&first), Some(&last)) = (group.first(), group.last()) {
            if first != last {
                moves.push((first, last));
                for &later in group.iter().skip(1) {
                    repeated[later] = true;
                }
            }
        }
    }
    if moves.is_empty() {
        return;
    }
    for (first, last) in moves {
        members[first].1 = std::mem::replace(&mut members[last].1, Json::Null);
    }
    let mut index = 0;
    members.retain(|_| {
        let keep = !repeated[index];
        index += 1;
        keep
    });
}

impl Json<'_> {
    /// Writes the value as compact JSON text.
    pub fn write(&self, out: &mut Vec<u8>) {
        match self {
            Json::Null => out.extend_from_slice(b"null"),
            Json::Bool(true) => out.extend_from_slice(b"true"),
            Json::Bool(false) => out.extend_from_slice(b"false"),
            Json::Number(text) => out.extend_from_slice(text.as_bytes()),
            Json::String(text) => write_string(text, out),
            Json::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    item.write(out);
                }
                out.push(b']');
            }
            Json::Object(members) => {
                out.push(b'{');
                for (i, (name, value)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_string(name, out);
                    out.push(b':');
                    value.write(out);
                }
                out.push(b'}');
            }
        }
    }

    /// The value as JSON text.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(&mut out);
        out
    }

    /// The same value, owning all its text (for values kept beyond the body they came from).
    pub fn into_owned(self) -> Json<'static> {
        match self {
            Json::Null => Json::Null,
            Json::Bool(value) => Json::Bool(value),
            Json::Number(text) => Json::Number(Cow::Owned(text.into_owned())),
            Json::String(text) => Json::String(Cow::Owned(text.into_owned())),
            Json::Array(items) => Json::Array(items.into_iter().map(Json::into_owned).collect()),
            Json::Object(members) => Json::Object(
                members
                    .into_iter()
                    .map(|(name, value)| (Cow::Owned(name.into_owned()), value.into_owned()))
                    .collect(),
            ),
        }
    }
}

/// A JSON string: `"` and `\` escaped, control characters as short escapes or `\u00XX`,
/// everything else as UTF-8.
fn write_string(text: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = text.as_bytes();
    let mut run_start = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xf)],
            ],
            _ => continue,
        };
        out.extend_from_slice(&bytes[run_start..i]);
        out.extend_from_slice(escape);
        run_start = i + 1;
    }
    out.extend_from_slice(&bytes[run_start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(text: &str) -> String {
        let value = parse(text.as_bytes()).unwrap_or_else(|err| panic!("{text}: {err}"));
        String::from_utf8(value.to_bytes()).unwrap()
    }

    fn error(text: &[u8]) -> ParseError {
        parse(text).unwrap_err()
    }

    #[test]
    fn values_come_back_as_they_were_written() {
        for text in [
            "null",
            "true",
            "false",
            "0",
            "-0",
            "1.50",
            "1e400",
            "-2.5E-3",
            "123456789012345678901234567890",
            r#""""#,
            r#""ünïcode ✓ 😀""#,
            "[]",
            "{}",
            r#"{"z":1,"a":[1,{"m":null}],"b":"x"}"#,
        ] {
            assert_eq!(round_trip(text), text);
        }
    }

    #[test]
    fn whitespace_goes_and_escapes_are_normalised() {
        assert_eq!(
            round_trip(" {\n \"a\" : [ 1 , 2 ] ,\t\"b\":{} }\r\n"),
            r#"{"a":[1,2],"b":{}}"#
        );
        assert_eq!(
            round_trip(r#""\u00e9\/\"\\\n\u0001\ud83d\ude00\b\f\r\t""#),
            "\"é/\\\"\\\\\\n\\u0001😀\\b\\f\\r\\t\""
        );
        // Escaped and plain spellings of a name are the same name.
        assert_eq!(round_trip(r#"{"a\u0062":1,"ab":2}"#), r#"{"ab":2}"#);
    }

    #[test]
    fn repeated_names_keep_the_first_place_and_the_last_value() {
        assert_eq!(
            round_trip(r#"{"a":1,"b":2,"a":3,"c":4,"a":5,"b":6}"#),
            r#"{"a":5,"b":6,"c":4}"#
        );
        let many: Vec<String> = (0..1000).map(|i| format!("\"k{}\":{i}", i % 10)).collect();
        let text = format!("{{{}}}", many.join(","));
        assert_eq!(
            round_trip(&text),
            r#"{"k0":990,"k1":991,"k2":992,"k3":993,"k4":994,"k5":995,"k6":996,"k7":997,"k8":998,"k9":999}"#
        );
    }

    #[test]
    fn strings_without_escapes_are_borrowed() {
        let Json::Object(members) = parse(br#"{"plain":"text","esc\n":"a\tb"}"#).unwrap() else {
            panic!("not an object");
        };
        assert!(matches!(&members[0].0, Cow::Borrowed("plain")));
        assert!(matches!(&members[0].1, Json::String(Cow::Borrowed("text"))));
        assert!(matches!(&members[1].0, Cow::Owned(name) if name == "esc\n"));
    }

    #[test]
    fn invalid_and_truncated_bodies_are_refused_with_where() {
        let cases: &[(&[u8], usize, &str)] = &[
            (b"", 0, "ends where a value"),
            (b"   ", 3, "ends where a value"),
            (b"{\"a\":1", 6, "expected `,` or `}`"),
            (b"{\"a\":1,", 7, "expected a member name"),
            (b"[1,2", 4, "expected `,` or `]`"),
            (b"[1,]", 3, "expected a value"),
            (b"{\"a\" 1}", 5, "expected `:`"),
            (b"{a:1}", 1, "expected a member name"),
            (b"\"abc", 4, "ends inside a string"),
            (b"\"a\\", 3, "ends inside a string"),
            (b"\"a\x01\"", 2, "control character"),
            (b"\"\\x\"", 2, "unknown escape"),
            (b"\"\\u12\"", 3, "four hex digits"),
            (b"\"\\ud800\"", 7, "lone surrogate"),
            (b"\"\\udc00\"", 7, "lone surrogate"),
            (b"\"\\ud800\\u0041\"", 13, "lone surrogate"),
            (b"01", 1, "nothing after"),
            (b"1.", 2, "expected a digit"),
            (b"1e+", 3, "expected a digit"),
            (b"-", 1, "expected a digit"),
            (b"+1", 0, "expected a value"),
            (b"tru", 0, "expected `true`"),
            (b"nul", 0, "expected `true`"),
            (b"{} {}", 3, "nothing after"),
            (b"NaN", 0, "expected a value"),
        ];
        for (text, offset, message) in cases {
            match error(text) {
                ParseError::Syntax {
                    offset: at,
                    message: said,
                } => {
                    assert_eq!(at, *offset, "{:?}: {said}", String::from_utf8_lossy(text));
                    assert!(said.contains(message), "{text:?}: {said}");
                }
                other => panic!("{text:?}: {other}"),
            }
        }
        assert_eq!(
            error(b"{\"a\":\"\xff\"}"),
            ParseError::NotUtf8 { offset: 6 }
        );
        assert_eq!(
            error(b"{\"a\":1,").to_string(),
            "not valid JSON at byte 7: expected a member name"
        );
    }

    #[test]
    fn nesting_is_bounded() {
        let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert_eq!(round_trip(&nested(MAX_DEPTH)), nested(MAX_DEPTH));
        let too_deep = nested(MAX_DEPTH + 1);
        assert_eq!(
            error(too_deep.as_bytes()),
            ParseError::TooDeep { offset: MAX_DEPTH }
        );
        // Far deeper, objects and arrays mixed, and truncated: refused at the same place.
        let deep = r#"{"a":["#.repeat(10_000);
        assert_eq!(
            error(deep.as_bytes()),
            ParseError::TooDeep {
                offset: MAX_DEPTH / 2 * 6
            }
        );
    }

    #[test]
    fn owned_values_outlive_their_body() {
        let owned = {
            let body = br#"{"a":"x","n":1.0}"#.to_vec();
            parse(&body).unwrap().into_owned()
        };
        assert_eq!(owned.to_bytes(), br#"{"a":"x","n":1.0}"#);
    }
}
