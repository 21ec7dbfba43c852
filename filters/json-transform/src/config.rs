//! The configuration, and the edits of each direction it compiles to. SDK-free, tested
//! natively.

use std::borrow::Cow;
use std::collections::BTreeMap;

use filter_support::template::Template;
use serde::Deserialize;

use crate::edit::{self, Keep};
use crate::json::Json;
use crate::pointer::{Pointer, Segment};

/// `max_body` when not configured: half the host's default `limits.body` (1 MiB), leaving
/// room for the chunk that takes a body over it (see [`Plan::max_body`]).
pub const DEFAULT_MAX_BODY: usize = 512 << 10;
/// The largest `max_body`: the filter parses bodies in its own memory (`limits.memory`).
pub const LARGEST_MAX_BODY: usize = 64 << 20;

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawConfig {
    request: Option<RawEdits>,
    response: Option<RawEdits>,
    max_body: Option<serde_json::Value>,
    fail_closed: bool,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawEdits {
    keep: Vec<String>,
    remove: Vec<String>,
    rename: BTreeMap<String, String>,
    set: BTreeMap<String, serde_json::Value>,
}

/// A message's direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Request,
    Response,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Request => "request",
            Direction::Response => "response",
        }
    }
}

/// The whole configuration, parsed once at configure time.
#[derive(Debug)]
pub struct Plan {
    /// Edits of request bodies; `None`: requests are never looked at.
    pub request: Option<Edits>,
    /// Edits of response bodies; `None`: responses are never looked at.
    pub response: Option<Edits>,
    /// The largest body transformed, in bytes; larger ones are not buffered further.
    pub max_body: usize,
    /// Whether a body that cannot be transformed gets an error instead of going on unchanged.
    pub fail_closed: bool,
}

/// The edits of one direction, applied in this order: `keep`, `remove` (in list order),
/// `rename`, `set` (each in pointer order, as the configuration's maps reach the filter
/// sorted).
#[derive(Debug, Default)]
pub struct Edits {
    keep: Option<Keep>,
    remove: Vec<Pointer>,
    rename: Vec<(Pointer, Pointer)>,
    set: Vec<(Pointer, SetValue)>,
}

/// What `set` puts somewhere: a constant, or a string expanded with properties per body.
#[derive(Debug)]
enum SetValue {
    Constant(Json<'static>),
    Template(Template),
}

impl Default for Plan {
    /// A plan that transforms nothing.
    fn default() -> Plan {
        Plan {
            request: None,
            response: None,
            max_body: DEFAULT_MAX_BODY,
            fail_closed: false,
        }
    }
}

impl Plan {
    /// Parses the plugin configuration (JSON). Errors name the offending key, e.g.
    /// ``response.remove[1]: `items/*`: ...``.
    pub fn parse(raw: Option<&[u8]>) -> Result<Plan, String> {
        let raw: RawConfig = match raw {
            Some(raw) if !raw.iter().all(u8::is_ascii_whitespace) => {
                serde_json::from_slice(raw).map_err(|err| err.to_string())?
            }
            _ => return Ok(Plan::default()),
        };
        Ok(Plan {
            request: Edits::compile("request", raw.request)?,
            response: Edits::compile("response", raw.response)?,
            max_body: max_body(raw.max_body.as_ref())?,
            fail_closed: raw.fail_closed,
        })
    }

    /// The edits of `direction`'s bodies, if it has any.
    pub fn edits(&self, direction: Direction) -> Option<&Edits> {
        match direction {
            Direction::Request => self.request.as_ref(),
            Direction::Response => self.response.as_ref(),
        }
    }

    /// Whether the plan changes no body at all.
    pub fn is_empty(&self) -> bool {
        self.request.is_none() && self.response.is_none()
    }
}

impl Edits {
    /// The edits of `direction`; `None` when there are none.
    fn compile(direction: &str, raw: Option<RawEdits>) -> Result<Option<Edits>, String> {
        let Some(raw) = raw else {
            return Ok(None);
        };
        let pointer = |key: String, text: &str| {
            Pointer::parse(text).map_err(|err| format!("{direction}.{key}: {err}"))
        };
        let mut keep = Vec::with_capacity(raw.keep.len());
        for (i, text) in raw.keep.iter().enumerate() {
            keep.push(pointer(format!("keep[{i}]"), text)?);
        }
        let mut remove = Vec::with_capacity(raw.remove.len());
        for (i, text) in raw.remove.iter().enumerate() {
            let parsed = pointer(format!("remove[{i}]"), text)?;
            if parsed.is_root() {
                return Err(format!(
                    "{direction}.remove[{i}]: `` is the whole body, which cannot be removed"
                ));
            }
            remove.push(parsed);
        }
        let mut rename = Vec::with_capacity(raw.rename.len());
        for (from, to) in &raw.rename {
            let key = format!("rename.{from}");
            let from = pointer(key.clone(), from)?;
            let to = pointer(key.clone(), to)?;
            check_rename(&from, &to).map_err(|err| format!("{direction}.{key}: {err}"))?;
            rename.push((from, to));
        }
        let mut set = Vec::with_capacity(raw.set.len());
        for (text, value) in raw.set {
            let key = format!("set.{text}");
            let at = pointer(key.clone(), &text)?;
            let value = match value {
                serde_json::Value::String(template) => SetValue::Template(
                    Template::parse(&template)
                        .map_err(|err| format!("{direction}.{key}: {err}"))?,
                ),
                constant => SetValue::Constant(json_of(constant)),
            };
            set.push((at, value));
        }
        let edits = Edits {
            keep: (!keep.is_empty()).then(|| Keep::new(&keep)),
            remove,
            rename,
            set,
        };
        Ok((!edits.is_empty()).then_some(edits))
    }

    fn is_empty(&self) -> bool {
        self.keep.is_none()
            && self.remove.is_empty()
            && self.rename.is_empty()
            && self.set.is_empty()
    }

    /// Applies the edits to `document`; the count is of values changed (0: the document is
    /// as it was). `property` reads a property for the `set` templates.
    pub fn apply<'a, F>(&self, document: Json<'a>, mut property: F) -> (Json<'a>, usize)
    where
        F: FnMut(&[&str]) -> Option<Vec<u8>>,
    {
        let (mut document, mut changed) = match &self.keep {
            Some(keep) => keep.apply(document),
            None => (document, 0),
        };
        for pointer in &self.remove {
            changed += edit::remove(&mut document, pointer);
        }
        for (from, to) in &self.rename {
            changed += edit::rename(&mut document, from, to);
        }
        for (pointer, value) in &self.set {
            let value = match value {
                SetValue::Constant(constant) => constant.clone(),
                SetValue::Template(template) => {
                    Json::String(Cow::Owned(template.render(&mut property)))
                }
            };
            changed += edit::set(&mut document, pointer, &value);
        }
        (document, changed)
    }
}

/// A rename moves a value within each value the `*`s of `from` match: `to` has the same
/// segments up to the last `*` of `from`, no `*` after them, and both name something below.
fn check_rename(from: &Pointer, to: &Pointer) -> Result<(), String> {
    let (many, from_path) = from.split_after_last_any();
    if from_path.is_empty() {
        return Err(format!(
            "`{from}` must name a member or element (below its last `*`, if any)"
        ));
    }
    let to_path = match to.segments().split_at_checked(many.len()) {
        Some((prefix, path)) if prefix == many => path,
        _ => {
            return Err(format!(
                "`{to}` must start as `{from}` does, up to and including its last `*`"
            ))
        }
    };
    if to_path.is_empty() {
        return Err(format!(
            "`{to}` must name a member or element (below the last `*` of `{from}`, if any)"
        ));
    }
    if to_path.contains(&Segment::Any) {
        return Err(format!(
            "`{to}` has a `*` that `{from}` does not have (each value moves within what the `*`s of `from` match)"
        ));
    }
    Ok(())
}

/// A configured constant as a document value (object members in name order, as the
/// configuration delivers them).
fn json_of(value: serde_json::Value) -> Json<'static> {
    match value {
        serde_json::Value::Null => Json::Null,
        serde_json::Value::Bool(value) => Json::Bool(value),
        serde_json::Value::Number(number) => Json::Number(Cow::Owned(number.to_string())),
        serde_json::Value::String(text) => Json::String(Cow::Owned(text)),
        serde_json::Value::Array(items) => Json::Array(items.into_iter().map(json_of).collect()),
        serde_json::Value::Object(members) => Json::Object(
            members
                .into_iter()
                .map(|(name, value)| (Cow::Owned(name), json_of(value)))
                .collect(),
        ),
    }
}

/// `max_body`: a number of bytes, or a size such as `256KiB` (units `B`, `KiB`, `MiB`, `KB`,
/// `MB`), from 1 byte to [`LARGEST_MAX_BODY`].
fn max_body(raw: Option<&serde_json::Value>) -> Result<usize, String> {
    let bytes = match raw {
        None => return Ok(DEFAULT_MAX_BODY),
        Some(serde_json::Value::Number(number)) => number.as_u64(),
        Some(serde_json::Value::String(text)) => size(text),
        Some(_) => None,
    };
    let bytes = bytes
        .and_then(|bytes| usize::try_from(bytes).ok())
        .filter(|bytes| (1..=LARGEST_MAX_BODY).contains(bytes))
        .ok_or_else(|| {
            format!(
                "max_body: expected a size from 1 byte to 64MiB, like `256KiB` or 262144, found {}",
                raw.map(ToString::to_string).unwrap_or_default()
            )
        })?;
    Ok(bytes)
}

fn size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "KB" => 1_000,
        "MB" => 1_000_000,
        _ => return None,
    };
    number.parse::<u64>().ok()?.checked_mul(multiplier)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::parse;

    fn plan(json: &str) -> Plan {
        Plan::parse(Some(json.as_bytes())).unwrap_or_else(|err| panic!("{json}: {err}"))
    }

    fn parse_error(json: &str) -> String {
        match Plan::parse(Some(json.as_bytes())) {
            Ok(_) => panic!("{json}: accepted"),
            Err(err) => err,
        }
    }

    fn apply(edits: &Edits, body: &str) -> (String, usize) {
        let properties = [
            ("request.id", &b"req-1"[..]),
            ("response.code", &200i64.to_le_bytes()[..]),
        ];
        let (document, changed) = edits.apply(parse(body.as_bytes()).unwrap(), |path| {
            let path = path.join(".");
            properties
                .iter()
                .find(|(name, _)| *name == path)
                .map(|(_, value)| value.to_vec())
        });
        (String::from_utf8(document.to_bytes()).unwrap(), changed)
    }

    #[test]
    fn no_configuration_transforms_nothing() {
        for raw in [None, Some(&b""[..]), Some(b" \n"), Some(b"{}")] {
            let plan = Plan::parse(raw).unwrap();
            assert!(plan.is_empty());
            assert_eq!(plan.max_body, DEFAULT_MAX_BODY);
            assert!(!plan.fail_closed);
        }
        // Sections without edits are as good as absent.
        let plan = plan(r#"{"request": {}, "response": {"keep": [], "set": {}}}"#);
        assert!(plan.is_empty());
    }

    #[test]
    fn edits_apply_keep_remove_rename_then_set() {
        let full = plan(
            r#"{"response": {
                "keep": ["/id", "/items", "/user"],
                "remove": ["/items/*/secret", "/user/password"],
                "rename": {"/items/*/sku": "/items/*/code", "/user": "/customer"},
                "set": {"/edge/request": "${request.id}", "/edge/status": "${response.code}",
                        "/edge/version": 2, "/edge/tags": ["a", "${not.expanded}"],
                        "/items/*/currency": "EUR", "/cost": "$$5"}
            }}"#,
        );
        assert!(full.request.is_none());
        let edits = full.response.as_ref().unwrap();
        let (body, changed) = apply(
            edits,
            r#"{"id":1,"debug":true,"user":{"name":"a","password":"p"},
                "items":[{"sku":"A","secret":"s","price":1.50}]}"#,
        );
        assert_eq!(
            body,
            r#"{"id":1,"items":[{"price":1.50,"code":"A","currency":"EUR"}],"customer":{"name":"a"},"cost":"$5","edge":{"request":"req-1","status":"200","tags":["a","${not.expanded}"],"version":2}}"#
        );
        // debug; secret, password; sku, user; six sets.
        assert_eq!(changed, 1 + 2 + 2 + 6);
        // Edits that match nothing report no change (`set`, which always sets, aside).
        let untouched = plan(r#"{"response": {"remove": ["/x"], "rename": {"/a": "/b"}}}"#);
        assert_eq!(
            apply(untouched.response.as_ref().unwrap(), r#"{"y": 1}"#),
            (r#"{"y":1}"#.to_owned(), 0)
        );
    }

    #[test]
    fn max_body_takes_bytes_or_sizes() {
        for (raw, bytes) in [
            ("1", 1),
            ("262144", 262_144),
            (r#""256KiB""#, 262_144),
            (r#""2MiB""#, 2 << 20),
            (r#""100KB""#, 100_000),
            (r#""64MiB""#, 64 << 20),
            (r#""10 B""#, 10),
        ] {
            assert_eq!(
                plan(&format!(r#"{{"max_body": {raw}}}"#)).max_body,
                bytes,
                "{raw}"
            );
        }
        for raw in [
            "0",
            "-1",
            "1.5",
            r#""65MiB""#,
            r#""1GiB""#,
            r#""lots""#,
            r#""1.5KiB""#,
            "true",
        ] {
            let err = parse_error(&format!(r#"{{"max_body": {raw}}}"#));
            assert!(err.starts_with("max_body: expected a size"), "{raw}: {err}");
        }
    }

    #[test]
    fn bad_configurations_are_refused_with_the_key() {
        let cases = [
            (
                r#"{"response": {"keep": ["/a", "b"]}}"#,
                "response.keep[1]: `b` is not a JSON pointer",
            ),
            (
                r#"{"request": {"remove": ["/a~2"]}}"#,
                "request.remove[0]: `/a~2`: `~` must be followed",
            ),
            (
                r#"{"response": {"remove": [""]}}"#,
                "response.remove[0]: `` is the whole body",
            ),
            (
                r#"{"response": {"set": {"x": 1}}}"#,
                "response.set.x: `x` is not a JSON pointer",
            ),
            (
                r#"{"response": {"set": {"/x": "${}"}}}"#,
                "response.set./x: at byte 2: empty property path",
            ),
            (
                r#"{"response": {"set": {"/x": "a$"}}}"#,
                "response.set./x: at byte 1",
            ),
            (
                r#"{"response": {"rename": {"/a": ""}}}"#,
                "response.rename./a: `` must name a member",
            ),
            (
                r#"{"response": {"rename": {"": "/a"}}}"#,
                "response.rename.: `` must name a member",
            ),
            (
                r#"{"response": {"rename": {"/a/*": "/b"}}}"#,
                "`/a/*` must name a member or element",
            ),
            (
                r#"{"response": {"rename": {"/a/*/x": "/b/*/y"}}}"#,
                "`/b/*/y` must start as `/a/*/x` does",
            ),
            (
                r#"{"response": {"rename": {"/a/*/x": "/a/*"}}}"#,
                "`/a/*` must name a member or element",
            ),
            (
                r#"{"response": {"rename": {"/a/x": "/a/*/y"}}}"#,
                "`/a/*/y` has a `*` that `/a/x` does not",
            ),
            (
                r#"{"response": {"rename": {"/a/*/x": "/a/*/y/*"}}}"#,
                "has a `*`",
            ),
            (r#"{"response": {"kep": []}}"#, "unknown field `kep`"),
            (r#"{"responses": {}}"#, "unknown field `responses`"),
            (r#"{"fail_closed": "yes"}"#, "invalid type"),
            (r#"{"response": {"rename": {"/a": 1}}}"#, "invalid type"),
            ("not json", "expected"),
        ];
        for (json, message) in cases {
            let err = parse_error(json);
            assert!(err.contains(message), "{json}: {err}");
        }
    }
}
