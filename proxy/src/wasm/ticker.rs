//! `on_tick` for shared instances that asked for it with `proxy_set_tick_period_milliseconds`.
//! Each instance gets a task that ticks for as long as the instance lives and is healthy, so
//! ticks stop when an instance is replaced or the filter goes away.

use std::sync::{Arc, Mutex, Weak};

use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::mpsc;

use super::info::PluginInfo;
use super::instance::Instance;
use crate::sync::lock;

type Watched = (Weak<Mutex<Instance>>, Arc<PluginInfo>);

pub(crate) struct Ticker {
    sender: mpsc::UnboundedSender<Watched>,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<Watched>>>,
}

impl Ticker {
    pub(crate) fn new() -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        Ticker {
            sender,
            receiver: Mutex::new(Some(receiver)),
        }
    }

    /// Starts ticking `instance` (from any thread, also before the server runs).
    pub(crate) fn watch(&self, instance: Weak<Mutex<Instance>>, plugin: Arc<PluginInfo>) {
        // Fails only once the ticker service has stopped, at shutdown.
        let _ = self.sender.send((instance, plugin));
    }
}

#[async_trait::async_trait]
impl BackgroundService for Ticker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut receiver) = self.receiver.lock().ok().and_then(|mut r| r.take()) else {
            return;
        };
        loop {
            tokio::select! {
                watched = receiver.recv() => match watched {
                    Some((instance, plugin)) => { tokio::spawn(tick(instance, plugin)); }
                    None => return,
                },
                _ = shutdown.changed() => return,
            }
        }
    }
}

async fn tick(instance: Weak<Mutex<Instance>>, plugin: Arc<PluginInfo>) {
    loop {
        let period = {
            let Some(instance) = instance.upgrade() else {
                return;
            };
            let guard = lock(&instance);
            match (guard.poisoned(), guard.tick_period()) {
                (None, Some(period)) => period,
                _ => return,
            }
        };
        tokio::time::sleep(period).await;
        let Some(instance) = instance.upgrade() else {
            return;
        };
        let mut guard = lock(&instance);
        if let Err(fault) = guard.tick(plugin.limits.cpu) {
            fault.count(&plugin.name);
            log::error!(
                "filter `{}` {fault} in on_tick; this instance stops ticking",
                plugin.name
            );
            return;
        }
    }
}
