//! What a filter instance's store holds: the plugin it belongs to, its memory and allocator,
//! its live contexts, and the callback in progress. Hostcalls read and change only this.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http::HeaderMap;
use pingora::http::{RequestHeader, ResponseHeader};
use tokio::sync::mpsc;
use wasmtime::{Memory, ResourceLimiter, TypedFunc};

use super::cpu::CpuMeter;
use super::info::{PluginInfo, StreamInfo};
use super::mailbox::{CalloutAnswer, InstanceCell};
use super::services::{HostServices, Job};

pub(crate) struct HostState {
    pub plugin: Arc<PluginInfo>,
    /// The guest's `memory` export and allocator, looked up once per instance.
    pub memory: Option<Memory>,
    pub alloc: Option<TypedFunc<u32, u32>>,
    pub limiter: MemoryLimiter,
    pub root_id: u32,
    /// Contexts the guest may name: the root and the HTTP contexts alive on this instance.
    pub live_contexts: HashSet<u32>,
    pub call: Call,
    /// Set by `proxy_set_tick_period_milliseconds`; `None` means no ticks.
    pub tick_period: Option<Duration>,
    /// Requests paused on this instance: callout answers, `proxy_continue_stream` and local
    /// responses for them go here, to be acted on by the waiting request.
    pub waiters: HashMap<u32, mpsc::UnboundedSender<Resumption>>,
    /// Where the root context is in its ending (`on_done`, `proxy_done`).
    pub root_ending: RootEnding,
    /// Properties the filter declared (`declare_property`), by name.
    pub declared_properties: HashMap<Vec<u8>, DeclaredProperty>,
    /// Foreign functions the filter called that edgeward lacks, each logged once.
    pub unknown_foreign_functions: HashSet<Vec<u8>>,
    /// Callouts made for each HTTP context whose answers have not been delivered yet.
    pub callouts_in_flight: HashMap<u32, u32>,
    /// Warnings and errors the filter logged in `on_vm_start` and `on_configure`: its reasons,
    /// should it reject its configuration.
    pub said_at_start: Vec<String>,
    /// Critical lines the running call logged (a Rust SDK panic message): they go into the
    /// crash report if the call traps, else to the log when it returns.
    pub held_critical: Vec<String>,
    /// Partial lines the guest wrote to stdout and stderr, logged once complete.
    pub output: [Vec<u8>; 2],
    /// Shared data, queues and the job queue of the filter host.
    pub services: Arc<HostServices>,
    /// Where this instance will live, so that callout answers and queue notices can find it.
    pub cell: InstanceCell,
    /// Jobs made before the instance was placed in its cell (during start-up).
    pub outbox: Vec<Job>,
    /// The last `proxy_http_call` token handed out.
    pub last_token: u32,
    /// The start-up left state outside the guest (ticks, callouts, queues): it cannot be
    /// captured in a snapshot.
    pub lasting_effects: bool,
    /// The running guest call's CPU budget and meter, checked at each epoch deadline.
    pub cpu: CpuDeadline,
}

/// The root context's ending, as proxy-wasm-cpp-host runs it: an `on_done` that answers false
/// is not done yet, and says so later with `proxy_done`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RootEnding {
    Running,
    /// `on_done` answered false: waiting for `proxy_done`.
    Pending,
    Done,
}

/// How a filter declared one of its properties (`declare_property`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeclaredProperty {
    /// Set once per request; a second set is refused.
    pub readonly: bool,
}

/// The CPU time a guest call may use, and what it has used.
#[derive(Clone, Copy)]
pub(crate) struct CpuDeadline {
    pub meter: CpuMeter,
    pub budget: Duration,
}

impl CpuDeadline {
    pub(crate) fn start(budget: Duration) -> Self {
        CpuDeadline {
            meter: CpuMeter::start(),
            budget,
        }
    }

    /// What is left of the budget, metered from now.
    pub(crate) fn rest(&self) -> Self {
        CpuDeadline::start(self.budget.saturating_sub(self.meter.used()))
    }
}

impl HostState {
    pub(crate) fn new(plugin: Arc<PluginInfo>, root_id: u32, services: Arc<HostServices>) -> Self {
        let max = usize::try_from(plugin.limits.memory).unwrap_or(usize::MAX);
        HostState {
            plugin,
            memory: None,
            alloc: None,
            limiter: MemoryLimiter { max, hit: false },
            root_id,
            live_contexts: HashSet::from([root_id]),
            call: Call::root(root_id, Phase::Startup),
            tick_period: None,
            waiters: HashMap::new(),
            callouts_in_flight: HashMap::new(),
            root_ending: RootEnding::Running,
            declared_properties: HashMap::new(),
            unknown_foreign_functions: HashSet::new(),
            held_critical: Vec::new(),
            said_at_start: Vec::new(),
            output: [Vec::new(), Vec::new()],
            services,
            cell: InstanceCell::default(),
            outbox: Vec::new(),
            last_token: 0,
            lasting_effects: false,
            cpu: CpuDeadline::start(Duration::ZERO),
        }
    }

    /// Hands a job to the dispatcher, or keeps it until the instance has its place.
    pub(crate) fn submit(&mut self, job: Job) {
        if self.cell.get().is_some() {
            self.services.submit(job);
        } else {
            self.outbox.push(job);
        }
    }
}

/// The callback in progress and what its hostcalls asked for.
pub(crate) struct Call {
    /// The context the host invoked the callback for.
    pub context_id: u32,
    /// The context hostcalls act on; `proxy_set_effective_context` changes it.
    pub effective_context: u32,
    pub phase: Phase,
    /// The request being served, while an HTTP callback runs.
    pub http: Option<Box<HttpData>>,
    pub local_response: Option<LocalResponse>,
    pub continue_requested: bool,
    pub close_requested: bool,
    /// The answer of the callout whose `on_http_call_response` is running.
    pub callout: Option<CalloutAnswer>,
}

impl Call {
    pub(crate) fn root(root_id: u32, phase: Phase) -> Self {
        Call {
            context_id: root_id,
            effective_context: root_id,
            phase,
            http: None,
            local_response: None,
            continue_requested: false,
            close_requested: false,
            callout: None,
        }
    }

    pub(crate) fn http(context_id: u32, phase: Phase, data: Box<HttpData>) -> Self {
        Call {
            http: Some(data),
            ..Call::root(context_id, phase)
        }
    }

    /// Whether hostcalls currently act on the HTTP context the callback was invoked for.
    pub(crate) fn on_own_stream(&self) -> bool {
        self.http.is_some() && self.effective_context == self.context_id
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Startup,
    VmStart,
    Configure,
    Tick,
    ContextCreate,
    RequestHeaders,
    RequestBody,
    ResponseHeaders,
    ResponseBody,
    ResponseTrailers,
    Log,
    Done,
    Delete,
    CallResponse,
    QueueReady,
}

impl Phase {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Phase::Startup => "start-up",
            Phase::VmStart => "on_vm_start",
            Phase::Configure => "on_configure",
            Phase::Tick => "on_tick",
            Phase::ContextCreate => "on_context_create",
            Phase::RequestHeaders => "on_http_request_headers",
            Phase::RequestBody => "on_http_request_body",
            Phase::ResponseHeaders => "on_http_response_headers",
            Phase::ResponseBody => "on_http_response_body",
            Phase::ResponseTrailers => "on_http_response_trailers",
            Phase::Log => "on_log",
            Phase::Done => "on_done",
            Phase::Delete => "on_delete",
            Phase::CallResponse => "on_http_call_response",
            Phase::QueueReady => "on_queue_ready",
        }
    }
}

/// The request a filter is looking at, moved into the store for one callback (boxed, so
/// that moving it in and out of the store around every callback copies a pointer).
pub(crate) struct HttpData {
    pub request: RequestHeader,
    /// The response head, once there is one.
    pub response: Option<ResponseHeader>,
    /// The body bytes the current body callback sees (cumulative while the filter buffers).
    pub body: BytesMut,
    pub stream: StreamInfo,
    /// The response trailers, once they came (writable in their own phase).
    pub response_trailers: Option<HeaderMap>,
    /// The request head has not gone upstream yet (the chain holds it in its headers phase):
    /// changes to it, the request line's included, still reach the upstream.
    pub request_head_held: bool,
}

/// An answer a filter made up itself with `proxy_send_local_response`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u16,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Vec<u8>,
    pub details: String,
}

/// What a paused request is told.
#[derive(Debug)]
pub(crate) enum Resumption {
    Continue,
    LocalResponse(LocalResponse),
    Close,
    /// The answer of a callout it made, for its `on_http_call_response`.
    Callout {
        token: u32,
        answer: CalloutAnswer,
    },
}

/// Caps an instance's linear memory and remembers that it was hit, so that the trap that
/// usually follows is reported as a memory limit rather than a crash.
pub(crate) struct MemoryLimiter {
    pub max: usize,
    pub hit: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}
