//! `proxy_http_call`: a request to a configured upstream, answered later through
//! `proxy_on_http_call_response` (see `wasm::dispatch`).
//!
//! The upstream must be one of the filter's `callouts`; `:method`, `:path` and `:authority`
//! are required. Either mistake is BAD_ARGUMENT at once, with a log line. Every failure after
//! that (refused, timeout, no healthy endpoint) arrives as an answer with no headers and an
//! empty body, and is logged with its reason.

use std::time::Duration;

use http::Method;
use wasmtime::{Caller, Linker};

use super::memory;
use super::pairs;
use super::status::{HostResult, Status};
use crate::metrics;
use crate::wasm::services::{Callout, CalloutRequest, Job};
use crate::wasm::state::HostState;

/// A callout without a timeout (0) gets this one; no callout waits longer than the maximum.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_TIMEOUT: Duration = Duration::from_secs(300);

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_http_call", http_call)?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn http_call(
    mut caller: Caller<'_, HostState>,
    upstream_ptr: u32,
    upstream_len: u32,
    headers_ptr: u32,
    headers_len: u32,
    body_ptr: u32,
    body_len: u32,
    _trailers_ptr: u32,
    _trailers_len: u32,
    timeout_ms: u32,
    ret_token: u32,
) -> HostResult {
    let parsed = memory::split(&mut caller).and_then(|(mem, state)| {
        let upstream =
            String::from_utf8_lossy(memory::slice(mem, upstream_ptr, upstream_len)?).into_owned();
        let headers = pairs::decode(memory::slice(mem, headers_ptr, headers_len)?)
            .ok_or(Status::BadArgument)?;
        let body = memory::slice(mem, body_ptr, body_len)?.to_vec();
        let plugin = state.plugin.clone();
        let Some(upstream_id) = plugin
            .callouts
            .iter()
            .find(|(name, _)| *name == upstream)
            .map(|(_, id)| *id)
        else {
            log::warn!(
                "filter `{}` may not call upstream `{upstream}` (its `callouts` allow: {})",
                plugin.name,
                plugin
                    .callouts
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            metrics::global()
                .callout_failures
                .with_label_values(&[plugin.name.as_str(), upstream.as_str(), "forbidden"])
                .inc();
            return Err(Status::BadArgument);
        };
        let request = callout_request(&headers, body).map_err(|missing| {
            log::warn!(
                "filter `{}`: a callout to `{upstream}` needs the `{missing}` header",
                plugin.name
            );
            Status::BadArgument
        })?;
        state.last_token = state.last_token.wrapping_add(1).max(1);
        let token = state.last_token;
        let timeout = match timeout_ms {
            0 => DEFAULT_TIMEOUT,
            ms => Duration::from_millis(ms.into()).min(MAX_TIMEOUT),
        };
        state.lasting_effects = true;
        if state.call.effective_context != state.root_id {
            *state
                .callouts_in_flight
                .entry(state.call.effective_context)
                .or_default() += 1;
        }
        let job = Job::Callout(Callout {
            cell: state.cell.clone(),
            plugin,
            context_id: state.call.effective_context,
            token,
            upstream: upstream_id,
            upstream_name: upstream,
            request,
            timeout,
        });
        Ok((job, token))
    });
    let (job, token) = match parsed {
        Ok(parsed) => parsed,
        Err(status) => return Ok(status as i32),
    };
    if let Err(status) = memory::write_u32(&mut caller, ret_token, token) {
        return Ok(status as i32);
    }
    caller.data_mut().submit(job);
    Ok(Status::Ok as i32)
}

/// The request line from the pseudo-headers; the name of a missing one otherwise.
fn callout_request(
    headers: &[(&[u8], &[u8])],
    body: Vec<u8>,
) -> Result<CalloutRequest, &'static str> {
    let pseudo = |name: &[u8]| {
        headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_vec())
    };
    let method = pseudo(b":method")
        .and_then(|m| Method::from_bytes(&m).ok())
        .ok_or(":method")?;
    let path = pseudo(b":path")
        .filter(|p| p.first() == Some(&b'/'))
        .ok_or(":path")?;
    let authority = pseudo(b":authority")
        .filter(|a| !a.is_empty())
        .ok_or(":authority")?;
    let headers = headers
        .iter()
        .filter(|(k, _)| k.first() != Some(&b':') && !k.eq_ignore_ascii_case(b"host"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_vec()))
        .collect();
    Ok(CalloutRequest {
        method,
        path,
        authority,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callouts_need_method_path_and_authority() {
        let ok: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"GET"),
            (b":path", b"/x"),
            (b":authority", b"auth"),
            (b"X-A", b"1"),
        ];
        let request = callout_request(&ok, Vec::new()).unwrap();
        assert_eq!(
            (request.method, request.path, request.authority),
            (Method::GET, b"/x".to_vec(), b"auth".to_vec())
        );
        assert_eq!(request.headers, vec![(b"x-a".to_vec(), b"1".to_vec())]);
        for missing in [":method", ":path", ":authority"] {
            let without: Vec<(&[u8], &[u8])> = ok
                .iter()
                .copied()
                .filter(|(k, _)| *k != missing.as_bytes())
                .collect();
            assert_eq!(callout_request(&without, Vec::new()).err(), Some(missing));
        }
    }
}
