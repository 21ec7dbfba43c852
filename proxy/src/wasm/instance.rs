//! One filter instance: its store, its exports, the proxy-wasm start-up sequence, and every
//! guest call made under a CPU deadline. A call that faults poisons the instance for good.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::mpsc;
use wasmtime::{
    Engine, InstancePre, Module, ModuleExport, Store, StoreContextMut, TypedFunc, UpdateDeadline,
    WasmParams, WasmResults,
};

use super::abi::wasi::flush_output;
use super::engine::epoch_tick;
use super::error::{classify, ExportError, Fault, StartError};
use super::info::PluginInfo;
use super::mailbox::{CalloutAnswer, Mailbox};
use super::services::HostServices;
use super::state::{
    Call, CpuDeadline, HostState, HttpData, LocalResponse, Phase, Resumption, RootEnding,
};
use crate::causes::describe;
use crate::sync::lock;

/// An instance as requests, the ticker and the background services share it.
pub(super) type SharedInstance = Arc<Mutex<Instance>>;

/// The root context's id; HTTP contexts count up from the next one.
const ROOT_ID: u32 = 1;

/// Which HTTP callback to run, with its arguments.
#[derive(Debug, Clone, Copy)]
pub(crate) enum HttpCallback {
    RequestHeaders { end_of_stream: bool },
    RequestBody { size: u32, end_of_stream: bool },
    ResponseHeaders { end_of_stream: bool },
    ResponseBody { size: u32, end_of_stream: bool },
    ResponseTrailers { count: u32 },
}

impl HttpCallback {
    pub(crate) fn phase(self) -> Phase {
        match self {
            HttpCallback::RequestHeaders { .. } => Phase::RequestHeaders,
            HttpCallback::RequestBody { .. } => Phase::RequestBody,
            HttpCallback::ResponseHeaders { .. } => Phase::ResponseHeaders,
            HttpCallback::ResponseBody { .. } => Phase::ResponseBody,
            HttpCallback::ResponseTrailers { .. } => Phase::ResponseTrailers,
        }
    }
}

/// What a callback asked for.
#[derive(Debug)]
pub(crate) enum Outcome {
    Continue,
    /// Non-zero action: stop (headers) or buffer (bodies) until resumed.
    Pause,
    Respond(LocalResponse),
    Close,
}

type HttpFunc = TypedFunc<(u32, u32, u32), u32>;
/// `(root_id, token, headers, body_size, trailers)`.
type CallResponseFunc = TypedFunc<(u32, u32, u32, u32, u32), ()>;

/// Whether a new instance runs the proxy-wasm start-up or already holds its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartUp {
    /// Initializer, root context, `on_vm_start`, `on_configure`.
    Run,
    /// A pre-initialized module (see `preinit`): its memory holds the configured root context.
    Snapshot,
}

/// Everything needed to make instances of one module.
pub(crate) struct Template {
    pub engine: Engine,
    pub pre: InstancePre<HostState>,
    pub exports: ExportIndex,
    pub startup: StartUp,
}

impl Template {
    pub(crate) fn new(
        engine: &Engine,
        pre: InstancePre<HostState>,
        module: &Module,
        startup: StartUp,
    ) -> Self {
        Template {
            engine: engine.clone(),
            pre,
            exports: ExportIndex::new(module),
            startup,
        }
    }
}

/// Where a module's exports are, found once per module so that new instances look them up
/// by index rather than by name (it matters for a fresh instance per request).
pub(crate) struct ExportIndex {
    memory: Option<ModuleExport>,
    alloc: Option<ModuleExport>,
    initialize: Option<ModuleExport>,
    /// `main(argc, argv)`, else `__main_argc_argv` or `__main_void`: run after `_initialize`.
    main: Option<(ModuleExport, &'static str)>,
    start: Option<ModuleExport>,
    context_create: Option<ModuleExport>,
    vm_start: Option<ModuleExport>,
    configure: Option<ModuleExport>,
    request_headers: Option<ModuleExport>,
    request_body: Option<ModuleExport>,
    response_headers: Option<ModuleExport>,
    response_body: Option<ModuleExport>,
    response_trailers: Option<ModuleExport>,
    log: Option<ModuleExport>,
    http_call_response: Option<ModuleExport>,
    queue_ready: Option<ModuleExport>,
    done: Option<ModuleExport>,
    delete: Option<ModuleExport>,
    tick: Option<ModuleExport>,
}

impl ExportIndex {
    pub(crate) fn new(module: &Module) -> Self {
        let at = |name: &str| module.get_export_index(name);
        ExportIndex {
            memory: at("memory"),
            // The spec's allocator, else the deprecated `malloc` (AssemblyScript, Emscripten).
            alloc: at("proxy_on_memory_allocate").or_else(|| at("malloc")),
            initialize: at("_initialize"),
            main: ["main", "__main_argc_argv", "__main_void"]
                .into_iter()
                .find_map(|name| Some((at(name)?, name))),
            start: at("_start"),
            context_create: at("proxy_on_context_create"),
            vm_start: at("proxy_on_vm_start"),
            configure: at("proxy_on_configure"),
            request_headers: at("proxy_on_request_headers"),
            request_body: at("proxy_on_request_body"),
            response_headers: at("proxy_on_response_headers"),
            response_body: at("proxy_on_response_body"),
            response_trailers: at("proxy_on_response_trailers"),
            log: at("proxy_on_log"),
            http_call_response: at("proxy_on_http_call_response"),
            queue_ready: at("proxy_on_queue_ready"),
            done: at("proxy_on_done"),
            delete: at("proxy_on_delete"),
            tick: at("proxy_on_tick"),
        }
    }
}

/// The export at `index` as a typed function; `None` when the module does not export it.
fn typed_export<P: WasmParams, R: WasmResults>(
    instance: &wasmtime::Instance,
    store: &mut Store<HostState>,
    index: &Option<ModuleExport>,
    name: &'static str,
) -> Result<Option<TypedFunc<P, R>>, ExportError> {
    let Some(index) = index else { return Ok(None) };
    let func = instance
        .get_module_export(&mut *store, index)
        .and_then(wasmtime::Extern::into_func)
        .ok_or(ExportError::NotAFunction(name))?;
    func.typed(&*store)
        .map(Some)
        .map_err(|source| ExportError::WrongSignature { name, source })
}

/// Calls a reactor's `main` after `_initialize`, as proxy-wasm-cpp-host does, with no
/// arguments; what it returns is ignored there too. A trap fails the start as one in
/// `_initialize` does; `proc_exit(0)` is a normal end.
fn run_main(
    instance: &wasmtime::Instance,
    store: &mut Store<HostState>,
    main: &Option<(ModuleExport, &'static str)>,
) -> Result<(), StartError> {
    let Some((index, name)) = main else {
        return Ok(());
    };
    let index = Some(*index);
    let outcome = if *name == "__main_void" {
        typed_export::<(), i32>(instance, store, &index, name)?
            .map(|main| main.call(&mut *store, ()))
    } else {
        typed_export::<(i32, i32), i32>(instance, store, &index, name)?
            .map(|main| main.call(&mut *store, (0, 0)))
    };
    match outcome {
        None | Some(Ok(_)) => Ok(()),
        Some(Err(e)) if classify(&e, false) == Fault::Exit(0) => Ok(()),
        Some(Err(e)) => Err(StartError::Initializer(name, fault_of(&e, store))),
    }
}

/// The guest's callbacks. Every callback is optional.
struct Exports {
    context_create: Callback<TypedFunc<(u32, u32), ()>>,
    vm_start: Callback<TypedFunc<(u32, u32), u32>>,
    configure: Callback<TypedFunc<(u32, u32), u32>>,
    request_headers: Callback<HttpFunc>,
    request_body: Callback<HttpFunc>,
    response_headers: Callback<HttpFunc>,
    response_body: Callback<HttpFunc>,
    response_trailers: Callback<TypedFunc<(u32, u32), u32>>,
    log: Callback<TypedFunc<u32, ()>>,
    http_call_response: Callback<CallResponseFunc>,
    queue_ready: Callback<TypedFunc<(u32, u32), ()>>,
    done: Callback<TypedFunc<u32, u32>>,
    delete: Callback<TypedFunc<u32, ()>>,
    tick: Callback<TypedFunc<u32, ()>>,
}

/// Names one callback slot of [`Exports`].
type Pick<P, R> = fn(&mut Exports) -> &mut Callback<TypedFunc<P, R>>;

/// A callback export, typed on first use: an instance made for one request calls only a few
/// of its callbacks, and typing one costs about as much as a short callback.
enum Callback<F> {
    Unresolved(Option<ModuleExport>, &'static str),
    Resolved(Option<F>),
}

pub(crate) struct Instance {
    store: Store<HostState>,
    handle: wasmtime::Instance,
    exports: Exports,
    next_context_id: u32,
    /// Why this instance may not be used any more, once a call faulted.
    poisoned: Option<Fault>,
    /// Whether a ticker already drives this instance's `on_tick`.
    pub ticking: bool,
}

impl Instance {
    /// Instantiates and runs the proxy-wasm start-up: the module's initializer, the root
    /// context, `on_vm_start` and `on_configure`. The error says which step failed.
    pub(crate) fn start(
        template: &Template,
        plugin: Arc<PluginInfo>,
        services: Arc<HostServices>,
        budget: Duration,
    ) -> Result<Instance, StartError> {
        let mut instance = Self::instantiate(template, plugin, services, budget)?;
        crate::metrics::global()
            .filter_instances
            .with_label_values(&[instance.plugin().name.as_str()])
            .inc();
        if template.startup == StartUp::Run {
            instance.root_calls(budget)?;
        }
        Ok(instance)
    }

    /// Instantiates, resolves exports and runs the module's initializer, if it has one.
    fn instantiate(
        template: &Template,
        plugin: Arc<PluginInfo>,
        services: Arc<HostServices>,
        budget: Duration,
    ) -> Result<Instance, StartError> {
        let exports = &template.exports;
        let mut store = Store::new(&template.engine, HostState::new(plugin, ROOT_ID, services));
        store.limiter(|state| &mut state.limiter);
        store.epoch_deadline_callback(check_cpu);
        start_cpu_deadline(&mut store, CpuDeadline::start(budget));
        let instance = template.pre.instantiate(&mut store).map_err(|e| {
            if e.is::<wasmtime::PoolConcurrencyLimitError>() {
                StartError::PoolFull
            } else {
                StartError::Instantiate(fault_of(&e, &store))
            }
        })?;
        let memory = exports
            .memory
            .as_ref()
            .and_then(|index| instance.get_module_export(&mut store, index))
            .and_then(wasmtime::Extern::into_memory)
            .ok_or(StartError::NoMemory)?;
        let alloc = typed_export(
            &instance,
            &mut store,
            &exports.alloc,
            "proxy_on_memory_allocate",
        )?
        .ok_or(StartError::NoAllocator)?;
        store.data_mut().memory = Some(memory);
        store.data_mut().alloc = Some(alloc);

        macro_rules! export {
            ($field:ident, $name:literal) => {
                Callback::Unresolved(exports.$field, $name)
            };
        }
        let callbacks = Exports {
            context_create: export!(context_create, "proxy_on_context_create"),
            vm_start: export!(vm_start, "proxy_on_vm_start"),
            configure: export!(configure, "proxy_on_configure"),
            request_headers: export!(request_headers, "proxy_on_request_headers"),
            request_body: export!(request_body, "proxy_on_request_body"),
            response_headers: export!(response_headers, "proxy_on_response_headers"),
            response_body: export!(response_body, "proxy_on_response_body"),
            response_trailers: export!(response_trailers, "proxy_on_response_trailers"),
            log: export!(log, "proxy_on_log"),
            http_call_response: export!(http_call_response, "proxy_on_http_call_response"),
            queue_ready: export!(queue_ready, "proxy_on_queue_ready"),
            done: export!(done, "proxy_on_done"),
            delete: export!(delete, "proxy_on_delete"),
            tick: export!(tick, "proxy_on_tick"),
        };

        // Reactor modules (Rust, C++) export `_initialize`; command modules (TinyGo) `_start`,
        // which may end with proc_exit(0).
        let initializers = [
            (&exports.initialize, "_initialize", false),
            (&exports.start, "_start", true),
        ];
        for (index, name, exit_ok) in initializers {
            if let Some(init) = typed_export::<(), ()>(&instance, &mut store, index, name)? {
                match init.call(&mut store, ()) {
                    Ok(()) => {}
                    Err(e) if exit_ok && classify(&e, false) == Fault::Exit(0) => {}
                    Err(e) => return Err(StartError::Initializer(name, fault_of(&e, &store))),
                }
                // A reactor that also has a `main` gets it called, as proxy-wasm-cpp-host
                // does: some toolchains set their SDK up there.
                if !exit_ok {
                    run_main(&instance, &mut store, &exports.main)?;
                }
                break;
            }
        }
        let mut instance = Instance {
            store,
            handle: instance,
            exports: callbacks,
            next_context_id: ROOT_ID + 1,
            poisoned: None,
            ticking: false,
        };
        // Instances that run the start-up (the load's canary among them) check every
        // callback's signature now, so that a module with a wrong one fails at load.
        if template.startup == StartUp::Run {
            instance.resolve_callbacks()?;
        }
        Ok(instance)
    }

    fn resolve_callbacks(&mut self) -> Result<(), ExportError> {
        self.resolve(|e| &mut e.context_create)?;
        self.resolve(|e| &mut e.vm_start)?;
        self.resolve(|e| &mut e.configure)?;
        self.resolve(|e| &mut e.request_headers)?;
        self.resolve(|e| &mut e.request_body)?;
        self.resolve(|e| &mut e.response_headers)?;
        self.resolve(|e| &mut e.response_body)?;
        self.resolve(|e| &mut e.response_trailers)?;
        self.resolve(|e| &mut e.log)?;
        self.resolve(|e| &mut e.http_call_response)?;
        self.resolve(|e| &mut e.queue_ready)?;
        self.resolve(|e| &mut e.done)?;
        self.resolve(|e| &mut e.delete)?;
        self.resolve(|e| &mut e.tick)?;
        Ok(())
    }

    /// Types the callback `pick` names, unless done before.
    fn resolve<P: WasmParams, R: WasmResults>(
        &mut self,
        pick: Pick<P, R>,
    ) -> Result<(), ExportError> {
        let (index, name) = match pick(&mut self.exports) {
            Callback::Resolved(_) => return Ok(()),
            Callback::Unresolved(index, name) => (*index, *name),
        };
        let func = typed_export(&self.handle, &mut self.store, &index, name)?;
        *pick(&mut self.exports) = Callback::Resolved(func);
        Ok(())
    }

    /// `on_context_create(root, 0)`, `on_vm_start`, `on_configure`; either returning false
    /// fails the start-up.
    fn root_calls(&mut self, budget: Duration) -> Result<(), StartError> {
        let vm_config_len = self.store.data().plugin.vm_config.len() as u32;
        let config_len = self.store.data().plugin.config.len() as u32;
        let create: Pick<_, _> = |e| &mut e.context_create;
        self.root_call(create, (ROOT_ID, 0), Phase::ContextCreate, budget)?;
        let vm_start: Pick<_, _> = |e| &mut e.vm_start;
        if self.root_call(vm_start, (ROOT_ID, vm_config_len), Phase::VmStart, budget)? == Some(0) {
            let said = std::mem::take(&mut self.store.data_mut().said_at_start);
            return Err(StartError::VmConfigRejected { said });
        }
        let configure: Pick<_, _> = |e| &mut e.configure;
        if self.root_call(configure, (ROOT_ID, config_len), Phase::Configure, budget)? == Some(0) {
            let said = std::mem::take(&mut self.store.data_mut().said_at_start);
            return Err(StartError::ConfigRejected { said });
        }
        self.store.data_mut().said_at_start = Vec::new();
        Ok(())
    }

    fn root_call<P: WasmParams, R: WasmResults>(
        &mut self,
        pick: Pick<P, R>,
        args: P,
        phase: Phase,
        budget: Duration,
    ) -> Result<Option<R>, StartError> {
        self.store.data_mut().call = Call::root(ROOT_ID, phase);
        self.call(pick, args, CpuDeadline::start(budget))
            .map_err(|fault| StartError::RootCallback(phase.name(), fault))
    }

    /// The one place guest code runs: the callback `pick` names (`None` when the module lacks
    /// it), under the CPU `deadline`, classifying failures. The typed function is called where
    /// it is kept: cloning one costs several atomic reference counts.
    fn call<P: WasmParams, R: WasmResults>(
        &mut self,
        pick: Pick<P, R>,
        args: P,
        deadline: CpuDeadline,
    ) -> Result<Option<R>, Fault> {
        if let Some(fault) = &self.poisoned {
            return Err(fault.clone());
        }
        // A wrong signature, found on first use, is the guest's fault like a trap.
        self.resolve(pick).map_err(|e| Fault::trap(describe(&e)))?;
        let Callback::Resolved(Some(func)) = pick(&mut self.exports) else {
            return Ok(None);
        };
        start_cpu_deadline(&mut self.store, deadline);
        let result = func.call(&mut self.store, args);
        let state = self.store.data_mut();
        flush_output(state);
        let said = std::mem::take(&mut state.held_critical);
        let error = match result {
            Ok(value) => {
                say_critical(state, &said);
                return Ok(Some(value));
            }
            Err(error) => error,
        };
        let mut fault = classify(&error, state.limiter.hit);
        match &mut fault {
            // The crash report carries the callback and the guest's last words (a panic).
            Fault::Trap(trap) => {
                log::debug!("guest trap: {error:?}");
                trap.callback = state.call.phase.name();
                trap.panic = (!said.is_empty()).then(|| said.join("\n"));
            }
            _ => say_critical(state, &said),
        }
        self.poison(fault.clone());
        Err(fault)
    }

    /// Marks the instance unusable. Requests paused on it stop waiting (their waiters drop).
    fn poison(&mut self, fault: Fault) {
        self.poisoned = Some(fault);
        self.store.data_mut().waiters.clear();
    }

    /// Records where this instance lives, so that callout answers and queue notices can find
    /// it, and sends the jobs its start-up made.
    pub(crate) fn place(&mut self, home: Weak<Mutex<Instance>>) {
        let home: Weak<dyn Mailbox> = home;
        let state = self.store.data_mut();
        let _ = state.cell.set(home);
        for job in std::mem::take(&mut state.outbox) {
            state.services.submit(job);
        }
    }

    /// Whether the start-up left state outside the guest that a snapshot would lose.
    pub(crate) fn has_lasting_effects(&self) -> bool {
        let state = self.store.data();
        state.lasting_effects || state.tick_period.is_some() || !state.outbox.is_empty()
    }

    /// The store and instance handle, for taking a snapshot.
    pub(crate) fn parts(&mut self) -> (&mut Store<HostState>, wasmtime::Instance) {
        (&mut self.store, self.handle)
    }

    /// The size of the guest's linear memory, in bytes.
    pub(crate) fn memory_bytes(&self) -> u64 {
        self.store
            .data()
            .memory
            .map_or(0, |memory| memory.data_size(&self.store) as u64)
    }

    pub(crate) fn poisoned(&self) -> Option<&Fault> {
        self.poisoned.as_ref()
    }

    pub(crate) fn plugin(&self) -> &Arc<PluginInfo> {
        &self.store.data().plugin
    }

    pub(crate) fn tick_period(&self) -> Option<Duration> {
        self.store.data().tick_period
    }

    /// Creates an HTTP context under the root: `on_context_create(id, root)`.
    pub(crate) fn create_http_context(&mut self, deadline: CpuDeadline) -> Result<u32, Fault> {
        let id = self.next_context_id;
        self.next_context_id = self.next_context_id.wrapping_add(1).max(ROOT_ID + 1);
        self.store.data_mut().live_contexts.insert(id);
        self.store.data_mut().call = Call::root(id, Phase::ContextCreate);
        self.call(|e| &mut e.context_create, (id, ROOT_ID), deadline)?;
        Ok(id)
    }

    /// Runs one HTTP callback with the request's data moved in; the data comes back whatever
    /// happened (hostcalls only borrow it), so the caller can always put the headers back.
    pub(crate) fn http_callback(
        &mut self,
        context_id: u32,
        callback: HttpCallback,
        data: Box<HttpData>,
        deadline: CpuDeadline,
    ) -> (Option<Box<HttpData>>, Result<Outcome, Fault>) {
        let phase = callback.phase();
        let headers = |request| (context_id, header_count(&data, request));
        let eos = |end_of_stream: bool| u32::from(end_of_stream);
        let (pick, args): (Pick<_, _>, _) = match callback {
            HttpCallback::RequestHeaders { end_of_stream } => {
                let (id, count) = headers(true);
                (|e| &mut e.request_headers, (id, count, eos(end_of_stream)))
            }
            HttpCallback::RequestBody {
                size,
                end_of_stream,
            } => (
                |e| &mut e.request_body,
                (context_id, size, eos(end_of_stream)),
            ),
            HttpCallback::ResponseHeaders { end_of_stream } => {
                let (id, count) = headers(false);
                (|e| &mut e.response_headers, (id, count, eos(end_of_stream)))
            }
            HttpCallback::ResponseBody {
                size,
                end_of_stream,
            } => (
                |e| &mut e.response_body,
                (context_id, size, eos(end_of_stream)),
            ),
            HttpCallback::ResponseTrailers { count } => {
                // The one callback of two arguments.
                self.store.data_mut().call = Call::http(context_id, phase, data);
                let result = self.call(|e| &mut e.response_trailers, (context_id, count), deadline);
                return self.end_http_callback(result);
            }
        };
        self.store.data_mut().call = Call::http(context_id, phase, data);
        let result = self.call(pick, args, deadline);
        self.end_http_callback(result)
    }

    /// Takes the request's data back after an HTTP callback, with what the guest asked for.
    fn end_http_callback(
        &mut self,
        result: Result<Option<u32>, Fault>,
    ) -> (Option<Box<HttpData>>, Result<Outcome, Fault>) {
        let mut call = std::mem::replace(
            &mut self.store.data_mut().call,
            Call::root(ROOT_ID, Phase::Startup),
        );
        let http = call.http.take();
        let outcome = result.map(|action| match action {
            Some(action) => outcome(call, action == 0),
            None => Outcome::Continue,
        });
        (http, outcome)
    }

    /// Runs `on_http_call_response` for a callout `context_id` made. With `data`, the request
    /// is paused in `phase` and its heads are available as in that phase; without, the
    /// callback sees no request (a root context's callout, or a request that did not wait).
    pub(crate) fn http_call_response(
        &mut self,
        context_id: u32,
        phase: Phase,
        data: Option<Box<HttpData>>,
        token: u32,
        answer: CalloutAnswer,
        deadline: CpuDeadline,
    ) -> (Option<Box<HttpData>>, Result<Outcome, Fault>) {
        // Answered once the guest sees the answer, not when it arrives: a request held
        // until then must not go on in between.
        let in_flight = &mut self.store.data_mut().callouts_in_flight;
        if let Some(count) = in_flight.get_mut(&context_id) {
            *count -= 1;
            if *count == 0 {
                in_flight.remove(&context_id);
            }
        }
        let (headers, trailers) = (answer.headers.len() as u32, answer.trailers.len() as u32);
        let body = answer.body.len() as u32;
        let mut call = match data {
            Some(data) => Call::http(context_id, phase, data),
            None => Call::root(context_id, phase),
        };
        call.callout = Some(answer);
        self.store.data_mut().call = call;
        let args = (ROOT_ID, token, headers, body, trailers);
        let result = self.call(|e| &mut e.http_call_response, args, deadline);
        let mut call = std::mem::replace(
            &mut self.store.data_mut().call,
            Call::root(ROOT_ID, Phase::Startup),
        );
        let http = call.http.take();
        // Without the callback the request stays paused, as after one that does nothing.
        (
            http,
            result.map(|ran| ran.map_or(Outcome::Pause, |()| outcome(call, false))),
        )
    }

    /// A callout's answer arrived: the paused request that made it handles it; otherwise the
    /// callback runs now. Answers for deleted contexts are dropped (the SDKs would trap).
    fn deliver_callout(&mut self, context_id: u32, token: u32, answer: CalloutAnswer) {
        let state = self.store.data_mut();
        if !state.live_contexts.contains(&context_id) {
            return;
        }
        let answer = match state.waiters.get(&context_id) {
            Some(waiter) => match waiter.send(Resumption::Callout { token, answer }) {
                Ok(()) => return,
                Err(mpsc::error::SendError(Resumption::Callout { answer, .. })) => answer,
                Err(_) => return,
            },
            None => answer,
        };
        let deadline = CpuDeadline::start(state.plugin.limits.cpu);
        if let (_, Err(fault)) = self.http_call_response(
            context_id,
            Phase::CallResponse,
            None,
            token,
            answer,
            deadline,
        ) {
            self.report_background_fault("on_http_call_response", &fault);
        }
    }

    /// `on_queue_ready` for a queue the root context registered.
    fn queue_ready(&mut self, root_id: u32, queue_id: u32) {
        self.store.data_mut().call = Call::root(root_id, Phase::QueueReady);
        let budget = self.store.data().plugin.limits.cpu;
        let deadline = CpuDeadline::start(budget);
        if let Err(fault) = self.call(|e| &mut e.queue_ready, (root_id, queue_id), deadline) {
            self.report_background_fault("on_queue_ready", &fault);
        }
    }

    /// A fault outside any request: logged and counted; the instance is already poisoned and
    /// is replaced when a request next needs it.
    fn report_background_fault(&self, callback: &str, fault: &Fault) {
        let name = &self.store.data().plugin.name;
        match fault {
            Fault::Trap(_) => log::error!(
                "filter `{name}` {fault}; the instance is discarded{}",
                fault.report()
            ),
            _ => log::error!("filter `{name}` {fault} in {callback}; the instance is discarded"),
        }
        fault.count(name);
    }

    /// `on_log`, `on_done`, `on_delete` for a finished request, then forgets the context.
    pub(crate) fn finish_http_context(
        &mut self,
        context_id: u32,
        data: Option<Box<HttpData>>,
        deadline: CpuDeadline,
    ) -> (Option<Box<HttpData>>, Result<(), Fault>) {
        self.store.data_mut().waiters.remove(&context_id);
        let result = self.final_calls(context_id, data, deadline);
        let state = self.store.data_mut();
        state.live_contexts.remove(&context_id);
        state.callouts_in_flight.remove(&context_id);
        result
    }

    /// The three calls share `deadline`'s budget; each after the first is metered from its
    /// own start, with what the ones before left.
    fn final_calls(
        &mut self,
        context_id: u32,
        data: Option<Box<HttpData>>,
        deadline: CpuDeadline,
    ) -> (Option<Box<HttpData>>, Result<(), Fault>) {
        let mut data = data;
        let result = self
            .final_call(|e| &mut e.log, Phase::Log, context_id, &mut data, deadline)
            .and_then(|()| {
                let rest = deadline.rest();
                self.final_call(|e| &mut e.done, Phase::Done, context_id, &mut data, rest)
            })
            .and_then(|()| {
                let rest = deadline.rest();
                self.final_call(
                    |e| &mut e.delete,
                    Phase::Delete,
                    context_id,
                    &mut data,
                    rest,
                )
            });
        (data, result)
    }

    /// One of the final callbacks, with the request's data (if any) lent to it.
    fn final_call<R: WasmResults>(
        &mut self,
        pick: Pick<u32, R>,
        phase: Phase,
        context_id: u32,
        data: &mut Option<Box<HttpData>>,
        deadline: CpuDeadline,
    ) -> Result<(), Fault> {
        self.store.data_mut().call = match data.take() {
            Some(d) => Call::http(context_id, phase, d),
            None => Call::root(context_id, phase),
        };
        let result = self.call(pick, context_id, deadline).map(drop);
        *data = std::mem::replace(
            &mut self.store.data_mut().call,
            Call::root(ROOT_ID, Phase::Startup),
        )
        .http;
        result
    }

    /// Lets the request paused in `context_id` wait for `proxy_continue_stream`, callout
    /// answers and the like, until it calls [`Self::stop_waiting`].
    pub(crate) fn wait_for_resumption(
        &mut self,
        context_id: u32,
    ) -> mpsc::UnboundedReceiver<Resumption> {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.store.data_mut().waiters.insert(context_id, sender);
        receiver
    }

    /// Whether callouts `context_id` made are still to be answered.
    pub(crate) fn awaits_callouts(&self, context_id: u32) -> bool {
        self.store
            .data()
            .callouts_in_flight
            .contains_key(&context_id)
    }

    pub(crate) fn stop_waiting(&mut self, context_id: u32) {
        self.store.data_mut().waiters.remove(&context_id);
    }

    /// Starts ending the root context, as proxy-wasm-cpp-host does when a plugin goes away:
    /// `on_done` within `budget` of CPU. `Ok(false)` when it answered false: it is not done
    /// until it calls `proxy_done` ([`Self::root_done`]); then [`Self::delete_root`].
    pub(crate) fn end_root(&mut self, budget: Duration) -> Result<bool, Fault> {
        self.store.data_mut().call = Call::root(ROOT_ID, Phase::Done);
        let answer = self.call(|e| &mut e.done, ROOT_ID, CpuDeadline::start(budget))?;
        let done = answer != Some(0);
        self.store.data_mut().root_ending = match done {
            true => RootEnding::Done,
            false => RootEnding::Pending,
        };
        Ok(done)
    }

    /// Whether the root context is done (after `on_done`, or its `proxy_done`).
    pub(crate) fn root_done(&self) -> bool {
        self.store.data().root_ending == RootEnding::Done
    }

    /// `on_delete` of the root context, the last call an instance gets.
    pub(crate) fn delete_root(&mut self, budget: Duration) -> Result<(), Fault> {
        self.store.data_mut().call = Call::root(ROOT_ID, Phase::Delete);
        self.call(|e| &mut e.delete, ROOT_ID, CpuDeadline::start(budget))
            .map(drop)
    }

    /// The root context's `on_tick`.
    pub(crate) fn tick(&mut self, budget: Duration) -> Result<(), Fault> {
        self.store.data_mut().call = Call::root(ROOT_ID, Phase::Tick);
        self.call(|e| &mut e.tick, ROOT_ID, CpuDeadline::start(budget))
            .map(drop)
    }
}

/// Where the background services deliver to a placed instance.
impl Mailbox for Mutex<Instance> {
    fn deliver_callout(&self, context_id: u32, token: u32, answer: CalloutAnswer) {
        lock(self).deliver_callout(context_id, token, answer);
    }

    fn queue_ready(&self, root_id: u32, queue_id: u32) {
        lock(self).queue_ready(root_id, queue_id);
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        crate::metrics::global()
            .filter_instances
            .with_label_values(&[self.plugin().name.as_str()])
            .dec();
    }
}

/// Logs the critical lines a guest call wrote and that did not end up in a crash report.
fn say_critical(state: &HostState, said: &[String]) {
    for line in said {
        super::abi::log::emit(&state.plugin.name, log::Level::Error, line.as_bytes());
    }
}

/// What a finished callback asked for: its recorded intents first; `proceed` is its own
/// answer (a zero action).
fn outcome(call: Call, proceed: bool) -> Outcome {
    if call.close_requested {
        Outcome::Close
    } else if let Some(response) = call.local_response {
        Outcome::Respond(response)
    } else if proceed || call.continue_requested {
        Outcome::Continue
    } else {
        Outcome::Pause
    }
}

/// Headers the callback is told about: the map's entries including pseudo-headers.
fn header_count(data: &HttpData, request: bool) -> u32 {
    let count = if request {
        data.request.headers.len() + 4
    } else {
        data.response.as_ref().map_or(0, |r| r.headers.len() + 1)
    };
    count as u32
}

/// Arms the CPU deadline of the guest call about to run. The epoch deadline first fires
/// when the budget's worth of wall time has passed; [`check_cpu`] then decides. The
/// deadline's meter must have started just before (host work only), or the epoch deadline
/// fires late by the difference.
fn start_cpu_deadline(store: &mut Store<HostState>, deadline: CpuDeadline) {
    store.data_mut().cpu = deadline;
    store.set_epoch_deadline(ticks(deadline.budget));
}

/// At an epoch deadline: stops the guest if it used its CPU budget, or else (its thread was
/// waiting for a CPU part of the time) extends the deadline by what is left.
fn check_cpu(store: StoreContextMut<'_, HostState>) -> wasmtime::Result<UpdateDeadline> {
    let deadline = store.data().cpu;
    let used = deadline.meter.used_at_least();
    Ok(match deadline.budget.checked_sub(used) {
        Some(left) if !left.is_zero() => UpdateDeadline::Continue(ticks(left)),
        _ => UpdateDeadline::Interrupt,
    })
}

/// Epoch ticks for a CPU budget: at least one, rounded up.
fn ticks(budget: Duration) -> u64 {
    let tick = epoch_tick().as_nanos().max(1);
    (budget.as_nanos().div_ceil(tick) as u64).max(1)
}

fn fault_of(error: &wasmtime::Error, store: &Store<HostState>) -> Fault {
    classify(error, store.data().limiter.hit)
}
