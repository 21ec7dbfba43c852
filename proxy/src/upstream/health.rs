//! The HTTP health check of an upstream's endpoints: `GET path` through the same peer
//! settings as proxied requests (so over TLS, with SNI and the client certificate, when the
//! upstream uses TLS), healthy on a `200`.

use std::sync::Arc;
use std::time::Duration;

use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::lb::health_check::HealthCheck as PingoraHealthCheck;
use pingora::lb::Backend;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::{Error, ErrorType, Result};

use super::peer::PeerSettings;
use crate::config::HealthCheck;

pub(super) struct EndpointCheck {
    settings: HealthCheck,
    peers: Arc<PeerSettings>,
    connector: Connector,
}

impl EndpointCheck {
    pub(super) fn new(settings: &HealthCheck, peers: Arc<PeerSettings>) -> EndpointCheck {
        EndpointCheck {
            settings: settings.clone(),
            peers,
            connector: Connector::new(None),
        }
    }

    pub(super) fn interval(&self) -> Duration {
        self.settings.interval
    }

    fn request(&self, host: &str) -> Result<RequestHeader> {
        let mut request = RequestHeader::build("GET", self.settings.path.as_bytes(), None)?;
        request.insert_header("host", self.settings.host.as_deref().unwrap_or(host))?;
        request.insert_header("user-agent", "edgeward-health-check")?;
        Ok(request)
    }
}

#[async_trait::async_trait]
impl PingoraHealthCheck for EndpointCheck {
    async fn check(&self, target: &Backend) -> Result<()> {
        let PingoraAddr::Inet(addr) = target.addr else {
            return Error::e_explain(ErrorType::InternalError, "not an IP endpoint");
        };
        let timeout = Some(self.settings.timeout);
        let mut peer = self.peers.peer(addr);
        peer.options.connection_timeout = timeout;
        peer.options.read_timeout = timeout;
        peer.options.write_timeout = timeout;
        let request = self.request(&self.peers.host(addr))?;
        // A new connection each time: a pooled one can hide a firewall or a dead listener.
        let (mut session, _) = self.connector.get_http_session(&peer).await?;
        session.set_write_timeout(timeout);
        session.set_read_timeout(timeout);
        session.write_request_header(Box::new(request)).await?;
        session.finish_request_body().await?;
        session.read_response_header().await?;
        let status = session
            .response_header()
            .map_or(0, |header| header.status.as_u16());
        if status != 200 {
            return Error::e_explain(ErrorType::CustomCode("not 200", status), "health check");
        }
        while session.read_response_body().await?.is_some() {}
        Ok(())
    }

    fn health_threshold(&self, success: bool) -> usize {
        if success {
            self.settings.healthy_threshold
        } else {
            self.settings.unhealthy_threshold
        }
    }
}
