//! YAML with positions: the text is parsed into a [`Node`] tree that remembers where every
//! value came from, and a serde [`Deserializer`] over that tree fills the raw config structs.
//!
//! Why not `serde_yaml`: it stops at the first error and forgets positions, while
//! `edgeward validate` must report every problem at once, each with `file:line:column`.
//! This deserializer therefore
//! - records unknown keys as diagnostics and keeps going (instead of failing the struct),
//! - attaches the position of the offending node to every error it returns,
//! - hands positions to [`Located`] fields so that validation can point at values later.
//!
//! The text may be hostile, so reading it is bounded: characters YAML forbids (NUL, which the
//! scanner would take for the end of the text, and other control characters) are refused
//! before parsing; values nest at most [`MAX_DEPTH`] deep (nothing here recurses deeper);
//! what aliases copy is bounded ([`MAX_ALIAS_VALUES`], [`MAX_ALIAS_TEXT`]: no "billion
//! laughs"); and every step is linear in the text and its copies.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::rc::Rc;

use serde::de::value::BorrowedStrDeserializer;
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::diagnostic::{Mark, Problems};

/// How deeply lists and mappings may nest in one another (serde_json's limit, so that a
/// filter's `config` can always be read back by a guest using it).
pub(super) const MAX_DEPTH: usize = 128;
/// How many values aliases may copy in all: every scalar, list and mapping of every copy.
pub(super) const MAX_ALIAS_VALUES: usize = 100_000;
/// How many bytes of scalar text aliases may copy in all.
pub(super) const MAX_ALIAS_TEXT: usize = 4 << 20;

const BOM: char = '\u{feff}';

impl From<Marker> for Mark {
    fn from(m: Marker) -> Self {
        // yaml-rust2 reports 1-based lines and 0-based columns.
        Mark {
            line: m.line(),
            col: m.col() + 1,
        }
    }
}

/// A YAML value with the position it was read from.
#[derive(Debug, Clone)]
pub(super) struct Node {
    pub mark: Mark,
    pub kind: NodeKind,
}

/// Lists and mappings are shared, not copied, by the anchors and aliases that name them: an
/// anchor costs nothing however large its value, and an alias only what the bound counts.
#[derive(Debug, Clone)]
pub(super) enum NodeKind {
    /// `quoted` scalars are always strings; plain ones may be null, bool or numbers.
    Scalar {
        value: String,
        quoted: bool,
    },
    Seq(Rc<[Node]>),
    Map(Rc<[(Node, Node)]>),
}

impl Node {
    fn describe(&self) -> &'static str {
        match &self.kind {
            NodeKind::Scalar { .. } => "a scalar",
            NodeKind::Seq(_) => "a list",
            NodeKind::Map(_) => "a mapping",
        }
    }

    fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar { value, quoted: false } if matches!(value.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }
}

/// One problem found in the configuration, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct YamlError {
    pub mark: Option<Mark>,
    pub message: String,
    /// Whether the message already names the key it belongs to.
    keyed: bool,
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for YamlError {}

impl de::Error for YamlError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        YamlError {
            mark: None,
            message: msg.to_string(),
            keyed: false,
        }
    }
}

impl YamlError {
    fn at(mark: Mark, message: impl Into<String>) -> Self {
        YamlError {
            mark: Some(mark),
            message: message.into(),
            keyed: false,
        }
    }

    /// Names the struct key whose value is wrong, unless a deeper key was already named.
    fn in_key(mut self, key: &str, value_mark: Mark) -> Self {
        if !self.keyed && self.mark.is_none_or(|m| m == value_mark) {
            self.message = format!("`{key}`: {}", self.message);
            self.keyed = true;
        }
        self.or_at(value_mark)
    }

    /// Errors raised by a visitor carry no position; the node being visited supplies it.
    fn or_at(mut self, mark: Mark) -> Self {
        self.mark.get_or_insert(mark);
        self
    }
}

/// The text of a configuration file, which must be UTF-8: anything else is refused at the
/// first byte that is not (placed as `parse` would place it, after a byte order mark).
pub(super) fn decode(bytes: &[u8]) -> Result<&str, YamlError> {
    std::str::from_utf8(bytes).map_err(|e| {
        let (valid, rest) = bytes.split_at(e.valid_up_to());
        let valid = valid.strip_prefix(b"\xef\xbb\xbf").unwrap_or(valid);
        let mut cursor = Cursor::default();
        for c in String::from_utf8_lossy(valid).chars() {
            cursor.advance(c);
        }
        let byte = rest.first().copied().unwrap_or_default();
        YamlError::at(
            cursor.mark(),
            format!("byte 0x{byte:02X} is not UTF-8; a configuration must be UTF-8 text"),
        )
    })
}

/// Parses YAML text into a tree. An empty document is an empty mapping. A leading byte order
/// mark is skipped; characters YAML forbids are each reported (as many as `Problems` keeps);
/// otherwise the first error ends parsing.
pub(super) fn parse(text: &str) -> Result<Node, Problems> {
    let text = text.strip_prefix(BOM).unwrap_or(text);
    let forbidden = forbidden_characters(text);
    if !forbidden.is_empty() {
        return Err(forbidden);
    }
    parse_checked(text).map_err(|e| {
        let mut problems = Problems::default();
        problems.error(e.mark, e.message);
        problems
    })
}

fn parse_checked(text: &str) -> Result<Node, YamlError> {
    // Driven event by event, not by `Parser::load`, which recurses once per nesting level and
    // would overflow the stack before `MAX_DEPTH` could be enforced.
    let mut parser = Parser::new_from_str(text);
    let mut builder = TreeBuilder::new(text);
    loop {
        let (event, marker) = parser.next_token().map_err(|e| {
            let mark = within(text, (*e.marker()).into());
            match e.info() {
                // The scanner's own bound, on flow collections (`[[[...`).
                "recursion limit exceeded" => too_deep(mark),
                info => YamlError::at(mark, info),
            }
        })?;
        if builder.on_event(event, marker)? == Step::Done {
            break;
        }
    }
    Ok(builder.root.unwrap_or(Node {
        mark: Mark { line: 1, col: 1 },
        kind: NodeKind::Map(Rc::new([])),
    }))
}

/// The line and column of a place in the text, counted the way the YAML scanner counts them:
/// characters, with `\n`, `\r\n` and a lone `\r` each ending a line.
#[derive(Clone, Copy)]
struct Cursor {
    line: usize,
    col: usize,
    after_cr: bool,
}

impl Default for Cursor {
    fn default() -> Self {
        Cursor {
            line: 1,
            col: 1,
            after_cr: false,
        }
    }
}

impl Cursor {
    fn advance(&mut self, c: char) {
        match c {
            '\n' if self.after_cr => {}
            '\n' | '\r' => {
                self.line += 1;
                self.col = 1;
            }
            _ => self.col += 1,
        }
        self.after_cr = c == '\r';
    }

    fn mark(&self) -> Mark {
        Mark {
            line: self.line,
            col: self.col,
        }
    }
}

/// `mark`, or the end of the text when `mark` is past it: at the end of the text the scanner
/// counts one more line than there is when the last has no line break.
fn within(text: &str, mark: Mark) -> Mark {
    let mut end = Cursor::default();
    for c in text.chars() {
        end.advance(c);
    }
    if (mark.line, mark.col) > (end.line, end.col) {
        end.mark()
    } else {
        mark
    }
}

/// Every character YAML 1.2 does not allow in a stream (outside its printable set), and a byte
/// order mark after the start. The scanner would stop silently at a NUL and take the other
/// control characters into values.
fn forbidden_characters(text: &str) -> Problems {
    let mut problems = Problems::default();
    // Tab, line feed and carriage return are the only control characters allowed; the fast
    // path skips the usual file with none of the others and nothing outside ASCII.
    let clean = |b: &u8| (0x20..0x7f).contains(b) || matches!(b, b'\t' | b'\n' | b'\r');
    if text.bytes().all(|b| clean(&b)) {
        return problems;
    }
    let mut cursor = Cursor::default();
    for c in text.chars() {
        if let Some(message) = forbidden(c) {
            problems.error(Some(cursor.mark()), message);
        }
        cursor.advance(c);
    }
    problems
}

fn forbidden(c: char) -> Option<String> {
    match c {
        '\t' | '\n' | '\r' | '\u{85}' => None,
        '\0' => Some("a NUL byte is not allowed in a configuration (YAML forbids control characters)".into()),
        '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' => Some(format!(
            "control character U+{:04X} is not allowed in a configuration (YAML forbids control characters)",
            u32::from(c)
        )),
        BOM => Some("a byte order mark (U+FEFF) is allowed only at the start of the file".into()),
        '\u{fffe}' | '\u{ffff}' => Some(format!(
            "U+{:04X} is not a character; YAML does not allow it",
            u32::from(c)
        )),
        _ => None,
    }
}

/// Deserializes `T` from a parsed tree. Unknown keys are pushed to `problems` and skipped;
/// any other error ends deserialization and is returned with its position.
pub(super) fn from_node<'de, T: Deserialize<'de>>(
    node: &'de Node,
    problems: &'de RefCell<Problems>,
) -> Result<T, YamlError> {
    T::deserialize(NodeDeserializer { node, problems })
}

/// The size of a value as aliases count it, and how deeply it nests.
#[derive(Debug, Clone, Copy, Default)]
struct Size {
    /// Scalars, lists and mappings, itself included.
    values: usize,
    /// Bytes of scalar text.
    text: usize,
    /// Levels of lists and mappings: 0 for a scalar.
    depth: usize,
}

impl Size {
    fn scalar(text: &str) -> Size {
        Size {
            values: 1,
            text: text.len(),
            depth: 0,
        }
    }

    fn add(&mut self, child: Size) {
        self.values = self.values.saturating_add(child.values);
        self.text = self.text.saturating_add(child.text);
        self.depth = self.depth.max(child.depth + 1);
    }
}

/// A list or mapping being read.
struct Open {
    mark: Mark,
    content: Content,
    size: Size,
    anchor: usize,
    /// For a mapping, the key read and waiting for its value.
    pending_key: Option<Node>,
    /// For a mapping, the scalar keys read so far: duplicates are refused in constant time.
    keys: HashSet<String>,
}

enum Content {
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Open {
    fn close(self) -> (Node, Size, usize) {
        let kind = match self.content {
            Content::Seq(items) => NodeKind::Seq(items.into()),
            Content::Map(entries) => NodeKind::Map(entries.into()),
        };
        let node = Node {
            mark: self.mark,
            kind,
        };
        (node, self.size, self.anchor)
    }
}

#[derive(PartialEq)]
enum Step {
    More,
    Done,
}

struct TreeBuilder<'t> {
    text: &'t str,
    /// Open collections, outermost first.
    stack: Vec<Open>,
    anchors: HashMap<usize, (Node, Size)>,
    /// What aliases have copied so far.
    copied: Size,
    documents: usize,
    root: Option<Node>,
}

impl<'t> TreeBuilder<'t> {
    fn new(text: &'t str) -> Self {
        TreeBuilder {
            text,
            stack: Vec::new(),
            anchors: HashMap::new(),
            copied: Size::default(),
            documents: 0,
            root: None,
        }
    }

    fn on_event(&mut self, event: Event, marker: Marker) -> Result<Step, YamlError> {
        let mark = Mark::from(marker);
        match event {
            Event::Scalar(value, style, anchor, _tag) => {
                let size = Size::scalar(&value);
                let node = Node {
                    mark,
                    kind: NodeKind::Scalar {
                        value,
                        quoted: style != TScalarStyle::Plain,
                    },
                };
                if anchor > 0 {
                    self.anchors.insert(anchor, (node.clone(), size));
                }
                self.push_value(node, size)?;
            }
            Event::SequenceStart(anchor, _) => self.open(mark, anchor, Content::Seq(Vec::new()))?,
            Event::MappingStart(anchor, _) => self.open(mark, anchor, Content::Map(Vec::new()))?,
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some(open) = self.stack.pop() {
                    let (node, size, anchor) = open.close();
                    if anchor > 0 {
                        // A shared reference: no copy of the value.
                        self.anchors.insert(anchor, (node.clone(), size));
                    }
                    self.push_value(node, size)?;
                }
            }
            Event::Alias(anchor) => {
                let Some((node, size)) = self.anchors.get(&anchor) else {
                    return Err(YamlError::at(mark, "alias to an unknown anchor"));
                };
                let mut copied = self.copied;
                copied.values = copied.values.saturating_add(size.values);
                copied.text = copied.text.saturating_add(size.text);
                let limit = if copied.values > MAX_ALIAS_VALUES {
                    Some(format!("more than {MAX_ALIAS_VALUES} values"))
                } else if copied.text > MAX_ALIAS_TEXT {
                    Some(format!("more than {} MiB of text", MAX_ALIAS_TEXT >> 20))
                } else {
                    None
                };
                if let Some(limit) = limit {
                    return Err(YamlError::at(
                        mark,
                        format!(
                            "alias `{}` would make the aliases of this file repeat {limit}; \
                             aliases may repeat at most {MAX_ALIAS_VALUES} values and {} MiB \
                             of text in all (a guard against \"billion laughs\" files)",
                            self.alias_name(marker),
                            MAX_ALIAS_TEXT >> 20
                        ),
                    ));
                }
                if self.stack.len() + size.depth > MAX_DEPTH {
                    return Err(too_deep(mark));
                }
                let (node, size) = (node.clone(), *size);
                self.copied = copied;
                self.push_value(node, size)?;
            }
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(YamlError::at(
                        mark,
                        "a second YAML document starts here; a configuration file holds one",
                    ));
                }
            }
            Event::StreamEnd => return Ok(Step::Done),
            Event::Nothing | Event::StreamStart | Event::DocumentEnd => {}
        }
        Ok(Step::More)
    }

    fn open(&mut self, mark: Mark, anchor: usize, content: Content) -> Result<(), YamlError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(too_deep(mark));
        }
        self.stack.push(Open {
            mark,
            content,
            size: Size {
                values: 1,
                text: 0,
                depth: 1,
            },
            anchor,
            pending_key: None,
            keys: HashSet::new(),
        });
        Ok(())
    }

    fn push_value(&mut self, node: Node, size: Size) -> Result<(), YamlError> {
        let Some(parent) = self.stack.last_mut() else {
            if self.root.is_none() {
                self.root = Some(node);
            }
            return Ok(());
        };
        parent.size.add(size);
        match &mut parent.content {
            Content::Seq(items) => items.push(node),
            Content::Map(entries) => match parent.pending_key.take() {
                None => parent.pending_key = Some(node),
                Some(key) => {
                    if let NodeKind::Scalar { value, .. } = &key.kind {
                        if !parent.keys.insert(value.clone()) {
                            return Err(YamlError::at(
                                key.mark,
                                format!("duplicate key `{value}`"),
                            ));
                        }
                    }
                    entries.push((key, node));
                }
            },
        }
        Ok(())
    }

    /// `*name` as written at an alias's place.
    fn alias_name(&self, marker: Marker) -> String {
        let name: String = self
            .text
            .chars()
            .skip(marker.index())
            .skip_while(|c| *c == '*')
            .take_while(|c| !c.is_whitespace() && !matches!(c, ',' | ']' | '}'))
            .take(100)
            .collect();
        format!("*{name}")
    }
}

fn too_deep(mark: Mark) -> YamlError {
    YamlError::at(
        mark,
        format!("lists and mappings nest more than {MAX_DEPTH} levels deep here"),
    )
}

/// A value together with the position it was read from, for errors found after parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Located<T> {
    pub mark: Mark,
    pub value: T,
}

impl<T: Default> Default for Located<T> {
    fn default() -> Self {
        Located {
            mark: Mark::default(),
            value: T::default(),
        }
    }
}

impl<T> std::ops::Deref for Located<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

const LOCATED: &str = "$edgeward::Located";
const LOCATED_FIELDS: &[&str] = &["$line", "$col", "$value"];

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Located<T> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LocatedVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for LocatedVisitor<T> {
            type Value = Located<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a located value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut line = 0usize;
                let mut col = 0usize;
                let mut value = None;
                while let Some(key) = map.next_key::<&str>()? {
                    match key {
                        "$line" => line = map.next_value()?,
                        "$col" => col = map.next_value()?,
                        _ => value = Some(map.next_value()?),
                    }
                }
                let value = value.ok_or_else(|| de::Error::custom("missing located value"))?;
                Ok(Located {
                    mark: Mark { line, col },
                    value,
                })
            }
        }
        deserializer.deserialize_struct(
            LOCATED,
            LOCATED_FIELDS,
            LocatedVisitor(std::marker::PhantomData),
        )
    }
}

#[derive(Clone, Copy)]
struct NodeDeserializer<'a> {
    node: &'a Node,
    problems: &'a RefCell<Problems>,
}

impl<'a> NodeDeserializer<'a> {
    fn child(&self, node: &'a Node) -> Self {
        NodeDeserializer {
            node,
            problems: self.problems,
        }
    }

    fn scalar(&self) -> Result<&'a str, YamlError> {
        match &self.node.kind {
            NodeKind::Scalar { value, .. } => Ok(value),
            _ => Err(YamlError::at(
                self.node.mark,
                format!("expected a single value, found {}", self.node.describe()),
            )),
        }
    }

    fn parse_scalar<T: std::str::FromStr>(&self, what: &str) -> Result<T, YamlError> {
        let text = self.scalar()?;
        text.trim()
            .parse()
            .map_err(|_| YamlError::at(self.node.mark, format!("expected {what}, found `{text}`")))
    }
}

/// Keys of a struct being filled, with unknown ones reported and dropped.
struct StructEntries<'a> {
    de: NodeDeserializer<'a>,
    entries: std::vec::IntoIter<&'a (Node, Node)>,
    value: Option<(&'a str, &'a Node)>,
}

impl<'de> MapAccess<'de> for StructEntries<'de> {
    type Error = YamlError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, YamlError> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        let name = match &key.kind {
            NodeKind::Scalar { value, .. } => value.as_str(),
            _ => "",
        };
        self.value = Some((name, value));
        seed.deserialize(self.de.child(key))
            .map(Some)
            .map_err(|e: YamlError| e.or_at(key.mark))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, YamlError> {
        let (key, node) = self
            .value
            .take()
            .ok_or_else(|| <YamlError as de::Error>::custom("value without a key"))?;
        seed.deserialize(self.de.child(node))
            .map_err(|e: YamlError| e.in_key(key, node.mark))
    }
}

/// The synthetic map a [`Located`] visitor reads: line, column, then the node itself.
struct LocatedEntries<'a> {
    de: NodeDeserializer<'a>,
    step: usize,
}

impl<'de> MapAccess<'de> for LocatedEntries<'de> {
    type Error = YamlError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, YamlError> {
        let Some(key) = LOCATED_FIELDS.get(self.step) else {
            return Ok(None);
        };
        seed.deserialize(BorrowedStrDeserializer::new(key))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, YamlError> {
        let mark = self.de.node.mark;
        self.step += 1;
        match self.step {
            1 => seed.deserialize(mark.line.into_deserializer()),
            2 => seed.deserialize(mark.col.into_deserializer()),
            _ => seed.deserialize(self.de),
        }
    }
}

struct SeqItems<'a> {
    de: NodeDeserializer<'a>,
    items: std::slice::Iter<'a, Node>,
}

impl<'de> SeqAccess<'de> for SeqItems<'de> {
    type Error = YamlError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, YamlError> {
        match self.items.next() {
            None => Ok(None),
            Some(node) => seed
                .deserialize(self.de.child(node))
                .map(Some)
                .map_err(|e: YamlError| e.or_at(node.mark)),
        }
    }
}

struct MapEntries<'a> {
    de: NodeDeserializer<'a>,
    entries: std::slice::Iter<'a, (Node, Node)>,
    value: Option<&'a Node>,
}

impl<'de> MapAccess<'de> for MapEntries<'de> {
    type Error = YamlError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, YamlError> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        self.value = Some(value);
        seed.deserialize(self.de.child(key))
            .map(Some)
            .map_err(|e: YamlError| e.or_at(key.mark))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, YamlError> {
        let node = self
            .value
            .take()
            .ok_or_else(|| <YamlError as de::Error>::custom("value without a key"))?;
        seed.deserialize(self.de.child(node))
            .map_err(|e: YamlError| e.or_at(node.mark))
    }
}

/// The closest of `candidates` to `word`, when it is close enough to be a likely typo.
/// Candidates whose length alone puts them too far are not compared, so that a long key
/// costs no more than reading it.
fn suggestion<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let near = |c: &str| 2.max(c.len() / 4);
    candidates
        .iter()
        .filter(|c| word.len().abs_diff(c.len()) <= near(c))
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, c)| *d <= near(c))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

macro_rules! forward_parsed {
    ($($method:ident => $visit:ident : $ty:ty, $what:literal;)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, YamlError> {
            let v: $ty = self.parse_scalar($what)?;
            visitor.$visit(v).map_err(|e: YamlError| e.or_at(self.node.mark))
        }
    )*};
}

impl<'de> de::Deserializer<'de> for NodeDeserializer<'de> {
    type Error = YamlError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, YamlError> {
        let mark = self.node.mark;
        let result = match &self.node.kind {
            NodeKind::Scalar {
                value,
                quoted: true,
            } => visitor.visit_borrowed_str(value),
            NodeKind::Scalar {
                value,
                quoted: false,
            } => {
                // The YAML 1.2 core schema for plain scalars.
                if self.node.is_null() {
                    visitor.visit_unit()
                } else if let Some(b) = parse_bool(value) {
                    visitor.visit_bool(b)
                } else if let Ok(i) = value.parse::<i64>() {
                    visitor.visit_i64(i)
                } else if let Ok(u) = value.parse::<u64>() {
                    visitor.visit_u64(u)
                } else if looks_like_float(value) {
                    match value.parse::<f64>() {
                        Ok(f) => visitor.visit_f64(f),
                        Err(_) => visitor.visit_borrowed_str(value),
                    }
                } else {
                    visitor.visit_borrowed_str(value)
                }
            }
            NodeKind::Seq(items) => visitor.visit_seq(SeqItems {
                de: self,
                items: items.iter(),
            }),
            NodeKind::Map(entries) => visitor.visit_map(MapEntries {
                de: self,
                entries: entries.iter(),
                value: None,
            }),
        };
        result.map_err(|e: YamlError| e.or_at(mark))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, YamlError> {
        let text = self.scalar()?;
        match parse_bool(text) {
            Some(b) => visitor
                .visit_bool(b)
                .map_err(|e: YamlError| e.or_at(self.node.mark)),
            None => Err(YamlError::at(
                self.node.mark,
                format!("expected true or false, found `{text}`"),
            )),
        }
    }

    forward_parsed! {
        deserialize_i8 => visit_i8: i8, "a number";
        deserialize_i16 => visit_i16: i16, "a number";
        deserialize_i32 => visit_i32: i32, "a number";
        deserialize_i64 => visit_i64: i64, "a number";
        deserialize_u8 => visit_u8: u8, "a non-negative number";
        deserialize_u16 => visit_u16: u16, "a non-negative number";
        deserialize_u32 => visit_u32: u32, "a non-negative number";
        deserialize_u64 => visit_u64: u64, "a non-negative number";
        deserialize_f32 => visit_f32: f32, "a number";
        deserialize_f64 => visit_f64: f64, "a number";
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, YamlError> {
        self.deserialize_str(visitor)
    }

    /// Any scalar reads as a string (`x-canary: 1` means the text "1"), as users expect.
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, YamlError> {
        let text = self.scalar()?;
        visitor
            .visit_borrowed_str(text)
            .map_err(|e: YamlError| e.or_at(self.node.mark))
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, YamlError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, YamlError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, YamlError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, YamlError> {
        if self.node.is_null() {
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, YamlError> {
        if self.node.is_null() {
            visitor.visit_unit()
        } else {
            Err(YamlError::at(self.node.mark, "expected nothing (null)"))
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, YamlError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, YamlError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, YamlError> {
        match &self.node.kind {
            NodeKind::Seq(items) => visitor
                .visit_seq(SeqItems {
                    de: self,
                    items: items.iter(),
                })
                .map_err(|e: YamlError| e.or_at(self.node.mark)),
            _ if self.node.is_null() => visitor
                .visit_seq(SeqItems {
                    de: self,
                    items: [].iter(),
                })
                .map_err(|e: YamlError| e.or_at(self.node.mark)),
            _ => Err(YamlError::at(
                self.node.mark,
                format!("expected a list, found {}", self.node.describe()),
            )),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, YamlError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, YamlError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, YamlError> {
        match &self.node.kind {
            NodeKind::Map(entries) => visitor
                .visit_map(MapEntries {
                    de: self,
                    entries: entries.iter(),
                    value: None,
                })
                .map_err(|e: YamlError| e.or_at(self.node.mark)),
            _ if self.node.is_null() => visitor
                .visit_map(MapEntries {
                    de: self,
                    entries: [].iter(),
                    value: None,
                })
                .map_err(|e: YamlError| e.or_at(self.node.mark)),
            _ => Err(YamlError::at(
                self.node.mark,
                format!("expected a mapping, found {}", self.node.describe()),
            )),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, YamlError> {
        if name == LOCATED {
            return visitor.visit_map(LocatedEntries { de: self, step: 0 });
        }
        let entries: &[(Node, Node)] = match &self.node.kind {
            NodeKind::Map(entries) => entries,
            _ if self.node.is_null() => &[],
            _ => {
                return Err(YamlError::at(
                    self.node.mark,
                    format!("expected a mapping, found {}", self.node.describe()),
                ))
            }
        };
        let mut known = Vec::with_capacity(entries.len());
        for entry in entries {
            let key = match &entry.0.kind {
                NodeKind::Scalar { value, .. } => value.as_str(),
                _ => "",
            };
            if fields.contains(&key) {
                known.push(entry);
            } else {
                let hint = match suggestion(key, fields) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("expected one of: {}", fields.join(", ")),
                };
                self.problems
                    .borrow_mut()
                    .error(Some(entry.0.mark), format!("unknown key `{key}`; {hint}"));
            }
        }
        visitor
            .visit_map(StructEntries {
                de: self,
                entries: known.into_iter(),
                value: None,
            })
            .map_err(|e: YamlError| e.or_at(self.node.mark))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, YamlError> {
        // Only unit variants written as plain strings, e.g. `load_balancing: round_robin`.
        let text = self.scalar()?;
        if !variants.contains(&text) {
            return Err(YamlError::at(
                self.node.mark,
                format!(
                    "unknown value `{text}`; expected one of: {}",
                    variants.join(", ")
                ),
            ));
        }
        visitor
            .visit_enum(text.into_deserializer())
            .map_err(|e: YamlError| e.or_at(self.node.mark))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, YamlError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, YamlError> {
        visitor.visit_unit()
    }
}

pub(super) fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

fn looks_like_float(text: &str) -> bool {
    let t = text.trim_start_matches(['-', '+']);
    t.chars()
        .next()
        .is_some_and(|c| c.is_ascii_digit() || c == '.')
        && t.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
}

#[cfg(test)]
mod tests {
    use super::super::diagnostic::{Diagnostic, MAX_SHOWN};
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Sample {
        name: Located<String>,
        #[serde(default)]
        count: Option<u32>,
        #[serde(default)]
        tags: Vec<String>,
    }

    fn load(text: &str) -> (Result<Sample, YamlError>, Vec<Diagnostic>) {
        let problems = RefCell::new(Problems::default());
        let node = match parse_one(text) {
            Ok(node) => node,
            Err(e) => return (Err(YamlError::at(e.mark.unwrap(), e.message)), Vec::new()),
        };
        let result = from_node(&node, &problems);
        (result, problems.into_inner().into_parts().0)
    }

    /// The tree, or the first problem found.
    fn parse_one(text: &str) -> Result<Node, Diagnostic> {
        parse(text).map_err(|problems| problems.into_parts().0.remove(0))
    }

    fn to_json(text: &str) -> serde_json::Value {
        let node = parse_one(text).unwrap();
        let problems = RefCell::new(Problems::default());
        from_node(&node, &problems).unwrap()
    }

    #[test]
    fn values_keep_their_positions() {
        let (sample, diags) = load("count: 3\nname:   web\ntags: [a, 1]\n");
        let sample = sample.unwrap();
        assert!(diags.is_empty());
        assert_eq!(sample.name.value, "web");
        assert_eq!(sample.name.mark, Mark { line: 2, col: 9 });
        assert_eq!(sample.count, Some(3));
        assert_eq!(sample.tags, vec!["a", "1"]);
    }

    #[test]
    fn unknown_keys_are_collected_not_fatal() {
        let (sample, diags) = load("name: x\ncuont: 3\nzzz: 1\n");
        assert!(sample.is_ok());
        assert_eq!(diags.len(), 2);
        assert_eq!(diags[0].mark, Some(Mark { line: 2, col: 1 }));
        assert!(diags[0].message.contains("did you mean `count`"));
        assert!(diags[1].message.contains("expected one of"));
    }

    #[test]
    fn type_errors_point_at_the_value() {
        let (sample, _) = load("name: x\ncount: lots\n");
        let err = sample.unwrap_err();
        assert_eq!(err.mark, Some(Mark { line: 2, col: 8 }));
        assert_eq!(
            err.message,
            "`count`: expected a non-negative number, found `lots`"
        );
        let (sample, _) = load("name: x\ntags: {a: 1}\n");
        assert_eq!(
            sample.unwrap_err().message,
            "`tags`: expected a list, found a mapping"
        );
    }

    #[test]
    fn syntax_errors_and_duplicates_have_positions() {
        let (res, _) = load("name: [a\n");
        assert!(res.unwrap_err().mark.is_some());
        let (res, _) = load("name: a\nname: b\n");
        let err = res.unwrap_err();
        assert_eq!(err.mark, Some(Mark { line: 2, col: 1 }));
        assert!(err.message.contains("duplicate key"));
    }

    #[test]
    fn anchors_and_aliases_resolve() {
        let (sample, _) = load("tags: &t [a, b]\nname: x\n");
        assert_eq!(sample.unwrap().tags, vec!["a", "b"]);
        assert_eq!(to_json("a: &x {k: 1}\nb: *x\n")["b"]["k"], 1);
    }

    #[test]
    fn any_yaml_converts_to_json_with_core_schema() {
        assert_eq!(
            to_json("a: 1\nb: '1'\nc: true\nd: ~\ne: 1.5\nf: [x]\n"),
            serde_json::json!({"a": 1, "b": "1", "c": true, "d": null, "e": 1.5, "f": ["x"]})
        );
    }

    #[test]
    fn suggestions_only_for_close_words() {
        assert_eq!(
            suggestion("endpionts", &["endpoints", "builtin"]),
            Some("endpoints")
        );
        assert_eq!(suggestion("zzz", &["endpoints", "builtin"]), None);
        assert_eq!(suggestion(&"x".repeat(1 << 20), &["endpoints"]), None);
    }

    /// `levels` mappings each repeating the one before `width` times: `width^levels` values.
    fn alias_bomb(levels: usize, width: usize) -> String {
        let mut text = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..levels {
            let refs = vec![format!("*a{}", i - 1); width].join(", ");
            text.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        text
    }

    #[test]
    fn an_alias_bomb_is_refused_at_the_alias_that_crosses_the_bound() {
        let err = parse_one(&alias_bomb(9, 9)).unwrap_err();
        // a1..a4 copy 90 + 819 + 7380 + 66429 = 74718 values; the first `*a4` of a5 would
        // copy 66430 more.
        assert_eq!(err.mark, Some(Mark { line: 6, col: 10 }));
        assert_eq!(
            err.message,
            "alias `*a4` would make the aliases of this file repeat more than 100000 values; \
             aliases may repeat at most 100000 values and 4 MiB of text in all (a guard \
             against \"billion laughs\" files)"
        );
    }

    #[test]
    fn aliases_within_the_bounds_are_expanded() {
        let v = to_json(&alias_bomb(4, 9));
        assert_eq!(v["a3"][8][8][8][8], "lol");
        // Text counts too: four copies of 1.5 MiB are too many, two are fine.
        let long = "x".repeat(3 << 19);
        let text = format!("a: &long {long}\nb: [*long, *long]\n");
        assert_eq!(to_json(&text)["b"][1].as_str().map(str::len), Some(3 << 19));
        let text = format!("a: &long {long}\nb: [*long, *long, *long]\n");
        let err = parse_one(&text).unwrap_err();
        assert_eq!(err.mark, Some(Mark { line: 2, col: 19 }));
        assert!(
            err.message.contains("repeat more than 4 MiB of text"),
            "{}",
            err.message
        );
    }

    #[test]
    fn anchors_and_aliases_share_lists_and_mappings_instead_of_copying_them() {
        let root = parse_one("a: &x [1, {k: v}]\nb: *x\nc: &y {d: &z [e]}\n").unwrap();
        let NodeKind::Map(entries) = &root.kind else {
            panic!("{root:?}")
        };
        let list = |i: usize| match &entries[i].1.kind {
            NodeKind::Seq(items) => items.clone(),
            other => panic!("{other:?}"),
        };
        assert!(Rc::ptr_eq(&list(0), &list(1)));
        let NodeKind::Map(c) = &entries[2].1.kind else {
            panic!("{entries:?}")
        };
        assert!(matches!(&c[0].1.kind, NodeKind::Seq(items) if items.len() == 1));
    }

    #[test]
    fn nesting_is_bounded_also_through_aliases() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(parse_one(&format!("a: {}", nested(MAX_DEPTH - 1))).is_ok());
        let err = parse_one(&format!("a: {}", nested(MAX_DEPTH))).unwrap_err();
        assert_eq!(
            err.mark,
            Some(Mark {
                line: 1,
                col: 4 + MAX_DEPTH - 1
            })
        );
        assert_eq!(
            err.message,
            "lists and mappings nest more than 128 levels deep here"
        );
        // Block lists nest with no flow level limit of the scanner's.
        let block = "- ".repeat(100_000) + "x\n";
        let err = parse_one(&block).unwrap_err();
        assert_eq!(
            err.mark,
            Some(Mark {
                line: 1,
                col: 2 * MAX_DEPTH + 1
            })
        );
        let aliased = format!("a: &a {}\nb: [[*a]]\n", nested(MAX_DEPTH - 2));
        let err = parse_one(&aliased).unwrap_err();
        assert_eq!(err.mark, Some(Mark { line: 2, col: 6 }));
    }

    #[test]
    fn errors_at_the_end_point_at_the_end() {
        let err = parse_one("a: {b").unwrap_err();
        assert_eq!(err.mark, Some(Mark { line: 1, col: 6 }));
        let err = parse_one("a: [\n").unwrap_err();
        assert_eq!(err.mark, Some(Mark { line: 2, col: 1 }));
    }

    #[test]
    fn one_document_only() {
        let err = parse_one("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(err.mark, Some(Mark { line: 2, col: 1 }));
        assert_eq!(
            err.message,
            "a second YAML document starts here; a configuration file holds one"
        );
        assert_eq!(to_json("---\na: 1\n...\n")["a"], 1);
    }

    #[test]
    fn a_leading_byte_order_mark_is_skipped() {
        let (sample, problems) = load("\u{feff}name: web\n");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(sample.unwrap().name.mark, Mark { line: 1, col: 7 });
        let err = decode(b"\xef\xbb\xbfname: \xff").unwrap_err();
        assert_eq!(err.mark, Some(Mark { line: 1, col: 7 }));
    }

    #[test]
    fn characters_yaml_forbids_are_each_refused_with_their_place() {
        let text =
            "a: o\0x\r\nb: \u{1}\rc: [\u{7f}, \u{9f}, \u{85}\t\u{a0}]\nd: \u{feff}\u{ffff}\n";
        let (problems, more) = parse(text).unwrap_err().into_parts();
        assert_eq!(more, 0);
        let found: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            found,
            [
                "1:5: a NUL byte is not allowed in a configuration (YAML forbids control characters)",
                "2:4: control character U+0001 is not allowed in a configuration (YAML forbids control characters)",
                "3:5: control character U+007F is not allowed in a configuration (YAML forbids control characters)",
                "3:8: control character U+009F is not allowed in a configuration (YAML forbids control characters)",
                "4:4: a byte order mark (U+FEFF) is allowed only at the start of the file",
                "4:5: U+FFFF is not a character; YAML does not allow it",
            ]
        );
        let (problems, more) = parse(&"\0".repeat(1000)).unwrap_err().into_parts();
        assert_eq!((problems.len(), more), (MAX_SHOWN, 1000 - MAX_SHOWN));
    }

    #[test]
    fn bytes_that_are_not_utf8_are_refused_with_their_place() {
        let err = decode(b"a: 1\r\nb: caf\xe9\n").unwrap_err();
        assert_eq!(err.mark, Some(Mark { line: 2, col: 7 }));
        assert_eq!(
            err.message,
            "byte 0xE9 is not UTF-8; a configuration must be UTF-8 text"
        );
    }

    #[test]
    fn duplicate_keys_of_a_large_mapping_are_found() {
        let mut text: String = (0..50_000).map(|i| format!("k{i}: v\n")).collect();
        text.push_str("k49999: again\n");
        let err = parse_one(&text).unwrap_err();
        assert_eq!(
            err.mark,
            Some(Mark {
                line: 50_001,
                col: 1
            })
        );
        assert_eq!(err.message, "duplicate key `k49999`");
    }
}
