//! One request through every limit: which apply, taking a token from each, giving them back
//! when one refuses, and what the client and the metrics get.

use crate::config::{Config, HeadersOn, Limit};
use crate::key::{self, Identity};
use crate::table::{SharedStore, Table, Verdict};

/// The filter's limits and their shared tables.
pub struct Limiter {
    pub config: Config,
    tables: Vec<Table>,
}

/// A limit whose key the request has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Its index in the configuration.
    pub limit: usize,
    /// The key's values (for log lines) and identity.
    pub values: Vec<Vec<u8>>,
    pub identity: Identity,
    /// `None`: not asked, because a limit before it refused.
    pub verdict: Option<Verdict>,
}

/// What the limits made of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The limits that apply, in configuration order.
    pub applied: Vec<Applied>,
    /// The one that refused (an index into `applied`).
    pub refused: Option<usize>,
    /// Tokens that could not be given back: (limit, why).
    pub give_back_failures: Vec<(usize, String)>,
}

/// What happens to the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// It goes on; its response gets these headers (perhaps none).
    Admit {
        response_headers: Vec<(&'static str, String)>,
    },
    /// `429` with these headers and this (JSON) body.
    Refuse {
        headers: Vec<(&'static str, String)>,
        body: String,
    },
}

/// What a request meant for one limit's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Admitted,
    Refused,
    /// Refused, but `dry_run` let it through.
    DryRunRefused,
    /// The shared table could not be used: let through, uncounted.
    Untracked,
    /// Another key's entry was taken over.
    Evicted,
}

impl Event {
    pub const ALL: [Event; 5] = [
        Event::Admitted,
        Event::Refused,
        Event::DryRunRefused,
        Event::Untracked,
        Event::Evicted,
    ];
}

impl Limiter {
    /// The limits of `config`, their table keys starting with `rate-limit/<filter>/`.
    pub fn new(config: Config, filter: &str) -> Limiter {
        let tables = config
            .limits
            .iter()
            .map(|limit| Table::new(format!("rate-limit/{filter}/{}", limit.name), limit))
            .collect();
        Limiter { config, tables }
    }

    /// Creates the shared tables' rows that do not exist yet (see [`Table::create_rows`]).
    pub fn create_tables(&self, store: &dyn SharedStore) -> Result<(), String> {
        for (limit, table) in self.config.limits.iter().zip(&self.tables) {
            table
                .create_rows(store)
                .map_err(|err| format!("limit `{}`: {err}", limit.name))?;
        }
        Ok(())
    }

    pub fn limit(&self, index: usize) -> Option<&Limit> {
        self.config.limits.get(index)
    }

    /// Takes a token from each limit that applies (its key's parts read with `property`),
    /// in order, at `now` (ns since the epoch). At the first refusal the tokens already
    /// taken are given back (a refused request costs no limit anything) and the limits after
    /// it are not asked.
    pub fn check<F>(&self, store: &dyn SharedStore, now: u64, mut property: F) -> Outcome
    where
        F: FnMut(&[&str]) -> Option<Vec<u8>>,
    {
        let mut applied: Vec<Applied> = Vec::with_capacity(self.config.limits.len());
        for (index, limit) in self.config.limits.iter().enumerate() {
            if let Some(values) = key::values(&limit.key, &mut property) {
                applied.push(Applied {
                    limit: index,
                    identity: key::identity(&values),
                    values,
                    verdict: None,
                });
            }
        }
        let mut outcome = Outcome {
            applied,
            refused: None,
            give_back_failures: Vec::new(),
        };
        for n in 0..outcome.applied.len() {
            let Some(applied) = outcome.applied.get_mut(n) else {
                break;
            };
            let Some(table) = self.tables.get(applied.limit) else {
                continue;
            };
            let verdict = table.take(store, &applied.identity, now);
            let refused = matches!(verdict, Verdict::Refused { .. });
            applied.verdict = Some(verdict);
            if refused {
                outcome.refused = Some(n);
                self.give_back(store, now, &mut outcome, n);
                break;
            }
        }
        outcome
    }

    /// Gives back the tokens the limits before `refused` took.
    fn give_back(&self, store: &dyn SharedStore, now: u64, outcome: &mut Outcome, refused: usize) {
        for applied in outcome.applied.iter().take(refused) {
            if !matches!(applied.verdict, Some(Verdict::Admitted { .. })) {
                continue;
            }
            let Some(table) = self.tables.get(applied.limit) else {
                continue;
            };
            if let Err(why) = table.give_back(store, &applied.identity, now) {
                outcome.give_back_failures.push((applied.limit, why));
            }
        }
    }

    /// Refused (unless `dry_run`): `429` with `Retry-After`, `RateLimit-Policy` and
    /// `RateLimit` for the refusing limit. Admitted: with `headers: always` (and not
    /// `dry_run`), its response gets `RateLimit-Policy` and `RateLimit` for the limit with the
    /// fewest tokens left.
    pub fn decide(&self, outcome: &Outcome) -> Decision {
        let refusal = outcome.refused.and_then(|n| {
            let applied = outcome.applied.get(n)?;
            match applied.verdict {
                Some(Verdict::Refused { retry_after_secs }) => {
                    Some((self.limit(applied.limit)?, retry_after_secs))
                }
                _ => None,
            }
        });
        match refusal {
            Some((limit, retry_after)) if !self.config.dry_run => Decision::Refuse {
                headers: vec![
                    ("retry-after", retry_after.to_string()),
                    ("ratelimit-policy", self.policy(outcome)),
                    ("ratelimit", ratelimit(limit, 0, retry_after)),
                    ("content-type", "application/json".to_owned()),
                ],
                body: serde_json::json!({
                    "error": "rate_limited",
                    "limit": limit.name,
                    "retry_after": retry_after,
                })
                .to_string(),
            },
            _ => Decision::Admit {
                response_headers: self.success_headers(outcome),
            },
        }
    }

    fn success_headers(&self, outcome: &Outcome) -> Vec<(&'static str, String)> {
        if self.config.dry_run || self.config.headers != HeadersOn::Always {
            return Vec::new();
        }
        let lowest = outcome
            .applied
            .iter()
            .filter_map(|applied| match applied.verdict {
                Some(Verdict::Admitted {
                    remaining,
                    reset_secs,
                    ..
                }) => Some((self.limit(applied.limit)?, remaining, reset_secs)),
                _ => None,
            })
            .min_by_key(|&(_, remaining, _)| remaining);
        match lowest {
            Some((limit, remaining, reset)) => vec![
                ("ratelimit-policy", self.policy(outcome)),
                ("ratelimit", ratelimit(limit, remaining, reset)),
            ],
            None => Vec::new(),
        }
    }

    /// `RateLimit-Policy`: every limit that applies to the request, `<rate>;w=<seconds>`,
    /// with `;burst=<burst>` when it differs from the rate.
    fn policy(&self, outcome: &Outcome) -> String {
        let policies: Vec<String> = outcome
            .applied
            .iter()
            .filter_map(|applied| self.limit(applied.limit))
            .map(|limit| {
                let mut policy = format!("{};w={}", limit.rate, limit.period_secs);
                if limit.burst != limit.rate {
                    policy.push_str(&format!(";burst={}", limit.burst));
                }
                policy
            })
            .collect();
        policies.join(", ")
    }

    /// What the request means for each limit's metrics: (limit index, event).
    pub fn events(&self, outcome: &Outcome) -> Vec<(usize, Event)> {
        let mut events = Vec::new();
        for (n, applied) in outcome.applied.iter().enumerate() {
            match &applied.verdict {
                Some(Verdict::Refused { .. }) if outcome.refused == Some(n) => {
                    let event = if self.config.dry_run {
                        Event::DryRunRefused
                    } else {
                        Event::Refused
                    };
                    events.push((applied.limit, event));
                }
                Some(Verdict::Admitted { evicted, .. }) => {
                    if *evicted {
                        events.push((applied.limit, Event::Evicted));
                    }
                    if outcome.refused.is_none() {
                        events.push((applied.limit, Event::Admitted));
                    }
                }
                Some(Verdict::Untracked(_)) => events.push((applied.limit, Event::Untracked)),
                Some(Verdict::Refused { .. }) | None => {}
            }
        }
        events
    }
}

/// `RateLimit` (draft-ietf-httpapi-ratelimit-headers-07): the limit, the whole tokens left,
/// the seconds until they are all back (on a refusal: until the next one, as `Retry-After`).
fn ratelimit(limit: &Limit, remaining: u64, reset: u64) -> String {
    format!("limit={}, remaining={remaining}, reset={reset}", limit.rate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::tests::MemoryStore;
    use serde_json::json;

    const SEC: u64 = 1_000_000_000;

    fn limiter(config: serde_json::Value) -> (Limiter, MemoryStore) {
        let config = Config::parse(config.to_string().as_bytes()).unwrap();
        let limiter = Limiter::new(config, "f");
        let store = MemoryStore::default();
        limiter.create_tables(&store).unwrap();
        (limiter, store)
    }

    /// A request from `address` with `x-api-key: key` (if any).
    fn request<'a>(
        address: &'a str,
        key: Option<&'a str>,
    ) -> impl FnMut(&[&str]) -> Option<Vec<u8>> + 'a {
        move |path: &[&str]| match path {
            ["source", "effective_address"] => Some(address.as_bytes().to_vec()),
            ["request", "headers", "x-api-key"] => key.map(|k| k.as_bytes().to_vec()),
            _ => None,
        }
    }

    fn two_limits(extra: serde_json::Value) -> serde_json::Value {
        let mut config = json!({"limits": [
            {"name": "per-second", "rate": 10, "per": "1s", "burst": 3, "key": ["client_address"]},
            {"name": "hourly", "rate": 5, "per": "1h", "key": [{"header": "x-api-key"}]},
        ]});
        for (key, value) in extra.as_object().unwrap() {
            config[key] = value.clone();
        }
        config
    }

    #[test]
    fn refusals_get_429_with_the_refusing_limits_headers() {
        let (limiter, store) = limiter(two_limits(json!({})));
        for _ in 0..3 {
            let outcome = limiter.check(&store, 0, request("192.0.2.1", Some("k")));
            assert_eq!(
                limiter.decide(&outcome),
                Decision::Admit {
                    response_headers: vec![]
                }
            );
            assert_eq!(
                limiter.events(&outcome),
                vec![(0, Event::Admitted), (1, Event::Admitted)]
            );
        }
        let outcome = limiter.check(&store, 0, request("192.0.2.1", Some("k")));
        assert_eq!(outcome.refused, Some(0));
        assert_eq!(
            outcome.applied[1].verdict, None,
            "the hourly limit is not asked"
        );
        assert_eq!(
            limiter.decide(&outcome),
            Decision::Refuse {
                headers: vec![
                    ("retry-after", "1".into()),
                    ("ratelimit-policy", "10;w=1;burst=3, 5;w=3600".into()),
                    ("ratelimit", "limit=10, remaining=0, reset=1".into()),
                    ("content-type", "application/json".into()),
                ],
                body: r#"{"error":"rate_limited","limit":"per-second","retry_after":1}"#.into(),
            }
        );
        assert_eq!(limiter.events(&outcome), vec![(0, Event::Refused)]);
    }

    #[test]
    fn a_refused_request_costs_the_other_limits_nothing() {
        let (limiter, store) = limiter(two_limits(json!({})));
        // Five clients share API key "k": its hourly limit (5) runs out on the sixth request,
        // whose per-second token is given back.
        for n in 0..5 {
            let address = format!("192.0.2.{n}");
            let outcome = limiter.check(&store, 0, request(&address, Some("k")));
            assert_eq!(outcome.refused, None);
        }
        for _ in 0..5 {
            let outcome = limiter.check(&store, 0, request("192.0.2.9", Some("k")));
            assert_eq!(outcome.refused, Some(1), "the hourly limit refuses");
        }
        // 192.0.2.9's three per-second tokens are all there for another key.
        for _ in 0..3 {
            let outcome = limiter.check(&store, 0, request("192.0.2.9", Some("other")));
            assert_eq!(outcome.refused, None);
        }
    }

    #[test]
    fn a_limit_whose_key_is_missing_does_not_apply() {
        let (limiter, store) = limiter(two_limits(json!({})));
        let outcome = limiter.check(&store, 0, request("192.0.2.1", None));
        assert_eq!(outcome.applied.len(), 1);
        assert_eq!(outcome.applied[0].limit, 0);
        assert_eq!(limiter.events(&outcome), vec![(0, Event::Admitted)]);
    }

    #[test]
    fn with_headers_always_admitted_responses_show_the_limit_closest_to_refusing() {
        let (limiter, store) = limiter(two_limits(json!({"headers": "always"})));
        let mut remaining = Vec::new();
        for _ in 0..3 {
            let outcome = limiter.check(&store, 0, request("192.0.2.1", Some("k")));
            let Decision::Admit { response_headers } = limiter.decide(&outcome) else {
                panic!("refused");
            };
            assert_eq!(
                response_headers[0],
                ("ratelimit-policy", "10;w=1;burst=3, 5;w=3600".into())
            );
            remaining.push(response_headers[1].1.clone());
        }
        assert_eq!(
            remaining,
            [
                // per-second has 2 left, hourly 4: per-second is closer.
                "limit=10, remaining=2, reset=1",
                "limit=10, remaining=1, reset=1",
                "limit=10, remaining=0, reset=1",
            ]
        );
        // A second later, per-second is full again and hourly (1 left) is the closer: its four
        // missing tokens come back one per 720 s, the first a second along already.
        let outcome = limiter.check(&store, SEC, request("192.0.2.1", Some("k")));
        let Decision::Admit { response_headers } = limiter.decide(&outcome) else {
            panic!("refused");
        };
        assert_eq!(response_headers[1].1, "limit=5, remaining=1, reset=2879");
    }

    #[test]
    fn dry_run_counts_refusals_but_lets_them_through_without_headers() {
        let (limiter, store) = limiter(two_limits(json!({"dry_run": true, "headers": "always"})));
        let mut events = Vec::new();
        for _ in 0..5 {
            let outcome = limiter.check(&store, 0, request("192.0.2.1", Some("k")));
            assert_eq!(
                limiter.decide(&outcome),
                Decision::Admit {
                    response_headers: vec![]
                }
            );
            events.extend(limiter.events(&outcome));
        }
        let refused = events
            .iter()
            .filter(|(_, e)| *e == Event::DryRunRefused)
            .count();
        let admitted = events
            .iter()
            .filter(|(l, e)| *l == 0 && *e == Event::Admitted)
            .count();
        assert_eq!((admitted, refused), (3, 2));
    }

    #[test]
    fn untracked_and_evicted_are_counted() {
        let (limiter, store) = limiter(json!({"limits": [
            {"name": "tiny", "rate": 1, "per": "1h", "capacity": 4, "key": [{"header": "x-api-key"}]},
        ]}));
        let mut events = Vec::new();
        for n in 0..5 {
            let key = n.to_string();
            events.extend(limiter.events(&limiter.check(&store, 0, request("a", Some(&key)))));
        }
        assert!(events.contains(&(0, Event::Evicted)), "{events:?}");
        // Tables never created: every request goes through, untracked.
        let config = json!({"limits": [{"name": "x", "rate": 1, "per": "1s"}]});
        let untracked = Limiter::new(Config::parse(config.to_string().as_bytes()).unwrap(), "f");
        let outcome = untracked.check(&store, 0, request("a", None));
        assert_eq!(untracked.events(&outcome), vec![(0, Event::Untracked)]);
        assert_eq!(
            untracked.decide(&outcome),
            Decision::Admit {
                response_headers: vec![]
            }
        );
    }
}
