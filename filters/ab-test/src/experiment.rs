//! The experiment as configured, and the decision for one request: which bucket, and why.
//! SDK-free, tested natively.

use crate::assign::{pick, stable_hash, Contender};
use crate::cookie::{self, Cookie};

/// The whole configuration, checked (see [`Experiment::parse`](crate::config)).
#[derive(Debug)]
pub struct Experiment {
    /// In configuration order (by name); at least one has a weight.
    pub buckets: Vec<Bucket>,
    /// `buckets`' weights and name hashes, for [`pick`].
    pub(crate) contenders: Vec<Contender>,
    pub sticky: Sticky,
    /// The request header that tells the upstream the bucket (lower case).
    pub bucket_header: String,
    /// The request header that may force a bucket (lower case), when configured.
    pub force_header: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Bucket {
    /// A safe token: letters, digits, `-` and `_`.
    pub name: String,
    pub weight: u32,
    /// The upstream its requests go to; `None` keeps the route's.
    pub upstream: Option<String>,
    /// Request headers set (replacing any value) for its requests; lower-case names.
    pub request_headers: Vec<(String, String)>,
    pub prefix_rewrite: Option<PrefixRewrite>,
    /// The `Set-Cookie` value that puts a client in this bucket (cookie stickiness only).
    pub set_cookie: Option<String>,
}

/// Replaces a leading `from` of the path with `to`.
#[derive(Debug, PartialEq, Eq)]
pub struct PrefixRewrite {
    pub from: String,
    pub to: String,
}

impl PrefixRewrite {
    /// The rewritten path (query included), or `None` when `path` does not start with `from`.
    pub fn apply(&self, path: &str) -> Option<String> {
        path.strip_prefix(self.from.as_str())
            .map(|rest| format!("{}{rest}", self.to))
    }
}

/// How a client keeps its bucket.
#[derive(Debug, PartialEq, Eq)]
pub enum Sticky {
    /// A cookie naming the bucket; new clients are placed by a random id.
    Cookie(Cookie),
    /// The hash of a key of the request.
    Hash(HashKey),
}

#[derive(Debug, PartialEq, Eq)]
pub enum HashKey {
    /// `source.effective_address`: the client's IP, behind trusted proxies the forwarded one.
    ClientAddress,
    /// A request header (lower case); without it, the client's address.
    Header(String),
    /// A cookie; without it, the client's address.
    Cookie(String),
}

/// What the filter reads of a request.
pub trait Request {
    /// A request header's value (repeated headers joined with `,`), or `None`.
    fn header(&self, name: &str) -> Option<Vec<u8>>;
    /// The client's IP address as text, or `None`.
    fn client_address(&self) -> Option<Vec<u8>>;
    /// A new random id, for a client seen for the first time.
    fn random_id(&self) -> u64;
}

/// The bucket of a request and why it is that one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// An index into [`Experiment::buckets`].
    pub bucket: usize,
    pub how: How,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// The force header named it.
    Forced,
    /// The client's cookie named it.
    Returning,
    /// No cookie: placed by a random id.
    New,
    /// A cookie naming no configured bucket (removed, or forged): placed anew.
    Reassigned,
    /// By the hash of the configured key (or of the client's address, without the key).
    Hashed,
    /// Hash stickiness without any key nor address: placed by a random id, not sticky.
    Unkeyed,
}

impl How {
    /// Whether the client must be given the cookie: it had none naming a bucket.
    pub fn sets_cookie(self) -> bool {
        matches!(self, How::New | How::Reassigned)
    }

    pub fn describe(self) -> &'static str {
        match self {
            How::Forced => "forced",
            How::Returning => "returning client",
            How::New => "new client",
            How::Reassigned => "reassigned client",
            How::Hashed => "hashed",
            How::Unkeyed => "no key, random",
        }
    }
}

impl Experiment {
    /// The bucket for `request`: the forced one if the force header (when configured) names
    /// a bucket; else with cookies, the bucket its cookie names, or a new one from a random
    /// id; with a hash, the one its key hashes to.
    pub fn assign(&self, request: &impl Request) -> Assignment {
        if let Some(bucket) = self.forced(request) {
            return Assignment {
                bucket,
                how: How::Forced,
            };
        }
        match &self.sticky {
            Sticky::Cookie(cookie) => self.by_cookie(cookie, request),
            Sticky::Hash(key) => self.by_hash(key, request),
        }
    }

    /// The index of the bucket called `name`.
    pub fn bucket_named(&self, name: &str) -> Option<usize> {
        self.buckets.iter().position(|bucket| bucket.name == name)
    }

    fn forced(&self, request: &impl Request) -> Option<usize> {
        let value = request.header(self.force_header.as_deref()?)?;
        self.bucket_named(std::str::from_utf8(&value).ok()?.trim())
    }

    fn by_cookie(&self, cookie: &Cookie, request: &impl Request) -> Assignment {
        let header = request.header("cookie").unwrap_or_default();
        let mut had_cookie = false;
        for value in cookie::values(&header, &cookie.name) {
            had_cookie = true;
            if let Some(bucket) = self.bucket_named(value) {
                return Assignment {
                    bucket,
                    how: How::Returning,
                };
            }
        }
        Assignment {
            bucket: self.pick(request.random_id()),
            how: if had_cookie {
                How::Reassigned
            } else {
                How::New
            },
        }
    }

    fn by_hash(&self, key: &HashKey, request: &impl Request) -> Assignment {
        let value = match key {
            HashKey::ClientAddress => None,
            HashKey::Header(name) => request.header(name),
            HashKey::Cookie(name) => request.header("cookie").and_then(|header| {
                cookie::values(&header, name)
                    .next()
                    .map(|value| value.as_bytes().to_vec())
            }),
        };
        let key = value
            .filter(|value| !value.is_empty())
            .or_else(|| request.client_address());
        match key {
            Some(key) => Assignment {
                bucket: self.pick(stable_hash(&key)),
                how: How::Hashed,
            },
            None => Assignment {
                bucket: self.pick(request.random_id()),
                how: How::Unkeyed,
            },
        }
    }

    /// The bucket `id` lands in; the configuration guarantees a bucket with a weight (else
    /// the first).
    fn pick(&self, id: u64) -> usize {
        pick(id, &self.contenders).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::collections::BTreeMap;

    use super::*;

    /// A request with these headers and address; random ids count up from `next_id`.
    #[derive(Default)]
    struct FakeRequest {
        headers: BTreeMap<&'static str, Vec<u8>>,
        address: Option<&'static str>,
        next_id: Cell<u64>,
        ids_drawn: Cell<usize>,
    }

    impl FakeRequest {
        fn with(headers: &[(&'static str, &str)]) -> FakeRequest {
            FakeRequest {
                headers: headers
                    .iter()
                    .map(|(name, value)| (*name, value.as_bytes().to_vec()))
                    .collect(),
                address: Some("203.0.113.7"),
                ..FakeRequest::default()
            }
        }
    }

    impl Request for FakeRequest {
        fn header(&self, name: &str) -> Option<Vec<u8>> {
            self.headers.get(name).cloned()
        }
        fn client_address(&self) -> Option<Vec<u8>> {
            self.address.map(|address| address.as_bytes().to_vec())
        }
        fn random_id(&self) -> u64 {
            self.ids_drawn.set(self.ids_drawn.get() + 1);
            let id = self.next_id.get();
            self.next_id.set(id + 1);
            crate::assign::mix(id)
        }
    }

    fn experiment(json: &str) -> Experiment {
        Experiment::parse(Some(json.as_bytes())).unwrap()
    }

    const COOKIES: &str =
        r#"{"buckets": {"a": 50, "b": 50, "old": 0}, "force_header": "x-ab-force"}"#;

    fn name(experiment: &Experiment, assignment: Assignment) -> (&str, How) {
        (
            experiment.buckets[assignment.bucket].name.as_str(),
            assignment.how,
        )
    }

    #[test]
    fn a_returning_client_keeps_the_bucket_its_cookie_names() {
        let experiment = experiment(COOKIES);
        for bucket in ["a", "b", "old"] {
            let request = FakeRequest::with(&[("cookie", &format!("x=1; ab_bucket={bucket}"))]);
            for _ in 0..10 {
                let assignment = experiment.assign(&request);
                assert_eq!(name(&experiment, assignment), (bucket, How::Returning));
                assert!(!assignment.how.sets_cookie());
            }
            assert_eq!(
                request.ids_drawn.get(),
                0,
                "no random id for a known client"
            );
        }
    }

    #[test]
    fn a_new_client_is_placed_by_a_random_id_and_given_the_cookie() {
        let experiment = experiment(COOKIES);
        let mut seen = BTreeMap::new();
        for headers in [vec![], vec![("cookie", "session=1")]] {
            let request = FakeRequest::with(&headers);
            for _ in 0..200 {
                let assignment = experiment.assign(&request);
                assert_eq!(assignment.how, How::New);
                assert!(assignment.how.sets_cookie());
                *seen.entry(name(&experiment, assignment).0).or_insert(0) += 1;
            }
            assert_eq!(request.ids_drawn.get(), 200);
        }
        // Both live buckets get new clients; the one of weight 0 none.
        assert_eq!(seen.keys().copied().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn a_cookie_naming_no_bucket_is_reassigned() {
        let experiment = experiment(COOKIES);
        for value in ["gone", "A", "", "a b", "\"\"", "<script>"] {
            let request = FakeRequest::with(&[("cookie", &format!("ab_bucket={value}"))]);
            let assignment = experiment.assign(&request);
            assert_eq!(assignment.how, How::Reassigned, "{value}");
            assert_ne!(name(&experiment, assignment).0, "old");
        }
        // A stale copy first and a good one after (two paths): the good one counts.
        let request = FakeRequest::with(&[("cookie", "ab_bucket=gone; ab_bucket=b")]);
        assert_eq!(
            name(&experiment, experiment.assign(&request)),
            ("b", How::Returning)
        );
    }

    #[test]
    fn the_force_header_wins_only_with_a_known_bucket_and_only_when_configured() {
        let experiment = experiment(COOKIES);
        let forced = FakeRequest::with(&[("x-ab-force", " old "), ("cookie", "ab_bucket=a")]);
        let assignment = experiment.assign(&forced);
        assert_eq!(name(&experiment, assignment), ("old", How::Forced));
        assert!(
            !assignment.how.sets_cookie(),
            "forcing leaves the cookie alone"
        );

        let unknown = FakeRequest::with(&[("x-ab-force", "nope"), ("cookie", "ab_bucket=a")]);
        assert_eq!(
            name(&experiment, experiment.assign(&unknown)),
            ("a", How::Returning)
        );
        let not_utf8 = FakeRequest {
            headers: [("x-ab-force", b"\xff".to_vec())].into(),
            ..FakeRequest::default()
        };
        assert_eq!(experiment.assign(&not_utf8).how, How::New);

        let unconfigured = self::experiment(r#"{"buckets": {"a": 1, "b": 0}}"#);
        let request = FakeRequest::with(&[("x-ab-force", "b")]);
        assert_eq!(
            name(&unconfigured, unconfigured.assign(&request)),
            ("a", How::New)
        );
    }

    #[test]
    fn hashing_the_same_key_always_gives_the_same_bucket() {
        let experiment = experiment(
            r#"{"buckets": {"a": 50, "b": 50}, "sticky": {"hash": {"header": "x-user"}}}"#,
        );
        let mut buckets = BTreeMap::new();
        for user in 0..100 {
            let request = FakeRequest::with(&[("x-user", &format!("user-{user}"))]);
            let first = experiment.assign(&request);
            assert_eq!(first.how, How::Hashed);
            assert!(!first.how.sets_cookie());
            for _ in 0..5 {
                assert_eq!(experiment.assign(&request), first);
            }
            assert_eq!(request.ids_drawn.get(), 0);
            buckets.insert(first.bucket, ());
        }
        assert_eq!(buckets.len(), 2, "100 users reach both buckets");
    }

    #[test]
    fn without_its_key_a_request_is_hashed_by_its_address() {
        let by_header = experiment(
            r#"{"buckets": {"a": 1, "b": 1, "c": 1}, "sticky": {"hash": {"header": "x-user"}}}"#,
        );
        let by_cookie = experiment(
            r#"{"buckets": {"a": 1, "b": 1, "c": 1}, "sticky": {"hash": {"cookie": "sid"}}}"#,
        );
        let by_address = experiment(
            r#"{"buckets": {"a": 1, "b": 1, "c": 1}, "sticky": {"hash": "client_address"}}"#,
        );
        for address in ["203.0.113.7", "198.51.100.1", "2001:db8::1", "10.0.0.1"] {
            let keyless = [
                FakeRequest::default(),
                FakeRequest {
                    headers: [("x-user", Vec::new()), ("cookie", b"sid=".to_vec())].into(),
                    ..FakeRequest::default()
                },
            ];
            for mut request in keyless {
                request.address = Some(address);
                let expected = by_address.assign(&request);
                assert_eq!(by_header.assign(&request), expected);
                assert_eq!(by_cookie.assign(&request), expected);
            }
        }
        // A cookie key: the cookie's value, whatever the address.
        let mut request = FakeRequest::with(&[("cookie", "theme=dark; sid=s3cr3t")]);
        let first = by_cookie.assign(&request);
        request.address = Some("192.0.2.99");
        assert_eq!(by_cookie.assign(&request), first);
    }

    #[test]
    fn with_no_key_and_no_address_a_request_is_placed_at_random() {
        let experiment =
            experiment(r#"{"buckets": {"a": 1}, "sticky": {"hash": "client_address"}}"#);
        let request = FakeRequest::default();
        assert_eq!(experiment.assign(&request).how, How::Unkeyed);
        assert_eq!(request.ids_drawn.get(), 1);
    }

    #[test]
    fn prefix_rewrites_replace_only_a_leading_prefix() {
        let rewrite = PrefixRewrite {
            from: "/checkout/".to_owned(),
            to: "/checkout-v2/".to_owned(),
        };
        assert_eq!(
            rewrite.apply("/checkout/pay?x=1").as_deref(),
            Some("/checkout-v2/pay?x=1")
        );
        assert_eq!(rewrite.apply("/checkout").as_deref(), None);
        assert_eq!(rewrite.apply("/shop/checkout/").as_deref(), None);
        let root = PrefixRewrite {
            from: "/".to_owned(),
            to: "/b/".to_owned(),
        };
        assert_eq!(root.apply("/hello").as_deref(), Some("/b/hello"));
    }
}
