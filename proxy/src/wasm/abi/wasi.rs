//! WASI preview1, written by hand (wasmtime-wasi's synchronous linker blocks on a runtime of
//! its own and panics on Pingora's tokio workers). Registered under both
//! `wasi_snapshot_preview1` and `wasi_unstable`.
//!
//! Filters get a sandbox: stdout and stderr go to edgeward's log tagged with the filter name,
//! clocks and randomness work, the environment and arguments are empty, and there is no file
//! system or network: those calls answer BADF or NOSYS, as cpp-host does.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, FuncType, Linker, Val, ValType};

use super::memory;
use crate::wasm::error::GuestExit;
use crate::wasm::state::HostState;

const MODULES: [&str; 2] = ["wasi_snapshot_preview1", "wasi_unstable"];

// WASI errno values.
const SUCCESS: i32 = 0;
const BADF: i32 = 8;
const FAULT: i32 = 21;
const INVAL: i32 = 28;
const NOSYS: i32 = 52;
const NOTSUP: i32 = 58;

/// Largest `random_get` request, as in cpp-host.
const MAX_RANDOM: u32 = 64 << 10;
/// Longest stdout/stderr write kept in the log.
const MAX_LOGGED: usize = 64 << 10;

/// Calls with nothing to offer in a sandbox: name, parameter types (`i` i32, `I` i64), errno.
const REFUSED: &[(&str, &str, i32)] = &[
    ("fd_advise", "iIIi", BADF),
    ("fd_allocate", "iII", BADF),
    ("fd_close", "i", BADF),
    ("fd_datasync", "i", BADF),
    ("fd_fdstat_set_flags", "ii", BADF),
    ("fd_fdstat_set_rights", "iII", BADF),
    ("fd_filestat_get", "ii", BADF),
    ("fd_filestat_set_size", "iI", BADF),
    ("fd_filestat_set_times", "iIIi", BADF),
    ("fd_pread", "iiiIi", BADF),
    ("fd_prestat_get", "ii", BADF),
    ("fd_prestat_dir_name", "iii", BADF),
    ("fd_pwrite", "iiiIi", BADF),
    ("fd_read", "iiii", BADF),
    ("fd_readdir", "iiiIi", BADF),
    ("fd_renumber", "ii", BADF),
    ("fd_seek", "iIii", BADF),
    ("fd_sync", "i", BADF),
    ("fd_tell", "ii", BADF),
    ("path_create_directory", "iii", NOSYS),
    ("path_filestat_get", "iiiii", NOSYS),
    ("path_filestat_set_times", "iiiiIIi", NOSYS),
    ("path_link", "iiiiiii", NOSYS),
    ("path_open", "iiiiiIIii", NOSYS),
    ("path_readlink", "iiiiii", NOSYS),
    ("path_remove_directory", "iii", NOSYS),
    ("path_rename", "iiiiii", NOSYS),
    ("path_symlink", "iiiii", NOSYS),
    ("path_unlink_file", "iii", NOSYS),
    ("poll_oneoff", "iiii", NOSYS),
    ("proc_raise", "i", NOSYS),
    ("sock_accept", "iii", NOSYS),
    ("sock_recv", "iiiiii", NOSYS),
    ("sock_send", "iiiii", NOSYS),
    ("sock_shutdown", "ii", NOSYS),
];

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    for module in MODULES {
        linker.func_wrap(module, "fd_write", fd_write)?;
        linker.func_wrap(module, "fd_fdstat_get", fd_fdstat_get)?;
        linker.func_wrap(module, "clock_time_get", clock_time_get)?;
        linker.func_wrap(module, "clock_res_get", clock_res_get)?;
        linker.func_wrap(module, "random_get", random_get)?;
        linker.func_wrap(module, "environ_sizes_get", empty_sizes)?;
        linker.func_wrap(module, "args_sizes_get", empty_sizes)?;
        linker.func_wrap(
            module,
            "environ_get",
            |_: Caller<'_, HostState>, _: u32, _: u32| SUCCESS,
        )?;
        linker.func_wrap(
            module,
            "args_get",
            |_: Caller<'_, HostState>, _: u32, _: u32| SUCCESS,
        )?;
        linker.func_wrap(module, "sched_yield", |_: Caller<'_, HostState>| SUCCESS)?;
        linker.func_wrap(
            module,
            "proc_exit",
            |_: Caller<'_, HostState>, code: i32| -> wasmtime::Result<()> {
                Err(GuestExit(code).into())
            },
        )?;
        for (name, params, errno) in REFUSED {
            let params = params
                .chars()
                .map(|c| if c == 'I' { ValType::I64 } else { ValType::I32 });
            let ty = FuncType::new(linker.engine(), params, [ValType::I32]);
            let errno = *errno;
            linker.func_new(
                module,
                name,
                ty,
                move |_, _: &[Val], results: &mut [Val]| {
                    if let Some(result) = results.first_mut() {
                        *result = Val::I32(errno);
                    }
                    Ok(())
                },
            )?;
        }
    }
    Ok(())
}

fn errno(result: Result<(), super::status::Status>) -> i32 {
    if result.is_ok() {
        SUCCESS
    } else {
        FAULT
    }
}

/// stdout (INFO) and stderr (ERROR) into the log; other descriptors do not exist.
fn fd_write(
    mut caller: Caller<'_, HostState>,
    fd: u32,
    iovs: u32,
    iovs_len: u32,
    ret_written: u32,
) -> i32 {
    let level = match fd {
        1 => log::Level::Info,
        2 => log::Level::Error,
        _ => return BADF,
    };
    let Some(mem) = caller.data().memory else {
        return BADF;
    };
    let data = mem.data(&caller);
    let mut text = Vec::new();
    let mut written: u64 = 0;
    for i in 0..iovs_len {
        let Some(iov) = i.checked_mul(8).and_then(|o| iovs.checked_add(o)) else {
            return FAULT;
        };
        let Ok(entry) = memory::slice(data, iov, 8) else {
            return FAULT;
        };
        let ptr = u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]);
        let len = u32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]]);
        let Ok(bytes) = memory::slice(data, ptr, len) else {
            return FAULT;
        };
        let room = MAX_LOGGED.saturating_sub(text.len());
        text.extend_from_slice(&bytes[..bytes.len().min(room)]);
        written += u64::from(len);
    }
    if !text.is_empty() {
        write_lines(caller.data_mut(), fd, level, &text);
    }
    errno(memory::write_u32(
        &mut caller,
        ret_written,
        written.min(u64::from(u32::MAX)) as u32,
    ))
}

/// Logs the complete lines of what a guest writes to stdout/stderr; the rest waits for its
/// end of line or the end of the callback ([`flush_output`]).
fn write_lines(state: &mut HostState, fd: u32, level: log::Level, text: &[u8]) {
    let stream = usize::from(fd == 2);
    let buffer = &mut state.output[stream];
    buffer.extend_from_slice(text);
    if let Some(end) = buffer.iter().rposition(|b| *b == b'\n') {
        let lines: Vec<u8> = buffer.drain(..=end).collect();
        for line in lines[..end].split(|b| *b == b'\n') {
            super::log::emit(&state.plugin.name, level, line);
        }
    }
    if buffer.len() > MAX_LOGGED {
        let rest = std::mem::take(buffer);
        super::log::emit(&state.plugin.name, level, &rest);
    }
}

/// Logs what is left of unfinished output lines (at the end of every guest call, so that a
/// message cut short by a trap is still seen).
pub(crate) fn flush_output(state: &mut HostState) {
    for (stream, level) in [(0, log::Level::Info), (1, log::Level::Error)] {
        if !state.output[stream].is_empty() {
            let rest = std::mem::take(&mut state.output[stream]);
            super::log::emit(&state.plugin.name, level, &rest);
        }
    }
}

/// stdout and stderr are character devices one may write to; nothing else is open.
fn fd_fdstat_get(mut caller: Caller<'_, HostState>, fd: u32, ret_stat: u32) -> i32 {
    if !(1..=2).contains(&fd) {
        return BADF;
    }
    const CHARACTER_DEVICE: u8 = 2;
    const RIGHT_FD_WRITE: u64 = 1 << 6;
    let mut stat = [0u8; 24];
    stat[0] = CHARACTER_DEVICE;
    stat[8..16].copy_from_slice(&RIGHT_FD_WRITE.to_le_bytes());
    let Some(mem) = caller.data().memory else {
        return BADF;
    };
    errno(
        mem.write(&mut caller, ret_stat as usize, &stat)
            .map_err(|_| super::status::Status::InvalidMemoryAccess),
    )
}

fn monotonic_nanos() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn clock_time_get(
    mut caller: Caller<'_, HostState>,
    clock: u32,
    _precision: u64,
    ret_time: u32,
) -> i32 {
    let nanos = match clock {
        0 => u64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        )
        .unwrap_or(u64::MAX),
        1 => monotonic_nanos(),
        _ => return NOTSUP,
    };
    errno(memory::write_u64(&mut caller, ret_time, nanos))
}

fn clock_res_get(mut caller: Caller<'_, HostState>, clock: u32, ret_resolution: u32) -> i32 {
    if clock > 1 {
        return NOTSUP;
    }
    errno(memory::write_u64(&mut caller, ret_resolution, 1_000))
}

fn random_get(mut caller: Caller<'_, HostState>, ptr: u32, len: u32) -> i32 {
    if len > MAX_RANDOM {
        return INVAL;
    }
    let mut bytes = vec![0u8; len as usize];
    if getrandom::fill(&mut bytes).is_err() {
        return NOSYS;
    }
    let Some(mem) = caller.data().memory else {
        return FAULT;
    };
    errno(
        mem.write(&mut caller, ptr as usize, &bytes)
            .map_err(|_| super::status::Status::InvalidMemoryAccess),
    )
}

fn empty_sizes(mut caller: Caller<'_, HostState>, ret_count: u32, ret_size: u32) -> i32 {
    errno(
        memory::write_u32(&mut caller, ret_count, 0)
            .and_then(|()| memory::write_u32(&mut caller, ret_size, 0)),
    )
}
