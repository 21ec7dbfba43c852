//! YAML with positions: the text is parsed into a [`Node`] tree that remembers where every
//! value came from, and a serde [`Deserializer`] over that tree fills the raw config structs.
//!
//! Why not `serde_yaml`: it stops at the first error and forgets positions, while
//! `edgeward validate` must report every problem at once, each with `file:line:column`.
//! This deserializer therefore
//! - records unknown keys as diagnostics and keeps going (instead of failing the struct),
//! - attaches the position of the offending node to every error it returns,
//! - hands positions to [`Located`] fields so that validation can point at values later.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;

use serde::de::value::BorrowedStrDeserializer;
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A position in the configuration text (1-based line and column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mark {
    pub line: usize,
    pub col: usize,
}

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

#[derive(Debug, Clone)]
pub(super) enum NodeKind {
    /// `quoted` scalars are always strings; plain ones may be null, bool or numbers.
    Scalar {
        value: String,
        quoted: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
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

/// Parses YAML text into a tree. An empty document is an empty mapping.
pub(super) fn parse(text: &str) -> Result<Node, YamlError> {
    let mut builder = TreeBuilder::default();
    let mut parser = Parser::new_from_str(text);
    parser
        .load(&mut builder, false)
        .map_err(|e| YamlError::at((*e.marker()).into(), e.info().to_string()))?;
    if let Some(err) = builder.error {
        return Err(err);
    }
    Ok(builder.root.unwrap_or(Node {
        mark: Mark { line: 1, col: 1 },
        kind: NodeKind::Map(Vec::new()),
    }))
}

/// Deserializes `T` from a parsed tree. Unknown keys are pushed to `diagnostics` and skipped;
/// any other error ends deserialization and is returned with its position.
pub(super) fn from_node<'de, T: Deserialize<'de>>(
    node: &'de Node,
    diagnostics: &'de RefCell<Vec<YamlError>>,
) -> Result<T, YamlError> {
    T::deserialize(NodeDeserializer { node, diagnostics })
}

#[derive(Default)]
struct TreeBuilder {
    /// Open collections: the node being built and, for maps, a pending key.
    stack: Vec<(Node, Option<Node>)>,
    anchors: HashMap<usize, Node>,
    /// Anchor ids of the open collections, registered when they close.
    anchor_of_open: Vec<usize>,
    root: Option<Node>,
    error: Option<YamlError>,
}

impl TreeBuilder {
    fn push_value(&mut self, node: Node) {
        let Some((parent, pending_key)) = self.stack.last_mut() else {
            if self.root.is_none() {
                self.root = Some(node);
            }
            return;
        };
        match &mut parent.kind {
            NodeKind::Seq(items) => items.push(node),
            NodeKind::Map(entries) => match pending_key.take() {
                None => *pending_key = Some(node),
                Some(key) => {
                    if let NodeKind::Scalar { value, .. } = &key.kind {
                        let duplicate = entries.iter().any(
                            |(k, _)| matches!(&k.kind, NodeKind::Scalar { value: v, .. } if v == value),
                        );
                        if duplicate && self.error.is_none() {
                            self.error =
                                Some(YamlError::at(key.mark, format!("duplicate key `{value}`")));
                        }
                    }
                    entries.push((key, node));
                }
            },
            NodeKind::Scalar { .. } => {}
        }
    }
}

impl MarkedEventReceiver for TreeBuilder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let mark = Mark::from(mark);
        match ev {
            Event::Scalar(value, style, anchor, _tag) => {
                let node = Node {
                    mark,
                    kind: NodeKind::Scalar {
                        value,
                        quoted: style != TScalarStyle::Plain,
                    },
                };
                if anchor > 0 {
                    self.anchors.insert(anchor, node.clone());
                }
                self.push_value(node);
            }
            Event::SequenceStart(anchor, _) => {
                self.stack.push((
                    Node {
                        mark,
                        kind: NodeKind::Seq(Vec::new()),
                    },
                    None,
                ));
                self.anchor_of_open.push(anchor);
            }
            Event::MappingStart(anchor, _) => {
                self.stack.push((
                    Node {
                        mark,
                        kind: NodeKind::Map(Vec::new()),
                    },
                    None,
                ));
                self.anchor_of_open.push(anchor);
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let (Some((node, _)), Some(anchor)) =
                    (self.stack.pop(), self.anchor_of_open.pop())
                {
                    if anchor > 0 {
                        self.anchors.insert(anchor, node.clone());
                    }
                    self.push_value(node);
                }
            }
            Event::Alias(anchor) => match self.anchors.get(&anchor) {
                Some(node) => {
                    let node = node.clone();
                    self.push_value(node);
                }
                None => {
                    self.error
                        .get_or_insert(YamlError::at(mark, "alias to an unknown anchor"));
                }
            },
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
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
    diagnostics: &'a RefCell<Vec<YamlError>>,
}

impl<'a> NodeDeserializer<'a> {
    fn child(&self, node: &'a Node) -> Self {
        NodeDeserializer {
            node,
            diagnostics: self.diagnostics,
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
fn suggestion<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
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
                self.diagnostics.borrow_mut().push(YamlError::at(
                    entry.0.mark,
                    format!("unknown key `{key}`; {hint}"),
                ));
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

fn parse_bool(text: &str) -> Option<bool> {
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
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Sample {
        name: Located<String>,
        #[serde(default)]
        count: Option<u32>,
        #[serde(default)]
        tags: Vec<String>,
    }

    fn load(text: &str) -> (Result<Sample, YamlError>, Vec<YamlError>) {
        let diagnostics = RefCell::new(Vec::new());
        let node = match parse(text) {
            Ok(node) => node,
            Err(e) => return (Err(e), Vec::new()),
        };
        let result = from_node(&node, &diagnostics);
        (result, diagnostics.into_inner())
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
        let node = parse("a: &x {k: 1}\nb: *x\n").unwrap();
        let diagnostics = RefCell::new(Vec::new());
        let v: serde_json::Value = from_node(&node, &diagnostics).unwrap();
        assert_eq!(v["b"]["k"], 1);
    }

    #[test]
    fn any_yaml_converts_to_json_with_core_schema() {
        let node = parse("a: 1\nb: '1'\nc: true\nd: ~\ne: 1.5\nf: [x]\n").unwrap();
        let diagnostics = RefCell::new(Vec::new());
        let v: serde_json::Value = from_node(&node, &diagnostics).unwrap();
        assert_eq!(
            v,
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
    }
}
