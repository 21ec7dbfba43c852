//! `proxy_get_shared_data` and `proxy_set_shared_data`: key-value data shared by every
//! instance with the same VM id, across workers, with compare-and-swap (see `wasm::shared`).

use wasmtime::{Caller, Linker};

use super::memory;
use super::status::{status, HostResult, Status};
use crate::wasm::state::HostState;

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_get_shared_data", get)?;
    linker.func_wrap("env", "proxy_set_shared_data", set)?;
    Ok(())
}

fn get(
    mut caller: Caller<'_, HostState>,
    key_ptr: u32,
    key_len: u32,
    ret_value_ptr: u32,
    ret_value_len: u32,
    ret_cas: u32,
) -> HostResult {
    let key = match memory::read(&caller, key_ptr, key_len) {
        Ok(key) => key,
        Err(status) => return Ok(status as i32),
    };
    let state = caller.data();
    let Some((value, cas)) = state.services.shared_data.get(&state.plugin.vm_id, &key) else {
        return Ok(Status::NotFound as i32);
    };
    if let Err(status) = memory::write_u32(&mut caller, ret_cas, cas) {
        return Ok(status as i32);
    }
    memory::return_bytes(&mut caller, &value, ret_value_ptr, ret_value_len)
}

fn set(
    mut caller: Caller<'_, HostState>,
    key_ptr: u32,
    key_len: u32,
    value_ptr: u32,
    value_len: u32,
    cas: u32,
) -> HostResult {
    let result = memory::split(&mut caller).and_then(|(mem, state)| {
        let key = memory::slice(mem, key_ptr, key_len)?;
        let value = memory::slice(mem, value_ptr, value_len)?;
        let outcome = state.services.shared_data.set(&state.plugin.vm_id, key, value, cas);
        if outcome == Err(Status::BadArgument) {
            log::warn!(
                "filter `{}`: shared data value or store too large (limits: {} bytes per value, {} per VM id)",
                state.plugin.name,
                crate::wasm::shared::MAX_VALUE_BYTES,
                crate::wasm::shared::MAX_STORE_BYTES
            );
        }
        outcome
    });
    Ok(status(result))
}
