//! `jwt-auth`: checks the JWT bearer token of every request against its issuer's keys
//! (JWKS, inline or fetched from an upstream and refreshed), rejects requests without a
//! valid one, and forwards chosen claims to the upstream as request headers.
//!
//! Config (the proxy hands over its YAML `config:` as JSON; unknown keys fail it):
//!
//! ```yaml
//! config:
//!   providers:                              # required, at least one; picked by the token's `iss`
//!     - issuer: https://issuer.example.com  # required, compared exactly with `iss`
//!       audiences: [edge-api]               # optional (a list or one string): `aud` (string
//!                                           #   or array) must contain one; none: not checked
//!       jwks: { keys: [ ... ] }             # inline JWKS, or (exactly one of the two):
//!     - issuer: https://idp.example.com
//!       jwks_upstream:
//!         upstream: idp                     # required; must be in the filter's `callouts`
//!         path: /.well-known/jwks.json      # default /.well-known/jwks.json
//!         refresh: 300s                     # default 300s; at least 100ms
//!         timeout: 5s                       # default 5s: the fetch's callout timeout
//!         authority: idp.example.com        # default: the upstream's name (`:authority`)
//!   token_from:                             # default [{header: authorization, prefix: "Bearer "}]
//!     - { header: authorization, prefix: "Bearer " }   # prefix compared case-insensitively
//!     - { query: access_token }             # a parameter of the query string
//!     - { cookie: session }
//!   forward_claims: { sub: x-user-id, email: x-user-email }   # claim -> request header
//!   clock_skew: 60s                         # default 60s (`500ms`, `30s`, `5m`, `1h`, or seconds)
//!   allow_missing: false                    # default false
//!   token_cache: 100                        # default 100: valid tokens kept per instance;
//!                                           #   0 to 10000, 0 turns the cache off
//! ```
//!
//! Per request (`on_http_request_headers`):
//! 1. Every `forward_claims` header the client sent is removed, whatever happens next.
//! 2. The token is taken from the first `token_from` source that has one. None: `401` with
//!    `WWW-Authenticate: Bearer` and `{"error":"missing_token"}`, unless `allow_missing`
//!    (then the request goes on, without claim headers).
//! 3. A token found valid lately is taken from the cache of verified tokens (see below), with
//!    the claim headers it had, if its provider's keys are still those that verified it and
//!    its time claims still hold (with `clock_skew`); then step 5.
//! 4. Otherwise the token must be a compact JWS with `alg` one of RS256/384/512, PS256/384/512,
//!    ES256, ES384, EdDSA (Ed25519), HS256/384/512 (`none` never is) and no `crit`; its
//!    `iss` picks the provider; with a `kid` the key is the provider's key with that `kid`,
//!    without one every key is tried. A key is used only for the algorithms of its type (HS*
//!    `oct`, RS*/PS* `RSA`, ES256 `EC` P-256, ES384 `EC` P-384, EdDSA `OKP` Ed25519) and, if
//!    it has an `alg`, that algorithm only. Then, with `clock_skew` of leeway: `exp` (if
//!    present) must not have passed, `nbf` must have come, `iat` must not be in the future;
//!    and `aud` must name one of the provider's `audiences`. A failure is `401` with
//!    `WWW-Authenticate: Bearer error="invalid_token", error_description="<reason>"` and
//!    `{"error":"invalid_token","error_description":"<reason>"}` (see [`Rejection`]).
//! 5. A valid token: each `forward_claims` claim present in it is set as its header (strings
//!    as they are, other values as JSON text; a value with control characters is skipped),
//!    the token's header (`Authorization`) is left as it is, and the request goes on. A token
//!    validated in step 4 enters the cache.
//!
//! JWKS from an upstream: the root context fetches `GET <path>` in `on_configure` (unless
//! shared data holds one fetched less than `refresh` ago) and again every `refresh`, driven by
//! `on_tick`. A failed fetch (callout failure, non-2xx, unusable JWKS) keeps the keys it
//! had and is retried after 1 s, 2 s, 4 s, ... up to `refresh`. Each JWKS fetched goes to
//! shared data (`jwt-auth.jwks.<issuer>`), where new instances and instances without keys
//! find it. A token with an unknown `kid` brings the next fetch forward (at most once per
//! 30 s, or per `refresh` if shorter). A request whose issuer has no keys yet waits (paused)
//! for the fetch under way and is resumed, or answered, when it ends; if it failed, waiting
//! requests (and new ones, until a fetch succeeds) get `503 {"error":"jwks_unavailable"}`.
//! A JWKS upstream not listed in the filter's `callouts` fails the configuration.
//!
//! Notes:
//! - edgeward lets a root context resume or answer a paused request, but not write its
//!   headers; so a request that waits for a JWKS gets its claim headers set before it pauses,
//!   from its still unverified token. It reaches the upstream only if the root context then
//!   finds that same token valid; every other ending (401, 503, the route's 504) is a local
//!   response. (With `on_error: fail_open` a crash lets any request through unchecked: use
//!   the default `fail_closed` for this filter.)
//! - With `isolation: request` instances never tick: each takes the keys from shared data
//!   and, when they are older than `refresh`, fetches anew and lets its request wait for that
//!   fetch (which refreshes shared data for the next ones).
//! - The cache of verified tokens (as Envoy's `jwt_cache_config`) spares a client's repeated
//!   token the parsing and signature check. It holds only tokens found valid (so junk cannot
//!   push them out), up to `token_cache` of them, the oldest dropped first; a token plus its
//!   claim headers over 4 KiB is not cached, so it takes at most `token_cache` × 4 KiB (and a
//!   little per entry). An entry is dropped when its time claims stop holding or when its
//!   provider's keys change (any JWKS fetched or taken from shared data, even an identical
//!   one, so a withdrawn key stops accepting at once). Each instance has its own: with
//!   `isolation: request` every instance starts empty and the cache does nothing.
//! - Signature checks dominate a verification's guest CPU time (HMAC and EdDSA are the cheapest,
//!   ES384 the dearest; see docs/benchmarks.md); a token from the cache costs a hash lookup.
//!
//! The JWT and JWKS logic lives in modules that never call the SDK (`jwt`, `jwk`, `verify`,
//! `validate`, `extract`, `config`, `response`, `cache`, `state`), tested natively; `filter` is the
//! thin SDK glue, exercised by the end-to-end tests (tests/e2e/jwt.rs).

pub mod cache;
pub mod config;
pub mod extract;
pub mod header_map;
pub mod jwk;
pub mod jwt;
pub mod response;
pub mod state;
pub mod validate;
pub mod verify;

mod filter;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod test_keys;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| Box::new(filter::Root::new(context_id)));
}}

/// Why a token was turned away; [`Rejection::reason`] is the `error_description`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Not three base64url parts of JSON objects, a header without a string `alg`, ...
    Malformed,
    /// `alg: none`, an unknown algorithm, or one no key of the provider may be used with.
    AlgorithmNotAllowed,
    /// A `crit` header parameter: no extension is understood.
    UnsupportedCritical,
    /// No provider for the token's `iss` (or no string `iss`).
    IssuerNotAccepted,
    /// The token's `kid` is none of the provider's keys.
    UnknownKeyId,
    SignatureInvalid,
    Expired,
    NotYetValid,
    IssuedInFuture,
    AudienceNotAccepted,
    /// A time claim that is not a number.
    InvalidClaim(&'static str),
}

impl Rejection {
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed token",
            Rejection::AlgorithmNotAllowed => "algorithm not allowed",
            Rejection::UnsupportedCritical => "unsupported critical header",
            Rejection::IssuerNotAccepted => "issuer not accepted",
            Rejection::UnknownKeyId => "unknown key id",
            Rejection::SignatureInvalid => "signature invalid",
            Rejection::Expired => "token expired",
            Rejection::NotYetValid => "token not yet valid",
            Rejection::IssuedInFuture => "token issued in the future",
            Rejection::AudienceNotAccepted => "audience not accepted",
            Rejection::InvalidClaim("exp") => "invalid exp claim",
            Rejection::InvalidClaim("nbf") => "invalid nbf claim",
            Rejection::InvalidClaim("iat") => "invalid iat claim",
            Rejection::InvalidClaim(_) => "invalid claim",
        }
    }
}
