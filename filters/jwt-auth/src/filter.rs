//! The SDK glue: the root context (configuration, JWKS fetches, ticks, settling waiting
//! requests) and the HTTP context (one per request). The decisions are `state`'s.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, Status};

use crate::config::Config;
use crate::extract::find_token;
use crate::header_map::HeaderMap;
use crate::response::{invalid_token, jwks_unavailable, missing_token, LocalResponse};
use crate::state::{Decision, Resolution, Settled, SharedStore, State, MAX_JWKS_BYTES};

/// Shared data of the filter's VM id, through the host.
struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        hostcalls::get_shared_data(key)
            .ok()
            .and_then(|(value, _)| value)
    }

    fn set(&self, key: &str, value: &[u8]) {
        if let Err(status) = hostcalls::set_shared_data(key, Some(value), None) {
            log::warn!("jwt-auth: storing {key} in shared data failed: {status:?}");
        }
    }
}

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|now| now.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// Sends `response` on the effective context.
fn respond(response: &LocalResponse) {
    let headers: Vec<(&str, &str)> = response
        .headers
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect();
    if let Err(status) =
        hostcalls::send_http_response(response.status, headers, Some(response.body.as_bytes()))
    {
        log::warn!("jwt-auth: sending a local response failed: {status:?}");
    }
}

pub struct Root {
    id: u32,
    state: Option<Rc<RefCell<State>>>,
}

impl Root {
    pub fn new(id: u32) -> Root {
        Root { id, state: None }
    }

    /// Starts the fetches that are due. In `on_configure` (`configuring`) a refused dispatch
    /// (the upstream is not in the filter's `callouts`) fails the configuration: returns false.
    fn fetch_due(&self, now: u64, configuring: bool) -> bool {
        let Some(state) = &self.state else {
            return true;
        };
        let (due, settled) = state.borrow_mut().due(now, &HostStore);
        self.settle(settled);
        for p in due {
            let (issuer, upstream) = {
                let state = state.borrow();
                let Some(upstream) = state.upstream(p).cloned() else {
                    continue;
                };
                (state.config.providers[p].issuer.clone(), upstream)
            };
            let headers = vec![
                (":method", "GET"),
                (":path", upstream.path.as_str()),
                (":authority", upstream.authority.as_str()),
                ("accept", "application/json"),
            ];
            match self.dispatch_http_call(
                &upstream.upstream,
                headers,
                None,
                vec![],
                upstream.timeout,
            ) {
                Ok(token) => state.borrow_mut().fetch_started(p, token, now),
                Err(status) => {
                    log::error!(
                        "jwt-auth: cannot fetch the JWKS of {issuer} from upstream `{}`: \
                         {status:?} (the filter's `callouts` must list it)",
                        upstream.upstream
                    );
                    if configuring && status == Status::BadArgument {
                        return false;
                    }
                    let (_, settled) = state.borrow_mut().fetch_failed(p, now, &HostStore);
                    self.settle(settled);
                }
            }
        }
        true
    }

    /// Resumes or answers requests that waited for a JWKS, from the root context.
    fn settle(&self, settled: Settled) {
        if settled.is_empty() {
            return;
        }
        for (context_id, resolution) in settled {
            // A request that went away meanwhile (timed out, client gone) is not live.
            if hostcalls::set_effective_context(context_id).is_err() {
                continue;
            }
            match resolution {
                Resolution::Resume => {
                    if let Err(status) = hostcalls::resume_http_request() {
                        log::warn!("jwt-auth: resuming a request failed: {status:?}");
                    }
                }
                Resolution::Reject(rejection) => respond(&invalid_token(rejection)),
                Resolution::Unavailable => respond(&jwks_unavailable()),
            }
        }
        let _ = hostcalls::set_effective_context(self.id);
    }

    /// The answer of provider `p`'s fetch: the body of a 2xx answer, or why there is none.
    fn fetched_body(&self, num_headers: usize, body_size: usize) -> Result<Vec<u8>, String> {
        if num_headers == 0 {
            return Err("the callout failed".to_owned());
        }
        let status = self
            .get_http_call_response_header(":status")
            .unwrap_or_default();
        if !status.starts_with('2') || status.len() != 3 {
            return Err(format!("status {status}"));
        }
        if body_size > MAX_JWKS_BYTES {
            return Err(format!("a body of {body_size} bytes is too large"));
        }
        Ok(self
            .get_http_call_response_body(0, body_size)
            .unwrap_or_default())
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(state) = self.state.clone() else {
            return;
        };
        let now = now_ms();
        let Some(p) = state.borrow().provider_of_fetch(token_id) else {
            return;
        };
        let (issuer, source) = {
            let state = state.borrow();
            let source = state
                .upstream(p)
                .map(|u| format!("`{}` {}", u.upstream, u.path))
                .unwrap_or_default();
            (state.config.providers[p].issuer.clone(), source)
        };
        let result = self.fetched_body(num_headers, body_size).and_then(|body| {
            state
                .borrow_mut()
                .fetch_succeeded(p, &body, now, &HostStore)
        });
        let settled = match result {
            Ok(fetched) => {
                log::info!(
                    "jwt-auth: fetched the JWKS of {issuer} from {source}: {} keys",
                    fetched.keys
                );
                if !fetched.skipped.is_empty() {
                    log::warn!(
                        "jwt-auth: the JWKS of {issuer} has keys that cannot be used: {}",
                        fetched.skipped.join("; ")
                    );
                }
                fetched.settled
            }
            Err(why) => {
                let (retry, settled) = state.borrow_mut().fetch_failed(p, now, &HostStore);
                let kept = {
                    let state = state.borrow();
                    let provider = &state.providers[p];
                    match (&provider.keys, provider.fetched_at_ms) {
                        (Some(_), Some(at)) => format!(
                            "keeping the keys fetched {} s ago",
                            now.saturating_sub(at) / 1000
                        ),
                        (Some(_), None) => "keeping the keys".to_owned(),
                        (None, _) => {
                            format!("no keys yet: {} waiting requests get 503", settled.len())
                        }
                    }
                };
                log::warn!(
                    "jwt-auth: fetching the JWKS of {issuer} from {source} failed ({why}); \
                     {kept}; next try in {retry:?}"
                );
                settled
            }
        };
        self.settle(settled);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        let config = match Config::parse(&raw) {
            Ok(config) => config,
            Err(err) => {
                log::error!("jwt-auth: invalid configuration: {err}");
                return false;
            }
        };
        let now = now_ms();
        let state = State::new(config, now, &HostStore);
        let tick = state.tick_period();
        self.state = Some(Rc::new(RefCell::new(state)));
        if let Some(tick) = tick {
            self.set_tick_period(tick.max(Duration::from_millis(1)));
        }
        self.fetch_due(now, true)
    }

    fn on_tick(&mut self) {
        if let Some(state) = &self.state {
            state.borrow_mut().ticked = true;
        }
        self.fetch_due(now_ms(), false);
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // A plugin whose configuration failed never gets HTTP contexts.
        let state = Rc::clone(self.state.as_ref()?);
        Some(Box::new(Request {
            state,
            context_id,
            waiting: false,
        }))
    }
}

struct Request {
    state: Rc<RefCell<State>>,
    context_id: u32,
    /// Whether the request is among its provider's waiters.
    waiting: bool,
}

impl Request {
    fn stop_waiting(&mut self) {
        if std::mem::take(&mut self.waiting) {
            if let Ok(mut state) = self.state.try_borrow_mut() {
                state.forget(self.context_id);
            }
        }
    }

    fn set_headers(&self, headers: &[(String, String)]) {
        for (name, value) in headers {
            self.set_http_request_header(name, Some(value));
        }
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        self.stop_waiting();
    }
}

impl Context for Request {
    fn on_done(&mut self) -> bool {
        self.stop_waiting();
        true
    }
}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let header_map = HeaderMap::request();
        let headers = header_map.pairs();
        let (token, allow_missing, spoofed) = {
            let state = self.state.borrow();
            let config = &state.config;
            let spoofed: Vec<String> = config
                .forward_claims
                .iter()
                .map(|(_, header)| header)
                .filter(|header| {
                    headers
                        .iter()
                        .any(|(name, _)| name.eq_ignore_ascii_case(header))
                })
                .cloned()
                .collect();
            (
                find_token(&config.token_from, &headers),
                config.allow_missing,
                spoofed,
            )
        };
        // Only this filter sets these headers, never the client.
        for header in &spoofed {
            self.set_http_request_header(header, None);
        }
        let Some(token) = token else {
            if allow_missing {
                return Action::Continue;
            }
            respond(&missing_token());
            return Action::Pause;
        };
        let decision = self.state.borrow_mut().decide(&token, now_ms(), &HostStore);
        match decision {
            Decision::Accept { headers } => {
                self.set_headers(&headers);
                Action::Continue
            }
            Decision::Reject(rejection) => {
                log::debug!("jwt-auth: token rejected: {}", rejection.reason());
                respond(&invalid_token(rejection));
                Action::Pause
            }
            Decision::Wait { provider, headers } => {
                // Set now, from the unverified claims (the root context cannot write this
                // request's headers): the request reaches the upstream only if the root finds
                // this same token valid once the JWKS is in (see `State::wait`).
                self.set_headers(&headers);
                self.state
                    .borrow_mut()
                    .wait(provider, self.context_id, token);
                self.waiting = true;
                Action::Pause
            }
            Decision::Unavailable => {
                respond(&jwks_unavailable());
                Action::Pause
            }
        }
    }
}
