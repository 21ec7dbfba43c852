//! Work the filter host does outside any one request: HTTP callouts and queue notices.
//! Hostcalls only hand a job over; a background service runs it and delivers the result to
//! the instance that asked, or to the request that is paused waiting for it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::mpsc;

use super::mailbox::CalloutAnswer;
use super::services::{Callout, CalloutRequest, Job};
use super::shared::QueueOwner;
use crate::causes::describe;
use crate::metrics;
use crate::upstream::Upstreams;

/// The largest callout response body kept; a bigger one is a failed callout.
const MAX_CALLOUT_BODY: usize = 16 << 20;
/// How long a callout connection may idle in the pool.
const CALLOUT_IDLE: Duration = Duration::from_secs(60);

/// Runs jobs on its own runtime (a Pingora background service).
pub(super) struct Dispatcher {
    receiver: Mutex<Option<mpsc::UnboundedReceiver<Job>>>,
    client: Arc<CalloutClient>,
}

/// Callouts go through the upstream's load balancing, health checks and timeouts, with a
/// connection pool of their own (Pingora keeps the proxy's pool private).
pub(super) struct CalloutClient {
    upstreams: OnceLock<Arc<Upstreams>>,
    connector: Connector,
}

impl Dispatcher {
    /// A dispatcher for the jobs `receiver` brings ([`HostServices::new`]).
    pub(super) fn new(receiver: mpsc::UnboundedReceiver<Job>) -> Dispatcher {
        Dispatcher {
            receiver: Mutex::new(Some(receiver)),
            client: Arc::new(CalloutClient {
                upstreams: OnceLock::new(),
                connector: Connector::new(None),
            }),
        }
    }

    /// Lets callouts reach the configured upstreams (until then they fail).
    pub(super) fn serve_upstreams(&self, upstreams: Arc<Upstreams>) {
        let _ = self.client.upstreams.set(upstreams);
    }
}

#[async_trait::async_trait]
impl BackgroundService for Dispatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut receiver) = self.receiver.lock().ok().and_then(|mut r| r.take()) else {
            return;
        };
        loop {
            tokio::select! {
                job = receiver.recv() => match job {
                    Some(Job::Callout(callout)) => {
                        tokio::spawn(run_callout(self.client.clone(), callout));
                    }
                    Some(Job::QueueReady { owner, queue_id }) => {
                        tokio::task::spawn_blocking(move || queue_ready(owner, queue_id));
                    }
                    None => return,
                },
                _ = shutdown.changed() => return,
            }
        }
    }
}

async fn run_callout(client: Arc<CalloutClient>, job: Callout) {
    let labels = [job.plugin.name.as_str(), job.upstream_name.as_str()];
    metrics::global().callouts.with_label_values(&labels).inc();
    let answer = match tokio::time::timeout(job.timeout, client.perform(&job)).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(error)) => failed(&job, &error),
        Err(_) => failed(&job, &CalloutError::Timeout(job.timeout)),
    };
    // Delivering runs guest code: not on the async runtime's worker.
    tokio::task::spawn_blocking(move || {
        if let Some(instance) = job.cell.get().and_then(Weak::upgrade) {
            instance.deliver_callout(job.context_id, job.token, answer);
        }
    });
}

/// Why a callout got no answer. The guest reads `reason: description` through
/// `proxy_get_status`; the metrics count the reason.
#[derive(Debug, thiserror::Error)]
enum CalloutError {
    #[error("edgeward is not serving yet")]
    NotServing,
    #[error("the upstream has no healthy endpoint")]
    NoHealthyEndpoint,
    #[error("{what} {endpoint}")]
    Io {
        what: &'static str,
        endpoint: SocketAddr,
        #[source]
        source: Box<pingora::Error>,
    },
    #[error("the request cannot be made: {0}")]
    BadRequest(
        &'static str,
        #[source] Box<dyn std::error::Error + Send + Sync>,
    ),
    #[error("no response head")]
    NoHead,
    #[error("response body over {MAX_CALLOUT_BODY} bytes")]
    TooLarge,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl CalloutError {
    /// The failure's label in `edgeward_filter_callout_failures_total`.
    fn reason(&self) -> &'static str {
        match self {
            CalloutError::NotServing => "not_serving",
            CalloutError::NoHealthyEndpoint => "no_healthy_endpoint",
            CalloutError::Io { source, .. } => match source.etype() {
                pingora::ErrorType::ConnectTimedout
                | pingora::ErrorType::ReadTimedout
                | pingora::ErrorType::WriteTimedout => "timeout",
                pingora::ErrorType::ConnectRefused => "refused",
                _ => "error",
            },
            CalloutError::BadRequest(..) => "bad_request",
            CalloutError::NoHead => "error",
            CalloutError::TooLarge => "too_large",
            CalloutError::Timeout(_) => "timeout",
        }
    }
}

fn failed(job: &Callout, error: &CalloutError) -> CalloutAnswer {
    let (reason, detail) = (error.reason(), describe(error));
    log::warn!(
        "filter `{}`: callout to upstream `{}` failed ({reason}): {detail}",
        job.plugin.name,
        job.upstream_name
    );
    metrics::global()
        .callout_failures
        .with_label_values(&[job.plugin.name.as_str(), job.upstream_name.as_str(), reason])
        .inc();
    CalloutAnswer {
        failure: Some(format!("{reason}: {detail}")),
        ..CalloutAnswer::default()
    }
}

fn queue_ready(owner: QueueOwner, queue_id: u32) {
    if let Some(instance) = owner.cell.get().and_then(Weak::upgrade) {
        instance.queue_ready(owner.root_id, queue_id);
    }
}

impl CalloutClient {
    async fn perform(&self, job: &Callout) -> Result<CalloutAnswer, CalloutError> {
        let upstreams = self.upstreams.get().ok_or(CalloutError::NotServing)?;
        let upstream = upstreams.get(job.upstream);
        let endpoint = upstream
            .select(&job.request.path, &[])
            .ok_or(CalloutError::NoHealthyEndpoint)?;
        let peer = upstream.peer(endpoint);
        let started = Instant::now();
        let io = |what, source| CalloutError::Io {
            what,
            endpoint,
            source,
        };
        let (mut session, _reused) = self
            .connector
            .get_http_session(&peer)
            .await
            .map_err(|e| io("connecting to", e))?;
        let request = request_head(&job.request)?;
        session
            .write_request_header(Box::new(request))
            .await
            .map_err(|e| io("writing to", e))?;
        if !job.request.body.is_empty() {
            session
                .write_request_body(Bytes::copy_from_slice(&job.request.body), true)
                .await
                .map_err(|e| io("writing to", e))?;
        }
        session
            .finish_request_body()
            .await
            .map_err(|e| io("writing to", e))?;
        session
            .read_response_header()
            .await
            .map_err(|e| io("reading from", e))?;
        let head = session
            .response_header()
            .cloned()
            .ok_or(CalloutError::NoHead)?;
        let mut body = Vec::new();
        while let Some(chunk) = session
            .read_response_body()
            .await
            .map_err(|e| io("reading from", e))?
        {
            if body.len() + chunk.len() > MAX_CALLOUT_BODY {
                return Err(CalloutError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        // Only HTTP/2 carries trailers to Pingora's client.
        let trailers = match &mut session {
            HttpSession::H2(h2) => h2
                .read_trailers()
                .await
                .map_err(|e| io("reading from", e))?
                .map(|trailers| pairs_of(&trailers))
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        self.connector
            .release_http_session(session, &peer, Some(CALLOUT_IDLE))
            .await;
        metrics::global()
            .upstream_latency
            .with_label_values(&[job.upstream_name.as_str()])
            .observe(started.elapsed().as_secs_f64());
        let mut headers = vec![(
            b":status".to_vec(),
            head.status.as_str().as_bytes().to_vec(),
        )];
        headers.extend(pairs_of(&head.headers));
        Ok(CalloutAnswer {
            headers,
            body,
            trailers,
            failure: None,
        })
    }
}

fn pairs_of(map: &http::HeaderMap) -> Vec<(Vec<u8>, Vec<u8>)> {
    map.iter()
        .map(|(k, v)| (k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

fn request_head(request: &CalloutRequest) -> Result<RequestHeader, CalloutError> {
    let bad = |what| move |e| CalloutError::BadRequest(what, Box::new(e));
    let mut head = RequestHeader::build(
        request.method.clone(),
        &request.path,
        Some(request.headers.len() + 2),
    )
    .map_err(bad("bad request line"))?;
    head.insert_header(http::header::HOST, request.authority.as_slice())
        .map_err(bad("bad :authority"))?;
    for (name, value) in &request.headers {
        let name = http::HeaderName::from_bytes(name)
            .map_err(|e| CalloutError::BadRequest("bad header name", Box::new(e)))?;
        head.append_header(name, value.as_slice())
            .map_err(bad("bad header value"))?;
    }
    if !request.body.is_empty() {
        head.insert_header(http::header::CONTENT_LENGTH, request.body.len())
            .map_err(bad("bad content-length"))?;
    }
    Ok(head)
}
