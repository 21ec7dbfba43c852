//! A configured filter: its compiled module, its start-up, and where requests get an instance.
//!
//! `isolation: shared` keeps one long-lived instance per worker (a request stays on the one
//! it started with); `isolation: request` starts a fresh instance for every request and drops
//! it off the request path afterwards. A faulted instance is never used again; the next
//! request gets a new one, after a back-off when the filter keeps crashing.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus::{Histogram, IntCounter};
use wasmtime::{Linker, Module};

use super::engine::WasmEngine;
use super::error::{Fault, LoadError, StartError, WasmError};
use super::info::PluginInfo;
use super::instance::{Instance, SharedInstance, StartUp, Template};
use super::preinit;
use super::reaper::Reaper;
use super::services::HostServices;
use super::state::{HostState, Phase};
use super::ticker::Ticker;
use crate::causes::describe;
use crate::config::{self, FailurePolicy, Isolation};
use crate::metrics;
use crate::sync::lock;

/// The ABI versions this host speaks, marked by an exported function of that name.
const ABI_MARKERS: [&str; 2] = ["proxy_abi_version_0_2_1", "proxy_abi_version_0_2_0"];
/// Crashes in a row that are re-created at once; later ones wait, doubling from `BACKOFF_START`.
const FREE_RESTARTS: u32 = 5;
const BACKOFF_START: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A crash this long after the previous one starts a new count.
const CRASH_MEMORY: Duration = Duration::from_secs(60);
/// Refusals (back-off, full pool) are logged at most this often per filter: they come with
/// every request while they last.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(1);

/// What every plugin shares: the tick driver, the instance reaper, and the host services
/// (shared data, queues, callouts).
#[derive(Clone)]
pub(crate) struct Services {
    pub ticker: Arc<Ticker>,
    pub reaper: Reaper,
    pub host: Arc<HostServices>,
}

pub(crate) struct Plugin {
    pub info: Arc<PluginInfo>,
    pub isolation: Isolation,
    pub on_error: FailurePolicy,
    /// How instances are made: the module (or its pre-initialized snapshot).
    template: Template,
    /// `isolation: shared`: one instance slot per worker.
    slots: Vec<Mutex<Option<SharedInstance>>>,
    crashes: Mutex<Crashes>,
    refusals: Mutex<RefusalLog>,
    services: Services,
    pub call_metrics: CallMetrics,
}

/// A filter's callback counters and duration histogram, looked up by label once rather
/// than on every callback.
pub(crate) struct CallMetrics {
    filter: String,
    request_headers: IntCounter,
    request_body: IntCounter,
    response_headers: IntCounter,
    response_body: IntCounter,
    call_response: IntCounter,
    duration: Histogram,
}

impl CallMetrics {
    fn new(filter: &str) -> Self {
        let metrics = metrics::global();
        let calls = |phase: Phase| {
            metrics
                .filter_calls
                .with_label_values(&[filter, phase.name()])
        };
        CallMetrics {
            filter: filter.to_owned(),
            request_headers: calls(Phase::RequestHeaders),
            request_body: calls(Phase::RequestBody),
            response_headers: calls(Phase::ResponseHeaders),
            response_body: calls(Phase::ResponseBody),
            call_response: calls(Phase::CallResponse),
            duration: metrics.filter_duration.with_label_values(&[filter]),
        }
    }

    /// Counts one callback in `phase` that ran for `elapsed`.
    pub(crate) fn record(&self, phase: Phase, elapsed: Duration) {
        match phase {
            Phase::RequestHeaders => self.request_headers.inc(),
            Phase::RequestBody => self.request_body.inc(),
            Phase::ResponseHeaders => self.response_headers.inc(),
            Phase::ResponseBody => self.response_body.inc(),
            Phase::CallResponse => self.call_response.inc(),
            // Not a request's phase: rare enough to look up.
            other => metrics::global()
                .filter_calls
                .with_label_values(&[self.filter.as_str(), other.name()])
                .inc(),
        }
        self.duration.observe(elapsed.as_secs_f64());
    }
}

/// A shared instance whose root context answered `on_done` with false: as in cpp-host it is
/// not deleted until it calls `proxy_done`. Meanwhile it keeps its ticks (the ticker of a
/// retired generation has stopped, so the one ending it ticks it).
pub(crate) struct EndingRoot {
    plugin: Arc<Plugin>,
    instance: SharedInstance,
    next_tick: Instant,
}

impl EndingRoot {
    /// Deletes the root once it is done, or once `deadline` passed: `true` then. Until then
    /// it gets `on_tick` at its period.
    pub(crate) fn advance(&mut self, now: Instant, deadline: Instant) -> bool {
        let info = &self.plugin.info;
        let mut instance = lock(&self.instance);
        if instance.poisoned().is_some() {
            return true;
        }
        if !instance.root_done() {
            if now < deadline {
                let Some(period) = instance.tick_period().filter(|_| now >= self.next_tick) else {
                    return false;
                };
                self.next_tick = now + period;
                if let Err(fault) = instance.tick(info.limits.cpu) {
                    drop(instance);
                    self.plugin.ending_failed(&fault);
                    return true;
                }
                return false;
            }
            log::warn!(
                "filter `{}` did not call proxy_done after its root's on_done; deleting it anyway",
                info.name
            );
        }
        drop(instance);
        self.plugin.delete_root(&self.instance);
        true
    }
}

#[derive(Default)]
struct Crashes {
    in_a_row: u32,
    last: Option<Instant>,
    next_start: Option<Instant>,
}

/// When a refusal was last logged, and how many came since.
#[derive(Default)]
struct RefusalLog {
    last: Option<Instant>,
    unlogged: u64,
}

/// An instance a request holds for its whole life.
pub(crate) struct Lease {
    pub instance: SharedInstance,
}

impl Lease {
    /// Locks the instance for one synchronous call. A lock poisoned by a panic elsewhere still
    /// guards a consistent store: calls never unwind half-way through changing it.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Instance> {
        lock(&self.instance)
    }
}

impl Plugin {
    /// Checks the compiled module's ABI and imports, and starts one instance to prove that
    /// the filter accepts its configuration.
    pub(crate) fn load(
        engine: &WasmEngine,
        linker: &Linker<HostState>,
        filter: &config::Filter,
        (module, wasm): (&Module, &[u8]),
        callouts: Vec<(String, config::UpstreamId)>,
        workers: usize,
        services: Services,
    ) -> Result<Plugin, WasmError> {
        let fail = |source: LoadError| WasmError::load(filter, source);
        check_abi(module).map_err(fail)?;
        let pre = linker.instantiate_pre(module).map_err(|e| {
            fail(match e.downcast_ref::<wasmtime::UnknownImportError>() {
                Some(unknown) => LoadError::UnknownImport {
                    module: unknown.module().to_string(),
                    name: unknown.name().to_string(),
                },
                None => LoadError::Link(e),
            })
        })?;
        module
            .initialize_copy_on_write_image()
            .map_err(|e| fail(LoadError::MemoryImage(e)))?;
        let info = Arc::new(PluginInfo {
            name: filter.name.clone(),
            root_id: filter.root_id.clone(),
            vm_id: filter.vm_id.clone(),
            config: filter.config.clone(),
            vm_config: filter.vm_config.clone(),
            limits: filter.limits,
            callouts,
            response_phase: filter.response_phase,
        });
        let slot_count = match filter.isolation {
            Isolation::Shared => workers.max(1),
            Isolation::Request => 0,
        };
        let mut plugin = Plugin {
            info,
            isolation: filter.isolation,
            on_error: filter.on_error,
            template: Template::new(engine.engine(), pre, module, StartUp::Run),
            slots: (0..slot_count).map(|_| Mutex::new(None)).collect(),
            crashes: Mutex::new(Crashes::default()),
            refusals: Mutex::new(RefusalLog::default()),
            services,
            call_metrics: CallMetrics::new(&filter.name),
        };
        // The canary: a filter that cannot start fails the load, not the first request.
        let canary = plugin
            .start_instance()
            .map_err(|e| fail(LoadError::Start(e)))?;
        if plugin.isolation == Isolation::Request {
            plugin
                .preinitialize(engine, linker, &filter.module, wasm)
                .map_err(fail)?;
        }
        match plugin.slots.first() {
            Some(slot) => *lock(slot) = Some(plugin.place(canary)),
            None => plugin.release(Lease {
                instance: plugin.place(canary),
            }),
        }
        Ok(plugin)
    }

    /// Start-up (initializer, `on_vm_start`, `on_configure`) may take longer than a request
    /// callback: the request budget ten times over, at least a second.
    fn startup_budget(&self) -> Duration {
        (self.info.limits.cpu * 10).max(Duration::from_secs(1))
    }

    /// Switches per-request instances to a snapshot of the configured start-up, when the
    /// start-up allows it (see `preinit`); otherwise each runs the start-up itself. Fails only
    /// when the snapshot was made but does not load or start.
    fn preinitialize(
        &mut self,
        engine: &WasmEngine,
        linker: &Linker<HostState>,
        name: &Path,
        wasm: &[u8],
    ) -> Result<(), LoadError> {
        let services = self.services.host.clone();
        let snapshot = match preinit::preinitialize(
            engine,
            linker,
            name,
            wasm,
            self.info.clone(),
            services,
            self.startup_budget(),
        ) {
            Ok(snapshot) => snapshot,
            Err(why) => {
                log::info!(
                    "filter `{}`: each request runs the start-up ({})",
                    self.info.name,
                    describe(&why)
                );
                return Ok(());
            }
        };
        let module = engine
            .load_module(name, &snapshot)
            .map_err(LoadError::Compile)?;
        module
            .initialize_copy_on_write_image()
            .map_err(LoadError::MemoryImage)?;
        let pre = linker.instantiate_pre(&module).map_err(LoadError::Link)?;
        self.template = Template::new(engine.engine(), pre, &module, StartUp::Snapshot);
        // Prove the image starts before any request depends on it.
        let canary = self.start_instance().map_err(LoadError::Start)?;
        self.release(Lease {
            instance: self.place(canary),
        });
        log::info!(
            "filter `{}`: per-request instances start from a snapshot of its configured start-up",
            self.info.name
        );
        Ok(())
    }

    fn start_instance(&self) -> Result<Instance, StartError> {
        let instance = Instance::start(
            &self.template,
            self.info.clone(),
            self.services.host.clone(),
            self.startup_budget(),
        )?;
        metrics::global()
            .filter_instances_started
            .with_label_values(&[self.info.name.as_str()])
            .inc();
        Ok(instance)
    }

    /// Gives a started instance its place: from now on callout answers and queue notices
    /// can reach it, and the jobs its start-up made are sent. Shared instances that asked
    /// for ticks get them.
    fn place(&self, instance: Instance) -> SharedInstance {
        let shared = Arc::new(Mutex::new(instance));
        lock(&shared).place(Arc::downgrade(&shared));
        self.watch_ticks(&shared);
        shared
    }

    /// Ends the root context of every shared instance: the filter is going away (a reload
    /// retired it, or the process stops). Each instance is taken out of its slot, so no
    /// request starts on it afterwards, and gets `on_done`, then `on_delete`; those whose
    /// `on_done` answers false are returned, to wait for their `proxy_done`.
    pub(crate) fn end_roots(self: &Arc<Self>) -> Vec<EndingRoot> {
        let mut pending = Vec::new();
        for slot in &self.slots {
            let Some(instance) = lock(slot).take() else {
                continue;
            };
            let ended = {
                let mut guard = lock(&instance);
                if guard.poisoned().is_some() {
                    continue;
                }
                guard.end_root(self.info.limits.cpu)
            };
            match ended {
                Ok(true) => self.delete_root(&instance),
                Ok(false) => pending.push(EndingRoot {
                    plugin: self.clone(),
                    instance,
                    next_tick: Instant::now(),
                }),
                Err(fault) => self.ending_failed(&fault),
            }
        }
        pending
    }

    fn delete_root(&self, instance: &SharedInstance) {
        if let Err(fault) = lock(instance).delete_root(self.info.limits.cpu) {
            self.ending_failed(&fault);
        }
    }

    fn ending_failed(&self, fault: &Fault) {
        fault.count(&self.info.name);
        log::warn!(
            "filter `{}` {fault} while its root context ended",
            self.info.name
        );
    }

    /// Starts `on_tick` for a shared instance once it asks for ticks.
    pub(crate) fn watch_ticks(&self, instance: &SharedInstance) {
        if self.isolation != Isolation::Shared {
            return;
        }
        let mut guard = lock(instance);
        if !guard.ticking && guard.tick_period().is_some() {
            guard.ticking = true;
            self.services
                .ticker
                .watch(Arc::downgrade(instance), self.info.clone());
        }
    }

    /// An instance for a new request.
    pub(crate) fn acquire(&self) -> Result<Lease, Fault> {
        if self.slots.is_empty() {
            let instance = self.start_or_backoff()?;
            return Ok(Lease {
                instance: self.place(instance),
            });
        }
        let slot = &self.slots[worker_index() % self.slots.len()];
        let mut current = lock(slot);
        if let Some(instance) = current.as_ref() {
            if lock(instance).poisoned().is_none() {
                return Ok(Lease {
                    instance: instance.clone(),
                });
            }
        }
        let instance = self.place(self.start_or_backoff()?);
        *current = Some(instance.clone());
        Ok(Lease { instance })
    }

    /// A fresh instance, unless the filter is waiting out a crash back-off or the pool is
    /// full. The caller records the fault ([`Plugin::record_fault`]).
    fn start_or_backoff(&self) -> Result<Instance, Fault> {
        if self.is_backing_off() {
            return Err(Fault::BackingOff);
        }
        let started = match self.start_instance() {
            // Finished per-request instances keep their slots until the reaper drops them:
            // drop them here and now rather than refuse the request.
            Err(StartError::PoolFull) => {
                self.services.reaper.drop_pending();
                self.start_instance()
            }
            started => started,
        };
        started.map_err(|e| match e {
            StartError::PoolFull => Fault::NoFreeInstance,
            failed => {
                let why = describe(&failed);
                log::error!(
                    "filter `{}` cannot start an instance: {why}{}",
                    self.info.name,
                    failed.report()
                );
                Fault::Unavailable(why)
            }
        })
    }

    /// Whether a refused request should be logged now (`Some` with the count of refusals
    /// not logged since the last line) or only counted.
    pub(crate) fn refusal_to_log(&self) -> Option<u64> {
        let now = Instant::now();
        let mut log = lock(&self.refusals);
        if log
            .last
            .is_some_and(|last| now.duration_since(last) < REFUSAL_LOG_EVERY)
        {
            log.unlogged += 1;
            return None;
        }
        log.last = Some(now);
        Some(std::mem::take(&mut log.unlogged))
    }

    /// Whether the filter is waiting out a crash back-off (it cannot start instances now).
    pub(crate) fn is_backing_off(&self) -> bool {
        lock(&self.crashes)
            .next_start
            .is_some_and(|next| Instant::now() < next)
    }

    /// Counts a fault and, for crashes, schedules the back-off when they keep coming.
    pub(crate) fn record_fault(&self, fault: &Fault) {
        fault.count(&self.info.name);
        if !fault.is_crash() {
            return;
        }
        let now = Instant::now();
        let mut crashes = lock(&self.crashes);
        let recent = crashes
            .last
            .is_some_and(|last| now.duration_since(last) < CRASH_MEMORY);
        crashes.in_a_row = if recent { crashes.in_a_row + 1 } else { 1 };
        crashes.last = Some(now);
        crashes.next_start = (crashes.in_a_row > FREE_RESTARTS).then(|| {
            let doublings = (crashes.in_a_row - FREE_RESTARTS - 1).min(16);
            now + (BACKOFF_START * 2u32.pow(doublings)).min(BACKOFF_MAX)
        });
    }

    /// Gives a finished request's instance back: per-request instances are dropped by the
    /// reaper thread, off the request path.
    pub(crate) fn release(&self, lease: Lease) {
        if self.isolation == Isolation::Request {
            self.services.reaper.reap(lease.instance);
        }
    }
}

/// A small stable number per worker thread, so that a worker keeps using "its" instance.
fn worker_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    INDEX.with(|i| *i)
}

fn check_abi(module: &Module) -> Result<(), LoadError> {
    let exported = |name: &str| module.exports().any(|e| e.name() == name);
    if ABI_MARKERS.iter().any(|marker| exported(marker)) {
        return Ok(());
    }
    let found: Vec<String> = module
        .exports()
        .filter_map(|e| e.name().strip_prefix("proxy_abi_version_"))
        .map(|version| version.replace('_', "."))
        .collect();
    Err(if found.is_empty() {
        LoadError::NoAbiMarker
    } else {
        LoadError::UnsupportedAbi(found.join(", "))
    })
}
