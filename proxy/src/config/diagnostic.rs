//! One problem found in a configuration file, with its place when it has one, and the
//! collection of the problems of one file.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashSet};
use std::fmt;

/// A position in the configuration text (1-based line and column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Mark {
    pub line: usize,
    pub col: usize,
}

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Where in the file, when the problem belongs to one place.
    pub mark: Option<Mark>,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.mark {
            Some(m) => write!(f, "{}:{}: {}", m.line, m.col, self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// How many problems of one file are kept and shown; the others are only counted. A hostile
/// or mistaken file (millions of unknown keys, a binary file) cannot make edgeward hold or
/// print millions of messages.
pub const MAX_SHOWN: usize = 100;

/// The problems found in one file: the first [`MAX_SHOWN`] in file order are kept, the rest
/// counted. Each `push` costs O(log MAX_SHOWN), whatever the order problems are found in.
#[derive(Debug, Default)]
pub(super) struct Problems {
    /// The kept problems, the last in file order on top (to be dropped first).
    kept: BinaryHeap<Ranked>,
    /// Problems found, kept or not.
    found: usize,
}

impl Problems {
    pub(super) fn push(&mut self, diagnostic: Diagnostic) {
        let ranked = Ranked {
            place: diagnostic.mark.map(|m| (m.line, m.col)),
            order: self.found,
            diagnostic,
        };
        self.found += 1;
        if self.kept.len() < MAX_SHOWN {
            self.kept.push(ranked);
        } else if self.kept.peek().is_some_and(|last| ranked < *last) {
            self.kept.pop();
            self.kept.push(ranked);
        }
    }

    pub(super) fn error(&mut self, mark: Option<Mark>, message: impl Into<String>) {
        self.push(Diagnostic {
            mark,
            message: message.into(),
        });
    }

    pub(super) fn is_empty(&self) -> bool {
        self.found == 0
    }

    pub(super) fn append(&mut self, other: Problems) {
        let dropped = other.found - other.kept.len();
        for ranked in other.kept.into_sorted_vec() {
            self.push(ranked.diagnostic);
        }
        self.found += dropped;
    }

    /// The kept problems in file order (those without a place first), the same problem found
    /// twice told once (a value an alias repeats is checked once per copy), and how many more
    /// were found but not kept.
    pub(super) fn into_parts(self) -> (Vec<Diagnostic>, usize) {
        let not_kept = self.found - self.kept.len();
        let mut shown: Vec<Diagnostic> = self
            .kept
            .into_sorted_vec()
            .into_iter()
            .map(|r| r.diagnostic)
            .collect();
        let mut seen = HashSet::new();
        shown.retain(|d| seen.insert((d.mark, d.message.clone())));
        (shown, not_kept)
    }
}

/// A problem with its rank: by place in the file, then in the order found.
#[derive(Debug)]
struct Ranked {
    place: Option<(usize, usize)>,
    order: usize,
    diagnostic: Diagnostic,
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Ranked {}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.place, self.order).cmp(&(other.place, other.order))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: usize) -> Option<Mark> {
        Some(Mark { line, col: 1 })
    }

    #[test]
    fn the_first_problems_in_file_order_are_kept_and_the_rest_counted() {
        let mut problems = Problems::default();
        for line in (1..=MAX_SHOWN * 3).rev() {
            problems.error(at(line), format!("line {line}"));
        }
        problems.error(None, "whole file");
        let (shown, more) = problems.into_parts();
        assert_eq!(shown.len(), MAX_SHOWN);
        assert_eq!(more, MAX_SHOWN * 2 + 1);
        assert_eq!(shown[0].message, "whole file");
        assert_eq!(shown[1].message, "line 1");
        assert_eq!(
            shown[MAX_SHOWN - 1].message,
            format!("line {}", MAX_SHOWN - 1)
        );
    }

    #[test]
    fn problems_at_one_place_keep_the_order_found_and_repeats_are_told_once() {
        let mut problems = Problems::default();
        problems.error(at(2), "b");
        problems.error(at(1), "a");
        problems.error(at(2), "c");
        problems.error(at(2), "b");
        let mut other = Problems::default();
        other.error(at(3), "d");
        problems.append(other);
        let (shown, more) = problems.into_parts();
        let messages: Vec<&str> = shown.iter().map(|d| d.message.as_str()).collect();
        assert_eq!(messages, ["a", "b", "c", "d"]);
        assert_eq!(more, 0);
    }
}
