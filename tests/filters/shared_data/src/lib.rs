//! Shared-data helpers used by the test filters: read a key as text, and update a key with
//! a compare-and-swap loop.
//!
//! Shared data (`proxy_get_shared_data` / `proxy_set_shared_data`) is shared by every
//! instance with the same vm_id, so concurrent writers are normal. An update therefore
//! reads the value with its CAS, writes the new value with that CAS, and starts again when
//! the host answers `CasMismatch` (someone wrote in between).
//!
//! One gap is inherent to the ABI: a missing key has no CAS (0), and a write with CAS 0 is
//! unconditional, so two writers racing to create the same key can both succeed and one of
//! the two updates is lost. Once the key exists every update is counted.

use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;

/// How many times [`update`] tries before giving up with `CasMismatch`: far more than any
/// test's contention needs, but a host whose CAS never matches cannot make a filter spin.
const MAX_ATTEMPTS: usize = 100;

/// The value of `key` as text (lossily decoded), or `None` if the key is not set.
pub fn get_text(key: &str) -> Option<String> {
    let (value, _cas) = hostcalls::get_shared_data(key).ok()?;
    value.map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

/// Replaces the value of `key` with `next(current value)` (`None` when the key is not set),
/// retrying on `CasMismatch`; returns the value written.
///
/// # Errors
/// `CasMismatch` after [`MAX_ATTEMPTS`] lost races, or any other status the host answers.
pub fn update(key: &str, next: impl Fn(Option<&[u8]>) -> Vec<u8>) -> Result<Vec<u8>, Status> {
    for _ in 0..MAX_ATTEMPTS {
        let (current, cas) = hostcalls::get_shared_data(key)?;
        let value = next(current.as_deref());
        match hostcalls::set_shared_data(key, Some(&value), cas) {
            Ok(()) => return Ok(value),
            Err(Status::CasMismatch) => continue,
            Err(status) => return Err(status),
        }
    }
    Err(Status::CasMismatch)
}

/// Adds 1 to the decimal integer stored as text in `key` (a missing or unparsable value
/// counts as 0); returns the new count.
///
/// # Errors
/// As [`update`].
pub fn increment(key: &str) -> Result<u64, Status> {
    let value = update(key, |current| (count(current) + 1).to_string().into_bytes())?;
    Ok(count(Some(&value)))
}

fn count(value: Option<&[u8]>) -> u64 {
    value
        .and_then(|bytes| std::str::from_utf8(bytes).ok())
        .and_then(|text| text.parse().ok())
        .unwrap_or(0)
}
