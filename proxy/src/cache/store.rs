//! Where cached objects live: a memory tier bounded in bytes and, optionally, a disk tier
//! bounded in bytes that survives restarts. Implements Pingora's `Storage`, so the proxy's
//! cache machinery (lookups, the cache lock, revalidation) drives it.
//!
//! Objects are stored whole: a response becomes visible once its last byte arrived (Pingora
//! then feeds the client straight from the origin, and the cache lock holds concurrent misses
//! until the object is complete). Bytes of responses still arriving are reserved in the
//! memory budget as they come, so the memory tier never holds more than its limit.
//!
//! Stored objects are written to disk by one writer thread, in commit order, so a purge or a
//! replacement can never be overtaken by an older write. A lookup that misses memory reads
//! the object's file (off the async threads) and keeps it in memory again.

use std::any::Any;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::key::{CacheHashKey, CompactCacheKey, HashBinary};
use pingora::cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta, Storage};
use pingora::{Error, ErrorType, Result};

use super::disk::{DiskError, DiskObject, FileError, Folder};
use super::index::{DiskCopy, DiskJob, Index, Object, ObjectId, Resident};
use super::key::ObjectUrl;
use super::meta::SerializedMeta;
use crate::causes::describe;
use crate::metrics;
use crate::sync::lock;

/// Bookkeeping per object beyond its bytes (index entries, LRU links, allocations).
const OBJECT_OVERHEAD: u64 = 256;
/// More surrogate keys than this on one response are ignored.
const MAX_SURROGATE_KEYS: usize = 256;
/// Bodies waiting for the disk writer; beyond this, new objects stay in memory only.
const MAX_QUEUED_BYTES: u64 = 64 << 20;

/// What a purge does to the objects it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PurgeMode {
    /// Remove them.
    Hard,
    /// Mark them stale: the next request revalidates (and may be served stale meanwhile).
    Soft,
}

impl PurgeMode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PurgeMode::Hard => "hard",
            PurgeMode::Soft => "soft",
        }
    }
}

/// Why the disk writer could not write or update an object's file.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("cannot write to `{}`", path.display())]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read a stored object back to update it")]
    ReadBack(#[source] FileError),
    #[error("cannot update a stored object's meta")]
    Meta(#[source] Box<Error>),
}

pub(super) struct Store {
    state: Mutex<State>,
    memory_limit: u64,
    max_object: u64,
    disk: Option<Disk>,
}

struct State {
    index: Index,
    /// Body bytes of objects queued for the disk writer.
    queued: u64,
}

/// The disk tier: its folder, its bound, and the writer's queue.
struct Disk {
    folder: Arc<Folder>,
    capacity: u64,
    jobs: Sender<Job>,
}

/// Work for the disk writer.
enum Job {
    Write {
        generation: u64,
        object: DiskObject,
    },
    /// Replace a stored object's meta (after a revalidation or a soft purge).
    Rewrite {
        id: ObjectId,
        generation: u64,
        change: MetaChange,
    },
    Remove(ObjectId),
}

enum MetaChange {
    Replace(SerializedMeta),
    ExpireAt(SystemTime),
}

impl Store {
    /// A store with a memory tier of `memory_limit` bytes and, with `disk` (folder, bytes), a
    /// disk tier holding what the folder already has. Lives for the rest of the process.
    pub(super) fn open(
        memory_limit: u64,
        max_object: u64,
        disk: Option<(&Path, u64)>,
        patience: std::time::Duration,
    ) -> std::result::Result<&'static Store, DiskError> {
        let mut index = Index::default();
        let mut disk_tier = None;
        let mut receiver = None;
        if let Some((path, capacity)) = disk {
            let folder = Arc::new(Folder::open(path, patience)?);
            let found = folder.scan();
            let count = found.len();
            for file in found {
                let object = Object {
                    generation: index.next_generation(),
                    primary: file.primary,
                    url: file.url,
                    tags: file.tags,
                    resident: None,
                    disk: DiskCopy::Stored(file.file_size),
                };
                index.insert(file.id, object);
            }
            for DiskJob::Remove(id) in index.evict_from_disk(capacity) {
                folder.remove(&id);
            }
            log::info!(
                "cache: {count} objects ({} MiB) on disk in `{}`",
                index.disk_stored >> 20,
                folder.path().display()
            );
            let (jobs, jobs_receiver) = mpsc::channel();
            receiver = Some(jobs_receiver);
            disk_tier = Some(Disk {
                folder,
                capacity,
                jobs,
            });
        }
        index.report();
        let store: &'static Store = Box::leak(Box::new(Store {
            state: Mutex::new(State { index, queued: 0 }),
            memory_limit,
            max_object,
            disk: disk_tier,
        }));
        if let (Some(disk), Some(receiver)) = (&store.disk, receiver) {
            let folder = disk.folder.clone();
            std::thread::Builder::new()
                .name("cache-disk".into())
                .spawn(move || store.write_to_disk(&folder, receiver))
                .map_err(|source| DiskError::Folder {
                    path: disk.folder.path().to_path_buf(),
                    source,
                })?;
        }
        Ok(store)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is consistent between statements; a panic elsewhere cannot break it.
        lock(&self.state)
    }

    /// Hands file work to the disk writer, in order.
    fn send(&self, jobs: Vec<DiskJob>) {
        let Some(disk) = &self.disk else { return };
        for DiskJob::Remove(id) in jobs {
            let _ = disk.jobs.send(Job::Remove(id));
        }
    }

    /// Reserves `bytes` of the memory budget, evicting least recently used objects as needed;
    /// false (nothing reserved) when even evicting everything would not make room.
    fn reserve(&self, bytes: u64) -> bool {
        let mut state = self.state();
        let mut jobs = Vec::new();
        let reserved = loop {
            let index = &mut state.index;
            if index.memory_stored + index.memory_reserved + bytes <= self.memory_limit {
                index.memory_reserved += bytes;
                break true;
            }
            let (evicted, removed) = index.evict_from_memory();
            jobs.extend(removed);
            if !evicted {
                break false;
            }
        };
        state.index.report();
        self.send(jobs);
        reserved
    }

    fn release(&self, bytes: u64) {
        let mut state = self.state();
        state.index.memory_reserved = state.index.memory_reserved.saturating_sub(bytes);
    }

    /// Purges every object fetched for `path_and_query`, on `host` or (None) any host.
    pub(super) fn purge_url(
        &self,
        host: Option<&str>,
        path_and_query: &str,
        mode: PurgeMode,
    ) -> usize {
        let ids = self.state().index.by_url(host, path_and_query);
        self.purge(&ids, mode)
    }

    /// Purges every object tagged with surrogate key `tag`.
    pub(super) fn purge_tag(&self, tag: &str, mode: PurgeMode) -> usize {
        let ids = self.state().index.by_tag(tag);
        self.purge(&ids, mode)
    }

    fn purge(&self, ids: &[ObjectId], mode: PurgeMode) -> usize {
        let mut state = self.state();
        let mut purged = 0;
        let mut jobs = Vec::new();
        for id in ids {
            let done = match mode {
                PurgeMode::Hard => {
                    let found = state.index.objects.contains_key(id);
                    jobs.extend(state.index.remove(id).into_iter().map(remove_job));
                    found
                }
                PurgeMode::Soft => self.expire(&mut state, id, &mut jobs),
            };
            purged += usize::from(done);
        }
        state.index.report();
        drop(state);
        if let Some(disk) = &self.disk {
            for job in jobs {
                let _ = disk.jobs.send(job);
            }
        }
        purged
    }

    /// Marks an object stale as of now, keeping its stale-serving windows.
    fn expire(&self, state: &mut State, id: &ObjectId, jobs: &mut Vec<Job>) -> bool {
        let now = SystemTime::now();
        let Some(object) = state.index.objects.get_mut(id) else {
            return false;
        };
        let generation = object.generation;
        let on_disk = object.disk != DiskCopy::Absent;
        let Some(resident) = &mut object.resident else {
            // Only on disk: the writer marks the stored meta.
            jobs.push(Job::Rewrite {
                id: *id,
                generation,
                change: MetaChange::ExpireAt(now),
            });
            return true;
        };
        let expired = resident.meta.meta().and_then(|mut meta| {
            meta.expire_at(now);
            SerializedMeta::of(&meta)
        });
        match expired {
            Ok(meta) => {
                resident.meta = meta.clone();
                if on_disk {
                    jobs.push(Job::Rewrite {
                        id: *id,
                        generation,
                        change: MetaChange::Replace(meta),
                    });
                }
                true
            }
            Err(e) => {
                log::warn!("cache: cannot mark an object stale ({e}); removing it instead");
                jobs.extend(state.index.remove(id).into_iter().map(remove_job));
                true
            }
        }
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
        let mut state = self.state();
        let generation = state.index.next_generation();
        let to_disk = self.disk.is_some() && state.queued + body.len() as u64 <= MAX_QUEUED_BYTES;
        if self.disk.is_some() && !to_disk {
            metrics::global()
                .cache_disk_errors
                .with_label_values(&["queue_full"])
                .inc();
        }
        let write = to_disk.then(|| DiskObject {
            id: fill.id,
            primary: fill.primary,
            url: fill.url.clone(),
            tags: fill.tags.clone(),
            meta_internal: fill.meta.internal().to_vec(),
            meta_header: fill.meta.header().to_vec(),
            body: body.clone(),
        });
        let object = Object {
            generation,
            primary: fill.primary,
            url: std::mem::take(&mut fill.url),
            tags: std::mem::take(&mut fill.tags),
            resident: Some(Resident {
                meta: fill.meta.clone(),
                body,
                charge: fill.reserved,
            }),
            disk: if to_disk {
                DiskCopy::Writing
            } else {
                DiskCopy::Absent
            },
        };
        state.index.memory_reserved = state.index.memory_reserved.saturating_sub(fill.reserved);
        fill.reserved = 0;
        let jobs = state.index.insert(fill.id, object);
        state.index.report();
        metrics::global().cache_stores.inc();
        // Sent under the lock, so that the writer sees writes in commit order.
        self.send(jobs);
        if let (Some(disk), Some(object)) = (&self.disk, write) {
            state.queued += object.body.len() as u64;
            let _ = disk.jobs.send(Job::Write { generation, object });
        }
    }

    /// The disk writer: runs jobs in order for as long as the process lives.
    fn write_to_disk(&self, folder: &Folder, jobs: Receiver<Job>) {
        let capacity = self.disk.as_ref().map_or(0, |d| d.capacity);
        for job in jobs {
            match job {
                Job::Write { generation, object } => {
                    let written = folder.write(&object).map_err(|source| WriteError::Write {
                        path: folder.path().to_path_buf(),
                        source,
                    });
                    let mut state = self.state();
                    state.queued = state.queued.saturating_sub(object.body.len() as u64);
                    drop(state);
                    self.record_write(folder, object.id, generation, written, capacity);
                }
                Job::Rewrite {
                    id,
                    generation,
                    change,
                } => self.rewrite(folder, id, generation, change, capacity),
                Job::Remove(id) => folder.remove(&id),
            }
        }
    }

    fn rewrite(
        &self,
        folder: &Folder,
        id: ObjectId,
        generation: u64,
        change: MetaChange,
        capacity: u64,
    ) {
        let rewritten = folder
            .read(&id)
            .map_err(WriteError::ReadBack)
            .and_then(|mut object| {
                let meta = match change {
                    MetaChange::Replace(meta) => meta,
                    MetaChange::ExpireAt(at) => {
                        let mut meta =
                            CacheMeta::deserialize(&object.meta_internal, &object.meta_header)
                                .map_err(WriteError::Meta)?;
                        meta.expire_at(at);
                        SerializedMeta::of(&meta).map_err(WriteError::Meta)?
                    }
                };
                object.meta_internal = meta.internal().to_vec();
                object.meta_header = meta.header().to_vec();
                folder.write(&object).map_err(|source| WriteError::Write {
                    path: folder.path().to_path_buf(),
                    source,
                })
            });
        self.record_write(folder, id, generation, rewritten, capacity);
    }

    /// Brings the index up to date with a file write (`Ok(size)`), evicting from disk as
    /// needed, or forgets the disk copy of an object whose file could not be written.
    fn record_write(
        &self,
        folder: &Folder,
        id: ObjectId,
        generation: u64,
        written: std::result::Result<u64, WriteError>,
        capacity: u64,
    ) {
        let mut state = self.state();
        let removals = match written {
            Ok(size) => {
                state.index.disk_written(&id, generation, size);
                state.index.evict_from_disk(capacity)
            }
            Err(e) => {
                log::warn!("cache: {}", describe(&e));
                disk_error("write");
                state.index.disk_failed(&id, generation)
            }
        };
        state.index.report();
        drop(state);
        for DiskJob::Remove(id) in removals {
            folder.remove(&id);
        }
    }

    /// Reads an object only on disk back into memory; `None` when its file turns out damaged
    /// or gone (it is then forgotten).
    async fn read_from_disk(
        &'static self,
        id: ObjectId,
        generation: u64,
    ) -> Option<(SerializedMeta, Bytes)> {
        let disk = self.disk.as_ref()?;
        let folder = disk.folder.clone();
        let read = tokio::task::spawn_blocking(move || folder.read(&id)).await;
        let object = match read {
            Ok(Ok(object)) => object,
            Ok(Err(e)) => {
                log::warn!("cache: dropping a stored object: {e}");
                disk_error(if matches!(e, super::disk::FileError::Damaged(_)) {
                    "corrupt"
                } else {
                    "read"
                });
                let jobs = {
                    let mut state = self.state();
                    let jobs = state.index.disk_failed(&id, generation);
                    state.index.report();
                    jobs
                };
                self.send(jobs);
                return None;
            }
            Err(e) => {
                log::warn!("cache: a disk read did not finish: {e}");
                return None;
            }
        };
        let meta = match SerializedMeta::from_stored(object.meta_internal, object.meta_header) {
            Ok(meta) => meta,
            Err(e) => {
                log::warn!("cache: a stored object's metadata does not deserialize: {e}");
                return None;
            }
        };
        let charge = OBJECT_OVERHEAD + meta.len() + object.body.len() as u64;
        if self.reserve(charge) {
            let mut state = self.state();
            state.index.memory_reserved = state.index.memory_reserved.saturating_sub(charge);
            let resident = Resident {
                meta: meta.clone(),
                body: object.body.clone(),
                charge,
            };
            let current = state
                .index
                .objects
                .get(&id)
                .is_some_and(|o| o.generation == generation);
            if current {
                state.index.make_resident(&id, resident);
            }
            state.index.report();
        }
        Some((meta, object.body))
    }

    /// The objects a purge of `key` means: the object itself, and when `key` names a primary
    /// slot (no variance), every variant stored under it.
    fn targets(&self, key: &CompactCacheKey) -> Vec<ObjectId> {
        match key.variance_bin() {
            Some(_) => vec![key.combined_bin()],
            None => self.state().index.by_primary(&key.primary_bin()),
        }
    }
}

fn remove_job(job: DiskJob) -> Job {
    match job {
        DiskJob::Remove(id) => Job::Remove(id),
    }
}

fn disk_error(operation: &str) {
    metrics::global()
        .cache_disk_errors
        .with_label_values(&[operation])
        .inc();
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

/// Where a looked-up object is.
enum Found {
    Memory(SerializedMeta, Bytes),
    Disk { generation: u64 },
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
            state.index.touch(&id);
            state
                .index
                .objects
                .get(&id)
                .and_then(|o| match (&o.resident, o.disk) {
                    (Some(resident), _) => {
                        Some(Found::Memory(resident.meta.clone(), resident.body.clone()))
                    }
                    (None, DiskCopy::Stored(_)) => Some(Found::Disk {
                        generation: o.generation,
                    }),
                    (None, _) => None,
                })
        };
        let (meta, body) = match found {
            None => return Ok(None),
            Some(Found::Memory(meta, body)) => (meta, body),
            Some(Found::Disk { generation }) => match self.read_from_disk(id, generation).await {
                Some(read) => read,
                None => return Ok(None),
            },
        };
        Ok(Some((meta.meta()?, Box::new(BodyReader::new(body)))))
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
        let purged = Store::purge(self, &ids, PurgeMode::Hard);
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
        let expired = Store::purge(self, &ids, PurgeMode::Soft);
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
        let id = key.combined_bin();
        let mut state = self.state();
        let State { index, .. } = &mut *state;
        let Some(object) = index.objects.get_mut(&id) else {
            return Ok(false);
        };
        let generation = object.generation;
        let on_disk = object.disk != DiskCopy::Absent;
        if let Some(resident) = &mut object.resident {
            let grown = meta.len().saturating_sub(resident.meta.len());
            resident.meta = meta.clone();
            resident.charge += grown;
            index.memory_stored += grown;
        }
        if let (Some(disk), true) = (&self.disk, on_disk) {
            let _ = disk.jobs.send(Job::Rewrite {
                id,
                generation,
                change: MetaChange::Replace(meta),
            });
        }
        Ok(true)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// Reads a stored body, whole or a range of it.
pub(crate) struct BodyReader {
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
    pub(crate) fn is_done(&self) -> bool {
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
