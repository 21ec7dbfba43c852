//! How edgeward connects to an upstream's endpoints, as the Pingora peer that proxying,
//! health checks and filter callouts all use: timeouts, TLS (SNI, verification, trusted
//! roots, client certificate) and the HTTP version.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;

use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{parse_x509, CertKey, WrappedX509};

use crate::config::{self, Endpoint, UpstreamProtocol};

pub(crate) struct PeerSettings {
    connect_timeout: std::time::Duration,
    read_timeout: std::time::Duration,
    write_timeout: std::time::Duration,
    idle_timeout: std::time::Duration,
    alpn: ALPN,
    tls: Option<TlsSettings>,
    /// The host name each address was written with.
    hosts: HashMap<SocketAddr, String>,
}

/// An upstream's TLS settings, converted once into what Pingora's connector takes.
struct TlsSettings {
    sni: Option<String>,
    verify: bool,
    ca: Option<Arc<[WrappedX509]>>,
    client_identity: Option<Arc<CertKey>>,
    /// Keeps pooled connections apart from other upstreams' to the same address, whose
    /// trusted roots may differ (Pingora's pool key does not cover them).
    group_key: u64,
}

impl PeerSettings {
    pub(super) fn new(upstream: &config::Upstream, endpoints: &[Endpoint]) -> PeerSettings {
        let tls = upstream.tls.as_ref().map(|tls| TlsSettings {
            sni: tls.sni.clone(),
            verify: tls.verify,
            ca: tls.ca.as_ref().map(|anchors| {
                anchors
                    .iter()
                    .map(|der| WrappedX509::new(der.clone(), parse_x509))
                    .collect()
            }),
            client_identity: tls.client_identity.as_ref().map(|identity| {
                Arc::new(CertKey::new(identity.chain.clone(), identity.key.clone()))
            }),
            group_key: {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                upstream.name.hash(&mut hasher);
                hasher.finish()
            },
        });
        let alpn = match upstream.protocol {
            UpstreamProtocol::Http1 => ALPN::H1,
            UpstreamProtocol::Http2 => ALPN::H2,
            UpstreamProtocol::Negotiated => ALPN::H2H1,
        };
        PeerSettings {
            connect_timeout: upstream.connect_timeout,
            read_timeout: upstream.read_timeout,
            write_timeout: upstream.write_timeout,
            idle_timeout: upstream.idle_timeout,
            alpn,
            tls,
            hosts: endpoints
                .iter()
                .map(|endpoint| (endpoint.addr, endpoint.host.clone()))
                .collect(),
        }
    }

    /// The name `addr` was written with (`origin.example.com`, `10.0.0.1`).
    pub(super) fn host(&self, addr: SocketAddr) -> String {
        self.hosts
            .get(&addr)
            .cloned()
            .unwrap_or_else(|| addr.ip().to_string())
    }

    /// The peer for one endpoint; connections are pooled per peer.
    pub(crate) fn peer(&self, addr: SocketAddr) -> HttpPeer {
        let mut peer = match &self.tls {
            None => HttpPeer::new(addr, false, String::new()),
            Some(tls) => {
                // Never empty: Pingora skips verification for a peer without SNI.
                let sni = tls.sni.clone().unwrap_or_else(|| self.host(addr));
                let mut peer = HttpPeer::new(addr, true, sni);
                peer.options.verify_cert = tls.verify;
                peer.options.verify_hostname = tls.verify;
                peer.options.ca = tls.ca.clone();
                peer.client_cert_key = tls.client_identity.clone();
                peer.group_key = tls.group_key;
                peer
            }
        };
        let options = &mut peer.options;
        options.alpn = self.alpn.clone();
        options.connection_timeout = Some(self.connect_timeout);
        options.read_timeout = Some(self.read_timeout);
        options.write_timeout = Some(self.write_timeout);
        options.idle_timeout = Some(self.idle_timeout);
        peer
    }
}
