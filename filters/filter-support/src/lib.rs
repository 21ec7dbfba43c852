//! Small helpers every edgeward filter wants, kept in one place: the root context that reads
//! the configuration ([`root`]), following the host's log level, reading properties,
//! `${property}` templates ([`template`]), and hostcalls that answer a status instead of
//! trapping ([`host`]).

#![deny(unsafe_code)]

pub mod host;
pub mod root;
pub mod template;

use proxy_wasm::hostcalls;
use proxy_wasm::types::LogLevel;

/// Logs at the level the host has for filters, so that debug lines cost nothing unless the
/// host wants them (`EDGEWARD_LOG=edgeward::filter=debug`); errors are always kept. Call it
/// from `on_configure`, when the host answers `proxy_get_log_level`.
pub fn follow_host_log_level() {
    if let Ok(level) = hostcalls::get_log_level() {
        proxy_wasm::set_log_level(match level {
            LogLevel::Critical => LogLevel::Error,
            level => level,
        });
    }
}

/// Reads a property; a missing one reads as `None`, and so does a status the SDK reports as
/// an error (logged at debug level with `filter`'s name: a property the host does not know).
pub fn property(filter: &str, path: &[&str]) -> Option<Vec<u8>> {
    match hostcalls::get_property(path.to_vec()) {
        Ok(value) => value,
        Err(status) => {
            log::debug!(
                "{filter}: reading property `{}` failed: {status:?}",
                path.join(".")
            );
            None
        }
    }
}
