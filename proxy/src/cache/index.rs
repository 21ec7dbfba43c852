//! What the cache holds and where: every object's identity, its copies in memory and on
//! disk, the least-recently-used order of each tier, the byte accounting, and the indexes by
//! primary key, URL and surrogate key that purges use. Pure bookkeeping under the store's
//! lock: no I/O happens here; changes to files are handed back as [`DiskJob`]s.

use std::collections::HashMap;
use std::hash::Hash;

use bytes::Bytes;
use lru::LruCache;
use pingora::cache::key::HashBinary;

use super::key::ObjectUrl;
use super::meta::SerializedMeta;
use crate::metrics;

/// An object's identity: the hash of its key, variance included.
pub(super) type ObjectId = HashBinary;

pub(super) struct Object {
    /// Tells a replaced object's late disk results from the current one's.
    pub generation: u64,
    pub primary: HashBinary,
    pub url: ObjectUrl,
    pub tags: Vec<String>,
    pub resident: Option<Resident>,
    pub disk: DiskCopy,
}

/// An object's copy in memory.
pub(super) struct Resident {
    pub meta: SerializedMeta,
    pub body: Bytes,
    /// Bytes charged to the memory tier.
    pub charge: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DiskCopy {
    Absent,
    /// Queued for writing or being written.
    Writing,
    /// On disk, this many bytes.
    Stored(u64),
}

/// A file operation the disk writer must do for the index to stay true.
pub(super) enum DiskJob {
    Remove(ObjectId),
}

#[derive(Default)]
pub(super) struct Index {
    pub objects: HashMap<ObjectId, Object>,
    memory_lru: Lru,
    disk_lru: Lru,
    /// Bytes charged for resident objects.
    pub memory_stored: u64,
    /// Bytes reserved by responses still arriving.
    pub memory_reserved: u64,
    pub disk_stored: u64,
    by_primary: HashMap<HashBinary, Vec<ObjectId>>,
    by_path: HashMap<String, Vec<ObjectId>>,
    by_tag: HashMap<String, Vec<ObjectId>>,
    next_generation: u64,
}

/// Least recently used first out.
struct Lru(LruCache<ObjectId, ()>);

impl Default for Lru {
    fn default() -> Self {
        Lru(LruCache::unbounded())
    }
}

impl Index {
    pub(super) fn next_generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    /// Adds `object`, replacing any object with the same id (whose file, if any, is then
    /// removed: the returned jobs say so).
    pub(super) fn insert(&mut self, id: ObjectId, object: Object) -> Vec<DiskJob> {
        let jobs = self.remove(&id);
        self.by_primary.entry(object.primary).or_default().push(id);
        self.by_path
            .entry(object.url.path_and_query.clone())
            .or_default()
            .push(id);
        for tag in &object.tags {
            self.by_tag.entry(tag.clone()).or_default().push(id);
        }
        if let Some(resident) = &object.resident {
            self.memory_stored += resident.charge;
            self.memory_lru.0.push(id, ());
        }
        if let DiskCopy::Stored(size) = object.disk {
            self.disk_stored += size;
            self.disk_lru.0.push(id, ());
        }
        self.objects.insert(id, object);
        jobs
    }

    /// Forgets an object in both tiers.
    pub(super) fn remove(&mut self, id: &ObjectId) -> Vec<DiskJob> {
        let Some(object) = self.objects.remove(id) else {
            return Vec::new();
        };
        if let Some(resident) = &object.resident {
            self.memory_stored = self.memory_stored.saturating_sub(resident.charge);
            self.memory_lru.0.pop(id);
        }
        if let DiskCopy::Stored(size) = object.disk {
            self.disk_stored = self.disk_stored.saturating_sub(size);
            self.disk_lru.0.pop(id);
        }
        unindex(&mut self.by_primary, &object.primary, id);
        unindex(&mut self.by_path, &object.url.path_and_query, id);
        for tag in &object.tags {
            unindex(&mut self.by_tag, tag, id);
        }
        match object.disk {
            DiskCopy::Absent => Vec::new(),
            DiskCopy::Writing | DiskCopy::Stored(_) => vec![DiskJob::Remove(*id)],
        }
    }

    /// A hit: the object becomes the most recently used of its tiers.
    pub(super) fn touch(&mut self, id: &ObjectId) {
        self.memory_lru.0.get(id);
        self.disk_lru.0.get(id);
    }

    /// Gives an object read back from disk its memory copy (the bytes must be reserved).
    pub(super) fn make_resident(&mut self, id: &ObjectId, resident: Resident) -> bool {
        let Some(object) = self.objects.get_mut(id) else {
            return false;
        };
        if object.resident.is_some() {
            return false;
        }
        self.memory_stored += resident.charge;
        object.resident = Some(resident);
        self.memory_lru.0.push(*id, ());
        true
    }

    /// Drops the least recently used memory copy: objects without a disk copy go entirely.
    /// False when no object is in memory.
    pub(super) fn evict_from_memory(&mut self) -> (bool, Vec<DiskJob>) {
        let Some((id, ())) = self.memory_lru.0.pop_lru() else {
            return (false, Vec::new());
        };
        metrics::global()
            .cache_evictions
            .with_label_values(&["memory"])
            .inc();
        let Some(object) = self.objects.get_mut(&id) else {
            return (true, Vec::new());
        };
        if object.disk == DiskCopy::Absent {
            return (true, self.remove(&id));
        }
        if let Some(resident) = object.resident.take() {
            self.memory_stored = self.memory_stored.saturating_sub(resident.charge);
        }
        (true, Vec::new())
    }

    /// Records that an object's file is written (`size` bytes), if the object is still the
    /// generation that was written; false otherwise (the file is someone else's to remove).
    pub(super) fn disk_written(&mut self, id: &ObjectId, generation: u64, size: u64) -> bool {
        let Some(object) = self
            .objects
            .get_mut(id)
            .filter(|o| o.generation == generation)
        else {
            return false;
        };
        if let DiskCopy::Stored(old) = object.disk {
            self.disk_stored = self.disk_stored.saturating_sub(old);
        }
        object.disk = DiskCopy::Stored(size);
        self.disk_stored += size;
        self.disk_lru.0.push(*id, ());
        true
    }

    /// Records that an object's file could not be written or read: the object keeps its
    /// memory copy if it has one, else it goes.
    pub(super) fn disk_failed(&mut self, id: &ObjectId, generation: u64) -> Vec<DiskJob> {
        let Some(object) = self
            .objects
            .get_mut(id)
            .filter(|o| o.generation == generation)
        else {
            return Vec::new();
        };
        if object.resident.is_none() {
            return self.remove(id);
        }
        if let DiskCopy::Stored(size) = object.disk {
            self.disk_stored = self.disk_stored.saturating_sub(size);
            self.disk_lru.0.pop(id);
        }
        object.disk = DiskCopy::Absent;
        vec![DiskJob::Remove(*id)]
    }

    /// Drops least recently used disk copies until the disk holds at most `capacity` bytes.
    pub(super) fn evict_from_disk(&mut self, capacity: u64) -> Vec<DiskJob> {
        let mut jobs = Vec::new();
        while self.disk_stored > capacity {
            let Some((id, ())) = self.disk_lru.0.pop_lru() else {
                break;
            };
            metrics::global()
                .cache_evictions
                .with_label_values(&["disk"])
                .inc();
            let Some(object) = self.objects.get_mut(&id) else {
                continue;
            };
            if object.resident.is_none() {
                jobs.extend(self.remove(&id));
                continue;
            }
            if let DiskCopy::Stored(size) = object.disk {
                self.disk_stored = self.disk_stored.saturating_sub(size);
            }
            object.disk = DiskCopy::Absent;
            jobs.push(DiskJob::Remove(id));
        }
        jobs
    }

    /// Objects of `path_and_query`, on `host` (compared case-insensitively) or any host.
    pub(super) fn by_url(&self, host: Option<&str>, path_and_query: &str) -> Vec<ObjectId> {
        self.by_path
            .get(path_and_query)
            .into_iter()
            .flatten()
            .filter(|id| {
                host.is_none_or(|host| {
                    self.objects
                        .get(*id)
                        .is_some_and(|o| o.url.host.eq_ignore_ascii_case(host))
                })
            })
            .copied()
            .collect()
    }

    pub(super) fn by_tag(&self, tag: &str) -> Vec<ObjectId> {
        self.by_tag.get(tag).cloned().unwrap_or_default()
    }

    /// The primary slot and every variant stored under `primary`.
    pub(super) fn by_primary(&self, primary: &HashBinary) -> Vec<ObjectId> {
        self.by_primary.get(primary).cloned().unwrap_or_default()
    }

    /// Publishes the tiers' sizes.
    pub(super) fn report(&self) {
        let metrics = metrics::global();
        let disk_objects = self.disk_lru.0.len();
        for (tier, bytes, objects) in [
            ("memory", self.memory_stored, self.memory_lru.0.len()),
            ("disk", self.disk_stored, disk_objects),
        ] {
            metrics
                .cache_bytes
                .with_label_values(&[tier])
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
            metrics
                .cache_objects
                .with_label_values(&[tier])
                .set(i64::try_from(objects).unwrap_or(i64::MAX));
        }
    }
}

fn unindex<K: Hash + Eq>(index: &mut HashMap<K, Vec<ObjectId>>, key: &K, id: &ObjectId) {
    if let Some(ids) = index.get_mut(key) {
        ids.retain(|other| other != id);
        if ids.is_empty() {
            index.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(index: &mut Index, path: &str, resident: bool, disk: DiskCopy) -> Object {
        Object {
            generation: index.next_generation(),
            primary: [9; 16],
            url: ObjectUrl {
                host: "example.com".into(),
                path_and_query: path.into(),
            },
            tags: vec!["tag".into()],
            resident: resident.then(|| Resident {
                meta: SerializedMeta::empty(),
                body: Bytes::from_static(b"body"),
                charge: 100,
            }),
            disk,
        }
    }

    #[test]
    fn memory_eviction_keeps_objects_that_have_a_file() {
        let mut index = Index::default();
        let on_disk = object(&mut index, "/a", true, DiskCopy::Stored(50));
        let memory_only = object(&mut index, "/b", true, DiskCopy::Absent);
        index.insert([1; 16], on_disk);
        index.insert([2; 16], memory_only);
        assert_eq!((index.memory_stored, index.disk_stored), (200, 50));
        let (evicted, jobs) = index.evict_from_memory();
        assert!(evicted && jobs.is_empty());
        assert!(index.objects[&[1; 16]].resident.is_none(), "still on disk");
        let (evicted, jobs) = index.evict_from_memory();
        assert!(evicted && jobs.is_empty());
        assert!(!index.objects.contains_key(&[2; 16]), "gone: no file");
        assert_eq!(index.memory_stored, 0);
        assert!(!index.evict_from_memory().0);
    }

    #[test]
    fn disk_eviction_and_removal_ask_for_the_files_to_go() {
        let mut index = Index::default();
        let a = object(&mut index, "/a", false, DiskCopy::Stored(60));
        let b = object(&mut index, "/b", true, DiskCopy::Stored(60));
        index.insert([1; 16], a);
        index.insert([2; 16], b);
        let jobs = index.evict_from_disk(100);
        assert!(matches!(jobs.as_slice(), [DiskJob::Remove(id)] if *id == [1; 16]));
        assert!(!index.objects.contains_key(&[1; 16]));
        assert_eq!(index.disk_stored, 60);
        assert!(matches!(
            index.remove(&[2; 16]).as_slice(),
            [DiskJob::Remove(_)]
        ));
        assert!(index.by_tag("tag").is_empty() && index.by_url(None, "/b").is_empty());
    }

    #[test]
    fn late_disk_results_of_a_replaced_object_are_ignored() {
        let mut index = Index::default();
        let old = object(&mut index, "/a", true, DiskCopy::Writing);
        let old_generation = old.generation;
        index.insert([1; 16], old);
        let new = object(&mut index, "/a", true, DiskCopy::Absent);
        let jobs = index.insert([1; 16], new);
        assert!(
            matches!(jobs.as_slice(), [DiskJob::Remove(_)]),
            "the old file goes"
        );
        assert!(!index.disk_written(&[1; 16], old_generation, 10));
        assert_eq!(index.objects[&[1; 16]].disk, DiskCopy::Absent);
    }

    #[test]
    fn urls_are_found_per_host() {
        let mut index = Index::default();
        let a = object(&mut index, "/x", true, DiskCopy::Absent);
        index.insert([1; 16], a);
        assert_eq!(index.by_url(Some("EXAMPLE.com"), "/x"), vec![[1; 16]]);
        assert!(index.by_url(Some("other.com"), "/x").is_empty());
        assert_eq!(index.by_url(None, "/x"), vec![[1; 16]]);
    }
}
