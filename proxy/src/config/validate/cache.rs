//! Validation of the `cache` section and of routes' `cache` entries.

use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;

use super::super::model::{CacheSettings, DiskCache, KeyPart, RouteCache};
use super::super::raw::{RawCache, RawRouteCache};
use super::super::units::{parse_duration, parse_size};
use super::super::yaml::Located;
use super::Validator;

const DEFAULT_MEMORY: u64 = 256 << 20;
const DEFAULT_MAX_OBJECT: u64 = 64 << 20;
const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);
/// Below this a memory tier holds too little to be worth its bookkeeping.
const MIN_MEMORY: u64 = 1 << 20;

impl Validator<'_> {
    /// The cache settings: `None` when no route caches and there is no `cache` section.
    pub(super) fn cache(
        &mut self,
        raw: Option<&Located<RawCache>>,
        a_route_caches: bool,
    ) -> Option<CacheSettings> {
        if raw.is_none() && !a_route_caches {
            return None;
        }
        let memory = match raw.and_then(|c| c.memory.as_ref()) {
            None => DEFAULT_MEMORY,
            Some(v) => self.size_at_least(v, "memory", MIN_MEMORY, DEFAULT_MEMORY),
        };
        let max_object = match raw.and_then(|c| c.max_object.as_ref()) {
            None => DEFAULT_MAX_OBJECT.min(memory / 2),
            Some(v) => {
                let max_object = self.size_at_least(v, "max_object", 1, DEFAULT_MAX_OBJECT);
                if max_object > memory / 2 {
                    self.error(
                        v.mark,
                        "`max_object` may be at most half of the cache `memory`, so that objects \
                         being fetched always fit",
                    );
                }
                max_object
            }
        };
        let disk = raw.and_then(|c| c.disk.as_ref()).and_then(|disk| {
            let Some(path) = &disk.path else {
                self.error(
                    disk.mark,
                    "`disk` needs a `path` (a folder for cached objects)",
                );
                return None;
            };
            let size = match &disk.size {
                None => {
                    self.error(disk.mark, "`disk` needs a `size`, e.g. `size: 10GiB`");
                    return None;
                }
                Some(size) => self.size_at_least(size, "size", MIN_MEMORY, MIN_MEMORY),
            };
            let path: PathBuf = self.base_dir.join(path.trim());
            Some(DiskCache { path, size })
        });
        let lock_timeout = self.duration(
            &raw.and_then(|c| c.lock_timeout.clone()),
            "lock_timeout",
            DEFAULT_LOCK_TIMEOUT,
        );
        let purge_allowed_from = match raw {
            Some(raw) => self.networks(&raw.purge_allowed_from, "purge_allowed_from"),
            None => Vec::new(),
        };
        Some(CacheSettings {
            memory,
            disk,
            max_object,
            lock_timeout,
            purge_allowed_from,
        })
    }

    /// A route's caching: `None` when it does not cache.
    pub(super) fn route_cache(&mut self, raw: &Located<RawRouteCache>) -> Option<RouteCache> {
        let enabled = raw.enabled.as_ref().is_none_or(|e| e.value);
        let default_ttl = self.route_duration(&raw.default_ttl, "default_ttl");
        let stale_while_revalidate = self
            .route_duration(&raw.stale_while_revalidate, "stale_while_revalidate")
            .unwrap_or_default();
        let stale_if_error = self
            .route_duration(&raw.stale_if_error, "stale_if_error")
            .unwrap_or_default();
        let key = match &raw.key {
            None => vec![KeyPart::Host, KeyPart::Path, KeyPart::Query],
            Some(parts) => {
                if parts.is_empty() {
                    self.error(
                        parts.mark,
                        "`key` needs at least one part, e.g. `[host, path, query]`",
                    );
                }
                parts
                    .iter()
                    .filter_map(|part| self.key_part(part))
                    .collect()
            }
        };
        let (bypass_headers, bypass_cookies) = match &raw.bypass {
            None => (Vec::new(), Vec::new()),
            Some(bypass) => (
                bypass
                    .headers
                    .iter()
                    .filter_map(|h| self.header_name(h, "bypass header"))
                    .collect(),
                bypass
                    .cookies
                    .iter()
                    .map(|c| c.trim().to_string())
                    .collect(),
            ),
        };
        enabled.then_some(RouteCache {
            default_ttl,
            key,
            bypass_headers,
            bypass_cookies,
            stale_while_revalidate,
            stale_if_error,
        })
    }

    fn key_part(&mut self, raw: &Located<String>) -> Option<KeyPart> {
        let text = raw.trim();
        match text {
            "host" => Some(KeyPart::Host),
            "path" => Some(KeyPart::Path),
            "query" => Some(KeyPart::Query),
            _ => {
                if let Some(name) = text.strip_prefix("header:") {
                    let located = Located {
                        mark: raw.mark,
                        value: name.to_string(),
                    };
                    return self
                        .header_name(&located, "key header")
                        .map(KeyPart::Header);
                }
                if let Some(name) = text
                    .strip_prefix("cookie:")
                    .filter(|n| !n.trim().is_empty())
                {
                    return Some(KeyPart::Cookie(name.trim().to_string()));
                }
                self.error(
                    raw.mark,
                    format!(
                        "unknown key part `{text}`; expected host, path, query, header:NAME or \
                         cookie:NAME"
                    ),
                );
                None
            }
        }
    }

    fn header_name(&mut self, raw: &Located<String>, what: &str) -> Option<HeaderName> {
        match HeaderName::from_bytes(raw.trim().as_bytes()) {
            Ok(name) => Some(name),
            Err(_) => {
                self.error(
                    raw.mark,
                    format!("{what} `{}` is not a header name", raw.trim()),
                );
                None
            }
        }
    }

    /// A duration that may be zero (`0s` turns a default off).
    fn route_duration(&mut self, raw: &Option<Located<String>>, key: &str) -> Option<Duration> {
        let raw = raw.as_ref()?;
        match parse_duration(raw) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(raw.mark, format!("`{key}`: {e}"));
                None
            }
        }
    }

    fn size_at_least(&mut self, raw: &Located<String>, key: &str, min: u64, default: u64) -> u64 {
        match parse_size(raw) {
            Ok(n) if n >= min => n,
            Ok(_) => {
                self.error(raw.mark, format!("`{key}` must be at least {min} bytes"));
                default
            }
            Err(e) => {
                self.error(raw.mark, format!("`{key}`: {e}"));
                default
            }
        }
    }
}
