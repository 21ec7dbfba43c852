//! Keeps a filtered body within the `Content-Length` its head announced.
//!
//! Filters may change a body's length. As in Envoy and Kong, a filter that does so removes
//! `content-length` in its header callback first (the proxy-wasm SDKs' examples do), and the
//! body is then sent chunked (HTTP/1.1) or framed (HTTP/2). Heads keep their length otherwise,
//! because the head leaves before any body callback runs and a length-less HTTP/1.1 body costs
//! extra writes per response. A filter that changes the length and leaves the header would
//! make a mis-framed message (a truncated body, or bytes read as the next response): this guard
//! stops the body at the first byte that breaks the announced length and ends the message.

use http::header::{HeaderMap, CONTENT_LENGTH};

#[derive(Debug, Default)]
pub(crate) struct DeclaredLength {
    /// The `Content-Length` the head left with, when it had one.
    declared: Option<u64>,
    passed: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "filters changed the body to {actual} bytes but left `content-length: {declared}`; a filter that \
     changes a body's length must remove content-length in its header callback"
)]
pub(crate) struct LengthMismatch {
    pub declared: u64,
    /// The length so far (when too long) or in all (when too short).
    pub actual: u64,
}

impl DeclaredLength {
    /// Remembers the length the head announces (it has left, or is about to).
    pub(crate) fn announce(headers: &HeaderMap) -> Self {
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        DeclaredLength {
            declared,
            passed: 0,
        }
    }

    /// Accounts for `len` more bytes about to be sent; an error when they break the length.
    pub(crate) fn pass(&mut self, len: usize, end_of_stream: bool) -> Result<(), LengthMismatch> {
        let Some(declared) = self.declared else {
            return Ok(());
        };
        self.passed += len as u64;
        if self.passed > declared || (end_of_stream && self.passed != declared) {
            return Err(LengthMismatch {
                declared,
                actual: self.passed,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(length: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, length.parse().unwrap());
        headers
    }

    #[test]
    fn bodies_that_keep_their_length_pass() {
        let mut length = DeclaredLength::announce(&head("10"));
        assert_eq!(length.pass(4, false), Ok(()));
        assert_eq!(length.pass(0, false), Ok(()));
        assert_eq!(length.pass(6, true), Ok(()));
    }

    #[test]
    fn too_long_is_caught_before_the_extra_bytes_leave() {
        let mut length = DeclaredLength::announce(&head("10"));
        assert_eq!(length.pass(8, false), Ok(()));
        assert_eq!(
            length.pass(3, false),
            Err(LengthMismatch {
                declared: 10,
                actual: 11
            })
        );
    }

    #[test]
    fn too_short_is_caught_at_the_end() {
        let mut length = DeclaredLength::announce(&head("10"));
        assert_eq!(length.pass(9, false), Ok(()));
        assert_eq!(
            length.pass(0, true),
            Err(LengthMismatch {
                declared: 10,
                actual: 9
            })
        );
    }

    #[test]
    fn bodies_without_a_length_are_not_checked() {
        let mut length = DeclaredLength::announce(&HeaderMap::new());
        assert_eq!(length.pass(100, true), Ok(()));
    }
}
