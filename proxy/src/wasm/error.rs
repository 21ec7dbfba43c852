//! The filter host's errors: why a filter cannot be loaded ([`WasmError`]), why an instance
//! cannot start ([`StartError`]), and how a guest call failed ([`Fault`]), which decides the
//! answer a request gets and the metric it counts in.

use std::path::PathBuf;

use crate::config::{Filter, Mark};
use crate::metrics;

/// Why the filter host cannot be set up; stops `run` and `validate`.
#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    #[error("cannot set up the WebAssembly engine")]
    Engine(#[source] wasmtime::Error),
    #[error("cannot start the {0} thread")]
    Thread(&'static str, #[source] std::io::Error),
    #[error("filter `{filter}` ({})", module.display())]
    Load {
        filter: String,
        module: PathBuf,
        /// Where in the configuration file the problem is: the filter's `config` (or
        /// `vm_config`) when it rejected it, else the filter.
        at: Option<Mark>,
        #[source]
        source: Box<LoadError>,
    },
    /// A module `filter inspect` cannot read or compile.
    #[error("{}", module.display())]
    Inspect {
        module: PathBuf,
        #[source]
        source: Box<LoadError>,
    },
    /// Several filters failed; each is reported.
    #[error("{} filters cannot be loaded:{}", .0.len(), each_on_a_line(.0))]
    Filters(Vec<WasmError>),
}

impl WasmError {
    /// `filter`'s module could not be loaded, for `source`.
    pub(crate) fn load(filter: &Filter, source: LoadError) -> WasmError {
        let at = match &source {
            LoadError::Start(StartError::ConfigRejected { .. }) => filter.config_at,
            LoadError::Start(StartError::VmConfigRejected { .. }) => filter.vm_config_at,
            _ => None,
        };
        WasmError::Load {
            filter: filter.name.clone(),
            module: filter.module.clone(),
            at: at.or(filter.at),
            source: Box::new(source),
        }
    }

    /// Every problem, one by one (a [`WasmError::Filters`] holds several).
    pub fn problems(&self) -> Vec<&WasmError> {
        match self {
            WasmError::Filters(each) => each.iter().flat_map(WasmError::problems).collect(),
            one => vec![one],
        }
    }

    /// Where in the configuration file this problem is, when it is a filter's.
    pub fn at(&self) -> Option<Mark> {
        match self {
            WasmError::Load { at, .. } => *at,
            _ => None,
        }
    }
}

/// Why one filter's module cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read the module")]
    Read(#[source] std::io::Error),
    #[error("not a valid WebAssembly module")]
    Compile(#[source] wasmtime::Error),
    #[error("it is not a proxy-wasm module: it exports no proxy_abi_version_* marker")]
    NoAbiMarker,
    #[error("it speaks proxy-wasm ABI {0} but edgeward supports 0.2.1 and 0.2.0")]
    UnsupportedAbi(String),
    #[error("it imports `{module}.{name}`, which edgeward does not provide")]
    UnknownImport { module: String, name: String },
    #[error("cannot link the module")]
    Link(#[source] wasmtime::Error),
    #[error("cannot prepare the module's memory image")]
    MemoryImage(#[source] wasmtime::Error),
    #[error("the start-up failed")]
    Start(#[source] StartError),
}

/// Why an instance could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Every instance the pool allows (`wasm.max_instances`) is in use.
    #[error("{NO_FREE_INSTANCE}")]
    PoolFull,
    #[error("instantiation {0}")]
    Instantiate(Fault),
    #[error("the module exports no `memory`")]
    NoMemory,
    #[error("the module exports neither `proxy_on_memory_allocate` nor `malloc`")]
    NoAllocator,
    #[error(transparent)]
    Export(#[from] ExportError),
    /// The module's initializer (`_initialize`, `_start`) failed.
    #[error("`{0}` {1}")]
    Initializer(&'static str, Fault),
    /// A root context callback (`on_context_create`, `on_vm_start`, `on_configure`) failed.
    #[error("{0} {1}")]
    RootCallback(&'static str, Fault),
    #[error(
        "on_vm_start returned false (the filter rejected its vm_config){}",
        said_as_suffix(said)
    )]
    VmConfigRejected { said: Vec<String> },
    #[error(
        "on_configure returned false (the filter rejected its config){}",
        said_as_suffix(said)
    )]
    ConfigRejected { said: Vec<String> },
}

fn each_on_a_line(errors: &[WasmError]) -> String {
    errors
        .iter()
        .map(|e| format!("\n  {}", crate::causes::describe(e)))
        .collect()
}

/// What a filter logged as it rejected its configuration, after the message: `: why`.
fn said_as_suffix(said: &[String]) -> String {
    match said {
        [] => String::new(),
        lines => format!(": {}", lines.join("; ")),
    }
}

impl StartError {
    /// The crash report of a start-up that crashed (see [`Fault::report`]).
    pub(crate) fn report(&self) -> String {
        match self {
            StartError::Initializer(_, fault) | StartError::RootCallback(_, fault) => {
                fault.report()
            }
            _ => String::new(),
        }
    }
}

/// Why per-request instances cannot start from a snapshot of the configured start-up (they
/// then run the start-up each).
#[derive(Debug, thiserror::Error)]
pub(super) enum SnapshotError {
    #[error("the module cannot be instrumented")]
    Instrument(#[source] wasmtime::Error),
    #[error("the instrumented module does not compile")]
    Compile(#[source] wasmtime::Error),
    #[error("command modules (`_start`) are started per request")]
    CommandModule,
    #[error("the instrumented module does not start")]
    Start(#[source] StartError),
    #[error("its start-up asked for ticks, made callouts or registered queues")]
    LastingEffects,
    #[error("the snapshot did not complete")]
    Incomplete,
    #[error("the snapshot failed")]
    Snapshot(#[source] wasmtime::Error),
    #[error("the instrumented module lacks `{0}`")]
    MissingExport(String),
}

/// A callback export that cannot be called.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("export `{0}` is not a function")]
    NotAFunction(&'static str),
    #[error("export `{name}` has the wrong signature")]
    WrongSignature {
        name: &'static str,
        #[source]
        source: wasmtime::Error,
    },
}

/// How a guest call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The request's CPU budget in this filter ran out.
    CpuLimit,
    /// The instance asked for more memory than its limit.
    MemoryLimit,
    /// The guest trapped (a Rust panic is an `unreachable` trap).
    Trap(Box<Trap>),
    /// The guest called `proc_exit`.
    Exit(i32),
    /// Starting an instance failed (instantiation or the start-up); says why.
    Unavailable(String),
    /// The filter is waiting out its crash back-off, so no instance is started.
    BackingOff,
    /// Every instance the pool allows (`wasm.max_instances`) is in use.
    NoFreeInstance,
}

/// What is known of a guest's crash, for its report in the log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Trap {
    /// The trap: `wasm trap: wasm \`unreachable\` instruction executed`, or the host's reason.
    pub message: String,
    /// The callback that crashed (`on_http_request_headers`), once known.
    pub callback: &'static str,
    /// What the guest said as it went down: its critical log lines (a Rust SDK panic
    /// message, `panicked at src/lib.rs:10:5: ...`).
    pub panic: Option<String>,
    /// The wasm frames, innermost first: function names, and file:line where the module
    /// has debug info.
    pub backtrace: Vec<String>,
}

impl Fault {
    /// A crash the host found (no guest backtrace).
    pub(crate) fn trap(message: impl Into<String>) -> Fault {
        Fault::Trap(Box::new(Trap {
            message: message.into(),
            ..Trap::default()
        }))
    }

    /// The crash report's lines after the first (its cause, then the backtrace); empty for
    /// other faults.
    pub(crate) fn report(&self) -> String {
        let Fault::Trap(trap) = self else {
            return String::new();
        };
        let mut report = String::new();
        if let Some(panic) = &trap.panic {
            report.push_str("\n  ");
            report.push_str(&panic.replace('\n', "\n  "));
        }
        report.push_str("\n  ");
        report.push_str(&trap.message);
        if !trap.backtrace.is_empty() {
            report.push_str("\n  wasm backtrace:");
            for (n, frame) in trap.backtrace.iter().enumerate() {
                report.push_str(&format!("\n    {n:>2}: {frame}"));
            }
        }
        report
    }
}

/// Why a full pool refuses an instance, in [`Fault::NoFreeInstance`] and at start-up.
pub(super) const NO_FREE_INSTANCE: &str = "all instances are in use (`wasm.max_instances`)";

impl Fault {
    /// Resource limits answer 503; crashes 500.
    pub(crate) fn is_resource_limit(&self) -> bool {
        matches!(
            self,
            Fault::CpuLimit
                | Fault::MemoryLimit
                | Fault::Unavailable(_)
                | Fault::BackingOff
                | Fault::NoFreeInstance
        )
    }

    /// Whether the filter itself failed, which counts towards its crash back-off. Being
    /// refused an instance (back-off, full pool) does not: counting it would prolong the
    /// back-off for as long as requests keep coming.
    pub(crate) fn is_crash(&self) -> bool {
        !matches!(self, Fault::BackingOff | Fault::NoFreeInstance)
    }

    pub(crate) fn code(&self) -> &'static str {
        match self {
            Fault::CpuLimit => "cpu_limit",
            Fault::MemoryLimit => "memory_limit",
            Fault::Trap(_) | Fault::Exit(_) => "trap",
            Fault::Unavailable(_) | Fault::BackingOff | Fault::NoFreeInstance => "unavailable",
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::CpuLimit => f.write_str("exceeded its CPU time limit"),
            Fault::MemoryLimit => f.write_str("exceeded its memory limit"),
            // Short, and without what the guest said: this reaches clients too.
            Fault::Trap(trap) if trap.callback.is_empty() => f.write_str("crashed"),
            Fault::Trap(trap) => write!(f, "crashed in {}", trap.callback),
            Fault::Exit(code) => write!(f, "exited with code {code}"),
            Fault::Unavailable(why) => write!(f, "is unavailable: {why}"),
            Fault::BackingOff => f.write_str("is unavailable: restarting after repeated crashes"),
            Fault::NoFreeInstance => write!(f, "is unavailable: {NO_FREE_INSTANCE}"),
        }
    }
}

/// The error a `proc_exit` hostcall raises to unwind the guest.
#[derive(Debug, thiserror::Error)]
#[error("the filter called proc_exit({0})")]
pub(super) struct GuestExit(pub i32);

/// Turns a failed guest call into a [`Fault`].
pub(super) fn classify(error: &wasmtime::Error, memory_limit_hit: bool) -> Fault {
    if let Some(exit) = error.downcast_ref::<GuestExit>() {
        return Fault::Exit(exit.0);
    }
    match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => Fault::CpuLimit,
        _ if memory_limit_hit => Fault::MemoryLimit,
        Some(trap) => Fault::Trap(Box::new(Trap {
            message: trap.to_string(),
            backtrace: backtrace(error),
            ..Trap::default()
        })),
        None => Fault::trap(format!("{error:#}")),
    }
}

/// The guest frames of a trap, innermost first (wasmtime's own frames are never in it), with
/// Rust names demangled, and without the frames of a Rust panic's own machinery (the report
/// starts where the guest's code panicked).
fn backtrace(error: &wasmtime::Error) -> Vec<String> {
    let Some(trace) = error.downcast_ref::<wasmtime::WasmBacktrace>() else {
        return Vec::new();
    };
    let frames: Vec<(String, Option<String>)> = trace
        .frames()
        .iter()
        .map(|frame| {
            let name = frame.func_name().map_or_else(
                || format!("<function {}>", frame.func_index()),
                |name| format!("{:#}", rustc_demangle::demangle(name)),
            );
            let place = frame.symbols().iter().find_map(|symbol| {
                let file = symbol.file()?;
                Some(match symbol.line() {
                    Some(line) => format!("{file}:{line}"),
                    None => file.to_string(),
                })
            });
            (name, place)
        })
        .collect();
    // The panic path's frames come first, from the abort up to the guest's own frame.
    let machinery = frames
        .iter()
        .take_while(|(name, _)| is_panic_machinery(name))
        .count();
    let skipped = if machinery < frames.len() {
        machinery
    } else {
        0
    };
    frames
        .into_iter()
        .skip(skipped)
        .map(|(name, place)| match place {
            Some(place) => format!("{name} at {place}"),
            None => name,
        })
        .collect()
}

/// Frames of the Rust standard library's panic and abort path.
fn is_panic_machinery(name: &str) -> bool {
    name == "abort"
        || name.starts_with("std::panicking::")
        || name.starts_with("std::process::abort")
        || name.starts_with("std::sys::")
        || name.starts_with("core::panicking::")
        || name.starts_with("__rustc::")
        || name.starts_with("rust_begin_unwind")
        || name.starts_with("__rust_")
}

impl Fault {
    /// Counts the fault in filter `filter`'s metrics.
    pub(crate) fn count(&self, filter: &str) {
        let metrics = metrics::global();
        let limit = match self {
            Fault::Trap(_) | Fault::Exit(_) => {
                metrics.filter_traps.with_label_values(&[filter]).inc();
                return;
            }
            Fault::CpuLimit => "cpu",
            Fault::MemoryLimit => "memory",
            Fault::Unavailable(_) | Fault::BackingOff => "unavailable",
            Fault::NoFreeInstance => "instances",
        };
        metrics
            .filter_limit_hits
            .with_label_values(&[filter, limit])
            .inc();
    }
}
