//! The runtime generation: what requests read from the configuration (routes, upstreams and
//! their health checks, filters, the geo database), built whole from one configuration file
//! and replaced whole by a reload. A request holds the generation it started on until it
//! ends, so it finishes on the configuration it began with; a generation's background tasks
//! (filter ticks and callouts, builtin origins) stop once its last request has ended and a
//! newer generation serves. An upstream configured as before is taken over whole, with its
//! health state and its running health checks, which end with the last generation using it.
//!
//! Reloads (`SIGHUP`, `POST /config/reload` on the admin listener, or with `run --watch` a
//! change to the configuration file or a file it names) run one at a time on
//! the [`Reloader`] service: read and validate the file, build the new generation off the
//! request path (filters are compiled and configured there), and swap. Anything failing
//! leaves the serving generation in place. A configuration that changes what the process
//! fixed at its start (listeners, workers, the cache's storage, the admin listener, the
//! access log) is checked the same way, its new listening addresses opened once, and then
//! handed to a new process, as a binary upgrade does: it keeps the listeners that stay, opens
//! the new ones and closes the others, while this one finishes its requests and exits.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot, watch};

use crate::causes;
use crate::config::{self, Config, ConfigError, Listener};
use crate::filter_origin;
use crate::geo::{Geo, GeoError};
use crate::metrics;
use crate::routing::RouteTable;
use crate::sync::{lock, Task};
use crate::upgrade;
use crate::upstream::{UpstreamError, Upstreams};
use crate::wasm::{FilterHost, WasmError};

/// Why a configuration could not become a generation.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Filters(#[from] WasmError),
    #[error(transparent)]
    Geo(#[from] GeoError),
    #[error("cannot start the builtin origins of `builtin: filters` upstreams")]
    FilterOrigins(#[source] std::io::Error),
}

/// How a reload went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reloaded {
    /// This generation serves new requests.
    Generation(u64),
    /// The configuration changes what only a new process can: this one handed over to that
    /// process (its pid), which serves the configuration once it has taken the listeners.
    HandedOver(u32),
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "the new configuration changes {}, which a reload cannot change; restart edgeward, or start `edgeward run --upgrade` beside it",
        .0.join(", ")
    )]
    NeedsRestart(Vec<&'static str>),
    #[error("the new configuration cannot start")]
    Build(#[source] BuildError),
    #[error("the new configuration listens on {address}, which cannot be opened")]
    Listen {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the new process the configuration is handed to")]
    Successor(#[source] std::io::Error),
    #[error("this edgeward has handed over to a new process (pid {0}), which reloads from now on")]
    HandedOver(u32),
    #[error("edgeward is shutting down")]
    ShuttingDown,
}

pub(crate) struct Generation {
    pub(crate) number: u64,
    pub(crate) loaded_at: SystemTime,
    /// SHA-256 of the configuration file's bytes, hex.
    pub(crate) source_sha256: String,
    /// What `GET /config` shows of the configuration (no secrets).
    pub(crate) summary: serde_json::Value,
    pub(crate) routes: RouteTable,
    pub(crate) upstreams: Arc<Upstreams>,
    pub(crate) filters: FilterHost,
    pub(crate) geo: Option<Arc<Geo>>,
    /// The filter-set properties access-log lines show.
    pub(crate) access_log_properties: Arc<[String]>,
    /// Started once the generation is installed.
    tasks: Mutex<Vec<Task>>,
    /// Fires when the generation is dropped, which ends its tasks.
    retired: watch::Sender<bool>,
}

impl Generation {
    /// Builds everything `config` needs to serve; binds builtin origins, compiles and starts
    /// the filters. Blocking: filters compile here. Upstreams configured as in `previous`
    /// keep their health state.
    pub(crate) fn build(
        config: &Config,
        number: u64,
        previous: Option<&Generation>,
    ) -> Result<Generation, BuildError> {
        let filters = FilterHost::load(config)?;
        let (filter_origins, serving) =
            filter_origin::bind(config, &filters).map_err(BuildError::FilterOrigins)?;
        let previous_upstreams = previous.map(|previous| &*previous.upstreams);
        let (upstreams, mut tasks) =
            Upstreams::build(&config.upstreams, previous_upstreams, &filter_origins)?;
        tasks.extend(serving);
        let upstreams = Arc::new(upstreams);
        filters.serve_upstreams(upstreams.clone());
        tasks.extend(
            filters
                .background_tasks()
                .into_iter()
                .map(|work| Task { work, until: None }),
        );
        let geo = match &config.geo {
            Some(settings) => Some(Arc::new(Geo::open(
                &settings.database,
                settings.trusted_proxies.clone(),
            )?)),
            None => None,
        };
        Ok(Generation {
            number,
            loaded_at: SystemTime::now(),
            source_sha256: config.source_sha256.clone(),
            summary: config::summary(config),
            routes: RouteTable::new(config.routes.clone()),
            upstreams,
            filters,
            geo,
            access_log_properties: config.access_log_properties.clone(),
            tasks: Mutex::new(tasks),
            retired: watch::channel(false).0,
        })
    }

    /// Spawns the generation's background tasks on the current tokio runtime.
    fn start_tasks(&self) {
        for task in lock(&self.tasks).drain(..) {
            let until = task.until.unwrap_or_else(|| self.retired.subscribe());
            tokio::spawn(async move { task.work.start(until).await });
        }
    }
}

impl Drop for Generation {
    /// The last request on this generation has ended and a newer one serves: its tasks stop,
    /// and its filters' root contexts end, on a thread of their own (this may be a worker
    /// finishing a request, and guest code runs there).
    fn drop(&mut self) {
        log::debug!("configuration generation {} retired", self.number);
        self.retired.send_replace(true);
        let filters = self.filters.clone();
        let ended = std::thread::Builder::new()
            .name("wasm-retire".into())
            .spawn(move || filters.end_roots());
        if let Err(e) = ended {
            log::warn!("cannot end the retired filters' root contexts: {e}");
        }
    }
}

/// A request for a reload: where its outcome goes.
type ReloadRequest = oneshot::Sender<Result<Reloaded, ReloadError>>;

/// The serving generation, and the way to ask for a reload.
pub(crate) struct Generations {
    current: RwLock<Arc<Generation>>,
    reloads: mpsc::Sender<ReloadRequest>,
}

impl Generations {
    /// The generation a request starting now uses.
    pub(crate) fn current(&self) -> Arc<Generation> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn install(&self, generation: Arc<Generation>) {
        let number = generation.number;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = generation;
        metrics::global().config_generation.set(number as i64);
    }

    /// Reloads the configuration file: how, or why nothing changed.
    pub(crate) async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let (answer, outcome) = oneshot::channel();
        self.reloads
            .send(answer)
            .await
            .map_err(|_| ReloadError::ShuttingDown)?;
        outcome.await.map_err(|_| ReloadError::ShuttingDown)?
    }
}

/// The settings a reload cannot change (they are bound when the process starts), as the
/// configuration that started the process has them.
struct Fixed {
    listeners: Vec<String>,
    /// The listeners' and the admin listener's addresses.
    addresses: Vec<std::net::SocketAddr>,
    workers: usize,
    work_stealing: bool,
    admin: String,
    cache: String,
    access_log: String,
    shutdown_timeout: std::time::Duration,
}

impl Fixed {
    fn of(config: &Config) -> Fixed {
        Fixed {
            listeners: config.listeners.iter().map(listener_summary).collect(),
            addresses: config
                .listeners
                .iter()
                .map(|l| l.address)
                .chain(config.admin.as_ref().map(|a| a.address))
                .collect(),
            workers: config.workers,
            work_stealing: config.work_stealing,
            admin: format!("{:?}", config.admin),
            cache: format!("{:?}", config.cache),
            access_log: format!("{:?}", config.access_log),
            shutdown_timeout: config.shutdown_timeout,
        }
    }

    /// The names of the settings `other` changes.
    fn changed_by(&self, other: &Fixed) -> Vec<&'static str> {
        [
            (self.listeners != other.listeners, "`listeners`"),
            (self.workers != other.workers, "`workers`"),
            (self.work_stealing != other.work_stealing, "`work_stealing`"),
            (self.admin != other.admin, "`admin`"),
            (self.cache != other.cache, "`cache`"),
            (self.access_log != other.access_log, "`access_log`"),
            (
                self.shutdown_timeout != other.shutdown_timeout,
                "`shutdown_timeout`",
            ),
        ]
        .into_iter()
        .filter_map(|(changed, name)| changed.then_some(name))
        .collect()
    }
}

/// A listener as a reload compares it: its certificates by file, not by content (certificate
/// files are re-read by rotation, not by reloads).
fn listener_summary(listener: &Listener) -> String {
    let tls = listener.tls.as_ref().map(|tls| {
        let certificates: Vec<_> = tls
            .certificates
            .iter()
            .map(|c| (&c.cert, &c.key, &c.served))
            .collect();
        format!(
            "{certificates:?} {:?} {:?} {:?} {:?}",
            tls.default, tls.min_version, tls.alpn, tls.reload_interval
        )
    });
    format!(
        "{} {:?} {:?} {tls:?}",
        listener.address, listener.client, listener.redirect_https
    )
}

/// How often `--watch` looks at the watched files.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// What `--watch` knows of the files a configuration reads: a change counts once two looks
/// in a row agree on it, so that a file being written is not read half-way.
struct FileWatch {
    files: Vec<PathBuf>,
    /// As they were when the configuration in use (or the last attempt) was read.
    baseline: Vec<Option<Stamp>>,
    /// A change seen at the last look, to be confirmed by the next one.
    seen: Option<Vec<Option<Stamp>>>,
}

/// When a file was changed, as far as its metadata tells: `None` for a missing file.
type Stamp = (SystemTime, u64, u64);

fn stamps(files: &[PathBuf]) -> Vec<Option<Stamp>> {
    use std::os::unix::fs::MetadataExt;
    files
        .iter()
        .map(|file| {
            let meta = std::fs::metadata(file).ok()?;
            Some((meta.modified().ok()?, meta.len(), meta.ino()))
        })
        .collect()
}

impl FileWatch {
    fn new(files: Vec<PathBuf>) -> FileWatch {
        FileWatch {
            baseline: stamps(&files),
            files,
            seen: None,
        }
    }

    /// Whether the files changed and have stayed so since the previous look.
    fn changed(&mut self) -> bool {
        let now = stamps(&self.files);
        if now == self.baseline {
            self.seen = None;
            return false;
        }
        if self.seen.as_ref() == Some(&now) {
            self.seen = None;
            return true;
        }
        self.seen = Some(now);
        false
    }
}

/// The Pingora background service that starts the first generation's tasks and runs
/// reloads, one at a time, on its own runtime.
pub(crate) struct Reloader {
    generations: Arc<Generations>,
    source: PathBuf,
    fixed: Fixed,
    next_number: AtomicU64,
    requests: Mutex<Option<mpsc::Receiver<ReloadRequest>>>,
    /// With `run --watch`.
    watch: Option<Mutex<FileWatch>>,
    /// Makes the listeners' certificate files be looked at (by their rotation) after a reload.
    certificates: crate::tls::LookNow,
    /// This program's path at start, to start a successor with (`None` when it cannot be
    /// told: a configuration that needs one is then refused).
    program: Option<PathBuf>,
    /// The successor this process handed over to, once it has.
    successor: Mutex<Option<u32>>,
}

impl Reloader {
    /// The first generation, built from `config`, and the service that will serve it.
    pub(crate) fn new(
        config: &Config,
        watch: bool,
        certificates: crate::tls::LookNow,
    ) -> Result<(Arc<Generations>, Reloader), BuildError> {
        let source = config.source.clone();
        let fixed = Fixed::of(config);
        let first = Generation::build(config, 1, None)?;
        let (sender, receiver) = mpsc::channel(8);
        let generations = Arc::new(Generations {
            current: RwLock::new(Arc::new(first)),
            reloads: sender,
        });
        metrics::global().config_generation.set(1);
        metrics::global()
            .config_last_reload
            .set(unix_seconds(SystemTime::now()));
        let reloader = Reloader {
            generations: generations.clone(),
            source,
            fixed,
            next_number: AtomicU64::new(2),
            requests: Mutex::new(Some(receiver)),
            watch: watch.then(|| Mutex::new(FileWatch::new(config.inputs.clone()))),
            certificates,
            program: std::env::current_exe().ok(),
            successor: Mutex::new(None),
        };
        Ok((generations, reloader))
    }

    async fn reload(&self) -> Result<Reloaded, ReloadError> {
        if let Some(pid) = *lock(&self.successor) {
            return Err(ReloadError::HandedOver(pid));
        }
        let source = self.source.clone();
        let loaded = tokio::task::spawn_blocking(move || config::load(&source))
            .await
            .map_err(|_| ReloadError::ShuttingDown)?;
        if let Some(watch) = &self.watch {
            // Watch what this attempt read, from now on: a broken file is not retried until
            // it changes again.
            let mut watch = lock(watch);
            let files = match &loaded {
                Ok(config) => config.inputs.clone(),
                Err(_) => std::mem::take(&mut watch.files),
            };
            *watch = FileWatch::new(files);
        }
        let config = loaded?;
        let fixed = Fixed::of(&config);
        let changed = self.fixed.changed_by(&fixed);
        if !changed.is_empty() {
            let Some(program) = &self.program else {
                return Err(ReloadError::NeedsRestart(changed));
            };
            return self.hand_over(config, &fixed, program).await;
        }
        let number = self.next_number.fetch_add(1, Ordering::Relaxed);
        let current = self.generations.current();
        let built =
            tokio::task::spawn_blocking(move || Generation::build(&config, number, Some(&current)))
                .await
                .map_err(|_| ReloadError::ShuttingDown)?;
        let generation = Arc::new(built.map_err(ReloadError::Build)?);
        generation.start_tasks();
        self.generations.install(generation);
        Ok(Reloaded::Generation(number))
    }

    /// Hands `config`, which changes what this process fixed at its start, to a new process
    /// started from `program` (as `run --upgrade`). First what could fail there is tried here,
    /// so that a failure leaves this process serving: the configuration is built (its
    /// filters loaded and configured) and dropped, and each address it listens on anew is
    /// bound once.
    async fn hand_over(
        &self,
        config: Config,
        fixed: &Fixed,
        program: &std::path::Path,
    ) -> Result<Reloaded, ReloadError> {
        tokio::task::spawn_blocking(move || Generation::build(&config, 0, None).map(drop))
            .await
            .map_err(|_| ReloadError::ShuttingDown)?
            .map_err(ReloadError::Build)?;
        for &address in &fixed.addresses {
            if !self.fixed.addresses.contains(&address) {
                upgrade::check_bindable(address)
                    .map_err(|source| ReloadError::Listen { address, source })?;
            }
        }
        let pid = upgrade::start_successor(program, &self.source, self.watch.is_some())
            .map_err(ReloadError::Successor)?;
        *lock(&self.successor) = Some(pid);
        Ok(Reloaded::HandedOver(pid))
    }

    /// Reloads, and tells the log and the metrics how it went.
    async fn reload_and_report(&self, trigger: &str) -> Result<Reloaded, ReloadError> {
        log::info!("{trigger}: reloading {}", self.source.display());
        let outcome = self.reload().await;
        // Listeners' certificates are not part of a generation: their rotation reads changed
        // files, now rather than at its next look, whatever became of the rest.
        self.certificates.ask();
        let metrics = metrics::global();
        match &outcome {
            Ok(reloaded) => {
                metrics.config_reloads.with_label_values(&["ok"]).inc();
                metrics
                    .config_last_reload
                    .set(unix_seconds(SystemTime::now()));
                match reloaded {
                    Reloaded::Generation(number) => {
                        log::info!("configuration generation {number} serves new requests");
                    }
                    Reloaded::HandedOver(pid) => log::info!(
                        "the configuration changes what only a new process can: handing over to edgeward pid {pid}, which takes the listeners over once it has started (should it fail, this process serves on)"
                    ),
                }
            }
            Err(e) => {
                metrics.config_reloads.with_label_values(&["error"]).inc();
                log::error!(
                    "reload failed; the configuration in use is unchanged: {}",
                    causes::describe(e)
                );
            }
        }
        outcome
    }
}

#[async_trait::async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        self.generations.current().start_tasks();
        let Some(mut requests) = lock(&self.requests).take() else {
            return;
        };
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => Some(hangups),
            Err(e) => {
                log::error!("cannot watch for SIGHUP: {e}; reload through the admin listener");
                None
            }
        };
        let mut looks = tokio::time::interval(WATCH_INTERVAL);
        looks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let hangup = async {
                match hangups.as_mut() {
                    Some(hangups) => hangups.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = looks.tick(), if self.watch.is_some() => {
                    let changed = self.watch.as_ref().is_some_and(|watch| lock(watch).changed());
                    if changed {
                        let _ = self.reload_and_report("a watched file changed").await;
                    }
                }
                _ = hangup => {
                    // The outcome is in the log and the metrics.
                    let _ = self.reload_and_report("SIGHUP").await;
                }
                request = requests.recv() => match request {
                    Some(answer) => {
                        let outcome = self.reload_and_report("POST /config/reload").await;
                        let _ = answer.send(outcome);
                    }
                    None => return,
                },
                _ = shutdown.changed() => return,
            }
        }
    }
}

fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
