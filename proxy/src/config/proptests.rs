//! Property-based tests of the configuration loader and its validation: whatever the bytes,
//! text or structure of a file, loading it never panics and ends either in a configuration or
//! in problems that each name their place in the file (or are about the whole file), in file
//! order. `make test` runs a few cases of each property; `make fuzz` runs many (the standard
//! `PROPTEST_CASES` variable sets how many, here and there).

use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

use super::{from_bytes, from_str, Config, ConfigError, Mark, MAX_SHOWN};

/// A folder that does not exist: files the configuration names are never found (nor created).
const PATH: &str = "/nonexistent-edgeward-proptests/c.yaml";

/// Cases per property when `PROPTEST_CASES` does not say: few, as `make test` runs them.
const DEFAULT_CASES: u32 = 64;

/// The configuration of every property test of edgeward: [`DEFAULT_CASES`] unless
/// `PROPTEST_CASES` says, and no regression files.
pub(crate) fn proptest_config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = DEFAULT_CASES;
    }
    // A failure prints its shrunk input; no regression files are written into the tree.
    config.failure_persistence = None;
    config
}

/// The problems told about the whole file, which have no place in it.
const WHOLE_FILE: &[&str] = &[
    "the configuration is larger than",
    "at least one listener is required",
    "at least one upstream is required",
    "at least one route is required",
];

/// The length in characters of each line of `text`, lines ended as the YAML scanner ends them.
fn line_lengths(text: &str) -> Vec<usize> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lengths = vec![0];
    let mut after_cr = false;
    for c in text.chars() {
        match c {
            '\n' if after_cr => {}
            '\n' | '\r' => lengths.push(0),
            _ => {
                if let Some(last) = lengths.last_mut() {
                    *last += 1;
                }
            }
        }
        after_cr = c == '\r';
    }
    lengths
}

/// The property: `result` is a configuration, or problems each placed within `text` (when the
/// text is known) or about the whole file, in file order, at most `MAX_SHOWN` of them.
fn check(text: Option<&str>, result: Result<Config, ConfigError>) -> Result<(), TestCaseError> {
    let error = match result {
        Ok(_) => return Ok(()),
        Err(error) => error,
    };
    let rendered = error.to_string();
    let found = error.problems_found();
    let ConfigError::Invalid { problems, more, .. } = error else {
        return Err(TestCaseError::fail(format!(
            "not a problem list: {rendered}"
        )));
    };
    prop_assert!(!problems.is_empty());
    prop_assert!(problems.len() <= MAX_SHOWN);
    prop_assert_eq!(found, problems.len() + more);
    prop_assert!(rendered.starts_with(PATH), "{}", rendered);
    let lines = text.map(line_lengths);
    for problem in &problems {
        prop_assert!(!problem.message.is_empty());
        match (problem.mark, &lines) {
            (None, _) => prop_assert!(
                WHOLE_FILE.iter().any(|w| problem.message.starts_with(w)),
                "a problem with no place: {}",
                problem
            ),
            (Some(Mark { line, col }), Some(lines)) => {
                let length = line.checked_sub(1).and_then(|i| lines.get(i));
                prop_assert!(
                    length.is_some_and(|length| col >= 1 && col <= length + 1),
                    "{} is outside the text (line lengths {:?})",
                    problem,
                    lines
                );
            }
            (Some(Mark { line, col }), None) => prop_assert!(line >= 1 && col >= 1),
        }
    }
    let places: Vec<_> = problems
        .iter()
        .map(|p| p.mark.map(|m| (m.line, m.col)))
        .collect();
    prop_assert!(places.windows(2).all(|w| w[0] <= w[1]), "{:?}", places);
    Ok(())
}

fn load_text(text: &str) -> Result<(), TestCaseError> {
    check(Some(text), from_str(text, Path::new(PATH)))
}

fn load_bytes(bytes: &[u8]) -> Result<(), TestCaseError> {
    let text = std::str::from_utf8(bytes).ok();
    check(text, from_bytes(bytes, Path::new(PATH)))
}

const SEED: &str = include_str!("../../../config/edgeward.yaml");

/// The characters YAML's syntax is made of, a few words, and some it forbids.
fn yamlish_text() -> impl Strategy<Value = String> {
    let pieces = prop::sample::select(vec![
        ":",
        ": ",
        "-",
        "- ",
        "[",
        "]",
        "{",
        "}",
        ",",
        "&a",
        "*a",
        "&b ",
        "*b",
        "!",
        "!!str ",
        "|",
        ">",
        "'",
        "\"",
        "#",
        "?",
        "\t",
        "%",
        "@",
        "`",
        "~",
        "\\",
        " ",
        "  ",
        "\n",
        "\r\n",
        "\r",
        "---",
        "...",
        "listeners",
        "upstreams",
        "routes",
        "filters",
        "config",
        "upstream",
        "endpoints",
        "match",
        "path_prefix",
        "127.0.0.1:8080",
        "/",
        "1",
        "2s",
        "1MiB",
        "é",
        "\u{feff}",
        "\0",
        "\u{1}",
        "\u{85}",
        "null",
        "true",
    ]);
    prop::collection::vec(pieces, 0..200).prop_map(|pieces| pieces.concat())
}

/// An edit of a valid file: bytes inserted, removed or repeated somewhere.
#[derive(Debug, Clone)]
enum Edit {
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    Repeat(usize, usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Edit::Insert(at, bytes)),
        (any::<usize>(), 1..64usize).prop_map(|(at, n)| Edit::Remove(at, n)),
        (any::<usize>(), 1..200usize, 1..4usize)
            .prop_map(|(at, n, times)| Edit::Repeat(at, n, times)),
    ]
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for edit in edits {
        let at = |i: usize| i % (bytes.len() + 1);
        match edit {
            Edit::Insert(i, new) => {
                let i = at(*i);
                bytes.splice(i..i, new.iter().copied());
            }
            Edit::Remove(i, n) => {
                let i = at(*i);
                let end = (i + n).min(bytes.len());
                bytes.drain(i..end);
            }
            Edit::Repeat(i, n, times) => {
                let i = at(*i);
                let end = (i + n).min(bytes.len());
                let piece: Vec<u8> = bytes.get(i..end).unwrap_or_default().to_vec();
                for _ in 0..*times {
                    bytes.splice(end..end, piece.iter().copied());
                }
            }
        }
    }
    bytes
}

/// A YAML value to write out: scalars, lists and mappings, each collection in block or flow
/// style, and anchors and aliases.
#[derive(Debug, Clone)]
enum Yaml {
    Scalar(String),
    List(Vec<Yaml>, bool),
    Map(Vec<(String, Yaml)>, bool),
    Anchored(Box<Yaml>),
    /// An alias to one of the anchors defined before it (a scalar when there is none).
    Alias(usize),
}

/// Keys of the configuration, so that values reach the deserializer's known fields and
/// validation, and a few unknown ones.
const KEYS: &[&str] = &[
    "listeners",
    "address",
    "workers",
    "work_stealing",
    "access_log",
    "shutdown_timeout",
    "upstreams",
    "endpoints",
    "builtin",
    "load_balancing",
    "connect_timeout",
    "read_timeout",
    "retries",
    "health_check",
    "path",
    "interval",
    "host",
    "routes",
    "name",
    "match",
    "path_prefix",
    "path_regex",
    "methods",
    "headers",
    "upstream",
    "strip_prefix",
    "filters",
    "timeout",
    "cache",
    "default_ttl",
    "key",
    "bypass",
    "module",
    "config",
    "vm_config",
    "isolation",
    "limits",
    "memory",
    "cpu",
    "body",
    "callouts",
    "on_error",
    "wasm",
    "admin",
    "geo",
    "database",
    "trusted_proxies",
    "disk",
    "size",
    "max_object",
    "u",
    "f",
    "r",
    "x-canary",
    "unknown",
    "lisenters",
    "é",
    "",
];

/// Values valid somewhere in a configuration, and values valid nowhere. No host names that
/// need a DNS lookup: endpoints are addresses, `localhost` or junk.
const SCALARS: &[&str] = &[
    "127.0.0.1:8080",
    "[::1]:9000",
    "localhost:9001",
    "127.0.0.1:0",
    "http://x:1",
    "echo",
    "round_robin",
    "random",
    "consistent_hash",
    "/",
    "/api/",
    "/items/(",
    "GET",
    "G T",
    "2s",
    "500ms",
    "1.5s",
    "0s",
    "-1s",
    "1e999s",
    "soon",
    "64KiB",
    "1MiB",
    "2TiB",
    "0.3B",
    "1",
    "0",
    "-1",
    "1024",
    "99999999999999999999",
    "1.5",
    "true",
    "false",
    "~",
    "null",
    "",
    "u",
    "f",
    "r",
    "shared",
    "request",
    "fail_open",
    "before_cache",
    "stdout",
    "off",
    "10.0.0.0/8",
    "host",
    "header:x-device",
    "cookie:tier",
    "colour",
    "*.example.com",
    "a.com:80",
    "é",
    "line\nbreak",
    "quote\"d",
    "tab\there",
    "colon: space",
    "- dash",
    "# hash",
    "&amp",
    "*star",
    "!bang",
    "%percent",
    "@at",
    "`tick",
    "{brace}",
    "[bracket]",
    "a,b",
];

fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(SCALARS).prop_map(str::to_string),
        1 => "[a-z0-9 ./:_-]{0,12}",
        1 => any::<String>().prop_map(|s| s.chars().take(12).collect()),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(KEYS).prop_map(str::to_string),
        1 => scalar(),
    ]
}

fn yaml() -> impl Strategy<Value = Yaml> {
    let leaf = prop_oneof![
        6 => scalar().prop_map(Yaml::Scalar),
        1 => (0..8usize).prop_map(Yaml::Alias),
    ];
    leaf.prop_recursive(5, 80, 6, |inner| {
        prop_oneof![
            (prop::collection::vec(inner.clone(), 0..6), any::<bool>())
                .prop_map(|(items, flow)| Yaml::List(items, flow)),
            (
                prop::collection::vec((key(), inner.clone()), 0..6),
                any::<bool>()
            )
                .prop_map(|(entries, flow)| Yaml::Map(entries, flow)),
            inner.prop_map(|node| Yaml::Anchored(Box::new(node))),
        ]
    })
}

/// A configuration-shaped document: a mapping of top-level keys to any values, with the
/// sections usually present written as expected most of the time.
fn document() -> impl Strategy<Value = Yaml> {
    let section = |name: &'static str, value: &'static str| {
        prop_oneof![
            3 => Just(Some((name.to_string(), Yaml::Scalar(value.to_string())))),
            1 => yaml().prop_map(move |v| Some((name.to_string(), v))),
            1 => Just(None),
        ]
    };
    (
        section("listeners", "[{address: 127.0.0.1:8080}]"),
        section("upstreams", "{u: {builtin: echo}}"),
        section("routes", "[{upstream: u}]"),
        prop::collection::vec((key(), yaml()), 0..4),
        any::<bool>(),
    )
        .prop_map(|(listeners, upstreams, routes, more, flow)| {
            let entries = [listeners, upstreams, routes]
                .into_iter()
                .flatten()
                .chain(more)
                .collect();
            Yaml::Map(entries, flow)
        })
}

/// Writes YAML text; scalars of the `SCALARS` sections that are flow text are written raw
/// (so `[{upstream: u}]` is a list), others plain when safe, else double-quoted.
struct Writer {
    out: String,
    anchors: usize,
}

impl Writer {
    fn scalar(&mut self, text: &str) {
        let raw = text.starts_with('[') && text.ends_with(']') && text.contains(": ")
            || text.starts_with('{') && text.ends_with('}') && text.contains(": ");
        let plain = !text.is_empty()
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | '_' | '-' | ':'))
            && !text.starts_with(['-', ':'])
            && !text.contains(": ")
            && !text.ends_with(':');
        if raw || plain {
            self.out.push_str(text);
        } else {
            self.out
                .push_str(&serde_json::to_string(text).unwrap_or_else(|_| "x".into()));
        }
    }

    fn alias(&mut self, n: usize) {
        if self.anchors == 0 {
            self.out.push('x');
        } else {
            self.out.push_str(&format!("*a{}", n % self.anchors));
        }
    }

    fn anchor(&mut self) {
        self.out.push_str(&format!("&a{} ", self.anchors));
        self.anchors += 1;
    }

    fn flow(&mut self, node: &Yaml) {
        match node {
            Yaml::Scalar(text) => self.scalar(text),
            Yaml::Alias(n) => self.alias(*n),
            Yaml::Anchored(inner) => {
                // A node takes one anchor, and an alias none.
                if !matches!(**inner, Yaml::Anchored(_) | Yaml::Alias(_)) {
                    self.anchor();
                }
                self.flow(inner);
            }
            Yaml::List(items, _) => {
                self.out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.out.push_str(", ");
                    }
                    self.flow(item);
                }
                self.out.push(']');
            }
            Yaml::Map(entries, _) => {
                self.out.push('{');
                for (i, (key, value)) in entries.iter().enumerate() {
                    if i > 0 {
                        self.out.push_str(", ");
                    }
                    self.scalar(key);
                    self.out.push_str(": ");
                    self.flow(value);
                }
                self.out.push('}');
            }
        }
    }

    /// Whether `node` is written in block style (on lines of its own).
    fn is_block(node: &Yaml) -> bool {
        match node {
            Yaml::List(items, flow) => !flow && !items.is_empty(),
            Yaml::Map(entries, flow) => !flow && !entries.is_empty(),
            Yaml::Anchored(inner) => Self::is_block(inner),
            _ => false,
        }
    }

    /// Writes `node` after a key's `:` or a list's `-`: inline, or on the next lines.
    fn value(&mut self, node: &Yaml, indent: usize) {
        if let Yaml::Anchored(inner) = node {
            if Self::is_block(inner) {
                self.out.push(' ');
                self.anchor();
                self.out.push('\n');
                return self.block(inner, indent);
            }
        }
        if Self::is_block(node) {
            self.out.push('\n');
            self.block(node, indent);
        } else {
            self.out.push(' ');
            self.flow(node);
            self.out.push('\n');
        }
    }

    fn block(&mut self, node: &Yaml, indent: usize) {
        let pad = " ".repeat(indent);
        match node {
            Yaml::List(items, false) if !items.is_empty() => {
                for item in items {
                    self.out.push_str(&pad);
                    self.out.push('-');
                    self.value(item, indent + 2);
                }
            }
            Yaml::Map(entries, false) if !entries.is_empty() => {
                for (key, value) in entries {
                    self.out.push_str(&pad);
                    self.scalar(key);
                    self.out.push(':');
                    self.value(value, indent + 2);
                }
            }
            Yaml::Anchored(inner) => self.block(inner, indent),
            other => {
                self.out.push_str(&pad);
                self.flow(other);
                self.out.push('\n');
            }
        }
    }
}

fn write(node: &Yaml) -> String {
    let mut writer = Writer {
        out: String::new(),
        anchors: 0,
    };
    writer.block(node, 0);
    writer.out
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn any_bytes_load_or_tell_where_they_are_wrong(
        bytes in prop::collection::vec(any::<u8>(), 0..512)
    ) {
        load_bytes(&bytes)?;
    }

    #[test]
    fn any_text_loads_or_tells_where_it_is_wrong(text in any::<String>()) {
        load_text(&text)?;
    }

    #[test]
    fn yaml_syntax_soup_loads_or_tells_where_it_is_wrong(text in yamlish_text()) {
        load_text(&text)?;
    }

    #[test]
    fn a_valid_file_edited_at_random_loads_or_tells_where_it_is_wrong(
        edits in prop::collection::vec(edit(), 1..6)
    ) {
        load_bytes(&apply(SEED.as_bytes().to_vec(), &edits))?;
    }

    #[test]
    fn structured_yaml_with_anchors_loads_or_tells_where_it_is_wrong(doc in document()) {
        load_text(&write(&doc))?;
    }

    #[test]
    fn any_yaml_as_a_filter_config_loads_or_tells_where_it_is_wrong(config in yaml()) {
        let doc = Yaml::Map(
            vec![(
                "filters".into(),
                Yaml::Map(
                    vec![(
                        "f".into(),
                        Yaml::Map(
                            vec![
                                ("module".into(), Yaml::Scalar("f.wasm".into())),
                                ("config".into(), config),
                            ],
                            false,
                        ),
                    )],
                    false,
                ),
            )],
            false,
        );
        load_text(&format!(
            "listeners: [{{address: 127.0.0.1:8080}}]\nupstreams: {{u: {{builtin: echo}}}}\nroutes: [{{upstream: u}}]\n{}",
            write(&doc)
        ))?;
    }
}

#[test]
fn the_writer_writes_yaml_that_reads_back() {
    let doc = Yaml::Map(
        vec![
            (
                "listeners".into(),
                Yaml::List(
                    vec![Yaml::Map(
                        vec![("address".into(), Yaml::Scalar("127.0.0.1:8080".into()))],
                        false,
                    )],
                    false,
                ),
            ),
            (
                "upstreams".into(),
                Yaml::Anchored(Box::new(Yaml::Map(
                    vec![(
                        "u".into(),
                        Yaml::Map(vec![("builtin".into(), Yaml::Scalar("echo".into()))], true),
                    )],
                    false,
                ))),
            ),
            ("routes".into(), Yaml::Scalar("[{upstream: u}]".into())),
            ("x-note".into(), Yaml::Scalar("colon: space".into())),
            ("x-copy".into(), Yaml::Alias(0)),
        ],
        false,
    );
    let text = write(&doc);
    assert_eq!(
        text,
        "listeners:\n  -\n    address: 127.0.0.1:8080\nupstreams: &a0 \n  u: {builtin: echo}\nroutes: [{upstream: u}]\nx-note: \"colon: space\"\nx-copy: *a0\n"
    );
    let problems: Vec<String> = match from_str(&text, Path::new(PATH)) {
        Err(ConfigError::Invalid { problems, .. }) => {
            problems.iter().map(ToString::to_string).collect()
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(
        problems,
        [
            "7:1: unknown key `x-note`; expected one of: listeners, workers, work_stealing, access_log, access_log_properties, shutdown_timeout, client, upstreams, routes, filters, wasm, admin, geo, cache, node",
            "8:1: unknown key `x-copy`; expected one of: listeners, workers, work_stealing, access_log, access_log_properties, shutdown_timeout, client, upstreams, routes, filters, wasm, admin, geo, cache, node",
        ]
    );
}
