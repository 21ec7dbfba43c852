//! edgeward: an edge reverse proxy built on Pingora that runs proxy-wasm filters.
//!
//! The rooms, in dependency order (see docs/architecture.md): `config` (YAML → model),
//! `routing`, `upstream`, `access_log`, then `edge` (the Pingora conductor) and `server`.

pub mod access_log;
pub mod admin;
pub mod body_length;
pub mod cache;
pub mod config;
pub mod edge;
pub mod fields;
pub mod geo;
pub mod local_http;
pub mod metrics;
pub mod request_buffering;
pub mod routing;
pub mod server;
pub mod sync;
pub mod upstream;
pub mod wasm;
