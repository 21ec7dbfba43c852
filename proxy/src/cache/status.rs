//! How a response relates to the cache, told to the client in `Cache-Status` (RFC 9211) and
//! counted in metrics.

use std::fmt::Write;

use http::HeaderValue;
use pingora::cache::{CachePhase, NoCacheReason};

const CACHE_NAME: &str = "edgeward";

/// What the cache did for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Served fresh from the cache.
    Hit,
    /// Served stale while a background request refreshes it.
    StaleWhileRevalidate,
    /// The origin failed; served stale instead (`fwd_status` when it answered 5xx).
    StaleIfError { fwd_status: Option<u16> },
    /// Stale; the origin confirmed it with a 304 and it was served from the cache.
    Revalidated,
    /// Stale; the origin sent a new response.
    Expired,
    /// Not in the cache (`detail`: why the response is not stored; none when it is taken for
    /// storage).
    Miss { detail: Option<&'static str> },
    /// The request skipped the cache (a bypass rule, or a method the cache does not serve).
    Bypass { detail: &'static str },
}

impl Outcome {
    /// Reads the outcome off the cache phase at response time. `upstream_status` is the
    /// status of the origin's response head, when the origin answered.
    pub(crate) fn from_phase(phase: CachePhase, upstream_status: Option<u16>) -> Outcome {
        match phase {
            CachePhase::Hit => Outcome::Hit,
            CachePhase::StaleUpdating => Outcome::StaleWhileRevalidate,
            // A stale object served in the response phase was served because the origin failed.
            CachePhase::Stale => Outcome::StaleIfError {
                fwd_status: upstream_status,
            },
            CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => Outcome::Revalidated,
            CachePhase::Expired => Outcome::Expired,
            CachePhase::Miss => Outcome::Miss { detail: None },
            CachePhase::Disabled(reason) => Outcome::Miss {
                detail: Some(reason_detail(reason)),
            },
            CachePhase::Bypass => Outcome::Miss {
                detail: Some("predicted-uncacheable"),
            },
            CachePhase::Uninit | CachePhase::CacheKey => Outcome::Miss { detail: None },
        }
    }

    /// The `Cache-Status` value; `ttl` is the stored response's remaining freshness in
    /// seconds (negative when stale), for outcomes served from the cache.
    pub(crate) fn header_value(self, ttl: Option<i64>) -> HeaderValue {
        // One buffer, written in place: this runs on every cached route's response. Writing
        // to a String cannot fail.
        let mut value = String::with_capacity(64);
        value.push_str(CACHE_NAME);
        value.push_str("; ");
        match self {
            Outcome::Hit | Outcome::StaleWhileRevalidate => value.push_str("hit"),
            Outcome::StaleIfError { fwd_status } => {
                value.push_str("fwd=stale");
                if let Some(status) = fwd_status {
                    let _ = write!(value, "; fwd-status={status}");
                }
            }
            Outcome::Revalidated => value.push_str("fwd=stale; fwd-status=304"),
            // Never `stored`: the head leaves before the body has arrived, and a body the
            // origin breaks off is not stored after all.
            Outcome::Expired => value.push_str("fwd=stale"),
            Outcome::Miss { detail } => {
                value.push_str("fwd=miss");
                if let Some(detail) = detail {
                    let _ = write!(value, "; detail={detail}");
                }
            }
            Outcome::Bypass { detail } => {
                let _ = write!(value, "fwd=bypass; detail={detail}");
            }
        }
        if let (Some(ttl), true) = (ttl, self.served_from_cache()) {
            let _ = write!(value, "; ttl={ttl}");
        }
        match self {
            Outcome::StaleWhileRevalidate => value.push_str("; detail=stale-while-revalidate"),
            Outcome::StaleIfError { .. } => value.push_str("; detail=stale-if-error"),
            _ => {}
        }
        HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(CACHE_NAME))
    }

    /// Whether the body came from the cache.
    pub(crate) fn served_from_cache(self) -> bool {
        matches!(
            self,
            Outcome::Hit
                | Outcome::StaleWhileRevalidate
                | Outcome::StaleIfError { .. }
                | Outcome::Revalidated
        )
    }

    /// The `result` label of `edgeward_cache_lookups_total`.
    pub(crate) fn metric_label(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::StaleWhileRevalidate | Outcome::StaleIfError { .. } => "stale",
            Outcome::Revalidated => "revalidated",
            Outcome::Expired => "expired",
            Outcome::Miss { .. } => "miss",
            Outcome::Bypass { .. } => "bypass",
        }
    }
}

/// A `detail` token for why a response was not stored.
fn reason_detail(reason: NoCacheReason) -> &'static str {
    match reason {
        NoCacheReason::Custom(detail) => detail,
        NoCacheReason::OriginNotCache => "uncacheable",
        NoCacheReason::ResponseTooLarge | NoCacheReason::PredictedResponseTooLarge => "too-large",
        NoCacheReason::CacheLockTimeout => "lock-timeout",
        NoCacheReason::CacheLockGiveUp => "uncacheable",
        NoCacheReason::StorageError | NoCacheReason::InternalError => "storage-error",
        NoCacheReason::UpstreamError => "upstream-error",
        other => other.as_str(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(outcome: Outcome, ttl: Option<i64>) -> String {
        outcome.header_value(ttl).to_str().unwrap().to_string()
    }

    #[test]
    fn hits_carry_their_ttl() {
        assert_eq!(text(Outcome::Hit, Some(42)), "edgeward; hit; ttl=42");
        assert_eq!(
            text(Outcome::StaleWhileRevalidate, Some(-3)),
            "edgeward; hit; ttl=-3; detail=stale-while-revalidate"
        );
    }

    #[test]
    fn forwarded_requests_say_why_and_what_came_back() {
        assert_eq!(
            text(Outcome::Miss { detail: None }, None),
            "edgeward; fwd=miss"
        );
        assert_eq!(
            text(
                Outcome::from_phase(
                    CachePhase::Disabled(NoCacheReason::Custom("no-store")),
                    None
                ),
                None
            ),
            "edgeward; fwd=miss; detail=no-store"
        );
        assert_eq!(
            text(Outcome::Revalidated, Some(60)),
            "edgeward; fwd=stale; fwd-status=304; ttl=60"
        );
        assert_eq!(
            text(
                Outcome::StaleIfError {
                    fwd_status: Some(503)
                },
                Some(-10)
            ),
            "edgeward; fwd=stale; fwd-status=503; ttl=-10; detail=stale-if-error"
        );
        assert_eq!(text(Outcome::Expired, Some(5)), "edgeward; fwd=stale");
        assert_eq!(
            text(Outcome::Bypass { detail: "cookie" }, None),
            "edgeward; fwd=bypass; detail=cookie"
        );
    }
}
