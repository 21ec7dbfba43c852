//! A TLS listener's certificates, chosen by the client's SNI: an exact name beats a wildcard
//! (`*.example.com` serves one label in front of `example.com`), and a client whose SNI
//! neither serves, or who sends none, gets the default certificate, or no handshake when the
//! listener rejects them.
//!
//! rustls asks a listener's [`LiveStore`] during each handshake (`ResolvesServerCert`): a
//! lock-free load of its current [`CertificateStore`], then one or two hash lookups, no
//! allocation. A rotation (`tls::rotation`) builds a new store and swaps it in whole; a
//! handshake in flight keeps the store it loaded.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::{ListenerTls, TlsDefault};
use crate::tls::certificate::ServedName;

pub(crate) struct CertificateStore {
    exact: HashMap<Box<str>, Arc<CertifiedKey>>,
    /// By the name after the wildcard's `*.`.
    wildcard: HashMap<Box<str>, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl CertificateStore {
    pub(crate) fn new(tls: &ListenerTls) -> Self {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for certificate in &tls.certificates {
            for name in &certificate.served {
                let (map, name) = match name {
                    ServedName::Exact(name) => (&mut exact, name),
                    ServedName::Wildcard(parent) => (&mut wildcard, parent),
                };
                // The first certificate listed for a name serves it.
                map.entry(Box::from(name.as_str()))
                    .or_insert_with(|| certificate.loaded.key.clone());
            }
        }
        let default = match tls.default {
            TlsDefault::Certificate(index) => tls
                .certificates
                .get(index)
                .map(|certificate| certificate.loaded.key.clone()),
            TlsDefault::Reject => None,
        };
        CertificateStore {
            exact,
            wildcard,
            default,
        }
    }

    /// The certificate for a client that sent `sni` (lower-case, as rustls gives it).
    pub(crate) fn find(&self, sni: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        let Some(sni) = sni else {
            return self.default.as_ref();
        };
        let sni = sni.strip_suffix('.').unwrap_or(sni);
        if let Some(found) = self.exact.get(sni) {
            return Some(found);
        }
        let wildcard = sni
            .split_once('.')
            .filter(|(label, _)| !label.is_empty())
            .and_then(|(_, parent)| self.wildcard.get(parent));
        wildcard.or(self.default.as_ref())
    }
}

impl std::fmt::Debug for CertificateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateStore")
            .field("exact", &self.exact.keys().collect::<Vec<_>>())
            .field("wildcard", &self.wildcard.keys().collect::<Vec<_>>())
            .field("default", &self.default.is_some())
            .finish()
    }
}

/// A listener's certificates as its rustls configuration resolves them: the current store,
/// replaced whole by a rotation.
#[derive(Debug)]
pub(crate) struct LiveStore(ArcSwap<CertificateStore>);

impl LiveStore {
    pub(crate) fn new(store: CertificateStore) -> Self {
        LiveStore(ArcSwap::from_pointee(store))
    }

    /// New handshakes get `store`'s certificates from now on.
    pub(crate) fn replace(&self, store: CertificateStore) {
        self.0.store(Arc::new(store));
    }

    /// The certificate for a client that sent `sni`, from the store current now.
    pub(crate) fn find(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        self.0.load().find(sni).cloned()
    }
}

impl ResolvesServerCert for LiveStore {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.find(client_hello.server_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Alpn, TlsVersion};
    use crate::tls::certificate::testing::certificate;

    fn store(default: TlsDefault) -> (CertificateStore, ListenerTls) {
        let tls = ListenerTls {
            certificates: vec![
                certificate("default", &["default.test"]),
                certificate("api", &["api.example.test"]),
                certificate("wildcard", &["*.example.test", "api.example.test"]),
            ],
            default,
            min_version: TlsVersion::Tls12,
            alpn: vec![Alpn::H2],
            reload_interval: std::time::Duration::from_secs(5),
        };
        (CertificateStore::new(&tls), tls)
    }

    #[test]
    fn exact_names_beat_wildcards_which_beat_the_default() {
        let (store, tls) = store(TlsDefault::Certificate(0));
        let key = |i: usize| Some(tls.certificates[i].loaded.key.cert[0].clone());
        let store = |sni| store.find(sni).map(|k| k.cert[0].clone());
        assert_eq!(store(Some("api.example.test")), key(1));
        assert_eq!(store(Some("api.example.test.")), key(1));
        assert_eq!(store(Some("www.example.test")), key(2));
        // A wildcard covers one label only.
        assert_eq!(store(Some("a.b.example.test")), key(0));
        assert_eq!(store(Some("example.test")), key(0));
        assert_eq!(store(Some(".example.test")), key(0));
        assert_eq!(store(Some("default.test")), key(0));
        assert_eq!(store(Some("elsewhere.test")), key(0));
        assert_eq!(store(None), key(0));
    }

    #[test]
    fn a_rejecting_listener_has_nothing_for_unknown_or_missing_names() {
        let (store, tls) = store(TlsDefault::Reject);
        assert!(store.find(Some("elsewhere.test")).is_none());
        assert!(store.find(None).is_none());
        assert_eq!(
            store.find(Some("www.example.test")).map(|k| &k.cert[0]),
            Some(&tls.certificates[2].loaded.key.cert[0])
        );
    }
}
