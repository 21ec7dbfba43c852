//! Plugin-configuration parsing shared by the test filters.
//!
//! Every filter's `on_configure` does the same thing: take the bytes of
//! `get_plugin_configuration()`, decode them as JSON into the filter's `Config`, and on
//! failure log `"<filter>: invalid configuration: <error>"` at error level and return `false`
//! (which makes the host reject the plugin). This crate holds that once, so the filters keep
//! only their own validation and the log lines stay the same across all of them.
//!
//! It takes the raw `Option<Vec<u8>>` rather than calling the SDK itself, so it needs no
//! `proxy-wasm` dependency: call it as
//! `filter_config::parse("name", self.get_plugin_configuration())`.

use serde::de::DeserializeOwned;

/// Decodes an optional configuration: a missing or empty one is `T::default()`, so the filter
/// can be configured with nothing at all.
///
/// Returns `None` when the bytes are not valid JSON for `T`, after logging
/// `"{filter}: invalid configuration: {err}"` at error level; `on_configure` should then
/// return `false`.
pub fn parse<T: DeserializeOwned + Default>(filter: &str, raw: Option<Vec<u8>>) -> Option<T> {
    match raw {
        Some(raw) if !raw.is_empty() => decode(filter, &raw),
        _ => Some(T::default()),
    }
}

/// Decodes a required configuration: for filters with no sensible default, a missing or
/// empty configuration is invalid too.
///
/// Returns `None` on any failure, after logging `"{filter}: invalid configuration: {err}"` at
/// error level; a missing or empty configuration is decoded as empty JSON input, so its
/// error is serde_json's own ("EOF while parsing a value ...").
pub fn parse_required<T: DeserializeOwned>(filter: &str, raw: Option<Vec<u8>>) -> Option<T> {
    decode(filter, &raw.unwrap_or_default())
}

fn decode<T: DeserializeOwned>(filter: &str, raw: &[u8]) -> Option<T> {
    match serde_json::from_slice(raw) {
        Ok(config) => Some(config),
        Err(err) => {
            log::error!("{filter}: invalid configuration: {err}");
            None
        }
    }
}
