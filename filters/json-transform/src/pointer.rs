//! JSON pointers (RFC 6901) with one addition: a segment that is exactly `*` matches every
//! element of an array and every member of an object. SDK-free, tested natively.

use std::fmt;

/// One reference token of a pointer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// `*`: every array element, every object member.
    Any,
    /// An object member by name, or, when the token is an array index (`0`, or digits
    /// without a leading zero), that element of an array.
    Name { name: String, index: Option<usize> },
}

/// A parsed pointer, with its text for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pointer {
    text: String,
    segments: Vec<Segment>,
}

impl Pointer {
    /// Parses `text`: empty (the whole document) or `/`-separated tokens, where `~1` is a `/`
    /// and `~0` a `~` inside a token; any other `~` is an error. A member literally named `*`
    /// cannot be addressed (the token always means every member).
    pub fn parse(text: &str) -> Result<Pointer, String> {
        let mut segments = Vec::new();
        if !text.is_empty() {
            let Some(tokens) = text.strip_prefix('/') else {
                return Err(format!(
                    "`{text}` is not a JSON pointer: it starts with `/` (or is empty, for the whole document)"
                ));
            };
            for token in tokens.split('/') {
                segments.push(segment(token).map_err(|err| format!("`{text}`: {err}"))?);
            }
        }
        Ok(Pointer {
            text: text.to_owned(),
            segments,
        })
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Whether the pointer is the whole document (empty).
    pub fn is_root(&self) -> bool {
        self.segments.is_empty()
    }

    /// Splits the pointer after its last `*`: the part that may match many values, and the
    /// plain path (no `*`) below each of them.
    pub fn split_after_last_any(&self) -> (&[Segment], &[Segment]) {
        let at = self
            .segments
            .iter()
            .rposition(|segment| *segment == Segment::Any)
            .map_or(0, |last| last + 1);
        self.segments.split_at(at)
    }
}

impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn segment(token: &str) -> Result<Segment, String> {
    if token == "*" {
        return Ok(Segment::Any);
    }
    let mut name = String::with_capacity(token.len());
    let mut chars = token.chars();
    while let Some(c) = chars.next() {
        if c != '~' {
            name.push(c);
            continue;
        }
        match chars.next() {
            Some('0') => name.push('~'),
            Some('1') => name.push('/'),
            _ => return Err("`~` must be followed by `0` (for `~`) or `1` (for `/`)".to_owned()),
        }
    }
    let index = array_index(&name);
    Ok(Segment::Name { name, index })
}

/// RFC 6901's array index: `0`, or digits without a leading zero (that fit a usize).
fn array_index(token: &str) -> Option<usize> {
    let digits = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
    if !digits || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    token.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(name: &str, index: Option<usize>) -> Segment {
        Segment::Name {
            name: name.to_owned(),
            index,
        }
    }

    #[test]
    fn tokens_are_unescaped_and_indexes_recognised() {
        let pointer = Pointer::parse("/a~1b/m~0n/0/10/01/*/~01/").unwrap();
        assert_eq!(
            pointer.segments(),
            [
                name("a/b", None),
                name("m~n", None),
                name("0", Some(0)),
                name("10", Some(10)),
                name("01", None),
                Segment::Any,
                name("~1", None),
                name("", None),
            ]
        );
        assert_eq!(pointer.to_string(), "/a~1b/m~0n/0/10/01/*/~01/");
        assert!(Pointer::parse("").unwrap().is_root());
        assert_eq!(Pointer::parse("/").unwrap().segments(), [name("", None)]);
        // `**`, `a*`: names, not wildcards. An index too large for a usize: a name.
        assert_eq!(
            Pointer::parse("/**/a*/99999999999999999999999")
                .unwrap()
                .segments(),
            [
                name("**", None),
                name("a*", None),
                name("99999999999999999999999", None)
            ]
        );
    }

    #[test]
    fn bad_pointers_say_why() {
        for (text, message) in [
            ("a/b", "starts with `/`"),
            ("/a~2", "`~` must be followed"),
            ("/a~", "`~` must be followed"),
        ] {
            let err = Pointer::parse(text).unwrap_err();
            assert!(err.contains(message), "{text}: {err}");
            assert!(err.contains(text), "{text}: {err}");
        }
    }

    #[test]
    fn splits_after_the_last_wildcard() {
        let pointer = Pointer::parse("/a/*/b/*/c/d").unwrap();
        let (many, path) = pointer.split_after_last_any();
        assert_eq!(many.len(), 4);
        assert_eq!(path, [name("c", None), name("d", None)]);
        let plain = Pointer::parse("/a/b").unwrap();
        assert_eq!(plain.split_after_last_any().0.len(), 0);
        let ends = Pointer::parse("/a/*").unwrap();
        assert_eq!(ends.split_after_last_any().1.len(), 0);
    }
}
