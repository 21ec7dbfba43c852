//! What every instance of every filter shares: shared data, queues, what the configuration
//! says of the upstreams and the node, and the queue of jobs (callouts, queue notices) that
//! hostcalls hand to the dispatcher.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use tokio::sync::mpsc;

use super::info::PluginInfo;
use super::mailbox::InstanceCell;
use super::shared::{QueueOwner, Queues, SharedData};
use crate::config::{Config, Metadata, Node, UpstreamId};

pub(crate) struct HostServices {
    pub shared_data: SharedData,
    pub queues: Queues,
    /// Every configured upstream's name, indexed by id (for `route.upstream`).
    pub upstream_names: Vec<String>,
    /// Every configured upstream's metadata, indexed by id (`cluster_metadata`).
    pub upstream_metadata: Vec<Arc<Metadata>>,
    /// The configuration's `node` (the `node` properties).
    pub node: Arc<Node>,
    jobs: mpsc::UnboundedSender<Job>,
}

impl HostServices {
    /// The services for `config`'s filters, and the receiving end of their job queue (for
    /// the dispatcher).
    pub(crate) fn new(config: &Config) -> (Arc<HostServices>, mpsc::UnboundedReceiver<Job>) {
        let (jobs, receiver) = mpsc::unbounded_channel();
        let services = Arc::new(HostServices {
            shared_data: SharedData::default(),
            queues: Queues::default(),
            upstream_names: config.upstreams.iter().map(|u| u.name.clone()).collect(),
            upstream_metadata: config
                .upstreams
                .iter()
                .map(|u| u.metadata.clone())
                .collect(),
            node: config.node.clone(),
            jobs,
        });
        (services, receiver)
    }

    /// Services for filters outside any configuration (`filter inspect`): no upstreams, a
    /// default node.
    pub(crate) fn detached() -> (Arc<HostServices>, mpsc::UnboundedReceiver<Job>) {
        let (jobs, receiver) = mpsc::unbounded_channel();
        let services = Arc::new(HostServices {
            shared_data: SharedData::default(),
            queues: Queues::default(),
            upstream_names: Vec::new(),
            upstream_metadata: Vec::new(),
            node: Arc::default(),
            jobs,
        });
        (services, receiver)
    }

    pub(crate) fn submit(&self, job: Job) {
        // Fails only once the dispatcher stopped, at shutdown.
        let _ = self.jobs.send(job);
    }
}

pub(crate) enum Job {
    Callout(Callout),
    QueueReady { owner: QueueOwner, queue_id: u32 },
}

/// A `proxy_http_call` in flight.
pub(crate) struct Callout {
    pub cell: InstanceCell,
    pub plugin: Arc<PluginInfo>,
    /// The context that made the call (root or HTTP); the answer goes back to it.
    pub context_id: u32,
    pub token: u32,
    pub upstream: UpstreamId,
    pub upstream_name: String,
    pub request: CalloutRequest,
    pub timeout: Duration,
}

pub(crate) struct CalloutRequest {
    pub method: Method,
    pub path: Vec<u8>,
    pub authority: Vec<u8>,
    /// Without pseudo-headers.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Vec<u8>,
}
