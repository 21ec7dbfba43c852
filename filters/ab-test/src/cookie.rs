//! Reading the client's `Cookie` header and writing the `Set-Cookie` that keeps its bucket.
//! SDK-free, tested natively.

use std::fmt::Write as _;

/// The values of every cookie called `name` in a `Cookie` header, in order, without the
/// double quotes RFC 6265 allows around a value. The host joins repeated `Cookie` headers
/// (HTTP/2 sends one per cookie) with `,`, so both `;` and `,` separate cookies; a piece
/// that is not UTF-8 or has no `=` is skipped.
pub fn values<'a>(header: &'a [u8], name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    header
        .split(|&b| b == b';' || b == b',')
        .filter_map(|piece| std::str::from_utf8(piece).ok())
        .filter_map(move |piece| {
            let (key, value) = piece.split_once('=')?;
            if key.trim() != name {
                return None;
            }
            let value = value.trim();
            Some(
                value
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(value),
            )
        })
}

/// The `SameSite` attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

impl SameSite {
    fn as_str(self) -> &'static str {
        match self {
            SameSite::Strict => "Strict",
            SameSite::Lax => "Lax",
            SameSite::None => "None",
        }
    }
}

/// How the bucket cookie is set. Every part is checked at configure time (see
/// `config`), so [`Cookie::set_cookie`] only puts them together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cookie {
    pub name: String,
    pub max_age_seconds: u64,
    pub domain: Option<String>,
    pub path: String,
    pub secure: bool,
    pub http_only: bool,
    pub same_site: SameSite,
}

impl Cookie {
    /// The `Set-Cookie` value that gives the client `value`.
    pub fn set_cookie(&self, value: &str) -> String {
        let mut line = format!(
            "{}={value}; Max-Age={}; Path={}",
            self.name, self.max_age_seconds, self.path
        );
        if let Some(domain) = &self.domain {
            let _ = write!(line, "; Domain={domain}");
        }
        if self.secure {
            line.push_str("; Secure");
        }
        if self.http_only {
            line.push_str("; HttpOnly");
        }
        let _ = write!(line, "; SameSite={}", self.same_site.as_str());
        line
    }
}

/// Whether `name` can be a cookie name: an RFC 9110 token (RFC 6265 `cookie-name`).
pub fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all<'a>(header: &'a str, name: &'a str) -> Vec<&'a str> {
        values(header.as_bytes(), name).collect()
    }

    #[test]
    fn finds_the_named_cookie_among_others() {
        assert_eq!(all("ab_bucket=b", "ab_bucket"), ["b"]);
        assert_eq!(
            all("session=xyz; ab_bucket=b; theme=dark", "ab_bucket"),
            ["b"]
        );
        assert_eq!(all("session=xyz;ab_bucket=\"a\"", "ab_bucket"), ["a"]);
        // Repeated Cookie headers, joined by the host with `,`.
        assert_eq!(all("session=xyz,ab_bucket=a", "ab_bucket"), ["a"]);
        // Two cookies of that name (set for two paths): both, in order.
        assert_eq!(all("ab_bucket=a; ab_bucket=b", "ab_bucket"), ["a", "b"]);
        assert!(all("", "ab_bucket").is_empty());
        assert!(all("ab_bucket", "ab_bucket").is_empty());
        assert!(all("xab_bucket=a; ab_bucket2=b", "ab_bucket").is_empty());
        assert_eq!(all("ab_bucket=", "ab_bucket"), [""]);
    }

    #[test]
    fn bytes_that_are_not_utf8_spoil_only_their_own_cookie() {
        let header = b"junk=\xff\xfe; ab_bucket=b";
        assert_eq!(values(header, "ab_bucket").collect::<Vec<_>>(), ["b"]);
        let header = b"ab_bucket=\xff";
        assert_eq!(values(header, "ab_bucket").count(), 0);
    }

    #[test]
    fn set_cookie_carries_the_configured_attributes() {
        let mut cookie = Cookie {
            name: "ab_bucket".to_owned(),
            max_age_seconds: 2_592_000,
            domain: None,
            path: "/".to_owned(),
            secure: false,
            http_only: true,
            same_site: SameSite::Lax,
        };
        assert_eq!(
            cookie.set_cookie("b"),
            "ab_bucket=b; Max-Age=2592000; Path=/; HttpOnly; SameSite=Lax"
        );
        cookie.domain = Some("example.com".to_owned());
        cookie.path = "/shop/".to_owned();
        cookie.secure = true;
        cookie.http_only = false;
        cookie.same_site = SameSite::None;
        assert_eq!(
            cookie.set_cookie("control"),
            "ab_bucket=control; Max-Age=2592000; Path=/shop/; Domain=example.com; Secure; SameSite=None"
        );
    }

    #[test]
    fn cookie_names_are_tokens() {
        assert!(is_token("ab_bucket"));
        assert!(is_token("__Host-ab"));
        for bad in ["", "a b", "a=b", "a;b", "a,b", "é", "a\"b"] {
            assert!(!is_token(bad), "{bad:?}");
        }
    }
}
