//! The proxy-wasm host: filters written with any proxy-wasm SDK run on wasmtime at the
//! request and response phases.
//!
//! - `engine`: the wasmtime engine, its epoch ticker and the on-disk module cache
//! - `plugin`: a configured filter, its start-up, instances per isolation mode, back-off
//! - `instance`: one instance's store, exports and guest calls under a CPU deadline
//! - `cpu`: guest CPU time, measured without a system call per callback
//! - `stream`: a request's filter chain and the phase drivers the proxy calls
//! - `state`: what a store holds; `abi/`: the hostcalls, one file per ABI area
//! - `ticker`: `on_tick` for shared instances
//! - `dispatch`: HTTP callouts and queue notices, run by a background service
//! - `shared`: shared data and queues, process-wide by VM id

pub mod abi;
mod cpu;
mod dispatch;
mod engine;
mod instance;
mod plugin;
mod preinit;
mod shared;
mod state;
mod stream;
mod ticker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use pingora::services::background::{background_service, BackgroundService};
use pingora::services::ServiceWithDependents;
use wasmtime::Linker;

use crate::config::{Config, Isolation, Route};
use crate::sync::Batches;
use dispatch::{Dispatcher, HostServices};
use engine::WasmEngine;
use plugin::{Plugin, SharedInstance};
pub use state::{LocalResponse, StreamInfo};
pub use stream::{FilterChain, FilterFailure, Verdict};
use ticker::Ticker;

#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
    #[error("filter `{filter}` ({}): {message}", module.display())]
    Load {
        filter: String,
        module: PathBuf,
        message: String,
    },
}

/// Every configured filter, ready to serve requests.
pub struct FilterHost {
    /// Indexed like `Config::filters`.
    plugins: Vec<Arc<Plugin>>,
    ticker: Arc<Ticker>,
    dispatcher: Arc<Dispatcher>,
}

impl FilterHost {
    /// Compiles and starts every filter. `workers` is the number of shared instances per
    /// filter with `isolation: shared`.
    pub fn load(config: &Config) -> Result<FilterHost, WasmError> {
        let ticker = Arc::new(Ticker::new());
        let (dispatcher, host_services) =
            Dispatcher::new(config.upstreams.iter().map(|u| u.name.clone()).collect());
        if config.filters.is_empty() {
            return Ok(FilterHost {
                plugins: Vec::new(),
                ticker,
                dispatcher,
            });
        }
        let shared: usize = config
            .filters
            .iter()
            .filter(|f| f.isolation == Isolation::Shared)
            .count()
            * config.workers;
        // Shared instances, their replacements after crashes, and per-request instances.
        let instances = config.wasm.max_instances.saturating_add(2 * shared as u32);
        let max_memory = config
            .filters
            .iter()
            .map(|f| f.limits.memory)
            .max()
            .unwrap_or(1 << 20);
        let smallest_cpu_limit = config
            .filters
            .iter()
            .map(|f| f.limits.cpu)
            .min()
            .unwrap_or_default();
        let engine = WasmEngine::new(
            instances,
            max_memory,
            smallest_cpu_limit,
            config.wasm.module_cache.clone(),
            config.wasm.perf_map,
        )?;
        let mut linker = Linker::new(engine.engine());
        abi::add_to_linker(&mut linker).map_err(|e| WasmError::Engine(format!("{e:#}")))?;
        let reaper = spawn_reaper()
            .map_err(|e| WasmError::Engine(format!("cannot start the instance reaper: {e}")))?;
        // A module named by several filters is compiled once.
        let mut modules: HashMap<PathBuf, (wasmtime::Module, Vec<u8>)> = HashMap::new();
        let mut plugins = Vec::with_capacity(config.filters.len());
        for filter in &config.filters {
            let key =
                std::fs::canonicalize(&filter.module).unwrap_or_else(|_| filter.module.clone());
            if !modules.contains_key(&key) {
                let fail = |message: String| WasmError::Load {
                    filter: filter.name.clone(),
                    module: filter.module.clone(),
                    message,
                };
                let bytes = std::fs::read(&filter.module)
                    .map_err(|e| fail(format!("cannot read the module: {e}")))?;
                let module = engine
                    .load_module(&filter.module, &bytes)
                    .map_err(|e| fail(format!("not a valid WebAssembly module: {e}")))?;
                modules.insert(key.clone(), (module, bytes));
            }
            let Some((module, wasm)) = modules.get(&key) else {
                continue;
            };
            let callouts = filter
                .callouts
                .iter()
                .filter_map(|id| config.upstreams.get(id.0).map(|u| (u.name.clone(), *id)))
                .collect();
            let plugin = Plugin::load(
                &engine,
                &linker,
                filter,
                (module, wasm),
                callouts,
                config.workers,
                Services {
                    ticker: ticker.clone(),
                    reaper: reaper.clone(),
                    host: host_services.clone(),
                },
            )?;
            plugins.push(Arc::new(plugin));
        }
        for plugin in &plugins {
            log::info!(
                "filter `{}` loaded ({:?} isolation)",
                plugin.info.name,
                plugin.isolation
            );
        }
        Ok(FilterHost {
            plugins,
            ticker,
            dispatcher,
        })
    }

    /// The filter chain for a request on `route`, or `None` when the route has no filters;
    /// `info` is only built when there is a chain (plain requests skip its allocations).
    pub fn chain(
        &self,
        route: &Route,
        info: impl FnOnce() -> StreamInfo,
        started: Instant,
    ) -> Option<FilterChain> {
        if route.filters.is_empty() {
            return None;
        }
        let plugins = route
            .filters
            .iter()
            .filter_map(|id| self.plugins.get(id.0).cloned())
            .collect();
        Some(FilterChain::new(plugins, info(), started + route.timeout))
    }

    /// Names the filters that cannot start instances right now (for readiness).
    pub fn unavailable_filters(&self) -> impl Fn() -> Vec<String> + Send + Sync + 'static {
        let plugins = self.plugins.clone();
        move || {
            plugins
                .iter()
                .filter(|p| p.is_backing_off())
                .map(|p| p.info.name.clone())
                .collect()
        }
    }

    /// Lets filters' callouts reach the upstreams.
    pub fn serve_upstreams(&self, upstreams: Arc<crate::upstream::Upstreams>) {
        self.dispatcher.serve_upstreams(upstreams);
    }

    /// The background services driving `on_tick`, callouts and queue notices.
    pub fn background_services(&self) -> Vec<Box<dyn ServiceWithDependents>> {
        vec![
            Box::new(background_service(
                "filter ticks",
                Shared(self.ticker.clone()),
            )),
            Box::new(background_service(
                "filter callouts",
                Shared(self.dispatcher.clone()),
            )),
        ]
    }
}

/// Runs a service the host also keeps a handle to as a Pingora background service.
struct Shared<S>(Arc<S>);

#[async_trait::async_trait]
impl<S: BackgroundService + Send + Sync> BackgroundService for Shared<S> {
    async fn start(&self, shutdown: pingora::server::ShutdownWatch) {
        self.0.start(shutdown).await
    }
}

/// Drops per-request instances on a thread of its own: resetting an instance's memory takes
/// microseconds that no request should wait for.
fn spawn_reaper() -> std::io::Result<Reaper> {
    let pending = Batches::new(Vec::new());
    pending.spawn_handler("wasm-reaper", REAP_INTERVAL, |batches| drop(batches.take()))?;
    Ok(Reaper { pending })
}

/// How long the reaper lets finished instances gather before dropping them.
const REAP_INTERVAL: std::time::Duration = std::time::Duration::from_millis(1);

/// What every plugin shares: the tick driver, the instance reaper, and the host services
/// (shared data, queues, callouts).
#[derive(Clone)]
pub struct Services {
    pub ticker: Arc<Ticker>,
    pub reaper: Reaper,
    pub host: Arc<HostServices>,
}

/// Where finished per-request instances wait for the reaper thread.
#[derive(Clone)]
pub struct Reaper {
    pending: Arc<Batches<SharedInstance>>,
}

impl Reaper {
    pub fn reap(&self, instance: SharedInstance) {
        self.pending.add(|waiting| waiting.push(instance));
    }

    /// Drops the instances waiting for the thread on the calling thread, which frees their
    /// pool slots at once.
    pub fn drop_pending(&self) {
        drop(self.pending.take());
    }
}
