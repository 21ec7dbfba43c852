//! Geolocation: a MaxMind database (country, city or ASN, any `.mmdb`) and the client address
//! to look up, which is the peer, or, behind trusted proxies, the right-most
//! `X-Forwarded-For` entry that is not itself a trusted proxy.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use lru::LruCache;

use ipnet::IpNet;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
#[error("cannot open the geo database {}", path.display())]
pub struct GeoError {
    pub path: std::path::PathBuf,
    #[source]
    pub source: maxminddb::MaxMindDbError,
}

pub struct Geo {
    /// Tells databases apart in the per-thread cache of answers.
    id: u64,
    reader: maxminddb::Reader<Vec<u8>>,
    trusted_proxies: Vec<IpNet>,
}

/// Answers kept per worker thread: clients come back, and a database lookup decodes a record.
const RECENT_PER_THREAD: usize = 4096;

thread_local! {
    static RECENT: RefCell<LruCache<(u64, IpAddr), Arc<GeoInfo>>> =
        RefCell::new(LruCache::new(NonZeroUsize::MIN.saturating_add(RECENT_PER_THREAD - 1)));
}

impl std::fmt::Debug for Geo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Geo")
            .field("database_type", &self.reader.metadata().database_type)
            .field("trusted_proxies", &self.trusted_proxies)
            .finish()
    }
}

/// What the database knows about an address; `None` where it has no answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GeoInfo {
    pub country_code: Option<String>,
    pub continent_code: Option<String>,
    pub region_code: Option<String>,
    pub city: Option<String>,
    pub asn: Option<String>,
    pub as_org: Option<String>,
    pub latitude: Option<String>,
    pub longitude: Option<String>,
}

/// The fields of MaxMind's City, Country and ASN layouts that edgeward exposes.
#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow, default)]
    country: Option<Named<'a>>,
    #[serde(borrow, default)]
    registered_country: Option<Named<'a>>,
    #[serde(borrow, default)]
    continent: Option<Continent<'a>>,
    #[serde(borrow, default)]
    subdivisions: Option<Vec<Named<'a>>>,
    #[serde(borrow, default)]
    city: Option<Named<'a>>,
    #[serde(default)]
    location: Option<Location>,
    #[serde(default)]
    autonomous_system_number: Option<u32>,
    #[serde(borrow, default)]
    autonomous_system_organization: Option<&'a str>,
}

#[derive(Deserialize)]
struct Named<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
    #[serde(borrow, default)]
    names: Option<BTreeMap<&'a str, &'a str>>,
}

#[derive(Deserialize)]
struct Continent<'a> {
    #[serde(borrow, default)]
    code: Option<&'a str>,
}

#[derive(Deserialize)]
struct Location {
    #[serde(default)]
    latitude: Option<f64>,
    #[serde(default)]
    longitude: Option<f64>,
}

impl Geo {
    pub fn open(database: &Path, trusted_proxies: Vec<IpNet>) -> Result<Geo, GeoError> {
        let reader = maxminddb::Reader::open_readfile(database).map_err(|source| GeoError {
            path: database.to_path_buf(),
            source,
        })?;
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Ok(Geo {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            reader,
            trusted_proxies,
        })
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// The client: the peer, unless it is a trusted proxy; then the right-most entry of the
    /// `X-Forwarded-For` values (in header order) that is not trusted. Unparsable entries end
    /// the walk: nothing left of them is believed.
    pub(crate) fn client_address<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl Iterator<Item = &'a str>,
    ) -> IpAddr {
        if !self.trusted(peer) {
            return peer;
        }
        let hops: Vec<&str> = forwarded_for
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            match parse_hop(hop) {
                Some(ip) => {
                    client = ip;
                    if !self.trusted(ip) {
                        break;
                    }
                }
                None => break,
            }
        }
        client
    }

    /// What the database knows about `ip` (answers are kept per thread; the database never
    /// changes while edgeward runs).
    pub(crate) fn lookup(&self, ip: IpAddr) -> Arc<GeoInfo> {
        let key = (self.id, ip);
        if let Some(known) = RECENT.with_borrow_mut(|recent| recent.get(&key).cloned()) {
            return known;
        }
        let info = Arc::new(self.decode(ip));
        RECENT.with_borrow_mut(|recent| recent.put(key, info.clone()));
        info
    }

    fn decode(&self, ip: IpAddr) -> GeoInfo {
        let found = self
            .reader
            .lookup(canonical(ip))
            .and_then(|r| r.decode::<Record<'_>>());
        let record = match found {
            Ok(Some(record)) => record,
            Ok(None) => return GeoInfo::default(),
            Err(e) => {
                log::debug!("geo lookup of {ip} failed: {e}");
                return GeoInfo::default();
            }
        };
        let english = |named: &Named<'_>| {
            named
                .names
                .as_ref()
                .and_then(|n| n.get("en"))
                .map(|s| s.to_string())
        };
        let country = record
            .country
            .as_ref()
            .or(record.registered_country.as_ref());
        GeoInfo {
            country_code: country.and_then(|c| c.iso_code).map(str::to_string),
            continent_code: record.continent.and_then(|c| c.code).map(str::to_string),
            region_code: record
                .subdivisions
                .as_ref()
                .and_then(|s| s.first())
                .and_then(|s| s.iso_code)
                .map(str::to_string),
            city: record.city.as_ref().and_then(english),
            asn: record.autonomous_system_number.map(|n| n.to_string()),
            as_org: record.autonomous_system_organization.map(str::to_string),
            latitude: record
                .location
                .as_ref()
                .and_then(|l| l.latitude)
                .map(|v| v.to_string()),
            longitude: record
                .location
                .as_ref()
                .and_then(|l| l.longitude)
                .map(|v| v.to_string()),
        }
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, how dual-stack sockets report IPv4
/// peers) is the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`192.0.2.1:4711`,
/// `[2001:db8::1]:4711`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(addr) = hop.parse::<std::net::SocketAddr>() {
        return Some(canonical(addr.ip()));
    }
    hop.strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|inner| inner.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo_with(trusted: &[&str]) -> Geo {
        // A database is not needed for address choice; any readable one will do.
        let db = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/geo/demo.mmdb");
        Geo::open(&db, trusted.iter().map(|t| t.parse().unwrap()).collect()).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn answers_are_kept_per_database() {
        let (first, second) = (geo_with(&[]), geo_with(&[]));
        let tokyo = first.lookup(ip("192.0.2.10"));
        assert_eq!(tokyo.country_code.as_deref(), Some("JP"));
        assert!(Arc::ptr_eq(&tokyo, &first.lookup(ip("192.0.2.10"))), "kept");
        let other = second.lookup(ip("192.0.2.10"));
        assert!(
            !Arc::ptr_eq(&tokyo, &other),
            "another database has its own answers"
        );
        assert_eq!(*other, *tokyo);
    }

    #[test]
    fn the_client_is_the_first_untrusted_hop_from_the_right() {
        let geo = geo_with(&["127.0.0.1/32", "10.0.0.0/8"]);
        // An untrusted peer's X-Forwarded-For is not believed.
        assert_eq!(
            geo.client_address(ip("198.51.100.7"), ["192.0.2.1"].into_iter()),
            ip("198.51.100.7")
        );
        // A trusted peer: the right-most untrusted entry, skipping trusted proxies.
        assert_eq!(
            geo.client_address(
                ip("127.0.0.1"),
                ["203.0.113.9, 192.0.2.1", "10.1.2.3"].into_iter()
            ),
            ip("192.0.2.1")
        );
        // Spoofed entries left of the real client are ignored.
        assert_eq!(
            geo.client_address(ip("10.0.0.1"), ["192.0.2.66, 198.51.100.1"].into_iter()),
            ip("198.51.100.1")
        );
        // Only trusted hops: the left-most of them.
        assert_eq!(
            geo.client_address(ip("127.0.0.1"), ["10.9.9.9"].into_iter()),
            ip("10.9.9.9")
        );
        // Garbage stops the walk; ports and brackets are understood; IPv4-mapped peers too.
        assert_eq!(
            geo.client_address(ip("127.0.0.1"), ["192.0.2.1, nonsense"].into_iter()),
            ip("127.0.0.1")
        );
        assert_eq!(
            geo.client_address(ip("127.0.0.1"), ["[2001:db8::1]:80"].into_iter()),
            ip("2001:db8::1")
        );
        assert_eq!(
            geo.client_address(ip("::ffff:127.0.0.1"), ["192.0.2.5:1234"].into_iter()),
            ip("192.0.2.5")
        );
        assert_eq!(
            geo.client_address(ip("127.0.0.1"), std::iter::empty()),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn the_demo_database_answers_for_ipv4_and_ipv6() {
        let geo = geo_with(&[]);
        let tokyo = geo.lookup(ip("192.0.2.10"));
        assert_eq!(tokyo.country_code.as_deref(), Some("JP"));
        assert_eq!(tokyo.continent_code.as_deref(), Some("AS"));
        assert_eq!(tokyo.city.as_deref(), Some("Tokyo"));
        assert_eq!(tokyo.asn.as_deref(), Some("64500"));
        let sydney = geo.lookup(ip("2001:db8:8000::1"));
        assert_eq!(sydney.country_code.as_deref(), Some("AU"));
        assert_eq!(sydney.continent_code.as_deref(), Some("OC"));
        assert_eq!(*geo.lookup(ip("8.8.8.8")), GeoInfo::default());
    }
}
