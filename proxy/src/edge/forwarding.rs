//! What a proxy adds and removes on the way: the request id, `X-Forwarded-*` and `Via`,
//! hop-by-hop fields, and the route's path and host rewrites.

use std::fmt::Write as _;

use http::{header, HeaderValue, Version};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;

use crate::answer::REQUEST_ID;
use crate::config::Route;
use crate::fields;

/// Why a request's `Host` makes it malformed (RFC 9112 §3.2): an HTTP/1.1 request has exactly
/// one, and it is a valid authority (or empty, for a target without one).
pub(super) fn host_problem(req: &RequestHeader) -> Option<&'static str> {
    if req.version != Version::HTTP_11 {
        return None;
    }
    let mut hosts = req.headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) => Some("an HTTP/1.1 request needs a Host header"),
        (Some(_), Some(_)) => Some("a request may have only one Host header"),
        (Some(host), None) => {
            // `name` or `name:port` needs no parsing; anything else must be an authority.
            let bytes = host.as_bytes();
            let (name, port) = match bytes.iter().position(|b| *b == b':') {
                Some(colon) => (&bytes[..colon], Some(&bytes[colon + 1..])),
                None => (bytes, None),
            };
            let plain = name
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
                && port.is_none_or(|p| !p.is_empty() && p.iter().all(u8::is_ascii_digit));
            let valid = plain
                || host
                    .to_str()
                    .is_ok_and(|h| h.parse::<http::uri::Authority>().is_ok());
            (!valid).then_some("the Host header is not a valid host")
        }
    }
}

/// Whether the client waits for `100 Continue` before it sends its body (HTTP/1.1 only).
pub(super) fn expects_continue(req: &RequestHeader) -> bool {
    req.version == Version::HTTP_11
        && req
            .headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// `Content-Length: 3, 3` (or the field twice) becomes one value: the client's length was
/// consistent (RFC 9112 §6.3), but an upstream may read the list otherwise.
fn normalize_content_length(req: &mut RequestHeader) -> Result<()> {
    let mut values = req.headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = values.next() else {
        return Ok(());
    };
    if values.next().is_none() && !first.as_bytes().contains(&b',') {
        return Ok(());
    }
    let lengths: Vec<Vec<u8>> = req
        .headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|l| l.trim_ascii().to_vec())
        .collect();
    match lengths.split_first() {
        Some((length, rest)) if rest.iter().all(|l| l == length) => {
            let length = HeaderValue::from_bytes(length)
                .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "content-length", e))?;
            req.insert_header(header::CONTENT_LENGTH, length)
        }
        _ => Error::e_explain(
            ErrorType::InvalidHTTPHeader,
            "conflicting content-length values",
        ),
    }
}

/// The route's rewrites (path prefix, `Host`) and the forwarding headers, on the request
/// going upstream.
pub(super) fn rewrite_upstream_request(
    session: &Session,
    route: &Route,
    upstream_request: &mut RequestHeader,
) -> Result<()> {
    // Answered here (`100 Continue`), not by the upstream.
    upstream_request.remove_header(&header::EXPECT);
    normalize_content_length(upstream_request)?;
    if let Some(prefix) = &route.strip_prefix {
        let stripped = strip_path_prefix(&upstream_request.uri, prefix);
        upstream_request.set_uri(stripped);
    }
    if let Some(host) = &route.host_rewrite {
        // Origin-form URI, so that an HTTP/2 `:authority` cannot override the new Host.
        let origin_form = upstream_request
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .parse::<http::Uri>()
            .map_err(|e| Error::because(ErrorType::InternalError, "origin-form URI", e))?;
        upstream_request.set_uri(origin_form);
        upstream_request.insert_header(header::HOST, host.clone())?;
    }
    add_forwarding_headers(session, upstream_request)
}

/// `https://host[:port]/path?query`: the request's URL on HTTPS at `port` (left out when it
/// is 443). The host is the request's (`:authority` or `Host`, without its port); a request
/// without a usable one is sent to the address it came to, `local`.
pub(super) fn https_location(
    req: &RequestHeader,
    port: u16,
    local: Option<std::net::IpAddr>,
) -> Option<HeaderValue> {
    let host = crate::routing::request_host(req).filter(|host| {
        let name = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_');
        let ipv6 = |b: u8| b.is_ascii_hexdigit() || matches!(b, b':' | b'.');
        match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(literal) => !literal.is_empty() && literal.bytes().all(ipv6),
            None => !host.is_empty() && host.bytes().all(name),
        }
    });
    let mut location = String::with_capacity(64);
    location.push_str("https://");
    match (host, local) {
        (Some(host), _) => location.push_str(host),
        (None, Some(std::net::IpAddr::V4(ip))) => {
            let _ = write!(location, "{ip}");
        }
        (None, Some(std::net::IpAddr::V6(ip))) => {
            let _ = write!(location, "[{ip}]");
        }
        (None, None) => return None,
    }
    if port != 443 {
        let _ = write!(location, ":{port}");
    }
    match req.uri.path_and_query().map(|pq| pq.as_str()) {
        Some(path) if path.starts_with('/') => location.push_str(path),
        _ => location.push('/'),
    }
    HeaderValue::from_str(&location).ok()
}

/// Keeps a sane client-supplied request id (so traces join up), otherwise makes a new one.
pub(super) fn request_id(req: &RequestHeader) -> HeaderValue {
    let supplied = req.headers.get(REQUEST_ID).filter(|v| {
        let b = v.as_bytes();
        !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
    });
    match supplied {
        Some(v) => v.clone(),
        None => new_request_id(),
    }
}

fn new_request_id() -> HeaderValue {
    use std::cell::Cell;
    use std::hash::BuildHasher;
    thread_local! {
        // A randomly keyed hasher over a counter: unique, unpredictable, no syscall per id.
        static SOURCE: (std::collections::hash_map::RandomState, Cell<u64>) = Default::default();
    }
    let (a, b) = SOURCE.with(|(keys, counter)| {
        let n = counter.get();
        counter.set(n.wrapping_add(2));
        (keys.hash_one(n), keys.hash_one(n + 1))
    });
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&a.to_be_bytes());
    raw[8..].copy_from_slice(&b.to_be_bytes());
    let mut id = [0u8; 32];
    // 32 hex digits (of a slice exactly twice as long) are always a valid header value.
    match hex::encode_to_slice(raw, &mut id) {
        Ok(()) => HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("0")),
        Err(_) => HeaderValue::from_static("0"),
    }
}

/// The scheme the client used: `https` on a TLS connection, else `http`.
pub(super) fn scheme(session: &Session) -> &'static str {
    if session.digest().is_some_and(|d| d.ssl_digest.is_some()) {
        "https"
    } else {
        "http"
    }
}

pub(super) fn protocol_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP",
    }
}

/// `/api/users?x=1` with prefix `/api/` → `/users?x=1`; the result always starts with `/`.
fn strip_path_prefix(uri: &http::Uri, prefix: &str) -> http::Uri {
    let path = uri.path();
    let rest = path.strip_prefix(prefix).unwrap_or(path);
    let mut new = String::with_capacity(path.len() + 1);
    if !rest.starts_with('/') {
        new.push('/');
    }
    new.push_str(rest);
    if let Some(query) = uri.query() {
        new.push('?');
        new.push_str(query);
    }
    new.parse().unwrap_or_else(|_| uri.clone())
}

/// X-Forwarded-For (appended), X-Forwarded-Proto, X-Forwarded-Host and Via, as a proxy should.
fn add_forwarding_headers(session: &Session, upstream_request: &mut RequestHeader) -> Result<()> {
    let downstream = session.req_header();
    if let Some(client) = session.client_addr().and_then(|a| a.as_inet()) {
        let mut chain = String::with_capacity(48);
        let earlier = downstream.headers.get_all("x-forwarded-for");
        for hop in earlier.iter().filter_map(|v| v.to_str().ok()) {
            chain.push_str(hop);
            chain.push_str(", ");
        }
        // Writing to a String cannot fail.
        let _ = write!(chain, "{}", client.ip());
        upstream_request.insert_header("x-forwarded-for", chain)?;
    }
    let proto = HeaderValue::from_static(scheme(session));
    upstream_request.insert_header("x-forwarded-proto", proto)?;
    let original_host = match downstream.uri.authority() {
        Some(authority) => Some(HeaderValue::from_str(authority.as_str()).ok()),
        None => Some(downstream.headers.get(header::HOST).cloned()),
    }
    .flatten();
    if let Some(host) = original_host {
        upstream_request.insert_header("x-forwarded-host", host)?;
    }
    let via = via(downstream.headers.get(header::VIA), downstream.version);
    // Names as `&'static str`: a `HeaderName` makes Pingora copy its case, then parse it back.
    upstream_request.insert_header("via", via)
}

/// `existing` Via with this hop appended, e.g. `1.1 cdn, 1.1 edgeward`.
pub(super) fn via(existing: Option<&HeaderValue>, version: Version) -> HeaderValue {
    // Static values: most requests and responses carry no Via, and need no formatting.
    let ours = match version {
        Version::HTTP_10 => "1.0 edgeward",
        Version::HTTP_2 => "2 edgeward",
        Version::HTTP_3 => "3 edgeward",
        _ => "1.1 edgeward",
    };
    existing
        .and_then(|v| v.to_str().ok())
        .and_then(|existing| HeaderValue::from_str(&format!("{existing}, {ours}")).ok())
        .unwrap_or(HeaderValue::from_static(ours))
}

/// Hop-by-hop response fields belong to the upstream connection, not the client's
/// (RFC 9110 §7.6.1). Pingora frames the downstream response itself.
pub(super) fn strip_hop_by_hop(resp: &mut ResponseHeader) {
    const HOP_BY_HOP: [&str; 5] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "proxy-authenticate",
    ];
    if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    let nominated: Vec<String> = resp
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| {
            !t.is_empty()
                && !["close", "keep-alive", "transfer-encoding", "content-length"]
                    .iter()
                    .any(|kept| t.eq_ignore_ascii_case(kept))
        })
        .map(str::to_ascii_lowercase)
        .collect();
    for name in nominated {
        resp.remove_header(&name);
    }
    fields::remove_fields(resp, &HOP_BY_HOP);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_stripping_keeps_a_leading_slash_and_the_query() {
        let uri: http::Uri = "/api/users?x=1".parse().unwrap();
        assert_eq!(strip_path_prefix(&uri, "/api/").to_string(), "/users?x=1");
        let uri: http::Uri = "/api".parse().unwrap();
        assert_eq!(strip_path_prefix(&uri, "/api").to_string(), "/");
    }

    #[test]
    fn an_http11_request_needs_exactly_one_valid_host() {
        let request = |hosts: &[&str], version| {
            let mut req = RequestHeader::build("GET", b"/", None).unwrap();
            req.set_version(version);
            for host in hosts {
                req.append_header("host", *host).unwrap();
            }
            host_problem(&req)
        };
        for good in [
            "example.com",
            "example.com:8080",
            "127.0.0.1:1",
            "[::1]:8080",
            "x_y.test",
            "",
        ] {
            assert_eq!(request(&[good], Version::HTTP_11), None, "{good:?}");
        }
        for bad in ["a b", "a:b:c", "exa mple.com:80", "[::1"] {
            assert!(request(&[bad], Version::HTTP_11).is_some(), "{bad:?}");
        }
        assert!(request(&[], Version::HTTP_11).is_some());
        assert!(request(&["a", "a"], Version::HTTP_11).is_some());
        assert_eq!(request(&[], Version::HTTP_10), None);
    }

    #[test]
    fn https_locations_keep_the_host_path_and_query_and_drop_the_port() {
        let location = |target: &str, host: Option<&str>, port: u16| {
            let mut req = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
            if let Some(host) = host {
                req.insert_header("host", host).unwrap();
            }
            let local = "192.0.2.1".parse().ok();
            https_location(&req, port, local).map(|v| v.to_str().unwrap().to_string())
        };
        let at = |s: &str| Some(s.to_string());
        assert_eq!(
            location("/a/b?x=1&y", Some("Example.test:8080"), 443),
            at("https://Example.test/a/b?x=1&y")
        );
        assert_eq!(
            location("/", Some("example.test"), 8443),
            at("https://example.test:8443/")
        );
        assert_eq!(
            location("/p", Some("[::1]:8080"), 443),
            at("https://[::1]/p")
        );
        // As Pingora's HTTP/2 server builds a request: the authority in the URI, no Host.
        let parts = http::Request::get("https://other.test:81/x?q")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let h2 = https_location(&RequestHeader::from(parts), 443, None);
        assert_eq!(h2.unwrap(), "https://other.test/x?q");
        assert_eq!(location("/p", None, 443), at("https://192.0.2.1/p"));
        assert_eq!(location("/p", Some("a\"b"), 443), at("https://192.0.2.1/p"));
        assert_eq!(location("*", Some("x.test"), 443), at("https://x.test/"));
    }

    #[test]
    fn request_ids_are_unique_hex() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.as_bytes().iter().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn via_appends_this_hop() {
        assert_eq!(via(None, Version::HTTP_2), "2 edgeward");
        let cdn = HeaderValue::from_static("1.0 cdn");
        assert_eq!(via(Some(&cdn), Version::HTTP_11), "1.0 cdn, 1.1 edgeward");
    }

    #[test]
    fn hop_by_hop_response_fields_are_removed() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("connection", "close, x-secret").unwrap();
        resp.insert_header("x-secret", "1").unwrap();
        resp.insert_header("keep-alive", "timeout=5").unwrap();
        resp.insert_header("x-kept", "1").unwrap();
        strip_hop_by_hop(&mut resp);
        assert!(resp.headers.get("x-secret").is_none());
        assert!(resp.headers.get("keep-alive").is_none());
        assert!(resp.headers.get("connection").is_none());
        assert_eq!(resp.headers.get("x-kept").unwrap(), "1");
    }
}
