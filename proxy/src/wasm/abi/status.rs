//! The status codes hostcalls answer with (`proxy_status_t`), and the hostcalls' return type.

/// The `proxy_status_t` codes edgeward answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub(crate) enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    InvalidMemoryAccess = 6,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
}

/// What a hostcall returns to the guest: a status, or an error that unwinds it (a trap from a
/// re-entrant allocator call, or `proc_exit`).
pub(crate) type HostResult = wasmtime::Result<i32>;

/// Folds a hostcall body's outcome into the guest's status code.
pub(crate) fn status(result: Result<(), Status>) -> i32 {
    match result {
        Ok(()) => Status::Ok as i32,
        Err(status) => status as i32,
    }
}
