//! `proxy_log` and `proxy_get_log_level`: guest log lines go to edgeward's log, tagged with
//! the filter's name.

use wasmtime::{Caller, Linker};

use super::memory;
use super::status::{status, HostResult, Status};
use crate::wasm::state::{HostState, Phase};

/// Where filter log lines go; `EDGEWARD_LOG=edgeward::filter=debug` tunes them.
pub(crate) const TARGET: &str = "edgeward::filter";

/// The proxy-wasm level of a filter's last words (the Rust SDK logs its panics there).
const CRITICAL: u32 = 5;
/// The most critical lines one call keeps for its crash report.
const MAX_HELD_CRITICAL: usize = 8;

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_log", proxy_log)?;
    linker.func_wrap("env", "proxy_get_log_level", proxy_get_log_level)?;
    Ok(())
}

fn level(proxy_level: u32) -> Option<log::Level> {
    Some(match proxy_level {
        0 => log::Level::Trace,
        1 => log::Level::Debug,
        2 => log::Level::Info,
        3 => log::Level::Warn,
        4 | 5 => log::Level::Error,
        _ => return None,
    })
}

/// Writes one guest message at `level`, tagged with the filter.
pub(crate) fn emit(plugin: &str, level: log::Level, message: &[u8]) {
    if log::log_enabled!(target: TARGET, level) {
        let text = String::from_utf8_lossy(message);
        log::log!(target: TARGET, level, "[filter {plugin}] {}", text.trim_end_matches('\n'));
    }
}

fn proxy_log(
    mut caller: Caller<'_, HostState>,
    proxy_level: u32,
    ptr: u32,
    len: u32,
) -> HostResult {
    let Some(level) = level(proxy_level) else {
        return Ok(Status::BadArgument as i32);
    };
    let result = memory::split(&mut caller).and_then(|(mem, state)| {
        let message = memory::slice(mem, ptr, len)?;
        if proxy_level == CRITICAL {
            // Held to the end of the call (see `HostState::held_critical`), a bounded few.
            if state.held_critical.len() < MAX_HELD_CRITICAL {
                let line = String::from_utf8_lossy(message);
                state
                    .held_critical
                    .push(line.trim_end_matches('\n').to_string());
            }
        } else {
            emit(&state.plugin.name, level, message);
            remember_at_start(state, level, message);
        }
        Ok(())
    });
    Ok(status(result))
}

/// Keeps the warnings and errors of `on_vm_start` and `on_configure` (a few): they explain a
/// rejected configuration.
fn remember_at_start(state: &mut HostState, level: log::Level, message: &[u8]) {
    let configuring = matches!(state.call.phase, Phase::VmStart | Phase::Configure);
    if configuring && level <= log::Level::Warn && state.said_at_start.len() < MAX_HELD_CRITICAL {
        let line = String::from_utf8_lossy(message);
        state
            .said_at_start
            .push(line.trim_end_matches('\n').to_string());
    }
}

fn proxy_get_log_level(mut caller: Caller<'_, HostState>, ret_level: u32) -> HostResult {
    let enabled = [
        (log::Level::Trace, 0),
        (log::Level::Debug, 1),
        (log::Level::Info, 2),
        (log::Level::Warn, 3),
    ]
    .into_iter()
    .find(|(level, _)| log::log_enabled!(target: TARGET, *level))
    .map_or(4, |(_, proxy)| proxy);
    Ok(status(memory::write_u32(&mut caller, ret_level, enabled)))
}
