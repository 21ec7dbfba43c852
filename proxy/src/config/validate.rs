//! Raw structs → model. Every problem is collected with its position; the model is returned
//! only when there are none.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};

use super::diagnostic::{Mark, Problems};
use super::model::*;
use super::raw::*;
use super::units::{parse_duration, parse_size};
use super::yaml::Located;

mod cache;
mod metadata;
mod origin;
mod tls;

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_RETRIES: u32 = 1;
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_FILTER_LIMITS: FilterLimits = FilterLimits {
    memory: 128 << 20,
    cpu: Duration::from_millis(50),
    body: 1 << 20,
};
/// wasm32 linear memory cannot be larger than 4 GiB.
const MAX_FILTER_MEMORY: u64 = 4 << 30;
const DEFAULT_MAX_INSTANCES: u32 = 1000;

pub(super) struct Validator<'a> {
    base_dir: &'a Path,
    pub(super) problems: Problems,
    /// Every file the configuration reads (modules, certificates, databases), for `--watch`.
    inputs: Vec<PathBuf>,
}

impl<'a> Validator<'a> {
    pub(super) fn new(base_dir: &'a Path) -> Self {
        Validator {
            base_dir,
            problems: Problems::default(),
            inputs: Vec::new(),
        }
    }

    /// The path of a file the configuration names as written (relative to its folder),
    /// remembered as one of its inputs.
    fn input(&mut self, written: &str) -> PathBuf {
        let path = self.base_dir.join(written.trim());
        if !self.inputs.contains(&path) {
            self.inputs.push(path.clone());
        }
        path
    }

    fn error(&mut self, mark: Mark, message: impl Into<String>) {
        self.problems
            .error((mark.line > 0).then_some(mark), message);
    }

    /// `None` when the value is bad (the problem is recorded); the default when absent.
    fn duration(
        &mut self,
        value: &Option<Located<String>>,
        key: &str,
        default: Duration,
    ) -> Duration {
        let Some(value) = value else { return default };
        match parse_duration(value) {
            Ok(d) if d.is_zero() => {
                self.error(value.mark, format!("`{key}` must be longer than zero"));
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.error(value.mark, format!("`{key}`: {e}"));
                default
            }
        }
    }

    /// One of a fixed set of words; `default` when absent or wrong.
    fn choice<T: Copy>(
        &mut self,
        value: &Option<Located<String>>,
        key: &str,
        default: T,
        choices: &[(&str, T)],
    ) -> T {
        let Some(value) = value else { return default };
        match choices.iter().find(|(word, _)| *word == value.trim()) {
            Some((_, chosen)) => *chosen,
            None => {
                let words: Vec<&str> = choices.iter().map(|(word, _)| *word).collect();
                self.error(
                    value.mark,
                    format!(
                        "unknown {key} `{}`; expected one of: {}",
                        value.trim(),
                        words.join(", ")
                    ),
                );
                default
            }
        }
    }

    fn number<T: std::str::FromStr>(
        &mut self,
        value: &Located<String>,
        key: &str,
        what: &str,
    ) -> Option<T> {
        match value.trim().parse() {
            Ok(n) => Some(n),
            Err(_) => {
                self.error(
                    value.mark,
                    format!("`{key}` must be {what}, found `{}`", value.value),
                );
                None
            }
        }
    }

    pub(super) fn config(&mut self, raw: RawConfig, source: &Path) -> Config {
        let client = self.client(raw.client.as_ref(), ClientLimits::default());
        let listeners = self.listeners(&raw.listeners, client);
        let workers = match &raw.workers {
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            Some(w) => match self.number::<usize>(w, "workers", "a whole number from 1 to 1024") {
                Some(n @ 1..=1024) => n,
                Some(_) => {
                    self.error(w.mark, "`workers` must be from 1 to 1024");
                    1
                }
                None => 1,
            },
        };
        let access_log = match raw.access_log.as_ref().map(|v| (v.mark, v.value.trim())) {
            None | Some((_, "stdout")) => AccessLog::Stdout,
            Some((_, "stderr")) => AccessLog::Stderr,
            Some((_, "off")) => AccessLog::Off,
            Some((mark, "")) => {
                self.error(
                    mark,
                    "`access_log` must be stdout, stderr, off or a file path",
                );
                AccessLog::Off
            }
            Some((mark, path)) => {
                let path = self.base_dir.join(path);
                if !path.parent().is_some_and(Path::is_dir) {
                    self.error(
                        mark,
                        format!(
                            "`access_log`: the folder of `{}` does not exist",
                            path.display()
                        ),
                    );
                }
                AccessLog::File(path)
            }
        };
        let access_log_properties = self.access_log_properties(raw.access_log_properties.as_ref());
        let shutdown_timeout = self.duration(
            &raw.shutdown_timeout,
            "shutdown_timeout",
            DEFAULT_SHUTDOWN_TIMEOUT,
        );
        let mut upstreams = self.upstreams(&raw.upstreams);
        let filters = self.filters(&raw.filters, &upstreams);
        self.filter_origins(&raw.upstreams, &mut upstreams, &filters);
        let admin = raw.admin.as_ref().map(|a| self.admin(a, &listeners));
        let geo = raw.geo.as_ref().and_then(|g| self.geo(g));
        let routes = self.routes(&raw.routes, &upstreams, &filters);
        let a_route_caches = routes.iter().any(|r| r.cache.is_some());
        let cache = self.cache(raw.cache.as_ref(), a_route_caches);
        let wasm = self.wasm(raw.wasm.as_ref());
        let node = Arc::new(self.node(raw.node.as_ref()));
        let mut inputs = vec![source.to_path_buf()];
        inputs.append(&mut self.inputs);
        Config {
            source: source.to_path_buf(),
            source_sha256: String::new(),
            inputs,
            listeners,
            workers,
            work_stealing: raw.work_stealing.as_deref().copied().unwrap_or(true),
            access_log,
            access_log_properties,
            shutdown_timeout,
            upstreams,
            routes,
            filters,
            wasm,
            admin,
            geo,
            cache,
            node,
        }
    }

    fn geo(&mut self, raw: &Located<RawGeo>) -> Option<GeoSettings> {
        let Some(database) = &raw.database else {
            self.error(raw.mark, "`geo` needs a `database` (a MaxMind .mmdb file)");
            return None;
        };
        let path = self.input(database);
        if let Err(e) = std::fs::File::open(&path) {
            self.error(
                database.mark,
                format!("geo: cannot read database `{}`: {e}", path.display()),
            );
        }
        let trusted_proxies = self.networks(&raw.trusted_proxies, "trusted_proxies");
        Some(GeoSettings {
            database: path,
            trusted_proxies,
        })
    }

    /// Addresses or CIDR ranges (`10.0.0.0/8`, `::1`); a bad one is reported and skipped.
    fn networks(&mut self, raw: &[Located<String>], key: &str) -> Vec<ipnet::IpNet> {
        let mut networks = Vec::new();
        for network in raw {
            let text = network.trim();
            let parsed = text
                .parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(net) => networks.push(net),
                Err(_) => self.error(
                    network.mark,
                    format!("`{key}`: `{text}` is not an address or CIDR range like 10.0.0.0/8"),
                ),
            }
        }
        networks
    }

    fn admin(&mut self, raw: &Located<RawAdmin>, listeners: &[Listener]) -> Admin {
        let default: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 9901));
        let address = match &raw.address {
            None => default,
            Some(address) => match address.parse::<SocketAddr>() {
                Ok(addr) if listeners.iter().any(|l| l.address == addr) => {
                    self.error(
                        address.mark,
                        "the admin listener must not share an address with a proxy listener",
                    );
                    addr
                }
                Ok(addr) => addr,
                Err(_) => {
                    self.error(
                        address.mark,
                        format!("admin address must be IP:port, found `{}`", address.value),
                    );
                    default
                }
            },
        };
        let token = match (&raw.token, &raw.token_file) {
            (Some(_), Some(file)) => {
                self.error(file.mark, "give `token` or `token_file`, not both");
                None
            }
            (Some(token), None) => self.admin_token(token.trim(), token.mark),
            (None, Some(file)) => {
                let path = self.input(file);
                match std::fs::read_to_string(&path) {
                    Ok(text) => self.admin_token(text.trim(), file.mark),
                    Err(e) => {
                        self.error(
                            file.mark,
                            format!("cannot read `token_file` {}: {e}", path.display()),
                        );
                        None
                    }
                }
            }
            (None, None) => None,
        };
        if !address.ip().is_loopback() {
            let mutating = if token.is_some() {
                "reloads and purges need the token"
            } else {
                "reloads and purges are refused to other hosts (set `admin.token` to allow them)"
            };
            log::warn!(
                "the admin listener on {address} is reachable from other hosts: anyone there can read its metrics; {mutating}"
            );
        }
        Admin { address, token }
    }

    /// A usable admin token: long enough not to be guessed, and fit for a header.
    fn admin_token(&mut self, token: &str, mark: Mark) -> Option<AdminToken> {
        if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
            self.error(
                mark,
                "the admin token must be at least 16 characters, printable ASCII without spaces",
            );
            return None;
        }
        Some(AdminToken(token.to_string()))
    }

    fn wasm(&mut self, raw: Option<&Located<RawWasm>>) -> WasmSettings {
        let module_cache = match raw.and_then(|w| w.module_cache.as_ref()) {
            Some(path) if path.trim() == "off" => None,
            Some(path) => Some(match path.trim().strip_prefix("~/") {
                Some(rest) => match std::env::var_os("HOME") {
                    Some(home) => PathBuf::from(home).join(rest),
                    None => {
                        self.error(
                            path.mark,
                            "`module_cache` starts with `~/` but HOME is not set",
                        );
                        PathBuf::from(rest)
                    }
                },
                None => self.base_dir.join(path.trim()),
            }),
            None => default_module_cache(),
        };
        let max_instances = match raw.and_then(|w| w.max_instances.as_ref()) {
            None => DEFAULT_MAX_INSTANCES,
            Some(n) => {
                match self.number::<u32>(n, "max_instances", "a whole number from 1 to 100000") {
                    Some(n @ 1..=100_000) => n,
                    Some(_) => {
                        self.error(n.mark, "`max_instances` must be from 1 to 100000");
                        DEFAULT_MAX_INSTANCES
                    }
                    None => DEFAULT_MAX_INSTANCES,
                }
            }
        };
        WasmSettings {
            module_cache,
            max_instances,
            perf_map: raw
                .and_then(|w| w.perf_map.as_deref().copied())
                .unwrap_or(false),
        }
    }

    /// The filters of each `builtin: filters` upstream, by name: at least one, each defined,
    /// once, and none that may call this upstream back (it would call itself).
    fn filter_origins(
        &mut self,
        raw: &Located<Named<RawUpstream>>,
        upstreams: &mut [Upstream],
        filters: &[Filter],
    ) {
        let known = Names::new(filters.iter().map(|f| f.name.as_str()));
        for (index, ((name, raw), upstream)) in raw.0.iter().zip(upstreams.iter_mut()).enumerate() {
            let Origin::Builtin(Builtin::Filters(chain)) = &mut upstream.origin else {
                continue;
            };
            let Some(wanted) = &raw.filters else {
                self.error(
                    name.mark,
                    format!(
                        "upstream `{}`: `builtin: filters` needs `filters`, those that answer its requests",
                        name.value
                    ),
                );
                continue;
            };
            if wanted.value.is_empty() {
                self.error(
                    wanted.mark,
                    format!("upstream `{}`: `filters` is empty", name.value),
                );
            }
            let owner = format!("upstream `{}`", name.value);
            for filter in &wanted.value {
                let Some(id) = self
                    .reference(filter, &owner, "filter", &known)
                    .map(FilterId)
                else {
                    continue;
                };
                if chain.contains(&id) {
                    self.error(
                        filter.mark,
                        format!("filter `{}` appears twice in {owner}", filter.value),
                    );
                } else if filters
                    .get(id.0)
                    .is_some_and(|f| f.callouts.contains(&UpstreamId(index)))
                {
                    self.error(
                        filter.mark,
                        format!(
                            "filter `{}` may call {owner} back (its `callouts`), which it answers itself",
                            filter.value
                        ),
                    );
                } else {
                    chain.push(id);
                }
            }
        }
    }

    fn filters(&mut self, raw: &Named<Located<RawFilter>>, upstreams: &[Upstream]) -> Vec<Filter> {
        let upstreams = Names::new(upstreams.iter().map(|u| u.name.as_str()));
        raw.0
            .iter()
            .map(|(name, filter)| self.filter(name, filter, &upstreams))
            .collect()
    }

    fn filter(
        &mut self,
        name: &Located<String>,
        raw: &Located<RawFilter>,
        upstreams: &Names,
    ) -> Filter {
        self.check_name(name, "filter");
        let module = match &raw.module {
            None => {
                self.error(
                    raw.mark,
                    format!("filter `{}` needs a `module` (a .wasm file)", name.value),
                );
                PathBuf::new()
            }
            Some(module) => {
                let path = self.input(module);
                if let Err(e) = std::fs::File::open(&path)
                    .and_then(|f| f.metadata())
                    .and_then(|m| {
                        if m.is_file() {
                            Ok(())
                        } else {
                            Err(std::io::Error::other("not a file"))
                        }
                    })
                {
                    self.error(
                        module.mark,
                        format!(
                            "filter `{}`: cannot read module `{}`: {e}",
                            name.value,
                            path.display()
                        ),
                    );
                }
                path
            }
        };
        let isolation = self.choice(
            &raw.isolation,
            "isolation",
            Isolation::Shared,
            &[
                ("shared", Isolation::Shared),
                ("request", Isolation::Request),
            ],
        );
        let on_error = self.choice(
            &raw.on_error,
            "on_error",
            FailurePolicy::FailClosed,
            &[
                ("fail_closed", FailurePolicy::FailClosed),
                ("fail_open", FailurePolicy::FailOpen),
            ],
        );
        let response_phase = self.choice(
            &raw.response_phase,
            "response_phase",
            ResponsePhase::AfterCache,
            &[
                ("after_cache", ResponsePhase::AfterCache),
                ("before_cache", ResponsePhase::BeforeCache),
            ],
        );
        let limits = match &raw.limits {
            None => DEFAULT_FILTER_LIMITS,
            Some(limits) => self.filter_limits(limits),
        };
        let vm_id = match &raw.vm_id {
            Some(vm_id) => vm_id.trim().to_string(),
            None => module
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        let callouts = {
            let owner = format!("filter `{}`", name.value);
            raw.callouts
                .iter()
                .flatten()
                .filter_map(|wanted| {
                    self.reference(wanted, &owner, "upstream", upstreams)
                        .map(UpstreamId)
                })
                .collect()
        };
        Filter {
            name: name.value.clone(),
            module,
            config: plugin_bytes(raw.config.as_ref().map(|c| &c.value)),
            vm_config: plugin_bytes(raw.vm_config.as_ref().map(|c| &c.value)),
            at: Some(name.mark),
            config_at: raw.config.as_ref().map(|c| c.mark),
            vm_config_at: raw.vm_config.as_ref().map(|c| c.mark),
            root_id: raw
                .root_id
                .as_ref()
                .map(|r| r.value.clone())
                .unwrap_or_default(),
            isolation,
            limits,
            on_error,
            vm_id,
            callouts,
            response_phase,
        }
    }

    fn filter_limits(&mut self, raw: &Located<RawLimits>) -> FilterLimits {
        let mut size =
            |value: &Option<Located<String>>, key: &str, default: u64, max: u64| match value {
                None => default,
                Some(v) => match parse_size(v) {
                    Ok(n) if n >= 1 && n <= max => n,
                    Ok(_) => {
                        self.error(
                            v.mark,
                            format!("`{key}` must be between 1 byte and {} MiB", max >> 20),
                        );
                        default
                    }
                    Err(e) => {
                        self.error(v.mark, format!("`{key}`: {e}"));
                        default
                    }
                },
            };
        let memory = size(
            &raw.memory,
            "memory",
            DEFAULT_FILTER_LIMITS.memory,
            MAX_FILTER_MEMORY,
        );
        let body = size(&raw.body, "body", DEFAULT_FILTER_LIMITS.body, 1 << 40);
        if memory < 1 << 20 {
            if let Some(m) = &raw.memory {
                self.error(m.mark, "`memory` must be at least 1MiB");
            }
        }
        FilterLimits {
            memory,
            cpu: self.duration(&raw.cpu, "cpu", DEFAULT_FILTER_LIMITS.cpu),
            body,
        }
    }

    /// The position of `wanted` among the `defined` names of a `kind`, or an error from `owner`.
    fn reference(
        &mut self,
        wanted: &Located<String>,
        owner: &str,
        kind: &str,
        defined: &Names,
    ) -> Option<usize> {
        let found = defined.position(&wanted.value);
        if found.is_none() {
            self.error(
                wanted.mark,
                format!(
                    "{owner} names {kind} `{}`, which is not defined (defined: {})",
                    wanted.value,
                    defined.listed()
                ),
            );
        }
        found
    }

    fn check_name(&mut self, name: &Located<String>, what: &str) {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            self.error(
                name.mark,
                format!(
                    "{what} name `{}` may only use letters, digits, `-`, `_` and `.`",
                    name.value
                ),
            );
        }
    }

    /// `client:` settings over `base` (the defaults, or the top level's for a listener).
    fn client(&mut self, raw: Option<&Located<RawClient>>, base: ClientLimits) -> ClientLimits {
        let Some(raw) = raw else { return base };
        let max_connections = match &raw.max_connections {
            None => base.max_connections,
            Some(value) => {
                let what = "a whole number from 1 to 1000000";
                match self.number::<usize>(value, "max_connections", what) {
                    Some(n @ 1..=1_000_000) => n,
                    Some(_) => {
                        self.error(value.mark, format!("`max_connections` must be {what}"));
                        base.max_connections
                    }
                    None => base.max_connections,
                }
            }
        };
        ClientLimits {
            header_timeout: self.duration(
                &raw.header_timeout,
                "header_timeout",
                base.header_timeout,
            ),
            idle_timeout: self.duration(&raw.idle_timeout, "idle_timeout", base.idle_timeout),
            body_timeout: self.duration(&raw.body_timeout, "body_timeout", base.body_timeout),
            max_connections,
        }
    }

    fn listeners(
        &mut self,
        raw: &Located<Vec<RawListener>>,
        client: ClientLimits,
    ) -> Vec<Listener> {
        if raw.is_empty() {
            self.error(
                raw.mark,
                "at least one listener is required, e.g. `listeners: [{address: 127.0.0.1:8080}]`",
            );
        }
        let mut seen = HashSet::new();
        let mut listeners = Vec::new();
        for listener in raw.iter() {
            let Some(address) = &listener.address else {
                self.error(
                    raw.mark,
                    "every listener needs an `address`, e.g. `127.0.0.1:8080`",
                );
                continue;
            };
            match address.parse::<SocketAddr>() {
                Ok(addr) if !seen.insert(addr) => {
                    self.error(address.mark, format!("listener address {addr} is used twice"))
                }
                Ok(addr) => {
                    let tls = listener.tls.as_ref().and_then(|tls| self.listener_tls(tls));
                    let redirect_https = listener.redirect_https.as_ref().and_then(|redirect| {
                        let port = self.redirect_https(redirect);
                        if port.is_some() && listener.tls.is_some() {
                            self.error(
                                redirect.mark,
                                "`redirect_https` is for plain-HTTP listeners; this one has `tls`",
                            );
                        }
                        port
                    });
                    listeners.push(Listener {
                        address: addr,
                        client: self.client(listener.client.as_ref(), client),
                        tls,
                        redirect_https,
                    })
                }
                Err(_) => self.error(
                    address.mark,
                    format!(
                        "listener address must be IP:port (IPv6 in brackets, e.g. [::1]:8080), found `{}`",
                        address.value
                    ),
                ),
            }
        }
        listeners
    }

    fn upstreams(&mut self, raw: &Located<Named<RawUpstream>>) -> Vec<Upstream> {
        if raw.0.is_empty() {
            self.error(
                raw.mark,
                "at least one upstream is required under `upstreams`",
            );
        }
        raw.0
            .iter()
            .map(|(name, upstream)| self.upstream(name, upstream))
            .collect()
    }

    fn upstream(&mut self, name: &Located<String>, raw: &RawUpstream) -> Upstream {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            self.error(
                name.mark,
                format!(
                    "upstream name `{}` may only use letters, digits, `-`, `_` and `.`",
                    name.value
                ),
            );
        }
        let mut tls = None;
        let mut protocol = UpstreamProtocol::Http1;
        let origin = match (&raw.endpoints, &raw.builtin) {
            (Some(_), Some(builtin)) => {
                self.error(
                    builtin.mark,
                    format!(
                        "upstream `{}` has both `endpoints` and `builtin`; choose one",
                        name.value
                    ),
                );
                Origin::Endpoints(Vec::new())
            }
            (None, None) => {
                self.error(
                    name.mark,
                    format!("upstream `{}` needs `endpoints` or `builtin`", name.value),
                );
                Origin::Endpoints(Vec::new())
            }
            (Some(endpoints), None) => {
                let settings = self.origin(name, raw, endpoints);
                tls = settings.tls;
                protocol = settings.protocol;
                Origin::Endpoints(settings.endpoints)
            }
            (None, Some(builtin)) => match builtin.trim() {
                "echo" => Origin::Builtin(Builtin::Echo),
                // Its filters are known once they are validated: see `filter_origins`.
                "filters" => Origin::Builtin(Builtin::Filters(Vec::new())),
                other => {
                    self.error(
                        builtin.mark,
                        format!("unknown builtin origin `{other}`; available: echo, filters"),
                    );
                    Origin::Builtin(Builtin::Echo)
                }
            },
        };
        if let (Some(filters), false) = (
            &raw.filters,
            matches!(origin, Origin::Builtin(Builtin::Filters(_))),
        ) {
            self.error(
                filters.mark,
                format!(
                    "upstream `{}`: `filters` belongs to `builtin: filters` only",
                    name.value
                ),
            );
        }
        let balancing = self.choice(
            &raw.load_balancing,
            "load_balancing",
            Balancing::RoundRobin,
            &[
                ("round_robin", Balancing::RoundRobin),
                ("random", Balancing::Random),
                ("consistent_hash", Balancing::ConsistentHash),
            ],
        );
        let retries = match &raw.retries {
            None => DEFAULT_RETRIES,
            Some(r) => self
                .number(r, "retries", "a whole number")
                .unwrap_or(DEFAULT_RETRIES),
        };
        let health_check = raw.health_check.as_ref().map(|hc| {
            if matches!(origin, Origin::Builtin(_)) {
                self.error(hc.mark, "builtin origins have no health check");
            }
            self.health_check(hc)
        });
        if let (Origin::Builtin(_), Some(raw_tls)) = (&origin, &raw.tls) {
            self.error(
                raw_tls.mark,
                "builtin origins are served in cleartext; remove `tls`",
            );
        }
        Upstream {
            name: name.value.clone(),
            origin,
            balancing,
            connect_timeout: self.duration(
                &raw.connect_timeout,
                "connect_timeout",
                DEFAULT_CONNECT_TIMEOUT,
            ),
            read_timeout: self.duration(&raw.read_timeout, "read_timeout", DEFAULT_READ_TIMEOUT),
            write_timeout: self.duration(
                &raw.write_timeout,
                "write_timeout",
                DEFAULT_WRITE_TIMEOUT,
            ),
            idle_timeout: self.duration(&raw.idle_timeout, "idle_timeout", DEFAULT_IDLE_TIMEOUT),
            retries,
            health_check,
            tls,
            metadata: self.metadata(raw.metadata.as_ref(), &format!("upstream `{}`", name.value)),
            protocol,
        }
    }

    fn health_check(&mut self, raw: &Located<RawHealthCheck>) -> HealthCheck {
        let path = match &raw.path {
            Some(p) if p.starts_with('/') => p.value.clone(),
            Some(p) => {
                self.error(
                    p.mark,
                    format!("health check path must start with `/`, found `{}`", p.value),
                );
                "/".to_string()
            }
            None => "/".to_string(),
        };
        let mut threshold = |value: &Option<Located<String>>, key: &str| match value {
            None => 1,
            Some(v) => match self.number::<usize>(v, key, "a whole number of at least 1") {
                Some(n) if n >= 1 => n,
                Some(_) => {
                    self.error(v.mark, format!("`{key}` must be at least 1"));
                    1
                }
                None => 1,
            },
        };
        let healthy_threshold = threshold(&raw.healthy_threshold, "healthy_threshold");
        let unhealthy_threshold = threshold(&raw.unhealthy_threshold, "unhealthy_threshold");
        HealthCheck {
            path,
            interval: self.duration(&raw.interval, "interval", DEFAULT_HEALTH_INTERVAL),
            timeout: self.duration(&raw.timeout, "timeout", DEFAULT_HEALTH_TIMEOUT),
            host: raw.host.as_ref().and_then(|h| {
                let valid = !h.trim().is_empty() && HeaderValue::from_str(h.trim()).is_ok();
                if !valid {
                    self.error(
                        h.mark,
                        format!("health check `host` is not a valid host: `{}`", h.value),
                    );
                }
                valid.then(|| h.trim().to_string())
            }),
            healthy_threshold,
            unhealthy_threshold,
        }
    }

    fn routes(
        &mut self,
        raw: &Located<Vec<Located<RawRoute>>>,
        upstreams: &[Upstream],
        filters: &[Filter],
    ) -> Vec<Route> {
        if raw.is_empty() {
            self.error(raw.mark, "at least one route is required under `routes`");
        }
        let mut names = HashSet::new();
        let mut routes = Vec::new();
        let known_upstreams = Names::new(upstreams.iter().map(|u| u.name.as_str()));
        let known_filters = Names::new(filters.iter().map(|f| f.name.as_str()));
        for (index, route) in raw.iter().enumerate() {
            let name = match &route.name {
                Some(name) => {
                    if !names.insert(name.value.clone()) {
                        self.error(
                            name.mark,
                            format!("route name `{}` is used twice", name.value),
                        );
                    }
                    name.value.clone()
                }
                None => format!("route-{}", index + 1),
            };
            if let Some(route) = self.route(route, name, &known_upstreams, &known_filters) {
                routes.push(route);
            }
        }
        routes
    }

    fn route(
        &mut self,
        raw: &Located<RawRoute>,
        name: String,
        upstreams: &Names,
        filters: &Names,
    ) -> Option<Route> {
        let matcher = match &raw.matcher {
            Some(m) => self.route_match(m),
            None => RouteMatch::default(),
        };
        let upstream = match &raw.upstream {
            None => {
                self.error(raw.mark, format!("route `{name}` needs an `upstream`"));
                None
            }
            Some(wanted) => self
                .reference(wanted, &format!("route `{name}`"), "upstream", upstreams)
                .map(UpstreamId),
        };
        let strip_prefix = match (&raw.strip_prefix, &matcher.path) {
            (Some(strip), Some(PathPattern::Prefix(prefix))) if strip.value => Some(prefix.clone()),
            (Some(strip), _) if strip.value => {
                self.error(strip.mark, "`strip_prefix` needs a `path_prefix` match");
                None
            }
            _ => None,
        };
        let host_rewrite =
            raw.host_rewrite
                .as_ref()
                .and_then(|h| match HeaderValue::from_str(h.trim()) {
                    Ok(v) if !h.trim().is_empty() => Some(v),
                    _ => {
                        self.error(
                            h.mark,
                            format!("`host_rewrite` is not a valid host: `{}`", h.value),
                        );
                        None
                    }
                });
        let mut chain = Vec::new();
        let mut in_chain = HashSet::new();
        for wanted in raw.filters.iter().flat_map(|f| f.iter()) {
            match self
                .reference(wanted, &format!("route `{name}`"), "filter", filters)
                .map(FilterId)
            {
                Some(id) if !in_chain.insert(id) => {
                    self.error(
                        wanted.mark,
                        format!("filter `{}` appears twice in route `{name}`", wanted.value),
                    );
                }
                Some(id) => chain.push(id),
                None => {}
            }
        }
        let timeout = self.duration(&raw.timeout, "timeout", DEFAULT_ROUTE_TIMEOUT);
        let cache = raw.cache.as_ref().and_then(|c| self.route_cache(c));
        let metadata = self.metadata(raw.metadata.as_ref(), &format!("route `{name}`"));
        Some(Route {
            name,
            matcher,
            upstream: upstream?,
            strip_prefix,
            host_rewrite,
            filters: chain,
            timeout,
            cache,
            metadata,
        })
    }

    fn route_match(&mut self, raw: &Located<RawMatch>) -> RouteMatch {
        let host = raw.host.as_ref().and_then(|h| self.host_pattern(h));
        let paths: Vec<&Located<String>> = [&raw.path, &raw.path_prefix, &raw.path_regex]
            .into_iter()
            .flatten()
            .collect();
        if paths.len() > 1 {
            self.error(
                paths[1].mark,
                "use only one of `path`, `path_prefix` and `path_regex`",
            );
        }
        let path = if let Some(p) = &raw.path_prefix {
            self.path_literal(p, "path_prefix").map(PathPattern::Prefix)
        } else if let Some(p) = &raw.path {
            self.path_literal(p, "path").map(PathPattern::Exact)
        } else if let Some(p) = &raw.path_regex {
            // Anchored so that the whole path must match, as in Envoy.
            match regex::Regex::new(&format!("^(?:{})$", p.value)) {
                Ok(re) => Some(PathPattern::Regex(re)),
                Err(e) => {
                    let reason = e.to_string();
                    let reason = reason.lines().last().unwrap_or("invalid").trim();
                    let reason = reason.strip_prefix("error: ").unwrap_or(reason);
                    self.error(p.mark, format!("`path_regex` does not compile: {reason}"));
                    None
                }
            }
        } else {
            None
        };
        let mut methods = Vec::new();
        for m in raw.methods.iter().flatten() {
            let upper = m.trim().to_ascii_uppercase();
            match Method::from_bytes(upper.as_bytes()) {
                Ok(method) if !upper.is_empty() => methods.push(method),
                _ => self.error(m.mark, format!("`{}` is not an HTTP method", m.value)),
            }
        }
        let mut headers = Vec::new();
        for (name, value) in &raw.headers.0 {
            let header_name = HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes());
            let header_value = HeaderValue::from_str(&value.value);
            match (header_name, header_value) {
                (Ok(n), Ok(v)) => headers.push((n, v)),
                (Err(_), _) => self.error(
                    name.mark,
                    format!("`{}` is not a valid header name", name.value),
                ),
                (_, Err(_)) => self.error(
                    value.mark,
                    format!("header value `{}` is not valid", value.value),
                ),
            }
        }
        RouteMatch {
            host,
            path,
            methods,
            headers,
        }
    }

    fn host_pattern(&mut self, raw: &Located<String>) -> Option<HostPattern> {
        let host = raw.trim().to_ascii_lowercase();
        let (pattern, name) = match host.strip_prefix("*.") {
            Some(rest) => (HostPattern::Suffix(format!(".{rest}")), rest),
            None => (HostPattern::Exact(host.clone()), host.as_str()),
        };
        let valid = !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if valid {
            Some(pattern)
        } else {
            self.error(
                raw.mark,
                format!("`host` must be a host name like `api.example.com` or `*.example.com` (no port), found `{}`", raw.value),
            );
            None
        }
    }

    fn path_literal(&mut self, raw: &Located<String>, key: &str) -> Option<String> {
        if raw.starts_with('/') {
            Some(raw.value.clone())
        } else {
            self.error(
                raw.mark,
                format!("`{key}` must start with `/`, found `{}`", raw.value),
            );
            None
        }
    }
}

/// The names defined of one kind (upstreams, filters), looked up in constant time.
struct Names<'n> {
    /// Each name with its position (the first, were one defined twice).
    positions: HashMap<&'n str, usize>,
    in_order: Vec<&'n str>,
}

impl<'n> Names<'n> {
    /// How many names an error lists; the others are counted.
    const LISTED: usize = 10;

    fn new(names: impl Iterator<Item = &'n str>) -> Self {
        let in_order: Vec<&str> = names.collect();
        let mut positions = HashMap::with_capacity(in_order.len());
        for (i, name) in in_order.iter().enumerate() {
            positions.entry(*name).or_insert(i);
        }
        Names {
            positions,
            in_order,
        }
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.positions.get(name).copied()
    }

    /// `a, b, c`; `none`; or the first few and how many more.
    fn listed(&self) -> String {
        if self.in_order.is_empty() {
            return "none".to_string();
        }
        let shown: Vec<&str> = self.in_order.iter().take(Self::LISTED).copied().collect();
        match self.in_order.len() - shown.len() {
            0 => shown.join(", "),
            more => format!("{} and {more} more", shown.join(", ")),
        }
    }
}

/// The bytes a filter receives for `config`/`vm_config`: a plain string as itself, anything
/// else as JSON text, nothing as empty.
fn plugin_bytes(value: Option<&serde_json::Value>) -> Vec<u8> {
    match value {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::String(s)) => s.clone().into_bytes(),
        Some(other) => other.to_string().into_bytes(),
    }
}

/// `$XDG_CACHE_HOME/edgeward/modules`, else `~/.cache/edgeward/modules`; none without a home.
fn default_module_cache() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })?;
    Some(base.join("edgeward").join("modules"))
}
