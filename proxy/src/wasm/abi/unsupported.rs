//! ABI calls edgeward does not offer: gRPC callouts. They exist with
//! their exact signatures so that every SDK-built module links (the Rust SDK imports them all)
//! and answer the failure status their SDKs handle without crashing.

use wasmtime::{Caller, Linker};

use super::status::{HostResult, Status};
use crate::wasm::state::HostState;

fn refuse(caller: &Caller<'_, HostState>, call: &str, status: Status) -> HostResult {
    log::warn!(
        target: super::log::TARGET,
        "[filter {}] {call} is not supported by edgeward",
        caller.data().plugin.name
    );
    Ok(status as i32)
}

macro_rules! refuse {
    ($linker:ident, $name:literal, $status:expr, ($($arg:ident: $ty:ty),*)) => {
        $linker.func_wrap("env", $name, |caller: Caller<'_, HostState>, $($arg: $ty),*| -> HostResult {
            let _ = ($($arg),*);
            refuse(&caller, $name, $status)
        })?;
    };
}

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    refuse!(linker, "proxy_grpc_call", Status::InternalFailure, (a: u32, b: u32, c: u32, d: u32, e: u32, f: u32, g: u32, h: u32, i: u32, j: u32, k: u32, l: u32));
    refuse!(linker, "proxy_grpc_stream", Status::InternalFailure, (a: u32, b: u32, c: u32, d: u32, e: u32, f: u32, g: u32, h: u32, i: u32));
    refuse!(linker, "proxy_grpc_send", Status::NotFound, (a: u32, b: u32, c: u32, d: u32));
    refuse!(linker, "proxy_grpc_cancel", Status::NotFound, (a: u32));
    refuse!(linker, "proxy_grpc_close", Status::NotFound, (a: u32));
    Ok(())
}
