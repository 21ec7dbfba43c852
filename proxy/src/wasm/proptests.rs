//! Property-based tests of how the host treats guest memory: every (pointer, size) a guest
//! passes is hostile. `abi::memory::slice` answers a view or INVALID_MEMORY_ACCESS, exactly as
//! the bounds say; and real hostcalls, made by a real guest through the real host with
//! arbitrary pointers and sizes (u32::MAX, overflowing sums, empty ranges at the end of
//! memory), answer the status the ABI's rules give, never trap the guest and never crash.
//! `make test` runs a few cases of each property; `make fuzz` runs many (`PROPTEST_CASES`).
//!
//! The guest ([`module`]) is WebAssembly text with one page of memory (it cannot grow). A
//! request brings it a list of calls in its `x-calls` header, hex-encoded: a phase word (0:
//! make the calls in `on_http_request_headers`, where the request head is writable; 1: in
//! `on_http_request_body`), then 44 bytes per call: the hostcall's number in [`IMPORTS`] and
//! ten arguments, little-endian. The guest keeps the list as a property of the request and
//! reads each call from the host afresh (so that what a call writes cannot change the next
//! one), resets its memory before each to zeros with [`FIXTURES`] at [`FIXTURES_AT`] (so the
//! bytes any call reads are known: [`image`]), makes the call, and answers the request with
//! the statuses, one byte each, as a local response. [`Call::expected`] says what the ABI
//! rules (see `abi/`) answer.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

use super::abi::memory::slice;
use super::abi::pairs;
use super::abi::status::Status;
use super::{FilterHost, StreamInfo, Verdict};
use crate::config::proptests::proptest_config;
use crate::config::{self, Route};

/// The guest's memory: one page, which it cannot grow.
const MEMORY: u64 = 65_536;
/// Where the guest keeps known bytes for calls to read.
const FIXTURES_AT: u32 = 0x100;
/// A request header name, a property path, `host` (which names `:authority`) in capitals.
const FIXTURES: &[u8] = b"x-fuzz\0\0\0\0\0\0\0\0\0\0request\0path\0\0\0\0HOST";
/// The guest's allocator hands out this address for up to [`ALLOCATION`] bytes, and 0 (a
/// failed allocation) for more.
const ALLOCATED_AT: u32 = 0x8000;
const ALLOCATION: u32 = 0x4000;
/// Where the guest writes the names it uses itself ([`NAMES`]), and decodes the calls:
/// beyond what its allocator hands out.
const NAMES_AT: u32 = 0xc000;
const DECODED_AT: u32 = 0xc100;
/// The request header that brings the calls, and the property the guest keeps them in.
const NAMES: &[u8] = b"x-callsfuzz-calls";
/// One call: the hostcall's number and ten arguments.
const CALL_BYTES: usize = 44;
/// At most this many calls per request: the guest reports one status byte per call in 16.
const MAX_CALLS: usize = 16;

/// The hostcalls the guest makes, by number, with their parameter counts (all `i32`).
const IMPORTS: &[(&str, usize)] = &[
    ("proxy_log", 3),
    ("proxy_get_log_level", 1),
    ("proxy_get_header_map_value", 5),
    ("proxy_get_header_map_pairs", 3),
    ("proxy_get_header_map_size", 2),
    ("proxy_add_header_map_value", 5),
    ("proxy_replace_header_map_value", 5),
    ("proxy_remove_header_map_value", 3),
    ("proxy_set_header_map_pairs", 3),
    ("proxy_get_buffer_bytes", 5),
    ("proxy_get_buffer_status", 3),
    ("proxy_get_property", 4),
    ("proxy_set_property", 4),
    ("proxy_get_shared_data", 5),
    ("proxy_set_shared_data", 5),
    ("proxy_http_call", 10),
    ("proxy_send_local_response", 8),
    ("proxy_get_status", 3),
    ("proxy_set_buffer_bytes", 5),
    ("proxy_call_foreign_function", 6),
];

/// The guest: see the module's documentation.
fn module() -> Vec<u8> {
    let imports: String = IMPORTS
        .iter()
        .map(|(name, params)| {
            format!(
                "  (import \"env\" \"{name}\" (func ${name} (param{}) (result i32)))\n",
                " i32".repeat(*params)
            )
        })
        .collect();
    let loads: String = (0..10)
        .map(|i| {
            format!(
                "        (local.set $a{i} (i32.load offset={} (local.get $p)))\n",
                4 + 4 * i
            )
        })
        .collect();
    let calls: String = IMPORTS
        .iter()
        .enumerate()
        .map(|(op, (name, params))| {
            let args: String = (0..*params)
                .map(|i| format!(" (local.get $a{i})"))
                .collect();
            format!(
                "        (if (i32.eq (local.get $op) (i32.const {op}))\n          \
                 (then (local.set $s (call ${name}{args}))))\n"
            )
        })
        .collect();
    let fixtures: String = FIXTURES.iter().map(|b| format!("\\{b:02x}")).collect();
    let locals: String = (0..10).map(|i| format!(" (local $a{i} i32)")).collect();
    let text = format!(
        r#"(module
{imports}
  (memory (export "memory") 1 1)
  (data $fixtures "{fixtures}")
  (data $names "{names}")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (select (i32.const {ALLOCATED_AT}) (i32.const 0)
      (i32.le_u (local.get $size) (i32.const {ALLOCATION}))))
  (func $check (param $status i32)
    (if (local.get $status) (then unreachable)))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_context_create") (param i32 i32))

  ;; The hex text at $at, $len characters long, decoded to $to; the length decoded.
  (func $unhex (param $at i32) (param $len i32) (param $to i32) (result i32)
    (local $i i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (i32.add (local.get $i) (i32.const 1)) (local.get $len)))
        (i32.store8 (i32.add (local.get $to) (i32.shr_u (local.get $i) (i32.const 1)))
          (i32.or
            (i32.shl (call $nibble (i32.load8_u (i32.add (local.get $at) (local.get $i))))
              (i32.const 4))
            (call $nibble (i32.load8_u
              (i32.add (local.get $at) (i32.add (local.get $i) (i32.const 1)))))))
        (local.set $i (i32.add (local.get $i) (i32.const 2)))
        (br $next)))
    (i32.shr_u (local.get $i) (i32.const 1)))
  (func $nibble (param $c i32) (result i32)
    (select (i32.sub (local.get $c) (i32.const 48)) (i32.sub (local.get $c) (i32.const 87))
      (i32.le_u (local.get $c) (i32.const 57))))

  ;; The list of calls, from the request's property: its address at 16, its length at 20.
  (func $calls
    (memory.init $names (i32.const {NAMES_AT}) (i32.const 0) (i32.const {names_len}))
    (call $check (call $proxy_get_property
      (i32.const {property_at}) (i32.const {property_len}) (i32.const 16) (i32.const 20))))

  (func (export "proxy_on_request_headers")
    (param $context i32) (param $headers i32) (param $end_of_stream i32) (result i32)
    (memory.init $names (i32.const {NAMES_AT}) (i32.const 0) (i32.const {names_len}))
    (call $check (call $proxy_get_header_map_value
      (i32.const 0) (i32.const {NAMES_AT}) (i32.const {header_len}) (i32.const 16) (i32.const 20)))
    (call $check (call $proxy_set_property
      (i32.const {property_at}) (i32.const {property_len}) (i32.const {DECODED_AT})
      (call $unhex (i32.load (i32.const 16)) (i32.load (i32.const 20)) (i32.const {DECODED_AT}))))
    (if (i32.eqz (i32.load (i32.const {DECODED_AT}))) (then (call $run)))
    (i32.const 0))
  (func (export "proxy_on_request_body")
    (param $context i32) (param $size i32) (param $end_of_stream i32) (result i32)
    (call $run)
    (i32.const 0))

  ;; Makes the calls; answers with their statuses, one byte each, in 16 bytes.
  (func $run
    (local $n i32) (local $i i32) (local $p i32) (local $op i32) (local $s i32)
    (local $lo i64) (local $hi i64) (local $shift i64){locals}
    (call $calls)
    (local.set $n (i32.div_u (i32.sub (i32.load (i32.const 20)) (i32.const 4))
      (i32.const {CALL_BYTES})))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (call $calls)
        (local.set $p (i32.add (i32.load (i32.const 16))
          (i32.add (i32.const 4) (i32.mul (local.get $i) (i32.const {CALL_BYTES})))))
        (local.set $op (i32.load (local.get $p)))
{loads}
        (memory.fill (i32.const 0) (i32.const 0) (i32.const {MEMORY}))
        (memory.init $fixtures (i32.const {FIXTURES_AT}) (i32.const 0) (i32.const {fixtures_len}))
        (local.set $s (i32.const 255))
{calls}
        (local.set $shift (i64.extend_i32_u
          (i32.mul (i32.and (local.get $i) (i32.const 7)) (i32.const 8))))
        (local.set $s (i32.and (local.get $s) (i32.const 255)))
        (if (i32.lt_u (local.get $i) (i32.const 8))
          (then (local.set $lo (i64.or (local.get $lo)
            (i64.shl (i64.extend_i32_u (local.get $s)) (local.get $shift)))))
          (else (local.set $hi (i64.or (local.get $hi)
            (i64.shl (i64.extend_i32_u (local.get $s)) (local.get $shift))))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i64.store (i32.const 512) (local.get $lo))
    (i64.store (i32.const 520) (local.get $hi))
    (call $check (call $proxy_send_local_response (i32.const 200) (i32.const 0) (i32.const 0)
      (i32.const 512) (i32.const 16) (i32.const 0) (i32.const 0) (i32.const -1))))
)
"#,
        fixtures_len = FIXTURES.len(),
        names = NAMES
            .iter()
            .map(|b| format!("\\{b:02x}"))
            .collect::<String>(),
        names_len = NAMES.len(),
        header_len = "x-calls".len(),
        property_at = NAMES_AT as usize + "x-calls".len(),
        property_len = "fuzz-calls".len(),
    );
    wat::parse_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// The guest's memory as every call finds it.
fn image() -> Vec<u8> {
    let mut memory = vec![0; MEMORY as usize];
    let at = FIXTURES_AT as usize;
    memory[at..at + FIXTURES.len()].copy_from_slice(FIXTURES);
    memory
}

// ---------------------------------------------------------------------------------------------
// Calls and what the ABI answers them
// ---------------------------------------------------------------------------------------------

/// A (pointer, size) pair a guest passes.
#[derive(Debug, Clone, Copy)]
struct Region {
    ptr: u32,
    len: u32,
}

impl Region {
    fn fits(self) -> bool {
        u64::from(self.ptr) + u64::from(self.len) <= MEMORY
    }

    /// The bytes the host reads, when they are all in memory.
    fn bytes(self, image: &[u8]) -> Option<&[u8]> {
        self.fits()
            .then(|| &image[self.ptr as usize..][..self.len as usize])
    }
}

/// Whether a 4-byte return slot at `ptr` is in memory.
fn slot(ptr: u32) -> bool {
    u64::from(ptr) + 4 <= MEMORY
}

#[derive(Debug, Clone)]
enum Call {
    Log {
        level: u32,
        message: Region,
    },
    GetLogLevel {
        ret: u32,
    },
    GetHeaderValue {
        map: u32,
        key: Region,
        ret: (u32, u32),
    },
    GetHeaderPairs {
        map: u32,
        ret: (u32, u32),
    },
    GetHeaderSize {
        map: u32,
        ret: u32,
    },
    AddHeader {
        map: u32,
        key: Region,
        value: Region,
    },
    ReplaceHeader {
        map: u32,
        key: Region,
        value: Region,
    },
    RemoveHeader {
        map: u32,
        key: Region,
    },
    SetHeaderPairs {
        map: u32,
        pairs: Region,
    },
    GetBuffer {
        buffer: u32,
        start: u32,
        max: u32,
        ret: (u32, u32),
    },
    GetBufferStatus {
        buffer: u32,
        size: u32,
        flags: u32,
    },
    GetProperty {
        path: Region,
        ret: (u32, u32),
    },
    SetProperty {
        path: Region,
        value: Region,
    },
    GetSharedData {
        key: Region,
        ret: (u32, u32),
        cas: u32,
    },
    SetSharedData {
        key: Region,
        value: Region,
        cas: u32,
    },
    Callout {
        upstream: Region,
        headers: Region,
        body: Region,
        trailers: Region,
        timeout: u32,
        token: u32,
    },
    SendLocalResponse {
        status: u32,
        details: Region,
        body: Region,
        headers: Region,
        grpc: u32,
    },
    GetStatus {
        code: u32,
        message: (u32, u32),
    },
    /// Changes the request body the calls are read from: only ever the last call.
    SetBuffer {
        buffer: u32,
        start: u32,
        size: u32,
        data: Region,
    },
    ForeignFunction {
        name: Region,
        arguments: Region,
        ret: (u32, u32),
    },
}

/// The callback the calls are made in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// `on_http_request_headers`: the request head is writable, there is no body.
    Headers,
    /// `on_http_request_body`: the body is there, the head is read-only.
    Body,
}

/// What a request's calls have made of it so far.
struct Model {
    phase: Phase,
    /// The request head's fields, by lower-case name (`host` too).
    fields: BTreeSet<Vec<u8>>,
    /// Custom properties: path → value length.
    properties: HashMap<Vec<u8>, usize>,
}

impl Model {
    fn new(phase: Phase) -> Model {
        Model {
            phase,
            fields: [&b"host"[..], b"x-fuzz", b"x-calls"]
                .map(<[u8]>::to_vec)
                .into(),
            properties: HashMap::new(),
        }
    }

    /// Whether the request's map has `key` (`abi/headers.rs`: pseudo-headers first, `host`
    /// read as `:authority`, any letter case).
    fn has_field(&self, key: &[u8]) -> bool {
        match key.to_ascii_lowercase().as_slice() {
            b":method" | b":path" | b":scheme" => true,
            b"host" | b":authority" => self.fields.contains(&b"host"[..]),
            other => self.fields.contains(other),
        }
    }

    /// Whether the request head may be written: in any phase (after its own, the request line
    /// stays as it is, and other fields change only what later readers see).
    fn writable(&self, map: u32) -> bool {
        map == 0
    }

    /// Sets or adds field `key` (`Head::set`).
    fn set_field(&mut self, key: &[u8], value: &[u8]) -> Vec<Status> {
        if key.first() == Some(&b':') {
            // Pseudo-headers rewrite the request line; no fixture starts with a colon.
            return vec![Done, BadArgument];
        }
        if key.eq_ignore_ascii_case(b"host") && self.phase != Phase::Headers {
            // Part of the request line, which a late write leaves as it is.
            return vec![Done];
        }
        let valid = HeaderValue::from_bytes(value).is_ok();
        let name = if key.eq_ignore_ascii_case(b"host") {
            Some(b"host".to_vec())
        } else {
            HeaderName::from_bytes(key)
                .ok()
                .map(|name| name.as_str().as_bytes().to_vec())
        };
        match name {
            Some(name) if valid => {
                self.fields.insert(name);
                vec![Done]
            }
            _ => vec![BadArgument],
        }
    }

    /// Removes field `key` (`Head::remove`).
    fn remove_field(&mut self, key: &[u8]) -> Status {
        if key.first() == Some(&b':') {
            return BadArgument;
        }
        match HeaderName::from_bytes(key) {
            Ok(name) => {
                self.fields.remove(name.as_str().as_bytes());
                Done
            }
            Err(_) => BadArgument,
        }
    }
}

use super::abi::properties::BUILT_IN;
use Status::{BadArgument, InternalFailure, InvalidMemoryAccess, NotFound, Ok as Done};

/// What returning `len` bytes through the slots at `ret` answers (`memory::return_bytes`).
fn returned(len: usize, ret: (u32, u32)) -> Status {
    if !slot(ret.0) || !slot(ret.1) {
        InvalidMemoryAccess
    } else if len > ALLOCATION as usize {
        InternalFailure
    } else {
        Done
    }
}

/// A header map type: 0 is the request's headers, the only map in a request callback; 1 to
/// 7 are maps that do not exist there; others are no map.
fn map_exists(map: u32) -> Option<bool> {
    (map <= 7).then_some(map == 0)
}

/// Trailer maps (1 and 3), which do not exist in a request callback, accept writes and drop
/// them (`Head::NoTrailers`), once the field is valid.
fn drops_writes(map: u32) -> bool {
    map == 1 || map == 3
}

/// What a dropped trailer write answers: the field is checked as for any write.
fn dropped_field(key: &[u8], value: &[u8]) -> Status {
    let valid = key.first() != Some(&b':')
        && HeaderName::from_bytes(key).is_ok()
        && HeaderValue::from_bytes(value).is_ok();
    if valid {
        Done
    } else {
        BadArgument
    }
}

/// A buffer type: the configurations (6, 7) exist, and the request body (0) in its own
/// callback; the other types up to 8 do not, others are no buffer.
fn buffer_exists(buffer: u32, phase: Phase) -> Option<bool> {
    (buffer <= 8).then_some(buffer == 6 || buffer == 7 || buffer == 0 && phase == Phase::Body)
}

fn segments(path: &[u8]) -> Vec<&[u8]> {
    path.strip_suffix(&[0])
        .unwrap_or(path)
        .split(|b| *b == 0)
        .collect()
}

impl Call {
    /// The hostcall's number in [`IMPORTS`] and its arguments.
    fn encode(&self) -> (usize, Vec<u32>) {
        match *self {
            Call::Log { level, message: m } => (0, vec![level, m.ptr, m.len]),
            Call::GetLogLevel { ret } => (1, vec![ret]),
            Call::GetHeaderValue { map, key: k, ret } => (2, vec![map, k.ptr, k.len, ret.0, ret.1]),
            Call::GetHeaderPairs { map, ret } => (3, vec![map, ret.0, ret.1]),
            Call::GetHeaderSize { map, ret } => (4, vec![map, ret]),
            Call::AddHeader {
                map,
                key: k,
                value: v,
            } => (5, vec![map, k.ptr, k.len, v.ptr, v.len]),
            Call::ReplaceHeader {
                map,
                key: k,
                value: v,
            } => (6, vec![map, k.ptr, k.len, v.ptr, v.len]),
            Call::RemoveHeader { map, key: k } => (7, vec![map, k.ptr, k.len]),
            Call::SetHeaderPairs { map, pairs: p } => (8, vec![map, p.ptr, p.len]),
            Call::GetBuffer {
                buffer,
                start,
                max,
                ret,
            } => (9, vec![buffer, start, max, ret.0, ret.1]),
            Call::GetBufferStatus {
                buffer,
                size,
                flags,
            } => (10, vec![buffer, size, flags]),
            Call::GetProperty { path: p, ret } => (11, vec![p.ptr, p.len, ret.0, ret.1]),
            Call::SetProperty { path: p, value: v } => (12, vec![p.ptr, p.len, v.ptr, v.len]),
            Call::GetSharedData { key: k, ret, cas } => (13, vec![k.ptr, k.len, ret.0, ret.1, cas]),
            Call::SetSharedData {
                key: k,
                value: v,
                cas,
            } => (14, vec![k.ptr, k.len, v.ptr, v.len, cas]),
            Call::Callout {
                upstream: u,
                headers: h,
                body: b,
                trailers: t,
                timeout,
                token,
            } => (
                15,
                vec![
                    u.ptr, u.len, h.ptr, h.len, b.ptr, b.len, t.ptr, t.len, timeout, token,
                ],
            ),
            Call::SendLocalResponse {
                status,
                details: d,
                body: b,
                headers: h,
                grpc,
            } => (
                16,
                vec![status, d.ptr, d.len, b.ptr, b.len, h.ptr, h.len, grpc],
            ),
            Call::GetStatus { code, message } => (17, vec![code, message.0, message.1]),
            Call::SetBuffer {
                buffer,
                start,
                size,
                data: d,
            } => (18, vec![buffer, start, size, d.ptr, d.len]),
            Call::ForeignFunction {
                name: n,
                arguments: a,
                ret,
            } => (19, vec![n.ptr, n.len, a.ptr, a.len, ret.0, ret.1]),
        }
    }

    /// The statuses the ABI's rules allow for this call; one, unless the answer depends on
    /// shared data other requests (or earlier cases) left.
    fn expected(&self, image: &[u8], model: &mut Model) -> Vec<Status> {
        let phase = model.phase;
        let one = |status| vec![status];
        match *self {
            Call::Log { level, message } => one(if level > 5 {
                BadArgument
            } else if !message.fits() {
                InvalidMemoryAccess
            } else {
                Done
            }),
            Call::GetLogLevel { ret } => one(if slot(ret) { Done } else { InvalidMemoryAccess }),
            Call::GetHeaderValue { map, key, ret } => {
                one(match (map_exists(map), key.bytes(image)) {
                    (None, _) => BadArgument,
                    (Some(_), None) => InvalidMemoryAccess,
                    (Some(false), Some(_)) => NotFound,
                    (Some(true), Some(key)) if model.has_field(key) => returned(1, ret),
                    (Some(true), Some(_)) => NotFound,
                })
            }
            Call::GetHeaderPairs { map, ret } => one(match map_exists(map) {
                None => BadArgument,
                Some(exists) => returned(usize::from(exists), ret),
            }),
            Call::GetHeaderSize { map, ret } => one(match map_exists(map) {
                Some(true) if slot(ret) => Done,
                Some(true) => InvalidMemoryAccess,
                _ => BadArgument,
            }),
            // The key is read first, then whether the head is writable, then the value.
            Call::AddHeader { map, key, value } | Call::ReplaceHeader { map, key, value } => {
                match (map_exists(map), key.bytes(image)) {
                    (None, _) => one(BadArgument),
                    (Some(_), None) => one(InvalidMemoryAccess),
                    (Some(_), Some(key)) if drops_writes(map) => match value.bytes(image) {
                        None => one(InvalidMemoryAccess),
                        Some(value) => one(dropped_field(key, value)),
                    },
                    (Some(_), Some(_)) if !model.writable(map) => one(BadArgument),
                    (Some(_), Some(key)) => match value.bytes(image) {
                        None => one(InvalidMemoryAccess),
                        Some(value) => model.set_field(key, value),
                    },
                }
            }
            Call::RemoveHeader { map, key } => one(match (map_exists(map), key.bytes(image)) {
                (None, _) => BadArgument,
                (Some(_), None) => InvalidMemoryAccess,
                (Some(_), Some(key)) if drops_writes(map) => dropped_field(key, b""),
                (Some(_), Some(_)) if !model.writable(map) => BadArgument,
                (Some(_), Some(key)) => model.remove_field(key),
            }),
            // The map is decoded before the head is found writable; it replaces the regular
            // fields, added one by one until one is refused.
            Call::SetHeaderPairs { map, pairs } => match (map_exists(map), pairs.bytes(image)) {
                (None, _) => one(BadArgument),
                (Some(_), None) => one(InvalidMemoryAccess),
                (Some(_), Some(bytes)) => match pairs::decode(bytes) {
                    Some(entries) if drops_writes(map) => one(entries
                        .into_iter()
                        .map(|(key, value)| dropped_field(key, value))
                        .find(|status| *status != Done)
                        .unwrap_or(Done)),
                    Some(entries) if model.writable(map) => {
                        model.fields.clear();
                        let mut outcome = one(Done);
                        for (key, value) in entries {
                            outcome = model.set_field(key, value);
                            if !outcome.contains(&Done) {
                                break;
                            }
                        }
                        outcome
                    }
                    _ => one(BadArgument),
                },
            },
            Call::GetBuffer { buffer, ret, .. } => one(match buffer_exists(buffer, phase) {
                None => BadArgument,
                Some(false) => NotFound,
                // The body and the configurations are far smaller than an allocation.
                Some(true) => returned(1, ret),
            }),
            Call::GetBufferStatus {
                buffer,
                size,
                flags,
            } => one(match buffer_exists(buffer, phase) {
                None => BadArgument,
                Some(false) => NotFound,
                Some(true) if slot(size) && slot(flags) => Done,
                Some(true) => InvalidMemoryAccess,
            }),
            Call::GetProperty { path, ret } => one(match path.bytes(image) {
                None => InvalidMemoryAccess,
                Some(path) => {
                    let segments = segments(path);
                    let custom = model.properties.get(&segments.join(&0u8)).copied();
                    match (custom, segments.as_slice()) {
                        (Some(len), _) => returned(len, ret),
                        (None, [b"request", b"path"]) => returned(1, ret),
                        (None, _) => NotFound,
                    }
                }
            }),
            Call::SetProperty { path, value } => {
                one(match (path.bytes(image), value.bytes(image)) {
                    (None, _) | (_, None) => InvalidMemoryAccess,
                    (Some(path), Some(value)) => {
                        let segments = segments(path);
                        if segments == [&b"route"[..], b"upstream"] {
                            if value == b"origin" {
                                Done
                            } else {
                                BadArgument
                            }
                        } else if segments
                            .first()
                            .is_some_and(|first| BUILT_IN.contains(first))
                        {
                            // Accepted and ignored, as by Envoy.
                            Done
                        } else {
                            model.properties.insert(segments.join(&0u8), value.len());
                            Done
                        }
                    }
                })
            }
            Call::GetSharedData { key, ret, cas } => {
                if !key.fits() {
                    one(InvalidMemoryAccess)
                } else if !slot(cas) {
                    vec![NotFound, InvalidMemoryAccess]
                } else {
                    // Found or not, as earlier requests left it, and of any size.
                    vec![NotFound, returned(0, ret), returned(usize::MAX, ret)]
                }
            }
            Call::SetSharedData { key, value, cas } => {
                if !key.fits() || !value.fits() {
                    one(InvalidMemoryAccess)
                } else if cas == 0 {
                    // The store may be full of earlier cases' values.
                    vec![Done, BadArgument]
                } else {
                    vec![Done, Status::CasMismatch, BadArgument]
                }
            }
            // The filter may call no upstream: past the pointers, BAD_ARGUMENT.
            Call::Callout {
                upstream,
                headers,
                body,
                ..
            } => one(if !upstream.fits() {
                InvalidMemoryAccess
            } else {
                match headers.bytes(image).map(pairs::decode) {
                    None => InvalidMemoryAccess,
                    Some(None) => BadArgument,
                    Some(Some(_)) if !body.fits() => InvalidMemoryAccess,
                    Some(Some(_)) => BadArgument,
                }
            }),
            Call::SendLocalResponse {
                status,
                details,
                body,
                headers,
                ..
            } => one(if !(100..=599).contains(&status) {
                BadArgument
            } else if !details.fits() || !body.fits() {
                InvalidMemoryAccess
            } else {
                match headers.bytes(image).map(pairs::decode) {
                    None => InvalidMemoryAccess,
                    Some(None) => BadArgument,
                    Some(Some(_)) => Done,
                }
            }),
            Call::GetStatus { code, message } => one(if slot(code) {
                returned(0, message)
            } else {
                InvalidMemoryAccess
            }),
            // Both are read first; edgeward's two functions return nothing, others are
            // NOT_FOUND (arbitrary arguments rarely make a declaration).
            Call::ForeignFunction {
                name,
                arguments,
                ret,
            } => one(match (name.bytes(image), arguments.fits()) {
                (Some(_), false) | (None, _) => InvalidMemoryAccess,
                (Some(b"clear_route_cache"), true) => returned(0, ret),
                (Some(b"declare_property"), true) => {
                    return vec![BadArgument, returned(0, ret)];
                }
                (Some(_), true) => NotFound,
            }),
            Call::SetBuffer { buffer, data, .. } => one(match buffer {
                0 if phase == Phase::Headers => BadArgument,
                0 if data.fits() => Done,
                0 => InvalidMemoryAccess,
                2 | 3 | 5 | 8 => NotFound,
                1 | 4 | 6 | 7 => BadArgument,
                _ => BadArgument,
            }),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Arguments
// ---------------------------------------------------------------------------------------------

/// Pointers near what matters: the start, the fixtures, the end of memory, the end of the
/// address space; and any.
fn pointer() -> impl Strategy<Value = u32> {
    let end = MEMORY as u32;
    prop_oneof![
        1 => 0u32..64,
        1 => FIXTURES_AT..FIXTURES_AT + 48,
        2 => end - 16..=end + 16,
        1 => u32::MAX - 16..=u32::MAX,
        1 => any::<u32>(),
    ]
}

/// A pointer and a size: empty ranges and ranges ending exactly at, just past or far past the
/// end of memory, sizes that overflow 32 bits, the fixtures; and any.
fn region() -> impl Strategy<Value = Region> {
    let end = MEMORY as u32;
    let to_end = move |ptr: u32, past: u32| end.wrapping_sub(ptr).wrapping_add(past);
    prop_oneof![
        2 => (pointer(), 0u32..24).prop_map(|(ptr, len)| Region { ptr, len }),
        2 => (pointer(), prop::sample::select(&[0u32, 1, 2][..]))
            .prop_map(move |(ptr, past)| Region { ptr, len: to_end(ptr, past) }),
        1 => (pointer(), prop::sample::select(vec![u32::MAX, u32::MAX - 1, 1 << 31, end, end + 1]))
            .prop_map(|(ptr, len)| Region { ptr, len }),
        1 => pointer().prop_map(|ptr| Region { ptr, len: 0u32.wrapping_sub(ptr) }),
        2 => prop::sample::select(FIXTURE_REGIONS)
            .prop_map(|(ptr, len)| Region { ptr, len }),
        1 => (any::<u32>(), any::<u32>()).prop_map(|(ptr, len)| Region { ptr, len }),
    ]
}

/// Regions of the fixtures: exactly, with a byte more or less; and of the empty start.
const FIXTURE_REGIONS: &[(u32, u32)] = &[
    (0x100, 6),
    (0x110, 12),
    (0x110, 13),
    (0x110, 7),
    (0x120, 4),
    (0x11c, 4),
    (0, 0),
    (0, 1),
];

fn slots() -> impl Strategy<Value = (u32, u32)> {
    (pointer(), pointer())
}

/// A map or buffer type: the defined ones mostly.
fn kind() -> impl Strategy<Value = u32> {
    prop_oneof![4 => 0u32..=9, 1 => any::<u32>()]
}

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        (0u32..=7, region()).prop_map(|(level, message)| Call::Log { level, message }),
        pointer().prop_map(|ret| Call::GetLogLevel { ret }),
        (kind(), region(), slots()).prop_map(|(map, key, ret)| Call::GetHeaderValue {
            map,
            key,
            ret
        }),
        (kind(), slots()).prop_map(|(map, ret)| Call::GetHeaderPairs { map, ret }),
        (kind(), pointer()).prop_map(|(map, ret)| Call::GetHeaderSize { map, ret }),
        (kind(), region(), region()).prop_map(|(map, key, value)| Call::AddHeader {
            map,
            key,
            value
        }),
        (kind(), region(), region()).prop_map(|(map, key, value)| Call::ReplaceHeader {
            map,
            key,
            value
        }),
        (kind(), region()).prop_map(|(map, key)| Call::RemoveHeader { map, key }),
        (kind(), region()).prop_map(|(map, pairs)| Call::SetHeaderPairs { map, pairs }),
        (kind(), any::<u32>(), any::<u32>(), slots()).prop_map(|(buffer, start, max, ret)| {
            Call::GetBuffer {
                buffer,
                start,
                max,
                ret,
            }
        }),
        (kind(), pointer(), pointer()).prop_map(|(buffer, size, flags)| Call::GetBufferStatus {
            buffer,
            size,
            flags
        }),
        (region(), slots()).prop_map(|(path, ret)| Call::GetProperty { path, ret }),
        (region(), region()).prop_map(|(path, value)| Call::SetProperty { path, value }),
        (region(), slots(), pointer()).prop_map(|(key, ret, cas)| Call::GetSharedData {
            key,
            ret,
            cas
        }),
        (region(), region(), prop_oneof![Just(0u32), any::<u32>()])
            .prop_map(|(key, value, cas)| Call::SetSharedData { key, value, cas }),
        (
            region(),
            region(),
            region(),
            region(),
            any::<u32>(),
            pointer()
        )
            .prop_map(|(upstream, headers, body, trailers, timeout, token)| {
                Call::Callout {
                    upstream,
                    headers,
                    body,
                    trailers,
                    timeout,
                    token,
                }
            }),
        (
            prop_oneof![100u32..=599, any::<u32>()],
            region(),
            region(),
            region(),
            any::<u32>()
        )
            .prop_map(
                |(status, details, body, headers, grpc)| Call::SendLocalResponse {
                    status,
                    details,
                    body,
                    headers,
                    grpc
                }
            ),
        (pointer(), slots()).prop_map(|(code, message)| Call::GetStatus { code, message }),
        (region(), region(), slots()).prop_map(|(name, arguments, ret)| {
            Call::ForeignFunction {
                name,
                arguments,
                ret,
            }
        }),
    ]
}

fn set_buffer() -> impl Strategy<Value = Call> {
    (kind(), any::<u32>(), any::<u32>(), region()).prop_map(|(buffer, start, size, data)| {
        Call::SetBuffer {
            buffer,
            start,
            size,
            data,
        }
    })
}

/// A request's calls, and the callback to make them in.
fn calls() -> impl Strategy<Value = (Phase, Vec<Call>)> {
    (
        prop_oneof![Just(Phase::Headers), Just(Phase::Body)],
        prop::collection::vec(prop_oneof![12 => call(), 1 => set_buffer()], 1..=MAX_CALLS),
    )
}

// ---------------------------------------------------------------------------------------------
// The host
// ---------------------------------------------------------------------------------------------

struct Host {
    host: FilterHost,
    route: Route,
    _dir: tempfile::TempDir,
}

fn load() -> Host {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("hostcalls.wasm");
    std::fs::write(&path, module()).expect("the module written");
    let yaml = format!(
        "listeners: [{{address: \"127.0.0.1:1\"}}]\n\
         workers: 1\n\
         wasm: {{module_cache: off}}\n\
         upstreams: {{origin: {{builtin: echo}}}}\n\
         filters:\n  proptest-hostcalls: {{module: \"{}\", config: {{any: thing}}}}\n\
         routes: [{{upstream: origin, filters: [proptest-hostcalls]}}]\n",
        path.display()
    );
    let config = config::from_str(&yaml, &dir.path().join("edgeward.yaml"))
        .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let host = FilterHost::load(&config).unwrap_or_else(|e| panic!("{e:?}"));
    let route = config.routes.into_iter().next().expect("one route");
    Host {
        host,
        route,
        _dir: dir,
    }
}

/// The request of `calls`, made in `phase`.
fn request(phase: Phase, calls: &[Call]) -> RequestHeader {
    let mut list = vec![u32::from(phase == Phase::Body)];
    for call in calls {
        let (op, args) = call.encode();
        assert_eq!(args.len(), IMPORTS[op].1, "{call:?}");
        list.push(op as u32);
        list.extend((0..10).map(|i| args.get(i).copied().unwrap_or(0)));
    }
    let hex: String = list
        .iter()
        .flat_map(|word| word.to_le_bytes())
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let mut req = RequestHeader::build("POST", b"/fuzz", None).expect("a request head");
    req.insert_header("host", "fuzz.test").expect("host");
    req.insert_header("x-fuzz", "yes").expect("x-fuzz");
    req.insert_header("x-calls", hex).expect("x-calls");
    req
}

/// Runs `calls` in one request; the statuses the guest got, or what went wrong.
async fn run(host: &Host, phase: Phase, calls: &[Call]) -> Result<Vec<u8>, String> {
    let mut chain = host
        .host
        .chain(&host.route, StreamInfo::default, Instant::now())
        .ok_or("no chain")?;
    let mut req = request(phase, calls);
    let verdict = match (phase, chain.on_request_headers(&mut req, false).await) {
        (Phase::Body, Verdict::Continue) => {
            let body = Some(Bytes::from_static(b"ping"));
            chain.on_request_body(&mut req, body, true).await.1
        }
        (_, verdict) => verdict,
    };
    chain.finish(&mut req, None);
    match verdict {
        Verdict::Respond(answer) if answer.body.len() == MAX_CALLS => {
            Ok(answer.body[..calls.len()].to_vec())
        }
        other => Err(format!("{phase:?}: {other:?}")),
    }
}

/// Checks the statuses of `calls` against what the ABI allows.
fn check(
    host: &Host,
    runtime: &tokio::runtime::Runtime,
    phase: Phase,
    calls: &[Call],
) -> Result<(), TestCaseError> {
    let statuses = runtime
        .block_on(run(host, phase, calls))
        .map_err(TestCaseError::fail)?;
    let image = image();
    let mut model = Model::new(phase);
    for (call, status) in calls.iter().zip(statuses) {
        let allowed = call.expected(&image, &mut model);
        prop_assert!(
            allowed.iter().any(|s| *s as u8 == status),
            "{:?} answered {} where the ABI says {:?} ({:?})",
            call,
            status,
            allowed,
            phase
        );
    }
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Every hostcall answers any pointers and sizes with the status the ABI's rules give:
/// INVALID_MEMORY_ACCESS exactly when something it must read or write lies outside memory,
/// and never a trap.
#[test]
fn hostcalls_answer_any_pointers_with_a_status() {
    let runtime = runtime();
    let host = runtime.block_on(async { load() });
    let mut runner = TestRunner::new(proptest_config());
    let property = |(phase, calls): (Phase, Vec<Call>)| check(&host, &runtime, phase, &calls);
    if let Err(failure) = runner.run(&calls(), property) {
        panic!("{failure}");
    }
}

// ---------------------------------------------------------------------------------------------
// The bounds check itself, and the map encoding guests send
// ---------------------------------------------------------------------------------------------

fn short_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..8)
}

proptest! {
    #![proptest_config(proptest_config())]

    /// `slice` is the bytes at `ptr..ptr + len` when they all lie in memory (an empty range
    /// at its very end included), and INVALID_MEMORY_ACCESS otherwise, with no overflow.
    #[test]
    fn slices_are_in_bounds_or_refused(
        size in 0usize..300,
        region in region(),
        scale in any::<bool>(),
    ) {
        // Regions aim at a 64 KiB memory; scaled down, they aim at this one.
        let region = if scale {
            Region { ptr: region.ptr % 512, len: region.len % 512 }
        } else {
            region
        };
        let memory: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let fits = u64::from(region.ptr) + u64::from(region.len) <= size as u64;
        match slice(&memory, region.ptr, region.len) {
            Ok(bytes) => {
                prop_assert!(fits);
                prop_assert_eq!(bytes.len(), region.len as usize);
                prop_assert!(std::ptr::eq(bytes.as_ptr(), memory[region.ptr as usize..].as_ptr()));
            }
            Err(status) => {
                prop_assert!(!fits);
                prop_assert_eq!(status, InvalidMemoryAccess);
            }
        }
    }

    /// Maps encode and decode back; any bytes decode to a map or to nothing, without panic.
    #[test]
    fn pairs_round_trip_and_any_bytes_decode_or_not(
        map in prop::collection::vec((short_bytes(), short_bytes()), 0..6),
        bytes in prop::collection::vec(any::<u8>(), 0..64),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
    ) {
        let encoded = pairs::encode(map.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
        let decoded = pairs::decode(&encoded);
        let expected: Vec<(&[u8], &[u8])> =
            map.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
        prop_assert_eq!(decoded, Some(expected));
        let _ = pairs::decode(&bytes);
        let mut edited = encoded.clone();
        for (at, byte) in edits {
            if !edited.is_empty() {
                let at = at.index(edited.len());
                edited[at] = byte;
            }
        }
        if let Some(decoded) = pairs::decode(&edited) {
            // What decodes is a map of the bytes given, which encodes back to them.
            let again = pairs::encode(decoded.iter().copied());
            prop_assert!(again == edited || edited == [0, 0, 0, 0], "{:?}", edited);
        }
    }
}

#[test]
fn the_guest_reports_what_the_host_answered() {
    // A smoke test of the harness: one call of each outcome the oracle predicts exactly.
    let runtime = runtime();
    let host = runtime.block_on(async { load() });
    let calls = [
        Call::Log {
            level: 2,
            message: Region { ptr: 0x100, len: 6 },
        },
        Call::Log {
            level: 9,
            message: Region { ptr: 0, len: 0 },
        },
        Call::Log {
            level: 2,
            message: Region {
                ptr: u32::MAX,
                len: 2,
            },
        },
        Call::GetHeaderValue {
            map: 0,
            key: Region { ptr: 0x120, len: 4 },
            ret: (16, 20),
        },
        Call::GetHeaderValue {
            map: 0,
            key: Region { ptr: 0x100, len: 5 },
            ret: (16, 20),
        },
        Call::GetProperty {
            path: Region {
                ptr: 0x110,
                len: 12,
            },
            ret: (16, 20),
        },
        Call::SetProperty {
            path: Region { ptr: 0, len: 1 },
            value: Region {
                ptr: 0,
                len: 65_536,
            },
        },
        Call::GetProperty {
            path: Region { ptr: 0, len: 0 },
            ret: (16, 20),
        },
    ];
    let statuses = runtime
        .block_on(run(&host, Phase::Body, &calls))
        .expect("statuses");
    assert_eq!(
        statuses,
        [
            Done,
            BadArgument,
            InvalidMemoryAccess,
            Done,
            NotFound,
            Done,
            Done,
            InternalFailure
        ]
        .map(|s| s as u8)
    );

    // In the request headers callback the head is writable.
    let region = |ptr, len| Region { ptr, len };
    let get = |key| Call::GetHeaderValue {
        map: 0,
        key,
        ret: (16, 20),
    };
    let calls = [
        // `x-fuzz: ` (an empty value), then `x-fuzz: \0` (not a value) and past the end.
        Call::ReplaceHeader {
            map: 0,
            key: region(0x100, 6),
            value: region(0, 0),
        },
        Call::AddHeader {
            map: 0,
            key: region(0x100, 6),
            value: region(0, 1),
        },
        Call::AddHeader {
            map: 0,
            key: region(0x100, 6),
            value: region(65_535, 2),
        },
        Call::RemoveHeader {
            map: 0,
            key: region(0x120, 4),
        },
        get(region(0x120, 4)),
        get(region(0x100, 6)),
        // Four zero bytes: the empty map, which leaves no field.
        Call::SetHeaderPairs {
            map: 0,
            pairs: region(0, 4),
        },
        get(region(0x100, 6)),
        Call::GetBuffer {
            buffer: 0,
            start: 0,
            max: u32::MAX,
            ret: (16, 20),
        },
    ];
    let statuses = runtime
        .block_on(run(&host, Phase::Headers, &calls))
        .expect("statuses");
    assert_eq!(
        statuses,
        [
            Done,
            BadArgument,
            InvalidMemoryAccess,
            Done,
            NotFound,
            Done,
            Done,
            NotFound,
            NotFound
        ]
        .map(|s| s as u8)
    );
}
