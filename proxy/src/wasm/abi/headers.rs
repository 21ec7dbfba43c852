//! Header and trailer maps: `proxy_{get,set}_header_map_pairs`,
//! `proxy_{get,add,replace,remove}_header_map_value`, `proxy_get_header_map_size`.
//!
//! As in Envoy, requests carry the pseudo-headers `:method`, `:path`, `:authority` and
//! `:scheme` (the `Host` header appears as `:authority`), responses `:status`; keys are
//! lower-case; a repeated header answers its first value. A map can be read and written
//! whenever it exists (see `writable` for when a write still reaches the other side).

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use pingora::http::{RequestHeader, ResponseHeader};
use wasmtime::{Caller, Linker};

use super::memory;
use super::pairs;
use super::status::{status, HostResult, Status};
use crate::wasm::state::HostState;

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_get_header_map_pairs", get_pairs)?;
    linker.func_wrap("env", "proxy_set_header_map_pairs", set_pairs)?;
    linker.func_wrap("env", "proxy_get_header_map_value", get_value)?;
    linker.func_wrap("env", "proxy_add_header_map_value", add_value)?;
    linker.func_wrap("env", "proxy_replace_header_map_value", replace_value)?;
    linker.func_wrap("env", "proxy_remove_header_map_value", remove_value)?;
    linker.func_wrap("env", "proxy_get_header_map_size", get_size)?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Map {
    RequestHeaders,
    ResponseHeaders,
    /// The answer of the callout being delivered (read-only).
    CallResponseHeaders,
    CallResponseTrailers,
    /// Trailers exist once they came (Pingora surfaces response trailers from HTTP/2
    /// upstreams, never request trailers). A write where there are none is accepted and
    /// dropped, as adding trailers to a message without them is not possible here.
    RequestTrailers,
    ResponseTrailers,
    /// gRPC stream metadata: no gRPC streams here.
    Absent,
}

fn map(map_type: u32) -> Option<Map> {
    match map_type {
        0 => Some(Map::RequestHeaders),
        1 => Some(Map::RequestTrailers),
        2 => Some(Map::ResponseHeaders),
        3 => Some(Map::ResponseTrailers),
        6 => Some(Map::CallResponseHeaders),
        7 => Some(Map::CallResponseTrailers),
        4 | 5 => Some(Map::Absent),
        _ => None,
    }
}

/// The map's entries in the current callback, pseudo-headers first; `None` when the map
/// does not exist here (a root context, no response yet, trailers).
fn entries(state: &HostState, map: Map) -> Option<Vec<(&[u8], &[u8])>> {
    match map {
        Map::CallResponseHeaders => {
            return state.call.callout.as_ref().map(|a| borrowed(&a.headers))
        }
        Map::CallResponseTrailers => {
            return state.call.callout.as_ref().map(|a| borrowed(&a.trailers))
        }
        _ => {}
    }
    let http = state
        .call
        .http
        .as_ref()
        .filter(|_| state.call.on_own_stream())?;
    match map {
        Map::RequestHeaders => Some(request_entries(&http.request, http.stream.scheme)),
        Map::ResponseHeaders => http.response.as_ref().map(response_entries),
        Map::ResponseTrailers => http.response_trailers.as_ref().map(trailer_entries),
        Map::RequestTrailers
        | Map::CallResponseHeaders
        | Map::CallResponseTrailers
        | Map::Absent => None,
    }
}

fn borrowed(pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<(&[u8], &[u8])> {
    pairs
        .iter()
        .map(|(k, v)| (k.as_slice(), v.as_slice()))
        .collect()
}

fn request_entries<'a>(req: &'a RequestHeader, scheme: &'static str) -> Vec<(&'a [u8], &'a [u8])> {
    let mut out = Vec::with_capacity(req.headers.len() + 4);
    out.push((&b":method"[..], req.method.as_str().as_bytes()));
    out.push((&b":path"[..], req.raw_path()));
    if let Some(authority) = authority(req) {
        out.push((&b":authority"[..], authority));
    }
    out.push((&b":scheme"[..], scheme.as_bytes()));
    out.extend(
        req.headers
            .iter()
            .filter(|(name, _)| *name != http::header::HOST)
            .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes())),
    );
    out
}

fn response_entries(resp: &ResponseHeader) -> Vec<(&[u8], &[u8])> {
    let mut out = Vec::with_capacity(resp.headers.len() + 1);
    out.push((&b":status"[..], resp.status.as_str().as_bytes()));
    out.extend(
        resp.headers
            .iter()
            .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes())),
    );
    out
}

fn trailer_entries(trailers: &HeaderMap) -> Vec<(&[u8], &[u8])> {
    trailers
        .iter()
        .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()))
        .collect()
}

fn authority(req: &RequestHeader) -> Option<&[u8]> {
    match req.uri.authority() {
        Some(authority) => Some(authority.as_str().as_bytes()),
        None => req
            .headers
            .get(http::header::HOST)
            .map(HeaderValue::as_bytes),
    }
}

fn first_value<'a>(entries: &[(&'a [u8], &'a [u8])], key: &[u8]) -> Option<&'a [u8]> {
    let key = if key.eq_ignore_ascii_case(b"host") {
        &b":authority"[..]
    } else {
        key
    };
    entries
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| *v)
}

fn get_pairs(
    mut caller: Caller<'_, HostState>,
    map_type: u32,
    ret_ptr: u32,
    ret_size: u32,
) -> HostResult {
    let Some(map) = map(map_type) else {
        return Ok(Status::BadArgument as i32);
    };
    // A map that does not exist reads as empty, as in Envoy.
    let encoded =
        entries(caller.data(), map).map_or_else(Vec::new, |e| pairs::encode(e.into_iter()));
    memory::return_bytes(&mut caller, &encoded, ret_ptr, ret_size)
}

fn get_value(
    mut caller: Caller<'_, HostState>,
    map_type: u32,
    key_ptr: u32,
    key_len: u32,
    ret_ptr: u32,
    ret_size: u32,
) -> HostResult {
    let Some(map) = map(map_type) else {
        return Ok(Status::BadArgument as i32);
    };
    let key = match memory::read(&caller, key_ptr, key_len) {
        Ok(key) => key,
        Err(status) => return Ok(status as i32),
    };
    let value = entries(caller.data(), map).and_then(|e| first_value(&e, &key).map(<[u8]>::to_vec));
    match value {
        Some(value) => memory::return_bytes(&mut caller, &value, ret_ptr, ret_size),
        None => Ok(Status::NotFound as i32),
    }
}

fn get_size(mut caller: Caller<'_, HostState>, map_type: u32, ret_size: u32) -> HostResult {
    let Some(map) = map(map_type) else {
        return Ok(Status::BadArgument as i32);
    };
    let Some(size) = entries(caller.data(), map).map(|e| pairs::encode(e.into_iter()).len()) else {
        return Ok(Status::BadArgument as i32);
    };
    Ok(status(memory::write_u32(
        &mut caller,
        ret_size,
        size as u32,
    )))
}

#[derive(Clone, Copy)]
enum Edit {
    Add,
    Replace,
}

fn add_value(
    caller: Caller<'_, HostState>,
    map_type: u32,
    key_ptr: u32,
    key_len: u32,
    value_ptr: u32,
    value_len: u32,
) -> HostResult {
    edit_value(
        caller,
        map_type,
        key_ptr,
        key_len,
        Some((value_ptr, value_len, Edit::Add)),
    )
}

fn replace_value(
    caller: Caller<'_, HostState>,
    map_type: u32,
    key_ptr: u32,
    key_len: u32,
    value_ptr: u32,
    value_len: u32,
) -> HostResult {
    edit_value(
        caller,
        map_type,
        key_ptr,
        key_len,
        Some((value_ptr, value_len, Edit::Replace)),
    )
}

fn remove_value(
    caller: Caller<'_, HostState>,
    map_type: u32,
    key_ptr: u32,
    key_len: u32,
) -> HostResult {
    edit_value(caller, map_type, key_ptr, key_len, None)
}

fn edit_value(
    mut caller: Caller<'_, HostState>,
    map_type: u32,
    key_ptr: u32,
    key_len: u32,
    value: Option<(u32, u32, Edit)>,
) -> HostResult {
    let result = memory::split(&mut caller).and_then(|(mem, state)| {
        let map = map(map_type).ok_or(Status::BadArgument)?;
        let key = memory::slice(mem, key_ptr, key_len)?;
        let mut head = writable(state, map)?;
        match value {
            None => head.remove(key),
            Some((ptr, len, edit)) => head.set(key, memory::slice(mem, ptr, len)?, edit),
        }
    });
    Ok(status(result))
}

fn set_pairs(mut caller: Caller<'_, HostState>, map_type: u32, ptr: u32, len: u32) -> HostResult {
    let result = memory::split(&mut caller).and_then(|(mem, state)| {
        let map = map(map_type).ok_or(Status::BadArgument)?;
        let bytes = memory::slice(mem, ptr, len)?;
        let entries = pairs::decode(bytes).ok_or_else(|| {
            log::warn!(
                target: super::log::TARGET,
                "[filter {}] proxy_set_header_map_pairs: malformed map ignored",
                state.plugin.name
            );
            Status::BadArgument
        })?;
        let mut head = writable(state, map)?;
        head.clear();
        entries
            .into_iter()
            .try_for_each(|(key, value)| head.set(key, value, Edit::Add))
    });
    Ok(status(result))
}

/// A head a filter may change. As in Envoy, a head can be written in any phase of its own
/// stream once it exists. The request head reaches the upstream while the chain still holds
/// it: in its headers phase, and in the body callbacks and callout answers of a filter that
/// paused it. Later changes are kept (later filters and the access log see them) but can no
/// longer reach the other side (the request has gone upstream, the response head to the
/// client); the request line stays as it went upstream: a late `:method`, `:path` or
/// `:authority` is accepted and ignored.
fn writable(state: &mut HostState, map: Map) -> Result<Head<'_>, Status> {
    let own = state.call.on_own_stream();
    let http = state
        .call
        .http
        .as_mut()
        .filter(|_| own)
        .ok_or(Status::BadArgument)?;
    match map {
        Map::RequestHeaders => {
            let late = !http.request_head_held;
            Ok(Head::Request(&mut http.request, late))
        }
        Map::ResponseHeaders => http
            .response
            .as_mut()
            .map(Head::Response)
            .ok_or(Status::BadArgument),
        Map::ResponseTrailers => Ok(http
            .response_trailers
            .as_mut()
            .map_or(Head::NoTrailers, Head::Trailers)),
        Map::RequestTrailers => Ok(Head::NoTrailers),
        Map::CallResponseHeaders | Map::CallResponseTrailers | Map::Absent => {
            Err(Status::BadArgument)
        }
    }
}

enum Head<'a> {
    /// With whether the request has gone upstream already.
    Request(&'a mut RequestHeader, bool),
    Response(&'a mut ResponseHeader),
    Trailers(&'a mut HeaderMap),
    /// Trailers that do not exist: writes are accepted and dropped.
    NoTrailers,
}

impl Head<'_> {
    fn set(&mut self, key: &[u8], value: &[u8], edit: Edit) -> Result<(), Status> {
        let head = matches!(self, Head::Request(..) | Head::Response(..));
        if head && (key.first() == Some(&b':') || key.eq_ignore_ascii_case(b"host")) {
            return self.set_pseudo(key, value);
        }
        if key.first() == Some(&b':') {
            // Trailers have no pseudo-headers.
            return Err(Status::BadArgument);
        }
        let name = header_name(key)?;
        let value = HeaderValue::from_bytes(value).map_err(|_| Status::BadArgument)?;
        let result = match (self, edit) {
            (Head::Request(r, _), Edit::Add) => r.append_header(name, value).map(drop),
            (Head::Request(r, _), Edit::Replace) => r.insert_header(name, value),
            (Head::Response(r), Edit::Add) => r.append_header(name, value).map(drop),
            (Head::Response(r), Edit::Replace) => r.insert_header(name, value),
            (Head::Trailers(t), Edit::Add) => {
                t.append(name, value);
                Ok(())
            }
            (Head::Trailers(t), Edit::Replace) => {
                t.insert(name, value);
                Ok(())
            }
            (Head::NoTrailers, _) => Ok(()),
        };
        result.map_err(|_| Status::BadArgument)
    }

    /// Pseudo-headers change the request line or status, as in Envoy.
    fn set_pseudo(&mut self, key: &[u8], value: &[u8]) -> Result<(), Status> {
        match (self, key.to_ascii_lowercase().as_slice()) {
            (Head::Request(_, true), b":path" | b":method" | b":authority" | b"host") => Ok(()),
            (Head::Request(r, _), b":path") => set_origin_form(r, value),
            (Head::Request(r, _), b":method") => {
                let method = Method::from_bytes(value).map_err(|_| Status::BadArgument)?;
                r.set_method(method);
                Ok(())
            }
            (Head::Request(r, _), b":authority" | b"host") => {
                let host = HeaderValue::from_bytes(value).map_err(|_| Status::BadArgument)?;
                let path = r
                    .uri
                    .path_and_query()
                    .map_or("/", |pq| pq.as_str())
                    .as_bytes()
                    .to_vec();
                set_origin_form(r, &path)?;
                r.insert_header(http::header::HOST, host)
                    .map_err(|_| Status::BadArgument)
            }
            (Head::Response(r), b":status") => {
                let code = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse::<u16>().ok())
                    .filter(|c| (100..=999).contains(c))
                    .ok_or(Status::BadArgument)?;
                r.set_status(code).map_err(|_| Status::BadArgument)
            }
            _ => Err(Status::BadArgument),
        }
    }

    fn remove(&mut self, key: &[u8]) -> Result<(), Status> {
        if key.first() == Some(&b':') {
            return Err(Status::BadArgument);
        }
        let name = header_name(key)?;
        match self {
            Head::Request(r, _) => drop(r.remove_header(&name)),
            Head::Response(r) => drop(r.remove_header(&name)),
            Head::Trailers(t) => drop(t.remove(&name)),
            Head::NoTrailers => {}
        };
        Ok(())
    }

    /// Removes every regular header (pseudo-headers stay: they are the request line).
    fn clear(&mut self) {
        let names: Vec<HeaderName> = match self {
            Head::Request(r, _) => r.headers.keys().cloned().collect(),
            Head::Response(r) => r.headers.keys().cloned().collect(),
            Head::Trailers(t) => return t.clear(),
            Head::NoTrailers => return,
        };
        for name in names {
            match self {
                Head::Request(r, _) => drop(r.remove_header(&name)),
                Head::Response(r) => drop(r.remove_header(&name)),
                Head::Trailers(_) | Head::NoTrailers => {}
            };
        }
    }
}

/// Sets the request target to `path` in origin form. An HTTP/2 request's authority lives in
/// its URI; it moves to the Host header first so that it is not lost.
fn set_origin_form(r: &mut RequestHeader, path: &[u8]) -> Result<(), Status> {
    if let Some(authority) = r.uri.authority().map(|a| a.as_str().to_string()) {
        if !r.headers.contains_key(http::header::HOST) {
            r.insert_header(http::header::HOST, authority)
                .map_err(|_| Status::BadArgument)?;
        }
    }
    if path.first() != Some(&b'/') && path != b"*" {
        return Err(Status::BadArgument);
    }
    r.set_raw_path(path).map_err(|_| Status::BadArgument)
}

/// The name `key` stands for; `from_bytes` lowercases it.
fn header_name(key: &[u8]) -> Result<HeaderName, Status> {
    HeaderName::from_bytes(key).map_err(|_| Status::BadArgument)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailers_take_regular_fields_only_and_missing_ones_accept_writes() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let mut head = Head::Trailers(&mut trailers);
        head.set(b"X-Added", b"1", Edit::Add).unwrap();
        head.set(b"grpc-status", b"13", Edit::Replace).unwrap();
        assert_eq!(
            head.set(b":status", b"200", Edit::Add),
            Err(Status::BadArgument)
        );
        head.remove(b"x-added").unwrap();
        let entries = trailer_entries(&trailers);
        assert_eq!(entries, vec![(&b"grpc-status"[..], &b"13"[..])]);
        Head::Trailers(&mut trailers).clear();
        assert!(trailers.is_empty());
        // Adding trailers to a message without any cannot be done here: accepted, dropped.
        assert_eq!(Head::NoTrailers.set(b"x", b"1", Edit::Add), Ok(()));
        assert_eq!(Head::NoTrailers.remove(b"x"), Ok(()));
    }

    #[test]
    fn names_from_guests_are_lowercased_and_checked() {
        assert_eq!(header_name(b"X-Edge-Country").unwrap(), "x-edge-country");
        assert_eq!(
            header_name(b"Content-Type").unwrap(),
            http::header::CONTENT_TYPE
        );
        assert!(header_name(b"bad name").is_err());
        assert!(header_name(b"").is_err());
    }

    #[test]
    fn request_maps_carry_pseudo_headers_and_hide_host() {
        let mut req = RequestHeader::build("POST", b"/a?b=1", None).unwrap();
        req.insert_header("host", "example.com").unwrap();
        req.insert_header("x-one", "1").unwrap();
        req.append_header("x-one", "2").unwrap();
        let entries = request_entries(&req, "https");
        let keys: Vec<&[u8]> = entries.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys,
            vec![
                &b":method"[..],
                b":path",
                b":authority",
                b":scheme",
                b"x-one",
                b"x-one"
            ]
        );
        assert_eq!(first_value(&entries, b":path"), Some(&b"/a?b=1"[..]));
        assert_eq!(first_value(&entries, b":scheme"), Some(&b"https"[..]));
        assert_eq!(first_value(&entries, b"Host"), Some(&b"example.com"[..]));
        assert_eq!(first_value(&entries, b"X-One"), Some(&b"1"[..]));
    }

    #[test]
    fn pseudo_header_writes_change_the_request_line() {
        // As Pingora's HTTP/2 server builds it: the authority in the URI, no Host header.
        let parts = http::Request::get("http://a.example/x")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let mut req = RequestHeader::from(parts);
        Head::Request(&mut req, false)
            .set(b":path", b"/rewritten?q=1", Edit::Replace)
            .unwrap();
        assert_eq!(
            req.headers["host"], "a.example",
            "the HTTP/2 authority is kept as Host"
        );
        let mut head = Head::Request(&mut req, false);
        assert_eq!(
            head.set(b":path", b"no-slash", Edit::Replace),
            Err(Status::BadArgument)
        );
        head.set(b":method", b"PUT", Edit::Replace).unwrap();
        head.set(b":authority", b"b.example", Edit::Replace)
            .unwrap();
        assert_eq!(
            head.set(b":scheme", b"https", Edit::Replace),
            Err(Status::BadArgument)
        );
        assert_eq!(
            head.set(b"bad name", b"v", Edit::Add),
            Err(Status::BadArgument)
        );
        assert_eq!(
            head.set(b"x", b"bad\nvalue", Edit::Add),
            Err(Status::BadArgument)
        );
        assert_eq!(req.method, Method::PUT);
        assert_eq!(req.raw_path(), b"/rewritten?q=1");
        assert_eq!(req.headers["host"], "b.example");
    }

    #[test]
    fn a_late_request_write_keeps_the_request_line_and_changes_the_rest() {
        let parts = http::Request::get("/x").body(()).unwrap().into_parts().0;
        let mut req = RequestHeader::from(parts);
        let mut late = Head::Request(&mut req, true);
        for (name, value) in [
            (&b":path"[..], &b"/y"[..]),
            (b":method", b"PUT"),
            (b"host", b"b"),
        ] {
            assert_eq!(late.set(name, value, Edit::Replace), Ok(()));
        }
        late.set(b"x-late", b"1", Edit::Add).unwrap();
        assert_eq!(req.method, Method::GET);
        assert_eq!(req.raw_path(), b"/x");
        assert!(req.headers.get("host").is_none());
        assert_eq!(req.headers["x-late"], "1");
    }
}
