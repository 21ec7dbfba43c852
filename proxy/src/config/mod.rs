//! The configuration: YAML text → raw serde structs → validated [`Config`] model.
//! Nothing else in edgeward reads YAML; everything reads the model.

mod diagnostic;
mod model;
#[cfg(test)]
pub(crate) mod proptests;
mod raw;
mod summary;
mod units;
mod validate;
mod yaml;

use std::cell::RefCell;
use std::io::Read;
use std::path::{Path, PathBuf};

use diagnostic::Problems;
pub use diagnostic::{Diagnostic, Mark, MAX_SHOWN};
pub use model::*;
use sha2::Digest;
pub use summary::summary;

/// The largest configuration edgeward reads, checked before parsing.
pub const MAX_SIZE: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read the configuration", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The problems found, in file order: the first [`MAX_SHOWN`], and how many more there are.
    #[error("{}", render(path, problems, *more))]
    Invalid {
        path: PathBuf,
        problems: Vec<Diagnostic>,
        more: usize,
    },
}

impl ConfigError {
    /// How many problems were found, shown or not (none for a file that cannot be read).
    pub fn problems_found(&self) -> usize {
        match self {
            ConfigError::Read { .. } => 0,
            ConfigError::Invalid { problems, more, .. } => problems.len() + more,
        }
    }
}

fn render(path: &Path, problems: &[Diagnostic], more: usize) -> String {
    let mut lines: Vec<String> = problems
        .iter()
        .map(|p| match p.mark {
            Some(m) => format!(
                "{}:{}:{}: error: {}",
                path.display(),
                m.line,
                m.col,
                p.message
            ),
            None => format!("{}: error: {}", path.display(), p.message),
        })
        .collect();
    if more > 0 {
        lines.push(format!(
            "{}: note: {more} more problem{} not shown (only the first {MAX_SHOWN} are listed)",
            path.display(),
            if more == 1 { "" } else { "s" }
        ));
    }
    lines.join("\n")
}

fn invalid(path: &Path, problems: Problems) -> ConfigError {
    let (problems, more) = problems.into_parts();
    ConfigError::Invalid {
        path: path.to_path_buf(),
        problems,
        more,
    }
}

fn too_large(path: &Path) -> ConfigError {
    let mut problems = Problems::default();
    problems.error(
        None,
        format!(
            "the configuration is larger than {} MiB, the most edgeward reads",
            MAX_SIZE >> 20
        ),
    );
    invalid(path, problems)
}

/// Reads and validates a configuration file. No more than [`MAX_SIZE`] bytes (and one) are
/// read, whatever the file holds.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let read_error = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_SIZE as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    from_bytes(&bytes, path)
}

/// Validates the bytes of a configuration file: UTF-8 text of at most [`MAX_SIZE`] bytes.
pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Config, ConfigError> {
    if bytes.len() > MAX_SIZE {
        return Err(too_large(path));
    }
    let text = yaml::decode(bytes).map_err(|e| {
        let mut problems = Problems::default();
        problems.error(e.mark, e.message);
        invalid(path, problems)
    })?;
    from_str(text, path)
}

/// Validates configuration text (a leading byte order mark is skipped); `path` names it in
/// messages and anchors relative paths.
pub fn from_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
    if text.len() > MAX_SIZE {
        return Err(too_large(path));
    }
    let node = yaml::parse(text).map_err(|problems| invalid(path, problems))?;
    let unknown_keys = RefCell::new(Problems::default());
    let parsed = yaml::from_node::<raw::RawConfig>(&node, &unknown_keys);
    let mut problems = unknown_keys.into_inner();
    let raw = match parsed {
        Ok(raw) => raw,
        Err(e) => {
            problems.error(e.mark, e.message);
            return Err(invalid(path, problems));
        }
    };
    let base_dir = path.parent().unwrap_or(Path::new("."));
    let mut validator = validate::Validator::new(base_dir);
    let mut config = validator.config(raw, path);
    problems.append(std::mem::take(&mut validator.problems));
    if problems.is_empty() {
        config.source_sha256 = hex::encode(sha2::Sha256::digest(text.as_bytes()));
        Ok(config)
    } else {
        Err(invalid(path, problems))
    }
}

/// Reads YAML text (JSON included) of at most [`MAX_SIZE`] bytes into a JSON value, with the
/// bounds the configuration's own reading has (aliases, nesting): for the files of
/// `edgeward filter test`. `path` names it in messages.
pub fn yaml_value(text: &str, path: &Path) -> Result<serde_json::Value, ConfigError> {
    if text.len() > MAX_SIZE {
        return Err(too_large(path));
    }
    let node = yaml::parse(text).map_err(|problems| invalid(path, problems))?;
    let unknown_keys = RefCell::new(Problems::default());
    yaml::from_node::<serde_json::Value>(&node, &unknown_keys).map_err(|e| {
        let mut problems = Problems::default();
        problems.error(e.mark, e.message);
        invalid(path, problems)
    })
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
    fn node_and_metadata_reach_the_model_and_empty_names_are_refused() {
        let text = format!("{MINIMAL}node: {{id: edge-1, metadata: {{region: eu}}}}\n");
        let config = from_str(&text, Path::new("/tmp/e.yaml")).unwrap();
        assert_eq!(config.node.id, "edge-1");
        assert_eq!(config.node.cluster, "");
        assert_eq!(config.node.metadata["region"], "eu");
        let text = "listeners: [{address: \"127.0.0.1:8080\"}]\nupstreams:\n  u: {builtin: echo, metadata: {acme: {tier: gold}}}\nroutes: [{upstream: u, metadata: {\"\": {a: b}, acme: {\"\": c}}}]\n";
        assert_eq!(
            problems(text),
            vec![
                "4:35: route `route-1`: a metadata namespace is empty",
                "4:54: route `route-1` metadata `acme`: a key is empty",
            ]
        );
    }

    #[test]
    fn filter_origins_name_their_filters_and_may_not_call_themselves() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.wasm"), b"\0asm").unwrap();
        let yaml = |upstreams: &str, filter: &str| {
            format!("listeners: [{{address: \"127.0.0.1:8080\"}}]\nupstreams:\n{upstreams}filters:\n  a: {{module: a.wasm{filter}}}\nroutes: [{{upstream: o}}]\n")
        };
        let load = |text: &str| from_str(text, &dir.path().join("e.yaml"));
        let config = load(&yaml("  o: {builtin: filters, filters: [a]}\n", "")).unwrap();
        assert_eq!(
            config.upstreams[0].origin,
            Origin::Builtin(Builtin::Filters(vec![FilterId(0)]))
        );
        let text = yaml(
            "  o: {builtin: filters, filters: [a, b]}\n  p: {builtin: filters}\n  q: {builtin: echo, filters: [a]}\n",
            ", callouts: [o]",
        );
        let Err(ConfigError::Invalid { problems, .. }) = load(&text) else {
            panic!("{text} was accepted");
        };
        let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            problems,
            vec![
                "3:35: filter `a` may call upstream `o` back (its `callouts`), which it answers itself",
                "3:38: upstream `o` names filter `b`, which is not defined (defined: a)",
                "4:3: upstream `p`: `builtin: filters` needs `filters`, those that answer its requests",
                "5:31: upstream `q`: `filters` belongs to `builtin: filters` only",
            ]
        );
    }

    #[test]
    fn access_log_properties_are_paths_each_listed_once() {
        let text = format!("{MINIMAL}access_log_properties: [ab-test.bucket, my.prop]\n");
        let config = from_str(&text, Path::new("/tmp/e.yaml")).unwrap();
        assert_eq!(
            &*config.access_log_properties,
            ["ab-test.bucket", "my.prop"]
        );
        assert_eq!(
            problems(&format!("{MINIMAL}access_log_properties: [a..b, x, x, 'c d']\n")),
            vec![
                "4:25: `access_log_properties`: `a..b` is not a property path (segments of visible ASCII joined by `.`)",
                "4:34: `access_log_properties`: `x` is listed twice",
                "4:37: `access_log_properties`: `c d` is not a property path (segments of visible ASCII joined by `.`)",
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
        let Origin::Endpoints(endpoints) = &config.upstreams[0].origin else {
            panic!()
        };
        assert_eq!(endpoints[0].addr, "[::1]:9000".parse().unwrap());
        assert_eq!(endpoints[0].host, "::1");
        assert!(endpoints
            .iter()
            .any(|e| e.addr.port() == 9001 && e.host == "localhost"));
        assert!(config.upstreams[0].tls.is_none());
        assert_eq!(config.upstreams[0].protocol, UpstreamProtocol::Http1);
        let bad = problems(
            "listeners: [{address: 127.0.0.1:8080}]\nupstreams: {u: {endpoints: ['http://x:1/api', 'nohost', 'no.such.host.invalid:80', 'ftp://a:1']}}\nroutes: [{upstream: u}]\n",
        );
        assert_eq!(bad.len(), 4, "{bad:?}");
        assert!(bad[0].contains("without path"), "{bad:?}");
        assert!(bad[1].contains("host:port"), "{bad:?}");
        assert!(bad[2].contains("cannot resolve"), "{bad:?}");
        assert!(bad[3].contains("without path"), "{bad:?}");
    }

    #[test]
    fn an_admin_token_is_long_printable_and_given_once() {
        let with = |admin: &str| {
            format!("listeners: [{{address: 127.0.0.1:8080}}]\nadmin: {admin}\nupstreams: {{u: {{endpoints: ['127.0.0.1:9000']}}}}\nroutes: [{{upstream: u}}]\n")
        };
        let config = from_str(&with("{token: ' 0123456789abcdef '}"), Path::new("t.yaml")).unwrap();
        let token = config.admin.unwrap().token.unwrap();
        assert_eq!(token.0, "0123456789abcdef");
        assert!(!format!("{token:?}").contains("0123"));
        let bad = problems(&with("{token: short}"));
        assert!(bad[0].contains("at least 16 characters"), "{bad:?}");
        let bad = problems(&with("{token: 'has spaces in the middle', token_file: t}"));
        assert!(
            bad[0].contains("`token` or `token_file`, not both"),
            "{bad:?}"
        );
        let bad = problems(&with("{token_file: /no/such/token}"));
        assert!(bad[0].contains("cannot read `token_file`"), "{bad:?}");
    }

    #[test]
    fn https_endpoints_speak_verified_tls_and_negotiate_http2() {
        let text = "listeners: [{address: 127.0.0.1:8080}]\nupstreams:\n  s: {endpoints: ['https://127.0.0.1', 'https://[::1]:8443/']}\n  h: {endpoints: ['http://127.0.0.1']}\n  t: {endpoints: ['127.0.0.1:9443'], tls: {sni: Origin.Example.com, verify: false}, http2: false}\n  c: {endpoints: ['127.0.0.1:9000'], http2: true}\nroutes: [{upstream: s}]\n";
        let config = from_str(text, Path::new("t.yaml")).unwrap();
        let [s, h, t, c] = &config.upstreams[..] else {
            panic!()
        };
        let Origin::Endpoints(endpoints) = &s.origin else {
            panic!()
        };
        assert_eq!(endpoints[0].addr, "127.0.0.1:443".parse().unwrap());
        assert_eq!(endpoints[1].addr, "[::1]:8443".parse().unwrap());
        let tls = s.tls.as_ref().unwrap();
        assert!(tls.verify && tls.sni.is_none() && tls.ca.is_none());
        assert_eq!(s.protocol, UpstreamProtocol::Negotiated);
        let Origin::Endpoints(endpoints) = &h.origin else {
            panic!()
        };
        assert_eq!(endpoints[0].addr, "127.0.0.1:80".parse().unwrap());
        assert!(h.tls.is_none());
        let tls = t.tls.as_ref().unwrap();
        assert!(!tls.verify);
        assert_eq!(tls.sni.as_deref(), Some("origin.example.com"));
        assert_eq!(t.protocol, UpstreamProtocol::Http1);
        assert!(c.tls.is_none());
        assert_eq!(c.protocol, UpstreamProtocol::Http2);
    }

    #[test]
    fn origin_tls_mistakes_are_reported_where_they_are() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("junk.pem"), "not pem").unwrap();
        let text = "listeners: [{address: 127.0.0.1:8080}]\nupstreams:\n  a: {endpoints: ['https://127.0.0.1', 'http://127.0.0.2']}\n  b: {endpoints: ['http://127.0.0.1'], tls: {}}\n  c: {endpoints: ['127.0.0.1:1'], tls: {client_cert: x.pem}}\n  d: {endpoints: ['127.0.0.1:1'], tls: {ca: junk.pem, sni: 'a b'}}\n  e: {endpoints: ['127.0.0.1:1'], tls: {ca: missing.pem, verfy: false}}\n  f: {builtin: echo, tls: {}}\nroutes: [{upstream: a}]\n";
        let path = dir.path().join("t.yaml");
        std::fs::write(&path, text).unwrap();
        let error = load(&path).unwrap_err();
        let joined = error.to_string();
        for expected in [
            "3:40: error: the endpoints of upstream `a` mix schemes",
            "4:45: error: upstream `b` has `http://` endpoints and a `tls` section",
            "5:54: error: a client certificate needs both `client_cert`",
            "junk.pem` holds no certificate",
            "6:60: error: `sni` must be a host name or an IP address, found `a b`",
            "7:45: error: tls: cannot read",
            "7:58: error: unknown key `verfy`; did you mean `verify`?",
            "8:27: error: builtin origins are served in cleartext",
        ] {
            assert!(
                joined.contains(expected),
                "missing {expected:?} in:\n{joined}"
            );
        }
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
    fn references_among_many_names_are_looked_up_and_listed_briefly() {
        // 20,000 upstreams and as many routes: each reference is a lookup, not a search of
        // every name, and an undefined one lists the first ten names.
        let n = 20_000;
        let mut text = String::from("listeners: [{address: 127.0.0.1:8080}]\nupstreams:\n");
        for i in 0..n {
            text.push_str(&format!("  u{i}: {{builtin: echo}}\n"));
        }
        text.push_str("routes:\n");
        for i in 0..n {
            text.push_str(&format!("  - {{upstream: u{i}, filters: [f]}}\n"));
        }
        text.push_str("  - {upstream: missing}\n");
        text.push_str("filters: {f: {module: f.wasm, callouts: [u1, nowhere]}}\n");
        let bad = problems(&text);
        assert_eq!(
            bad,
            [
                format!("{}:16: route `route-{}` names upstream `missing`, which is not defined (defined: u0, u1, u2, u3, u4, u5, u6, u7, u8, u9 and 19990 more)", n * 2 + 4, n + 1),
                format!("{}:23: filter `f`: cannot read module `f.wasm`: No such file or directory (os error 2)", n * 2 + 5),
                format!("{}:46: filter `f` names upstream `nowhere`, which is not defined (defined: u0, u1, u2, u3, u4, u5, u6, u7, u8, u9 and 19990 more)", n * 2 + 5),
            ]
        );
    }

    /// A folder with `a.pem`/`a.key` (for `a.test` and `*.a.test`) and `b.key` (another key).
    fn certificate_files() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let names = vec!["a.test".to_string(), "*.a.test".to_string()];
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.path().join("a.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("a.key"), key.serialize_pem()).unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        std::fs::write(dir.path().join("b.key"), other.serialize_pem()).unwrap();
        dir
    }

    #[test]
    fn tls_listeners_load_their_certificates() {
        let dir = certificate_files();
        let text = "listeners:\n  - address: 127.0.0.1:8443\n    tls:\n      certificates:\n        - {cert: a.pem, key: a.key}\n        - {cert: a.pem, key: a.key, hosts: [Api.Example.test, '*.example.test']}\n      default: a.pem\n      min_version: '1.3'\n      alpn: [http/1.1]\n      reload_interval: 250ms\n  - {address: 127.0.0.1:8080, redirect_https: true}\n  - {address: 127.0.0.1:8081, redirect_https: 8443}\n  - {address: 127.0.0.1:8082, redirect_https: false}\nupstreams: {u: {builtin: echo}}\nroutes: [{upstream: u}]\n";
        let config = from_str(text, &dir.path().join("e.yaml")).unwrap();
        let tls = config.listeners[0].tls.as_ref().unwrap();
        assert_eq!(tls.default, TlsDefault::Certificate(0));
        assert_eq!(tls.min_version, TlsVersion::Tls13);
        assert_eq!(tls.alpn, [Alpn::Http11]);
        assert_eq!(tls.reload_interval, Duration::from_millis(250));
        assert_eq!(tls.certificates[0].name, "a.pem");
        let served = |i: usize| -> Vec<String> {
            tls.certificates[i]
                .served
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(served(0), ["a.test", "*.a.test"]);
        assert_eq!(served(1), ["api.example.test", "*.example.test"]);
        let redirects: Vec<Option<u16>> =
            config.listeners.iter().map(|l| l.redirect_https).collect();
        assert_eq!(redirects, [None, Some(443), Some(8443), None]);
        // Defaults: the first certificate, TLS 1.2 and up, h2 then http/1.1, a look at the
        // files every 5 seconds.
        let text = "listeners: [{address: 127.0.0.1:8443, tls: {certificates: [{cert: a.pem, key: a.key}]}}]\nupstreams: {u: {builtin: echo}}\nroutes: [{upstream: u}]\n";
        let config = from_str(text, &dir.path().join("e.yaml")).unwrap();
        let tls = config.listeners[0].tls.as_ref().unwrap();
        assert_eq!(
            (
                tls.default,
                tls.min_version,
                tls.alpn.as_slice(),
                tls.reload_interval
            ),
            (
                TlsDefault::Certificate(0),
                TlsVersion::Tls12,
                [Alpn::H2, Alpn::Http11].as_slice(),
                Duration::from_secs(5)
            )
        );
    }

    #[test]
    fn tls_problems_are_placed() {
        let dir = certificate_files();
        let text = "listeners:\n  - address: 127.0.0.1:8443\n    tls:\n      certificates:\n        - {cert: missing.pem, key: a.key}\n        - {cert: a.pem, key: b.key}\n        - {cert: a.pem, key: a.key, hosts: ['bad host', '']}\n        - {cert: a.pem}\n      default: c.pem\n      min_version: '1.1'\n      alpn: [h2, spdy, h2]\n  - {address: 127.0.0.1:8080, redirect_https: maybe}\n  - {address: 127.0.0.1:8081, redirect_https: true, tls: {certificates: [{cert: a.pem, key: a.key}], reload_interval: 0s}}\n  - {address: 127.0.0.1:8082, tls: {certificates: []}}\n  - {address: 127.0.0.1:8083, tls: {}}\nupstreams: {u: {builtin: echo}}\nroutes: [{upstream: u}]\n";
        let problems = match from_str(text, &dir.path().join("e.yaml")) {
            Err(ConfigError::Invalid { problems, .. }) => problems
                .iter()
                .map(|p| {
                    p.to_string()
                        .replace(&dir.path().display().to_string(), "DIR")
                })
                .collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            problems,
            [
                "5:18: tls: cannot read `DIR/missing.pem`: No such file or directory (os error 2)",
                "6:30: tls: the key in `DIR/b.key` does not belong to the certificate in `DIR/a.pem` (the first certificate of the file must be the server's own, followed by its intermediates)",
                "7:45: `hosts`: `bad host` is not a host name like `api.example.com` or `*.example.com`",
                "7:57: `hosts`: `` is not a host name like `api.example.com` or `*.example.com`",
                "8:11: a certificate needs `cert` (its PEM chain) and `key` (its PEM private key)",
                "9:16: `default` names `c.pem`, which is not the `cert` of one of this listener's certificates (missing.pem, a.pem, a.pem, a.pem); or write `default: reject`",
                "10:20: unknown min_version `1.1`; expected one of: 1.2, 1.3",
                "11:18: unknown alpn protocol `spdy`; expected h2 or http/1.1",
                "11:24: alpn protocol `h2` is listed twice",
                "12:47: `redirect_https` must be true, false or the HTTPS port (1 to 65535), found `maybe`",
                "13:47: `redirect_https` is for plain-HTTP listeners; this one has `tls`",
                "13:119: `reload_interval` must be longer than zero",
                "14:51: `certificates` needs at least one `{cert: FILE, key: FILE}`",
                "15:36: `tls` needs `certificates`: a list of `{cert: FILE, key: FILE}`",
            ]
        );
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
