//! One load balancer per upstream, over Pingora's selection algorithms and health checks.

use std::net::SocketAddr;
use std::sync::Arc;

use pingora::lb::selection::{BackendIter, BackendSelection, Consistent, Random, RoundRobin};
use pingora::lb::{Backend, LoadBalancer};
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::services::background::BackgroundService;

use super::health::EndpointCheck;
use crate::config::Balancing;

#[derive(Clone)]
pub(super) enum Balancer {
    RoundRobin(Arc<LoadBalancer<RoundRobin>>),
    Random(Arc<LoadBalancer<Random>>),
    Consistent(Arc<LoadBalancer<Consistent>>),
}

type Accept<'a> = &'a dyn Fn(&SocketAddr, bool) -> bool;

impl Balancer {
    pub(super) fn new(
        balancing: Balancing,
        endpoints: &[SocketAddr],
        check: Option<EndpointCheck>,
    ) -> std::io::Result<Self> {
        Ok(match balancing {
            Balancing::RoundRobin => Balancer::RoundRobin(build(endpoints, check)?),
            Balancing::Random => Balancer::Random(build(endpoints, check)?),
            Balancing::ConsistentHash => Balancer::Consistent(build(endpoints, check)?),
        })
    }

    pub(super) fn select(
        &self,
        key: &[u8],
        steps: usize,
        accept: Accept<'_>,
    ) -> Option<SocketAddr> {
        match self {
            Balancer::RoundRobin(lb) => pick(lb, key, steps, accept),
            Balancer::Random(lb) => pick(lb, key, steps, accept),
            Balancer::Consistent(lb) => pick(lb, key, steps, accept),
        }
    }

    /// The health-check loop of this balancer, to run as a background task.
    pub(super) fn background(&self) -> Arc<dyn BackgroundService + Send + Sync> {
        match self {
            Balancer::RoundRobin(lb) => lb.clone(),
            Balancer::Random(lb) => lb.clone(),
            Balancer::Consistent(lb) => lb.clone(),
        }
    }
}

fn pick<S>(lb: &LoadBalancer<S>, key: &[u8], steps: usize, accept: Accept<'_>) -> Option<SocketAddr>
where
    S: BackendSelection + 'static,
    S::Iter: BackendIter,
{
    lb.select_with(key, steps, |backend, healthy| {
        inet(backend).is_some_and(|addr| accept(&addr, healthy))
    })
    .and_then(|backend| inet(&backend))
}

fn inet(backend: &Backend) -> Option<SocketAddr> {
    match &backend.addr {
        PingoraAddr::Inet(addr) => Some(*addr),
        _ => None,
    }
}

fn build<S>(
    endpoints: &[SocketAddr],
    check: Option<EndpointCheck>,
) -> std::io::Result<Arc<LoadBalancer<S>>>
where
    S: BackendSelection + Send + Sync + 'static,
    S::Iter: BackendIter,
{
    // Addresses are already resolved, so this performs no DNS lookup.
    let mut lb = LoadBalancer::<S>::try_from_iter(endpoints.iter().copied())?;
    if let Some(check) = check {
        lb.health_check_frequency = Some(check.interval());
        lb.set_health_check(Box::new(check));
        lb.parallel_health_check = true;
    }
    Ok(Arc::new(lb))
}
