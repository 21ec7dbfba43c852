//! Builds the Pingora server from a validated configuration and runs it until shutdown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::proxy::HttpProxy;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use tokio::signal::unix::{signal, SignalKind};

use crate::access_log::AccessLogger;
use crate::admin::{AdminServer, Readiness};
use crate::cache::{Cache, CacheError};
use crate::config::Config;
use crate::connections::Guarded;
use crate::edge::Edge;
use crate::runtime::{BuildError, Generations, Reloader};
use crate::tls::{self, TlsError};
use crate::upgrade::{self, ProcessFiles, UpgradeError};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {address}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Runtime(#[from] BuildError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("cannot open the access log")]
    AccessLog(#[source] std::io::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Upgrade(#[from] UpgradeError),
}

/// Replaces SIGHUP's default action (ending the process) before the listeners open, so that a
/// reload asked for at once cannot kill edgeward before the reloader listens for it. The
/// handler tokio installs stays for the life of the process; the reloader's own stream
/// receives the signals from when it starts.
fn catch_hangups_from_now_on() {
    let installed = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .and_then(|runtime| runtime.block_on(async { signal(SignalKind::hangup()).map(drop) }));
    if let Err(e) = installed {
        log::warn!("cannot catch SIGHUP yet ({e}): until the reloader runs, it ends edgeward");
    }
}

/// How `run` starts.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Reload whenever the configuration or a file it names changes.
    pub watch: bool,
    /// Take the listening sockets over from the edgeward running the same configuration file.
    pub upgrade: bool,
}

/// How long a new process waits, after the hand-over, for the old one to let go of the admin
/// port and of the disk tier's folder (which it holds until it exits).
const HANDOVER_PATIENCE: Duration = Duration::from_secs(10);

/// Serves `config` until SIGTERM/SIGINT and the drain that follows (or SIGQUIT, which hands
/// the listeners to a new process first); reloads it on SIGHUP and `POST /config/reload`, and
/// with `watch` whenever it or a file it names changes.
pub fn run(config: Config, options: RunOptions) -> Result<(), ServerError> {
    let watch = options.watch;
    // Pingora binds later and would only log a failure; check now for a clear error. A new
    // process taking over gets the bound sockets instead.
    if !options.upgrade {
        for listener in &config.listeners {
            upgrade::check_bindable(listener.address).map_err(|source| ServerError::Listen {
                address: listener.address,
                source,
            })?;
        }
    }
    let files = ProcessFiles::of(&config.source);
    let access_log = AccessLogger::open(&config.access_log).map_err(ServerError::AccessLog)?;
    let conf = server_conf(&config, &files);
    let addresses: Vec<String> = config
        .listeners
        .iter()
        .map(|l| match (&l.tls, l.redirect_https) {
            (Some(_), _) => format!("https://{}", l.address),
            (None, Some(port)) => {
                format!("http://{} (redirecting to https port {port})", l.address)
            }
            (None, None) => format!("http://{}", l.address),
        })
        .collect();
    let redirects = config
        .listeners
        .iter()
        .filter_map(|l| Some((l.address, l.redirect_https?)))
        .collect();
    // Builds the first generation: compiles the filters, binds builtin origins, opens geo.
    catch_hangups_from_now_on();
    let mut rotation = tls::Rotation::default();
    let (generations, reloader) = Reloader::new(&config, options.watch, rotation.look_now())?;

    // Everything is built: only now is the old process asked to hand its listeners over, so
    // that it serves for as short a time as possible without a successor.
    let opt = if options.upgrade {
        let old = files.ask_old_process(&config.source)?;
        log::info!("taking the listeners over from edgeward (pid {old})");
        Opt {
            upgrade: true,
            ..Opt::default()
        }
    } else {
        Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    // The old process holds the admin port and the disk tier's folder until it lets them go.
    let patience = if options.upgrade {
        HANDOVER_PATIENCE + config.shutdown_timeout
    } else {
        Duration::ZERO
    };
    let cache = match &config.cache {
        Some(settings) => Some(Arc::new(Cache::open(settings, patience)?)),
        None => None,
    };
    let readiness = Arc::new(Readiness {
        draining: Arc::new(AtomicBool::new(false)),
        generations: generations.clone(),
    });
    let admin = match &config.admin {
        Some(admin) => Some(bind_admin(
            admin,
            readiness.clone(),
            generations.clone(),
            cache.clone(),
            patience.min(HANDOVER_PATIENCE),
        )?),
        None => None,
    };
    let edge = Edge::new(
        generations.clone(),
        redirects,
        cache,
        access_log.clone(),
        readiness.draining.clone(),
    );
    let drain = GracefulSignals {
        generations: generations.clone(),
        inflight: edge.inflight(),
        timeout: config.shutdown_timeout,
        readiness,
        access_log,
        admin_closer: admin.as_ref().map(AdminServer::closer),
        files,
    };

    let mut options = HttpServerOptions::default();
    options.h2c = true;
    // An HTTP/2 connection without streams closes after the shortest idle timeout of the
    // listeners (Pingora's option is per service, not per listener).
    options.h2_idle_timeout = config.listeners.iter().map(|l| l.client.idle_timeout).min();
    let mut http = HttpProxy::new(edge, server.configuration.clone());
    http.server_options = Some(options);
    http.handle_init_modules();
    let mut proxy = Service::new(
        "edgeward".to_string(),
        Guarded::new(http, &config.listeners, &mut rotation)?,
    );
    for listener in &config.listeners {
        proxy.add_tcp(&listener.address.to_string());
    }
    server.add_service(proxy);
    server.add_service(background_service("configuration", reloader));
    server.add_service(background_service(
        "upgrade on SIGUSR2",
        SuccessorOnSignal {
            config: config.source.clone(),
            watch,
            program: std::env::current_exe().ok(),
        },
    ));
    if !rotation.is_empty() {
        server.add_service(background_service("tls certificates", rotation));
    }
    if let (Some(admin), Some(settings)) = (admin, &config.admin) {
        log::info!(
            "admin listener on http://{} (/metrics, /healthz, /ready, /config, /config/reload, /cache/purge)",
            settings.address
        );
        server.add_service(background_service("admin", admin));
    }

    log::info!(
        "edgeward serving on {} with {} workers ({})",
        addresses.join(", "),
        config.workers,
        config.source.display()
    );
    // Only a process that starts serving says so: a later `run --upgrade` signals this one,
    // and a service manager learns that it is the service's process now.
    drain.files.write_pid();
    upgrade::notify_service_manager(&format!("READY=1\nMAINPID={}", std::process::id()));
    server.run(RunArgs {
        shutdown_signal: Box::new(drain),
    });
    Ok(())
}

fn server_conf(config: &Config, files: &ProcessFiles) -> ServerConf {
    ServerConf {
        threads: config.workers,
        // A trade (docs/configuration.md): the shared stealing runtime runs the most recently
        // woken task next (tokio's LIFO slot), faster while its data is in cache but unfair
        // under many concurrent streams; a runtime per worker serves its tasks in order.
        work_stealing: config.work_stealing,
        // Pingora sleeps out the whole grace period; GracefulSignals exits as soon as the
        // last request is done, so this is only the upper bound.
        grace_period_seconds: Some(config.shutdown_timeout.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(1),
        // Per configuration file: an upgrade's new process finds the old one's.
        pid_file: files.pid_file.display().to_string(),
        upgrade_sock: files.upgrade_socket.display().to_string(),
        ..ServerConf::default()
    }
}

/// Binds the admin listener; after a hand-over, waits up to `patience` for the old process to
/// let go of its port.
fn bind_admin(
    settings: &crate::config::Admin,
    readiness: Arc<Readiness>,
    generations: Arc<Generations>,
    cache: Option<Arc<Cache>>,
    patience: Duration,
) -> Result<AdminServer, ServerError> {
    let started = std::time::Instant::now();
    loop {
        let bound = AdminServer::bind(
            settings.address,
            readiness.clone(),
            generations.clone(),
            cache.clone(),
            settings.token.clone(),
        );
        match bound {
            Ok(admin) => return Ok(admin),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && started.elapsed() < patience => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(source) => {
                return Err(ServerError::Listen {
                    address: settings.address,
                    source,
                })
            }
        }
    }
}

/// How long Pingora keeps accepting after it handed the listening sockets over, before it
/// stops its listeners (its `CLOSE_TIMEOUT`, which it does not export).
const PINGORA_HANDOVER_CLOSE: Duration = Duration::from_secs(5);

/// SIGTERM and SIGINT both drain: listeners close, in-flight requests finish (up to
/// `timeout`), then the process exits. A second signal exits at once. SIGQUIT first hands the
/// listening sockets (and the admin port) to the new process of `run --upgrade`, then drains.
struct GracefulSignals {
    /// Whose filters' root contexts end before the process exits.
    generations: Arc<Generations>,
    inflight: Arc<AtomicUsize>,
    timeout: Duration,
    readiness: Arc<Readiness>,
    access_log: AccessLogger,
    /// Closes the admin listener, so that the new process can bind its port.
    admin_closer: Option<Arc<tokio::sync::Notify>>,
    files: ProcessFiles,
}

#[async_trait]
impl ShutdownSignalWatch for GracefulSignals {
    async fn recv(&self) -> ShutdownSignal {
        let (mut term, mut int, mut quit) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) {
            (Ok(term), Ok(int), Ok(quit)) => (term, int, quit),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                log::error!("cannot watch for shutdown signals: {e}; stop edgeward with SIGKILL");
                return std::future::pending().await;
            }
        };
        let (name, handover) = tokio::select! {
            _ = term.recv() => ("SIGTERM", false),
            _ = int.recv() => ("SIGINT", false),
            _ = quit.recv() => ("SIGQUIT", true),
        };
        self.readiness.draining.store(true, Ordering::Release);
        if handover {
            if let Some(closer) = &self.admin_closer {
                closer.notify_one();
            }
            log::info!(
                "{name}: handing the listening sockets to the new edgeward, then waiting up to {:?} for {} in-flight requests",
                self.timeout,
                self.inflight.load(Ordering::Acquire)
            );
        } else {
            // Not when handing over: the new process is the service's, and goes on.
            upgrade::notify_service_manager("STOPPING=1");
            log::info!(
                "{name}: no longer accepting connections; waiting up to {:?} for {} in-flight requests",
                self.timeout,
                self.inflight.load(Ordering::Acquire)
            );
        }
        let access_log = self.access_log.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            log::warn!("second signal: exiting without waiting for in-flight requests");
            access_log.flush();
            std::process::exit(1);
        });
        let inflight = self.inflight.clone();
        let access_log = self.access_log.clone();
        let generations = self.generations.clone();
        let files = self.files.clone();
        std::thread::spawn(move || {
            // Let Pingora close the listeners before judging that nothing is left: at once,
            // or after a hand-over, once it stopped accepting beside the new process.
            let listeners_close = if handover {
                PINGORA_HANDOVER_CLOSE
            } else {
                Duration::ZERO
            };
            std::thread::sleep(listeners_close + Duration::from_millis(100));
            while inflight.load(Ordering::Acquire) > 0 {
                std::thread::sleep(Duration::from_millis(20));
            }
            generations.current().filters.end_roots();
            files.remove_pid_if_ours();
            log::info!("all requests finished; exiting");
            access_log.flush();
            std::process::exit(0);
        });
        if handover {
            ShutdownSignal::GracefulUpgrade
        } else {
            ShutdownSignal::GracefulTerminate
        }
    }
}

/// `SIGUSR2` upgrades the binary from inside the service: this process starts its successor
/// (`run --upgrade`, from the path it was started from, where a new binary may be now), which
/// takes the listeners over. Under systemd (`systemctl kill -s USR2 edgeward`) the successor
/// is in the unit's group and tells systemd it is the main process (`MAINPID=`).
struct SuccessorOnSignal {
    config: std::path::PathBuf,
    watch: bool,
    /// This program's path at start (`None` when it cannot be told: then SIGUSR2 says so).
    program: Option<std::path::PathBuf>,
}

#[async_trait]
impl pingora::services::background::BackgroundService for SuccessorOnSignal {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut signals = match signal(SignalKind::user_defined2()) {
            Ok(signals) => signals,
            Err(e) => {
                log::warn!("cannot watch for SIGUSR2 ({e}): upgrade with `run --upgrade`");
                return;
            }
        };
        tokio::select! {
            _ = signals.recv() => {}
            _ = shutdown.changed() => return,
        }
        let Some(program) = &self.program else {
            log::error!("SIGUSR2: this program's path is unknown; upgrade with `run --upgrade`");
            return;
        };
        // One successor: further signals wait for nothing, as this process is on its way out.
        match upgrade::start_successor(program, &self.config, self.watch) {
            Ok(pid) => log::info!(
                "SIGUSR2: started the new edgeward (pid {pid}) from {}; it takes the listeners over",
                program.display()
            ),
            Err(e) => log::error!("SIGUSR2: cannot start {}: {e}", program.display()),
        }
    }
}
