//! Validation of a listener's `tls` section and of `redirect_https`. The certificates are
//! loaded here, so that a file that cannot be read, parsed or paired with its key is a
//! positioned error of `edgeward validate`, and what was checked is what serves.

use std::collections::HashMap;
use std::time::Duration;

use super::super::model::{Alpn, ListenerTls, TlsCertificate, TlsDefault, TlsVersion};
use super::super::raw::{RawCertificate, RawTls};
use super::super::yaml::{parse_bool, Located};
use super::Validator;
use crate::causes;
use crate::tls::certificate::{unix_now, Certificate, CertificateError, ServedName};

/// The port `redirect_https: true` sends clients to.
const HTTPS_PORT: u16 = 443;
/// How often certificate files are looked at for a rotation: a look is a `stat` of each file.
const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(5);

impl Validator<'_> {
    /// A listener's TLS settings; `None` when they are unusable (the problems are recorded).
    pub(super) fn listener_tls(&mut self, raw: &Located<RawTls>) -> Option<ListenerTls> {
        let listed = match &raw.certificates {
            Some(listed) if !listed.is_empty() => listed,
            Some(listed) => {
                self.error(
                    listed.mark,
                    "`certificates` needs at least one `{cert: FILE, key: FILE}`",
                );
                return None;
            }
            None => {
                self.error(
                    raw.mark,
                    "`tls` needs `certificates`: a list of `{cert: FILE, key: FILE}`",
                );
                return None;
            }
        };
        let mut certificates = Vec::new();
        let mut complete = true;
        for entry in listed.iter() {
            match self.certificate(entry) {
                Some(certificate) => certificates.push(certificate),
                None => complete = false,
            }
        }
        let default = match &raw.default {
            None => TlsDefault::Certificate(0),
            Some(default) if default.trim() == "reject" => TlsDefault::Reject,
            Some(default) => {
                let wanted = default.trim();
                let found = listed.iter().position(|entry| {
                    entry.cert.as_ref().is_some_and(|cert| {
                        cert.trim() == wanted
                            || self.base_dir.join(cert.trim()) == self.base_dir.join(wanted)
                    })
                });
                match found {
                    Some(index) => TlsDefault::Certificate(index),
                    None => {
                        let names: Vec<&str> = listed
                            .iter()
                            .filter_map(|entry| entry.cert.as_ref().map(|c| c.trim()))
                            .collect();
                        self.error(
                            default.mark,
                            format!(
                                "`default` names `{wanted}`, which is not the `cert` of one of \
                                 this listener's certificates ({}); or write `default: reject`",
                                names.join(", ")
                            ),
                        );
                        TlsDefault::Reject
                    }
                }
            }
        };
        let min_version = self.choice(
            &raw.min_version,
            "min_version",
            TlsVersion::Tls12,
            &[("1.2", TlsVersion::Tls12), ("1.3", TlsVersion::Tls13)],
        );
        let alpn = match &raw.alpn {
            None => vec![Alpn::H2, Alpn::Http11],
            Some(protocols) => {
                let mut alpn = Vec::new();
                for protocol in protocols.iter() {
                    let chosen = match protocol.trim() {
                        "h2" => Alpn::H2,
                        "http/1.1" => Alpn::Http11,
                        other => {
                            self.error(
                                protocol.mark,
                                format!("unknown alpn protocol `{other}`; expected h2 or http/1.1"),
                            );
                            continue;
                        }
                    };
                    if alpn.contains(&chosen) {
                        self.error(
                            protocol.mark,
                            format!("alpn protocol `{}` is listed twice", protocol.trim()),
                        );
                    }
                    alpn.push(chosen);
                }
                alpn
            }
        };
        let reload_interval = self.duration(
            &raw.reload_interval,
            "reload_interval",
            DEFAULT_RELOAD_INTERVAL,
        );
        if !complete {
            return None;
        }
        warn_about_names(&certificates, default);
        Some(ListenerTls {
            certificates,
            default,
            min_version,
            alpn,
            reload_interval,
        })
    }

    /// One `{cert, key, hosts}`, loaded; `None` when it cannot serve.
    fn certificate(&mut self, raw: &Located<RawCertificate>) -> Option<TlsCertificate> {
        let (Some(cert), Some(key)) = (&raw.cert, &raw.key) else {
            self.error(
                raw.mark,
                "a certificate needs `cert` (its PEM chain) and `key` (its PEM private key)",
            );
            return None;
        };
        let hosts = raw.hosts.as_ref().map(|hosts| {
            if hosts.is_empty() {
                self.error(
                    hosts.mark,
                    "`hosts` must name at least one host; leave it out to use the certificate's own names",
                );
            }
            hosts
                .iter()
                .filter_map(|host| {
                    let name = ServedName::parse(host);
                    if name.is_none() {
                        self.error(
                            host.mark,
                            format!(
                                "`hosts`: `{}` is not a host name like `api.example.com` or \
                                 `*.example.com`",
                                host.trim()
                            ),
                        );
                    }
                    name
                })
                .collect::<Vec<_>>()
        });
        let cert_path = self.input(cert);
        let key_path = self.input(key);
        let loaded = match Certificate::load(&cert_path, &key_path) {
            Ok(loaded) => loaded,
            Err(e) => {
                self.certificate_error(&e, cert, key);
                return None;
            }
        };
        let name = cert.trim().to_string();
        let now = unix_now();
        if loaded.expired_at(now) {
            log::warn!(
                "certificate `{name}` expired on {}: edgeward serves it, but clients will refuse it",
                loaded.not_after_text
            );
        } else if loaded.not_yet_valid_at(now) {
            log::warn!("certificate `{name}` is not valid yet: clients will refuse it until it is");
        }
        Some(TlsCertificate::new(
            name, cert_path, key_path, hosts, loaded,
        ))
    }

    /// Records why the pair `cert`/`key` cannot be used, at the key that names the file at
    /// fault.
    pub(super) fn certificate_error(
        &mut self,
        e: &CertificateError,
        cert: &Located<String>,
        key: &Located<String>,
    ) {
        let mark = if e.file() == self.base_dir.join(key.trim())
            && e.file() != self.base_dir.join(cert.trim())
        {
            key.mark
        } else {
            cert.mark
        };
        self.error(mark, format!("tls: {}", causes::describe(e)));
    }

    /// `redirect_https`: `true` (port 443), `false`, or the HTTPS port.
    pub(super) fn redirect_https(&mut self, raw: &Located<String>) -> Option<u16> {
        let text = raw.trim();
        match parse_bool(text) {
            Some(true) => return Some(HTTPS_PORT),
            Some(false) => return None,
            None => {}
        }
        match text.parse::<u16>() {
            Ok(port) if port > 0 => Some(port),
            _ => {
                self.error(
                    raw.mark,
                    format!(
                        "`redirect_https` must be true, false or the HTTPS port (1 to 65535), \
                         found `{text}`"
                    ),
                );
                None
            }
        }
    }
}

/// Logs the names two certificates of a listener both serve (the first listed wins) and the
/// certificates that serve no name at all.
fn warn_about_names(certificates: &[TlsCertificate], default: TlsDefault) {
    let mut first: HashMap<&ServedName, &str> = HashMap::new();
    for (index, certificate) in certificates.iter().enumerate() {
        for name in &certificate.served {
            match first.get(name) {
                Some(earlier) if *earlier != certificate.name => log::warn!(
                    "`{name}` is served by both `{earlier}` and `{}`; the first listed is used",
                    certificate.name
                ),
                Some(_) => {}
                None => {
                    first.insert(name, &certificate.name);
                }
            }
        }
        if certificate.served.is_empty() && default != TlsDefault::Certificate(index) {
            log::warn!(
                "certificate `{}` has no DNS names and no `hosts`, and is not the `default`: \
                 no client is served it",
                certificate.name
            );
        }
    }
}
