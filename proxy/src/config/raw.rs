//! The configuration file exactly as written: serde structs with positions on the values that
//! validation checks. Nothing outside `config` sees these; `validate` turns them into the model.
//! Leaf values stay strings here so that a bad value becomes a validation error with a
//! position, rather than stopping the parse.

use serde::Deserialize;

use super::yaml::Located;

/// A YAML mapping whose keys are user-chosen names, in file order.
#[derive(Debug)]
pub(super) struct Named<T>(pub Vec<(Located<String>, T)>);

impl<T> Default for Named<T> {
    fn default() -> Self {
        Named(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Named<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NamedVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for NamedVisitor<T> {
            type Value = Named<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a mapping of names to definitions")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Named(entries))
            }
        }
        deserializer.deserialize_map(NamedVisitor(std::marker::PhantomData))
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub listeners: Located<Vec<RawListener>>,
    pub workers: Option<Located<String>>,
    pub work_stealing: Option<Located<bool>>,
    pub access_log: Option<Located<String>>,
    pub access_log_properties: Option<Located<Vec<Located<String>>>>,
    pub shutdown_timeout: Option<Located<String>>,
    pub client: Option<Located<RawClient>>,
    #[serde(default)]
    pub upstreams: Located<Named<RawUpstream>>,
    #[serde(default)]
    pub routes: Located<Vec<Located<RawRoute>>>,
    #[serde(default)]
    pub filters: Named<Located<RawFilter>>,
    pub wasm: Option<Located<RawWasm>>,
    pub admin: Option<Located<RawAdmin>>,
    pub geo: Option<Located<RawGeo>>,
    pub cache: Option<Located<RawCache>>,
    pub node: Option<Located<RawNode>>,
}

/// `node:`: who this edgeward is, for filters' `node` properties (Envoy's bootstrap node).
#[derive(Debug, Deserialize)]
pub(super) struct RawNode {
    pub id: Option<Located<String>>,
    pub cluster: Option<Located<String>>,
    #[serde(default)]
    pub metadata: Named<Located<String>>,
}

/// `metadata:` of a route or an upstream: namespaces of keys and values (Envoy's
/// `filter_metadata`).
pub(super) type RawMetadata = Named<Named<Located<String>>>;

#[derive(Debug, Deserialize)]
pub(super) struct RawCache {
    pub memory: Option<Located<String>>,
    pub disk: Option<Located<RawDiskCache>>,
    pub max_object: Option<Located<String>>,
    pub lock_timeout: Option<Located<String>>,
    #[serde(default)]
    pub purge_allowed_from: Vec<Located<String>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawDiskCache {
    pub path: Option<Located<String>>,
    pub size: Option<Located<String>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawRouteCache {
    pub enabled: Option<Located<bool>>,
    pub default_ttl: Option<Located<String>>,
    pub key: Option<Located<Vec<Located<String>>>>,
    pub bypass: Option<Located<RawBypass>>,
    pub stale_while_revalidate: Option<Located<String>>,
    pub stale_if_error: Option<Located<String>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawBypass {
    #[serde(default)]
    pub headers: Vec<Located<String>>,
    #[serde(default)]
    pub cookies: Vec<Located<String>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawGeo {
    pub database: Option<Located<String>>,
    #[serde(default)]
    pub trusted_proxies: Vec<Located<String>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawAdmin {
    pub address: Option<Located<String>>,
    pub token: Option<Located<String>>,
    pub token_file: Option<Located<String>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawWasm {
    pub module_cache: Option<Located<String>>,
    pub max_instances: Option<Located<String>>,
    pub perf_map: Option<Located<bool>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawFilter {
    pub module: Option<Located<String>>,
    /// Any YAML: handed to the filter as JSON text (a plain string as itself).
    pub config: Option<Located<serde_json::Value>>,
    pub vm_config: Option<Located<serde_json::Value>>,
    pub root_id: Option<Located<String>>,
    pub isolation: Option<Located<String>>,
    pub limits: Option<Located<RawLimits>>,
    pub on_error: Option<Located<String>>,
    pub vm_id: Option<Located<String>>,
    pub callouts: Option<Vec<Located<String>>>,
    pub response_phase: Option<Located<String>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawLimits {
    pub memory: Option<Located<String>>,
    pub cpu: Option<Located<String>>,
    pub body: Option<Located<String>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawListener {
    pub address: Option<Located<String>>,
    pub client: Option<Located<RawClient>>,
    pub tls: Option<Located<RawTls>>,
    /// `true`, `false` or a port.
    pub redirect_https: Option<Located<String>>,
}

/// A listener's `tls:`.
#[derive(Debug, Deserialize)]
pub(super) struct RawTls {
    pub certificates: Option<Located<Vec<Located<RawCertificate>>>>,
    pub default: Option<Located<String>>,
    pub min_version: Option<Located<String>>,
    pub alpn: Option<Located<Vec<Located<String>>>>,
    pub reload_interval: Option<Located<String>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawCertificate {
    pub cert: Option<Located<String>>,
    pub key: Option<Located<String>>,
    pub hosts: Option<Located<Vec<Located<String>>>>,
}

/// `client:`, at the top level and per listener.
#[derive(Debug, Deserialize)]
pub(super) struct RawClient {
    pub header_timeout: Option<Located<String>>,
    pub idle_timeout: Option<Located<String>>,
    pub body_timeout: Option<Located<String>>,
    pub max_connections: Option<Located<String>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawUpstream {
    pub endpoints: Option<Located<Vec<Located<String>>>>,
    pub builtin: Option<Located<String>>,
    /// With `builtin: filters`: the filters that answer its requests.
    pub filters: Option<Located<Vec<Located<String>>>>,
    pub load_balancing: Option<Located<String>>,
    pub connect_timeout: Option<Located<String>>,
    pub read_timeout: Option<Located<String>>,
    pub write_timeout: Option<Located<String>>,
    pub idle_timeout: Option<Located<String>>,
    pub retries: Option<Located<String>>,
    pub health_check: Option<Located<RawHealthCheck>>,
    pub tls: Option<Located<RawOriginTls>>,
    pub http2: Option<Located<bool>>,
    pub metadata: Option<Located<RawMetadata>>,
}

/// An upstream's `tls:`.
#[derive(Debug, Deserialize)]
pub(super) struct RawOriginTls {
    pub sni: Option<Located<String>>,
    pub verify: Option<Located<bool>>,
    pub ca: Option<Located<String>>,
    pub client_cert: Option<Located<String>>,
    pub client_key: Option<Located<String>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawHealthCheck {
    pub path: Option<Located<String>>,
    pub interval: Option<Located<String>>,
    pub timeout: Option<Located<String>>,
    pub host: Option<Located<String>>,
    pub healthy_threshold: Option<Located<String>>,
    pub unhealthy_threshold: Option<Located<String>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawRoute {
    pub name: Option<Located<String>>,
    #[serde(rename = "match")]
    pub matcher: Option<Located<RawMatch>>,
    pub upstream: Option<Located<String>>,
    pub strip_prefix: Option<Located<bool>>,
    pub host_rewrite: Option<Located<String>>,
    pub filters: Option<Located<Vec<Located<String>>>>,
    pub timeout: Option<Located<String>>,
    pub cache: Option<Located<RawRouteCache>>,
    pub metadata: Option<Located<RawMetadata>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawMatch {
    pub host: Option<Located<String>>,
    pub path: Option<Located<String>>,
    pub path_prefix: Option<Located<String>>,
    pub path_regex: Option<Located<String>>,
    pub methods: Option<Vec<Located<String>>>,
    #[serde(default)]
    pub headers: Named<Located<String>>,
}
