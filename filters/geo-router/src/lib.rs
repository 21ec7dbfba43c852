//! `geo-router`: geo routing. Picks the upstream of each request from the client's country
//! (or continent), as found by edgeward's geo lookup.
//!
//! Config (required):
//!
//! ```yaml
//! config:
//!   countries: { JP: origin-apac, KR: origin-apac, SG: origin-apac, DE: origin-eu, FR: origin-eu, GB: origin-eu }
//!   continents: { OC: origin-apac }   # optional: fallback by continent
//!   default: origin-us                # optional: without it the route's own upstream is kept
//!   response_header: x-edge-country   # optional: tells the client which country was used
//! ```
//!
//! At least one of `countries`, `continents` and `default` is required. Country codes are two
//! letters (ISO 3166-1 alpha-2, as in MaxMind's `country.iso_code`), continent codes one of
//! `AF AN AS EU NA OC SA`; both are compared case-insensitively. Unknown keys, a code given
//! twice, an empty upstream name or an invalid header name fail the configuration.
//!
//! `on_http_request_headers`: reads the property `geo.country_code` and, only when the country
//! is not listed and `continents` is configured, `geo.continent_code`; picks the upstream of
//! the country, else of the continent, else `default`, and sets it with
//! `proxy_set_property(["route", "upstream"], name)`, which makes edgeward send this request to
//! that upstream instead of the route's. Without geo data (no database, a private address),
//! only `default` applies. When nothing applies the route's upstream is kept. The choice is
//! logged at debug level (`geo-router: country JP -> upstream origin-apac (by country)`;
//! shown with `EDGEWARD_LOG=edgeward::filter=debug`).
//! edgeward accepts only configured upstream names there: if it refuses the name (a typo in
//! the configuration), the filter logs a warning naming it and the request keeps the route's
//! upstream, rather than failing. Returns `Continue`.
//!
//! `on_http_response_headers`: when `response_header` is set, sets that header (replacing any
//! value from the upstream) to the country code used for routing, upper case (`JP`), or to
//! **`unknown` when the request had no country** (no geo data for the client's address).
//! Returns `Continue`.
//!
//! The logic ([`routing`]) is free of the SDK and unit-tested natively (`cargo test` in
//! `filters/`); only the glue below talks to the host.

pub mod routing;

use std::rc::Rc;

use filter_support::host;
use filter_support::root::{Configured, ConfiguredRoot};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

use crate::routing::{country_header_value, normalize_code, Router};

const NAME: &str = "geo-router";

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| ConfiguredRoot::<Router>::boxed());
}}

impl Configured for Router {
    const NAME: &'static str = NAME;

    fn configure(config: Option<&[u8]>) -> Result<Router, String> {
        Router::parse(config)
    }

    fn http_context(router: &Rc<Router>) -> Box<dyn HttpContext> {
        Box::new(GeoRouter {
            router: Rc::clone(router),
            country: None,
        })
    }
}

struct GeoRouter {
    router: Rc<Router>,
    /// The request's country code (upper case), for the response header.
    country: Option<String>,
}

impl Context for GeoRouter {}

impl HttpContext for GeoRouter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let country = normalize_code(filter_support::property(NAME, &["geo", "country_code"]));
        let choice = self.router.choose(country.as_deref(), || {
            normalize_code(filter_support::property(NAME, &["geo", "continent_code"]))
        });
        let shown = country.as_deref().unwrap_or("(none)");
        match choice {
            Some(choice) => match host::set_route_upstream(choice.upstream) {
                Ok(()) => log::debug!(
                    "{NAME}: country {shown} -> upstream {} (by {})",
                    choice.upstream,
                    choice.rule
                ),
                Err(status) => log::warn!(
                    "{NAME}: edgeward refused upstream `{}` (chosen by {} for country {shown}): \
                     {status}; keeping the route's upstream",
                    choice.upstream,
                    choice.rule
                ),
            },
            None => log::debug!(
                "{NAME}: country {shown}: no rule applies, keeping the route's upstream"
            ),
        }
        self.country = country;
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(header) = self.router.response_header() {
            let value = country_header_value(self.country.as_deref());
            self.set_http_response_header(header, Some(value));
        }
        Action::Continue
    }
}
