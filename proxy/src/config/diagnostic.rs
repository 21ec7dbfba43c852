//! One problem found in a configuration file, with its place when it has one.

use std::fmt;

use super::yaml::Mark;

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
