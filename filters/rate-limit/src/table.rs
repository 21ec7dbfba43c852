//! A limit's buckets in shared data: a fixed table, so that no flood of keys can grow it.
//!
//! The table is `rows` shared-data keys (`<prefix>/<row>`), all created when the filter is
//! configured, before it sees a request; each holds [`WAYS`] entries (a key's identity and its
//! bucket) in a value of fixed size. A key lives in the row its identity picks, in any entry:
//! its own, else a free one (never used, or whose bucket has refilled to full: it then knows
//! nothing a fresh bucket would not, so the key has expired), else the entry whose bucket is
//! fullest is evicted (counted): the keys that lose the least by starting over, and never a
//! bucket a client has drained while fuller ones are there.
//!
//! Every change is a compare-and-swap on the row's existing key, retried on a mismatch up to
//! [`MAX_ATTEMPTS`] times, so concurrent requests on any worker never lose an update. (The
//! rows exist before the first request because proxy-wasm's set on a missing key ignores the
//! CAS: two requests creating the same row could both succeed.)

use crate::bucket::{Bucket, Rule, Take};
use crate::config::{Limit, WAYS};
use crate::key::Identity;

/// Tries of one change before the request is let through untracked.
pub const MAX_ATTEMPTS: u32 = 32;

const WAYS_USIZE: usize = WAYS as usize;
const VERSION: u8 = 1;
/// Version, the limit's rate and period, then the entries.
const HEADER_BYTES: usize = 1 + 8 + 8;
/// Identity, units (u128), updated_at (u64).
const ENTRY_BYTES: usize = 16 + 16 + 8;
/// Every row's value has this size, from its creation on.
pub const ROW_BYTES: usize = HEADER_BYTES + WAYS_USIZE * ENTRY_BYTES;

/// Shared data as proxy-wasm offers it: values with a CAS.
pub trait SharedStore {
    /// The value and its CAS (`None` if the host gave none), or `None` if the key is missing.
    fn get(&self, key: &str) -> Option<(Vec<u8>, Option<u32>)>;
    /// Sets the value if `cas` is the key's current one (0: unconditionally).
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), SetError>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetError {
    /// Someone changed the value since it was read.
    CasMismatch,
    /// The store refused the value: the host's status, and what it means.
    Refused(String),
}

impl std::fmt::Display for SetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SetError::CasMismatch => f.write_str("CAS mismatch"),
            SetError::Refused(why) => f.write_str(why),
        }
    }
}

/// What one limit decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A token was taken; `evicted`: another key's entry was given to this one.
    Admitted {
        remaining: u64,
        reset_secs: u64,
        evicted: bool,
    },
    Refused {
        retry_after_secs: u64,
    },
    /// The shared table could not be used (why): the request is let through, not counted.
    Untracked(String),
}

/// One limit's table.
#[derive(Debug, Clone)]
pub struct Table {
    prefix: String,
    rows: u32,
    rule: Rule,
    /// The limit's rate and period, stored in each row: a row written under other ones is
    /// read as empty, so a limit changed by a reload starts afresh.
    fingerprint: [u8; 16],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    identity: [u8; 16],
    bucket: Bucket,
}

/// The entries of one row; `None` is a free entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    entries: [Option<Entry>; WAYS_USIZE],
}

impl Table {
    /// The table of `limit`, its keys starting with `prefix` (unique to the filter and limit).
    pub fn new(prefix: String, limit: &Limit) -> Table {
        let mut fingerprint = [0; 16];
        fingerprint[..8].copy_from_slice(&limit.rate.to_le_bytes());
        fingerprint[8..].copy_from_slice(&limit.period_secs.to_le_bytes());
        Table {
            prefix,
            rows: limit.rows.max(1),
            rule: Rule::of(limit),
            fingerprint,
        }
    }

    fn row_key(&self, row: u32) -> String {
        format!("{}/{row}", self.prefix)
    }

    /// The key remembering how many rows exist.
    fn rows_key(&self) -> String {
        format!("{}/rows", self.prefix)
    }

    /// Creates the rows that do not exist yet, at their full size, so that the table's memory
    /// is taken now and never grows. Run when the filter is configured: edgeward configures a
    /// filter's first instance before the filter sees any request, and later ones find the
    /// rows made. A reload that raises `capacity` adds rows the running configuration never
    /// touches; one that lowers it leaves the extra rows unused.
    pub fn create_rows(&self, store: &dyn SharedStore) -> Result<(), String> {
        let created = store
            .get(&self.rows_key())
            .and_then(|(value, _)| Some(u32::from_le_bytes(value.get(..4)?.try_into().ok()?)))
            .unwrap_or(0);
        let empty = Row::empty().encode(&self.fingerprint);
        for row in created..self.rows {
            store
                .set(&self.row_key(row), &empty, 0)
                .map_err(|err| format!("shared data refused row {row} of its table: {err}"))?;
        }
        if created < self.rows {
            store
                .set(&self.rows_key(), &self.rows.to_le_bytes(), 0)
                .map_err(|err| format!("shared data refused the table's row count: {err}"))?;
        }
        Ok(())
    }

    /// Takes a token from the bucket of `identity` as of `now` (ns since the epoch).
    pub fn take(&self, store: &dyn SharedStore, identity: &Identity, now: u64) -> Verdict {
        let changed = self.change_row(store, identity, |row| {
            let (slot, evicted) = row.slot_for(&identity.id, &self.rule, now);
            let entry = slot.get_or_insert(Entry {
                identity: identity.id,
                bucket: self.rule.fresh(now),
            });
            entry.bucket = self.rule.refill(entry.bucket, now);
            match self.rule.take(&mut entry.bucket) {
                Take::Admitted {
                    remaining,
                    reset_secs,
                } => Change::Write(Verdict::Admitted {
                    remaining,
                    reset_secs,
                    evicted,
                }),
                // Nothing to store: the bucket's refill is computed again on each read.
                Take::Refused { retry_after_secs } => {
                    Change::Keep(Verdict::Refused { retry_after_secs })
                }
            }
        });
        changed.unwrap_or_else(Verdict::Untracked)
    }

    /// Gives back the token [`Table::take`] took for `identity` (its request was refused by
    /// another limit). An entry evicted meanwhile has nothing to give back to.
    pub fn give_back(
        &self,
        store: &dyn SharedStore,
        identity: &Identity,
        now: u64,
    ) -> Result<(), String> {
        self.change_row(store, identity, |row| {
            match row
                .entries
                .iter_mut()
                .flatten()
                .find(|e| e.identity == identity.id)
            {
                Some(entry) => {
                    entry.bucket = self.rule.refill(entry.bucket, now);
                    self.rule.give_back(&mut entry.bucket);
                    Change::Write(())
                }
                None => Change::Keep(()),
            }
        })
    }

    /// Reads the row of `identity`, lets `change` decide, and stores the changed row with a
    /// compare-and-swap, starting over when another request changed it in between.
    fn change_row<T>(
        &self,
        store: &dyn SharedStore,
        identity: &Identity,
        mut change: impl FnMut(&mut Row) -> Change<T>,
    ) -> Result<T, String> {
        let row = (identity.spread % u64::from(self.rows)) as u32;
        let key = self.row_key(row);
        for _ in 0..MAX_ATTEMPTS {
            let Some((value, cas)) = store.get(&key) else {
                return Err(format!("row {row} is missing from shared data"));
            };
            // Without a CAS the write could undo another request's: never write blind.
            let Some(cas) = cas.filter(|&cas| cas != 0) else {
                return Err(format!("shared data gave row {row} no CAS"));
            };
            let mut decoded = Row::decode(&value, &self.fingerprint);
            match change(&mut decoded) {
                Change::Keep(result) => return Ok(result),
                Change::Write(result) => {
                    match store.set(&key, &decoded.encode(&self.fingerprint), cas) {
                        Ok(()) => return Ok(result),
                        Err(SetError::CasMismatch) => continue,
                        Err(SetError::Refused(why)) => {
                            return Err(format!("shared data refused row {row}: {why}"))
                        }
                    }
                }
            }
        }
        Err(format!(
            "row {row} changed under each of {MAX_ATTEMPTS} attempts to update it"
        ))
    }
}

enum Change<T> {
    /// Nothing to store.
    Keep(T),
    /// Store the changed row.
    Write(T),
}

impl Row {
    fn empty() -> Row {
        Row {
            entries: [None; WAYS_USIZE],
        }
    }

    /// The entry for `id`: its own, else a free one, else the fullest bucket's (evicted:
    /// the `bool`), emptied for the caller to fill.
    fn slot_for(&mut self, id: &[u8; 16], rule: &Rule, now: u64) -> (&mut Option<Entry>, bool) {
        let own = self
            .entries
            .iter()
            .position(|e| e.is_some_and(|e| e.identity == *id));
        if let Some(index) = own {
            return (&mut self.entries[index], false);
        }
        let free = self.entries.iter().position(|e| match e {
            None => true,
            Some(entry) => rule.is_full(&rule.refill(entry.bucket, now)),
        });
        let (index, evicted) = match free {
            Some(index) => (index, false),
            None => {
                let fullest = (0..WAYS_USIZE)
                    .max_by_key(|&i| {
                        let units = self.entries[i].map(|e| rule.refill(e.bucket, now).units);
                        // The first of equals: `max_by_key` keeps the last, so look backwards.
                        (units, std::cmp::Reverse(i))
                    })
                    .unwrap_or(0);
                (fullest, true)
            }
        };
        let slot = &mut self.entries[index];
        *slot = None;
        (slot, evicted)
    }

    /// A row as stored; anything else (another version or size, a row written under another
    /// rate or period, damage) reads as an empty row, which the next write replaces.
    fn decode(bytes: &[u8], fingerprint: &[u8; 16]) -> Row {
        let mut row = Row::empty();
        let valid = bytes.len() == ROW_BYTES
            && bytes.first() == Some(&VERSION)
            && bytes.get(1..HEADER_BYTES) == Some(&fingerprint[..]);
        if !valid {
            return row;
        }
        let entries = bytes.get(HEADER_BYTES..).unwrap_or_default();
        for (slot, raw) in row
            .entries
            .iter_mut()
            .zip(entries.chunks_exact(ENTRY_BYTES))
        {
            let (identity, rest) = raw.split_at(16);
            let (units, updated_at) = rest.split_at(16);
            let mut id = [0; 16];
            id.copy_from_slice(identity);
            if id == [0; 16] {
                continue;
            }
            let mut units_bytes = [0; 16];
            units_bytes.copy_from_slice(units);
            let mut updated_bytes = [0; 8];
            updated_bytes.copy_from_slice(updated_at);
            *slot = Some(Entry {
                identity: id,
                bucket: Bucket {
                    units: u128::from_le_bytes(units_bytes),
                    updated_at: u64::from_le_bytes(updated_bytes),
                },
            });
        }
        row
    }

    /// Always [`ROW_BYTES`]; a free entry is all zeros (an identity of 128 zero bits, a
    /// digest no key has been found to make, would read as free).
    fn encode(&self, fingerprint: &[u8; 16]) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(ROW_BYTES);
        bytes.push(VERSION);
        bytes.extend_from_slice(fingerprint);
        for entry in &self.entries {
            match entry {
                Some(entry) => {
                    bytes.extend_from_slice(&entry.identity);
                    bytes.extend_from_slice(&entry.bucket.units.to_le_bytes());
                    bytes.extend_from_slice(&entry.bucket.updated_at.to_le_bytes());
                }
                None => bytes.extend_from_slice(&[0; ENTRY_BYTES]),
            }
        }
        bytes
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::key::identity;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};

    const SEC: u64 = 1_000_000_000;

    /// Shared data with the host's semantics: a set on an existing key with a non-zero CAS
    /// must match; a set on a missing key ignores it; a full store refuses.
    #[derive(Default)]
    pub struct MemoryStore {
        entries: Mutex<HashMap<String, (Vec<u8>, u32)>>,
        next_cas: AtomicU32,
        /// Most keys it holds (none: unbounded).
        pub max_keys: Option<usize>,
    }

    impl SharedStore for MemoryStore {
        fn get(&self, key: &str) -> Option<(Vec<u8>, Option<u32>)> {
            let entries = self.entries.lock().unwrap();
            entries
                .get(key)
                .map(|(value, cas)| (value.clone(), Some(*cas)))
        }

        fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), SetError> {
            let mut entries = self.entries.lock().unwrap();
            match entries.get(key) {
                Some((_, current)) if cas != 0 && cas != *current => {
                    return Err(SetError::CasMismatch)
                }
                None if self.max_keys.is_some_and(|max| entries.len() >= max) => {
                    return Err(SetError::Refused("BAD_ARGUMENT".into()))
                }
                _ => {}
            }
            let cas = self.next_cas.fetch_add(1, Ordering::Relaxed) + 1;
            entries.insert(key.to_owned(), (value.to_vec(), cas));
            Ok(())
        }
    }

    impl MemoryStore {
        pub fn keys(&self) -> usize {
            self.entries.lock().unwrap().len()
        }

        pub fn bytes(&self) -> usize {
            let entries = self.entries.lock().unwrap();
            entries.iter().map(|(k, (v, _))| k.len() + v.len()).sum()
        }
    }

    pub fn limit(rate: u64, period_secs: u64, burst: u64, rows: u32) -> Limit {
        Limit {
            name: "l".into(),
            rate,
            period_secs,
            burst,
            key: vec![],
            rows,
        }
    }

    fn table(store: &MemoryStore, limit: &Limit) -> Table {
        let table = Table::new("rate-limit/f/l".into(), limit);
        table.create_rows(store).unwrap();
        table
    }

    fn key(name: &str) -> Identity {
        identity(&[name.as_bytes().to_vec()])
    }

    fn admitted(verdict: &Verdict) -> bool {
        matches!(verdict, Verdict::Admitted { .. })
    }

    #[test]
    fn rows_are_made_once_at_full_size() {
        let store = MemoryStore::default();
        let limit = limit(1, 1, 1, 10);
        let table = table(&store, &limit);
        assert_eq!(store.keys(), 11, "10 rows and their count");
        let full_size = store.bytes();
        for n in 0..1000 {
            table.take(&store, &key(&n.to_string()), 0);
        }
        assert_eq!(store.keys(), 11);
        assert_eq!(store.bytes(), full_size, "the table never grows");
        // A second instance's configuration leaves them as they are.
        let before = store.get("rate-limit/f/l/3");
        table.create_rows(&store).unwrap();
        assert_eq!(store.get("rate-limit/f/l/3"), before);
        // More capacity adds the missing rows only.
        let bigger = Table::new("rate-limit/f/l".into(), &super::tests::limit(1, 1, 1, 12));
        bigger.create_rows(&store).unwrap();
        assert_eq!(store.keys(), 13);
        assert_eq!(store.get("rate-limit/f/l/3"), before);
    }

    #[test]
    fn a_store_that_is_full_fails_the_configuration() {
        let store = MemoryStore {
            max_keys: Some(5),
            ..MemoryStore::default()
        };
        let table = Table::new("p".into(), &limit(1, 1, 1, 10));
        let err = table.create_rows(&store).unwrap_err();
        assert!(err.contains("shared data refused row 5"), "{err}");
    }

    #[test]
    fn each_key_has_its_own_bucket() {
        let store = MemoryStore::default();
        let table = table(&store, &limit(1, 3600, 2, 100));
        for name in ["a", "b"] {
            assert_eq!(
                table.take(&store, &key(name), 0),
                Verdict::Admitted {
                    remaining: 1,
                    reset_secs: 3600,
                    evicted: false
                }
            );
            assert!(admitted(&table.take(&store, &key(name), 0)));
            assert_eq!(
                table.take(&store, &key(name), SEC),
                Verdict::Refused {
                    retry_after_secs: 3599
                }
            );
        }
    }

    #[test]
    fn an_expired_entry_is_reused_and_a_full_row_evicts_the_fullest_bucket() {
        let store = MemoryStore::default();
        // One row of four entries; 1 token per 100 s, burst 3.
        let table = table(&store, &limit(1, 100, 3, 1));
        // "drained" uses its whole burst; three others one token each.
        for _ in 0..3 {
            assert!(admitted(&table.take(&store, &key("drained"), 0)));
        }
        for name in ["a", "b", "c"] {
            assert!(admitted(&table.take(&store, &key(name), 0)));
        }
        // A fifth key: the row is full of live buckets; "a" (the first of the fullest) goes.
        assert_eq!(
            table.take(&store, &key("e"), 0),
            Verdict::Admitted {
                remaining: 2,
                reset_secs: 100,
                evicted: true
            }
        );
        // "drained" keeps its empty bucket whatever comes.
        for n in 0..100 {
            table.take(&store, &key(&format!("flood-{n}")), 0);
        }
        assert!(matches!(
            table.take(&store, &key("drained"), 0),
            Verdict::Refused { .. }
        ));
        // 100 s later every bucket but "drained" has refilled: a new key takes an expired
        // entry, evicting nothing.
        assert!(matches!(
            table.take(&store, &key("new"), 100 * SEC),
            Verdict::Admitted { evicted: false, .. }
        ));
    }

    #[test]
    fn a_token_is_given_back() {
        let store = MemoryStore::default();
        let table = table(&store, &limit(1, 3600, 1, 4));
        assert!(admitted(&table.take(&store, &key("a"), 0)));
        table.give_back(&store, &key("a"), 0).unwrap();
        assert!(admitted(&table.take(&store, &key("a"), 0)));
        // A key the table does not hold: nothing to do.
        table.give_back(&store, &key("never"), 0).unwrap();
    }

    #[test]
    fn damaged_rows_and_rows_of_another_rate_read_as_empty() {
        let store = MemoryStore::default();
        let table = table(&store, &limit(1, 3600, 1, 1));
        assert!(admitted(&table.take(&store, &key("a"), 0)));
        assert!(!admitted(&table.take(&store, &key("a"), 0)));
        // The same limit reloaded with another rate starts afresh.
        let changed = Table::new("rate-limit/f/l".into(), &limit(2, 3600, 1, 1));
        assert!(admitted(&changed.take(&store, &key("a"), 0)));
        for damage in [vec![], vec![1; 3], vec![9; ROW_BYTES]] {
            store.set("rate-limit/f/l/0", &damage, 0).unwrap();
            assert!(admitted(&table.take(&store, &key("a"), 0)));
        }
    }

    #[test]
    fn a_missing_row_leaves_requests_untracked() {
        let store = MemoryStore::default();
        let table = Table::new("never-created".into(), &limit(1, 1, 1, 1));
        assert!(matches!(
            table.take(&store, &key("a"), 0),
            Verdict::Untracked(why) if why.contains("row 0 is missing")
        ));
    }

    /// A store whose every write fails with `error`.
    struct Failing(MemoryStore, SetError);

    impl SharedStore for Failing {
        fn get(&self, key: &str) -> Option<(Vec<u8>, Option<u32>)> {
            self.0.get(key)
        }
        fn set(&self, _: &str, _: &[u8], _: u32) -> Result<(), SetError> {
            Err(self.1.clone())
        }
    }

    #[test]
    fn retries_are_bounded_and_a_refusing_store_leaves_requests_untracked() {
        // Another worker always wins the race.
        let raced = Failing(MemoryStore::default(), SetError::CasMismatch);
        let raced_table = table(&raced.0, &limit(1, 1, 1, 1));
        assert!(matches!(
            raced_table.take(&raced, &key("a"), 0),
            Verdict::Untracked(why) if why.contains("32 attempts")
        ));
        let refusing = Failing(
            MemoryStore::default(),
            SetError::Refused("BAD_ARGUMENT".into()),
        );
        let refusing_table = table(&refusing.0, &limit(1, 1, 1, 1));
        assert!(matches!(
            refusing_table.take(&refusing, &key("a"), 0),
            Verdict::Untracked(why) if why.contains("refused row 0: BAD_ARGUMENT")
        ));
    }

    #[test]
    fn concurrent_takes_admit_exactly_the_burst() {
        let store = Arc::new(MemoryStore::default());
        let limit = limit(1, 3600, 50, 8);
        let table = Arc::new(table(&store, &limit));
        let admitted_count = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (store, table, count) = (store.clone(), table.clone(), admitted_count.clone());
                std::thread::spawn(move || {
                    for _ in 0..25 {
                        match table.take(&*store, &key("everyone"), 0) {
                            Verdict::Admitted { .. } => {
                                count.fetch_add(1, Ordering::Relaxed);
                            }
                            Verdict::Refused { .. } => {}
                            Verdict::Untracked(why) => panic!("{why}"),
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(admitted_count.load(Ordering::Relaxed), 50);
    }
}
