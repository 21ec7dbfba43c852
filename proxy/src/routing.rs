//! The route table: which route serves a request head. First match wins.

use std::sync::Arc;

use http::request::Parts;

use crate::config::{HostPattern, PathPattern, Route, RouteMatch};

pub(crate) struct RouteTable {
    routes: Vec<Arc<Route>>,
}

impl RouteTable {
    pub(crate) fn new(routes: Vec<Route>) -> Self {
        RouteTable {
            routes: routes.into_iter().map(Arc::new).collect(),
        }
    }

    /// The first route whose conditions all hold for this request.
    pub(crate) fn find(&self, req: &Parts) -> Option<&Arc<Route>> {
        let host = request_host(req);
        self.routes.iter().find(|r| r.matcher.matches(req, host))
    }
}

/// The host the client asked for, without port or trailing dot: the `:authority` of an
/// HTTP/2 or absolute-form request, else the `Host` header.
pub(crate) fn request_host(req: &Parts) -> Option<&str> {
    let raw = match req.uri.authority() {
        Some(authority) => authority.as_str(),
        None => req.headers.get(http::header::HOST)?.to_str().ok()?,
    };
    // Byte searches: this runs several times per request, and the separators are ASCII, so
    // every index found is a character boundary.
    let last = |text: &str, byte: u8| text.bytes().rposition(|b| b == byte);
    let without_userinfo = last(raw, b'@').map_or(raw, |at| &raw[at + 1..]);
    let host = if without_userinfo.starts_with('[') {
        // IPv6 literal: keep the brackets, drop a port after them.
        match without_userinfo.bytes().position(|b| b == b']') {
            Some(end) => &without_userinfo[..=end],
            None => without_userinfo,
        }
    } else {
        last(without_userinfo, b':').map_or(without_userinfo, |colon| &without_userinfo[..colon])
    };
    Some(host.strip_suffix('.').unwrap_or(host))
}

impl RouteMatch {
    fn matches(&self, req: &Parts, host: Option<&str>) -> bool {
        if !self.methods.is_empty() && !self.methods.contains(&req.method) {
            return false;
        }
        if let Some(pattern) = &self.host {
            if !host.is_some_and(|h| pattern.matches(h)) {
                return false;
            }
        }
        if let Some(pattern) = &self.path {
            if !pattern.matches(req.uri.path()) {
                return false;
            }
        }
        self.headers
            .iter()
            .all(|(name, value)| req.headers.get_all(name).iter().any(|v| v == value))
    }
}

impl HostPattern {
    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(expected) => host.eq_ignore_ascii_case(expected),
            // `.example.com`: at least one label before it.
            HostPattern::Suffix(suffix) => {
                host.len() > suffix.len()
                    && host
                        .get(host.len() - suffix.len()..)
                        .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
            }
        }
    }
}

impl PathPattern {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Prefix(prefix) => path.starts_with(prefix.as_str()),
            PathPattern::Exact(exact) => path == exact,
            PathPattern::Regex(re) => re.is_match(path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn table(routes_yaml: &str) -> RouteTable {
        let yaml = format!(
            "listeners: [{{address: 127.0.0.1:1}}]\nupstreams:\n  a: {{endpoints: [127.0.0.1:2]}}\n  b: {{endpoints: [127.0.0.1:3]}}\nroutes:\n{routes_yaml}"
        );
        let config = crate::config::from_str(&yaml, Path::new("t.yaml")).unwrap();
        RouteTable::new(config.routes)
    }

    fn head(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn routed(table: &RouteTable, req: &Parts) -> Option<String> {
        table.find(req).map(|r| r.name.clone())
    }

    #[test]
    fn host_exact_and_wildcard_ignore_port_and_case() {
        let t = table(
            "  - {name: exact, match: {host: api.example.com}, upstream: a}\n  - {name: wild, match: {host: '*.example.com'}, upstream: b}\n",
        );
        let r = |host: &str| routed(&t, &head("GET", "/", &[("host", host)]));
        assert_eq!(r("api.example.com:8080").as_deref(), Some("exact"));
        assert_eq!(r("API.Example.COM").as_deref(), Some("exact"));
        assert_eq!(r("www.example.com").as_deref(), Some("wild"));
        assert_eq!(r("a.b.example.com.").as_deref(), Some("wild"));
        assert_eq!(r("example.com"), None);
        assert_eq!(r("badexample.com"), None);
        // HTTP/2 :authority wins over a Host header.
        let h2 = head("GET", "http://api.example.com/x", &[("host", "other")]);
        assert_eq!(routed(&t, &h2).as_deref(), Some("exact"));
    }

    #[test]
    fn paths_prefix_exact_regex() {
        let t = table(
            "  - {name: exact, match: {path: /health}, upstream: a}\n  - {name: re, match: {path_regex: '/users/[0-9]+'}, upstream: a}\n  - {name: prefix, match: {path_prefix: /api/}, upstream: b}\n",
        );
        let r = |uri: &str| routed(&t, &head("GET", uri, &[]));
        assert_eq!(r("/health?x=1").as_deref(), Some("exact"));
        assert_eq!(r("/health/more"), None);
        assert_eq!(r("/users/42").as_deref(), Some("re"));
        assert_eq!(r("/users/42/posts"), None);
        assert_eq!(r("/api/x").as_deref(), Some("prefix"));
        assert_eq!(r("/api"), None);
    }

    #[test]
    fn methods_and_headers() {
        let t = table(
            "  - {name: canary, match: {methods: [POST], headers: {x-canary: '1'}}, upstream: a}\n  - {name: rest, upstream: b}\n",
        );
        assert_eq!(
            routed(&t, &head("POST", "/", &[("x-canary", "1")])).as_deref(),
            Some("canary")
        );
        assert_eq!(
            routed(&t, &head("GET", "/", &[("x-canary", "1")])).as_deref(),
            Some("rest")
        );
        assert_eq!(
            routed(&t, &head("POST", "/", &[("x-canary", "2")])).as_deref(),
            Some("rest")
        );
        assert_eq!(
            routed(
                &t,
                &head("POST", "/", &[("x-canary", "0"), ("X-Canary", "1")])
            )
            .as_deref(),
            Some("canary")
        );
    }

    #[test]
    fn hosts_lose_userinfo_port_and_trailing_dot() {
        for (host, expected) in [
            ("example.com", "example.com"),
            ("example.com:8080", "example.com"),
            ("example.com.", "example.com"),
            ("user:pw@example.com:8080", "example.com"),
            ("[::1]:8080", "[::1]"),
            ("[::1]", "[::1]"),
            ("", ""),
        ] {
            let p = head("GET", "/", &[("host", host)]);
            assert_eq!(request_host(&p), Some(expected), "{host}");
        }
        // The authority of an absolute-form request wins over Host.
        let p = head("GET", "http://a.example:81/", &[("host", "b.example")]);
        assert_eq!(request_host(&p), Some("a.example"));
    }
}
