//! Harness for edgeward's end-to-end tests.
//!
//! Tests read as scenarios: start real [`Origin`]s, start the real edgeward binary as a
//! [`Proxy`] with a YAML config, send real HTTP requests with the [`client`] helpers and
//! assert on real responses. All traffic stays on 127.0.0.1.

// Panicking with a helpful message is how test helpers report failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod client;
pub mod filters;
pub mod origin;
mod pattern;
pub mod proxy;

pub use origin::{expected_bytes_sha256, serve_http, Origin, OriginTls, PathHits};
pub use proxy::{
    run_edgeward, run_edgeward_bounded, set_default_binary, BoundedRun, DeadEndpoint, Proxy,
    ProxyBuilder,
};
/// The HTTP client the helpers return, re-exported so tests name the same version.
pub use reqwest;
