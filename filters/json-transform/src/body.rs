//! What to do with one message: from its head, whether to buffer its body; from its whole
//! body, the transformed one or why it cannot be transformed. SDK-free, tested natively.

use std::fmt;

use crate::config::{Direction, Edits};
use crate::json::{self, ParseError};

/// The header values the decision reads (raw bytes, as the host has them).
#[derive(Clone, Copy, Debug, Default)]
pub struct Head<'h> {
    pub content_type: Option<&'h [u8]>,
    pub content_encoding: Option<&'h [u8]>,
    pub content_length: Option<&'h [u8]>,
}

/// What the head says about the body.
#[derive(Debug, PartialEq, Eq)]
pub enum Handling {
    /// Not JSON: the body goes on untouched, never buffered.
    Ignore,
    /// JSON this filter may change: remove `Content-Length` and buffer the body.
    Buffer,
    /// JSON this filter cannot change.
    Refuse(Refusal),
}

/// Why a JSON body cannot be transformed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Compressed (or otherwise encoded): the filter does not decode bodies.
    Encoded(String),
    /// Larger than `max_body`.
    TooLarge { limit: usize },
    /// Not a JSON document (invalid, truncated, not UTF-8, or nested too deeply).
    Invalid(ParseError),
}

impl Refusal {
    /// The `error` code of the answer the filter gives when it fails closed.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Encoded(_) => "unsupported_content_encoding",
            Refusal::TooLarge { .. } => "body_too_large",
            Refusal::Invalid(ParseError::TooDeep { .. }) => "json_too_deep",
            Refusal::Invalid(_) => "invalid_json",
        }
    }

    /// The status of that answer: `502` for responses (the origin's answer is unusable); for
    /// requests, the client's mistake: `413`, `415` or `400`.
    pub fn status(&self, direction: Direction) -> u32 {
        match (direction, self) {
            (Direction::Response, _) => 502,
            (Direction::Request, Refusal::TooLarge { .. }) => 413,
            (Direction::Request, Refusal::Encoded(_)) => 415,
            (Direction::Request, Refusal::Invalid(_)) => 400,
        }
    }

    /// The body of that answer: `{"error": code, "message": ...}`.
    pub fn answer(&self, direction: Direction) -> String {
        serde_json::json!({
            "error": self.code(),
            "message": format!("the {} body cannot be transformed: {self}", direction.name()),
        })
        .to_string()
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Encoded(encoding) => write!(f, "it has content-encoding `{encoding}`"),
            Refusal::TooLarge { limit } => write!(f, "it is larger than {limit} bytes"),
            Refusal::Invalid(err) => write!(f, "it is {err}"),
        }
    }
}

/// Decides from the head: only JSON (`application/json`, `application/*+json`) is looked at;
/// an encoded one, or one announcing more than `max_body` bytes, is refused at once.
pub fn handling(head: Head<'_>, max_body: usize) -> Handling {
    if !head.content_type.is_some_and(is_json) {
        return Handling::Ignore;
    }
    if let Some(encoding) = head.content_encoding {
        let encoding = String::from_utf8_lossy(encoding);
        let encoding = encoding.trim();
        if !encoding.is_empty() && !encoding.eq_ignore_ascii_case("identity") {
            return Handling::Refuse(Refusal::Encoded(encoding.to_owned()));
        }
    }
    let announced = head
        .content_length
        .and_then(|length| std::str::from_utf8(length).ok())
        .and_then(|length| length.trim().parse::<u64>().ok());
    match announced {
        Some(length) if length > max_body as u64 => {
            Handling::Refuse(Refusal::TooLarge { limit: max_body })
        }
        _ => Handling::Buffer,
    }
}

/// Whether a `Content-Type` is JSON: `application/json` or `application/<anything>+json`,
/// any letter case, parameters (`; charset=utf-8`) ignored.
fn is_json(content_type: &[u8]) -> bool {
    let media_type = content_type
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii()
        .to_ascii_lowercase();
    match media_type.strip_prefix(b"application/") {
        Some(subtype) => subtype == b"json" || (subtype.len() > 5 && subtype.ends_with(b"+json")),
        None => false,
    }
}

/// Transforms a whole body: `Ok(None)` when it stays as it is (empty, or nothing matched),
/// `Ok(Some(bytes))` for the new body.
pub fn transform<F>(edits: &Edits, body: &[u8], property: F) -> Result<Option<Vec<u8>>, Refusal>
where
    F: FnMut(&[&str]) -> Option<Vec<u8>>,
{
    if body.is_empty() {
        return Ok(None);
    }
    let document = json::parse(body).map_err(Refusal::Invalid)?;
    let (document, changed) = edits.apply(document, property);
    if changed == 0 {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(body.len());
    document.write(&mut out);
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    fn head<'h>(
        content_type: Option<&'h str>,
        content_encoding: Option<&'h str>,
        content_length: Option<&'h str>,
    ) -> Head<'h> {
        Head {
            content_type: content_type.map(str::as_bytes),
            content_encoding: content_encoding.map(str::as_bytes),
            content_length: content_length.map(str::as_bytes),
        }
    }

    #[test]
    fn only_json_is_buffered() {
        for json in [
            "application/json",
            "Application/JSON; charset=utf-8",
            " application/json ;",
            "application/problem+json",
            "application/vnd.api+json; ext=x",
        ] {
            assert_eq!(
                handling(head(Some(json), None, None), 100),
                Handling::Buffer,
                "{json}"
            );
        }
        for other in [
            "text/plain",
            "text/json",
            "application/jsonp",
            "application/+json",
            "application/json-seq",
            "multipart/form-data; boundary=json",
            "",
        ] {
            assert_eq!(
                handling(head(Some(other), None, None), 100),
                Handling::Ignore,
                "{other}"
            );
        }
        assert_eq!(handling(head(None, None, None), 100), Handling::Ignore);
        assert_eq!(
            handling(
                Head {
                    content_type: Some(b"application/json\xff"),
                    ..Head::default()
                },
                100
            ),
            Handling::Ignore
        );
    }

    #[test]
    fn encoded_or_announced_too_large_bodies_are_refused_from_the_head() {
        let json = Some("application/json");
        assert_eq!(
            handling(head(json, Some("gzip"), None), 100),
            Handling::Refuse(Refusal::Encoded("gzip".into()))
        );
        assert_eq!(
            handling(head(json, Some("identity"), None), 100),
            Handling::Buffer
        );
        assert_eq!(
            handling(head(json, None, Some("100")), 100),
            Handling::Buffer
        );
        assert_eq!(
            handling(head(json, None, Some("101")), 100),
            Handling::Refuse(Refusal::TooLarge { limit: 100 })
        );
        // Not a length: the body will tell.
        assert_eq!(
            handling(head(json, None, Some("lots")), 100),
            Handling::Buffer
        );
        // Not JSON: never refused, whatever its size or encoding.
        assert_eq!(
            handling(head(Some("text/plain"), Some("gzip"), Some("999")), 100),
            Handling::Ignore
        );
    }

    #[test]
    fn refusals_answer_by_direction() {
        let too_deep = Refusal::Invalid(ParseError::TooDeep { offset: 128 });
        let cases = [
            (
                Refusal::Encoded("br".into()),
                415,
                "unsupported_content_encoding",
            ),
            (Refusal::TooLarge { limit: 10 }, 413, "body_too_large"),
            (too_deep.clone(), 400, "json_too_deep"),
            (
                Refusal::Invalid(ParseError::Syntax {
                    offset: 1,
                    message: "x",
                }),
                400,
                "invalid_json",
            ),
            (
                Refusal::Invalid(ParseError::NotUtf8 { offset: 1 }),
                400,
                "invalid_json",
            ),
        ];
        for (refusal, request_status, code) in cases {
            assert_eq!(refusal.status(Direction::Request), request_status);
            assert_eq!(refusal.status(Direction::Response), 502);
            assert_eq!(refusal.code(), code);
        }
        let answer: serde_json::Value =
            serde_json::from_str(&too_deep.answer(Direction::Response)).unwrap();
        assert_eq!(
            answer,
            serde_json::json!({
                "error": "json_too_deep",
                "message": "the response body cannot be transformed: it is nested deeper than 128 levels at byte 128",
            })
        );
    }

    #[test]
    fn bodies_are_transformed_or_refused() {
        let plan = config::Plan::parse(Some(br#"{"response": {"remove": ["/secret"]}}"#)).unwrap();
        let edits = plan.response.as_ref().unwrap();
        let run = |body: &[u8]| transform(edits, body, |_| None);
        assert_eq!(
            run(br#"{"a": 1, "secret": "s"}"#),
            Ok(Some(br#"{"a":1}"#.to_vec()))
        );
        // Nothing to remove, or nothing at all: the body stays byte for byte.
        assert_eq!(run(br#"{ "a" : 1 }"#), Ok(None));
        assert_eq!(run(b""), Ok(None));
        assert!(matches!(
            run(br#"{"secret": "s""#),
            Err(Refusal::Invalid(ParseError::Syntax { .. }))
        ));
        assert!(matches!(run(b"<html>"), Err(Refusal::Invalid(_))));
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(matches!(
            run(deep.as_bytes()),
            Err(Refusal::Invalid(ParseError::TooDeep { .. }))
        ));
    }
}
