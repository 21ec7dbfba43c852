//! Buffers: `proxy_get_buffer_bytes`, `proxy_set_buffer_bytes`, `proxy_get_buffer_status`.
//!
//! The request body exists during `on_http_request_body`, the response body during
//! `on_http_response_body` (both cumulative while the filter buffers), a callout's answer
//! during its `on_http_call_response`; the VM and plugin configurations are readable at any
//! time. Other buffers answer NOT_FOUND.

use wasmtime::{Caller, Linker};

use super::memory;
use super::status::{status, HostResult, Status};
use crate::wasm::state::{HostState, Phase};

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_get_buffer_bytes", get_bytes)?;
    linker.func_wrap("env", "proxy_set_buffer_bytes", set_bytes)?;
    linker.func_wrap("env", "proxy_get_buffer_status", get_status)?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Buffer {
    RequestBody,
    ResponseBody,
    VmConfiguration,
    PluginConfiguration,
    /// The body of the callout whose answer is being delivered.
    CallResponseBody,
    /// Buffer types of the ABI that never exist in this host's HTTP path (L4 data, gRPC,
    /// foreign-function call data).
    Absent,
}

fn buffer(buffer_type: u32) -> Option<Buffer> {
    match buffer_type {
        0 => Some(Buffer::RequestBody),
        1 => Some(Buffer::ResponseBody),
        6 => Some(Buffer::VmConfiguration),
        7 => Some(Buffer::PluginConfiguration),
        4 => Some(Buffer::CallResponseBody),
        2 | 3 | 5 | 8 => Some(Buffer::Absent),
        _ => None,
    }
}

/// The body buffer of the callback in progress, if `buffer` is it.
fn body_phase(state: &HostState, buffer: Buffer) -> bool {
    state.call.on_own_stream()
        && matches!(
            (buffer, state.call.phase),
            (Buffer::RequestBody, Phase::RequestBody) | (Buffer::ResponseBody, Phase::ResponseBody)
        )
}

fn contents(state: &HostState, buffer: Buffer) -> Option<&[u8]> {
    match buffer {
        Buffer::VmConfiguration => Some(&state.plugin.vm_config),
        Buffer::PluginConfiguration => Some(&state.plugin.config),
        Buffer::CallResponseBody => state.call.callout.as_ref().map(|a| a.body.as_slice()),
        Buffer::RequestBody | Buffer::ResponseBody if body_phase(state, buffer) => {
            state.call.http.as_ref().map(|h| &h.body[..])
        }
        _ => None,
    }
}

fn get_bytes(
    mut caller: Caller<'_, HostState>,
    buffer_type: u32,
    start: u32,
    max_size: u32,
    ret_ptr: u32,
    ret_size: u32,
) -> HostResult {
    let Some(buffer) = buffer(buffer_type) else {
        return Ok(Status::BadArgument as i32);
    };
    let Some(all) = contents(caller.data(), buffer) else {
        return Ok(Status::NotFound as i32);
    };
    // Clamped, in 64-bit: SDKs ask for `u32::MAX` bytes to mean "everything".
    let start = (start as usize).min(all.len());
    let end = (start as u64 + u64::from(max_size)).min(all.len() as u64) as usize;
    let bytes = all[start..end].to_vec();
    memory::return_bytes(&mut caller, &bytes, ret_ptr, ret_size)
}

/// Replaces `size` bytes at `start` with the guest's data (clamped): `(0, len)` replaces all,
/// `(0, 0)` prepends, `start >= len` appends, as the spec describes.
fn set_bytes(
    mut caller: Caller<'_, HostState>,
    buffer_type: u32,
    start: u32,
    size: u32,
    data_ptr: u32,
    data_len: u32,
) -> HostResult {
    let result = memory::split(&mut caller).and_then(|(mem, state)| {
        let buffer = buffer(buffer_type).ok_or(Status::BadArgument)?;
        if !body_phase(state, buffer) {
            return Err(match buffer {
                Buffer::Absent => Status::NotFound,
                _ => Status::BadArgument,
            });
        }
        let data = memory::slice(mem, data_ptr, data_len)?;
        let body = &mut state.call.http.as_mut().ok_or(Status::BadArgument)?.body;
        let start = (start as usize).min(body.len());
        let end = (start as u64 + u64::from(size)).min(body.len() as u64) as usize;
        let tail = body.split_off(end);
        body.truncate(start);
        body.extend_from_slice(data);
        body.extend_from_slice(&tail);
        Ok(())
    });
    Ok(status(result))
}

fn get_status(
    mut caller: Caller<'_, HostState>,
    buffer_type: u32,
    ret_size: u32,
    ret_flags: u32,
) -> HostResult {
    let Some(buffer) = buffer(buffer_type) else {
        return Ok(Status::BadArgument as i32);
    };
    let Some(size) = contents(caller.data(), buffer).map(<[u8]>::len) else {
        return Ok(Status::NotFound as i32);
    };
    let result = memory::write_u32(&mut caller, ret_size, size as u32)
        .and_then(|()| memory::write_u32(&mut caller, ret_flags, 0));
    Ok(status(result))
}
