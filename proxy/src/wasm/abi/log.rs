//! `proxy_log` and `proxy_get_log_level`: guest log lines go to edgeward's log, tagged with
//! the filter's name.

use wasmtime::{Caller, Linker};

use super::memory;
use super::status::{status, HostResult, Status};
use crate::wasm::state::HostState;

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
    let mem = match caller.data().memory {
        Some(mem) => mem,
        None => return Ok(Status::InternalFailure as i32),
    };
    let result = memory::slice(mem.data(&caller), ptr, len).map(|message| {
        if proxy_level == CRITICAL {
            String::from_utf8_lossy(message)
                .trim_end_matches('\n')
                .to_string()
        } else {
            emit(&caller.data().plugin.name, level, message);
            String::new()
        }
    });
    match result {
        Ok(critical) if proxy_level == CRITICAL => {
            // Held to the end of the call (see `HostState::held_critical`), a bounded few.
            let held = &mut caller.data_mut().held_critical;
            if held.len() < MAX_HELD_CRITICAL {
                held.push(critical);
            }
            Ok(Status::Ok as i32)
        }
        other => Ok(status(other.map(drop))),
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
