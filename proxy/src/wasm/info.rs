//! What filters can learn about themselves and about the request: the configured filter as
//! its guest sees it, and the facts about a request that properties expose.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use crate::config::{FilterLimits, Metadata, ResponsePhase, UpstreamId};
use crate::geo::{Geo, GeoInfo};

/// A configured filter as its guest code sees it.
#[derive(Debug)]
pub(crate) struct PluginInfo {
    pub name: String,
    pub root_id: String,
    pub vm_id: String,
    pub config: Vec<u8>,
    pub vm_config: Vec<u8>,
    pub limits: FilterLimits,
    /// Upstreams `proxy_http_call` may name, with their ids.
    pub callouts: Vec<(String, UpstreamId)>,
    pub response_phase: ResponsePhase,
}

impl PluginInfo {
    /// A filter examined without a configuration (`filter inspect`): never runs.
    pub(crate) fn inspected() -> PluginInfo {
        PluginInfo {
            name: "inspected".to_string(),
            root_id: String::new(),
            vm_id: String::new(),
            config: Vec::new(),
            vm_config: Vec::new(),
            limits: FilterLimits {
                memory: 0,
                cpu: std::time::Duration::ZERO,
                body: 0,
            },
            callouts: Vec::new(),
            response_phase: ResponsePhase::AfterCache,
        }
    }
}

/// Facts about the request that properties expose, shared by the filters of a chain.
#[derive(Debug, Clone)]
pub struct StreamInfo {
    pub(crate) client: Option<SocketAddr>,
    pub(crate) server: Option<SocketAddr>,
    pub(crate) protocol: &'static str,
    /// `https` on a TLS listener, `http` otherwise.
    pub(crate) scheme: &'static str,
    /// The client connection's TLS version (`TLSv1.3`), on a TLS listener.
    pub(crate) tls_version: Option<std::borrow::Cow<'static, str>>,
    pub(crate) request_id: String,
    pub(crate) route: Arc<str>,
    pub(crate) upstream: Arc<str>,
    pub(crate) upstream_address: Option<SocketAddr>,
    /// Endpoints tried for this request so far (retries after a failed connect count).
    pub(crate) upstream_attempts: u32,
    pub(crate) started: SystemTime,
    pub(crate) started_at: Instant,
    pub(crate) request_body_bytes: u64,
    pub(crate) response_body_bytes: u64,
    /// Properties filters set with `proxy_set_property`, visible to the whole chain.
    pub(crate) custom: HashMap<Vec<u8>, Vec<u8>>,
    /// The bytes of `custom`'s paths and values, against the host's bound.
    pub(crate) custom_bytes: usize,
    /// The client address geolocation uses (the peer, or behind trusted proxies the
    /// forwarded client), and the database, looked up at most once, when a filter asks.
    pub(crate) effective_address: Option<std::net::IpAddr>,
    pub(crate) geo: Option<Arc<Geo>>,
    pub(crate) geo_info: OnceLock<Arc<GeoInfo>>,
    /// The upstream a filter chose with `route.upstream` instead of the route's.
    pub(crate) upstream_override: Option<UpstreamId>,
    /// A filter called `clear_route_cache`: route the request again after its headers.
    pub(crate) route_cache_cleared: bool,
    /// What answered the request (`response.code_details`), once it is known; until then
    /// the response under way is the upstream's.
    pub(crate) code_details: Option<std::borrow::Cow<'static, str>>,
    /// Envoy's response flags for how the request ended (`response.flags`), once known.
    pub(crate) response_flags: u64,
    /// The route's metadata (`route_metadata`) and its upstream (for `cluster_metadata`,
    /// unless a filter chose another).
    pub(crate) route_metadata: Arc<Metadata>,
    pub(crate) route_upstream: Option<UpstreamId>,
    /// The local address of the connection to the upstream, once connected.
    pub(crate) upstream_local_address: Option<SocketAddr>,
    /// The name the client asked for in its TLS handshake (SNI).
    pub(crate) requested_server_name: Option<Arc<str>>,
}

impl StreamInfo {
    /// The geolocation of the effective client address (looked up once).
    pub(crate) fn geo_info(&self) -> Option<&GeoInfo> {
        let (geo, address) = (self.geo.as_ref()?, self.effective_address?);
        Some(self.geo_info.get_or_init(|| geo.lookup(address)).as_ref())
    }
}

impl Default for StreamInfo {
    fn default() -> Self {
        StreamInfo {
            client: None,
            server: None,
            protocol: "HTTP/1.1",
            scheme: "http",
            tls_version: None,
            request_id: String::new(),
            route: Arc::from(""),
            upstream: Arc::from(""),
            upstream_address: None,
            upstream_attempts: 0,
            started: SystemTime::now(),
            started_at: Instant::now(),
            request_body_bytes: 0,
            response_body_bytes: 0,
            custom: HashMap::new(),
            custom_bytes: 0,
            effective_address: None,
            geo: None,
            geo_info: OnceLock::new(),
            upstream_override: None,
            route_cache_cleared: false,
            code_details: None,
            response_flags: 0,
            route_metadata: Arc::default(),
            route_upstream: None,
            upstream_local_address: None,
            requested_server_name: None,
        }
    }
}
