//! Validation of an upstream's endpoints (`host:port`, `http://…`, `https://…`), its `tls`
//! section and its `http2` choice. Names are resolved and TLS files loaded here, so that a
//! bad name or file fails the load, not a request.

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use super::super::model::{Endpoint, OriginTls, UpstreamProtocol};
use super::super::raw::{RawOriginTls, RawUpstream};
use super::super::yaml::Located;
use super::Validator;
use crate::causes;
use crate::tls::certificate::{load_trust_anchors, ClientIdentity, ServedName};

/// What an endpoint's scheme asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    /// `host:port`: TLS when the upstream has a `tls` section.
    Unstated,
    Http,
    Https,
}

/// The endpoints, TLS settings and protocol of one upstream.
pub(super) struct OriginSettings {
    pub(super) endpoints: Vec<Endpoint>,
    pub(super) tls: Option<OriginTls>,
    pub(super) protocol: UpstreamProtocol,
}

impl Validator<'_> {
    pub(super) fn origin(
        &mut self,
        name: &Located<String>,
        raw: &RawUpstream,
        endpoints: &Located<Vec<Located<String>>>,
    ) -> OriginSettings {
        let (endpoints, scheme) = self.endpoints(name, endpoints);
        let tls = match (scheme, &raw.tls) {
            (Scheme::Http, Some(tls)) => {
                self.error(
                    tls.mark,
                    format!(
                        "upstream `{}` has `http://` endpoints and a `tls` section; use \
                         `https://` endpoints (or `host:port` ones) for TLS",
                        name.value
                    ),
                );
                None
            }
            (_, Some(tls)) => Some(self.origin_tls(tls)),
            (Scheme::Https, None) => Some(OriginTls {
                sni: None,
                verify: true,
                ca: None,
                client_identity: None,
            }),
            (Scheme::Http | Scheme::Unstated, None) => None,
        };
        let protocol = match (raw.http2.as_ref().map(|h| h.value), &tls) {
            (Some(true), _) => UpstreamProtocol::Http2,
            (Some(false), _) | (None, None) => UpstreamProtocol::Http1,
            (None, Some(_)) => UpstreamProtocol::Negotiated,
        };
        OriginSettings {
            endpoints,
            tls,
            protocol,
        }
    }

    /// Resolves the entries now; every entry of an upstream must use the same scheme.
    fn endpoints(
        &mut self,
        name: &Located<String>,
        raw: &Located<Vec<Located<String>>>,
    ) -> (Vec<Endpoint>, Scheme) {
        if raw.is_empty() {
            self.error(
                raw.mark,
                format!("upstream `{}` has an empty `endpoints` list", name.value),
            );
        }
        let mut endpoints: Vec<Endpoint> = Vec::new();
        // Every address so far, so that a name resolving to one already listed adds nothing.
        let mut seen = HashSet::new();
        let mut upstream_scheme = None;
        for entry in raw.iter() {
            let Some((scheme, host, port)) = self.endpoint(entry) else {
                continue;
            };
            match upstream_scheme {
                None => upstream_scheme = Some(scheme),
                Some(first) if first != scheme => {
                    self.error(
                        entry.mark,
                        format!(
                            "the endpoints of upstream `{}` mix schemes; each upstream speaks \
                             either HTTPS or cleartext HTTP to all of its endpoints",
                            name.value
                        ),
                    );
                    continue;
                }
                Some(_) => {}
            }
            let addrs: Vec<SocketAddr> = match host.parse::<std::net::IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, port)],
                Err(_) => match (host.as_str(), port).to_socket_addrs() {
                    Ok(resolved) => resolved.collect(),
                    Err(e) => {
                        self.error(
                            entry.mark,
                            format!("cannot resolve endpoint `{}`: {e}", entry.trim()),
                        );
                        continue;
                    }
                },
            };
            for addr in addrs {
                if seen.insert(addr) {
                    endpoints.push(Endpoint {
                        addr,
                        host: host.clone(),
                    });
                }
            }
        }
        (endpoints, upstream_scheme.unwrap_or(Scheme::Unstated))
    }

    /// `host:port`, `http://host[:port]` or `https://host[:port]` (IPv6 in brackets, an
    /// optional trailing `/`): the scheme, the host without brackets, the port.
    fn endpoint(&mut self, entry: &Located<String>) -> Option<(Scheme, String, u16)> {
        let text = entry.trim();
        let (scheme, rest) = if let Some(rest) = text.strip_prefix("https://") {
            (Scheme::Https, rest)
        } else if let Some(rest) = text.strip_prefix("http://") {
            (Scheme::Http, rest)
        } else {
            (Scheme::Unstated, text)
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains("://") || rest.contains(['/', '?', '#', '@']) {
            self.error(
                entry.mark,
                format!(
                    "endpoint must be `host:port`, `http://host[:port]` or `https://host[:port]`, \
                     without path, query or user, found `{text}`"
                ),
            );
            return None;
        }
        let default_port = match scheme {
            Scheme::Https => Some(443),
            Scheme::Http => Some(80),
            Scheme::Unstated => None,
        };
        let (host, port) = match split_host_port(rest) {
            Some((host, Some(port))) => (host, port),
            Some((host, None)) if default_port.is_some() => {
                (host, default_port.unwrap_or_default())
            }
            _ => {
                self.error(
                    entry.mark,
                    format!(
                        "endpoint must be host:port (IPv6 in brackets), or a URL with a scheme, \
                         found `{text}`"
                    ),
                );
                return None;
            }
        };
        Some((scheme, host.to_string(), port))
    }

    fn origin_tls(&mut self, raw: &Located<RawOriginTls>) -> OriginTls {
        let sni = raw.sni.as_ref().and_then(|sni| {
            let text = sni.trim();
            let valid = text.parse::<std::net::IpAddr>().is_ok()
                || matches!(ServedName::parse(text), Some(ServedName::Exact(_)));
            if !valid {
                self.error(
                    sni.mark,
                    format!("`sni` must be a host name or an IP address, found `{text}`"),
                );
            }
            valid.then(|| text.to_ascii_lowercase())
        });
        let verify = raw.verify.as_ref().is_none_or(|v| v.value);
        if !verify {
            log::warn!(
                "line {}: `verify: false` accepts any certificate from this upstream: anyone on \
                 the path to it can read and change its traffic",
                raw.mark.line
            );
        }
        let ca = raw.ca.as_ref().and_then(|ca| {
            let path = self.input(ca);
            match load_trust_anchors(&path) {
                Ok(anchors) => Some(Arc::new(anchors)),
                Err(e) => {
                    self.error(ca.mark, format!("tls: {}", causes::describe(&e)));
                    None
                }
            }
        });
        let client_identity = match (&raw.client_cert, &raw.client_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                let cert_path = self.input(cert);
                let key_path = self.input(key);
                match ClientIdentity::load(&cert_path, &key_path) {
                    Ok(identity) => Some(Arc::new(identity)),
                    Err(e) => {
                        self.certificate_error(&e, cert, key);
                        None
                    }
                }
            }
            (Some(one), None) | (None, Some(one)) => {
                self.error(
                    one.mark,
                    "a client certificate needs both `client_cert` (its PEM chain) and \
                     `client_key` (its PEM private key)",
                );
                None
            }
        };
        OriginTls {
            sni,
            verify,
            ca,
            client_identity,
        }
    }
}

/// `host:port`, `host`, `[v6]:port` or `[v6]`; `None` when malformed.
fn split_host_port(text: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        host.parse::<std::net::Ipv6Addr>().ok()?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':')?)),
        }
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() || (!text.starts_with('[') && host.contains(':')) {
        return None;
    }
    match port {
        None => Some((host, None)),
        Some(port) => match port.parse::<u16>() {
            Ok(port) if port > 0 => Some((host, Some(port))),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::split_host_port;

    #[test]
    fn hosts_and_ports_split_with_ipv6_in_brackets() {
        assert_eq!(
            split_host_port("a.example:8443"),
            Some(("a.example", Some(8443)))
        );
        assert_eq!(split_host_port("a.example"), Some(("a.example", None)));
        assert_eq!(split_host_port("[::1]:9000"), Some(("::1", Some(9000))));
        assert_eq!(split_host_port("[::1]"), Some(("::1", None)));
        for bad in [
            "", ":80", "::1:80", "[::1]80", "[x]:1", "h:0", "h:70000", "h:",
        ] {
            assert_eq!(split_host_port(bad), None, "{bad}");
        }
    }
}
