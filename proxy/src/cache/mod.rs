//! The HTTP cache: storage and policy. Pingora's cache machinery (`pingora-cache`) runs
//! the lookups, the cache lock and revalidation; this module decides what is stored and for how
//! long (`policy`), under which key (`key`), where it lives (`store`), and what the client is
//! told about it (`status`).

mod disk;
mod index;
pub(crate) mod key;
mod meta;
pub(crate) mod policy;
#[cfg(test)]
mod proptests;
mod status;
mod store;

use std::borrow::Cow;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::predictor::Predictor;
use pingora::cache::{CacheMeta, CacheOptionOverrides, HttpCache, NoCacheReason, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};

use crate::config::{CacheSettings, RouteCache};
use crate::metrics;
pub(crate) use key::{cache_key, ObjectUrl};
use policy::{Decision, Defaults};
pub(crate) use status::Outcome;
use store::Store;
pub(crate) use store::{BodyReader, PurgeMode};

/// Uncacheable keys remembered, so their requests skip the cache lock: shards × capacity.
const PREDICTOR_SHARD_CAPACITY: usize = 1024;
/// Response fields that configure this cache, not the client's: removed from what clients get.
const CDN_ONLY_FIELDS: [&str; 3] = ["surrogate-control", "surrogate-key", "cache-tag"];
/// Pingora stores response heads zstd-compressed; a dictionary of typical header lines makes
/// them smaller and faster to read. Stored heads can only be read with the dictionary that
/// wrote them: changing it means a new disk format.
const HEADER_DICTIONARY: &[u8] = b"HTTP/1.1 200 OK\r\nHTTP/1.1 301 Moved Permanently\r\n\
HTTP/1.1 404 Not Found\r\nServer: nginx\r\nDate: Mon, 01 Jan 2026 00:00:00 GMT\r\n\
Content-Type: text/html; charset=utf-8\r\nContent-Type: application/json\r\n\
Content-Type: application/javascript\r\nContent-Type: text/css\r\nContent-Type: image/png\r\n\
Content-Length: 1024\r\nCache-Control: public, max-age=3600\r\nCache-Control: no-cache\r\n\
Cache-Control: private, max-age=0\r\nCDN-Cache-Control: max-age=86400\r\n\
Surrogate-Control: max-age=86400\r\nSurrogate-Key: \r\nExpires: \r\n\
Last-Modified: Mon, 01 Jan 2026 00:00:00 GMT\r\nETag: \"\"\r\nETag: W/\"\"\r\n\
Vary: Accept-Encoding\r\nContent-Encoding: gzip\r\nContent-Encoding: br\r\n\
Accept-Ranges: bytes\r\nAccess-Control-Allow-Origin: *\r\nX-Content-Type-Options: nosniff\r\n\
Strict-Transport-Security: max-age=31536000; includeSubDomains\r\nConnection: keep-alive\r\n";

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Disk(#[from] disk::DiskError),
}

/// The process-wide cache. Pingora wants its parts `'static`; there is one per process.
pub(crate) struct Cache {
    store: &'static Store,
    lock: &'static CacheKeyLockImpl,
    predictor: &'static Predictor<16>,
    lock_timeout: Duration,
    max_object: u64,
    purge_allowed_from: Vec<ipnet::IpNet>,
}

/// What a purge targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PurgeTarget {
    /// Every object fetched for this path (and query), on one host or any.
    Url {
        host: Option<String>,
        path_and_query: String,
    },
    SurrogateKey(String),
}

impl Cache {
    /// Opens the cache; with a disk tier, takes over what its folder holds.
    /// `patience`: how long to wait for another process (the one an upgrade takes over from)
    /// to let go of the disk tier's folder.
    pub(crate) fn open(settings: &CacheSettings, patience: Duration) -> Result<Cache, CacheError> {
        // Only the first call sets it (one cache per process).
        pingora::cache::set_compression_dict_content(Cow::Borrowed(HEADER_DICTIONARY));
        let lock: Box<CacheKeyLockImpl> = CacheLock::new_boxed(settings.lock_timeout);
        let disk = settings.disk.as_ref().map(|d| (d.path.as_path(), d.size));
        let store = Store::open(settings.memory, settings.max_object, disk, patience)?;
        Ok(Cache {
            store,
            lock: Box::leak(lock),
            predictor: Box::leak(Box::new(Predictor::new(
                PREDICTOR_SHARD_CAPACITY,
                Some(per_request_reason),
            ))),
            lock_timeout: settings.lock_timeout,
            max_object: settings.max_object,
            purge_allowed_from: settings.purge_allowed_from.clone(),
        })
    }

    /// Turns the cache on for one request.
    pub(crate) fn enable(&self, http_cache: &mut HttpCache) {
        let mut overrides = CacheOptionOverrides::default();
        overrides.wait_timeout = Some(self.lock_timeout);
        http_cache.enable(
            self.store,
            None,
            Some(self.predictor),
            Some(self.lock),
            Some(overrides),
        );
    }

    pub(crate) fn max_object(&self) -> u64 {
        self.max_object
    }

    /// Whether `client` may send `PURGE` requests.
    pub(crate) fn may_purge(&self, client: Option<IpAddr>) -> bool {
        client.is_some_and(|ip| self.purge_allowed_from.iter().any(|net| net.contains(&ip)))
    }

    /// Removes (or marks stale) what `target` names; `how` labels the metric (`url`,
    /// `surrogate_key`, `method`). Returns how many objects it touched.
    pub(crate) fn purge(&self, target: &PurgeTarget, mode: PurgeMode, how: &str) -> usize {
        let purged = match target {
            PurgeTarget::Url {
                host,
                path_and_query,
            } => self.store.purge_url(host.as_deref(), path_and_query, mode),
            PurgeTarget::SurrogateKey(tag) => self.store.purge_tag(tag, mode),
        };
        metrics::global()
            .cache_purged
            .with_label_values(&[how, mode.as_str()])
            .inc_by(purged as u64);
        purged
    }
}

/// Uncacheable because of this request (not the URL): not remembered for later requests.
fn per_request_reason(reason: &'static str) -> bool {
    reason == policy::SkipReason::Authorization.as_str()
}

/// Why a request skips the cache, if it does: a method the cache does not serve, or the
/// route's bypass rules.
pub(crate) fn bypass_reason(req: &RequestHeader, route: &RouteCache) -> Option<&'static str> {
    if req.method != http::Method::GET && req.method != http::Method::HEAD {
        return Some("method");
    }
    if route
        .bypass_headers
        .iter()
        .any(|name| req.headers.contains_key(name))
    {
        return Some("header");
    }
    if route
        .bypass_cookies
        .iter()
        .any(|name| key::cookie(req, name).is_some())
    {
        return Some("cookie");
    }
    None
}

/// Whether and how `response` to `req` is stored on a route caching like `route`.
pub(crate) fn admission(
    req: &RequestHeader,
    response: &ResponseHeader,
    route: &RouteCache,
    max_object: u64,
) -> RespCacheable {
    let too_large = response
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .is_some_and(|length| length > max_object);
    if too_large {
        return RespCacheable::Uncacheable(NoCacheReason::ResponseTooLarge);
    }
    let defaults = Defaults {
        default_ttl: route.default_ttl,
        stale_while_revalidate: route.stale_while_revalidate,
        stale_if_error: route.stale_if_error,
    };
    let now = SystemTime::now();
    match policy::decide(req, response, &defaults, now) {
        Decision::Store(freshness) => {
            let mut stored = response.clone();
            // One client's cookies are never handed to another.
            stored.remove_header(&http::header::SET_COOKIE);
            let age = policy::age(&response.headers);
            let mut meta = CacheMeta::new(
                now + freshness.fresh_for,
                now,
                secs(freshness.stale_while_revalidate),
                secs(freshness.stale_if_error),
                stored,
            );
            // The `Age` of hits counts from when the response was generated, not received
            // (RFC 9111 §4.2.3): it already was `age` old. Not born before the epoch, though,
            // which a stored meta cannot say (`Age: 2000000000` is 63 years).
            if !age.is_zero() {
                let born = now.checked_sub(age).unwrap_or(UNIX_EPOCH).max(UNIX_EPOCH);
                meta.set_epoch_override(born);
            }
            RespCacheable::Cacheable(meta)
        }
        Decision::Skip(reason) => {
            RespCacheable::Uncacheable(NoCacheReason::Custom(reason.as_str()))
        }
    }
}

fn secs(duration: Duration) -> u32 {
    u32::try_from(duration.as_secs()).unwrap_or(u32::MAX)
}

/// Removes the fields that speak to this cache from a response going to a client.
pub(crate) fn strip_cdn_fields(response: &mut ResponseHeader) {
    crate::fields::remove_fields(response, &CDN_ONLY_FIELDS);
}

/// Whether a stored response's body reader (on a request served from the cache) has handed
/// out its last bytes: the end of the body on paths where Pingora does not say so.
pub(crate) fn body_fully_read(http_cache: &mut HttpCache) -> bool {
    matches!(
        http_cache.phase(),
        pingora::cache::CachePhase::Hit
            | pingora::cache::CachePhase::Stale
            | pingora::cache::CachePhase::StaleUpdating
            | pingora::cache::CachePhase::Revalidated
            | pingora::cache::CachePhase::RevalidatedNoCache(_)
    ) && http_cache
        .hit_handler()
        .as_any()
        .downcast_ref::<BodyReader>()
        .is_some_and(BodyReader::is_done)
}

/// Seconds of freshness left (negative once stale), for `Cache-Status`.
pub(crate) fn ttl(meta: &CacheMeta) -> i64 {
    let now = SystemTime::now();
    match meta.fresh_until().duration_since(now) {
        Ok(left) => i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
        Err(past) => -i64::try_from(past.duration().as_secs()).unwrap_or(i64::MAX),
    }
}
