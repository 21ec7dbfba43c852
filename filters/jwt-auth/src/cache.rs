//! The cache of verified tokens (as Envoy's `jwt_cache_config`): clients send the same token
//! with every request, so a token found valid is remembered with what its validation
//! established, and the next request carrying it costs a hash lookup instead of parsing the
//! token and verifying its signature (1-2 ms for RS256 or ES256 in the guest). No SDK calls.
//!
//! Only valid tokens are cached: caching rejections would let anyone push the valid ones out
//! with junk. An entry is used only while the token's provider still has the very keys it
//! was verified with (a JWKS refresh or rotation brings new keys, so a withdrawn key stops
//! accepting at once) and while its time claims hold; otherwise it is dropped and the token
//! is validated anew (and rejected with the right reason). At most `capacity` entries of at
//! most [`MAX_ENTRY_BYTES`] each; when full, the oldest one goes.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::rc::{Rc, Weak};

use crate::jwk::KeySet;
use crate::validate::TimeWindow;

/// Largest entry cached: the token and its claim headers (names and values), in bytes. Real
/// tokens are far smaller; the bound caps the cache's memory at `capacity` × this.
pub const MAX_ENTRY_BYTES: usize = 4 * 1024;

/// Tokens found valid, by a keyed hash of their text. Entries keep the text and a lookup
/// compares it eight bytes at a time: keyed by the text itself, the map compared it with
/// wasm's byte-by-byte `memcmp`, which cost more than the rest of a cache hit.
#[derive(Debug)]
pub struct VerifiedTokens {
    capacity: usize,
    hasher: RandomState,
    entries: HashMap<u64, Verified>,
    /// The keys of `entries`, oldest insertion first.
    order: VecDeque<u64>,
}

#[derive(Debug)]
struct Verified {
    /// The token. Another token with the same hash (never seen in practice) is a miss, and
    /// its insertion replaces this one.
    token: Box<str>,
    provider: usize,
    /// The provider's keys that verified the token. Weak, so that the cache does not keep
    /// replaced key sets alive; while it exists their allocation is not freed, so no later
    /// key set can have the same address.
    keys: Weak<KeySet>,
    window: TimeWindow,
    headers: Vec<(String, String)>,
}

impl VerifiedTokens {
    /// A cache of at most `capacity` tokens; 0 caches nothing.
    pub fn new(capacity: usize) -> VerifiedTokens {
        VerifiedTokens {
            capacity,
            hasher: RandomState::new(),
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The provider and claim headers of `raw`, if it is cached, `current_keys(provider)` are
    /// still the keys that verified it, and its time claims hold at `now` (seconds since the
    /// epoch). An entry that fails either condition is removed: it can never hold again.
    pub fn get<'k>(
        &mut self,
        raw: &str,
        now: f64,
        current_keys: impl FnOnce(usize) -> Option<&'k Rc<KeySet>>,
    ) -> Option<(usize, Vec<(String, String)>)> {
        let key = self.hasher.hash_one(raw);
        let verified = self.entries.get(&key)?;
        if !same_text(&verified.token, raw) {
            return None;
        }
        let same_keys = current_keys(verified.provider)
            .is_some_and(|keys| std::ptr::eq(verified.keys.as_ptr(), Rc::as_ptr(keys)));
        if same_keys && verified.window.check(now).is_ok() {
            return Some((verified.provider, verified.headers.clone()));
        }
        self.remove(key);
        None
    }

    /// Remembers `raw`, just found valid for `provider` with `keys`, with its time window and
    /// claim headers. Nothing is cached if the cache is off or the entry would be larger than
    /// [`MAX_ENTRY_BYTES`]. A full cache drops its oldest entry first.
    pub fn insert(
        &mut self,
        raw: &str,
        provider: usize,
        keys: &Rc<KeySet>,
        window: TimeWindow,
        headers: &[(String, String)],
    ) {
        let header_bytes: usize = headers
            .iter()
            .map(|(name, value)| name.len() + value.len())
            .sum();
        if self.capacity == 0 || raw.len().saturating_add(header_bytes) > MAX_ENTRY_BYTES {
            return;
        }
        let key = self.hasher.hash_one(raw);
        let verified = Verified {
            token: raw.into(),
            provider,
            keys: Rc::downgrade(keys),
            window,
            headers: headers.to_vec(),
        };
        if let Some(entry) = self.entries.get_mut(&key) {
            *entry = verified;
            return;
        }
        if self.entries.len() >= self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.entries.remove(&oldest);
            }
        }
        self.order.push_back(key);
        self.entries.insert(key, verified);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn remove(&mut self, key: u64) {
        if self.entries.remove(&key).is_some() {
            // A linear search, but only once per entry that went stale, which is far rarer
            // than lookups and much cheaper than the validation it stands for.
            if let Some(position) = self.order.iter().position(|k| *k == key) {
                self.order.remove(position);
            }
        }
    }
}

/// `a == b`, eight bytes at a time.
fn same_text(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let word = |chunk: &[u8]| u64::from_le_bytes(chunk.try_into().unwrap_or_default());
    let (mut words_a, mut words_b) = (a.chunks_exact(8), b.chunks_exact(8));
    let words_equal = words_a
        .by_ref()
        .zip(words_b.by_ref())
        .all(|(x, y)| word(x) == word(y));
    words_equal && words_a.remainder() == words_b.remainder()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::{self, Algorithm};
    use crate::test_keys::sign;
    use crate::validate::time_window;
    use crate::Rejection;
    use serde_json::{json, Value};
    use std::time::Duration;

    const NOW: f64 = 1_700_000_000.0;

    /// The window of a token with `claims`, with no clock skew.
    fn window(claims: Value) -> TimeWindow {
        let raw = sign(Algorithm::HS256, None, &claims);
        time_window(&jwt::parse(&raw).unwrap(), Duration::ZERO).unwrap()
    }

    fn unbounded() -> TimeWindow {
        window(json!({}))
    }

    fn headers(user: &str) -> Vec<(String, String)> {
        vec![("x-user-id".to_owned(), user.to_owned())]
    }

    /// Looks `raw` up, its provider having `keys`.
    fn get(
        cache: &mut VerifiedTokens,
        raw: &str,
        keys: &Rc<KeySet>,
        now: f64,
    ) -> Option<(usize, Vec<(String, String)>)> {
        cache.get(raw, now, |_| Some(keys))
    }

    #[test]
    fn a_cached_token_gives_its_provider_and_headers() {
        let keys = Rc::new(KeySet::default());
        let mut cache = VerifiedTokens::new(10);
        assert_eq!(get(&mut cache, "a", &keys, NOW), None);
        cache.insert("a", 1, &keys, unbounded(), &headers("alice"));
        assert_eq!(
            get(&mut cache, "a", &keys, NOW),
            Some((1, headers("alice")))
        );
        assert_eq!(
            get(&mut cache, "a", &keys, NOW),
            Some((1, headers("alice")))
        );
        assert_eq!(get(&mut cache, "b", &keys, NOW), None);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn an_entry_is_dropped_once_its_window_has_passed() {
        let keys = Rc::new(KeySet::default());
        let mut cache = VerifiedTokens::new(10);
        let expiring = window(json!({"exp": NOW + 10.0}));
        assert_eq!(expiring.check(NOW + 10.0), Err(Rejection::Expired));
        cache.insert("a", 0, &keys, expiring, &headers("alice"));
        assert!(get(&mut cache, "a", &keys, NOW + 9.5).is_some());
        assert_eq!(get(&mut cache, "a", &keys, NOW + 10.0), None);
        assert!(cache.is_empty());
        assert!(cache.order.is_empty());
        // Gone for good, even at a time it would have held.
        assert_eq!(get(&mut cache, "a", &keys, NOW), None);
    }

    #[test]
    fn new_keys_make_entries_misses() {
        let old_keys = Rc::new(KeySet::default());
        let new_keys = Rc::new(KeySet::default());
        let mut cache = VerifiedTokens::new(10);
        cache.insert("a", 0, &old_keys, unbounded(), &headers("alice"));
        assert_eq!(get(&mut cache, "a", &new_keys, NOW), None);
        assert!(cache.is_empty());
        // A provider without keys (or another provider's keys) is no match either.
        cache.insert("b", 0, &old_keys, unbounded(), &headers("bob"));
        assert_eq!(cache.get("b", NOW, |_| None), None);
        cache.insert("c", 0, &old_keys, unbounded(), &headers("carol"));
        assert_eq!(cache.get("c", NOW, |p| (p == 1).then_some(&old_keys)), None);
        assert!(cache.is_empty());
    }

    #[test]
    fn entries_do_not_keep_replaced_keys_alive() {
        let keys = Rc::new(KeySet::default());
        let mut cache = VerifiedTokens::new(10);
        cache.insert("a", 0, &keys, unbounded(), &headers("alice"));
        assert_eq!(Rc::strong_count(&keys), 1);
    }

    #[test]
    fn a_full_cache_drops_its_oldest_entry() {
        let keys = Rc::new(KeySet::default());
        let mut cache = VerifiedTokens::new(2);
        cache.insert("a", 0, &keys, unbounded(), &headers("alice"));
        cache.insert("b", 0, &keys, unbounded(), &headers("bob"));
        // Inserting an entry again replaces it where it is.
        cache.insert("a", 0, &keys, unbounded(), &headers("alice-2"));
        assert_eq!(cache.len(), 2);
        cache.insert("c", 0, &keys, unbounded(), &headers("carol"));
        assert_eq!(cache.len(), 2);
        assert_eq!(get(&mut cache, "a", &keys, NOW), None);
        assert_eq!(get(&mut cache, "b", &keys, NOW), Some((0, headers("bob"))));
        assert_eq!(
            get(&mut cache, "c", &keys, NOW),
            Some((0, headers("carol")))
        );
        // An entry removed as stale frees its place in the order too.
        let other_keys = Rc::new(KeySet::default());
        assert_eq!(get(&mut cache, "b", &other_keys, NOW), None);
        cache.insert("d", 0, &keys, unbounded(), &headers("dave"));
        assert_eq!(cache.order.len(), 2);
        assert!(get(&mut cache, "c", &keys, NOW).is_some());
        assert!(get(&mut cache, "d", &keys, NOW).is_some());
    }

    #[test]
    fn texts_are_compared_whole() {
        let token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl";
        assert!(same_text(token, token));
        assert!(same_text("", ""));
        for i in 0..token.len() {
            let mut other = token.as_bytes().to_vec();
            other[i] ^= 1;
            let other = String::from_utf8(other).unwrap();
            assert!(!same_text(token, &other), "byte {i} differs");
        }
        assert!(!same_text(token, &token[..token.len() - 1]));
        assert!(!same_text("abcdefgh", "abcdefghi"));
    }

    #[test]
    fn size_zero_caches_nothing() {
        let keys = Rc::new(KeySet::default());
        let mut cache = VerifiedTokens::new(0);
        cache.insert("a", 0, &keys, unbounded(), &headers("alice"));
        assert!(cache.is_empty());
        assert_eq!(get(&mut cache, "a", &keys, NOW), None);
    }

    #[test]
    fn entries_over_the_size_bound_are_not_cached() {
        let keys = Rc::new(KeySet::default());
        let mut cache = VerifiedTokens::new(10);
        let header_bytes = "x-user-id".len() + "alice".len();
        let largest = "t".repeat(MAX_ENTRY_BYTES - header_bytes);
        cache.insert(&largest, 0, &keys, unbounded(), &headers("alice"));
        assert_eq!(cache.len(), 1);
        // One byte more, in the token or in its headers.
        let token = format!("{largest}t");
        cache.insert(&token, 0, &keys, unbounded(), &headers("alice"));
        cache.insert(&largest, 1, &keys, unbounded(), &headers("alice!"));
        assert_eq!(cache.len(), 1);
        assert_eq!(
            get(&mut cache, &largest, &keys, NOW),
            Some((0, headers("alice")))
        );
    }
}
