//! An error told with its causes, for log lines and for texts that carry an error on.

use std::error::Error;
use std::fmt::Write as _;

/// The error and its sources on one line: `outer: inner: innermost`.
pub fn describe(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let _ = write!(text, ": {inner}");
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot load")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn every_cause_follows_the_error_it_caused() {
        let error = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(describe(&error), "cannot load: disk on fire");
    }
}
