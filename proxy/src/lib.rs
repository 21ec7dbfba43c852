//! edgeward: an edge reverse proxy built on Pingora that runs proxy-wasm filters.
//!
//! The library serves the `edgeward` command (main.rs) and the benchmarks: they reach the
//! configuration, the geo database, the filter host and the server; everything else is
//! private to the crate. docs/architecture.md describes the modules and their layers.

// Items are `pub(crate)` unless the command or the benchmarks use them.
#![warn(unreachable_pub)]

mod access_log;
mod admin;
mod answer;
mod body_length;
mod cache;
mod causes;
pub use causes::describe;
pub mod config;
mod connections;
mod edge;
mod fields;
mod filter_origin;
pub mod geo;
mod local_http;
mod metrics;
mod request_buffering;
mod routing;
mod runtime;
pub mod scaffold;
pub mod server;
mod sync;
mod tls;
pub mod trial;
mod upgrade;
mod upstream;
pub mod wasm;
