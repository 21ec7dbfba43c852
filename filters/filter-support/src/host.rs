//! Hostcalls made directly, answering the host's status instead of trapping: the SDK's
//! `set_property`, `define_metric` and `set_shared_data` panic (and so trap) on any status
//! but OK, while edgeward answers BAD_ARGUMENT for an upstream it does not know, a metric it
//! will not define, or a shared store that is full. A filter would rather log that and go on.

// The only unsafe code of the filters' shared support: the raw imports below.
#![allow(unsafe_code)]

use std::fmt;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_set_property(
        path_data: *const u8,
        path_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
}

/// A proxy-wasm status other than OK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u32);

impl Status {
    pub const NOT_FOUND: Status = Status(1);
    pub const BAD_ARGUMENT: Status = Status(2);
    pub const CAS_MISMATCH: Status = Status(8);
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.0 {
            1 => "NOT_FOUND",
            2 => "BAD_ARGUMENT",
            3 => "SERIALIZATION_FAILURE",
            4 => "PARSE_FAILURE",
            6 => "INVALID_MEMORY_ACCESS",
            7 => "EMPTY",
            8 => "CAS_MISMATCH",
            10 => "INTERNAL_FAILURE",
            _ => return write!(f, "status {}", self.0),
        };
        f.write_str(name)
    }
}

fn status(code: u32) -> Result<(), Status> {
    match code {
        0 => Ok(()),
        other => Err(Status(other)),
    }
}

/// Sets the property at `path` (segments joined by NUL, as the SDKs serialize paths).
pub fn set_property(path: &[&str], value: &[u8]) -> Result<(), Status> {
    let path = path.join("\0");
    // SAFETY: both pointers and lengths describe live slices for the whole call; the host only
    // reads them.
    status(unsafe { proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len()) })
}

/// Sends the request to the configured upstream `name` instead of the route's
/// (`route.upstream`); BAD_ARGUMENT for a name edgeward does not know.
pub fn set_route_upstream(name: &str) -> Result<(), Status> {
    set_property(&["route", "upstream"], name.as_bytes())
}

/// Defines (or finds again) the counter `name`; its id.
pub fn define_counter(name: &str) -> Result<u32, Status> {
    const COUNTER: u32 = 0;
    let mut id = 0;
    // SAFETY: `name` is a live slice and `id` a live local for the whole call; the host reads
    // the one and writes 4 bytes to the other.
    status(unsafe { proxy_define_metric(COUNTER, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

/// Stores `value` under `key` if its version is still `cas` (0: whatever it is);
/// CAS_MISMATCH when another writer came first, BAD_ARGUMENT when the store refuses it.
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<(), Status> {
    // SAFETY: the pointers and lengths describe live slices for the whole call; the host only
    // reads them.
    status(unsafe {
        proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
    })
}
