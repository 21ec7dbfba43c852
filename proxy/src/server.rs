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
use tokio::net::TcpSocket;
use tokio::signal::unix::{signal, SignalKind};

use crate::access_log::AccessLogger;
use crate::admin::{AdminServer, Readiness};
use crate::cache::{Cache, CacheError};
use crate::config::Config;
use crate::connections::Guarded;
use crate::edge::Edge;
use crate::runtime::{BuildError, Generations, Reloader};
use crate::tls::{self, TlsError};

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

/// Binds `address` as Pingora will (with `SO_REUSEADDR`) and lets it go, without listening: a
/// listener there, even for a moment, would accept connections that nobody then serves.
fn check_bindable(address: SocketAddr) -> std::io::Result<()> {
    let socket = match address {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)
}

/// Serves `config` until SIGTERM/SIGINT and the drain that follows; reloads it on SIGHUP and
/// `POST /config/reload`, and with `watch` whenever it or a file it names changes.
pub fn run(config: Config, watch: bool) -> Result<(), ServerError> {
    // Pingora binds later and would only log a failure; check now for a clear error.
    for listener in &config.listeners {
        check_bindable(listener.address).map_err(|source| ServerError::Listen {
            address: listener.address,
            source,
        })?;
    }
    let cache = match &config.cache {
        Some(settings) => Some(Arc::new(Cache::open(settings)?)),
        None => None,
    };
    let access_log = AccessLogger::open(&config.access_log).map_err(ServerError::AccessLog)?;
    let conf = server_conf(&config);
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
    let (generations, reloader) = Reloader::new(&config, watch, rotation.look_now())?;
    let readiness = Arc::new(Readiness {
        draining: AtomicBool::new(false),
        generations: generations.clone(),
    });
    let admin = match &config.admin {
        Some(admin) => Some(
            AdminServer::bind(
                admin.address,
                readiness.clone(),
                generations.clone(),
                cache.clone(),
                admin.token.clone(),
            )
            .map_err(|source| ServerError::Listen {
                address: admin.address,
                source,
            })?,
        ),
        None => None,
    };
    let edge = Edge::new(generations.clone(), redirects, cache, access_log.clone());
    let drain = GracefulSignals {
        generations: generations.clone(),
        inflight: edge.inflight(),
        timeout: config.shutdown_timeout,
        readiness,
        access_log,
    };

    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
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
    server.run(RunArgs {
        shutdown_signal: Box::new(drain),
    });
    Ok(())
}

fn server_conf(config: &Config) -> ServerConf {
    let runtime_dir = std::env::temp_dir();
    let pid = std::process::id();
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
        // Absolute and per process, so that several edgewards never share them.
        pid_file: runtime_dir
            .join(format!("edgeward-{pid}.pid"))
            .display()
            .to_string(),
        upgrade_sock: runtime_dir
            .join(format!("edgeward-{pid}-upgrade.sock"))
            .display()
            .to_string(),
        ..ServerConf::default()
    }
}

/// SIGTERM and SIGINT both drain: listeners close, in-flight requests finish (up to
/// `timeout`), then the process exits. A second signal exits at once.
struct GracefulSignals {
    /// Whose filters' root contexts end before the process exits.
    generations: Arc<Generations>,
    inflight: Arc<AtomicUsize>,
    timeout: Duration,
    readiness: Arc<Readiness>,
    access_log: AccessLogger,
}

#[async_trait]
impl ShutdownSignalWatch for GracefulSignals {
    async fn recv(&self) -> ShutdownSignal {
        let (mut term, mut int) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => (term, int),
            (Err(e), _) | (_, Err(e)) => {
                log::error!("cannot watch for shutdown signals: {e}; stop edgeward with SIGKILL");
                return std::future::pending().await;
            }
        };
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        self.readiness.draining.store(true, Ordering::Release);
        log::info!(
            "{name}: no longer accepting connections; waiting up to {:?} for {} in-flight requests",
            self.timeout,
            self.inflight.load(Ordering::Acquire)
        );
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
        std::thread::spawn(move || {
            // Let Pingora close the listeners before judging that nothing is left.
            std::thread::sleep(Duration::from_millis(100));
            while inflight.load(Ordering::Acquire) > 0 {
                std::thread::sleep(Duration::from_millis(20));
            }
            generations.current().filters.end_roots();
            log::info!("all requests finished; exiting");
            access_log.flush();
            std::process::exit(0);
        });
        ShutdownSignal::GracefulTerminate
    }
}
