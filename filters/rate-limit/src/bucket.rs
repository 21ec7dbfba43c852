//! Token buckets in exact integer arithmetic. A bucket holds its tokens scaled by the limit's
//! period in nanoseconds, so that each elapsed nanosecond adds exactly `rate` units and no
//! refill is ever lost to rounding, however often the bucket is read.

use crate::config::Limit;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// The arithmetic of one limit's buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Units per token: the period in nanoseconds.
    token: u128,
    /// Units added per elapsed nanosecond.
    rate: u128,
    /// Units in a full bucket.
    full: u128,
}

/// A bucket's state: tokens (in units of [`Rule`]) as of `updated_at` (ns since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    pub units: u128,
    pub updated_at: u64,
}

/// What taking a token found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// A token was taken: `remaining` whole tokens are left, and the bucket is full again in
    /// `reset_secs` (rounded up).
    Admitted { remaining: u64, reset_secs: u64 },
    /// No whole token: the next one comes in `retry_after_secs` (rounded up, at least 1).
    Refused { retry_after_secs: u64 },
}

impl Rule {
    pub fn of(limit: &Limit) -> Rule {
        Rule {
            token: u128::from(limit.period_secs) * u128::from(NANOS_PER_SEC),
            rate: u128::from(limit.rate),
            full: u128::from(limit.burst)
                * u128::from(limit.period_secs)
                * u128::from(NANOS_PER_SEC),
        }
    }

    /// A bucket seen for the first time: full.
    pub fn fresh(&self, now: u64) -> Bucket {
        Bucket {
            units: self.full,
            updated_at: now,
        }
    }

    /// The bucket as of `now`: refilled for the time elapsed, never past full. A clock that
    /// went back refills nothing.
    pub fn refill(&self, bucket: Bucket, now: u64) -> Bucket {
        let elapsed = u128::from(now.saturating_sub(bucket.updated_at));
        Bucket {
            units: bucket
                .units
                .saturating_add(elapsed.saturating_mul(self.rate))
                .min(self.full),
            updated_at: bucket.updated_at.max(now),
        }
    }

    /// Whether the bucket (refilled) is full: it then says nothing a fresh one would not, so
    /// its entry may be reused for another key.
    pub fn is_full(&self, bucket: &Bucket) -> bool {
        bucket.units >= self.full
    }

    /// Takes one token from the (refilled) bucket if it has one.
    pub fn take(&self, bucket: &mut Bucket) -> Take {
        if bucket.units < self.token {
            return Take::Refused {
                retry_after_secs: self.seconds_until(self.token - bucket.units).max(1),
            };
        }
        bucket.units -= self.token;
        Take::Admitted {
            remaining: self.whole_tokens(bucket),
            reset_secs: self.seconds_until(self.full - bucket.units),
        }
    }

    /// Gives back a token taken for a request that another limit refused.
    pub fn give_back(&self, bucket: &mut Bucket) {
        bucket.units = bucket.units.saturating_add(self.token).min(self.full);
    }

    pub fn whole_tokens(&self, bucket: &Bucket) -> u64 {
        u64::try_from(bucket.units / self.token).unwrap_or(u64::MAX)
    }

    /// Whole seconds (rounded up) for the refill to add `units`.
    fn seconds_until(&self, units: u128) -> u64 {
        let nanos = units.div_ceil(self.rate);
        u64::try_from(nanos.div_ceil(u128::from(NANOS_PER_SEC))).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = NANOS_PER_SEC;

    fn rule(rate: u64, period_secs: u64, burst: u64) -> Rule {
        Rule::of(&Limit {
            name: "l".into(),
            rate,
            period_secs,
            burst,
            key: vec![],
            rows: 1,
        })
    }

    #[test]
    fn a_full_bucket_admits_the_burst_then_refuses() {
        let rule = rule(10, 1, 20);
        let mut bucket = rule.fresh(0);
        for left in (0..20).rev() {
            assert_eq!(
                rule.take(&mut bucket),
                Take::Admitted {
                    remaining: left,
                    // Each missing token takes a tenth of a second to come back.
                    reset_secs: (20 - left).div_ceil(10),
                }
            );
        }
        assert_eq!(
            rule.take(&mut bucket),
            Take::Refused {
                retry_after_secs: 1
            }
        );
    }

    #[test]
    fn the_refill_is_exact_over_many_small_steps() {
        // 3 per second: a token every 333,333,333.3 ns; read every nanosecond-ish step, the
        // fractions add up exactly.
        let rule = rule(3, 1, 3);
        let mut bucket = rule.fresh(0);
        for _ in 0..3 {
            assert!(matches!(rule.take(&mut bucket), Take::Admitted { .. }));
        }
        let mut now = 0;
        for _ in 0..1000 {
            now += 333_333;
            bucket = rule.refill(bucket, now);
        }
        // 333,333,000 ns: not yet a whole token (333,333,333.3 ns).
        assert!(matches!(rule.take(&mut bucket), Take::Refused { .. }));
        bucket = rule.refill(bucket, 333_333_334);
        assert!(matches!(
            rule.take(&mut bucket),
            Take::Admitted { remaining: 0, .. }
        ));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        // One per hour: after taking it, the next comes in 3600 s.
        let rule = rule(1, 3600, 1);
        let mut bucket = rule.fresh(0);
        assert_eq!(
            rule.take(&mut bucket),
            Take::Admitted {
                remaining: 0,
                reset_secs: 3600
            }
        );
        bucket = rule.refill(bucket, 10 * SEC + 1);
        assert_eq!(
            rule.take(&mut bucket),
            Take::Refused {
                retry_after_secs: 3590
            }
        );
        bucket = rule.refill(bucket, 3600 * SEC);
        assert!(matches!(rule.take(&mut bucket), Take::Admitted { .. }));
    }

    #[test]
    fn refills_stop_at_full_and_a_clock_going_back_refills_nothing() {
        let rule = rule(1, 1, 5);
        let mut bucket = rule.fresh(100 * SEC);
        rule.take(&mut bucket);
        assert!(!rule.is_full(&bucket));
        let back = rule.refill(bucket, 50 * SEC);
        assert_eq!(back.units, bucket.units);
        assert_eq!(back.updated_at, 100 * SEC);
        let later = rule.refill(bucket, 10_000 * SEC);
        assert!(rule.is_full(&later));
        assert_eq!(rule.whole_tokens(&later), 5);
        // Far in the future (u64::MAX ns): no overflow.
        assert!(rule.is_full(&rule.refill(bucket, u64::MAX)));
    }

    #[test]
    fn a_token_given_back_is_there_again() {
        let rule = rule(1, 60, 2);
        let mut bucket = rule.fresh(0);
        rule.take(&mut bucket);
        rule.take(&mut bucket);
        rule.give_back(&mut bucket);
        assert!(matches!(
            rule.take(&mut bucket),
            Take::Admitted { remaining: 0, .. }
        ));
        rule.give_back(&mut bucket);
        rule.give_back(&mut bucket);
        rule.give_back(&mut bucket);
        assert_eq!(rule.whole_tokens(&bucket), 2, "never more than full");
    }

    #[test]
    fn the_largest_limits_do_not_overflow() {
        let rule = rule(1_000_000, 30 * 86_400, 1_000_000);
        let mut bucket = rule.fresh(0);
        assert!(matches!(
            rule.take(&mut bucket),
            Take::Admitted {
                remaining: 999_999,
                reset_secs: 3
            }
        ));
    }
}
