//! `edgeward filter inspect`: what a filter module is, as edgeward sees it, without running it:
//! its proxy-wasm ABI, the callbacks it exports, each host function it imports and whether
//! edgeward provides it (the same linker the proxy loads filters with decides), its memory,
//! and what decides whether per-request instances can start from a snapshot.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use wasmtime::{Engine, ExternType, Linker, Module, Store};

use super::abi;
use super::error::{LoadError, WasmError};
use super::info::PluginInfo;
use super::services::HostServices;
use super::state::HostState;

/// One WebAssembly page.
const PAGE: u64 = 64 * 1024;

/// Host functions whose use at start-up keeps per-request instances from starting from a
/// snapshot (they leave state outside the guest; see `preinit`).
const LASTING_AT_START_UP: &[&str] = &[
    "proxy_set_tick_period_milliseconds",
    "proxy_http_call",
    "proxy_register_shared_queue",
];

/// Callbacks edgeward never calls (see docs/filters.md): no request trailers from Pingora, no
/// foreign calls into filters, no gRPC callouts, no L4 streams.
const NEVER_CALLED: &[&str] = &[
    "proxy_on_request_trailers",
    "proxy_on_foreign_function",
    "proxy_on_grpc_receive_initial_metadata",
    "proxy_on_grpc_receive",
    "proxy_on_grpc_receive_trailing_metadata",
    "proxy_on_grpc_close",
    "proxy_on_new_connection",
    "proxy_on_downstream_data",
    "proxy_on_upstream_data",
    "proxy_on_downstream_connection_close",
    "proxy_on_upstream_connection_close",
];

/// What `filter inspect` reports of a module.
#[derive(Debug, Serialize)]
pub struct Inspection {
    pub size_bytes: u64,
    /// The proxy-wasm ABI versions it declares (`0.2.1`); edgeward runs 0.2.0 and 0.2.1.
    pub abi_versions: Vec<String>,
    pub abi_supported: bool,
    /// Its initializer: `_initialize` (a reactor) or `_start` (a command).
    pub initializer: Option<String>,
    /// `proxy_on_memory_allocate`, or the deprecated `malloc`.
    pub allocator: Option<String>,
    /// The `proxy_on_*` callbacks it exports.
    pub callbacks: Vec<Callback>,
    pub imports: Vec<Import>,
    pub memory: Option<Memory>,
    /// Whether the module carries DWARF debug info (crash reports then show file:line).
    pub debug_info: bool,
    /// Whether `isolation: request` instances can start from a snapshot of its start-up,
    /// as far as can be told without running it, and why.
    pub preinitialize: String,
}

#[derive(Debug, Serialize)]
pub struct Callback {
    pub name: String,
    /// Whether edgeward ever calls it.
    pub called: bool,
}

#[derive(Debug, Serialize)]
pub struct Import {
    pub module: String,
    pub name: String,
    pub provided: bool,
}

#[derive(Debug, Serialize)]
pub struct Memory {
    pub initial_bytes: u64,
    /// The module's own maximum; the filter's `limits.memory` caps it in edgeward.
    pub maximum_bytes: Option<u64>,
}

impl Inspection {
    /// Whether the module can load in edgeward: a supported ABI, an allocator, and every
    /// import provided.
    pub fn loadable(&self) -> bool {
        self.abi_supported && self.allocator.is_some() && self.imports.iter().all(|i| i.provided)
    }
}

/// Inspects the module at `path`.
pub fn inspect(path: &Path) -> Result<Inspection, WasmError> {
    let fail = |source: LoadError| WasmError::Inspect {
        module: path.to_path_buf(),
        source: Box::new(source),
    };
    let bytes = std::fs::read(path).map_err(|e| fail(LoadError::Read(e)))?;
    let engine = Engine::default();
    let module = Module::new(&engine, &bytes).map_err(|e| fail(LoadError::Compile(e)))?;
    let provided = provided_imports(&engine, &module).map_err(WasmError::Engine)?;
    let exports: Vec<String> = module.exports().map(|e| e.name().to_string()).collect();
    let exported = |name: &str| exports.iter().any(|e| e == name);
    let abi_versions: Vec<String> = exports
        .iter()
        .filter_map(|e| e.strip_prefix("proxy_abi_version_"))
        .map(|version| version.replace('_', "."))
        .collect();
    let abi_supported = abi_versions.iter().any(|v| v == "0.2.1" || v == "0.2.0");
    let memory = module.exports().find_map(|e| match e.ty() {
        ExternType::Memory(memory) => Some(Memory {
            initial_bytes: memory.minimum() * PAGE,
            maximum_bytes: memory.maximum().map(|pages| pages * PAGE),
        }),
        _ => None,
    });
    let imports: Vec<Import> = module
        .imports()
        .map(|import| Import {
            module: import.module().to_string(),
            name: import.name().to_string(),
            provided: provided(import.module(), import.name()),
        })
        .collect();
    let lasting: Vec<&str> = LASTING_AT_START_UP
        .iter()
        .copied()
        .filter(|name| imports.iter().any(|i| i.name == *name))
        .collect();
    let preinitialize = match lasting.as_slice() {
        [] => "yes: it imports nothing that could leave state outside the guest at start-up"
            .to_string(),
        some => format!(
            "yes, unless its start-up calls {}: edgeward decides at load, and runs the start-up per request otherwise",
            some.join(", ")
        ),
    };
    Ok(Inspection {
        size_bytes: bytes.len() as u64,
        abi_versions,
        abi_supported,
        initializer: ["_initialize", "_start"]
            .into_iter()
            .find(|name| exported(name))
            .map(str::to_string),
        allocator: ["proxy_on_memory_allocate", "malloc"]
            .into_iter()
            .find(|name| exported(name))
            .map(str::to_string),
        callbacks: exports
            .iter()
            .filter(|e| e.starts_with("proxy_on_") && *e != "proxy_on_memory_allocate")
            .map(|name| Callback {
                called: !NEVER_CALLED.contains(&name.as_str()),
                name: name.clone(),
            })
            .collect(),
        imports,
        memory,
        debug_info: has_debug_info(&bytes),
        preinitialize,
    })
}

/// Which imports the proxy's linker provides: the very host functions filters run against.
fn provided_imports(
    engine: &Engine,
    module: &Module,
) -> wasmtime::Result<impl Fn(&str, &str) -> bool> {
    let mut linker = Linker::new(engine);
    abi::add_to_linker(&mut linker)?;
    let (services, _jobs) = HostServices::detached();
    let mut store = Store::new(
        engine,
        HostState::new(Arc::new(PluginInfo::inspected()), 1, services),
    );
    let provided: Vec<(String, String)> = module
        .imports()
        .filter(|import| linker.get_by_import(&mut store, import).is_some())
        .map(|import| (import.module().to_string(), import.name().to_string()))
        .collect();
    Ok(move |module: &str, name: &str| provided.iter().any(|(m, n)| m == module && n == name))
}

/// Whether the module has a `.debug_info` custom section.
fn has_debug_info(bytes: &[u8]) -> bool {
    wasmparser::Parser::new(0)
        .parse_all(bytes)
        .filter_map(Result::ok)
        .any(|payload| {
            matches!(payload, wasmparser::Payload::CustomSection(section) if section.name() == ".debug_info")
        })
}

impl std::fmt::Display for Inspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        writeln!(f, "size:            {} bytes", self.size_bytes)?;
        let abi = match self.abi_versions.as_slice() {
            [] => "none (not a proxy-wasm module)".to_string(),
            versions => versions.join(", "),
        };
        let supported = if self.abi_supported {
            "supported"
        } else {
            "NOT supported: edgeward runs 0.2.0 and 0.2.1"
        };
        writeln!(f, "proxy-wasm ABI:  {abi} ({supported})")?;
        writeln!(
            f,
            "initializer:     {}",
            self.initializer.as_deref().unwrap_or("none")
        )?;
        writeln!(
            f,
            "allocator:       {}",
            self.allocator
                .as_deref()
                .unwrap_or("MISSING (proxy_on_memory_allocate or malloc)")
        )?;
        match &self.memory {
            Some(memory) => writeln!(
                f,
                "memory:          {} KiB initial, {} (the filter's limits.memory caps it)",
                memory.initial_bytes / 1024,
                memory
                    .maximum_bytes
                    .map_or("no maximum of its own".to_string(), |m| format!(
                        "{} KiB maximum",
                        m / 1024
                    ))
            )?,
            None => writeln!(f, "memory:          MISSING (no exported memory)")?,
        }
        writeln!(f, "debug info:      {}", yes_no(self.debug_info))?;
        writeln!(f, "pre-initialize:  {}", self.preinitialize)?;
        writeln!(f, "callbacks ({}):", self.callbacks.len())?;
        for callback in &self.callbacks {
            let note = if callback.called {
                ""
            } else {
                "  (never called by edgeward)"
            };
            writeln!(f, "  {}{note}", callback.name)?;
        }
        writeln!(f, "imports ({}):", self.imports.len())?;
        for import in &self.imports {
            let status = if import.provided {
                "provided"
            } else {
                "NOT PROVIDED: the filter cannot load"
            };
            writeln!(f, "  {}.{}  {status}", import.module, import.name)?;
        }
        write!(f, "loads in edgeward: {}", yes_no(self.loadable()))
    }
}
