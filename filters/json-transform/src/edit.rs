//! The edits, on a parsed document: keep (an allow-list), remove, rename and set, each by
//! [`Pointer`]. Each answers how many values it changed, so that a body nothing matched can go
//! on as it came. SDK-free, tested natively.
//!
//! Work is bounded by the document: a pointer visits at most every value once, and the
//! recursion follows the pointer's segments (or, for keep, the document's nesting, which the
//! parser bounds).

use std::borrow::Cow;

use crate::json::Json;
use crate::pointer::{Pointer, Segment};

/// The allow-list: the values at its pointers are kept, with the objects and arrays on the
/// way to them (holding only what leads to a kept value, possibly nothing); everything else
/// is dropped. Arrays keep the order of the elements kept.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Keep {
    /// A pointer ends here: this value is kept whole.
    whole: bool,
    named: Vec<(String, Option<usize>, Keep)>,
    any: Option<Box<Keep>>,
}

/// A child of a container: an object member by name, an array element by position.
#[derive(Clone, Copy)]
enum Child<'n> {
    Member(&'n str),
    Element(usize),
}

impl Keep {
    pub fn new<'p>(pointers: impl IntoIterator<Item = &'p Pointer>) -> Keep {
        let mut root = Keep::default();
        for pointer in pointers {
            let mut node = &mut root;
            for segment in pointer.segments() {
                node = node.child(segment);
            }
            node.whole = true;
        }
        root
    }

    fn child(&mut self, segment: &Segment) -> &mut Keep {
        match segment {
            Segment::Any => self.any.get_or_insert_with(Box::default),
            Segment::Name { name, index } => {
                let at = match self.named.iter().position(|(known, _, _)| known == name) {
                    Some(at) => at,
                    None => {
                        self.named.push((name.clone(), *index, Keep::default()));
                        self.named.len() - 1
                    }
                };
                &mut self.named[at].2
            }
        }
    }

    /// The nodes that apply to `child`.
    fn matching<'k>(&'k self, child: Child<'k>) -> impl Iterator<Item = &'k Keep> {
        let named = self
            .named
            .iter()
            .filter(move |(name, index, _)| match child {
                Child::Member(member) => name == member,
                Child::Element(position) => *index == Some(position),
            })
            .map(|(_, _, node)| node);
        named.chain(self.any.as_deref())
    }

    /// Keeps what the list allows of `document`; the count is of values dropped. A document
    /// that is neither an object nor an array, and not kept whole, becomes `null`.
    pub fn apply<'a>(&self, document: Json<'a>) -> (Json<'a>, usize) {
        let mut dropped = 0;
        let kept = prune(document, &[self], &mut dropped).unwrap_or(Json::Null);
        (kept, dropped)
    }
}

fn prune<'a>(value: Json<'a>, nodes: &[&Keep], dropped: &mut usize) -> Option<Json<'a>> {
    if nodes.iter().any(|node| node.whole) {
        return Some(value);
    }
    match value {
        Json::Object(members) => Some(Json::Object(
            members
                .into_iter()
                .filter_map(|(name, value)| {
                    let child = Child::Member(&name);
                    let next: Vec<&Keep> = nodes.iter().flat_map(|n| n.matching(child)).collect();
                    prune_child(value, &next, dropped).map(|value| (name, value))
                })
                .collect(),
        )),
        Json::Array(items) => Some(Json::Array(
            items
                .into_iter()
                .enumerate()
                .filter_map(|(position, value)| {
                    let child = Child::Element(position);
                    let next: Vec<&Keep> = nodes.iter().flat_map(|n| n.matching(child)).collect();
                    prune_child(value, &next, dropped)
                })
                .collect(),
        )),
        // A pointer goes on below a value that has nothing below it.
        _ => {
            *dropped += 1;
            None
        }
    }
}

fn prune_child<'a>(value: Json<'a>, nodes: &[&Keep], dropped: &mut usize) -> Option<Json<'a>> {
    if nodes.is_empty() {
        *dropped += 1;
        return None;
    }
    prune(value, nodes, dropped)
}

/// Removes the values at `pointer` (never the whole document: the configuration refuses
/// that); answers how many.
pub fn remove(document: &mut Json<'_>, pointer: &Pointer) -> usize {
    let Some((last, parents)) = pointer.segments().split_last() else {
        return 0;
    };
    values_at(document, parents)
        .into_iter()
        .map(|parent| remove_child(parent, last))
        .sum()
}

fn remove_child(parent: &mut Json<'_>, segment: &Segment) -> usize {
    match (parent, segment) {
        (Json::Array(items), Segment::Any) => std::mem::take(items).len(),
        (Json::Object(members), Segment::Any) => std::mem::take(members).len(),
        (
            Json::Array(items),
            Segment::Name {
                index: Some(at), ..
            },
        ) if *at < items.len() => {
            items.remove(*at);
            1
        }
        (Json::Object(members), Segment::Name { name, .. }) => {
            let before = members.len();
            members.retain(|(member, _)| member != name);
            before - members.len()
        }
        _ => 0,
    }
}

/// Moves the value at `from` to `to`, in every value the part of `from` up to its last `*`
/// matches (the configuration makes sure `to` starts with that same part, and that neither
/// plain path below it is empty). A value whose destination cannot be made (it would go
/// below a string, or past the end of an array) stays where it is. Answers how many moved.
pub fn rename(document: &mut Json<'_>, from: &Pointer, to: &Pointer) -> usize {
    let (many, from_path) = from.split_after_last_any();
    let to_path = to.segments().get(many.len()..).unwrap_or_default();
    let mut moved = 0;
    for base in values_at(document, many) {
        let Some((value, at)) = take(base, from_path) else {
            continue;
        };
        match put(base, to_path, value) {
            Ok(()) => moved += 1,
            Err(value) => restore(base, from_path, value, at),
        }
    }
    moved
}

/// Sets `value` at `pointer`, in every value its `*`s match: a member is replaced or added
/// (at the end of its object), missing objects on the way are created, an array element is
/// replaced (only within the array). Answers how many were set.
pub fn set<'a>(document: &mut Json<'a>, pointer: &Pointer, value: &Json<'a>) -> usize {
    let (many, path) = pointer.split_after_last_any();
    values_at(document, many)
        .into_iter()
        .filter_map(|base| put(base, path, value.clone()).ok())
        .count()
}

/// Every value `segments` match, `*` expanded.
fn values_at<'v, 'a>(document: &'v mut Json<'a>, segments: &[Segment]) -> Vec<&'v mut Json<'a>> {
    let mut values = vec![document];
    for segment in segments {
        values = values
            .into_iter()
            .flat_map(|value| children(value, segment))
            .collect();
    }
    values
}

fn children<'v, 'a>(value: &'v mut Json<'a>, segment: &Segment) -> Vec<&'v mut Json<'a>> {
    match (value, segment) {
        (Json::Array(items), Segment::Any) => items.iter_mut().collect(),
        (Json::Object(members), Segment::Any) => members.iter_mut().map(|(_, v)| v).collect(),
        (
            Json::Array(items),
            Segment::Name {
                index: Some(at), ..
            },
        ) => items.get_mut(*at).into_iter().collect(),
        (Json::Object(members), Segment::Name { name, .. }) => members
            .iter_mut()
            .find(|(member, _)| member == name)
            .map(|(_, v)| v)
            .into_iter()
            .collect(),
        _ => Vec::new(),
    }
}

/// The one value a plain path (no `*`) leads to.
fn value_at<'v, 'a>(value: &'v mut Json<'a>, path: &[Segment]) -> Option<&'v mut Json<'a>> {
    values_at(value, path).into_iter().next()
}

/// Takes the value at a plain, non-empty `path` out, with its position in its container.
fn take<'a>(value: &mut Json<'a>, path: &[Segment]) -> Option<(Json<'a>, usize)> {
    let (last, parents) = path.split_last()?;
    match (value_at(value, parents)?, last) {
        (Json::Object(members), Segment::Name { name, .. }) => {
            let at = members.iter().position(|(member, _)| member == name)?;
            Some((members.remove(at).1, at))
        }
        (
            Json::Array(items),
            Segment::Name {
                index: Some(at), ..
            },
        ) if *at < items.len() => Some((items.remove(*at), *at)),
        _ => None,
    }
}

/// Puts a value [`take`]n from `path` back where it was.
fn restore<'a>(value: &mut Json<'a>, path: &[Segment], taken: Json<'a>, at: usize) {
    let Some((Segment::Name { name, .. }, parents)) = path.split_last() else {
        return;
    };
    match value_at(value, parents) {
        Some(Json::Object(members)) => {
            members.insert(at.min(members.len()), (Cow::Owned(name.clone()), taken));
        }
        Some(Json::Array(items)) => items.insert(at.min(items.len()), taken),
        _ => {}
    }
}

/// Puts `new` at a plain `path` below `value` (replacing `value` itself when the path is
/// empty), creating missing object members on the way as empty objects. Fails, giving `new`
/// back and changing nothing, where the path goes below a scalar or past an array's end (a
/// failure can only come before anything is created: below a created object, every step
/// succeeds).
fn put<'a>(value: &mut Json<'a>, path: &[Segment], new: Json<'a>) -> Result<(), Json<'a>> {
    let Some((first, rest)) = path.split_first() else {
        *value = new;
        return Ok(());
    };
    match (value, first) {
        (Json::Object(members), Segment::Name { name, .. }) => {
            if let Some((_, child)) = members.iter_mut().find(|(member, _)| member == name) {
                return put(child, rest, new);
            }
            let mut child = Json::Object(Vec::new());
            put(&mut child, rest, new)?;
            members.push((Cow::Owned(name.clone()), child));
            Ok(())
        }
        (
            Json::Array(items),
            Segment::Name {
                index: Some(at), ..
            },
        ) => match items.get_mut(*at) {
            Some(child) => put(child, rest, new),
            None => Err(new),
        },
        _ => Err(new),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::parse;

    fn pointer(text: &str) -> Pointer {
        Pointer::parse(text).unwrap()
    }

    fn text(value: &Json<'_>) -> String {
        String::from_utf8(value.to_bytes()).unwrap()
    }

    fn keep(pointers: &[&str], body: &str) -> (String, usize) {
        let pointers: Vec<Pointer> = pointers.iter().map(|p| pointer(p)).collect();
        let (kept, dropped) = Keep::new(&pointers).apply(parse(body.as_bytes()).unwrap());
        (text(&kept), dropped)
    }

    fn edited(body: &str, edit: impl FnOnce(&mut Json<'_>) -> usize) -> (String, usize) {
        let mut document = parse(body.as_bytes()).unwrap();
        let count = edit(&mut document);
        (text(&document), count)
    }

    const ORDER: &str = r#"{"id":7,"user":{"name":"ann","email":"a@x","password":"p"},
        "items":[{"sku":"A","price":1.50,"secret":"s1"},{"sku":"B","price":2,"secret":"s2"}],
        "internal":{"trace":"t"}}"#;

    #[test]
    fn keep_allows_only_the_listed_values_and_their_way() {
        assert_eq!(
            keep(&["/id", "/user/name", "/items/*/sku"], ORDER),
            (
                r#"{"id":7,"user":{"name":"ann"},"items":[{"sku":"A"},{"sku":"B"}]}"#.into(),
                7
            )
        );
        // A whole subtree, and an index: the array keeps only that element.
        assert_eq!(
            keep(&["/user", "/items/1/price"], ORDER).0,
            r#"{"user":{"name":"ann","email":"a@x","password":"p"},"items":[{"price":2}]}"#
        );
        // Several pointers through the same array, one by `*` and one by index.
        assert_eq!(
            keep(&["/items/*/sku", "/items/0/price"], ORDER).0,
            r#"{"items":[{"sku":"A","price":1.50},{"sku":"B"}]}"#
        );
        // `*` on an object: every member.
        assert_eq!(
            keep(
                &["/users/*/name"],
                r#"{"users":{"u1":{"name":"a","pw":1},"u2":{"pw":2}},"x":1}"#
            )
            .0,
            r#"{"users":{"u1":{"name":"a"},"u2":{}}}"#
        );
        // The whole document; nothing matching; a scalar where the pointer goes on.
        assert_eq!(keep(&[""], ORDER).1, 0);
        assert_eq!(keep(&["/nothing"], ORDER), ("{}".into(), 4));
        assert_eq!(keep(&["/id/deeper"], ORDER).0, "{}");
        assert_eq!(keep(&["/a"], "[1,2]").0, "[]");
        assert_eq!(keep(&["/a"], r#""text""#), ("null".into(), 1));
        assert_eq!(keep(&["/a"], r#"{"a":1}"#), (r#"{"a":1}"#.into(), 0));
    }

    #[test]
    fn remove_takes_out_every_match() {
        let remove_all = |pointers: &[&str], body: &str| {
            edited(body, |doc| {
                pointers.iter().map(|p| remove(doc, &pointer(p))).sum()
            })
        };
        assert_eq!(
            remove_all(&["/items/*/secret", "/user/password", "/internal"], ORDER),
            (
                r#"{"id":7,"user":{"name":"ann","email":"a@x"},"items":[{"sku":"A","price":1.50},{"sku":"B","price":2}]}"#.into(),
                4
            )
        );
        assert_eq!(
            remove_all(&["/items/0"], ORDER).0,
            r#"{"id":7,"user":{"name":"ann","email":"a@x","password":"p"},"items":[{"sku":"B","price":2,"secret":"s2"}],"internal":{"trace":"t"}}"#
        );
        assert_eq!(
            remove_all(&["/items/*"], r#"{"items":[1,2,3]}"#),
            (r#"{"items":[]}"#.into(), 3)
        );
        assert_eq!(remove_all(&["/*"], r#"{"a":1,"b":2}"#), ("{}".into(), 2));
        assert_eq!(
            remove_all(&["/*/x"], r#"{"a":{"x":1,"y":2},"b":[{"x":3}],"c":5}"#),
            (r#"{"a":{"y":2},"b":[{"x":3}],"c":5}"#.into(), 1)
        );
        // Escaped names; missing values and out-of-range indexes change nothing.
        assert_eq!(
            remove_all(&["/a~1b", "/m~0n"], r#"{"a/b":1,"m~n":2,"c":3}"#).0,
            r#"{"c":3}"#
        );
        assert_eq!(
            remove_all(&["/nope", "/items/9", "/id/x", "/items/-"], ORDER).1,
            0
        );
        // "0" names a member of an object, an element of an array.
        assert_eq!(remove_all(&["/0"], r#"{"0":1,"1":2}"#).0, r#"{"1":2}"#);
        assert_eq!(remove_all(&["/0"], "[1,2]").0, "[2]");
    }

    #[test]
    fn rename_moves_values_and_keeps_order_where_it_can() {
        let (body, moved) = edited(ORDER, |doc| {
            rename(doc, &pointer("/items/*/sku"), &pointer("/items/*/code"))
                + rename(doc, &pointer("/user/email"), &pointer("/contact/email"))
        });
        assert_eq!(
            body,
            r#"{"id":7,"user":{"name":"ann","password":"p"},"items":[{"price":1.50,"secret":"s1","code":"A"},{"price":2,"secret":"s2","code":"B"}],"internal":{"trace":"t"},"contact":{"email":"a@x"}}"#
        );
        assert_eq!(moved, 3);
        // Onto an existing member: replaced in place.
        assert_eq!(
            edited(r#"{"a":1,"b":2,"c":3}"#, |doc| rename(
                doc,
                &pointer("/c"),
                &pointer("/a")
            )),
            (r#"{"a":3,"b":2}"#.into(), 1)
        );
        // Into itself: nested.
        assert_eq!(
            edited(r#"{"a":1}"#, |doc| rename(
                doc,
                &pointer("/a"),
                &pointer("/a/b")
            ))
            .0,
            r#"{"a":{"b":1}}"#
        );
        // Missing source: nothing happens.
        assert_eq!(
            edited(ORDER, |doc| rename(doc, &pointer("/nope"), &pointer("/x"))).1,
            0
        );
        // A destination below a scalar or past an array: the value stays where it was.
        for to in ["/b/c", "/list/5"] {
            assert_eq!(
                edited(r#"{"x":1,"a":2,"b":"s","list":[]}"#, |doc| {
                    rename(doc, &pointer("/a"), &pointer(to))
                }),
                (r#"{"x":1,"a":2,"b":"s","list":[]}"#.into(), 0),
                "{to}"
            );
        }
        assert_eq!(
            edited("[[1,2],[3]]", |doc| rename(
                doc,
                &pointer("/*/1"),
                &pointer("/*/0")
            )),
            ("[[2],[3]]".into(), 1)
        );
    }

    #[test]
    fn set_replaces_adds_and_creates_the_way() {
        let constant = parse(br#"{"v":[1]}"#).unwrap();
        let (body, count) = edited(ORDER, |doc| {
            set(doc, &pointer("/id"), &Json::Bool(true))
                + set(doc, &pointer("/meta/edge/x"), &constant)
                + set(doc, &pointer("/items/*/secret"), &Json::Null)
                + set(doc, &pointer("/items/1"), &Json::Number("0".into()))
        });
        assert_eq!(
            body,
            r#"{"id":true,"user":{"name":"ann","email":"a@x","password":"p"},"items":[{"sku":"A","price":1.50,"secret":null},0],"internal":{"trace":"t"},"meta":{"edge":{"x":{"v":[1]}}}}"#
        );
        assert_eq!(count, 5);
        // Below a scalar, past an array's end: not set.
        assert_eq!(
            edited(ORDER, |doc| set(doc, &pointer("/id/x"), &Json::Null)).1,
            0
        );
        assert_eq!(
            edited(ORDER, |doc| set(doc, &pointer("/items/2"), &Json::Null)).1,
            0
        );
        // The whole document, every element.
        assert_eq!(
            edited(ORDER, |doc| set(doc, &pointer(""), &Json::Null)).0,
            "null"
        );
        assert_eq!(
            edited("[1,2]", |doc| set(doc, &pointer("/*"), &Json::Bool(false))),
            ("[false,false]".into(), 2)
        );
        assert_eq!(
            edited("[]", |doc| set(doc, &pointer("/*/a"), &Json::Null)).1,
            0
        );
    }
}
