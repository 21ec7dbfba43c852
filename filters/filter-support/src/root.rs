//! The root context every edgeward filter has: it reads the filter's configuration at
//! `on_configure` into the filter's state (refusing a wrong one with a message `edgeward
//! validate` shows), and gives each request an HTTP context that shares that state.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

use crate::follow_host_log_level;

/// A filter's state, made from its configuration and shared by its requests.
pub trait Configured: Sized + 'static {
    /// The filter's name in its log lines.
    const NAME: &'static str;

    /// The state, or why the configuration is wrong (logged as
    /// `NAME: invalid configuration: <why>`, which refuses the configuration).
    fn configure(config: Option<&[u8]>) -> Result<Self, String>;

    /// A request's HTTP context.
    fn http_context(state: &Rc<Self>) -> Box<dyn HttpContext>;
}

/// The root context of a filter whose state is `T`.
pub struct ConfiguredRoot<T>(Option<Rc<T>>);

impl<T> ConfiguredRoot<T> {
    /// Unconfigured: no request gets a context until `on_configure` succeeded.
    pub fn boxed() -> Box<dyn RootContext>
    where
        T: Configured,
    {
        Box::new(ConfiguredRoot::<T>(None))
    }
}

impl<T> Context for ConfiguredRoot<T> {}

impl<T: Configured> RootContext for ConfiguredRoot<T> {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        follow_host_log_level();
        match T::configure(self.get_plugin_configuration().as_deref()) {
            Ok(state) => {
                self.0 = Some(Rc::new(state));
                true
            }
            Err(why) => {
                log::error!("{}: invalid configuration: {why}", T::NAME);
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Without a valid configuration the host refuses the plugin, so there is always one.
        self.0.as_ref().map(T::http_context)
    }
}
