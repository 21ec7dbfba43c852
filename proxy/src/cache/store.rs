//! Where cached objects live: a memory tier bounded in bytes (least recently used objects make
//! room), indexed by URL and surrogate key for purges. Implements Pingora's `Storage`, so the
//! proxy's cache machinery (lookups, the cache lock, revalidation) drives it.
//!
//! Objects are stored whole: a response becomes visible once its last byte arrived (Pingora
//! then feeds the client straight from the origin, and the cache lock holds concurrent misses
//! until the object is complete). Bytes of responses still arriving are reserved in the
//! memory budget as they come, so the tier never holds more than its limit.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use lru::LruCache;
use pingora::cache::key::{CacheHashKey, CompactCacheKey, HashBinary};
use pingora::cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta, Storage};
use pingora::{Error, ErrorType, Result};

use super::key::ObjectUrl;
use crate::metrics;

/// An object's identity: the hash of its key, variance included.
pub type ObjectId = HashBinary;

/// Bookkeeping per object beyond its bytes (index entries, LRU links, allocations).
const OBJECT_OVERHEAD: u64 = 256;
/// More surrogate keys than this on one response are ignored.
const MAX_SURROGATE_KEYS: usize = 256;

/// What a purge does to the objects it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeMode {
    /// Remove them.
    Hard,
    /// Mark them stale: the next request revalidates (and may be served stale meanwhile).
    Soft,
}

impl PurgeMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PurgeMode::Hard => "hard",
            PurgeMode::Soft => "soft",
        }
    }
}

pub struct Store {
    state: Mutex<State>,
    memory_limit: u64,
    max_object: u64,
}

struct State {
    objects: HashMap<ObjectId, Object>,
    /// Least recently used first out.
    lru: LruCache<ObjectId, ()>,
    /// Bytes charged for stored objects.
    stored: u64,
    /// Bytes reserved by responses still arriving.
    reserved: u64,
    by_primary: HashMap<HashBinary, Vec<ObjectId>>,
    by_path: HashMap<String, Vec<ObjectId>>,
    by_tag: HashMap<String, Vec<ObjectId>>,
}

struct Object {
    primary: HashBinary,
    url: ObjectUrl,
    tags: Vec<String>,
    meta: SerializedMeta,
    body: Bytes,
    charge: u64,
}

/// `CacheMeta` is not `Clone`; each hit deserializes its own copy.
#[derive(Clone)]
struct SerializedMeta {
    internal: Arc<[u8]>,
    header: Arc<[u8]>,
}

impl SerializedMeta {
    fn of(meta: &CacheMeta) -> Result<Self> {
        let (internal, header) = meta.serialize()?;
        Ok(SerializedMeta {
            internal: internal.into(),
            header: header.into(),
        })
    }

    fn meta(&self) -> Result<CacheMeta> {
        CacheMeta::deserialize(&self.internal, &self.header)
    }

    fn len(&self) -> u64 {
        (self.internal.len() + self.header.len()) as u64
    }
}

impl Store {
    pub fn new(memory_limit: u64, max_object: u64) -> Store {
        Store {
            state: Mutex::new(State {
                objects: HashMap::new(),
                lru: LruCache::unbounded(),
                stored: 0,
                reserved: 0,
                by_primary: HashMap::new(),
                by_path: HashMap::new(),
                by_tag: HashMap::new(),
            }),
            memory_limit,
            max_object,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is consistent between statements; a panic elsewhere cannot break it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves `bytes` of the memory budget, evicting least recently used objects as needed;
    /// false (nothing reserved) when even evicting everything would not make room.
    fn reserve(&self, bytes: u64) -> bool {
        let mut state = self.state();
        while state.stored + state.reserved + bytes > self.memory_limit {
            if !state.evict_one() {
                return false;
            }
        }
        state.reserved += bytes;
        true
    }

    fn release(&self, bytes: u64) {
        let mut state = self.state();
        state.reserved = state.reserved.saturating_sub(bytes);
    }

    /// Purges every object fetched for `path_and_query`, on `host` or (None) any host.
    pub fn purge_url(&self, host: Option<&str>, path_and_query: &str, mode: PurgeMode) -> usize {
        let mut state = self.state();
        let ids: Vec<ObjectId> = state
            .by_path
            .get(path_and_query)
            .into_iter()
            .flatten()
            .filter(|id| {
                host.is_none_or(|host| {
                    state
                        .objects
                        .get(*id)
                        .is_some_and(|o| o.url.host.eq_ignore_ascii_case(host))
                })
            })
            .copied()
            .collect();
        state.purge(&ids, mode)
    }

    /// Purges every object tagged with surrogate key `tag`.
    pub fn purge_tag(&self, tag: &str, mode: PurgeMode) -> usize {
        let mut state = self.state();
        let ids = state.by_tag.get(tag).cloned().unwrap_or_default();
        state.purge(&ids, mode)
    }

    fn commit(&self, fill: &mut Fill) {
        let body = match fill.parts.len() {
            1 => fill.parts.pop().unwrap_or_default(),
            _ => {
                let mut joined = Vec::with_capacity(fill.len as usize);
                for part in fill.parts.drain(..) {
                    joined.extend_from_slice(&part);
                }
                Bytes::from(joined)
            }
        };
        let object = Object {
            primary: fill.primary,
            url: std::mem::take(&mut fill.url),
            tags: std::mem::take(&mut fill.tags),
            meta: fill.meta.clone(),
            charge: fill.reserved,
            body,
        };
        let mut state = self.state();
        state.remove(&fill.id);
        state.reserved = state.reserved.saturating_sub(fill.reserved);
        fill.reserved = 0;
        state.insert(fill.id, object);
        metrics::global().cache_stores.inc();
        state.report();
    }
}

impl State {
    fn insert(&mut self, id: ObjectId, object: Object) {
        self.stored += object.charge;
        self.by_primary.entry(object.primary).or_default().push(id);
        self.by_path
            .entry(object.url.path_and_query.clone())
            .or_default()
            .push(id);
        for tag in &object.tags {
            self.by_tag.entry(tag.clone()).or_default().push(id);
        }
        self.lru.push(id, ());
        self.objects.insert(id, object);
    }

    fn remove(&mut self, id: &ObjectId) -> Option<Object> {
        let object = self.objects.remove(id)?;
        self.lru.pop(id);
        self.stored = self.stored.saturating_sub(object.charge);
        unindex(&mut self.by_primary, &object.primary, id);
        unindex(&mut self.by_path, &object.url.path_and_query, id);
        for tag in &object.tags {
            unindex(&mut self.by_tag, tag, id);
        }
        Some(object)
    }

    /// Drops the least recently used object; false when there is none.
    fn evict_one(&mut self) -> bool {
        let Some((id, ())) = self.lru.pop_lru() else {
            return false;
        };
        self.remove(&id);
        metrics::global()
            .cache_evictions
            .with_label_values(&["memory"])
            .inc();
        self.report();
        true
    }

    fn purge(&mut self, ids: &[ObjectId], mode: PurgeMode) -> usize {
        let mut purged = 0;
        for id in ids {
            let done = match mode {
                PurgeMode::Hard => self.remove(id).is_some(),
                PurgeMode::Soft => self.expire(id),
            };
            purged += usize::from(done);
        }
        self.report();
        purged
    }

    /// Marks an object stale as of now, keeping its stale-serving windows.
    fn expire(&mut self, id: &ObjectId) -> bool {
        let Some(object) = self.objects.get_mut(id) else {
            return false;
        };
        let expired = object.meta.meta().and_then(|mut meta| {
            meta.expire_at(SystemTime::now());
            SerializedMeta::of(&meta)
        });
        match expired {
            Ok(meta) => {
                object.meta = meta;
                true
            }
            Err(e) => {
                log::warn!("cache: cannot mark an object stale ({e}); removing it instead");
                self.remove(id).is_some()
            }
        }
    }

    fn report(&self) {
        let metrics = metrics::global();
        metrics
            .cache_bytes
            .with_label_values(&["memory"])
            .set(i64::try_from(self.stored).unwrap_or(i64::MAX));
        metrics
            .cache_objects
            .with_label_values(&["memory"])
            .set(i64::try_from(self.objects.len()).unwrap_or(i64::MAX));
    }
}

fn unindex<K: std::hash::Hash + Eq>(index: &mut HashMap<K, Vec<ObjectId>>, key: &K, id: &ObjectId) {
    if let Some(ids) = index.get_mut(key) {
        ids.retain(|other| other != id);
        if ids.is_empty() {
            index.remove(key);
        }
    }
}

/// Surrogate keys the origin tagged a response with: `Surrogate-Key: a b c` (Fastly) and
/// `Cache-Tag: a,b,c` (Cloudflare).
fn surrogate_keys(meta: &CacheMeta) -> Vec<String> {
    let headers = meta.headers();
    let spaced = headers
        .get_all("surrogate-key")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(str::split_ascii_whitespace);
    let commas = headers
        .get_all("cache-tag")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim);
    let mut keys: Vec<String> = spaced
        .chain(commas)
        .filter(|k| !k.is_empty())
        .take(MAX_SURROGATE_KEYS)
        .map(str::to_string)
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

fn storage_error(context: &'static str, detail: impl Into<String>) -> Box<Error> {
    Error::explain(ErrorType::Custom(context), detail.into())
}

#[async_trait]
impl Storage for Store {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let id = key.combined_bin();
        let found = {
            let mut state = self.state();
            state.lru.get(&id);
            state
                .objects
                .get(&id)
                .map(|o| (o.meta.clone(), o.body.clone()))
        };
        let Some((meta, body)) = found else {
            return Ok(None);
        };
        let meta = meta.meta()?;
        Ok(Some((meta, Box::new(BodyReader::new(body)))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let meta_bytes = SerializedMeta::of(meta)?;
        let url = key
            .extensions
            .get::<ObjectUrl>()
            .cloned()
            .unwrap_or_default();
        let tags = surrogate_keys(meta);
        let bookkeeping = OBJECT_OVERHEAD
            + meta_bytes.len()
            + (url.host.len() + url.path_and_query.len()) as u64
            + tags.iter().map(|t| 2 * t.len() as u64).sum::<u64>();
        if !self.reserve(bookkeeping) {
            return Err(storage_error("cache full", "no room for a new object"));
        }
        Ok(Box::new(Fill {
            store: self,
            id: key.combined_bin(),
            primary: key.primary_bin(),
            url,
            tags,
            meta: meta_bytes,
            parts: Vec::new(),
            len: 0,
            reserved: bookkeeping,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let ids = self.targets(target.key());
        let purged = self.state().purge(&ids, PurgeMode::Hard);
        Ok(if purged > 0 {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
        })
    }

    async fn expire(
        &'static self,
        target: PurgeTarget<'_>,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let ids = self.targets(target.key());
        let expired = self.state().purge(&ids, PurgeMode::Soft);
        Ok(if expired > 0 {
            PurgeOutcome::Expired
        } else {
            PurgeOutcome::NotFound
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let meta = SerializedMeta::of(meta)?;
        let mut state = self.state();
        let Some(object) = state.objects.get_mut(&key.combined_bin()) else {
            return Ok(false);
        };
        let grown = meta.len().saturating_sub(object.meta.len());
        object.meta = meta;
        object.charge += grown;
        state.stored += grown;
        Ok(true)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

impl Store {
    /// The objects a purge of `key` means: the object itself, and when `key` names a primary
    /// slot (no variance), every variant stored under it.
    fn targets(&self, key: &CompactCacheKey) -> Vec<ObjectId> {
        let state = self.state();
        match key.variance_bin() {
            Some(_) => vec![key.combined_bin()],
            None => state
                .by_primary
                .get(&key.primary_bin())
                .cloned()
                .unwrap_or_default(),
        }
    }
}

/// Reads a stored body, whole or a range of it.
pub struct BodyReader {
    body: Bytes,
    start: usize,
    end: usize,
    done: bool,
}

impl BodyReader {
    fn new(body: Bytes) -> Self {
        let end = body.len();
        BodyReader {
            body,
            start: 0,
            end,
            done: false,
        }
    }

    /// Whether the whole body (or range) has been handed out.
    pub fn is_done(&self) -> bool {
        self.done
    }
}

#[async_trait]
impl HandleHit for BodyReader {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.start..self.end)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        if start >= self.body.len() {
            return Err(storage_error(
                "cache seek",
                format!(
                    "range start {start} is past the body's {} bytes",
                    self.body.len()
                ),
            ));
        }
        self.start = start;
        self.end = end.map_or(self.body.len(), |end| end.min(self.body.len()));
        self.done = false;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.body.len()
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// A response being stored as it arrives.
struct Fill {
    store: &'static Store,
    id: ObjectId,
    primary: HashBinary,
    url: ObjectUrl,
    tags: Vec<String>,
    meta: SerializedMeta,
    parts: Vec<Bytes>,
    len: u64,
    /// Memory budget held for this object, released if it is never committed.
    reserved: u64,
}

#[async_trait]
impl HandleMiss for Fill {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let size = data.len() as u64;
        if self.len + size > self.store.max_object {
            return Err(storage_error(
                "cache object too large",
                format!("the response is over {} bytes", self.store.max_object),
            ));
        }
        if !self.store.reserve(size) {
            return Err(storage_error(
                "cache full",
                "objects being fetched fill the cache's memory",
            ));
        }
        self.reserved += size;
        self.len += size;
        self.parts.push(data);
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        let size = self.len as usize;
        self.store.commit(&mut self);
        Ok(MissFinishType::Created(size))
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        if self.reserved > 0 {
            self.store.release(self.reserved);
        }
    }
}
