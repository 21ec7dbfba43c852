//! Named upstreams: their endpoints, load balancing, health checks and connection settings,
//! plus the origins edgeward serves itself (`builtin: echo`; `builtin: filters` origins are
//! bound by `filter_origin.rs`, above the filter host, and named here by their address).

mod balancer;
mod echo;
mod health;
mod peer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use pingora::upstreams::peer::HttpPeer;

use crate::config::{self, Endpoint, Origin, UpstreamId};
use crate::local_http::LocalServers;
use crate::sync::Task;
use balancer::Balancer;
use health::EndpointCheck;
use peer::PeerSettings;
use tokio::sync::watch;

/// How many candidates a selection may look at before giving up (Ketama walks a ring).
const MAX_SELECTION_STEPS: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot start the builtin origin for upstream `{upstream}`")]
    Builtin {
        upstream: String,
        source: std::io::Error,
    },
    #[error("upstream `{upstream}` (`builtin: filters`) has no origin serving it")]
    FilterOriginMissing { upstream: String },
    #[error("upstream `{upstream}`")]
    Balancer {
        upstream: String,
        source: std::io::Error,
    },
}

/// All upstreams, indexed by [`UpstreamId`].
pub(crate) struct Upstreams {
    entries: Vec<UpstreamEntry>,
}

#[derive(Clone)]
pub(crate) struct UpstreamEntry {
    config: config::Upstream,
    balancer: Balancer,
    peers: Arc<PeerSettings>,
    /// Ends the health checks once no generation uses this upstream any more.
    _health_checks: Option<Arc<HealthChecks>>,
}

/// Stops an upstream's health-check loop when dropped.
struct HealthChecks(watch::Sender<bool>);

impl Drop for HealthChecks {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

impl Upstreams {
    /// Builds the upstreams and the background tasks they need: the health-check loops and
    /// the builtin origins (bound here, so their addresses are known before serving starts).
    /// An upstream configured exactly as in `previous` (a reload's current upstreams) is taken
    /// over with its health state and its running health checks. `filter_origins` holds the
    /// address of each `builtin: filters` upstream's origin, by upstream name.
    pub(crate) fn build(
        upstreams: &[config::Upstream],
        previous: Option<&Upstreams>,
        filter_origins: &HashMap<String, SocketAddr>,
    ) -> Result<(Upstreams, Vec<Task>), UpstreamError> {
        let mut entries = Vec::with_capacity(upstreams.len());
        let mut tasks: Vec<Task> = Vec::new();
        let mut builtins = Vec::new();
        for upstream in upstreams {
            if let Some(unchanged) = previous.and_then(|previous| previous.unchanged(upstream)) {
                entries.push(unchanged.clone());
                continue;
            }
            let endpoints = match &upstream.origin {
                Origin::Endpoints(endpoints) => endpoints.clone(),
                Origin::Builtin(builtin) => {
                    let addr = match builtin {
                        config::Builtin::Echo => {
                            let origin =
                                echo::EchoOrigin::bind(&upstream.name).map_err(|source| {
                                    UpstreamError::Builtin {
                                        upstream: upstream.name.clone(),
                                        source,
                                    }
                                })?;
                            let addr = origin.addr();
                            builtins.push(origin.into_server());
                            addr
                        }
                        config::Builtin::Filters(_) => filter_origins
                            .get(&upstream.name)
                            .copied()
                            .ok_or_else(|| UpstreamError::FilterOriginMissing {
                                upstream: upstream.name.clone(),
                            })?,
                    };
                    vec![Endpoint {
                        addr,
                        host: addr.ip().to_string(),
                    }]
                }
            };
            let peers = Arc::new(PeerSettings::new(upstream, &endpoints));
            let check = upstream
                .health_check
                .as_ref()
                .map(|settings| EndpointCheck::new(settings, peers.clone()));
            let addrs: Vec<SocketAddr> = endpoints.iter().map(|endpoint| endpoint.addr).collect();
            let balancer = Balancer::new(upstream.balancing, &addrs, check).map_err(|source| {
                UpstreamError::Balancer {
                    upstream: upstream.name.clone(),
                    source,
                }
            })?;
            let health_checks = upstream.health_check.is_some().then(|| {
                let (stop, until) = watch::channel(false);
                tasks.push(Task {
                    work: balancer.background(),
                    until: Some(until),
                });
                Arc::new(HealthChecks(stop))
            });
            entries.push(UpstreamEntry {
                config: upstream.clone(),
                balancer,
                peers,
                _health_checks: health_checks,
            });
        }
        if !builtins.is_empty() {
            tasks.push(Task {
                work: Arc::new(LocalServers(builtins)),
                until: None,
            });
        }
        Ok((Upstreams { entries }, tasks))
    }

    /// The entry of an upstream configured exactly as `upstream`, if this has one. Builtin
    /// origins are never taken over: they belong to the generation that bound them.
    fn unchanged(&self, upstream: &config::Upstream) -> Option<&UpstreamEntry> {
        if matches!(upstream.origin, Origin::Builtin(_)) {
            return None;
        }
        let wanted = format!("{upstream:?}");
        self.entries.iter().find(|entry| {
            entry.config.name == upstream.name && format!("{:?}", entry.config) == wanted
        })
    }

    pub(crate) fn get(&self, id: UpstreamId) -> &UpstreamEntry {
        // Ids come from the validated config, which only holds indexes of existing upstreams.
        &self.entries[id.0]
    }
}

impl UpstreamEntry {
    pub(crate) fn name(&self) -> &str {
        &self.config.name
    }

    /// Extra connection attempts allowed after a connect failure.
    pub(crate) fn retries(&self) -> u32 {
        self.config.retries
    }

    /// Picks a healthy endpoint. `key` feeds consistent hashing; endpoints in `avoid` (those
    /// that already failed for this request) are skipped unless nothing else is left.
    pub(crate) fn select(&self, key: &[u8], avoid: &[SocketAddr]) -> Option<SocketAddr> {
        self.balancer
            .select(key, MAX_SELECTION_STEPS, &|addr, healthy| {
                healthy && !avoid.contains(addr)
            })
            .or_else(|| {
                self.balancer
                    .select(key, MAX_SELECTION_STEPS, &|_, healthy| healthy)
            })
    }

    /// Connection settings for one endpoint; connections are pooled per endpoint.
    pub(crate) fn peer(&self, addr: SocketAddr) -> HttpPeer {
        self.peers.peer(addr)
    }
}
