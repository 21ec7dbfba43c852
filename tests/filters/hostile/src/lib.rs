//! `hostile`: misbehaves on purpose, chosen by the request path, to test the host's defences.
//!
//! No config (any configuration is ignored). In request headers it reads `:path` (query
//! string ignored), logs `hostile: request for <path>` at warn level, and:
//!
//! - `/loop`: spins forever; the host must interrupt it (fuel / epoch deadline).
//! - `/oom`: allocates and fills 1 MiB chunks, keeping them all, until an allocation fails
//!   (at the host's memory limit, at the latest at 4 GiB), which aborts, i.e. traps.
//! - `/trap`: panics ("hostile filter panics on purpose"); the SDK's panic hook logs it at
//!   critical level, then `panic = "abort"` turns it into a wasm trap.
//! - `/bad-pointers`: calls raw ABI hostcalls with garbage — pointers past the end of
//!   memory, absurd sizes, an unknown map type and buffer type, a header-pairs blob claiming
//!   a million pairs — and records the status each call returns. It then makes one ordinary
//!   call (`get_http_request_header(":path")`) to show the instance still works, and returns
//!   `Continue`. In response headers it sets `x-statuses` to the comma-joined statuses (in
//!   the order of [`feed_garbage`]) and `x-still-alive` to `yes` if that ordinary call read
//!   back `/bad-pointers` (`no` otherwise).
//! - `/slow-body?ms=N`: every request body callback (each chunk) spins for `N` ms of
//!   wall-clock time (default 20), measured on the monotonic clock, then returns `Continue`.
//!   No single callback uses more CPU time than that, but a long body adds them up.
//! - `/property-flood`: sets properties of 256 KiB each under new names, 8 of them: the
//!   host bounds what a request's properties hold, refuses one, and the SDK traps on that.
//! - any other path: nothing more, `Continue`, so a test can show the proxy still serves.

use std::hint::black_box;
use std::ptr;
use std::time::{Duration, Instant};

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root));
}}

// The ABI's own hostcalls, declared again so that they can be called with arguments the SDK
// would never produce.
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *const u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_set_header_map_pairs(map_type: u32, map_data: *const u8, map_size: usize) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *const u8,
        return_buffer_size: *mut usize,
    ) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *const u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
}

/// An address past the end of any linear memory this module will have.
const WILD: usize = 0xFFFF_FFF0;
/// A size no message, key or path here comes close to.
const HUGE: usize = 0x7FFF_FFFF;
const LOG_LEVEL_INFO: u32 = 2;
const MAP_REQUEST_HEADERS: u32 = 0;
const MAP_TYPE_UNKNOWN: u32 = 99;
const BUFFER_TYPE_UNKNOWN: u32 = 42;

/// Calls hostcalls with invalid arguments and returns each call's status, in this order
/// (with the status a host that validates everything answers):
///
/// 1. `proxy_log`, message pointer past the end of memory — 6 (InvalidMemoryAccess)
/// 2. `proxy_log`, valid pointer, size 0x7FFF_FFFF — 6
/// 3. `proxy_get_header_map_value`, map type 99 — 2 (BadArgument)
/// 4. `proxy_get_header_map_value`, key pointer past the end of memory — 6
/// 5. `proxy_get_header_map_value`, valid key pointer, key size `usize::MAX` — 6
/// 6. `proxy_get_header_map_value` of `:path`, both return pointers past the end — 6
/// 7. `proxy_get_buffer_bytes`, buffer type 42 — 2
/// 8. `proxy_set_header_map_pairs` on request headers, a 12-byte blob whose count says
///    1,000,000 pairs — 2 (Envoy treats it as an empty map: clears the headers, answers 0)
/// 9. `proxy_set_header_map_pairs`, pointer past the end of memory — 6
/// 10. `proxy_get_property`, path pointer past the end of memory — 6
/// 11. `proxy_get_property`, valid pointer, size 0x7FFF_FFFF — 6
/// 12. `proxy_send_local_response`, body pointer past the end with size `usize::MAX` — 6
///     (it must not send anything)
fn feed_garbage() -> Vec<u32> {
    let key = b":path";
    let property_path = b"request\0path";
    let mut million_pairs = Vec::new();
    for word in [1_000_000u32, 1, 1] {
        million_pairs.extend_from_slice(&word.to_le_bytes());
    }
    let mut data: *const u8 = ptr::null();
    let mut size: usize = 0;
    let wild_data = WILD as *mut *const u8;
    let wild_size = WILD as *mut usize;
    // SAFETY: every call below breaks the ABI contract on purpose, which is the point of this
    // filter. The host must validate each pointer, size and enum it is given and answer with a
    // status instead of touching memory outside this module's. The guest only hands the host
    // valid `data`/`size` slots (or wild ones, which the host must refuse to write), and never
    // reads what the host may have stored in them.
    unsafe {
        vec![
            proxy_log(LOG_LEVEL_INFO, WILD as *const u8, 16),
            proxy_log(LOG_LEVEL_INFO, key.as_ptr(), HUGE),
            proxy_get_header_map_value(
                MAP_TYPE_UNKNOWN,
                key.as_ptr(),
                key.len(),
                &mut data,
                &mut size,
            ),
            proxy_get_header_map_value(
                MAP_REQUEST_HEADERS,
                WILD as *const u8,
                key.len(),
                &mut data,
                &mut size,
            ),
            proxy_get_header_map_value(
                MAP_REQUEST_HEADERS,
                key.as_ptr(),
                usize::MAX,
                &mut data,
                &mut size,
            ),
            proxy_get_header_map_value(
                MAP_REQUEST_HEADERS,
                key.as_ptr(),
                key.len(),
                wild_data,
                wild_size,
            ),
            proxy_get_buffer_bytes(BUFFER_TYPE_UNKNOWN, 0, 16, &mut data, &mut size),
            proxy_set_header_map_pairs(
                MAP_REQUEST_HEADERS,
                million_pairs.as_ptr(),
                million_pairs.len(),
            ),
            proxy_set_header_map_pairs(MAP_REQUEST_HEADERS, WILD as *const u8, 64),
            proxy_get_property(WILD as *const u8, 16, &mut data, &mut size),
            proxy_get_property(property_path.as_ptr(), HUGE, &mut data, &mut size),
            proxy_send_local_response(
                500,
                ptr::null(),
                0,
                WILD as *const u8,
                usize::MAX,
                ptr::null(),
                0,
                -1,
            ),
        ]
    }
}

fn spin_forever() -> ! {
    let mut spins: u64 = 0;
    loop {
        spins = black_box(spins.wrapping_add(1));
    }
}

/// Spins for `duration` of wall-clock time: at most that much CPU time.
fn spin_for(duration: Duration) {
    let start = Instant::now();
    let mut spins: u64 = 0;
    while start.elapsed() < duration {
        spins = black_box(spins.wrapping_add(1));
    }
}

/// The `ms` query parameter of a path, if present and a number.
fn query_ms(path_and_query: &str) -> Option<u64> {
    let (_, query) = path_and_query.split_once('?')?;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("ms="))
        .and_then(|ms| ms.parse().ok())
}

fn hoard_memory() -> ! {
    const CHUNK: usize = 1 << 20;
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(black_box(vec![1u8; CHUNK]));
    }
}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Hostile {
            report: None,
            body_spin: None,
        }))
    }
}

/// What `/bad-pointers` found out, for the response headers.
struct Report {
    statuses: String,
    still_alive: bool,
}

struct Hostile {
    report: Option<Report>,
    /// How long each request body callback spins (`/slow-body`).
    body_spin: Option<Duration>,
}

impl Context for Hostile {}

impl HttpContext for Hostile {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let path_and_query = self.get_http_request_header(":path").unwrap_or_default();
        let path = path_and_query.split('?').next().unwrap_or_default();
        log::warn!("hostile: request for {path}");
        match path {
            "/loop" => spin_forever(),
            "/oom" => hoard_memory(),
            "/trap" => panic!("hostile filter panics on purpose"),
            "/property-flood" => {
                let value = vec![b'x'; 256 * 1024];
                for n in 0..8 {
                    self.set_property(vec![&format!("flood.{n}")], Some(&value));
                }
            }
            "/bad-pointers" => {
                let statuses: Vec<String> = feed_garbage().iter().map(u32::to_string).collect();
                let path_again = self.get_http_request_header(":path");
                self.report = Some(Report {
                    statuses: statuses.join(","),
                    still_alive: path_again.is_some_and(|p| p.starts_with("/bad-pointers")),
                });
            }
            "/slow-body" => {
                let ms = query_ms(&path_and_query).unwrap_or(20);
                self.body_spin = Some(Duration::from_millis(ms));
            }
            _ => {}
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        if let Some(duration) = self.body_spin {
            spin_for(duration);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(report) = &self.report {
            self.set_http_response_header("x-statuses", Some(&report.statuses));
            let alive = if report.still_alive { "yes" } else { "no" };
            self.set_http_response_header("x-still-alive", Some(alive));
        }
        Action::Continue
    }
}
