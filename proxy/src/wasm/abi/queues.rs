//! Shared queues: `proxy_register_shared_queue`, `proxy_resolve_shared_queue`,
//! `proxy_enqueue_shared_queue`, `proxy_dequeue_shared_queue`. The registering root context
//! hears of new items through `proxy_on_queue_ready`, delivered after the enqueuing callback.

use wasmtime::{Caller, Linker};

use super::memory;
use super::status::{status, HostResult, Status};
use crate::wasm::services::Job;
use crate::wasm::shared::QueueOwner;
use crate::wasm::state::HostState;

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_register_shared_queue", register)?;
    linker.func_wrap("env", "proxy_resolve_shared_queue", resolve)?;
    linker.func_wrap("env", "proxy_enqueue_shared_queue", enqueue)?;
    linker.func_wrap("env", "proxy_dequeue_shared_queue", dequeue)?;
    Ok(())
}

fn register(
    mut caller: Caller<'_, HostState>,
    name_ptr: u32,
    name_len: u32,
    ret_id: u32,
) -> HostResult {
    let name = match memory::read(&caller, name_ptr, name_len) {
        Ok(name) => name,
        Err(status) => return Ok(status as i32),
    };
    let state = caller.data_mut();
    state.lasting_effects = true;
    let owner = QueueOwner {
        cell: state.cell.clone(),
        root_id: state.root_id,
    };
    let id = state
        .services
        .queues
        .register(&state.plugin.vm_id, &name, owner);
    Ok(status(memory::write_u32(&mut caller, ret_id, id)))
}

fn resolve(
    mut caller: Caller<'_, HostState>,
    vm_id_ptr: u32,
    vm_id_len: u32,
    name_ptr: u32,
    name_len: u32,
    ret_id: u32,
) -> HostResult {
    let (vm_id, name) = match (
        memory::read(&caller, vm_id_ptr, vm_id_len),
        memory::read(&caller, name_ptr, name_len),
    ) {
        (Ok(vm_id), Ok(name)) => (vm_id, name),
        (Err(status), _) | (_, Err(status)) => return Ok(status as i32),
    };
    let state = caller.data();
    // An empty VM id means the caller's own.
    let vm_id = if vm_id.is_empty() {
        state.plugin.vm_id.clone()
    } else {
        String::from_utf8_lossy(&vm_id).into_owned()
    };
    match state.services.queues.resolve(&vm_id, &name) {
        Some(id) => Ok(status(memory::write_u32(&mut caller, ret_id, id))),
        None => Ok(Status::NotFound as i32),
    }
}

fn enqueue(
    mut caller: Caller<'_, HostState>,
    id: u32,
    value_ptr: u32,
    value_len: u32,
) -> HostResult {
    let result = memory::split(&mut caller).and_then(|(mem, state)| {
        let value = memory::slice(mem, value_ptr, value_len)?;
        let owner = state
            .services
            .queues
            .enqueue(id, value)
            .inspect_err(|status| {
                if *status == Status::InternalFailure {
                    log::warn!("filter `{}`: shared queue {id} is full", state.plugin.name);
                }
            })?;
        state.services.submit(Job::QueueReady {
            owner,
            queue_id: id,
        });
        Ok(())
    });
    Ok(status(result))
}

fn dequeue(
    mut caller: Caller<'_, HostState>,
    id: u32,
    ret_value_ptr: u32,
    ret_value_len: u32,
) -> HostResult {
    let item = caller.data().services.queues.dequeue(id);
    match item {
        Ok(item) => memory::return_bytes(&mut caller, &item, ret_value_ptr, ret_value_len),
        Err(status) => Ok(status as i32),
    }
}
