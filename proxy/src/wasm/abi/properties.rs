//! Properties: `proxy_get_property` and `proxy_set_property`, with Envoy's attribute names and
//! encodings (strings raw, integers 8-byte little-endian, booleans 1 byte, maps in the pairs
//! format, times as nanoseconds). Paths are segments joined by NUL; a trailing NUL is allowed.
//!
//! `proxy_set_property` stores any path outside the built-in namespaces for the rest of the
//! request, visible to every filter of the chain; built-in paths are read-only.

use std::collections::BTreeMap;
use std::time::UNIX_EPOCH;

use pingora::http::{RequestHeader, ResponseHeader};
use wasmtime::{Caller, Linker};

use super::memory;
use super::pairs;
use super::status::{status, HostResult, Status};
use crate::config::Metadata;
use crate::wasm::state::{HostState, HttpData};

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_get_property", get_property)?;
    linker.func_wrap("env", "proxy_set_property", set_property)?;
    Ok(())
}

/// First segments that belong to edgeward: a filter's `set_property` under them (except
/// `route.upstream`) is accepted and changes nothing.
pub(crate) const BUILT_IN: &[&[u8]] = &[
    b"geo",
    b"route",
    b"request",
    b"response",
    b"source",
    b"destination",
    b"connection",
    b"upstream",
    b"plugin_name",
    b"plugin_root_id",
    b"plugin_vm_id",
    b"plugin_callouts",
    b"route_name",
    b"cluster_name",
    b"xds",
    b"node",
    b"listener_direction",
    b"route_metadata",
    b"cluster_metadata",
];

/// Splits a property path into segments, ignoring one trailing NUL (the C++ SDK sends it).
fn segments(path: &[u8]) -> Vec<&[u8]> {
    let path = path.strip_suffix(&[0]).unwrap_or(path);
    path.split(|b| *b == 0).collect()
}

fn get_property(
    mut caller: Caller<'_, HostState>,
    path_ptr: u32,
    path_len: u32,
    ret_ptr: u32,
    ret_size: u32,
) -> HostResult {
    let path = match memory::read(&caller, path_ptr, path_len) {
        Ok(path) => path,
        Err(status) => return Ok(status as i32),
    };
    match lookup(caller.data(), &segments(&path)) {
        Some(value) => memory::return_bytes(&mut caller, &value, ret_ptr, ret_size),
        None => Ok(Status::NotFound as i32),
    }
}

fn set_property(
    mut caller: Caller<'_, HostState>,
    path_ptr: u32,
    path_len: u32,
    value_ptr: u32,
    value_len: u32,
) -> HostResult {
    let result = memory::split(&mut caller).and_then(|(mem, state)| {
        let path = segments(memory::slice(mem, path_ptr, path_len)?);
        let value = memory::slice(mem, value_ptr, value_len)?;
        let own = state.call.on_own_stream();
        // Without a request there is nowhere to keep it (Envoy answers the same).
        let http = state
            .call
            .http
            .as_mut()
            .filter(|_| own)
            .ok_or(Status::NotFound)?;
        if path == [&b"route"[..], b"upstream"] {
            let Some(id) = state
                .services
                .upstream_names
                .iter()
                .position(|n| n.as_bytes() == value)
            else {
                log::warn!(
                    "filter `{}` chose upstream `{}`, which is not configured",
                    state.plugin.name,
                    String::from_utf8_lossy(value)
                );
                return Err(Status::BadArgument);
            };
            http.stream.upstream_override = Some(crate::config::UpstreamId(id));
            http.stream.upstream = std::sync::Arc::from(String::from_utf8_lossy(value).as_ref());
            return Ok(());
        }
        if path.first().is_some_and(|first| BUILT_IN.contains(first)) {
            // Envoy answers OK and keeps the value where reads of the built-in path never
            // look; SDKs trap on any other answer.
            log::debug!(
                "filter `{}` set built-in property `{}`, which stays as the host has it",
                state.plugin.name,
                String::from_utf8_lossy(&path.join(&b'.'))
            );
            return Ok(());
        }
        let key = path.join(&0u8);
        let readonly = state
            .declared_properties
            .get(&key)
            .is_some_and(|declared| declared.readonly);
        if readonly && http.stream.custom.contains_key(&key) {
            // As in Envoy: a read-only property is set once.
            return Err(Status::BadArgument);
        }
        // The properties a request's filters set live in the host, outside any guest's memory
        // limit: their total is bounded instead.
        let replaced = http
            .stream
            .custom
            .get(&key)
            .map_or(0, |old| key.len() + old.len());
        let total = http.stream.custom_bytes.saturating_sub(replaced) + key.len() + value.len();
        if total > MAX_SET_PROPERTY_BYTES {
            log::warn!(
                "filter `{}` set property `{}` past the {MAX_SET_PROPERTY_BYTES} bytes a request's properties may hold: refused",
                state.plugin.name,
                String::from_utf8_lossy(&path.join(&b'.'))
            );
            return Err(Status::BadArgument);
        }
        http.stream.custom_bytes = total;
        http.stream.custom.insert(key, value.to_vec());
        Ok(())
    });
    Ok(status(result))
}

/// The most bytes (paths and values) the properties filters set on one request may hold.
const MAX_SET_PROPERTY_BYTES: usize = 1 << 20;

/// The filter's `callouts`, joined by `,`.
fn callout_names(plugin: &crate::wasm::info::PluginInfo) -> String {
    let names: Vec<&str> = plugin
        .callouts
        .iter()
        .map(|(name, _)| name.as_str())
        .collect();
    names.join(",")
}

fn int(value: i64) -> Vec<u8> {
    value.to_le_bytes().to_vec()
}

fn lookup(state: &HostState, path: &[&[u8]]) -> Option<Vec<u8>> {
    let plugin = &state.plugin;
    let node = &state.services.node;
    match path {
        [b"plugin_name"] => return Some(plugin.name.as_bytes().to_vec()),
        [b"plugin_root_id"] => return Some(plugin.root_id.as_bytes().to_vec()),
        [b"plugin_vm_id"] => return Some(plugin.vm_id.as_bytes().to_vec()),
        // edgeward's own: lets a filter check at `on_configure` that the upstreams its
        // configuration names are ones it may call (names never contain `,`).
        [b"plugin_callouts"] => return Some(callout_names(plugin).into_bytes()),
        [b"node", b"id"] => return Some(node.id.as_bytes().to_vec()),
        [b"node", b"cluster"] => return Some(node.cluster.as_bytes().to_vec()),
        [b"node", b"metadata"] => return Some(string_map(&node.metadata)),
        [b"node", b"metadata", key] => {
            return Some(node.metadata.get(utf8(key)?)?.as_bytes().to_vec())
        }
        _ => {}
    }
    let http = state
        .call
        .http
        .as_ref()
        .filter(|_| state.call.on_own_stream())?;
    if let Some(value) = http.stream.custom.get(&path.join(&0u8)) {
        return Some(value.clone());
    }
    let info = &http.stream;
    match path {
        [b"request", rest @ ..] => request(http, rest),
        [b"response", rest @ ..] => response(http, http.response.as_ref()?, rest),
        [b"source", b"address"] => Some(info.client?.to_string().into_bytes()),
        [b"source", b"port"] => Some(int(info.client?.port().into())),
        [b"source", b"effective_address"] => Some(
            info.effective_address
                .or(info.client.map(|c| c.ip()))?
                .to_string()
                .into_bytes(),
        ),
        [b"geo", field] => geo_field(info.geo_info()?, field).map(String::into_bytes),
        [b"route", b"upstream"] => Some(info.upstream.as_bytes().to_vec()),
        [b"destination", b"address"] => Some(info.server?.to_string().into_bytes()),
        [b"destination", b"port"] => Some(int(info.server?.port().into())),
        [b"upstream", b"address"] => Some(info.upstream_address?.to_string().into_bytes()),
        [b"upstream", b"port"] => Some(int(info.upstream_address?.port().into())),
        [b"upstream", b"request_attempt_count"] if info.upstream_attempts > 0 => {
            Some(int(info.upstream_attempts.into()))
        }
        [b"connection", b"id"] => Some(connection_id(info).to_le_bytes().to_vec()),
        [b"connection", b"mtls"] => Some(vec![0]),
        [b"connection", b"tls_version"] => Some(info.tls_version.as_deref()?.as_bytes().to_vec()),
        [b"connection", b"requested_server_name"] => {
            Some(info.requested_server_name.as_deref()?.as_bytes().to_vec())
        }
        [b"upstream", b"local_address"] => {
            Some(info.upstream_local_address?.to_string().into_bytes())
        }
        // edgeward's listeners take traffic from clients to the origins it fronts: Envoy's
        // INBOUND.
        [b"listener_direction"] => Some(int(1)),
        [b"route_metadata", rest @ ..] | [b"xds", b"route_metadata", rest @ ..] => {
            metadata(&info.route_metadata, rest)
        }
        [b"cluster_metadata", rest @ ..] | [b"xds", b"cluster_metadata", rest @ ..] => {
            let upstream = info.upstream_override.or(info.route_upstream)?;
            metadata(state.services.upstream_metadata.get(upstream.0)?, rest)
        }
        [b"route_name"] | [b"xds", b"route_name"] => Some(info.route.as_bytes().to_vec()),
        [b"cluster_name"] | [b"xds", b"cluster_name"] => Some(info.upstream.as_bytes().to_vec()),
        _ => None,
    }
}

/// `filter_metadata.<namespace>` (a map) or `filter_metadata.<namespace>.<key>` of a route's
/// or upstream's metadata.
fn metadata(metadata: &Metadata, path: &[&[u8]]) -> Option<Vec<u8>> {
    match path {
        [b"filter_metadata", namespace] => Some(string_map(metadata.get(utf8(namespace)?)?)),
        [b"filter_metadata", namespace, key] => Some(
            metadata
                .get(utf8(namespace)?)?
                .get(utf8(key)?)?
                .as_bytes()
                .to_vec(),
        ),
        _ => None,
    }
}

/// A map of strings in the header-pairs encoding, as Envoy returns map properties.
fn string_map(map: &BTreeMap<String, String>) -> Vec<u8> {
    pairs::encode(map.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())))
}

fn utf8(segment: &[u8]) -> Option<&str> {
    std::str::from_utf8(segment).ok()
}

fn geo_field(geo: &crate::geo::GeoInfo, field: &[u8]) -> Option<String> {
    match field {
        b"country_code" => geo.country_code.clone(),
        b"continent_code" => geo.continent_code.clone(),
        b"region_code" => geo.region_code.clone(),
        b"city" => geo.city.clone(),
        b"asn" => geo.asn.clone(),
        b"as_org" => geo.as_org.clone(),
        b"latitude" => geo.latitude.clone(),
        b"longitude" => geo.longitude.clone(),
        _ => None,
    }
}

fn request(http: &HttpData, path: &[&[u8]]) -> Option<Vec<u8>> {
    let req = &http.request;
    let info = &http.stream;
    let header = |name: &str| joined_header(&req.headers, name.as_bytes());
    Some(match path {
        [b"path"] => req.raw_path().to_vec(),
        [b"url_path"] => req.uri.path().as_bytes().to_vec(),
        [b"query"] => req.uri.query().unwrap_or("").as_bytes().to_vec(),
        [b"host"] => request_authority(req)?.to_vec(),
        [b"scheme"] => info.scheme.as_bytes().to_vec(),
        [b"method"] => req.method.as_str().as_bytes().to_vec(),
        [b"protocol"] => info.protocol.as_bytes().to_vec(),
        [b"id"] => info.request_id.as_bytes().to_vec(),
        [b"referer"] => header("referer")?,
        [b"useragent"] => header("user-agent")?,
        [b"headers"] => header_map(&req.headers),
        [b"headers", name] => joined_header(&req.headers, name)?,
        [b"time"] => int(nanos_since_epoch(info.started)),
        [b"duration"] => int(info
            .started_at
            .elapsed()
            .as_nanos()
            .try_into()
            .unwrap_or(i64::MAX)),
        [b"size"] => int(body_size(&req.headers, info.request_body_bytes)),
        [b"total_size"] => {
            int(body_size(&req.headers, info.request_body_bytes) + headers_size(&req.headers))
        }
        [b"headers_bytes"] => int(headers_size(&req.headers)),
        _ => return None,
    })
}

fn response(http: &HttpData, resp: &ResponseHeader, path: &[&[u8]]) -> Option<Vec<u8>> {
    let body_bytes = http.stream.response_body_bytes;
    Some(match path {
        [b"code"] => int(resp.status.as_u16().into()),
        [b"flags"] => int(http.stream.response_flags.try_into().unwrap_or(i64::MAX)),
        // As Envoy says of a response from the upstream (or the cache).
        [b"code_details"] => http
            .stream
            .code_details
            .as_deref()
            .unwrap_or("via_upstream")
            .as_bytes()
            .to_vec(),
        // As Envoy reads it: from the trailers once they came, else the head, when a number.
        [b"grpc_status"] => int(http
            .response_trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| resp.headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<i64>().ok())?),
        [b"headers"] => header_map(&resp.headers),
        [b"headers", name] => joined_header(&resp.headers, name)?,
        [b"trailers"] => header_map(http.response_trailers.as_ref()?),
        [b"trailers", name] => joined_header(http.response_trailers.as_ref()?, name)?,
        [b"size"] => int(body_bytes.try_into().unwrap_or(i64::MAX)),
        [b"total_size"] => {
            int(i64::try_from(body_bytes).unwrap_or(i64::MAX) + headers_size(&resp.headers))
        }
        [b"headers_bytes"] => int(headers_size(&resp.headers)),
        _ => return None,
    })
}

fn request_authority(req: &RequestHeader) -> Option<&[u8]> {
    match req.uri.authority() {
        Some(a) => Some(a.as_str().as_bytes()),
        None => req.headers.get(http::header::HOST).map(|v| v.as_bytes()),
    }
}

/// All values of a header joined with `,`, as Envoy presents repeated headers.
fn joined_header(headers: &http::HeaderMap, name: &[u8]) -> Option<Vec<u8>> {
    let name = http::HeaderName::from_bytes(&name.to_ascii_lowercase()).ok()?;
    let mut values = headers.get_all(&name).iter();
    let mut joined = values.next()?.as_bytes().to_vec();
    for value in values {
        joined.push(b',');
        joined.extend_from_slice(value.as_bytes());
    }
    Some(joined)
}

fn header_map(headers: &http::HeaderMap) -> Vec<u8> {
    let joined: Vec<(Vec<u8>, Vec<u8>)> = headers
        .keys()
        .filter_map(|name| {
            Some((
                name.as_str().as_bytes().to_vec(),
                joined_header(headers, name.as_str().as_bytes())?,
            ))
        })
        .collect();
    pairs::encode(joined.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
}

fn headers_size(headers: &http::HeaderMap) -> i64 {
    headers
        .iter()
        .map(|(k, v)| (k.as_str().len() + v.len()) as i64)
        .sum()
}

/// Envoy's `request.size`: the Content-Length when given, else the bytes seen.
fn body_size(headers: &http::HeaderMap, seen: u64) -> i64 {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<i64>().ok())
        .unwrap_or_else(|| seen.try_into().unwrap_or(i64::MAX))
}

fn nanos_since_epoch(time: std::time::SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos().try_into().unwrap_or(i64::MAX))
}

/// Stable for the life of a client connection: a hash of its two addresses.
fn connection_id(info: &crate::wasm::info::StreamInfo) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (info.client, info.server).hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_on_nul_with_an_optional_trailing_nul() {
        assert_eq!(segments(b"request\0path"), vec![&b"request"[..], b"path"]);
        assert_eq!(segments(b"request\0path\0"), vec![&b"request"[..], b"path"]);
        assert_eq!(segments(b"plugin_name"), vec![&b"plugin_name"[..]]);
    }

    #[test]
    fn callouts_are_listed_by_name() {
        let mut plugin = crate::wasm::info::PluginInfo::inspected();
        assert_eq!(callout_names(&plugin), "");
        plugin.callouts = vec![
            ("users".to_string(), crate::config::UpstreamId(0)),
            ("orders".to_string(), crate::config::UpstreamId(3)),
        ];
        assert_eq!(callout_names(&plugin), "users,orders");
    }

    #[test]
    fn repeated_headers_join_with_commas() {
        let mut headers = http::HeaderMap::new();
        headers.append("x-a", "1".parse().unwrap());
        headers.append("x-a", "2".parse().unwrap());
        assert_eq!(joined_header(&headers, b"X-A"), Some(b"1,2".to_vec()));
        assert_eq!(joined_header(&headers, b"x-b"), None);
        let map = header_map(&headers);
        assert_eq!(pairs::decode(&map), Some(vec![(&b"x-a"[..], &b"1,2"[..])]));
    }
}
