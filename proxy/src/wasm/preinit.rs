//! Pre-initialization for `isolation: request`. A filter's start-up (its initializer, the root
//! context, `on_vm_start`, `on_configure`) runs once at load; the resulting memory and globals
//! become the module's initial state, as Wizer does. Each request's fresh instance then starts
//! configured, from a copy-on-write image, instead of running the start-up again.
//!
//! The start-up's host-side effects are not part of the image, so a start-up that leaves any
//! behind (ticks, callouts, queue registrations) is not snapshotted: such filters run their
//! start-up per request instead.
//! Randomness the start-up drew (e.g. hash seeds) is shared by every instance of that image.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use wasmtime::{Store, Val};
use wasmtime_wizer::{InstanceState, SnapshotVal, Wizer};

use super::engine::WasmEngine;
use super::error::SnapshotError;
use super::info::PluginInfo;
use super::instance::{Instance, StartUp, Template};
use super::services::HostServices;
use super::state::HostState;

/// The module's bytes with the configured start-up state baked in, or why that is not possible.
pub(super) fn preinitialize(
    engine: &WasmEngine,
    linker: &wasmtime::Linker<HostState>,
    name: &std::path::Path,
    wasm: &[u8],
    plugin: Arc<PluginInfo>,
    services: Arc<HostServices>,
    budget: Duration,
) -> Result<Vec<u8>, SnapshotError> {
    let mut wizer = Wizer::new();
    // The reactor initializer runs as part of the start-up and must not run again.
    wizer.init_func("_initialize");
    let (context, instrumented) = wizer.instrument(wasm).map_err(SnapshotError::Instrument)?;
    let module = engine
        .load_module(name, &instrumented)
        .map_err(SnapshotError::Compile)?;
    if module.get_export_index("_start").is_some() {
        return Err(SnapshotError::CommandModule);
    }
    let pre = linker
        .instantiate_pre(&module)
        .map_err(SnapshotError::Compile)?;
    let template = Template::new(engine.engine(), pre, &module, StartUp::Run);
    let mut instance =
        Instance::start(&template, plugin, services, budget).map_err(SnapshotError::Start)?;
    if instance.has_lasting_effects() {
        return Err(SnapshotError::LastingEffects);
    }
    let (store, handle) = instance.parts();
    let mut view = SnapshotView {
        store,
        instance: handle,
        missing: None,
    };
    let rewritten = poll_ready(wizer.snapshot(&context, &mut view))
        .ok_or(SnapshotError::Incomplete)?
        .map_err(SnapshotError::Snapshot)?;
    match view.missing {
        Some(export) => Err(SnapshotError::MissingExport(export)),
        None => Ok(rewritten),
    }
}

/// Wizer reads the instrumented instance's globals and memory through this.
struct SnapshotView<'a> {
    store: &'a mut Store<HostState>,
    instance: wasmtime::Instance,
    /// An export Wizer asked for that is not there (the trait has no error path).
    missing: Option<String>,
}

impl InstanceState for SnapshotView<'_> {
    fn global_get(
        &mut self,
        name: &str,
        _type_hint: wasmparser::ValType,
    ) -> impl Future<Output = SnapshotVal> + Send {
        let value = match self
            .instance
            .get_global(&mut *self.store, name)
            .map(|g| g.get(&mut *self.store))
        {
            Some(Val::I32(v)) => SnapshotVal::I32(v),
            Some(Val::I64(v)) => SnapshotVal::I64(v),
            Some(Val::F32(v)) => SnapshotVal::F32(v),
            Some(Val::F64(v)) => SnapshotVal::F64(v),
            Some(Val::V128(v)) => SnapshotVal::V128(v.as_u128()),
            _ => {
                self.missing.get_or_insert_with(|| name.to_string());
                SnapshotVal::I32(0)
            }
        };
        std::future::ready(value)
    }

    fn memory_contents(
        &mut self,
        name: &str,
        contents: impl FnOnce(&[u8]) + Send,
    ) -> impl Future<Output = ()> + Send {
        match self.instance.get_memory(&mut *self.store, name) {
            Some(memory) => contents(memory.data(&*self.store)),
            None => {
                self.missing.get_or_insert_with(|| name.to_string());
            }
        }
        std::future::ready(())
    }
}

/// Runs a future that never waits (every `InstanceState` call above is ready at once).
fn poll_ready<F: Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}
