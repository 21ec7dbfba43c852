//! A request's filter chain: which filters run, their contexts and instances, the body bytes
//! each holds while it buffers, and the phase drivers the proxy calls.
//!
//! Request phases run the chain in order, response phases in reverse. A filter that pauses
//! request or response headers waits (up to the route's timeout) for `proxy_continue_stream`,
//! a local response, or the answers of its callouts, whose `on_http_call_response` runs here
//! with the request's heads available; one that pauses a body keeps buffering, and the next
//! call reports the cumulative size. A filter that pauses the request headers still gets the
//! body (see "Held requests" below).

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use pingora::http::{RequestHeader, ResponseHeader};
use tokio::sync::mpsc;

use super::body_source::{BodyPiece, BodyUnavailable, EarlyBody, RequestBodySource, Unreadable};
use super::error::Fault;
use super::info::StreamInfo;
use super::instance::{HttpCallback, Instance, Outcome};
use super::plugin::{Lease, Plugin};
use super::state::{CpuDeadline, HttpData, LocalResponse, Phase, Resumption};
use crate::config::{FailurePolicy, ResponsePhase, UpstreamId};
use crate::metrics;

/// What the proxy does after a phase.
#[derive(Debug)]
pub enum Verdict {
    Continue,
    /// A filter answered the request itself.
    Respond(LocalResponse),
    /// A filter failed (fail-closed) or a limit ended the request.
    Fail(FilterFailure),
    /// A filter closed the stream: drop the connection without an answer.
    Close,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterFailure {
    pub filter: String,
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

pub struct FilterChain {
    entries: Vec<Entry>,
    scratch: Scratch,
    deadline: Instant,
    /// The request body read while a filter held the request headers, as it left the chain.
    early_request_body: Option<EarlyBody>,
}

/// What moves in and out of the instances around each call.
struct Scratch {
    /// The call data, boxed once per request. Between calls it keeps the stream info and a
    /// stand-in request head, swapped with Pingora's real one around each call.
    data: Option<Box<HttpData>>,
    /// Stand-in left in Pingora's place while the live response head is inside a call.
    spare_response: Option<ResponseHeader>,
    /// The response head as the filters left it, for the body and log phases.
    response: Option<ResponseHeader>,
    /// Whether `response` is the head the client got: the after-cache filters let it go.
    response_sent: bool,
}

struct Entry {
    plugin: Arc<Plugin>,
    lease: Option<Lease>,
    context_id: Option<u32>,
    /// False once the filter failed or was skipped for this request.
    active: bool,
    cpu_used: Duration,
    request_body: BytesMut,
    response_body: BytesMut,
    /// Warned once that a paused end of a response body cannot wait.
    warned_response_pause: bool,
}

/// What one callback asked for; a pause comes with the channel to wait on.
enum Invoked {
    Continue,
    Pause(mpsc::UnboundedReceiver<Resumption>),
    Respond(LocalResponse),
    Close,
    Fault(Fault),
}

/// Which guest call `call` makes: a phase callback (a pause then waits), a body callback of a
/// filter the request already waits on (it holds the request headers), or the answer of a
/// callout to a request that is already waiting.
#[derive(Clone, Copy)]
enum Purpose {
    Callback(Phase),
    HeldBody,
    CallResponse,
}

/// Where the callback finds the response head.
enum ResponseSlot<'a> {
    /// Pingora's head, writable in the response-headers phase.
    Live(&'a mut ResponseHeader),
    /// The snapshot kept by the chain (body and log phases), or none yet.
    Kept,
}

impl ResponseSlot<'_> {
    fn live(&mut self) -> Option<&mut ResponseHeader> {
        match self {
            ResponseSlot::Live(head) => Some(&mut **head),
            ResponseSlot::Kept => None,
        }
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Request,
    Response,
}

impl FilterChain {
    pub(crate) fn new(plugins: Vec<Arc<Plugin>>, info: StreamInfo, deadline: Instant) -> Self {
        FilterChain {
            entries: plugins.into_iter().map(Entry::new).collect(),
            scratch: Scratch {
                data: Some(Box::new(HttpData {
                    request: stand_in_request(),
                    response: None,
                    body: BytesMut::new(),
                    stream: info,
                    response_trailers: None,
                    request_head_held: false,
                })),
                spare_response: None,
                response: None,
                response_sent: false,
            },
            deadline,
            early_request_body: None,
        }
    }

    /// The upstream a filter chose for this request (`route.upstream`), if any.
    pub(crate) fn upstream_override(&self) -> Option<UpstreamId> {
        self.scratch
            .data
            .as_ref()
            .and_then(|data| data.stream.upstream_override)
    }

    /// What answered the request (`None`: the upstream) and Envoy's flags for how it ended,
    /// for `response.code_details` and `response.flags` in the final callbacks.
    pub(crate) fn set_outcome(
        &mut self,
        details: Option<std::borrow::Cow<'static, str>>,
        flags: u64,
    ) {
        if let Some(info) = self.scratch.info_mut() {
            info.code_details = details;
            info.response_flags = flags;
        }
    }

    /// The local address of the connection to the upstream (`upstream.local_address`).
    /// The property named `path` as filters set it (text, invalid UTF-8 replaced), for the
    /// access log: a one-segment path of that name (as Envoy keeps `wasm.<name>` filter
    /// state), else the segments `path` splits into at its dots.
    pub(crate) fn set_property_text(&self, path: &str) -> Option<String> {
        let custom = &self.scratch.data.as_ref()?.stream.custom;
        let value = custom
            .get(path.as_bytes())
            .or_else(|| custom.get(path.replace('.', "\0").as_bytes()))?;
        Some(String::from_utf8_lossy(value).into_owned())
    }

    pub(crate) fn set_upstream_local_address(&mut self, address: std::net::SocketAddr) {
        if let Some(info) = self.scratch.info_mut() {
            info.upstream_local_address = Some(address);
        }
    }

    /// Whether a filter asked for the request to be routed again (`clear_route_cache`), once.
    pub(crate) fn take_route_cache_cleared(&mut self) -> bool {
        self.scratch
            .info_mut()
            .is_some_and(|info| std::mem::take(&mut info.route_cache_cleared))
    }

    /// The request was routed again: the route, its metadata and, unless a filter chose
    /// one, the upstream the properties show.
    pub(crate) fn rerouted(&mut self, route: &crate::config::Route, upstream: &str) {
        if let Some(info) = self.scratch.info_mut() {
            info.route = Arc::from(route.name.as_str());
            info.route_metadata = route.metadata.clone();
            info.route_upstream = Some(route.upstream);
            if info.upstream_override.is_none() {
                info.upstream = Arc::from(upstream);
            }
        }
    }

    /// The endpoint the request is being sent to, on each attempt.
    pub(crate) fn set_upstream_address(&mut self, address: std::net::SocketAddr) {
        if let Some(info) = self.scratch.info_mut() {
            info.upstream_address = Some(address);
            info.upstream_attempts += 1;
        }
    }

    /// Runs the request head through the chain when its body cannot be read meanwhile (it
    /// has none, or it is an upgrade's): a filter that pauses gets no body callbacks until it
    /// resumes.
    pub async fn on_request_headers(
        &mut self,
        req: &mut RequestHeader,
        end_of_stream: bool,
    ) -> Verdict {
        self.request_headers(req, end_of_stream, &mut Unreadable)
            .await
    }

    /// Runs a request body chunk through the chain; returns what goes upstream now (empty
    /// while a filter buffers).
    pub(crate) async fn on_request_body(
        &mut self,
        req: &mut RequestHeader,
        chunk: Option<Bytes>,
        end_of_stream: bool,
    ) -> (Bytes, Verdict) {
        let data = chunk.unwrap_or_default();
        self.count_request_body(data.len());
        let all = 0..self.entries.len();
        match self.pass_request_body(all, data, end_of_stream, req).await {
            Ok(data) => (data, Verdict::Continue),
            Err(verdict) => (Bytes::new(), verdict),
        }
    }

    fn count_request_body(&mut self, len: usize) {
        if let Some(info) = self.scratch.info_mut() {
            info.request_body_bytes += len as u64;
        }
    }

    /// Runs request body `data` through the filters in `range`; returns what comes out of
    /// the last (empty while one buffers).
    async fn pass_request_body(
        &mut self,
        range: Range<usize>,
        mut data: Bytes,
        end_of_stream: bool,
        req: &mut RequestHeader,
    ) -> Result<Bytes, Verdict> {
        for i in range {
            if !self.entries[i].active {
                continue;
            }
            let invoked =
                self.feed_body(i, Direction::Request, &data, end_of_stream, req, false)?;
            match invoked {
                Invoked::Continue => {}
                // Keep buffering; filters after this one see nothing yet.
                Invoked::Pause(waiter) if !end_of_stream => {
                    self.stop_waiting(i, waiter);
                    return Ok(Bytes::new());
                }
                other => {
                    if let Some(verdict) = self
                        .settle(i, other, Phase::RequestBody, req, ResponseSlot::Kept)
                        .await
                    {
                        return Err(verdict);
                    }
                }
            }
            data = self.entries[i].request_body.split().freeze();
        }
        Ok(data)
    }

    /// What each filter used for this request so far: its CPU time, and the memory of the
    /// instance it runs on (while the request holds one; before [`FilterChain::finish`]).
    pub(crate) fn usage(&self) -> Vec<(String, Duration, Option<u64>)> {
        self.entries
            .iter()
            .map(|entry| {
                let memory = entry
                    .lease
                    .as_ref()
                    .map(|lease| lease.lock().memory_bytes());
                (entry.plugin.info.name.clone(), entry.cpu_used, memory)
            })
            .collect()
    }

    /// The chain's filters in order, for messages: `a, b`.
    pub(crate) fn filter_names(&self) -> String {
        let names: Vec<&str> = self
            .entries
            .iter()
            .map(|e| e.plugin.info.name.as_str())
            .collect();
        names.join(", ")
    }

    /// Whether any filter's response callbacks run in `phase`.
    pub(crate) fn has_response_phase(&self, phase: ResponsePhase) -> bool {
        self.entries.iter().any(|e| e.in_phase(phase))
    }

    /// Runs the response head through the filters of `phase`, in reverse chain order.
    pub async fn on_response_headers(
        &mut self,
        phase: ResponsePhase,
        req: &mut RequestHeader,
        resp: &mut ResponseHeader,
        end_of_stream: bool,
    ) -> Verdict {
        self.scratch.response_sent = false;
        for i in (0..self.entries.len()).rev() {
            if !self.entries[i].in_phase(phase) {
                continue;
            }
            let callback = HttpCallback::ResponseHeaders { end_of_stream };
            let (_, invoked) =
                self.invoke(i, callback, req, ResponseSlot::Live(resp), BytesMut::new());
            if let Some(verdict) = self
                .settle(
                    i,
                    invoked,
                    Phase::ResponseHeaders,
                    req,
                    ResponseSlot::Live(resp),
                )
                .await
            {
                return verdict;
            }
        }
        self.scratch.response = Some(resp.clone());
        self.scratch.response_sent = phase == ResponsePhase::AfterCache;
        Verdict::Continue
    }

    /// Runs a response body chunk through the chain (synchronously: Pingora's body hook is
    /// not async, so a paused end of stream cannot wait and goes on).
    pub(crate) fn on_response_body(
        &mut self,
        phase: ResponsePhase,
        req: &mut RequestHeader,
        chunk: Option<Bytes>,
        end_of_stream: bool,
    ) -> (Bytes, Verdict) {
        let mut data = chunk.unwrap_or_default();
        if phase == ResponsePhase::AfterCache {
            // What the client gets, for `response.size`-like properties.
            if let Some(info) = self.scratch.info_mut() {
                info.response_body_bytes += data.len() as u64;
            }
        }
        for i in (0..self.entries.len()).rev() {
            if !self.entries[i].active || !self.entries[i].in_phase(phase) {
                continue;
            }
            let direction = Direction::Response;
            let invoked = match self.feed_body(i, direction, &data, end_of_stream, req, false) {
                Ok(invoked) => invoked,
                Err(verdict) => return (Bytes::new(), verdict),
            };
            match invoked {
                Invoked::Continue => {}
                Invoked::Pause(waiter) => {
                    self.stop_waiting(i, waiter);
                    if !end_of_stream {
                        return (Bytes::new(), Verdict::Continue);
                    }
                    self.warn_response_pause(i);
                }
                Invoked::Respond(response) => return (Bytes::new(), Verdict::Respond(response)),
                Invoked::Close => return (Bytes::new(), Verdict::Close),
                Invoked::Fault(fault) => {
                    if let Some(verdict) = self.fail(i, fault) {
                        return (Bytes::new(), verdict);
                    }
                }
            }
            data = self.entries[i].response_body.split().freeze();
        }
        (data, Verdict::Continue)
    }

    /// Runs the response trailers through the filters of `phase`, in reverse chain order, as
    /// the after-cache hook does: a pause waits for the filter to resume.
    pub(crate) async fn on_response_trailers(
        &mut self,
        phase: ResponsePhase,
        req: &mut RequestHeader,
        trailers: &mut HeaderMap,
    ) -> Verdict {
        self.scratch.lend_trailers(trailers);
        let verdict = 'chain: {
            for i in self.trailer_filters(phase) {
                let invoked = self.invoke_trailers(i, req);
                let settled = self
                    .settle(i, invoked, Phase::ResponseTrailers, req, ResponseSlot::Kept)
                    .await;
                if let Some(verdict) = settled {
                    break 'chain verdict;
                }
            }
            Verdict::Continue
        };
        self.scratch.return_trailers(trailers);
        verdict
    }

    /// [`FilterChain::on_response_trailers`] where the hook cannot wait (before the cache):
    /// a pause goes on, with a warning, as at the end of a response body. It runs first, when
    /// every filter has seen all of the body: a filter of either phase still holding some of
    /// it ends the response here (see [`FilterChain::held_at_trailers`]).
    pub(crate) fn on_response_trailers_now(
        &mut self,
        phase: ResponsePhase,
        req: &mut RequestHeader,
        trailers: &mut HeaderMap,
    ) -> Verdict {
        if let Some(verdict) = (0..self.entries.len()).find_map(|i| self.held_at_trailers(i)) {
            return verdict;
        }
        self.scratch.lend_trailers(trailers);
        let verdict = 'chain: {
            for i in self.trailer_filters(phase) {
                match self.invoke_trailers(i, req) {
                    Invoked::Continue => {}
                    Invoked::Pause(waiter) => {
                        self.stop_waiting(i, waiter);
                        self.warn_response_pause(i);
                    }
                    Invoked::Respond(response) => break 'chain Verdict::Respond(response),
                    Invoked::Close => break 'chain Verdict::Close,
                    Invoked::Fault(fault) => {
                        if let Some(verdict) = self.fail(i, fault) {
                            break 'chain verdict;
                        }
                    }
                }
            }
            Verdict::Continue
        };
        self.scratch.return_trailers(trailers);
        verdict
    }

    /// The active filters of `phase` in response order.
    fn trailer_filters(&self, phase: ResponsePhase) -> Vec<usize> {
        (0..self.entries.len())
            .rev()
            .filter(|&i| self.entries[i].active && self.entries[i].in_phase(phase))
            .collect()
    }

    /// A filter still holding body bytes when the trailers come (it paused a body that never
    /// said `end_of_stream`, since trailers follow it): Pingora cannot send bytes between the
    /// body it has and the trailers, so the response is cut short rather than sent without
    /// them.
    fn held_at_trailers(&self, i: usize) -> Option<Verdict> {
        let held = self.entries[i].response_body.len();
        if held == 0 {
            return None;
        }
        let name = self.entries[i].plugin.info.name.clone();
        log::warn!(
            "filter `{name}` holds {held} bytes of a response body that ended with trailers; edgeward cannot send a held body before them, so the response is cut short"
        );
        Some(Verdict::Fail(FilterFailure {
            message: format!("filter `{name}` held the response body at its trailers"),
            filter: name,
            status: 502,
            code: "body_held_at_trailers",
        }))
    }

    /// `on_response_trailers` of filter `i`.
    fn invoke_trailers(&mut self, i: usize, req: &mut RequestHeader) -> Invoked {
        let count = self.scratch.trailer_count();
        let callback = HttpCallback::ResponseTrailers { count };
        self.invoke(i, callback, req, ResponseSlot::Kept, BytesMut::new())
            .1
    }

    /// Whether [`FilterChain::finish`] needs the head the client got: the chain holds it
    /// already when the after-cache filters let it go (copying it costs as much as a filter's
    /// header edits).
    pub(crate) fn needs_sent_response(&self) -> bool {
        !self.scratch.response_sent
    }

    /// `on_log`, `on_done`, `on_delete` for every filter that saw the request, then gives
    /// the instances back. `sent` is the head the client got (for `response.code`), if
    /// [`FilterChain::needs_sent_response`].
    pub fn finish(&mut self, req: &mut RequestHeader, sent: Option<ResponseHeader>) {
        if sent.is_some() {
            self.scratch.response = sent;
        }
        for i in 0..self.entries.len() {
            let entry = &mut self.entries[i];
            let (Some(lease), Some(context_id)) = (entry.lease.take(), entry.context_id.take())
            else {
                continue;
            };
            let budget = entry.plugin.info.limits.cpu.saturating_sub(entry.cpu_used);
            let data = self.scratch.take_in(req, None, BytesMut::new());
            let (data, result) = lease.lock().finish_http_context(
                context_id,
                Some(data),
                CpuDeadline::start(budget),
            );
            if let Some(data) = data {
                self.scratch.put_back(req, None, data);
            }
            if let Err(fault) = result {
                log::warn!(
                    "filter `{}` {fault} while finishing a request",
                    entry.plugin.info.name
                );
                entry.plugin.record_fault(&fault);
            }
            entry.plugin.release(lease);
        }
    }

    /// One callback of filter `i`; a pause registers the request as waiting before the
    /// instance is let go, so that nothing meant for it can slip past.
    fn invoke(
        &mut self,
        i: usize,
        callback: HttpCallback,
        req: &mut RequestHeader,
        resp: ResponseSlot<'_>,
        body: BytesMut,
    ) -> (BytesMut, Invoked) {
        let purpose = Purpose::Callback(callback.phase());
        self.invoke_for(i, callback, purpose, req, resp, body)
    }

    fn invoke_for(
        &mut self,
        i: usize,
        callback: HttpCallback,
        purpose: Purpose,
        req: &mut RequestHeader,
        resp: ResponseSlot<'_>,
        body: BytesMut,
    ) -> (BytesMut, Invoked) {
        self.call(
            i,
            req,
            resp,
            body,
            purpose,
            |instance, context_id, data, deadline| {
                instance.http_callback(context_id, callback, data, deadline)
            },
        )
    }

    /// Runs `guest` against filter `i`'s instance with the request's data moved in and out;
    /// acquires the instance and creates the context on first use; counts the call.
    fn call(
        &mut self,
        i: usize,
        req: &mut RequestHeader,
        mut resp: ResponseSlot<'_>,
        body: BytesMut,
        purpose: Purpose,
        guest: impl FnOnce(
            &mut Instance,
            u32,
            Box<HttpData>,
            CpuDeadline,
        ) -> (Option<Box<HttpData>>, Result<Outcome, Fault>),
    ) -> (BytesMut, Invoked) {
        let entry = &mut self.entries[i];
        if !entry.active {
            return (body, Invoked::Continue);
        }
        if entry.lease.is_none() {
            match entry.plugin.acquire() {
                Ok(lease) => entry.lease = Some(lease),
                Err(fault) => return (body, Invoked::Fault(fault)),
            }
        }
        let Some(lease) = entry.lease.as_ref() else {
            return (body, Invoked::Continue);
        };
        let budget = entry.plugin.info.limits.cpu.saturating_sub(entry.cpu_used);
        if budget.is_zero() {
            return (body, Invoked::Fault(Fault::CpuLimit));
        }
        let mut instance = lease.lock();
        // Counted from here: waiting for a shared instance costs the guest nothing. One
        // meter serves the accounting and the guest call's deadline.
        let deadline = CpuDeadline::start(budget);
        let (context_id, guest_deadline) = match entry.context_id {
            Some(id) => (id, deadline),
            None => match instance.create_http_context(deadline) {
                // What creating the context used is gone from the callback's budget.
                Ok(id) => (*entry.context_id.insert(id), deadline.rest()),
                Err(fault) => return (body, Invoked::Fault(fault)),
            },
        };
        let data = self.scratch.take_in(req, resp.live(), body);
        let (data, result) = guest(&mut instance, context_id, data, guest_deadline);
        let (elapsed, used) = deadline.meter.elapsed_and_used();
        entry.cpu_used += used;
        let (phase, wait_if_paused) = match purpose {
            Purpose::Callback(phase) => (phase, true),
            Purpose::HeldBody => (Phase::RequestBody, false),
            Purpose::CallResponse => (Phase::CallResponse, false),
        };
        entry.plugin.call_metrics.record(phase, elapsed);
        let body = match data {
            Some(data) => self.scratch.put_back(req, resp.live(), data),
            None => {
                return (
                    BytesMut::new(),
                    Invoked::Fault(Fault::trap("the host lost the request's data")),
                )
            }
        };
        let invoked = match result {
            Ok(Outcome::Continue) => Invoked::Continue,
            Ok(Outcome::Pause) if wait_if_paused => {
                Invoked::Pause(instance.wait_for_resumption(context_id))
            }
            Ok(Outcome::Pause) => Invoked::Pause(mpsc::unbounded_channel().1),
            Ok(Outcome::Respond(response)) => Invoked::Respond(response),
            Ok(Outcome::Close) => Invoked::Close,
            Err(fault) => Invoked::Fault(fault),
        };
        let wants_ticks = !instance.ticking && instance.tick_period().is_some();
        drop(instance);
        if wants_ticks {
            entry.plugin.watch_ticks(&lease.instance);
        }
        (body, invoked)
    }

    /// Turns a callback's outcome into the chain's next step: `None` goes on to the next
    /// filter, `Some` ends the phase. A pause waits here, running the filter's
    /// `on_http_call_response` for each callout answer, until it resumes or answers.
    async fn settle(
        &mut self,
        i: usize,
        invoked: Invoked,
        phase: Phase,
        req: &mut RequestHeader,
        mut resp: ResponseSlot<'_>,
    ) -> Option<Verdict> {
        let mut waiter = match invoked {
            Invoked::Continue => return None,
            Invoked::Respond(response) => return Some(Verdict::Respond(response)),
            Invoked::Close => return Some(Verdict::Close),
            Invoked::Fault(fault) => return self.fail(i, fault),
            Invoked::Pause(waiter) => waiter,
        };
        let verdict = loop {
            let resumption =
                match tokio::time::timeout_at(self.deadline.into(), waiter.recv()).await {
                    Ok(Some(resumption)) => resumption,
                    // The instance failed while the request waited on it. The call that
                    // failed it recorded the fault: one crash, however many were waiting.
                    Ok(None) => break self.apply_policy(i, self.instance_fault(i)),
                    Err(_elapsed) => break Some(self.timed_out(i)),
                };
            match self.answer_resumption(i, resumption, phase, req, &mut resp) {
                Invoked::Continue => break None,
                Invoked::Respond(response) => break Some(Verdict::Respond(response)),
                Invoked::Close => break Some(Verdict::Close),
                Invoked::Fault(fault) => break self.fail(i, fault),
                // Still paused: more answers (or a resume) to come.
                Invoked::Pause(_) => continue,
            }
        };
        self.stop_waiting(i, waiter);
        verdict
    }

    /// Acts on what the request waiting on filter `i` in `phase` received: a resume, a local
    /// response, or a callout's answer, whose `on_http_call_response` runs here with the
    /// request's heads, and the body the filter holds when it paused one.
    fn answer_resumption(
        &mut self,
        i: usize,
        resumption: Resumption,
        phase: Phase,
        req: &mut RequestHeader,
        resp: &mut ResponseSlot<'_>,
    ) -> Invoked {
        let (token, answer) = match resumption {
            Resumption::Continue => return Invoked::Continue,
            Resumption::LocalResponse(response) => return Invoked::Respond(response),
            Resumption::Close => return Invoked::Close,
            Resumption::Callout { token, answer } => (token, answer),
        };
        let live = match resp {
            ResponseSlot::Live(head) => ResponseSlot::Live(head),
            ResponseSlot::Kept => ResponseSlot::Kept,
        };
        let held = match phase {
            Phase::RequestBody => Some(Direction::Request),
            Phase::ResponseBody => Some(Direction::Response),
            _ => None,
        };
        let body = held.map_or_else(BytesMut::new, |direction| {
            std::mem::take(self.entries[i].held_body(direction))
        });
        let (body, invoked) = self.call(
            i,
            req,
            live,
            body,
            Purpose::CallResponse,
            |instance, context_id, data, deadline| {
                instance.http_call_response(context_id, phase, Some(data), token, answer, deadline)
            },
        );
        if let Some(direction) = held {
            *self.entries[i].held_body(direction) = body;
        }
        invoked
    }

    /// The request no longer waits on filter `i`.
    fn stop_waiting(&mut self, i: usize, waiter: mpsc::UnboundedReceiver<Resumption>) {
        drop(waiter);
        let entry = &self.entries[i];
        if let (Some(lease), Some(context_id)) = (&entry.lease, entry.context_id) {
            lease.lock().stop_waiting(context_id);
        }
    }

    fn instance_fault(&self, i: usize) -> Fault {
        self.entries[i]
            .lease
            .as_ref()
            .and_then(|lease| lease.lock().poisoned().cloned())
            .unwrap_or_else(|| Fault::Unavailable("the instance went away".into()))
    }

    fn timed_out(&self, i: usize) -> Verdict {
        let name = self.entries[i].plugin.info.name.clone();
        Verdict::Fail(FilterFailure {
            status: 504,
            code: "filter_timeout",
            message: format!("filter `{name}` paused the request and did not resume it within the route's timeout"),
            filter: name,
        })
    }

    /// Records the fault of a call filter `i` made for this request, and applies the policy.
    fn fail(&mut self, i: usize, fault: Fault) -> Option<Verdict> {
        self.entries[i].plugin.record_fault(&fault);
        self.apply_policy(i, fault)
    }

    /// Applies the failure policy: fail-open skips the filter, fail-closed ends the request.
    fn apply_policy(&mut self, i: usize, fault: Fault) -> Option<Verdict> {
        let entry = &mut self.entries[i];
        let name = entry.plugin.info.name.clone();
        entry.active = false;
        entry.context_id = None;
        if let Some(lease) = entry.lease.take() {
            entry.plugin.release(lease);
        }
        let fail_open = entry.plugin.on_error == FailurePolicy::FailOpen;
        let policy = if fail_open {
            "skipping it for this request (fail_open)"
        } else {
            "failing the request (fail_closed)"
        };
        if fault.is_crash() {
            // One record: what crashed, where, for which request; then the report.
            let (route, request) = self
                .scratch
                .data
                .as_ref()
                .map(|d| (d.stream.route.clone(), d.stream.request_id.clone()))
                .unwrap_or_default();
            log::error!(
                "filter `{name}` {fault} (route `{route}`, request {request}); {policy}{}",
                fault.report()
            );
        } else if let Some(unlogged) = entry.plugin.refusal_to_log() {
            let since = match unlogged {
                0 => String::new(),
                n => format!(" ({n} more requests refused since the last report)"),
            };
            log::error!("filter `{name}` {fault}; {policy}{since}");
        }
        (!fail_open).then(|| {
            Verdict::Fail(FilterFailure {
                status: if fault.is_resource_limit() { 503 } else { 500 },
                code: fault.code(),
                message: format!("filter `{name}` {fault}"),
                filter: name,
            })
        })
    }

    /// Adds `data` to what filter `i` holds of this body and runs its body callback on all of
    /// it (Envoy's buffering: the size is cumulative). The held bytes stay with the filter;
    /// what it lets through is split off by the caller.
    ///
    /// `limits.body` bounds what a filter holds while it buffers: a filter already holding
    /// bytes never sees the chunk that would take it over, and one that pauses on more is
    /// stopped. A filter that lets each chunk go sees chunks of any size (a cache hit's body
    /// comes as one).
    /// `held`: the filter holds the request headers, and the request already waits on it.
    fn feed_body(
        &mut self,
        i: usize,
        direction: Direction,
        data: &[u8],
        end_of_stream: bool,
        req: &mut RequestHeader,
        held: bool,
    ) -> Result<Invoked, Verdict> {
        let mut held_bytes = std::mem::take(self.entries[i].held_body(direction));
        let buffering = !held_bytes.is_empty();
        held_bytes.extend_from_slice(data);
        if buffering {
            if let Some(verdict) = self.check_body_limit(i, held_bytes.len(), direction) {
                return Err(verdict);
            }
        }
        let size = held_bytes.len() as u32;
        let callback = match direction {
            Direction::Request => HttpCallback::RequestBody {
                size,
                end_of_stream,
            },
            Direction::Response => HttpCallback::ResponseBody {
                size,
                end_of_stream,
            },
        };
        let purpose = match held {
            true => Purpose::HeldBody,
            false => Purpose::Callback(callback.phase()),
        };
        let (kept, invoked) =
            self.invoke_for(i, callback, purpose, req, ResponseSlot::Kept, held_bytes);
        let held_len = kept.len();
        *self.entries[i].held_body(direction) = kept;
        match invoked {
            Invoked::Pause(waiter) => match self.check_body_limit(i, held_len, direction) {
                Some(verdict) => {
                    self.stop_waiting(i, waiter);
                    Err(verdict)
                }
                None => Ok(Invoked::Pause(waiter)),
            },
            invoked => Ok(invoked),
        }
    }

    /// A body larger than the filter may buffer: 413 for requests; responses, whose head is
    /// out, are cut short (502 in the log).
    fn check_body_limit(&mut self, i: usize, held: usize, direction: Direction) -> Option<Verdict> {
        let (status, direction) = match direction {
            Direction::Request => (413, "request"),
            Direction::Response => (502, "response"),
        };
        let entry = &self.entries[i];
        let limit = entry.plugin.info.limits.body;
        if held as u64 <= limit {
            return None;
        }
        let name = entry.plugin.info.name.clone();
        metrics::global()
            .filter_limit_hits
            .with_label_values(&[name.as_str(), "body"])
            .inc();
        log::warn!(
            "filter `{name}` buffered more than its {limit}-byte body limit of the {direction}"
        );
        Some(Verdict::Fail(FilterFailure {
            message: format!(
                "the {direction} body is larger than filter `{name}` may buffer ({limit} bytes)"
            ),
            filter: name,
            status,
            code: "body_too_large",
        }))
    }

    fn warn_response_pause(&mut self, i: usize) {
        let entry = &mut self.entries[i];
        if !entry.warned_response_pause {
            entry.warned_response_pause = true;
            log::warn!(
                "filter `{}` paused at the end of a response body; edgeward cannot hold a response body after it ended, so it goes on",
                entry.plugin.info.name
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Held requests: the request body while a filter holds the request headers.
//
// As with Envoy's `StopIteration`, pausing the request headers does not stop the body: each
// piece read goes through the filters whose headers already passed, then to the body callback
// of the filter that paused. That filter can read the body, buffer it (`Pause`, with the
// cumulative size), change the headers it still holds, answer, or let the request go on:
// `Continue` from a body callback resumes the headers, and the body so far follows them
// through the rest of the chain.
//
// One difference from Envoy, for safety: while callouts the filter made are unanswered, a body
// callback's `Continue` only lets that piece through; the request still waits for the filter to
// resume it. Otherwise a filter that pauses for an authorization callout and keeps the SDK's
// default body callback would let any request with a body past the check.
//
// The proxy reads no more body than it can hold before the request goes upstream (the source
// says when it is full): a filter that buffers past that gets a 413. A filter that let the
// body through and waits for its callouts stops the reading, so a large upload waits in the
// client's connection as it would without a body callback.

/// Where a held request stands after the filter holding it saw something.
enum Held {
    /// The filter let the request go on.
    Resumed,
    /// The filter still holds it; `wants_body` unless it let the body through while its
    /// callouts are out.
    Waiting {
        wants_body: bool,
    },
    Ended(Verdict),
}

/// What the held request waited for.
enum Event {
    /// The filter's resumption, or `None` when its instance failed; `Err` at the deadline.
    Resumption(Result<Option<Resumption>, tokio::time::error::Elapsed>),
    Body(Result<BodyPiece, BodyUnavailable>),
}

impl FilterChain {
    /// Runs the request head through the chain, reading the body from `source` while a
    /// filter holds the head (see the module's text).
    pub async fn on_request_headers_reading(
        &mut self,
        req: &mut RequestHeader,
        source: &mut impl RequestBodySource,
    ) -> Verdict {
        self.request_headers(req, false, source).await
    }

    /// The request body read while a filter held the request headers, as it left the chain,
    /// once (`None` when none was read).
    pub(crate) fn take_early_request_body(&mut self) -> Option<(Bytes, bool)> {
        self.early_request_body
            .take()
            .filter(|early| early.read)
            .map(|early| (early.data.freeze(), early.end))
    }

    pub(super) async fn request_headers(
        &mut self,
        req: &mut RequestHeader,
        end_of_stream: bool,
        source: &mut impl RequestBodySource,
    ) -> Verdict {
        self.scratch.hold_request_head(true);
        let mut early = EarlyBody::default();
        let verdict = self
            .run_request_headers(req, end_of_stream, source, &mut early)
            .await;
        self.scratch.hold_request_head(false);
        self.early_request_body = Some(early);
        verdict
    }

    async fn run_request_headers(
        &mut self,
        req: &mut RequestHeader,
        end_of_stream: bool,
        source: &mut impl RequestBodySource,
        early: &mut EarlyBody,
    ) -> Verdict {
        for i in 0..self.entries.len() {
            let callback = HttpCallback::RequestHeaders { end_of_stream };
            let (_, invoked) = self.invoke(i, callback, req, ResponseSlot::Kept, BytesMut::new());
            let settled = match invoked {
                Invoked::Pause(waiter) if !end_of_stream => {
                    self.hold_request_headers(i, waiter, req, source, early)
                        .await
                }
                invoked => {
                    let settled = self
                        .settle(i, invoked, Phase::RequestHeaders, req, ResponseSlot::Kept)
                        .await;
                    // The body read while an earlier filter held the headers follows them.
                    if settled.is_none() && (!early.data.is_empty() || early.end) {
                        let data = early.data.split().freeze();
                        match self.pass_request_body(i..i + 1, data, early.end, req).await {
                            Ok(data) => early.data.extend_from_slice(&data),
                            Err(verdict) => return verdict,
                        }
                    }
                    settled
                }
            };
            if let Some(verdict) = settled {
                return verdict;
            }
        }
        Verdict::Continue
    }

    /// Waits while filter `i` holds the request headers, reading the body meanwhile; `None`
    /// when the filter let the request go on.
    async fn hold_request_headers(
        &mut self,
        i: usize,
        mut waiter: mpsc::UnboundedReceiver<Resumption>,
        req: &mut RequestHeader,
        source: &mut impl RequestBodySource,
        early: &mut EarlyBody,
    ) -> Option<Verdict> {
        // What the filters before `i` let through while an earlier filter held the headers.
        let mut step = if early.data.is_empty() && !early.end {
            Held::Waiting { wants_body: true }
        } else {
            self.feed_held(i, early, req)
        };
        let verdict = loop {
            let wants_body = match step {
                Held::Resumed => break None,
                Held::Ended(verdict) => break Some(verdict),
                Held::Waiting { wants_body } => wants_body && !early.end,
            };
            let deadline = self.deadline.into();
            // Reading is cancelled when the filter resumes first: Pingora's body readers keep
            // their state across a cancelled read, and the rest is read as the request goes on.
            let event = tokio::select! {
                resumption = tokio::time::timeout_at(deadline, waiter.recv()) => {
                    Event::Resumption(resumption)
                }
                piece = source.read(), if wants_body => Event::Body(piece),
            };
            step = match event {
                Event::Resumption(Err(_elapsed)) => break Some(self.timed_out(i)),
                // The instance failed while the request waited on it (the call that failed it
                // recorded the fault).
                Event::Resumption(Ok(None)) => match self.apply_policy(i, self.instance_fault(i)) {
                    Some(verdict) => Held::Ended(verdict),
                    None => self.release_held(i, early),
                },
                Event::Resumption(Ok(Some(resumption))) => {
                    let phase = Phase::RequestHeaders;
                    let answered =
                        self.answer_resumption(i, resumption, phase, req, &mut ResponseSlot::Kept);
                    match answered {
                        Invoked::Pause(_) => Held::Waiting { wants_body },
                        invoked => self.held_outcome(i, invoked, early, false),
                    }
                }
                Event::Body(Err(BodyUnavailable::Full { limit })) => {
                    Held::Ended(self.held_body_too_large(i, limit))
                }
                Event::Body(Err(BodyUnavailable::Failed)) => Held::Ended(Verdict::Close),
                Event::Body(Ok(piece)) => {
                    self.count_request_body(piece.data.len());
                    early.read = true;
                    early.end = piece.end;
                    match self
                        .pass_request_body(0..i, piece.data, piece.end, req)
                        .await
                    {
                        Err(verdict) => Held::Ended(verdict),
                        Ok(data) if data.is_empty() && !piece.end => Held::Waiting { wants_body },
                        Ok(data) => {
                            early.data.extend_from_slice(&data);
                            self.feed_held(i, early, req)
                        }
                    }
                }
            };
        };
        self.stop_waiting(i, waiter);
        verdict
    }

    /// Gives filter `i`, which holds the headers, what reached it of the body.
    fn feed_held(&mut self, i: usize, early: &mut EarlyBody, req: &mut RequestHeader) -> Held {
        let data = early.data.split().freeze();
        match self.feed_body(i, Direction::Request, &data, early.end, req, true) {
            Ok(invoked) => self.held_outcome(i, invoked, early, true),
            Err(verdict) => Held::Ended(verdict),
        }
    }

    /// What filter `i`'s answer means for the request it holds. `from_body`: the answer of
    /// a body callback, whose `Continue` waits for the filter's callouts.
    fn held_outcome(
        &mut self,
        i: usize,
        invoked: Invoked,
        early: &mut EarlyBody,
        from_body: bool,
    ) -> Held {
        match invoked {
            Invoked::Continue if from_body && self.awaits_callouts(i) => {
                early
                    .data
                    .extend_from_slice(&self.entries[i].request_body.split());
                Held::Waiting { wants_body: false }
            }
            Invoked::Continue => self.release_held(i, early),
            Invoked::Pause(_) => Held::Waiting { wants_body: true },
            Invoked::Respond(response) => Held::Ended(Verdict::Respond(response)),
            Invoked::Close => Held::Ended(Verdict::Close),
            Invoked::Fault(fault) => match self.fail(i, fault) {
                Some(verdict) => Held::Ended(verdict),
                None => self.release_held(i, early),
            },
        }
    }

    /// Filter `i` lets the request go on: the body it held follows the headers.
    fn release_held(&mut self, i: usize, early: &mut EarlyBody) -> Held {
        early
            .data
            .extend_from_slice(&self.entries[i].request_body.split());
        Held::Resumed
    }

    /// Whether callouts filter `i` made for this request are still to be answered.
    fn awaits_callouts(&self, i: usize) -> bool {
        let entry = &self.entries[i];
        match (&entry.lease, entry.context_id) {
            (Some(lease), Some(context_id)) => lease.lock().awaits_callouts(context_id),
            _ => false,
        }
    }

    fn held_body_too_large(&self, i: usize, limit: u64) -> Verdict {
        let name = self.entries[i].plugin.info.name.clone();
        metrics::global()
            .filter_limit_hits
            .with_label_values(&[name.as_str(), "body"])
            .inc();
        Verdict::Fail(FilterFailure {
            message: format!(
                "filter `{name}` holds the request headers and wants more of the body than edgeward keeps before a request goes upstream ({limit} bytes)"
            ),
            filter: name,
            status: 413,
            code: "body_too_large",
        })
    }
}

impl Scratch {
    fn info_mut(&mut self) -> Option<&mut StreamInfo> {
        self.data.as_mut().map(|data| &mut data.stream)
    }

    /// Puts (a copy of) the response trailers where the trailer callbacks find them.
    fn lend_trailers(&mut self, trailers: &HeaderMap) {
        if let Some(data) = self.data.as_mut() {
            data.response_trailers = Some(trailers.clone());
        }
    }

    /// The trailers as the filters left them; a copy stays for the log phase.
    fn return_trailers(&mut self, trailers: &mut HeaderMap) {
        if let Some(kept) = self
            .data
            .as_ref()
            .and_then(|d| d.response_trailers.as_ref())
        {
            trailers.clone_from(kept);
        }
    }

    fn trailer_count(&self) -> u32 {
        self.data
            .as_ref()
            .and_then(|d| d.response_trailers.as_ref())
            .map_or(0, |t| t.len() as u32)
    }

    /// Whether the chain holds the request head (it has not gone upstream).
    fn hold_request_head(&mut self, held: bool) {
        if let Some(data) = self.data.as_mut() {
            data.request_head_held = held;
        }
    }

    /// Moves the request (and the live or kept response) into call data, leaving stand-ins.
    fn take_in(
        &mut self,
        req: &mut RequestHeader,
        live: Option<&mut ResponseHeader>,
        body: BytesMut,
    ) -> Box<HttpData> {
        // Only a call that lost the data (a fault) leaves no box: start afresh.
        let mut data = self.data.take().unwrap_or_else(|| {
            Box::new(HttpData {
                request: stand_in_request(),
                response: None,
                body: BytesMut::new(),
                stream: StreamInfo::default(),
                response_trailers: None,
                request_head_held: false,
            })
        });
        std::mem::swap(&mut data.request, req);
        data.response = match live {
            Some(resp) => Some(std::mem::replace(
                resp,
                self.spare_response.take().unwrap_or_else(stand_in_response),
            )),
            None => self.response.take(),
        };
        data.body = body;
        data
    }

    /// Puts the heads back where they came from; returns the body buffer.
    fn put_back(
        &mut self,
        req: &mut RequestHeader,
        live: Option<&mut ResponseHeader>,
        mut data: Box<HttpData>,
    ) -> BytesMut {
        std::mem::swap(&mut data.request, req);
        match (live, data.response.take()) {
            (Some(resp), Some(response)) => {
                self.spare_response = Some(std::mem::replace(resp, response))
            }
            (None, response) => self.response = response,
            (Some(_), None) => {}
        }
        let body = std::mem::take(&mut data.body);
        self.data = Some(data);
        body
    }
}

fn stand_in_request() -> RequestHeader {
    RequestHeader::from(http::Request::new(()).into_parts().0)
}

fn stand_in_response() -> ResponseHeader {
    ResponseHeader::from(http::Response::new(()).into_parts().0)
}

impl Entry {
    fn new(plugin: Arc<Plugin>) -> Self {
        Entry {
            plugin,
            lease: None,
            context_id: None,
            active: true,
            cpu_used: Duration::ZERO,
            request_body: BytesMut::new(),
            response_body: BytesMut::new(),
            warned_response_pause: false,
        }
    }

    /// Whether this filter's response callbacks run in `phase`.
    fn in_phase(&self, phase: ResponsePhase) -> bool {
        self.plugin.info.response_phase == phase
    }

    fn held_body(&mut self, direction: Direction) -> &mut BytesMut {
        match direction {
            Direction::Request => &mut self.request_body,
            Direction::Response => &mut self.response_body,
        }
    }
}

impl Drop for FilterChain {
    /// A request that ended without reaching `finish` (a bug or a panic elsewhere) still
    /// deletes its contexts, so shared instances do not accumulate them.
    fn drop(&mut self) {
        for entry in &mut self.entries {
            if let (Some(lease), Some(context_id)) = (entry.lease.take(), entry.context_id.take()) {
                let deadline = CpuDeadline::start(entry.plugin.info.limits.cpu);
                let _ = lease.lock().finish_http_context(context_id, None, deadline);
                entry.plugin.release(lease);
            }
        }
    }
}

#[cfg(test)]
mod tests;
