//! The configuration and the header edits it describes. SDK-free, tested natively.

use std::collections::BTreeMap;

use serde::Deserialize;

use filter_support::template::Template;

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawConfig {
    request: RawEdits,
    response: RawEdits,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawEdits {
    set: BTreeMap<String, String>,
    add: BTreeMap<String, String>,
    remove: Vec<String>,
}

/// The edits of both phases, parsed once at configure time.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub request: Edits,
    pub response: Edits,
}

/// The edits of one phase, applied in this order: `remove`, then `set`, then `add`; within
/// `set` and `add`, in header name order. Names are lower case.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Edits {
    pub remove: Vec<String>,
    pub set: Vec<(String, Template)>,
    pub add: Vec<(String, Template)>,
}

/// The header operations of one phase, as the host offers them.
pub trait Headers {
    /// Removes every value of `name`.
    fn remove(&mut self, name: &str);
    /// Replaces every value of `name` with `value` (adds it if missing).
    fn set(&mut self, name: &str, value: &str);
    /// Appends a value of `name`, keeping the others.
    fn add(&mut self, name: &str, value: &str);
}

impl Plan {
    /// Parses the plugin configuration (JSON). No configuration, or an empty one, is a plan
    /// that changes nothing. Errors name the offending key, e.g.
    /// ``request.set.x-trace: at byte 2: empty property path in `${}` ``.
    pub fn parse(raw: Option<&[u8]>) -> Result<Plan, String> {
        let raw: RawConfig = match raw {
            Some(raw) if !raw.iter().all(u8::is_ascii_whitespace) => {
                serde_json::from_slice(raw).map_err(|err| err.to_string())?
            }
            _ => RawConfig::default(),
        };
        Ok(Plan {
            request: Edits::compile("request", raw.request)?,
            response: Edits::compile("response", raw.response)?,
        })
    }

    /// Whether the plan changes nothing at all.
    pub fn is_empty(&self) -> bool {
        self.request.is_empty() && self.response.is_empty()
    }
}

impl Edits {
    fn compile(phase: &str, raw: RawEdits) -> Result<Edits, String> {
        let mut remove = Vec::new();
        for name in raw.remove {
            let name = header_name(&name).map_err(|err| format!("{phase}.remove: {err}"))?;
            if !remove.contains(&name) {
                remove.push(name);
            }
        }
        Ok(Edits {
            remove,
            set: templates(phase, "set", raw.set)?,
            add: templates(phase, "add", raw.add)?,
        })
    }

    /// Whether there is nothing to do in this phase.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// Applies the edits: removes, then sets, then adds, each value rendered with `property`
    /// (see [`Template::render`]).
    pub fn apply<H, F>(&self, headers: &mut H, mut property: F)
    where
        H: Headers + ?Sized,
        F: FnMut(&[&str]) -> Option<Vec<u8>>,
    {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, template) in &self.set {
            headers.set(name, &template.render(&mut property));
        }
        for (name, template) in &self.add {
            headers.add(name, &template.render(&mut property));
        }
    }
}

fn templates(
    phase: &str,
    kind: &str,
    raw: BTreeMap<String, String>,
) -> Result<Vec<(String, Template)>, String> {
    let mut compiled: Vec<(String, Template)> = Vec::with_capacity(raw.len());
    for (name, value) in raw {
        let lower = header_name(&name).map_err(|err| format!("{phase}.{kind}: {err}"))?;
        if compiled.iter().any(|(known, _)| *known == lower) {
            return Err(format!(
                "{phase}.{kind}: header `{lower}` is given twice (names are case-insensitive)"
            ));
        }
        let template =
            Template::parse(&value).map_err(|err| format!("{phase}.{kind}.{name}: {err}"))?;
        compiled.push((lower, template));
    }
    compiled.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(compiled)
}

/// Checks an HTTP header name (an RFC 9110 token) and lower-cases it. Pseudo-headers
/// (`:path`, ...) are refused: this filter edits ordinary headers only.
fn header_name(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("empty header name".to_owned());
    }
    if name.starts_with(':') {
        return Err(format!(
            "`{name}`: pseudo-headers cannot be edited by this filter"
        ));
    }
    if let Some(c) = name.chars().find(|&c| !is_token_char(c)) {
        return Err(format!(
            "`{name}` is not a valid header name ({c:?} is not allowed)"
        ));
    }
    Ok(name.to_ascii_lowercase())
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Headers as a list of (name, value), edited as the host does.
    #[derive(Default)]
    struct Recorded {
        headers: Vec<(String, String)>,
        ops: Vec<String>,
    }

    impl Headers for Recorded {
        fn remove(&mut self, name: &str) {
            self.ops.push(format!("remove {name}"));
            self.headers.retain(|(n, _)| n != name);
        }
        fn set(&mut self, name: &str, value: &str) {
            self.ops.push(format!("set {name}={value}"));
            self.headers.retain(|(n, _)| n != name);
            self.headers.push((name.to_owned(), value.to_owned()));
        }
        fn add(&mut self, name: &str, value: &str) {
            self.ops.push(format!("add {name}={value}"));
            self.headers.push((name.to_owned(), value.to_owned()));
        }
    }

    fn plan(json: &str) -> Plan {
        Plan::parse(Some(json.as_bytes())).unwrap()
    }

    fn parse_error(json: &str) -> String {
        Plan::parse(Some(json.as_bytes())).unwrap_err()
    }

    /// The brief's example configuration, as the host delivers it (JSON).
    const EXAMPLE: &str = r#"{
        "request":  { "set": { "x-edge": "1" }, "add": { "x-trace": "${request.id}" },
                      "remove": ["x-internal-secret"] },
        "response": { "set": { "x-served-by": "edgeward",
                               "x-edge-country": "${geo.country_code}" },
                      "remove": ["server", "x-powered-by"] }
    }"#;

    #[test]
    fn no_or_empty_configuration_changes_nothing() {
        assert!(Plan::parse(None).unwrap().is_empty());
        assert!(Plan::parse(Some(b"")).unwrap().is_empty());
        assert!(Plan::parse(Some(b" \n")).unwrap().is_empty());
        assert!(plan("{}").is_empty());
        assert!(plan(r#"{"request": {}, "response": {"set": {}}}"#).is_empty());
    }

    #[test]
    fn request_edits_apply_in_order_remove_set_add() {
        let plan = plan(EXAMPLE);
        assert!(plan.response.add.is_empty());
        let mut headers = Recorded {
            headers: vec![
                ("x-internal-secret".into(), "s3cret".into()),
                ("x-edge".into(), "old".into()),
                ("x-trace".into(), "upstream-trace".into()),
            ],
            ops: Vec::new(),
        };
        let properties: HashMap<&str, &[u8]> = HashMap::from([("request.id", &b"req-42"[..])]);
        plan.request.apply(&mut headers, |path| {
            properties.get(path.join(".").as_str()).map(|v| v.to_vec())
        });
        assert_eq!(
            headers.ops,
            [
                "remove x-internal-secret",
                "set x-edge=1",
                "add x-trace=req-42"
            ]
        );
        assert_eq!(
            headers.headers,
            [
                ("x-trace".to_owned(), "upstream-trace".to_owned()),
                ("x-edge".to_owned(), "1".to_owned()),
                ("x-trace".to_owned(), "req-42".to_owned()),
            ]
        );
    }

    #[test]
    fn response_edits_expand_missing_properties_to_empty() {
        let plan = plan(EXAMPLE);
        let mut headers = Recorded {
            headers: vec![
                ("server".into(), "nginx".into()),
                ("x-powered-by".into(), "php".into()),
                ("content-type".into(), "text/plain".into()),
            ],
            ops: Vec::new(),
        };
        plan.response.apply(&mut headers, |_| None);
        assert_eq!(
            headers.ops,
            [
                "remove server",
                "remove x-powered-by",
                "set x-edge-country=",
                "set x-served-by=edgeward",
            ]
        );
        assert_eq!(
            headers.headers,
            [
                ("content-type".to_owned(), "text/plain".to_owned()),
                ("x-edge-country".to_owned(), String::new()),
                ("x-served-by".to_owned(), "edgeward".to_owned()),
            ]
        );
    }

    #[test]
    fn a_header_both_removed_and_set_ends_up_set() {
        let plan = plan(
            r#"{"request": {"remove": ["x-a"], "set": {"x-a": "new"}, "add": {"x-a": "more"}}}"#,
        );
        let mut headers = Recorded {
            headers: vec![("x-a".into(), "old".into())],
            ops: Vec::new(),
        };
        plan.request.apply(&mut headers, |_| None);
        assert_eq!(
            headers.headers,
            [
                ("x-a".to_owned(), "new".to_owned()),
                ("x-a".to_owned(), "more".to_owned()),
            ]
        );
    }

    #[test]
    fn names_are_lower_cased_and_deduplicated() {
        let plan = plan(r#"{"request": {"set": {"X-Edge": "1"}, "remove": ["Server", "server"]}}"#);
        assert_eq!(plan.request.remove, ["server"]);
        assert_eq!(plan.request.set[0].0, "x-edge");
        assert!(
            parse_error(r#"{"request": {"set": {"X-A": "1", "x-a": "2"}}}"#)
                .contains("header `x-a` is given twice")
        );
    }

    #[test]
    fn bad_configurations_are_refused_with_the_key() {
        let cases = [
            (
                r#"{"request": {"set": {"x-a": "${}"}}}"#,
                "request.set.x-a: at byte 2: empty property path",
            ),
            (
                r#"{"response": {"add": {"x-a": "a$"}}}"#,
                "response.add.x-a: at byte 1",
            ),
            (
                r#"{"request": {"set": {"bad name": "1"}}}"#,
                "request.set: `bad name` is not a valid header name",
            ),
            (
                r#"{"request": {"remove": [":path"]}}"#,
                "request.remove: `:path`: pseudo-headers",
            ),
            (
                r#"{"request": {"remove": [""]}}"#,
                "request.remove: empty header name",
            ),
            (r#"{"request": {"sett": {}}}"#, "unknown field `sett`"),
            (r#"{"requests": {}}"#, "unknown field `requests`"),
            (r#"{"request": {"set": {"x-a": 1}}}"#, "invalid type"),
            ("not json", "expected"),
        ];
        for (json, message) in cases {
            let err = parse_error(json);
            assert!(err.contains(message), "{json}: {err}");
        }
    }
}
