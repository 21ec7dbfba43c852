//! Contexts and time: `proxy_set_effective_context`, `proxy_done`, ticks, the clock, and the
//! two Emscripten helpers cpp-host defines for every module.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Linker};

use super::memory;
use super::status::{status, HostResult, Status};
use crate::wasm::state::{HostState, RootEnding};

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_set_effective_context",
        proxy_set_effective_context,
    )?;
    linker.func_wrap("env", "proxy_done", proxy_done)?;
    linker.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        proxy_set_tick_period_milliseconds,
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        proxy_get_current_time_nanoseconds,
    )?;
    linker.func_wrap(
        "env",
        "pthread_equal",
        |_: Caller<'_, HostState>, a: i32, b: i32| -> i32 { i32::from(a == b) },
    )?;
    linker.func_wrap(
        "env",
        "emscripten_notify_memory_growth",
        |_: Caller<'_, HostState>, _: i32| {},
    )?;
    Ok(())
}

/// Makes later hostcalls of this callback act on another live context of this instance (how
/// a root context resumes a paused request from `on_tick`).
fn proxy_set_effective_context(mut caller: Caller<'_, HostState>, context_id: u32) -> HostResult {
    let state = caller.data_mut();
    if !state.live_contexts.contains(&context_id) {
        return Ok(Status::BadArgument as i32);
    }
    state.call.effective_context = context_id;
    Ok(Status::Ok as i32)
}

fn proxy_set_tick_period_milliseconds(
    mut caller: Caller<'_, HostState>,
    period_ms: u32,
) -> HostResult {
    caller.data_mut().tick_period =
        (period_ms > 0).then(|| Duration::from_millis(period_ms.into()));
    Ok(Status::Ok as i32)
}

fn proxy_get_current_time_nanoseconds(
    mut caller: Caller<'_, HostState>,
    ret_time: u32,
) -> HostResult {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let nanos = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
    Ok(status(memory::write_u64(&mut caller, ret_time, nanos)))
}

/// The root context says it is done after its `on_done` answered false (cpp-host's rule);
/// NOT_FOUND when it was not waited on.
fn proxy_done(mut caller: Caller<'_, HostState>) -> HostResult {
    let state = caller.data_mut();
    if state.root_ending != RootEnding::Pending {
        return Ok(Status::NotFound as i32);
    }
    state.root_ending = RootEnding::Done;
    Ok(Status::Ok as i32)
}
