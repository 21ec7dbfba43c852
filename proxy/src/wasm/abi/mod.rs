//! The proxy-wasm ABI (v0.2.0 / v0.2.1) as host functions, one file per area, plus the WASI
//! preview1 functions filters import. `add_to_linker` registers all of them.
//!
//! Every hostcall treats guest pointers and sizes as hostile and answers bad ones with a
//! status code, never by trapping or by touching memory outside the guest's.

pub(super) mod buffers;
pub(super) mod context;
pub(super) mod foreign;
pub(super) mod headers;
pub(super) mod http_call;
pub(super) mod log;
pub(super) mod memory;
pub(super) mod metrics;
pub(super) mod pairs;
pub(super) mod properties;
pub(super) mod queues;
pub(super) mod shared_data;
pub(super) mod status;
pub(super) mod stream;
pub(super) mod unsupported;
pub(super) mod wasi;

use wasmtime::Linker;

use super::state::HostState;

/// Registers every host function a filter may import.
pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    log::add_to_linker(linker)?;
    context::add_to_linker(linker)?;
    headers::add_to_linker(linker)?;
    buffers::add_to_linker(linker)?;
    stream::add_to_linker(linker)?;
    properties::add_to_linker(linker)?;
    http_call::add_to_linker(linker)?;
    shared_data::add_to_linker(linker)?;
    queues::add_to_linker(linker)?;
    metrics::add_to_linker(linker)?;
    foreign::add_to_linker(linker)?;
    unsupported::add_to_linker(linker)?;
    wasi::add_to_linker(linker)?;
    Ok(())
}
