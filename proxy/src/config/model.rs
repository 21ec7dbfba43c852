//! The validated configuration: typed, resolved and cross-checked. This is what the rest of
//! edgeward reads; it never sees YAML.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};

use super::diagnostic::Mark;
use crate::tls::certificate::{Certificate, ServedName};

#[derive(Debug)]
pub struct Config {
    /// The file this configuration was read from (relative paths inside it start at its folder).
    pub source: PathBuf,
    /// SHA-256 of the configuration's text, hex: which version of the file is in use.
    pub source_sha256: String,
    /// The configuration file and every file it names that edgeward reads (filter modules,
    /// certificates and keys, the geo database).
    pub inputs: Vec<PathBuf>,
    pub listeners: Vec<Listener>,
    /// Worker threads serving the listeners.
    pub workers: usize,
    /// Whether the workers share one work-stealing tokio runtime (throughput) rather than each
    /// running a runtime of its own that serves its tasks in order (tail latency).
    pub work_stealing: bool,
    pub access_log: AccessLog,
    /// Properties filters set (dotted paths) that each access-log line shows when set.
    pub access_log_properties: Arc<[String]>,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    pub shutdown_timeout: Duration,
    /// Indexed by [`UpstreamId`].
    pub upstreams: Vec<Upstream>,
    /// In priority order: the first route that matches wins.
    pub routes: Vec<Route>,
    /// Indexed by [`FilterId`].
    pub filters: Vec<Filter>,
    pub wasm: WasmSettings,
    /// The admin listener (metrics, health), when configured.
    pub admin: Option<Admin>,
    /// Geolocation of clients, when configured.
    pub geo: Option<GeoSettings>,
    /// The HTTP cache, when a route caches or the `cache` section is present.
    pub cache: Option<CacheSettings>,
    /// Who this edgeward is, for filters' `node` properties.
    pub node: Arc<Node>,
}

/// Envoy's bootstrap node, as filters read it (`node.id`, `node.metadata.<key>`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    pub id: String,
    pub cluster: String,
    pub metadata: BTreeMap<String, String>,
}

/// Envoy's `filter_metadata` of a route or upstream: namespace, then key, then value; read by
/// filters as `route_metadata` and `cluster_metadata` properties.
pub type Metadata = BTreeMap<String, BTreeMap<String, String>>;

/// The process-wide HTTP cache: its storage bounds and who may purge it.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// Most bytes the memory tier holds (bodies, headers and bookkeeping).
    pub memory: u64,
    /// A second tier on disk that survives restarts.
    pub disk: Option<DiskCache>,
    /// Larger responses stream through without being stored.
    pub max_object: u64,
    /// How long concurrent misses wait for the one request fetching the object.
    pub lock_timeout: Duration,
    /// Clients that may send `PURGE` requests.
    pub purge_allowed_from: Vec<ipnet::IpNet>,
}

#[derive(Debug, Clone)]
pub struct DiskCache {
    pub path: PathBuf,
    /// Most bytes the files on disk take.
    pub size: u64,
}

/// How a route caches.
#[derive(Debug, Clone)]
pub struct RouteCache {
    /// Freshness of responses that state none; `None`: such responses are not stored.
    pub default_ttl: Option<Duration>,
    /// What tells two requests' responses apart.
    pub key: Vec<KeyPart>,
    /// Requests carrying any of these headers skip the cache.
    pub bypass_headers: Vec<HeaderName>,
    /// Requests carrying any of these cookies skip the cache.
    pub bypass_cookies: Vec<String>,
    /// Used when the response gives no `stale-while-revalidate`.
    pub stale_while_revalidate: Duration,
    /// Used when the response gives no `stale-if-error`.
    pub stale_if_error: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    /// Lower-case, without port.
    Host,
    Path,
    Query,
    Header(HeaderName),
    Cookie(String),
}

#[derive(Debug, Clone)]
pub struct GeoSettings {
    /// A MaxMind database (`.mmdb`): country, city or ASN.
    pub database: PathBuf,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

#[derive(Debug, Clone)]
pub struct Admin {
    pub address: SocketAddr,
    /// Required (`Authorization: Bearer …`) by the endpoints that change state; without it
    /// they answer loopback clients only.
    pub token: Option<AdminToken>,
}

/// The admin token. Its `Debug` shows a digest, never the token, so that it can be logged and
/// compared.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(pub String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(self.0.as_bytes());
        write!(f, "AdminToken(sha256:{})", hex::encode(&digest[..4]))
    }
}

/// Settings of the WebAssembly engine shared by every filter.
#[derive(Debug, Clone)]
pub struct WasmSettings {
    /// Where compiled filter code is kept between runs; `None` compiles on every start.
    pub module_cache: Option<PathBuf>,
    /// Instances that may exist at once (all filters, both isolation modes).
    pub max_instances: u32,
    /// Whether filters' compiled functions are listed in `/tmp/perf-<pid>.map` for profilers.
    pub perf_map: bool,
}

/// Index of a filter in [`Config::filters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FilterId(pub usize);

/// A named proxy-wasm filter instance: a module plus its configuration and limits.
#[derive(Debug, Clone)]
pub struct Filter {
    pub name: String,
    pub module: PathBuf,
    /// Delivered to `on_configure` (JSON text, or the plain string as written).
    pub config: Vec<u8>,
    /// Delivered to `on_vm_start`.
    pub vm_config: Vec<u8>,
    /// The plugin root id (`plugin_root_id`) that selects the filter's root context.
    pub root_id: String,
    pub isolation: Isolation,
    pub limits: FilterLimits,
    pub on_error: FailurePolicy,
    /// Filters with the same VM id share data and queues (default: the module's file name).
    pub vm_id: String,
    /// Upstreams the filter may call with `proxy_http_call`.
    pub callouts: Vec<UpstreamId>,
    /// Whether the response callbacks shape what is cached or what each client gets.
    pub response_phase: ResponsePhase,
    /// Where the filter, its `config` and its `vm_config` are in the file, for messages
    /// about them (a filter that rejects its configuration).
    pub at: Option<Mark>,
    pub config_at: Option<Mark>,
    pub vm_config_at: Option<Mark>,
}

/// Where a filter's response callbacks run relative to the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponsePhase {
    /// On every response, hits included, after the cache: per-client changes are never stored.
    AfterCache,
    /// On responses from the upstream only, before they are stored: changes are cached.
    BeforeCache,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Long-lived instances reused by many requests (one per worker), as in Envoy.
    Shared,
    /// A fresh instance for every request, never touched by another request.
    Request,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterLimits {
    /// Linear memory cap of one instance, in bytes.
    pub memory: u64,
    /// Guest CPU time one request may use in this filter.
    pub cpu: Duration,
    /// Most body bytes the filter may hold buffered.
    pub body: u64,
}

/// What happens to a request when its filter traps or exceeds a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Answer with an error (500, or 503 for resource limits).
    FailClosed,
    /// Skip the filter for the rest of the request.
    FailOpen,
}

/// A listener: plain HTTP (HTTP/1.x and cleartext HTTP/2 with prior knowledge), or HTTPS
/// when it has `tls` (HTTP/1.x and HTTP/2 as ALPN negotiates).
#[derive(Debug, Clone)]
pub struct Listener {
    pub address: SocketAddr,
    pub client: ClientLimits,
    pub tls: Option<ListenerTls>,
    /// A plain-HTTP listener that answers every request with `308` to `https://` on this
    /// port.
    pub redirect_https: Option<u16>,
}

/// What a TLS listener serves.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    /// In the order written; the first that serves a name wins.
    pub certificates: Vec<TlsCertificate>,
    /// For clients that send no SNI, or one no certificate serves.
    pub default: TlsDefault,
    pub min_version: TlsVersion,
    /// Offered in this order of preference; empty: no ALPN (HTTP/1.x only).
    pub alpn: Vec<Alpn>,
    /// How often the certificate and key files are looked at for a rotation.
    pub reload_interval: Duration,
}

/// One certificate of a listener, loaded and checked.
#[derive(Debug, Clone)]
pub struct TlsCertificate {
    /// The `cert` path as written in the configuration: the certificate's name in messages
    /// and metrics.
    pub name: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `hosts` as configured.
    pub(crate) hosts: Option<Vec<ServedName>>,
    /// The names SNI is matched against: `hosts` when given, else the certificate's DNS
    /// names.
    pub(crate) served: Vec<ServedName>,
    pub(crate) loaded: Arc<Certificate>,
}

impl TlsCertificate {
    /// `loaded` served under `name`, for `hosts` or else for its own names.
    pub(crate) fn new(
        name: String,
        cert: PathBuf,
        key: PathBuf,
        hosts: Option<Vec<ServedName>>,
        loaded: Certificate,
    ) -> TlsCertificate {
        let served = match &hosts {
            Some(hosts) => hosts.clone(),
            None => loaded.served_names(&name),
        };
        TlsCertificate {
            name,
            cert,
            key,
            hosts,
            served,
            loaded: Arc::new(loaded),
        }
    }

    /// The same certificate entry serving `loaded`, a new version of its files.
    pub(crate) fn replaced_by(&self, loaded: Certificate) -> TlsCertificate {
        TlsCertificate::new(
            self.name.clone(),
            self.cert.clone(),
            self.key.clone(),
            self.hosts.clone(),
            loaded,
        )
    }
}

/// The certificate for a client whose SNI no certificate serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsDefault {
    /// Index in [`ListenerTls::certificates`].
    Certificate(usize),
    /// The handshake fails.
    Reject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// Application protocols a TLS listener offers in ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    H2,
    Http11,
}

impl Alpn {
    /// The protocol's ALPN identifier.
    pub fn id(self) -> &'static [u8] {
        match self {
            Alpn::H2 => b"h2",
            Alpn::Http11 => b"http/1.1",
        }
    }
}

/// What a listener allows each client: how long it may take to send a request head, stay
/// idle between requests, or pause inside a request body; and how many connections may be
/// open at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// From accept (or the first byte of a request on a reused connection) until its head
    /// is complete.
    pub header_timeout: Duration,
    /// A kept-alive connection without a request.
    pub idle_timeout: Duration,
    /// The longest gap between request body bytes.
    pub body_timeout: Duration,
    pub max_connections: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            max_connections: 10_000,
        }
    }
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
    /// `None`: cleartext.
    pub tls: Option<OriginTls>,
    pub protocol: UpstreamProtocol,
    pub metadata: Arc<Metadata>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Resolved at load time; a hostname contributes every address it resolves to.
    Endpoints(Vec<Endpoint>),
    Builtin(Builtin),
}

/// One address of an upstream, with the name it was written with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// The host name or address literal of the entry that gave this address: the SNI and
    /// the name the origin's certificate must carry, unless `tls.sni` says otherwise.
    pub host: String,
}

/// How edgeward speaks TLS to an upstream's endpoints.
#[derive(Debug, Clone)]
pub struct OriginTls {
    /// Sent as SNI and verified instead of each endpoint's own host name.
    pub sni: Option<String>,
    /// Whether the origin's certificate must chain to a trusted root and carry the name.
    pub verify: bool,
    /// Roots trusted instead of the system's (DER); `None`: the system's roots.
    pub ca: Option<Arc<Vec<Vec<u8>>>>,
    /// Shown to origins that ask for a client certificate.
    pub(crate) client_identity: Option<Arc<crate::tls::certificate::ClientIdentity>>,
}

/// The HTTP version edgeward speaks to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    /// HTTP/2 only: over TLS by ALPN, in cleartext with prior knowledge (h2c).
    Http2,
    /// Over TLS, HTTP/2 when the origin offers it in ALPN, HTTP/1.1 otherwise.
    Negotiated,
}

/// Origins served inside edgeward itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Builtin {
    /// Answers every request with a JSON description of what it received.
    Echo,
    /// Answers every request with what these filters answer (their local response), so
    /// that the answer travels the proxy path of any origin's: cached, retried, logged.
    Filters(Vec<FilterId>),
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
    /// Host header of the probe; defaults to the endpoint's host as written.
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
    /// Run in this order on requests and in reverse order on responses.
    pub filters: Vec<FilterId>,
    /// Longest time filters may hold the request before it reaches the upstream.
    pub timeout: Duration,
    /// Caching for this route, when enabled.
    pub cache: Option<RouteCache>,
    pub metadata: Arc<Metadata>,
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
