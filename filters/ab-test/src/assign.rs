//! Which bucket an id lands in: weighted rendezvous hashing over a stable hash. SDK-free,
//! tested natively.
//!
//! Every bucket draws a score from the id and its own name; the best score wins. A bucket
//! of weight `w` wins with probability `w / total`, and the draws of one bucket do not depend
//! on the others, so reconfiguring moves only the ids that must move: a bucket whose weight
//! grows only gains ids, one that shrinks only loses ids, a removed bucket's ids spread over
//! the others and nobody else moves. This matters for `hash` stickiness, where the id is the
//! hash of the client's key; with cookies the id is random and the cookie keeps the client.

/// A stable 64-bit hash of `bytes`: FNV-1a, then a finalizer so that every input bit reaches
/// every output bit (FNV-1a alone mixes the last bytes poorly). The same on every platform and
/// in every instance, unlike std's `RandomState`.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let fnv = bytes.iter().fold(OFFSET, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    });
    mix(fnv)
}

/// MurmurHash3's 64-bit finalizer: a bijection with full avalanche.
pub fn mix(mut z: u64) -> u64 {
    z ^= z >> 33;
    z = z.wrapping_mul(0xff51_afd7_ed55_8ccd);
    z ^= z >> 33;
    z = z.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    z ^ (z >> 33)
}

/// A bucket as the draw sees it: its weight and the hash of its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Contender {
    pub weight: u32,
    pub seed: u64,
}

impl Contender {
    pub fn new(name: &str, weight: u32) -> Contender {
        Contender {
            weight,
            seed: stable_hash(name.as_bytes()),
        }
    }
}

/// The index of the bucket `id` lands in, among `contenders` (buckets of weight 0 never
/// win); `None` only when no bucket has a weight. Ties (practically impossible) go to the
/// first. Costs one hash and one logarithm per bucket.
pub fn pick(id: u64, contenders: &[Contender]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (index, contender) in contenders.iter().enumerate() {
        if contender.weight == 0 {
            continue;
        }
        // An exponential draw scaled by the weight: the smallest of such draws belongs to
        // bucket `i` with probability weight_i / total.
        let draw = -unit_interval(mix(id ^ contender.seed)).ln() / f64::from(contender.weight);
        if best.is_none_or(|(_, smallest)| draw < smallest) {
            best = Some((index, draw));
        }
    }
    best.map(|(index, _)| index)
}

/// The top 53 bits of `bits` as a number strictly between 0 and 1 (never 0, whose logarithm
/// is infinite).
fn unit_interval(bits: u64) -> f64 {
    ((bits >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids as the WASI `random_get` would give them, but fixed: the splitmix64 sequence.
    pub fn random_ids(count: usize) -> impl Iterator<Item = u64> {
        let mut state: u64 = 0x5eed;
        std::iter::repeat_with(move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            mix(state)
        })
        .take(count)
    }

    fn contenders(weights: &[(&str, u32)]) -> Vec<Contender> {
        weights
            .iter()
            .map(|(name, weight)| Contender::new(name, *weight))
            .collect()
    }

    /// How many of `ids` land in each bucket.
    fn split(ids: impl Iterator<Item = u64>, weights: &[(&str, u32)]) -> Vec<usize> {
        let contenders = contenders(weights);
        let mut counts = vec![0; weights.len()];
        for id in ids {
            counts[pick(id, &contenders).unwrap()] += 1;
        }
        counts
    }

    /// Fails unless each bucket's share of `counts` is within 2 percentage points of its
    /// share of the weights.
    fn assert_within_two_points(counts: &[usize], weights: &[(&str, u32)], what: &str) {
        let clients: usize = counts.iter().sum();
        let total: u32 = weights.iter().map(|(_, weight)| weight).sum();
        for ((name, weight), count) in weights.iter().zip(counts) {
            let expected = 100.0 * f64::from(*weight) / f64::from(total);
            let got = 100.0 * *count as f64 / clients as f64;
            assert!(
                (got - expected).abs() <= 2.0,
                "{what}, {weights:?}: bucket {name} got {got:.2} % of {clients}, expected {expected:.2} % ± 2"
            );
        }
    }

    const WEIGHT_SETS: &[&[(&str, u32)]] = &[
        &[("a", 90), ("b", 10)],
        &[("a", 50), ("b", 50)],
        &[("control", 1), ("variant", 1)],
        &[("a", 1), ("b", 1), ("c", 1)],
        &[("a", 70), ("b", 20), ("c", 10)],
        &[("a", 99), ("b", 1)],
        &[("a", 25), ("b", 25), ("c", 25), ("d", 25)],
        &[("old", 5), ("new", 3), ("newer", 2)],
        &[("a", 90), ("b", 10), ("dark", 0)],
    ];

    #[test]
    fn ten_thousand_new_clients_split_within_two_points_of_the_weights() {
        for weights in WEIGHT_SETS {
            let counts = split(random_ids(10_000), weights);
            assert_within_two_points(&counts, weights, "10,000 random ids");
        }
    }

    #[test]
    fn ten_thousand_hashed_keys_split_within_two_points_of_the_weights() {
        // Keys that differ little, as client addresses and user ids do.
        let addresses = || {
            (0..10_000u32).map(|n| {
                let [_, b, c, d] = n.to_be_bytes();
                stable_hash(format!("10.{b}.{c}.{d}").as_bytes())
            })
        };
        let users = || (0..10_000).map(|n| stable_hash(format!("user-{n}").as_bytes()));
        for weights in WEIGHT_SETS {
            assert_within_two_points(&split(addresses(), weights), weights, "addresses");
            assert_within_two_points(&split(users(), weights), weights, "user ids");
        }
    }

    #[test]
    fn a_weight_of_zero_never_wins_and_no_weight_at_all_picks_nothing() {
        let counts = split(random_ids(10_000), &[("a", 1), ("dark", 0)]);
        assert_eq!(counts, vec![10_000, 0]);
        assert_eq!(pick(1, &contenders(&[("a", 0), ("b", 0)])), None);
        assert_eq!(pick(1, &[]), None);
    }

    #[test]
    fn the_same_id_always_lands_in_the_same_bucket() {
        let contenders = contenders(&[("a", 50), ("b", 30), ("c", 20)]);
        for id in random_ids(1000) {
            let first = pick(id, &contenders);
            assert!((0..5).all(|_| pick(id, &contenders) == first));
        }
    }

    #[test]
    fn stable_hash_is_fixed_across_platforms_and_runs() {
        // Pinned: a change here moves every `hash`-sticky client to a new bucket.
        assert_eq!(stable_hash(b""), 0xefd0_1f60_ba99_2926);
        assert_eq!(stable_hash(b"203.0.113.7"), 0x987c_7c19_2396_5ade);
        assert_ne!(stable_hash(b"user-1"), stable_hash(b"user-2"));
    }

    /// Where each of 10,000 ids lands under `before` and under `after`, by bucket name.
    fn moves<'a>(before: &[(&'a str, u32)], after: &[(&'a str, u32)]) -> Vec<(&'a str, &'a str)> {
        let (old, new) = (contenders(before), contenders(after));
        random_ids(10_000)
            .map(|id| {
                let from = before[pick(id, &old).unwrap()].0;
                let to = after[pick(id, &new).unwrap()].0;
                (from, to)
            })
            .collect()
    }

    /// The weight of `name` in `weights` (0 when absent).
    fn weight_of(weights: &[(&str, u32)], name: &str) -> u32 {
        weights
            .iter()
            .find(|(bucket, _)| *bucket == name)
            .map_or(0, |(_, weight)| *weight)
    }

    #[test]
    fn changing_weights_moves_clients_only_out_of_shrunk_or_into_grown_buckets() {
        let moved = moves(&[("a", 90), ("b", 10)], &[("a", 80), ("b", 20)]);
        assert!(moved
            .iter()
            .all(|&(from, to)| from == to || (from, to) == ("a", "b")));
        // About a ninth of a's clients move (10 of its 90 points), not more.
        let a_to_b = moved.iter().filter(|&&m| m == ("a", "b")).count();
        assert!((900..=1300).contains(&a_to_b), "{a_to_b} moved");

        // Same total, so the weights are the shares.
        for (before, after) in [
            (
                &[("a", 40), ("b", 40), ("c", 20)],
                &[("a", 40), ("b", 20), ("c", 40)],
            ),
            (
                &[("a", 50), ("b", 30), ("c", 20)],
                &[("a", 60), ("b", 30), ("c", 10)],
            ),
            (
                &[("a", 34), ("b", 33), ("c", 33)],
                &[("a", 10), ("b", 45), ("c", 45)],
            ),
        ] {
            for (from, to) in moves(before, after) {
                let shrunk = weight_of(after, from) < weight_of(before, from);
                let grown = weight_of(after, to) > weight_of(before, to);
                assert!(
                    from == to || shrunk || grown,
                    "{before:?} -> {after:?}: {from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn removing_a_bucket_moves_only_its_clients_and_adding_one_only_fills_it() {
        let removed = moves(&[("a", 1), ("b", 1), ("c", 1)], &[("a", 1), ("c", 1)]);
        assert!(removed.iter().all(|&(from, to)| from == to || from == "b"));
        let added = moves(&[("a", 1), ("c", 1)], &[("a", 1), ("b", 1), ("c", 1)]);
        assert!(added.iter().all(|&(from, to)| from == to || to == "b"));
        // The order buckets are listed in does not matter.
        let reordered = moves(&[("a", 3), ("b", 1)], &[("b", 1), ("a", 3)]);
        assert!(reordered.iter().all(|&(from, to)| from == to));
    }
}
