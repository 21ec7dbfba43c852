//! State filters share across instances and workers, partitioned by VM id: key-value data
//! with compare-and-swap, and bounded queues. It lives as long as the process, so it survives
//! instance crashes and re-creation.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock};

use super::abi::status::Status;
use super::mailbox::InstanceCell;
use crate::sync::lock;

/// Largest value one key may hold.
pub(super) const MAX_VALUE_BYTES: usize = 1 << 20;
/// Largest total of keys and values in one VM id's store.
pub(super) const MAX_STORE_BYTES: usize = 64 << 20;
/// Most items one queue holds before `enqueue` is refused.
pub(super) const MAX_QUEUE_ITEMS: usize = 10_000;
/// Most bytes one queue holds before `enqueue` is refused.
pub(super) const MAX_QUEUE_BYTES: usize = 16 << 20;

#[derive(Default)]
pub(crate) struct SharedData {
    stores: RwLock<HashMap<String, Store>>,
    /// CAS values are unique across stores and never 0 (0 means "no CAS").
    next_cas: AtomicU32,
}

#[derive(Default)]
struct Store {
    entries: HashMap<Vec<u8>, (Vec<u8>, u32)>,
    bytes: usize,
}

impl SharedData {
    /// The value and its CAS, if the key exists.
    pub(crate) fn get(&self, vm_id: &str, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        let stores = self.stores.read().unwrap_or_else(|p| p.into_inner());
        stores.get(vm_id)?.entries.get(key).cloned()
    }

    /// Sets a value. A non-zero `cas` must match the key's current CAS when the key exists.
    pub(crate) fn set(
        &self,
        vm_id: &str,
        key: &[u8],
        value: &[u8],
        cas: u32,
    ) -> Result<(), Status> {
        if value.len() > MAX_VALUE_BYTES {
            return Err(Status::BadArgument);
        }
        let mut stores = self.stores.write().unwrap_or_else(|p| p.into_inner());
        let store = stores.entry(vm_id.to_string()).or_default();
        let old = store.entries.get(key);
        if let Some((_, current)) = old {
            if cas != 0 && cas != *current {
                return Err(Status::CasMismatch);
            }
        }
        let freed = old.map_or(0, |(v, _)| key.len() + v.len());
        let bytes = store.bytes - freed + key.len() + value.len();
        if bytes > MAX_STORE_BYTES {
            return Err(Status::BadArgument);
        }
        store.bytes = bytes;
        store
            .entries
            .insert(key.to_vec(), (value.to_vec(), self.new_cas()));
        Ok(())
    }

    fn new_cas(&self) -> u32 {
        loop {
            let cas = self
                .next_cas
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_add(1);
            if cas != 0 {
                return cas;
            }
        }
    }
}

/// Who hears about new items: a root context of a live instance.
#[derive(Clone)]
pub(crate) struct QueueOwner {
    pub cell: InstanceCell,
    pub root_id: u32,
}

#[derive(Default)]
pub(crate) struct Queues {
    inner: Mutex<QueuesInner>,
}

#[derive(Default)]
struct QueuesInner {
    ids: HashMap<(String, Vec<u8>), u32>,
    queues: HashMap<u32, Queue>,
    next_id: u32,
}

struct Queue {
    items: VecDeque<Vec<u8>>,
    bytes: usize,
    owner: QueueOwner,
}

impl Queues {
    fn lock(&self) -> MutexGuard<'_, QueuesInner> {
        lock(&self.inner)
    }

    /// Registers (or re-registers, keeping its items) queue `name` of `vm_id`; its owner is
    /// the last root context that registered it.
    pub(crate) fn register(&self, vm_id: &str, name: &[u8], owner: QueueOwner) -> u32 {
        let mut inner = self.lock();
        let key = (vm_id.to_string(), name.to_vec());
        if let Some(id) = inner.ids.get(&key).copied() {
            if let Some(queue) = inner.queues.get_mut(&id) {
                queue.owner = owner;
            }
            return id;
        }
        inner.next_id += 1;
        let id = inner.next_id;
        inner.ids.insert(key, id);
        inner.queues.insert(
            id,
            Queue {
                items: VecDeque::new(),
                bytes: 0,
                owner,
            },
        );
        id
    }

    pub(crate) fn resolve(&self, vm_id: &str, name: &[u8]) -> Option<u32> {
        self.lock()
            .ids
            .get(&(vm_id.to_string(), name.to_vec()))
            .copied()
    }

    /// Adds an item; returns the owner to notify. A full queue answers INTERNAL_FAILURE.
    pub(crate) fn enqueue(&self, id: u32, item: &[u8]) -> Result<QueueOwner, Status> {
        let mut inner = self.lock();
        let queue = inner.queues.get_mut(&id).ok_or(Status::NotFound)?;
        if queue.items.len() >= MAX_QUEUE_ITEMS || queue.bytes + item.len() > MAX_QUEUE_BYTES {
            return Err(Status::InternalFailure);
        }
        queue.bytes += item.len();
        queue.items.push_back(item.to_vec());
        Ok(queue.owner.clone())
    }

    /// Takes the oldest item: EMPTY when there is none.
    pub(crate) fn dequeue(&self, id: u32) -> Result<Vec<u8>, Status> {
        let mut inner = self.lock();
        let queue = inner.queues.get_mut(&id).ok_or(Status::NotFound)?;
        let item = queue.items.pop_front().ok_or(Status::Empty)?;
        queue.bytes -= item.len();
        Ok(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_protects_concurrent_updates() {
        let data = SharedData::default();
        assert_eq!(data.get("vm", b"k"), None);
        data.set("vm", b"k", b"v1", 0).unwrap();
        let (value, cas) = data.get("vm", b"k").unwrap();
        assert_eq!(value, b"v1");
        assert_ne!(cas, 0);
        data.set("vm", b"k", b"v2", cas).unwrap();
        assert_eq!(data.set("vm", b"k", b"v3", cas), Err(Status::CasMismatch));
        assert_eq!(data.get("vm", b"k").unwrap().0, b"v2");
        // A new key ignores the CAS; other VM ids do not see it.
        data.set("vm", b"new", b"x", 12345).unwrap();
        assert_eq!(data.get("other", b"k"), None);
    }

    #[test]
    fn sizes_are_bounded() {
        let data = SharedData::default();
        assert_eq!(
            data.set("vm", b"k", &vec![0; MAX_VALUE_BYTES + 1], 0),
            Err(Status::BadArgument)
        );
        for i in 0..(MAX_STORE_BYTES / MAX_VALUE_BYTES) {
            data.set(
                "vm",
                format!("{i}").as_bytes(),
                &vec![0; MAX_VALUE_BYTES - 8],
                0,
            )
            .unwrap();
        }
        assert_eq!(
            data.set("vm", b"one-more", &vec![0; MAX_VALUE_BYTES], 0),
            Err(Status::BadArgument)
        );
        // Replacing a value frees its bytes first.
        data.set("vm", b"0", b"small", 0).unwrap();
    }

    #[test]
    fn queues_are_fifo_and_bounded() {
        let queues = Queues::default();
        let owner = QueueOwner {
            cell: InstanceCell::default(),
            root_id: 1,
        };
        let id = queues.register("vm", b"jobs", owner.clone());
        assert_eq!(queues.register("vm", b"jobs", owner.clone()), id);
        assert_eq!(queues.resolve("vm", b"jobs"), Some(id));
        assert_eq!(queues.resolve("vm", b"other"), None);
        assert_eq!(queues.dequeue(id), Err(Status::Empty));
        queues.enqueue(id, b"a").unwrap();
        queues.enqueue(id, b"b").unwrap();
        assert_eq!(queues.dequeue(id).unwrap(), b"a");
        assert_eq!(queues.dequeue(id).unwrap(), b"b");
        for _ in 0..MAX_QUEUE_ITEMS {
            queues.enqueue(id, b"x").unwrap();
        }
        assert!(matches!(
            queues.enqueue(id, b"x"),
            Err(Status::InternalFailure)
        ));
        assert!(matches!(queues.enqueue(999, b"x"), Err(Status::NotFound)));
    }
}
