//! Named upstreams: their endpoints, load balancing, health checks and connection settings,
//! plus the origins edgeward serves itself (`builtin: echo`).

mod balancer;
mod echo;
mod health;
mod peer;

use std::net::SocketAddr;
use std::sync::Arc;

use pingora::upstreams::peer::HttpPeer;

use crate::config::{self, Endpoint, Origin, UpstreamId};
use crate::sync::BackgroundTask;
use balancer::Balancer;
use health::EndpointCheck;
use peer::PeerSettings;

/// How many candidates a selection may look at before giving up (Ketama walks a ring).
const MAX_SELECTION_STEPS: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot start the builtin origin for upstream `{upstream}`")]
    Builtin {
        upstream: String,
        source: std::io::Error,
    },
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

pub(crate) struct UpstreamEntry {
    config: config::Upstream,
    balancer: Balancer,
    peers: Arc<PeerSettings>,
}

impl Upstreams {
    /// Builds the upstreams and the background tasks they need: the health-check loops and
    /// the builtin origins (bound here, so their addresses are known before serving starts).
    pub(crate) fn build(
        upstreams: &[config::Upstream],
    ) -> Result<(Upstreams, Vec<BackgroundTask>), UpstreamError> {
        let mut entries = Vec::with_capacity(upstreams.len());
        let mut tasks: Vec<BackgroundTask> = Vec::new();
        let mut builtins = Vec::new();
        for upstream in upstreams {
            let endpoints = match &upstream.origin {
                Origin::Endpoints(endpoints) => endpoints.clone(),
                Origin::Builtin(config::Builtin::Echo) => {
                    let origin = echo::EchoOrigin::bind(&upstream.name).map_err(|source| {
                        UpstreamError::Builtin {
                            upstream: upstream.name.clone(),
                            source,
                        }
                    })?;
                    let addr = origin.addr();
                    builtins.push(origin);
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
            if upstream.health_check.is_some() {
                tasks.push(balancer.background());
            }
            entries.push(UpstreamEntry {
                config: upstream.clone(),
                balancer,
                peers,
            });
        }
        if !builtins.is_empty() {
            tasks.push(Arc::new(echo::EchoOrigins(builtins)));
        }
        Ok((Upstreams { entries }, tasks))
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
