//! The status codes hostcalls answer with (`proxy_status_t`), and the hostcalls' return type.

/// `proxy_status_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    ParseFailure = 4,
    InvalidMemoryAccess = 6,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
    Unimplemented = 12,
}

/// What a hostcall returns to the guest: a status, or an error that unwinds it (a trap from a
/// re-entrant allocator call, or `proc_exit`).
pub type HostResult = wasmtime::Result<i32>;

/// Folds a hostcall body's outcome into the guest's status code.
pub fn status(result: Result<(), Status>) -> i32 {
    match result {
        Ok(()) => Status::Ok as i32,
        Err(status) => status as i32,
    }
}
