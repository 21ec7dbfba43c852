//! The validated configuration: typed, resolved and cross-checked. This is what the rest of
//! edgeward reads; it never sees YAML.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};

#[derive(Debug)]
pub struct Config {
    /// The file this configuration was read from (relative paths inside it start at its folder).
    pub source: PathBuf,
    pub listeners: Vec<Listener>,
    /// Worker threads serving the listeners.
    pub workers: usize,
    pub access_log: AccessLog,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    pub shutdown_timeout: Duration,
    /// Indexed by [`UpstreamId`].
    pub upstreams: Vec<Upstream>,
    /// In priority order: the first route that matches wins.
    pub routes: Vec<Route>,
}

/// A plain-HTTP listener; it speaks HTTP/1.x and cleartext HTTP/2 (prior knowledge).
#[derive(Debug, Clone)]
pub struct Listener {
    pub address: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLog {
    Off,
    Stdout,
    Stderr,
    File(PathBuf),
}

/// Index of an upstream in [`Config::upstreams`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UpstreamId(pub usize);

#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    pub origin: Origin,
    pub balancing: Balancing,
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes from the upstream.
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// How long an unused pooled connection is kept.
    pub idle_timeout: Duration,
    /// Extra attempts, on other endpoints where possible, when connecting fails.
    pub retries: u32,
    pub health_check: Option<HealthCheck>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Resolved at load time; a hostname contributes every address it resolves to.
    Endpoints(Vec<SocketAddr>),
    Builtin(Builtin),
}

/// Origins served inside edgeward itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// Answers every request with a JSON description of what it received.
    Echo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balancing {
    RoundRobin,
    Random,
    /// Ketama hashing of the request URI: the same URI goes to the same endpoint.
    ConsistentHash,
}

#[derive(Debug, Clone)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Host header of the probe; defaults to the endpoint address.
    pub host: Option<String>,
    /// Consecutive successes that bring an endpoint back into rotation.
    pub healthy_threshold: usize,
    /// Consecutive failures that take an endpoint out of rotation.
    pub unhealthy_threshold: usize,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub matcher: RouteMatch,
    pub upstream: UpstreamId,
    /// The matched `path_prefix` to remove before forwarding, when `strip_prefix` is set.
    pub strip_prefix: Option<String>,
    /// Host header sent upstream instead of the client's.
    pub host_rewrite: Option<HeaderValue>,
}

/// Every present condition must hold; an empty match accepts every request.
#[derive(Debug, Clone, Default)]
pub struct RouteMatch {
    pub host: Option<HostPattern>,
    pub path: Option<PathPattern>,
    /// Empty means any method.
    pub methods: Vec<Method>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Lower-case host without port.
    Exact(String),
    /// `*.example.com` is stored as `.example.com`: any subdomain, not the bare domain.
    Suffix(String),
}

#[derive(Debug, Clone)]
pub enum PathPattern {
    Prefix(String),
    Exact(String),
    /// Must match the whole path (without the query).
    Regex(regex::Regex),
}
