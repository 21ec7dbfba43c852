//! One wasmtime engine for every filter: pooling allocator with copy-on-write memory images,
//! epoch interruption driven by a ticker, and compiled modules cached on disk.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, Module, OptLevel, PoolingAllocationConfig,
    ProfilingStrategy, WasmBacktraceDetails,
};

use super::error::WasmError;

/// The epoch advances every tenth of the smallest CPU limit (a guest overruns its limit by
/// at most a tenth), but never more often than every millisecond nor less often than every
/// 10 ms: each tick wakes a thread, which on a busy machine takes a core from a worker.
const FINEST_TICK: Duration = Duration::from_millis(1);
const COARSEST_TICK: Duration = Duration::from_millis(10);

/// The current tick in nanoseconds; one engine per process sets it.
static EPOCH_TICK_NANOS: AtomicU64 = AtomicU64::new(1_000_000);

/// How often the epoch advances: the granularity of CPU deadlines.
pub(super) fn epoch_tick() -> Duration {
    Duration::from_nanos(EPOCH_TICK_NANOS.load(Ordering::Relaxed))
}

/// The tick for filters whose smallest CPU limit is `smallest_cpu_limit`.
fn tick_for(smallest_cpu_limit: Duration) -> Duration {
    (smallest_cpu_limit / 10).clamp(FINEST_TICK, COARSEST_TICK)
}

pub(crate) struct WasmEngine {
    engine: Engine,
    module_cache: Option<PathBuf>,
}

impl WasmEngine {
    /// `instances` bounds the instances alive at once; `max_memory` is the largest memory
    /// limit of any filter, `smallest_cpu_limit` the smallest CPU limit; `perf_map` lists
    /// compiled functions in `/tmp/perf-<pid>.map`, where `perf` finds their names.
    pub(crate) fn new(
        instances: u32,
        max_memory: u64,
        smallest_cpu_limit: Duration,
        module_cache: Option<PathBuf>,
        perf_map: bool,
    ) -> Result<Self, WasmError> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_core_instances(instances)
            .total_memories(instances)
            .total_tables(instances)
            .max_memory_size(usize::try_from(max_memory).unwrap_or(usize::MAX))
            // Keep the pages a typical Rust guest touches (shadow stack, heap start) resident
            // and reset only what was dirtied: instance creation then costs microseconds.
            .linear_memory_keep_resident(4 << 20)
            .table_keep_resident(64 << 10)
            .pagemap_scan(Enabled::Auto);
        let mut config = Config::new();
        config
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .epoch_interruption(true)
            .cranelift_opt_level(OptLevel::Speed)
            .parallel_compilation(true)
            // Crash reports name the guest's source lines where its module has debug info.
            .wasm_backtrace_details(WasmBacktraceDetails::Enable);
        if perf_map {
            config.profiler(ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).map_err(WasmError::Engine)?;
        spawn_epoch_ticker(&engine, tick_for(smallest_cpu_limit))
            .map_err(|e| WasmError::Thread("epoch ticker", e))?;
        let module_cache = module_cache.and_then(|dir| match prepare_cache_dir(&dir) {
            Ok(()) => Some(dir),
            Err(e) => {
                log::warn!(
                    "module cache {} is not usable ({e}); filters will be compiled at every start",
                    dir.display()
                );
                None
            }
        });
        Ok(WasmEngine {
            engine,
            module_cache,
        })
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles a module, or loads the code compiled for the same bytes and engine settings by
    /// an earlier run. `name` says which module in log lines.
    pub(crate) fn load_module(&self, name: &Path, bytes: &[u8]) -> wasmtime::Result<Module> {
        let cached = self
            .module_cache
            .as_ref()
            .map(|dir| dir.join(self.cache_key(bytes)));
        if let Some(path) = &cached {
            if path.is_file() {
                match load_precompiled(&self.engine, path) {
                    Ok(module) => {
                        log::info!(
                            "{}: compiled code loaded from the module cache",
                            name.display()
                        );
                        return Ok(module);
                    }
                    Err(e) => log::warn!("ignoring cached module {}: {e:#}", path.display()),
                }
            }
        }
        let started = std::time::Instant::now();
        let module = Module::new(&self.engine, bytes)?;
        log::info!("{}: compiled in {:?}", name.display(), started.elapsed());
        if let Some(path) = &cached {
            if let Err(e) = store_precompiled(&module, path) {
                log::warn!("cannot cache compiled module at {}: {e:#}", path.display());
            }
        }
        Ok(module)
    }

    /// The wasm bytes' hash plus everything in the engine that affects compiled code.
    fn cache_key(&self, bytes: &[u8]) -> String {
        let mut engine_hasher = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut engine_hasher);
        let digest = Sha256::digest(bytes);
        format!(
            "{}-{:016x}.cwasm",
            hex::encode(&digest[..16]),
            engine_hasher.finish()
        )
    }
}

/// Loads compiled code edgeward wrote itself.
#[allow(unsafe_code)]
fn load_precompiled(engine: &Engine, path: &Path) -> wasmtime::Result<Module> {
    // SAFETY: `deserialize_file` runs the file's native code, so the file must be one that
    // `Module::serialize` produced and nobody else can change: it lives in a cache folder
    // that `prepare_cache_dir` verified is owned by this user and writable by no one else,
    // it is written under a temporary name and renamed into place (never modified while
    // mapped), and wasmtime itself rejects files from another version or engine setting.
    unsafe { Module::deserialize_file(engine, path) }
}

fn store_precompiled(module: &Module, path: &Path) -> wasmtime::Result<()> {
    let bytes = module.serialize()?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = fs::File::create(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    Ok(())
}

/// Creates the cache folder (mode 0700) and refuses one that another user could write to,
/// since its files are loaded as native code.
fn prepare_cache_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = fs::metadata(dir)?;
    let me = fs::metadata("/proc/self")?.uid();
    if meta.uid() != me {
        return Err(std::io::Error::other("it belongs to another user"));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(std::io::Error::other(
            "others can write to it (chmod 700 fixes that)",
        ));
    }
    Ok(())
}

/// Advances the epoch every `tick` for as long as the engine lives; without it no CPU
/// deadline would ever expire.
fn spawn_epoch_ticker(engine: &Engine, tick: Duration) -> std::io::Result<()> {
    EPOCH_TICK_NANOS.store(
        u64::try_from(tick.as_nanos()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || loop {
            std::thread::sleep(tick);
            match weak.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => return,
            }
        })
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tick_is_a_tenth_of_the_smallest_cpu_limit_within_bounds() {
        assert_eq!(
            tick_for(Duration::from_millis(50)),
            Duration::from_millis(5)
        );
        assert_eq!(tick_for(Duration::from_millis(2)), FINEST_TICK);
        assert_eq!(tick_for(Duration::ZERO), FINEST_TICK);
        assert_eq!(tick_for(Duration::from_secs(5)), COARSEST_TICK);
    }
}
