//! The filter's state, shared by the root context and the HTTP contexts of one instance: the
//! configuration, each provider's keys, the JWKS fetches (when, which is in flight, failures),
//! the requests waiting for a provider's first JWKS and the tokens found valid lately. No SDK
//! calls here: the SDK glue (`filter`) does the I/O and feeds the results in, so all of it
//! runs in native tests.
//!
//! Shared data (one store per VM id, shared by every instance on every worker and surviving
//! instance crashes) holds each fetched JWKS under `jwt-auth.jwks.<issuer>` as
//! `<fetched-at, ms since the epoch>\n<JWKS JSON as served>`, so a new instance has keys at
//! once and instances that refresh late take a newer JWKS from there instead of fetching.

use std::rc::Rc;
use std::time::Duration;

use crate::cache::VerifiedTokens;
use crate::config::{Config, JwksUpstream, KeysFrom};
use crate::jwk::{self, KeySet};
use crate::response::claim_headers;
use crate::validate::{validate, TimeWindow};
use crate::{jwt, Rejection};

/// Largest JWKS accepted from an upstream (shared data holds at most 1 MiB per value).
pub const MAX_JWKS_BYTES: usize = 512 * 1024;
/// First retry after a failed fetch; doubled after each further failure, up to `refresh`.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Longest tick period: how late a due fetch may start.
pub const MAX_TICK: Duration = Duration::from_secs(1);
/// A token with an unknown `kid` brings the next fetch forward (the issuer may have rotated
/// its keys), but no sooner than this after the last fetch (or `refresh`, if shorter).
pub const EARLY_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// Where shared JWKS live: a key-value store shared by the instances of a VM id.
pub trait SharedStore {
    fn get(&self, key: &str) -> Option<Vec<u8>>;
    fn set(&self, key: &str, value: &[u8]);
}

/// The shared-data key of an issuer's JWKS.
pub fn shared_key(issuer: &str) -> String {
    format!("jwt-auth.jwks.{issuer}")
}

pub fn encode_shared(fetched_at_ms: u64, jwks: &[u8]) -> Vec<u8> {
    let mut value = format!("{fetched_at_ms}\n").into_bytes();
    value.extend_from_slice(jwks);
    value
}

pub fn decode_shared(value: &[u8]) -> Option<(u64, &[u8])> {
    let newline = value.iter().position(|&b| b == b'\n')?;
    let fetched_at = std::str::from_utf8(&value[..newline]).ok()?.parse().ok()?;
    Some((fetched_at, &value[newline + 1..]))
}

/// What to do with a request, given its token.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Valid: set these claim headers and let it through.
    Accept {
        headers: Vec<(String, String)>,
    },
    Reject(Rejection),
    /// The token's provider has no keys yet but a fetch is under way: set these headers (from
    /// the still unverified claims; see [`State::wait`]) and pause until the JWKS arrives.
    Wait {
        provider: usize,
        headers: Vec<(String, String)>,
    },
    /// No keys, and no fetch under way (the last one failed): answer 503.
    Unavailable,
}

/// What becomes of a waiting request once its provider's fetch has ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolution {
    Resume,
    Reject(Rejection),
    Unavailable,
}

/// Waiting requests whose fate is decided: (context id, what to do with it).
pub type Settled = Vec<(u32, Resolution)>;

/// A successful fetch: how many keys it brought, the keys skipped (why), settled waiters.
#[derive(Debug)]
pub struct Fetched {
    pub keys: usize,
    pub skipped: Vec<String>,
    pub settled: Settled,
}

#[derive(Debug)]
pub struct Waiter {
    pub context_id: u32,
    token: String,
}

#[derive(Debug, Default)]
pub struct ProviderState {
    pub keys: Option<Rc<KeySet>>,
    /// When the keys in use were fetched (by this instance or another), for upstream keys.
    pub fetched_at_ms: Option<u64>,
    /// The token of the fetch under way.
    pub in_flight: Option<u32>,
    pub next_fetch_ms: u64,
    pub last_attempt_ms: Option<u64>,
    pub failures: u32,
    pub waiters: Vec<Waiter>,
}

pub struct State {
    pub config: Config,
    pub providers: Vec<ProviderState>,
    /// Whether the root context has had a tick: instances with `isolation: request` never
    /// do, nor does a shared one in its first moments.
    pub ticked: bool,
    verified: VerifiedTokens,
}

impl State {
    /// The state right after `on_configure`: inline keys ready, and for each upstream provider
    /// the JWKS found in shared data if any, with its next fetch due at once unless that
    /// JWKS is fresher than `refresh`.
    pub fn new(config: Config, now_ms: u64, store: &dyn SharedStore) -> State {
        let providers = config
            .providers
            .iter()
            .map(|provider| match &provider.keys {
                KeysFrom::Inline(keys) => ProviderState {
                    keys: Some(Rc::clone(keys)),
                    ..ProviderState::default()
                },
                KeysFrom::Upstream(_) => ProviderState::default(),
            })
            .collect();
        let verified = VerifiedTokens::new(config.token_cache);
        let mut state = State {
            config,
            providers,
            ticked: false,
            verified,
        };
        for p in 0..state.providers.len() {
            if let Some(upstream) = state.upstream(p) {
                let refresh = millis(upstream.refresh);
                state.adopt_shared(p, store);
                let provider = &mut state.providers[p];
                provider.next_fetch_ms = match provider.fetched_at_ms {
                    Some(fetched_at) if fetched_at.saturating_add(refresh) > now_ms => {
                        fetched_at + refresh
                    }
                    _ => now_ms,
                };
            }
        }
        state
    }

    /// The JWKS upstream of provider `p`, if its keys are fetched.
    pub fn upstream(&self, p: usize) -> Option<&JwksUpstream> {
        match &self.config.providers[p].keys {
            KeysFrom::Upstream(upstream) => Some(upstream),
            KeysFrom::Inline(_) => None,
        }
    }

    /// The tick period the root context needs: none without upstream providers.
    pub fn tick_period(&self) -> Option<Duration> {
        (0..self.providers.len())
            .filter_map(|p| self.upstream(p).map(|u| u.refresh.min(MAX_TICK)))
            .min()
    }

    /// Decides on a request carrying `raw` (see [`Decision`]).
    pub fn decide(&mut self, raw: &str, now_ms: u64, store: &dyn SharedStore) -> Decision {
        let providers = &self.providers;
        let cached = self.verified.get(raw, seconds(now_ms), |p| {
            providers.get(p).and_then(|provider| provider.keys.as_ref())
        });
        if let Some((p, headers)) = cached {
            // Unless its keys are due for a refresh that only a waiting request brings about:
            // then it goes the normal way, and waits.
            if !self.refreshes_only_by_waiting(p, now_ms) {
                return Decision::Accept { headers };
            }
        }
        let token = match jwt::parse(raw) {
            Ok(token) => token,
            Err(rejection) => return Decision::Reject(rejection),
        };
        let Some(p) = token.issuer().and_then(|iss| self.config.provider_for(iss)) else {
            return Decision::Reject(Rejection::IssuerNotAccepted);
        };
        if self.providers[p].keys.is_none() && self.upstream(p).is_some() {
            self.adopt_shared(p, store);
        }
        let headers = claim_headers(&self.config.forward_claims, &token.claims);
        if self.refreshes_only_by_waiting(p, now_ms) {
            return Decision::Wait {
                provider: p,
                headers,
            };
        }
        let mut checked = self.check(p, &token, now_ms);
        if matches!(checked, Some(Err(Rejection::UnknownKeyId))) && self.upstream(p).is_some() {
            // The issuer may have rotated its keys: another instance may have the new JWKS
            // already; otherwise fetch it sooner.
            if self.adopt_shared(p, store) {
                checked = self.check(p, &token, now_ms);
            } else {
                self.bring_fetch_forward(p, now_ms);
            }
        }
        match checked {
            Some(Ok(window)) => {
                if let Some(keys) = &self.providers[p].keys {
                    self.verified.insert(raw, p, keys, window, &headers);
                }
                Decision::Accept { headers }
            }
            Some(Err(rejection)) => Decision::Reject(rejection),
            None if self.providers[p].in_flight.is_some() => Decision::Wait {
                provider: p,
                headers,
            },
            None => Decision::Unavailable,
        }
    }

    /// Whether a request for provider `p` should wait for the fetch under way although there
    /// are keys: they are older than `refresh` and this instance has never ticked. An instance
    /// that does not tick (`isolation: request`: one instance per request) keeps a fetch's
    /// answer only while a request waits for it, so without this its keys, taken from shared
    /// data, would never be refreshed unless a shared instance of the VM id refreshed them.
    fn refreshes_only_by_waiting(&self, p: usize, now_ms: u64) -> bool {
        let provider = &self.providers[p];
        let Some(refresh) = self.upstream(p).map(|u| millis(u.refresh)) else {
            return false;
        };
        !self.ticked
            && provider.in_flight.is_some()
            && provider.keys.is_some()
            && provider
                .fetched_at_ms
                .is_some_and(|at| at.saturating_add(refresh) <= now_ms)
    }

    /// Validates `token` with provider `p`'s keys (a valid token's time window); `None` if
    /// it has none.
    fn check(
        &self,
        p: usize,
        token: &jwt::Token<'_>,
        now_ms: u64,
    ) -> Option<Result<TimeWindow, Rejection>> {
        let keys = self.providers[p].keys.as_ref()?;
        let provider = &self.config.providers[p];
        Some(validate(
            token,
            keys,
            &provider.audiences,
            self.config.clock_skew,
            seconds(now_ms),
        ))
    }

    /// Remembers request `context_id` as waiting for provider `p`'s JWKS, with its token.
    ///
    /// Its claim headers were set before it paused, from the unverified token: the filter
    /// cannot write a request's headers from the root context, where the JWKS arrives, and
    /// the request only goes on (upstream) once [`State::fetch_succeeded`] found the same
    /// token valid; any other ending is a local response that never reaches the upstream.
    pub fn wait(&mut self, p: usize, context_id: u32, token: String) {
        self.providers[p].waiters.push(Waiter { context_id, token });
    }

    /// Forgets a request that went away while it waited.
    pub fn forget(&mut self, context_id: u32) {
        for provider in &mut self.providers {
            provider.waiters.retain(|w| w.context_id != context_id);
        }
    }

    /// The upstream providers whose fetch is due now, taking fresh enough JWKS that other
    /// instances stored in shared data instead of fetching (which may settle waiters: those
    /// are returned too).
    pub fn due(&mut self, now_ms: u64, store: &dyn SharedStore) -> (Vec<usize>, Settled) {
        let mut due = Vec::new();
        let mut settled = Vec::new();
        for p in 0..self.providers.len() {
            let Some(refresh) = self.upstream(p).map(|u| millis(u.refresh)) else {
                continue;
            };
            let provider = &self.providers[p];
            if provider.in_flight.is_some() || now_ms < provider.next_fetch_ms {
                continue;
            }
            if self.adopt_shared(p, store) {
                let fetched_at = self.providers[p].fetched_at_ms.unwrap_or(0);
                if fetched_at.saturating_add(refresh) > now_ms {
                    self.providers[p].next_fetch_ms = fetched_at + refresh;
                    self.providers[p].failures = 0;
                    settled.extend(self.settle_waiters(p, now_ms));
                    continue;
                }
            }
            due.push(p);
        }
        (due, settled)
    }

    /// A fetch for provider `p` was dispatched with callout `token`.
    pub fn fetch_started(&mut self, p: usize, token: u32, now_ms: u64) {
        let provider = &mut self.providers[p];
        provider.in_flight = Some(token);
        provider.last_attempt_ms = Some(now_ms);
    }

    /// The provider whose fetch is callout `token`; `None` for an unknown token.
    pub fn provider_of_fetch(&self, token: u32) -> Option<usize> {
        self.providers
            .iter()
            .position(|p| p.in_flight == Some(token))
    }

    /// Provider `p`'s fetch answered `body` (a 2xx answer). Parses it; on success stores it
    /// in shared data and settles the waiters. Returns the number of keys, or why the body
    /// was not usable (then see [`State::fetch_failed`]).
    pub fn fetch_succeeded(
        &mut self,
        p: usize,
        body: &[u8],
        now_ms: u64,
        store: &dyn SharedStore,
    ) -> Result<Fetched, String> {
        if body.len() > MAX_JWKS_BYTES {
            return Err(format!("the JWKS is larger than {MAX_JWKS_BYTES} bytes"));
        }
        let parsed = jwk::parse_bytes(body)?;
        if parsed.keys.keys.is_empty() {
            return Err(format!("no usable keys ({})", parsed.skipped.join("; ")));
        }
        let count = parsed.keys.keys.len();
        let refresh = self.upstream(p).map_or(0, |u| millis(u.refresh));
        store.set(
            &shared_key(&self.config.providers[p].issuer),
            &encode_shared(now_ms, body),
        );
        let provider = &mut self.providers[p];
        provider.in_flight = None;
        provider.keys = Some(Rc::new(parsed.keys));
        provider.fetched_at_ms = Some(now_ms);
        provider.failures = 0;
        provider.next_fetch_ms = now_ms + refresh;
        Ok(Fetched {
            keys: count,
            skipped: parsed.skipped,
            settled: self.settle_waiters(p, now_ms),
        })
    }

    /// Provider `p`'s fetch failed (`why` is for the log). Keeps the keys it has; retries
    /// after a back-off. Without keys (not even in shared data), the waiting requests are
    /// settled as [`Resolution::Unavailable`]. Returns when the next try is due and the
    /// settled waiters.
    pub fn fetch_failed(
        &mut self,
        p: usize,
        now_ms: u64,
        store: &dyn SharedStore,
    ) -> (Duration, Settled) {
        let refresh = self.upstream(p).map_or(Duration::ZERO, |u| u.refresh);
        let provider = &mut self.providers[p];
        provider.in_flight = None;
        provider.failures = provider.failures.saturating_add(1);
        let backoff = FIRST_RETRY
            .saturating_mul(1 << provider.failures.saturating_sub(1).min(16))
            .min(refresh);
        provider.next_fetch_ms = now_ms + millis(backoff);
        if self.providers[p].keys.is_none() {
            self.adopt_shared(p, store);
        }
        (backoff, self.settle_waiters(p, now_ms))
    }

    /// Takes provider `p`'s waiters and decides each with the keys it has now.
    fn settle_waiters(&mut self, p: usize, now_ms: u64) -> Settled {
        let waiters = std::mem::take(&mut self.providers[p].waiters);
        waiters
            .into_iter()
            .map(|waiter| {
                let resolution =
                    match jwt::parse(&waiter.token).map(|token| self.check(p, &token, now_ms)) {
                        Err(rejection) | Ok(Some(Err(rejection))) => Resolution::Reject(rejection),
                        Ok(Some(Ok(_))) => Resolution::Resume,
                        Ok(None) => Resolution::Unavailable,
                    };
                (waiter.context_id, resolution)
            })
            .collect()
    }

    /// Takes the JWKS in shared data for provider `p` if it is newer than the keys in use
    /// and usable. Returns whether it did.
    fn adopt_shared(&mut self, p: usize, store: &dyn SharedStore) -> bool {
        let issuer = &self.config.providers[p].issuer;
        let Some(value) = store.get(&shared_key(issuer)) else {
            return false;
        };
        let Some((fetched_at, jwks)) = decode_shared(&value) else {
            log::warn!("jwt-auth: the shared JWKS of {issuer} is damaged; ignoring it");
            return false;
        };
        let provider = &self.providers[p];
        if provider.keys.is_some() && provider.fetched_at_ms >= Some(fetched_at) {
            return false;
        }
        match jwk::parse_bytes(jwks) {
            Ok(parsed) if !parsed.keys.keys.is_empty() => {
                log::debug!(
                    "jwt-auth: using the JWKS of {issuer} from shared data ({} keys)",
                    parsed.keys.keys.len()
                );
                let provider = &mut self.providers[p];
                provider.keys = Some(Rc::new(parsed.keys));
                provider.fetched_at_ms = Some(fetched_at);
                true
            }
            _ => false,
        }
    }

    fn bring_fetch_forward(&mut self, p: usize, now_ms: u64) {
        let interval = self.upstream(p).map_or(EARLY_REFRESH_INTERVAL, |u| {
            u.refresh.min(EARLY_REFRESH_INTERVAL)
        });
        let provider = &mut self.providers[p];
        let earliest = provider
            .last_attempt_ms
            .map_or(now_ms, |last| last.saturating_add(millis(interval)));
        if provider.in_flight.is_none() && earliest < provider.next_fetch_ms {
            provider.next_fetch_ms = earliest.max(now_ms);
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A time in milliseconds since the epoch as the seconds the claims are compared with.
fn seconds(now_ms: u64) -> f64 {
    now_ms as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::Algorithm;
    use crate::test_keys::{self, sign};
    use serde_json::{json, Value};
    use std::cell::RefCell;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Store(RefCell<HashMap<String, Vec<u8>>>);

    impl SharedStore for Store {
        fn get(&self, key: &str) -> Option<Vec<u8>> {
            self.0.borrow().get(key).cloned()
        }
        fn set(&self, key: &str, value: &[u8]) {
            self.0.borrow_mut().insert(key.to_owned(), value.to_vec());
        }
    }

    const T0: u64 = 1_700_000_000_000;
    const ISSUER: &str = "https://idp";
    const INLINE: &str = "https://inline";

    fn config_json() -> Value {
        let keys = test_keys::get();
        json!({
            "providers": [
                {"issuer": INLINE, "jwks": {"keys": [keys.hmac_jwk("h", None)]}},
                {"issuer": ISSUER, "audiences": ["api"],
                 "jwks_upstream": {"upstream": "idp", "refresh": "10s"}},
            ],
            "forward_claims": {"sub": "x-user-id"},
        })
    }

    fn config() -> Config {
        Config::parse(config_json().to_string().as_bytes()).unwrap()
    }

    fn jwks() -> Vec<u8> {
        let keys = test_keys::get();
        json!({"keys": [keys.rsa_jwk("r1", None), keys.ed25519_jwk("e1", None)]})
            .to_string()
            .into_bytes()
    }

    fn token(kid: &str, alg: Algorithm) -> String {
        let claims = json!({"iss": ISSUER, "aud": "api", "sub": "u1",
                            "exp": T0 / 1000 + 3600});
        sign(alg, Some(kid), &claims)
    }

    fn user_header() -> Vec<(String, String)> {
        vec![("x-user-id".to_owned(), "u1".to_owned())]
    }

    #[test]
    fn inline_keys_work_at_once_and_need_no_ticks_of_their_own() {
        let store = Store::default();
        let mut state = State::new(config(), T0, &store);
        let claims = json!({"iss": INLINE, "sub": "u1"});
        let raw = sign(Algorithm::HS256, None, &claims);
        assert_eq!(
            state.decide(&raw, T0, &store),
            Decision::Accept {
                headers: user_header()
            }
        );
        assert_eq!(state.tick_period(), Some(MAX_TICK));
    }

    #[test]
    fn requests_wait_for_the_first_fetch_and_are_settled_by_it() {
        let store = Store::default();
        let mut state = State::new(config(), T0, &store);
        let (due, settled) = state.due(T0, &store);
        assert_eq!(due, [1]);
        assert!(settled.is_empty());
        // Nothing is under way yet: a request now cannot wait for anything.
        let good = token("r1", Algorithm::RS256);
        assert_eq!(state.decide(&good, T0, &store), Decision::Unavailable);
        state.fetch_started(1, 7, T0);
        assert_eq!(state.provider_of_fetch(7), Some(1));
        assert_eq!(state.due(T0 + 5, &store).0, Vec::<usize>::new());

        // Requests wait, with their claim headers.
        assert_eq!(
            state.decide(&good, T0, &store),
            Decision::Wait {
                provider: 1,
                headers: user_header()
            }
        );
        state.wait(1, 100, good.clone());
        state.wait(1, 101, token("unknown", Algorithm::RS256));
        state.wait(1, 102, token("e1", Algorithm::EdDSA));
        state.wait(1, 103, good.clone());
        state.forget(103);
        // Garbage never waits.
        assert_eq!(
            state.decide("garbage", T0, &store),
            Decision::Reject(Rejection::Malformed)
        );

        let fetched = state.fetch_succeeded(1, &jwks(), T0 + 100, &store).unwrap();
        assert_eq!(fetched.keys, 2);
        assert!(fetched.skipped.is_empty());
        assert_eq!(
            fetched.settled,
            [
                (100, Resolution::Resume),
                (101, Resolution::Reject(Rejection::UnknownKeyId)),
                (102, Resolution::Resume),
            ]
        );
        assert_eq!(state.provider_of_fetch(7), None);
        // Stored for the other instances, stamped with the fetch time.
        let stored = store.get(&shared_key(ISSUER)).unwrap();
        assert_eq!(decode_shared(&stored), Some((T0 + 100, &jwks()[..])));
        // Next fetch after `refresh`.
        assert_eq!(state.providers[1].next_fetch_ms, T0 + 100 + 10_000);
        assert!(state.due(T0 + 10_099, &store).0.is_empty());
        assert_eq!(state.due(T0 + 10_100, &store).0, [1]);
    }

    #[test]
    fn a_failed_first_fetch_answers_the_waiters_503_and_retries_with_backoff() {
        let store = Store::default();
        let mut state = State::new(config(), T0, &store);
        state.fetch_started(1, 1, T0);
        state.wait(1, 100, token("r1", Algorithm::RS256));
        let (retry, settled) = state.fetch_failed(1, T0 + 10, &store);
        assert_eq!(retry, Duration::from_secs(1));
        assert_eq!(settled, [(100, Resolution::Unavailable)]);
        assert_eq!(
            state.decide(&token("r1", Algorithm::RS256), T0 + 20, &store),
            Decision::Unavailable
        );
        // Back-off doubles up to `refresh`.
        let mut retries = Vec::new();
        for _ in 0..6 {
            state.fetch_started(1, 2, T0);
            retries.push(state.fetch_failed(1, T0, &store).0.as_secs());
        }
        assert_eq!(retries, [2, 4, 8, 10, 10, 10]);
    }

    #[test]
    fn a_failed_refresh_keeps_the_last_good_keys() {
        let store = Store::default();
        let mut state = State::new(config(), T0, &store);
        state.fetch_started(1, 1, T0);
        state.fetch_succeeded(1, &jwks(), T0, &store).unwrap();
        state.fetch_started(1, 2, T0 + 10_000);
        // A body that is not a usable JWKS is a failure too.
        assert!(state
            .fetch_succeeded(1, b"<html>", T0 + 10_000, &store)
            .is_err());
        assert!(state
            .fetch_succeeded(
                1,
                br#"{"keys": [{"kty": "oct", "k": ""}]}"#,
                T0 + 10_000,
                &store
            )
            .unwrap_err()
            .contains("no usable keys (key 0: empty `k`)"));
        assert!(state
            .fetch_succeeded(1, &vec![b' '; MAX_JWKS_BYTES + 1], T0, &store)
            .is_err());
        let (_, settled) = state.fetch_failed(1, T0 + 10_000, &store);
        assert!(settled.is_empty());
        assert_eq!(
            state.decide(&token("r1", Algorithm::RS256), T0 + 10_000, &store),
            Decision::Accept {
                headers: user_header()
            }
        );
    }

    #[test]
    fn a_new_instance_starts_with_the_shared_jwks() {
        let store = Store::default();
        store.set(&shared_key(ISSUER), &encode_shared(T0 - 1000, &jwks()));
        let mut state = State::new(config(), T0, &store);
        assert!(state.providers[1].keys.is_some());
        // Fresh: no fetch until it is `refresh` old.
        assert_eq!(state.providers[1].next_fetch_ms, T0 + 9000);
        assert!(state.due(T0, &store).0.is_empty());
        assert_eq!(
            state.decide(&token("e1", Algorithm::EdDSA), T0, &store),
            Decision::Accept {
                headers: user_header()
            }
        );
        // Stale: used, and fetched again at once.
        let stale = Store::default();
        stale.set(&shared_key(ISSUER), &encode_shared(T0 - 60_000, &jwks()));
        let state = State::new(config(), T0, &stale);
        assert!(state.providers[1].keys.is_some());
        assert_eq!(state.providers[1].next_fetch_ms, T0);
        // Damaged: ignored.
        let damaged = Store::default();
        damaged.set(&shared_key(ISSUER), b"no newline");
        assert!(State::new(config(), T0, &damaged).providers[1]
            .keys
            .is_none());
    }

    #[test]
    fn stale_keys_make_an_instance_that_never_ticked_wait_for_its_fetch() {
        let store = Store::default();
        store.set(&shared_key(ISSUER), &encode_shared(T0 - 60_000, &jwks()));
        // As with `isolation: request`: a new instance, stale shared keys, a fetch under way.
        let mut state = State::new(config(), T0, &store);
        assert_eq!(state.due(T0, &store).0, [1]);
        state.fetch_started(1, 1, T0);
        let good = token("r1", Algorithm::RS256);
        assert_eq!(
            state.decide(&good, T0, &store),
            Decision::Wait {
                provider: 1,
                headers: user_header()
            }
        );
        state.wait(1, 100, good.clone());
        // The fetch fails: the request goes on with the old keys.
        let (_, settled) = state.fetch_failed(1, T0 + 5, &store);
        assert_eq!(settled, [(100, Resolution::Resume)]);
        // Without a fetch under way, or once the instance ticks, nobody waits.
        assert!(matches!(
            state.decide(&good, T0 + 6, &store),
            Decision::Accept { .. }
        ));
        state.fetch_started(1, 2, T0 + 10);
        state.ticked = true;
        assert!(matches!(
            state.decide(&good, T0 + 10, &store),
            Decision::Accept { .. }
        ));
        // Fresh keys never wait.
        let fresh = Store::default();
        fresh.set(&shared_key(ISSUER), &encode_shared(T0, &jwks()));
        let mut state = State::new(config(), T0 + 1, &fresh);
        state.fetch_started(1, 3, T0 + 1);
        assert!(matches!(
            state.decide(&good, T0 + 1, &fresh),
            Decision::Accept { .. }
        ));
    }

    #[test]
    fn a_request_uses_the_shared_jwks_when_its_instance_has_none_yet() {
        let store = Store::default();
        let mut state = State::new(config(), T0, &store);
        state.fetch_started(1, 1, T0);
        // Another worker's instance fetched it meanwhile.
        store.set(&shared_key(ISSUER), &encode_shared(T0 + 5, &jwks()));
        assert_eq!(
            state.decide(&token("r1", Algorithm::RS256), T0 + 10, &store),
            Decision::Accept {
                headers: user_header()
            }
        );
    }

    #[test]
    fn a_due_refresh_takes_a_fresh_shared_jwks_instead_of_fetching() {
        let store = Store::default();
        let mut state = State::new(config(), T0, &store);
        state.fetch_started(1, 1, T0);
        state.fetch_succeeded(1, &jwks(), T0, &store).unwrap();
        // Another instance refreshed 2 s before this one's refresh is due.
        let other = test_keys::other();
        let rotated = json!({"keys": [other.rsa_jwk("r2", None)]}).to_string();
        store.set(
            &shared_key(ISSUER),
            &encode_shared(T0 + 8000, rotated.as_bytes()),
        );
        let (due, _) = state.due(T0 + 10_000, &store);
        assert!(due.is_empty());
        assert_eq!(state.providers[1].next_fetch_ms, T0 + 18_000);
        let new_token = test_keys::sign_with(
            other,
            Algorithm::RS256,
            Some("r2"),
            &json!({"iss": ISSUER, "aud": "api"}),
        );
        assert!(matches!(
            state.decide(&new_token, T0 + 10_000, &store),
            Decision::Accept { .. }
        ));
    }

    #[test]
    fn an_unknown_kid_brings_the_next_fetch_forward_once_in_a_while() {
        let store = Store::default();
        let mut state = State::new(config(), T0, &store);
        state.fetch_started(1, 1, T0);
        state.fetch_succeeded(1, &jwks(), T0, &store).unwrap();
        let unknown = token("r9", Algorithm::RS256);
        // Refresh is 10 s, so an early fetch is no sooner than 10 s after the last one.
        assert_eq!(
            state.decide(&unknown, T0 + 1000, &store),
            Decision::Reject(Rejection::UnknownKeyId)
        );
        assert_eq!(state.providers[1].next_fetch_ms, T0 + 10_000);
        let mut long = config();
        if let KeysFrom::Upstream(upstream) = &mut long.providers[1].keys {
            upstream.refresh = Duration::from_secs(300);
        }
        let mut state = State::new(long, T0, &store);
        state.fetch_started(1, 1, T0);
        state.fetch_succeeded(1, &jwks(), T0, &store).unwrap();
        assert_eq!(state.providers[1].next_fetch_ms, T0 + 300_000);
        state.decide(&unknown, T0 + 1000, &store);
        assert_eq!(state.providers[1].next_fetch_ms, T0 + 30_000);
        state.decide(&unknown, T0 + 2000, &store);
        assert_eq!(state.providers[1].next_fetch_ms, T0 + 30_000);
        assert!(state.due(T0 + 29_999, &store).0.is_empty());
        assert_eq!(state.due(T0 + 30_000, &store).0, [1]);
    }

    #[test]
    fn an_unknown_kid_takes_a_newer_shared_jwks() {
        let store = Store::default();
        let mut state = State::new(config(), T0, &store);
        state.fetch_started(1, 1, T0);
        state.fetch_succeeded(1, &jwks(), T0, &store).unwrap();
        let other = test_keys::other();
        let rotated = json!({"keys": [other.p256_jwk("p2", None)]}).to_string();
        store.set(
            &shared_key(ISSUER),
            &encode_shared(T0 + 1, rotated.as_bytes()),
        );
        let claims: Value = json!({"iss": ISSUER, "aud": "api", "sub": "u1"});
        let new_token = test_keys::sign_with(other, Algorithm::ES256, Some("p2"), &claims);
        assert_eq!(
            state.decide(&new_token, T0 + 2, &store),
            Decision::Accept {
                headers: user_header()
            }
        );
    }

    #[test]
    fn issuer_checks_come_first() {
        let store = Store::default();
        let mut state = State::new(config(), T0, &store);
        let claims = json!({"iss": "https://elsewhere", "sub": "u1"});
        assert_eq!(
            state.decide(&sign(Algorithm::HS256, None, &claims), T0, &store),
            Decision::Reject(Rejection::IssuerNotAccepted)
        );
        let claims = json!({"sub": "u1"});
        assert_eq!(
            state.decide(&sign(Algorithm::HS256, None, &claims), T0, &store),
            Decision::Reject(Rejection::IssuerNotAccepted)
        );
    }

    /// A token of the inline provider for user u1, with `claims` added.
    fn inline_token(claims: Value) -> String {
        let mut all = json!({"iss": INLINE, "sub": "u1"});
        for (name, value) in claims.as_object().unwrap() {
            all[name] = value.clone();
        }
        sign(Algorithm::HS256, None, &all)
    }

    #[test]
    fn a_repeated_token_is_accepted_from_the_cache_without_validating_it_again() {
        let store = Store::default();
        let mut state = State::new(config(), T0, &store);
        let raw = inline_token(json!({"aud": "api"}));
        let accepted = Decision::Accept {
            headers: user_header(),
        };
        assert_eq!(state.decide(&raw, T0, &store), accepted);
        assert_eq!(state.verified.len(), 1);
        // Were the token validated again, its audience would now be refused.
        state.config.providers[0].audiences = vec!["elsewhere".to_owned()];
        assert_eq!(state.decide(&raw, T0 + 1000, &store), accepted);
        let other = inline_token(json!({"aud": "api", "jti": "2"}));
        assert_eq!(
            state.decide(&other, T0, &store),
            Decision::Reject(Rejection::AudienceNotAccepted)
        );
    }

    #[test]
    fn a_cached_token_is_rejected_as_expired_once_it_is() {
        let store = Store::default();
        let mut state = State::new(config(), T0, &store);
        // Valid until exp + the default clock skew of 60 s.
        let raw = inline_token(json!({"exp": T0 / 1000 + 10}));
        assert!(matches!(
            state.decide(&raw, T0, &store),
            Decision::Accept { .. }
        ));
        assert!(matches!(
            state.decide(&raw, T0 + 69_999, &store),
            Decision::Accept { .. }
        ));
        assert_eq!(
            state.decide(&raw, T0 + 70_000, &store),
            Decision::Reject(Rejection::Expired)
        );
        assert!(state.verified.is_empty());
    }

    #[test]
    fn new_keys_turn_cached_tokens_into_misses() {
        let store = Store::default();
        let mut state = State::new(config(), T0, &store);
        state.fetch_started(1, 1, T0);
        state.fetch_succeeded(1, &jwks(), T0, &store).unwrap();
        let good = token("r1", Algorithm::RS256);
        assert!(matches!(
            state.decide(&good, T0, &store),
            Decision::Accept { .. }
        ));
        assert_eq!(state.verified.len(), 1);
        // Even the same JWKS fetched again makes new keys, so the token is validated anew
        // (as the audience, changed here for the test, shows), then cached again.
        state.fetch_started(1, 2, T0 + 10_000);
        state
            .fetch_succeeded(1, &jwks(), T0 + 10_000, &store)
            .unwrap();
        state.config.providers[1].audiences = vec!["elsewhere".to_owned()];
        assert_eq!(
            state.decide(&good, T0 + 10_000, &store),
            Decision::Reject(Rejection::AudienceNotAccepted)
        );
        state.config.providers[1].audiences = vec!["api".to_owned()];
        assert!(matches!(
            state.decide(&good, T0 + 10_000, &store),
            Decision::Accept { .. }
        ));
        assert_eq!(state.verified.len(), 1);
        // The issuer replaced the key behind `r1`: the cached token no longer passes.
        let other = test_keys::other();
        let rotated = json!({"keys": [other.rsa_jwk("r1", None)]}).to_string();
        state.fetch_started(1, 3, T0 + 20_000);
        state
            .fetch_succeeded(1, rotated.as_bytes(), T0 + 20_000, &store)
            .unwrap();
        assert_eq!(
            state.decide(&good, T0 + 20_000, &store),
            Decision::Reject(Rejection::SignatureInvalid)
        );
        assert!(state.verified.is_empty());
    }

    #[test]
    fn only_accepted_tokens_are_cached() {
        let store = Store::default();
        let mut state = State::new(config(), T0, &store);
        let forged = test_keys::sign_with(
            test_keys::other(),
            Algorithm::HS256,
            None,
            &json!({"iss": INLINE, "sub": "u1"}),
        );
        let expired = inline_token(json!({"exp": T0 / 1000 - 3600}));
        for rejected in ["garbage", &forged, &expired] {
            assert!(matches!(
                state.decide(rejected, T0, &store),
                Decision::Reject(_)
            ));
        }
        assert!(state.verified.is_empty());
        // Nor is a token that waits for its keys, when the fetch settles it.
        let good = token("r1", Algorithm::RS256);
        state.fetch_started(1, 1, T0);
        assert!(matches!(
            state.decide(&good, T0, &store),
            Decision::Wait { .. }
        ));
        state.wait(1, 100, good.clone());
        let fetched = state.fetch_succeeded(1, &jwks(), T0, &store).unwrap();
        assert_eq!(fetched.settled, [(100, Resolution::Resume)]);
        assert!(state.verified.is_empty());
        // Its next request validates it and caches it.
        assert!(matches!(
            state.decide(&good, T0, &store),
            Decision::Accept { .. }
        ));
        assert_eq!(state.verified.len(), 1);
    }

    #[test]
    fn a_cached_token_still_waits_for_a_refresh_only_waiting_brings() {
        let store = Store::default();
        store.set(&shared_key(ISSUER), &encode_shared(T0, &jwks()));
        // An instance that never ticks (`isolation: request`) with fresh shared keys.
        let mut state = State::new(config(), T0, &store);
        let good = token("r1", Algorithm::RS256);
        assert!(matches!(
            state.decide(&good, T0, &store),
            Decision::Accept { .. }
        ));
        // The keys grew older than `refresh` and a fetch is under way: wait for it.
        state.fetch_started(1, 1, T0 + 10_000);
        assert_eq!(
            state.decide(&good, T0 + 10_000, &store),
            Decision::Wait {
                provider: 1,
                headers: user_header()
            }
        );
    }

    #[test]
    fn a_token_cache_of_zero_caches_nothing() {
        let store = Store::default();
        let mut config = config_json();
        config["token_cache"] = json!(0);
        let config = Config::parse(config.to_string().as_bytes()).unwrap();
        let mut state = State::new(config, T0, &store);
        let raw = inline_token(json!({"aud": "api"}));
        assert!(matches!(
            state.decide(&raw, T0, &store),
            Decision::Accept { .. }
        ));
        assert!(state.verified.is_empty());
        // Every request is validated.
        state.config.providers[0].audiences = vec!["elsewhere".to_owned()];
        assert_eq!(
            state.decide(&raw, T0, &store),
            Decision::Reject(Rejection::AudienceNotAccepted)
        );
    }

    #[test]
    fn shared_values_round_trip() {
        assert_eq!(
            decode_shared(&encode_shared(42, b"{}\n")),
            Some((42, &b"{}\n"[..]))
        );
        assert_eq!(decode_shared(b"x\n{}"), None);
        assert_eq!(decode_shared(b""), None);
    }
}
