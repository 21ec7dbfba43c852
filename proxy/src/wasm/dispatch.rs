//! Work the filter host does outside any one request: HTTP callouts and queue notices.
//! Hostcalls only hand a job over; a background service runs it and delivers the result to
//! the instance that asked, or to the request that is paused waiting for it.

use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::mpsc;

use super::mailbox::CalloutAnswer;
use super::services::{Callout, CalloutRequest, Job};
use super::shared::QueueOwner;
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
        Ok(Err((reason, detail))) => failed(&job, reason, detail),
        Err(_) => failed(
            &job,
            "timeout",
            format!("no answer within {:?}", job.timeout),
        ),
    };
    // Delivering runs guest code: not on the async runtime's worker.
    tokio::task::spawn_blocking(move || {
        if let Some(instance) = job.cell.get().and_then(Weak::upgrade) {
            instance.deliver_callout(job.context_id, job.token, answer);
        }
    });
}

fn failed(job: &Callout, reason: &'static str, detail: String) -> CalloutAnswer {
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

type Failure = (&'static str, String);

impl CalloutClient {
    async fn perform(&self, job: &Callout) -> Result<CalloutAnswer, Failure> {
        let upstreams = self
            .upstreams
            .get()
            .ok_or(("not_serving", "edgeward is not serving yet".to_string()))?;
        let upstream = upstreams.get(job.upstream);
        let endpoint = upstream.select(&job.request.path, &[]).ok_or((
            "no_healthy_endpoint",
            "the upstream has no healthy endpoint".to_string(),
        ))?;
        let peer = upstream.peer(endpoint);
        let started = Instant::now();
        let io = |what: &str, e: Box<pingora::Error>| {
            let reason = match e.etype() {
                pingora::ErrorType::ConnectTimedout
                | pingora::ErrorType::ReadTimedout
                | pingora::ErrorType::WriteTimedout => "timeout",
                pingora::ErrorType::ConnectRefused => "refused",
                _ => "error",
            };
            (reason, format!("{what} {endpoint}: {}", e.etype().as_str()))
        };
        let (mut session, _reused) = self
            .connector
            .get_http_session(&peer)
            .await
            .map_err(|e| io("connecting to", e))?;
        let request = request_head(&job.request).map_err(|e| ("bad_request", e))?;
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
            .ok_or(("error", "no response head".to_string()))?;
        let mut body = Vec::new();
        while let Some(chunk) = session
            .read_response_body()
            .await
            .map_err(|e| io("reading from", e))?
        {
            if body.len() + chunk.len() > MAX_CALLOUT_BODY {
                return Err((
                    "too_large",
                    format!("response body over {MAX_CALLOUT_BODY} bytes"),
                ));
            }
            body.extend_from_slice(&chunk);
        }
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
        headers.extend(
            head.headers
                .iter()
                .map(|(k, v)| (k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec())),
        );
        Ok(CalloutAnswer {
            headers,
            body,
            trailers: Vec::new(),
            failure: None,
        })
    }
}

fn request_head(request: &CalloutRequest) -> Result<RequestHeader, String> {
    let mut head = RequestHeader::build(
        request.method.clone(),
        &request.path,
        Some(request.headers.len() + 2),
    )
    .map_err(|e| format!("bad request line: {e}"))?;
    head.insert_header(http::header::HOST, request.authority.as_slice())
        .map_err(|e| format!("bad :authority: {e}"))?;
    for (name, value) in &request.headers {
        let name =
            http::HeaderName::from_bytes(name).map_err(|e| format!("bad header name: {e}"))?;
        head.append_header(name, value.as_slice())
            .map_err(|e| format!("bad header value: {e}"))?;
    }
    if !request.body.is_empty() {
        head.insert_header(http::header::CONTENT_LENGTH, request.body.len())
            .map_err(|e| e.to_string())?;
    }
    Ok(head)
}
