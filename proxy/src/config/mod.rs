//! The configuration: YAML text → raw serde structs → validated [`Config`] model.
//! Nothing else in edgeward reads YAML; everything reads the model.

mod diagnostic;
mod model;
mod raw;
mod units;
mod validate;
mod yaml;

use std::cell::RefCell;
use std::path::{Path, PathBuf};

pub use diagnostic::Diagnostic;
pub use model::*;
pub use yaml::Mark;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read the configuration", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Every problem found, in file order.
    #[error("{}", render(path, problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Diagnostic>,
    },
}

fn render(path: &Path, problems: &[Diagnostic]) -> String {
    let mut out = String::new();
    for (i, p) in problems.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        match p.mark {
            Some(m) => out.push_str(&format!(
                "{}:{}:{}: error: {}",
                path.display(),
                m.line,
                m.col,
                p.message
            )),
            None => out.push_str(&format!("{}: error: {}", path.display(), p.message)),
        }
    }
    out
}

/// Reads and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    from_str(&text, path)
}

/// Validates configuration text; `path` names it in messages and anchors relative paths.
pub fn from_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let invalid = |mut problems: Vec<Diagnostic>| {
        problems.sort_by_key(|p| p.mark.map(|m| (m.line, m.col)));
        ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
        }
    };
    let node = yaml::parse(text).map_err(|e| invalid(vec![diagnostic(e)]))?;
    let unknown_keys = RefCell::new(Vec::new());
    let parsed = yaml::from_node::<raw::RawConfig>(&node, &unknown_keys);
    let mut problems: Vec<Diagnostic> = unknown_keys
        .into_inner()
        .into_iter()
        .map(diagnostic)
        .collect();
    let raw = match parsed {
        Ok(raw) => raw,
        Err(e) => {
            problems.push(diagnostic(e));
            return Err(invalid(problems));
        }
    };
    let base_dir = path.parent().unwrap_or(Path::new("."));
    let mut validator = validate::Validator::new(base_dir);
    let config = validator.config(raw, path);
    problems.append(&mut validator.problems);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(invalid(problems))
    }
}

fn diagnostic(e: yaml::YamlError) -> Diagnostic {
    Diagnostic {
        mark: e.mark,
        message: e.message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn problems(text: &str) -> Vec<String> {
        match from_str(text, Path::new("t.yaml")) {
            Ok(_) => Vec::new(),
            Err(ConfigError::Invalid { problems, .. }) => {
                problems.iter().map(ToString::to_string).collect()
            }
            Err(e) => vec![e.to_string()],
        }
    }

    const MINIMAL: &str = "listeners: [{address: 127.0.0.1:8080}]\nupstreams: {u: {endpoints: ['127.0.0.1:9000']}}\nroutes: [{upstream: u}]\n";

    #[test]
    fn defaults_fill_what_is_not_written() {
        let config = from_str(MINIMAL, Path::new("/etc/edgeward/e.yaml")).unwrap();
        let u = &config.upstreams[0];
        assert_eq!(u.balancing, Balancing::RoundRobin);
        assert_eq!(u.connect_timeout, Duration::from_secs(5));
        assert_eq!(u.read_timeout, Duration::from_secs(60));
        assert_eq!(u.retries, 1);
        assert!(u.health_check.is_none());
        assert_eq!(config.access_log, AccessLog::Stdout);
        assert_eq!(config.shutdown_timeout, Duration::from_secs(30));
        assert!(config.workers >= 1);
        assert_eq!(config.routes[0].name, "route-1");
        assert!(config.routes[0].matcher.path.is_none());
    }

    #[test]
    fn client_limits_default_then_top_level_then_per_listener() {
        let config = from_str(MINIMAL, Path::new("t.yaml")).unwrap();
        assert_eq!(config.listeners[0].client, ClientLimits::default());
        let text = "listeners:\n  - {address: 127.0.0.1:8080}\n  - {address: 127.0.0.1:8081, client: {idle_timeout: 5s, max_connections: 7}}\nclient: {header_timeout: 3s, idle_timeout: 20s}\nupstreams: {u: {endpoints: ['127.0.0.1:9000']}}\nroutes: [{upstream: u}]\n";
        let config = from_str(text, Path::new("t.yaml")).unwrap();
        let top = ClientLimits {
            header_timeout: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(20),
            ..ClientLimits::default()
        };
        assert_eq!(config.listeners[0].client, top);
        assert_eq!(
            config.listeners[1].client,
            ClientLimits {
                idle_timeout: Duration::from_secs(5),
                max_connections: 7,
                ..top
            }
        );
        assert_eq!(
            problems(&format!(
                "{MINIMAL}client: {{header_timeout: 0s, body_timeout: soon, max_connections: 0, idle: 1s}}\n"
            )),
            vec![
                "4:26: `header_timeout` must be longer than zero",
                "4:44: `body_timeout`: expected a duration like `500ms`, `2s`, `5m`, `1h` or `7d`, found `soon`",
                "4:67: `max_connections` must be a whole number from 1 to 1000000",
                "4:70: unknown key `idle`; expected one of: header_timeout, idle_timeout, body_timeout, max_connections",
            ]
        );
    }

    #[test]
    fn relative_paths_start_at_the_config_folder() {
        let text = format!("{MINIMAL}access_log: access.log\n");
        let config = from_str(&text, Path::new("/tmp/e.yaml")).unwrap();
        assert_eq!(config.access_log, AccessLog::File("/tmp/access.log".into()));
        assert_eq!(
            problems(&format!("{MINIMAL}access_log: no/such/dir/a.log\n")),
            vec!["4:13: `access_log`: the folder of `no/such/dir/a.log` does not exist"]
        );
    }

    #[test]
    fn endpoints_accept_ipv6_and_hostnames_and_reject_junk() {
        let text = "listeners: [{address: '[::1]:8080'}]\nupstreams: {u: {endpoints: ['[::1]:9000', 'localhost:9001']}}\nroutes: [{upstream: u}]\n";
        let config = from_str(text, Path::new("t.yaml")).unwrap();
        let Origin::Endpoints(addrs) = &config.upstreams[0].origin else {
            panic!()
        };
        assert!(addrs.contains(&"[::1]:9000".parse().unwrap()));
        assert!(addrs.iter().any(|a| a.port() == 9001));
        let bad = problems(
            "listeners: [{address: 127.0.0.1:8080}]\nupstreams: {u: {endpoints: ['http://x:1', 'nohost', 'no.such.host.invalid:80']}}\nroutes: [{upstream: u}]\n",
        );
        assert_eq!(bad.len(), 3, "{bad:?}");
        assert!(bad[0].contains("without scheme"));
        assert!(bad[1].contains("host:port"));
        assert!(bad[2].contains("cannot resolve"));
    }

    #[test]
    fn route_conditions_are_checked() {
        let bad = problems(
            "listeners: [{address: 127.0.0.1:8080}]\nupstreams: {u: {builtin: echo, health_check: {path: /h}}}\nroutes:\n  - {match: {host: 'a.com:80', path: x, path_prefix: /p, methods: ['G T'], headers: {'bad name': v}}, upstream: u, strip_prefix: true}\n  - {upstream: u, strip_prefix: true}\n",
        );
        let joined = bad.join("\n");
        for expected in [
            "builtin origins have no health check",
            "`host` must be a host name",
            "use only one of `path`, `path_prefix` and `path_regex`",
            "is not an HTTP method",
            "is not a valid header name",
            "`strip_prefix` needs a `path_prefix` match",
        ] {
            assert!(
                joined.contains(expected),
                "missing {expected:?} in:\n{joined}"
            );
        }
    }

    #[test]
    fn names_and_numbers_are_checked() {
        let bad = problems(
            "listeners: [{address: 127.0.0.1:8080}, {address: 127.0.0.1:8080}]\nworkers: 0\nupstreams: {'a b': {endpoints: ['127.0.0.1:1'], retries: -1, load_balancing: fastest, connect_timeout: 0s}}\nroutes: [{name: r, upstream: 'a b'}, {name: r, upstream: 'a b'}]\n",
        );
        let joined = bad.join("\n");
        for expected in [
            "is used twice",
            "`workers` must be from 1 to 1024",
            "may only use letters",
            "`retries` must be a whole number",
            "unknown load_balancing `fastest`",
            "`connect_timeout` must be longer than zero",
            "route name `r` is used twice",
        ] {
            assert!(
                joined.contains(expected),
                "missing {expected:?} in:\n{joined}"
            );
        }
    }

    #[test]
    fn caching_routes_get_cache_defaults() {
        let text = "listeners: [{address: 127.0.0.1:8080}]\nupstreams: {u: {endpoints: ['127.0.0.1:9000']}}\nroutes:\n  - {upstream: u, match: {path_prefix: /a/}}\n  - {match: {path_prefix: /s/}, upstream: u, cache: {default_ttl: 1m, key: [host, path, 'header:x-device', 'cookie:tier'], bypass: {headers: [authorization], cookies: [session]}}}\n";
        let config = from_str(text, Path::new("t.yaml")).unwrap();
        let cache = config.cache.as_ref().unwrap();
        assert_eq!((cache.memory, cache.max_object), (256 << 20, 64 << 20));
        let route = config.routes[1].cache.as_ref().unwrap();
        assert_eq!(route.default_ttl, Some(std::time::Duration::from_secs(60)));
        assert_eq!(
            route.key,
            vec![
                KeyPart::Host,
                KeyPart::Path,
                KeyPart::Header(http::HeaderName::from_static("x-device")),
                KeyPart::Cookie("tier".into())
            ]
        );
        assert_eq!(route.bypass_cookies, vec!["session".to_string()]);
        assert!(config.routes[0].cache.is_none());
        // No caching route and no `cache` section: no cache at all.
        assert!(from_str(MINIMAL, Path::new("t.yaml"))
            .unwrap()
            .cache
            .is_none());
    }

    #[test]
    fn cache_settings_are_checked() {
        let bad = problems(
            "listeners: [{address: 127.0.0.1:8080}]\ncache: {memory: 2MiB, max_object: 2MiB, lock_timeout: 0s, disk: {path: /tmp/x}, purge_allowed_from: [everyone]}\nupstreams: {u: {builtin: echo}}\nfilters: {f: {module: nowhere.wasm, response_phase: sideways}}\nroutes: [{upstream: u, cache: {key: [host, 'header:bad name', colour], default_ttl: soon, stale_if_error: -1s}}]\n",
        );
        let joined = bad.join("\n");
        for expected in [
            "`max_object` may be at most half of the cache `memory`",
            "`lock_timeout` must be longer than zero",
            "`disk` needs a `size`",
            "`purge_allowed_from`: `everyone` is not an address",
            "unknown response_phase `sideways`",
            "key header `bad name` is not a header name",
            "unknown key part `colour`",
            "`default_ttl`: expected a duration",
            "`stale_if_error`: expected a duration",
        ] {
            assert!(
                joined.contains(expected),
                "missing {expected:?} in:\n{joined}"
            );
        }
    }
}
