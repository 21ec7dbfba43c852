//! End-to-end scenarios: the real `edgeward` binary, real origins, a real HTTP client, all on
//! loopback. Each module covers one area; `support` holds the few shared helpers.

// Panicking with a message is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod ab_test;
mod admin;
mod api_compose;
mod balancing;
mod bodies;
mod cache;
mod cli;
mod clients;
mod demo;
mod failures;
mod fidelity;
mod filters;
mod geo;
mod guide;
mod host_services;
mod hostile_config;
mod image_resize;
mod json_transform;
mod jwt;
mod lifecycle;
mod origin_tls;
mod rate_limit;
mod reload;
mod routing;
mod support;
mod tls;
mod toolkit;
