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

mod abi;
mod body_source;
mod cpu;
mod dispatch;
mod engine;
mod error;
mod info;
mod inspect;
mod instance;
mod mailbox;
mod plugin;
mod preinit;
#[cfg(test)]
mod proptests;
mod reaper;
mod services;
mod shared;
mod state;
mod stream;
mod ticker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::Linker;

use crate::config::{Config, FilterId, Isolation, Route};
use crate::sync::BackgroundTask;
use crate::upstream::Upstreams;
pub(crate) use body_source::WholeBody;
pub use body_source::{BodyPiece, BodyUnavailable, RequestBodySource};
use dispatch::Dispatcher;
use engine::WasmEngine;
use error::LoadError;
pub use error::WasmError;
pub use info::StreamInfo;
pub use inspect::{inspect, Callback, Import, Inspection, Memory};
use plugin::{Plugin, Services};
use reaper::Reaper;
use services::HostServices;
pub use state::LocalResponse;
pub use stream::{FilterChain, FilterFailure, Verdict};
use ticker::Ticker;

/// How long a root context whose `on_done` answered false may take to call `proxy_done`.
const ROOT_DONE_WAIT: Duration = Duration::from_secs(5);
/// How often such a root is looked at (and ticked, at its own period).
const ROOT_DONE_POLL: Duration = Duration::from_millis(5);

/// Every configured filter, ready to serve requests. Clones share the filters.
#[derive(Clone)]
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
        let (host_services, jobs) = HostServices::new(config);
        let dispatcher = Arc::new(Dispatcher::new(jobs));
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
        abi::add_to_linker(&mut linker).map_err(WasmError::Engine)?;
        let reaper = Reaper::spawn()?;
        // A module named by several filters is compiled once.
        let mut modules: HashMap<PathBuf, (wasmtime::Module, Vec<u8>)> = HashMap::new();
        let mut plugins = Vec::with_capacity(config.filters.len());
        // Every filter is tried, so that one run of `validate` reports all that fail.
        let mut failures = Vec::new();
        for filter in &config.filters {
            let key =
                std::fs::canonicalize(&filter.module).unwrap_or_else(|_| filter.module.clone());
            if !modules.contains_key(&key) {
                let fail = |source: LoadError| WasmError::load(filter, source);
                let compiled = std::fs::read(&filter.module)
                    .map_err(|e| fail(LoadError::Read(e)))
                    .and_then(|bytes| {
                        let module = engine
                            .load_module(&filter.module, &bytes)
                            .map_err(|e| fail(LoadError::Compile(e)))?;
                        Ok((module, bytes))
                    });
                match compiled {
                    Ok(compiled) => drop(modules.insert(key.clone(), compiled)),
                    Err(failure) => {
                        failures.push(failure);
                        continue;
                    }
                }
            }
            let Some((module, wasm)) = modules.get(&key) else {
                continue;
            };
            let callouts = filter
                .callouts
                .iter()
                .filter_map(|id| config.upstreams.get(id.0).map(|u| (u.name.clone(), *id)))
                .collect();
            let loaded = Plugin::load(
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
            );
            match loaded {
                Ok(plugin) => plugins.push(Arc::new(plugin)),
                Err(failure) => failures.push(failure),
            }
        }
        match failures.len() {
            0 => {}
            1 => return Err(failures.remove(0)),
            _ => return Err(WasmError::Filters(failures)),
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
        self.chain_of(&route.filters, info, started + route.timeout)
    }

    /// A chain of `filters` (none: `None`) whose paused requests end at `deadline`.
    pub(crate) fn chain_of(
        &self,
        filters: &[FilterId],
        info: impl FnOnce() -> StreamInfo,
        deadline: Instant,
    ) -> Option<FilterChain> {
        if filters.is_empty() {
            return None;
        }
        let plugins = filters
            .iter()
            .filter_map(|id| self.plugins.get(id.0).cloned())
            .collect();
        Some(FilterChain::new(plugins, info(), deadline))
    }

    /// Names the filters that cannot start instances right now (for readiness).
    pub(crate) fn unavailable(&self) -> Vec<String> {
        self.plugins
            .iter()
            .filter(|p| p.is_backing_off())
            .map(|p| p.info.name.clone())
            .collect()
    }

    /// Lets filters' callouts reach the upstreams.
    pub(crate) fn serve_upstreams(&self, upstreams: Arc<Upstreams>) {
        self.dispatcher.serve_upstreams(upstreams);
    }

    /// Ends every filter's root contexts (`on_done`, `on_delete` on each shared instance):
    /// the filters are going away. Runs guest code, each call within the filter's CPU limit.
    /// A root whose `on_done` answers false is waited on until it calls `proxy_done`, for at
    /// most [`ROOT_DONE_WAIT`], with its ticks going on; this blocks the calling thread.
    pub(crate) fn end_roots(&self) {
        let deadline = Instant::now() + ROOT_DONE_WAIT;
        let mut ending: Vec<_> = self.plugins.iter().flat_map(Plugin::end_roots).collect();
        while !ending.is_empty() {
            let now = Instant::now();
            ending.retain_mut(|root| !root.advance(now, deadline));
            if !ending.is_empty() {
                std::thread::sleep(ROOT_DONE_POLL);
            }
        }
    }

    /// The background tasks driving `on_tick`, callouts and queue notices.
    pub(crate) fn background_tasks(&self) -> Vec<BackgroundTask> {
        vec![self.ticker.clone(), self.dispatcher.clone()]
    }
}
