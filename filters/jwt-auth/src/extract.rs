//! Finding the token in a request: in a header (after a prefix such as `Bearer `), a query
//! parameter of `:path`, or a cookie, trying the configured sources in order.

use crate::config::TokenSource;

/// The first token found by `sources`, in order, among the request's `headers` (lower-case
/// names, pseudo-headers included, a repeated header once per value). A source that finds
/// an empty value finds nothing.
pub fn find_token(sources: &[TokenSource], headers: &[(&str, &str)]) -> Option<String> {
    sources.iter().find_map(|source| match source {
        TokenSource::Header { name, prefix } => values(headers, name)
            .find_map(|value| strip_prefix(value, prefix))
            .map(str::to_owned),
        TokenSource::Query(name) => values(headers, ":path").find_map(|path| query(path, name)),
        TokenSource::Cookie(name) => values(headers, "cookie")
            .find_map(|cookies| cookie(cookies, name))
            .map(str::to_owned),
    })
}

fn values<'a>(headers: &'a [(&'a str, &'a str)], name: &'a str) -> impl Iterator<Item = &'a str> {
    headers
        .iter()
        .filter(move |(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| *value)
}

/// The token after `prefix` (matched case-insensitively), without surrounding whitespace.
fn strip_prefix<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let value = value.trim();
    let head = value.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        // `Bearer` with its trailing space trimmed away is still not a token.
        return None;
    }
    non_empty(value[prefix.len()..].trim())
}

/// The value of query parameter `name` in a request path, percent-decoded.
pub fn query(path: &str, name: &str) -> Option<String> {
    let (_, query) = path.split_once('?')?;
    let query = query.split('#').next().unwrap_or_default();
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(key)? != name {
            return None;
        }
        percent_decode(value).filter(|v| !v.is_empty())
    })
}

/// The value of cookie `name` in a `cookie` header (`a=1; b=2`), without quotes.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        if key.trim() != name {
            return None;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        non_empty(value)
    })
}

fn non_empty(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

/// Decodes `%XX` escapes; `None` if the result is not UTF-8. A `%` not followed by two hex
/// digits stays as it is.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&hi), Some(&lo)) if hex(hi).is_some() && hex(lo).is_some() => {
                let value = hex(hi).unwrap_or_default() * 16 + hex(lo).unwrap_or_default();
                out.push(u8::try_from(value).unwrap_or_default());
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        pairs.to_vec()
    }

    fn bearer() -> TokenSource {
        TokenSource::Header {
            name: "authorization".into(),
            prefix: "Bearer ".into(),
        }
    }

    #[test]
    fn bearer_header() {
        let sources = [bearer()];
        let find = |value: &str| find_token(&sources, &headers(&[("authorization", value)]));
        assert_eq!(find("Bearer abc.def.ghi").as_deref(), Some("abc.def.ghi"));
        assert_eq!(find("bearer abc").as_deref(), Some("abc"));
        assert_eq!(find("BEARER   abc  ").as_deref(), Some("abc"));
        assert_eq!(find("Basic dXNlcjpwYXNz"), None);
        assert_eq!(find("Bearer"), None);
        assert_eq!(find("Bearer    "), None);
        assert_eq!(find("abc.def.ghi"), None);
        assert_eq!(
            find_token(&sources, &headers(&[("x-other", "Bearer a")])),
            None
        );
        // The first value that carries a token wins.
        let two = headers(&[("authorization", "Basic x"), ("authorization", "Bearer t")]);
        assert_eq!(find_token(&sources, &two).as_deref(), Some("t"));
    }

    #[test]
    fn header_without_prefix() {
        let sources = [TokenSource::Header {
            name: "x-token".into(),
            prefix: String::new(),
        }];
        let found = find_token(&sources, &headers(&[("x-token", " a.b.c ")]));
        assert_eq!(found.as_deref(), Some("a.b.c"));
    }

    #[test]
    fn query_parameter() {
        assert_eq!(
            query("/p?access_token=a.b.c", "access_token").as_deref(),
            Some("a.b.c")
        );
        assert_eq!(
            query("/p?x=1&access_token=a%2Eb&y", "access_token").as_deref(),
            Some("a.b")
        );
        assert_eq!(
            query("/p?access%5Ftoken=t", "access_token").as_deref(),
            Some("t")
        );
        assert_eq!(
            query("/p?access_token=t#frag", "access_token").as_deref(),
            Some("t")
        );
        assert_eq!(query("/p?access_token=", "access_token"), None);
        assert_eq!(query("/p?access_token", "access_token"), None);
        assert_eq!(query("/p?my_access_token=t", "access_token"), None);
        assert_eq!(query("/p", "access_token"), None);
        assert_eq!(query("/p?t=%ff", "t"), None);
        assert_eq!(query("/p?t=100%", "t").as_deref(), Some("100%"));
    }

    #[test]
    fn cookies() {
        assert_eq!(cookie("session=abc", "session"), Some("abc"));
        assert_eq!(cookie("a=1; session=abc; b=2", "session"), Some("abc"));
        assert_eq!(cookie("a=1;session=\"abc\"", "session"), Some("abc"));
        assert_eq!(cookie("my_session=abc", "session"), None);
        assert_eq!(cookie("session=", "session"), None);
        assert_eq!(cookie("session", "session"), None);
        // HTTP/2 clients may split cookies over several headers.
        let sources = [TokenSource::Cookie("session".into())];
        let split = headers(&[("cookie", "a=1"), ("cookie", "session=tok")]);
        assert_eq!(find_token(&sources, &split).as_deref(), Some("tok"));
    }

    #[test]
    fn sources_are_tried_in_order() {
        let sources = [
            bearer(),
            TokenSource::Query("access_token".into()),
            TokenSource::Cookie("session".into()),
        ];
        let all = headers(&[
            (":path", "/x?access_token=from-query"),
            ("cookie", "session=from-cookie"),
            ("authorization", "Bearer from-header"),
        ]);
        assert_eq!(find_token(&sources, &all).as_deref(), Some("from-header"));
        assert_eq!(
            find_token(&sources, &all[..2]).as_deref(),
            Some("from-query")
        );
        assert_eq!(
            find_token(&sources, &all[1..2]).as_deref(),
            Some("from-cookie")
        );
        assert_eq!(find_token(&sources, &headers(&[(":path", "/x")])), None);
    }
}
