//! Cache keys: what tells two requests' responses apart on a route.

use pingora::cache::key::hash_key;
use pingora::cache::CacheKey;
use pingora::http::RequestHeader;

use crate::config::KeyPart;
use crate::routing::request_host;

/// The URL an object was fetched for, kept with the object so that purges by URL find every
/// object of a URL (all its variants and key variants).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ObjectUrl {
    /// Lower-case, without port.
    pub host: String,
    pub path_and_query: String,
}

impl ObjectUrl {
    pub(crate) fn of(req: &RequestHeader) -> Self {
        ObjectUrl {
            host: request_host(req).unwrap_or_default().to_ascii_lowercase(),
            path_and_query: req
                .uri
                .path_and_query()
                .map_or("/", |pq| pq.as_str())
                .to_string(),
        }
    }
}

/// The key of `req`'s response on a route keyed by `parts`, fetched from `upstream`.
///
/// Each part is framed (a tag byte and a length), so that no two different requests give the
/// same key text. The upstream is part of every key: the same URL fetched from two origins
/// (a filter may choose the upstream) is two objects.
pub(crate) fn cache_key(req: &RequestHeader, parts: &[KeyPart], upstream: &str) -> CacheKey {
    let url = ObjectUrl::of(req);
    let mut primary = Vec::with_capacity(128);
    frame(&mut primary, b'u', upstream.as_bytes());
    for part in parts {
        match part {
            KeyPart::Host => frame(&mut primary, b'h', url.host.as_bytes()),
            KeyPart::Path => frame(&mut primary, b'p', req.uri.path().as_bytes()),
            KeyPart::Query => {
                frame(&mut primary, b'q', req.uri.query().unwrap_or("").as_bytes());
            }
            KeyPart::Header(name) => {
                let values: Vec<&[u8]> = req
                    .headers
                    .get_all(name)
                    .iter()
                    .map(|v| v.as_bytes())
                    .collect();
                frame(&mut primary, b'H', name.as_str().as_bytes());
                frame(&mut primary, b'v', &values.join(&b","[..]));
            }
            KeyPart::Cookie(name) => {
                frame(&mut primary, b'C', name.as_bytes());
                frame(
                    &mut primary,
                    b'v',
                    cookie(req, name).unwrap_or("").as_bytes(),
                );
            }
        }
    }
    // Pingora hashes the primary key (BLAKE2) each time it needs it, twice on a hit and more
    // on a miss: hash it once, the same way.
    let hash = hash_key(&primary);
    let mut key = CacheKey::new(primary, "");
    key.set_primary_bin_override(hash);
    key.extensions.insert(url);
    key
}

fn frame(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// The value of cookie `name` in the request's `Cookie` headers, if present.
pub(crate) fn cookie<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| n.trim() == name)
        .map(|(_, value)| value.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::cache::key::CacheHashKey;

    fn request(uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", uri.as_bytes(), None).unwrap();
        for (name, value) in headers {
            req.append_header(name.to_string(), *value).unwrap();
        }
        req
    }

    fn default_parts() -> Vec<KeyPart> {
        vec![KeyPart::Host, KeyPart::Path, KeyPart::Query]
    }

    fn key(req: &RequestHeader, parts: &[KeyPart]) -> String {
        cache_key(req, parts, "origin").primary()
    }

    #[test]
    fn the_precomputed_hash_is_the_one_pingora_computes() {
        let req = request("/a?b", &[("host", "example.com")]);
        let key = cache_key(&req, &default_parts(), "origin");
        let unhashed = CacheKey::new(key.primary_key(), "");
        assert_eq!(key.primary_bin(), unhashed.primary_bin());
    }

    #[test]
    fn the_host_is_case_insensitive_and_the_port_ignored() {
        let a = request("/a", &[("host", "Example.com:8080")]);
        let b = request("/a", &[("host", "example.com")]);
        assert_eq!(key(&a, &default_parts()), key(&b, &default_parts()));
    }

    #[test]
    fn path_and_query_matter() {
        let host = [("host", "example.com")];
        let parts = default_parts();
        assert_ne!(
            key(&request("/a", &host), &parts),
            key(&request("/b", &host), &parts)
        );
        assert_ne!(
            key(&request("/a?x=1", &host), &parts),
            key(&request("/a?x=2", &host), &parts)
        );
        // Without `query` in the key, the query does not split objects.
        let no_query = [KeyPart::Host, KeyPart::Path];
        assert_eq!(
            key(&request("/a?x=1", &host), &no_query),
            key(&request("/a?x=2", &host), &no_query)
        );
    }

    #[test]
    fn parts_are_framed_so_boundaries_cannot_collide() {
        let parts = default_parts();
        let a = request("/b?c", &[("host", "a")]);
        let b = request("/?bc", &[("host", "a")]);
        assert_ne!(key(&a, &parts), key(&b, &parts));
    }

    #[test]
    fn headers_and_cookies_in_the_key() {
        let parts = vec![
            KeyPart::Path,
            KeyPart::Header(http::HeaderName::from_static("x-device")),
            KeyPart::Cookie("tier".into()),
        ];
        let phone = request("/a", &[("x-device", "phone"), ("cookie", "a=1; tier=gold")]);
        let desk = request("/a", &[("x-device", "desktop"), ("cookie", "tier=gold")]);
        let silver = request("/a", &[("x-device", "phone"), ("cookie", "tier=silver")]);
        let phone_again = request("/a", &[("x-device", "phone"), ("cookie", "tier=gold; b=2")]);
        assert_ne!(key(&phone, &parts), key(&desk, &parts));
        assert_ne!(key(&phone, &parts), key(&silver, &parts));
        assert_eq!(key(&phone, &parts), key(&phone_again, &parts));
    }

    #[test]
    fn the_upstream_is_always_in_the_key() {
        let req = request("/a", &[("host", "example.com")]);
        let parts = default_parts();
        assert_ne!(
            cache_key(&req, &parts, "us").primary(),
            cache_key(&req, &parts, "eu").primary()
        );
    }

    #[test]
    fn the_url_travels_with_the_key() {
        let req = request("/a?b=1", &[("host", "Example.com:80")]);
        let key = cache_key(&req, &default_parts(), "origin");
        assert_eq!(
            key.extensions.get::<ObjectUrl>(),
            Some(&ObjectUrl {
                host: "example.com".into(),
                path_and_query: "/a?b=1".into()
            })
        );
    }
}
