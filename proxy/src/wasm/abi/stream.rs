//! Stream control: `proxy_continue_stream`, `proxy_close_stream`, `proxy_send_local_response`,
//! `proxy_get_status`.
//!
//! Nothing here calls back into the guest: a request of the callback's own stream is recorded
//! and acted on when the callback returns; one for another context (from `on_tick`, after
//! `proxy_set_effective_context`) wakes that paused request, which resumes once this
//! instance is free again.

use wasmtime::{Caller, Linker};

use super::memory;
use super::pairs;
use super::status::{status, HostResult, Status};
use crate::wasm::state::{HostState, LocalResponse, Resumption};

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_continue_stream",
        |mut caller: Caller<'_, HostState>, stream_type: u32| -> HostResult {
            Ok(status(resume(
                caller.data_mut(),
                stream_type,
                Intent::Continue,
            )))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_close_stream",
        |mut caller: Caller<'_, HostState>, stream_type: u32| -> HostResult {
            Ok(status(resume(
                caller.data_mut(),
                stream_type,
                Intent::Close,
            )))
        },
    )?;
    linker.func_wrap("env", "proxy_send_local_response", send_local_response)?;
    linker.func_wrap("env", "proxy_get_status", get_status)?;
    Ok(())
}

/// What a guest asked to happen to a stream.
enum Intent {
    Continue,
    Close,
    Respond(LocalResponse),
}

/// Applies `how` to the effective context: recorded for the callback's own stream, or sent to
/// the paused request it names.
fn resume(state: &mut HostState, stream_type: u32, how: Intent) -> Result<(), Status> {
    // 0: HTTP request, 1: HTTP response. The L4 streams do not exist in an HTTP proxy.
    if stream_type > 1 {
        return Err(Status::BadArgument);
    }
    let target = state.call.effective_context;
    if target == state.root_id {
        return Err(Status::BadArgument);
    }
    if state.call.on_own_stream() {
        match how {
            Intent::Continue => state.call.continue_requested = true,
            Intent::Close => state.call.close_requested = true,
            Intent::Respond(response) => state.call.local_response = Some(response),
        }
        return Ok(());
    }
    match state.waiters.get(&target) {
        // A request that is no longer waiting (it timed out) has nothing to resume.
        Some(waiter) => {
            let _ = waiter.send(match how {
                Intent::Continue => Resumption::Continue,
                Intent::Close => Resumption::Close,
                Intent::Respond(response) => Resumption::LocalResponse(response),
            });
            Ok(())
        }
        None if state.live_contexts.contains(&target) => Ok(()),
        None => Err(Status::BadArgument),
    }
}

#[allow(clippy::too_many_arguments)]
fn send_local_response(
    mut caller: Caller<'_, HostState>,
    status_code: u32,
    details_ptr: u32,
    details_len: u32,
    body_ptr: u32,
    body_len: u32,
    headers_ptr: u32,
    headers_len: u32,
    grpc_status: i32,
) -> HostResult {
    let result = memory::split(&mut caller).and_then(|(mem, state)| {
        let status = u16::try_from(status_code)
            .ok()
            .filter(|s| (100..=599).contains(s))
            .ok_or(Status::BadArgument)?;
        let details = memory::slice(mem, details_ptr, details_len)?;
        let body = memory::slice(mem, body_ptr, body_len)?;
        let headers = pairs::decode(memory::slice(mem, headers_ptr, headers_len)?)
            .ok_or(Status::BadArgument)?;
        let mut headers: Vec<(Vec<u8>, Vec<u8>)> = headers
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_vec()))
            .collect();
        // Values outside 0..=16 mean "not gRPC" (the Rust SDK passes -1). As in Envoy, a
        // status only makes a gRPC answer for a gRPC request (others get the plain response,
        // as the AssemblyScript SDK's examples pass a status whatever the request): a
        // trailers-only response, 200 with the status, and the body as its message.
        let grpc_request = state.call.http.as_ref().is_some_and(|http| {
            http.request
                .headers
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"))
        });
        let (status, body) = match grpc_request && (0..=16).contains(&grpc_status) {
            true => {
                headers.retain(|(name, _)| name != b"content-type");
                headers.push((b"content-type".to_vec(), b"application/grpc".to_vec()));
                headers.push((
                    b"grpc-status".to_vec(),
                    grpc_status.to_string().into_bytes(),
                ));
                if !body.is_empty() {
                    headers.push((b"grpc-message".to_vec(), grpc_message(body)));
                }
                (200, &[][..])
            }
            false => (status, body),
        };
        let response = LocalResponse {
            status,
            headers,
            body: body.to_vec(),
            details: String::from_utf8_lossy(details).into_owned(),
        };
        resume(state, 0, Intent::Respond(response))
    });
    Ok(status(result))
}

/// `message` as a `grpc-message` value: percent-encoded beyond printable ASCII (gRPC's rule).
fn grpc_message(message: &[u8]) -> Vec<u8> {
    let mut encoded = Vec::with_capacity(message.len());
    for &byte in message {
        match byte {
            b' '..=b'~' if byte != b'%' => encoded.push(byte),
            _ => encoded.extend_from_slice(format!("%{byte:02X}").as_bytes()),
        }
    }
    encoded
}

/// The status of the callout whose answer is being delivered: OK, or (as in Envoy) 11
/// BROKEN_CONNECTION with the reason when it failed. OK and empty outside a callout answer.
fn get_status(
    mut caller: Caller<'_, HostState>,
    ret_code: u32,
    ret_msg_ptr: u32,
    ret_msg_size: u32,
) -> HostResult {
    const BROKEN_CONNECTION: u32 = 11;
    let failure = caller
        .data()
        .call
        .callout
        .as_ref()
        .and_then(|a| a.failure.clone());
    let code = if failure.is_some() {
        BROKEN_CONNECTION
    } else {
        Status::Ok as u32
    };
    if let Err(status) = memory::write_u32(&mut caller, ret_code, code) {
        return Ok(status as i32);
    }
    memory::return_bytes(
        &mut caller,
        failure.unwrap_or_default().as_bytes(),
        ret_msg_ptr,
        ret_msg_size,
    )
}

#[cfg(test)]
mod tests {
    use super::grpc_message;

    #[test]
    fn a_grpc_message_is_percent_encoded_beyond_printable_ascii() {
        assert_eq!(grpc_message(b"no token: ok"), b"no token: ok");
        assert_eq!(grpc_message("50% é\n".as_bytes()), b"50%25 %C3%A9%0A");
    }
}
