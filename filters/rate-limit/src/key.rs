//! A limit's key for one request: the values of its parts, and the identity the shared table
//! knows it by.

use sha2::{Digest, Sha256};

use crate::config::KeyPart;

/// Most bytes of one part's value shown in a log line.
const SHOWN_BYTES: usize = 64;

/// A key as the shared table stores it: 128 bits of its SHA-256 digest (no client can make
/// its key collide with another's), and more bits of it to pick the key's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub id: [u8; 16],
    pub spread: u64,
}

impl KeyPart {
    /// The property holding the part's value.
    pub fn property(&self) -> Vec<&str> {
        match self {
            KeyPart::ClientAddress => vec!["source", "effective_address"],
            KeyPart::Route => vec!["route_name"],
            KeyPart::Header(name) | KeyPart::Claim { header: name, .. } => {
                vec!["request", "headers", name]
            }
        }
    }

    fn label(&self) -> String {
        match self {
            KeyPart::ClientAddress => "client_address".to_owned(),
            KeyPart::Route => "route".to_owned(),
            KeyPart::Header(name) => format!("header {name}"),
            KeyPart::Claim { claim, .. } => format!("claim {claim}"),
        }
    }
}

/// The values of `parts` for this request, read with `property`; `None` if one is missing
/// (the limit then does not apply to the request).
pub fn values<F>(parts: &[KeyPart], mut property: F) -> Option<Vec<Vec<u8>>>
where
    F: FnMut(&[&str]) -> Option<Vec<u8>>,
{
    parts
        .iter()
        .map(|part| property(&part.property()))
        .collect()
}

/// The identity of a key made of `values`: each is length-prefixed, so that no two different
/// lists of values give the same bytes.
pub fn identity(values: &[Vec<u8>]) -> Identity {
    let mut digest = Sha256::new();
    for value in values {
        digest.update((value.len() as u64).to_le_bytes());
        digest.update(value);
    }
    let digest: [u8; 32] = digest.finalize().into();
    let (id, rest) = digest.split_at(16);
    let mut identity = Identity {
        id: [0; 16],
        spread: 0,
    };
    identity.id.copy_from_slice(id);
    let mut spread = [0; 8];
    spread.copy_from_slice(&rest[..8]);
    identity.spread = u64::from_le_bytes(spread);
    identity
}

/// The key for a log line: `client_address=192.0.2.10, header x-api-key=abc`, each value
/// escaped and cut at 64 bytes.
pub fn describe(parts: &[KeyPart], values: &[Vec<u8>]) -> String {
    if parts.is_empty() {
        return "(every request)".to_owned();
    }
    let shown: Vec<String> = parts
        .iter()
        .zip(values)
        .map(|(part, value)| {
            let cut = value.get(..SHOWN_BYTES).unwrap_or(value);
            let more = if cut.len() < value.len() { "..." } else { "" };
            format!("{}={}{more}", part.label(), cut.escape_ascii())
        })
        .collect();
    shown.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> Vec<KeyPart> {
        vec![
            KeyPart::ClientAddress,
            KeyPart::Header("x-api-key".into()),
            KeyPart::Claim {
                claim: "sub".into(),
                header: "x-user-id".into(),
            },
            KeyPart::Route,
        ]
    }

    #[test]
    fn values_come_from_the_properties_and_a_missing_one_means_none() {
        let props = |path: &[&str]| match path {
            ["source", "effective_address"] => Some(b"192.0.2.10".to_vec()),
            ["request", "headers", "x-api-key"] => Some(b"k1".to_vec()),
            ["request", "headers", "x-user-id"] => Some(b"alice".to_vec()),
            ["route_name"] => Some(b"api".to_vec()),
            _ => None,
        };
        let values = values(&parts(), props).unwrap();
        assert_eq!(
            values,
            vec![
                b"192.0.2.10".to_vec(),
                b"k1".to_vec(),
                b"alice".to_vec(),
                b"api".to_vec()
            ]
        );
        assert_eq!(
            describe(&parts(), &values),
            "client_address=192.0.2.10, header x-api-key=k1, claim sub=alice, route=api"
        );
        let without_route = |path: &[&str]| (path != ["route_name"]).then(|| b"v".to_vec());
        assert_eq!(super::values(&parts(), without_route), None);
        assert_eq!(super::values(&[], |_: &[&str]| None), Some(vec![]));
        assert_eq!(describe(&[], &[]), "(every request)");
    }

    #[test]
    fn identities_tell_every_list_of_values_apart() {
        let of =
            |values: &[&[u8]]| identity(&values.iter().map(|v| v.to_vec()).collect::<Vec<_>>());
        assert_eq!(of(&[b"a", b"b"]), of(&[b"a", b"b"]));
        assert_ne!(of(&[b"a", b"b"]), of(&[b"ab", b""]));
        assert_ne!(of(&[b"ab"]), of(&[b"a", b"b"]));
        assert_ne!(of(&[b"a"]).id, of(&[b"b"]).id);
        assert_ne!(of(&[b"a"]).spread, of(&[b"b"]).spread);
    }

    #[test]
    fn log_lines_show_values_escaped_and_cut() {
        let long = vec![b'x'; 100];
        let shown = describe(
            &[KeyPart::Header("h".into()), KeyPart::Route],
            &[long, b"a\nb\xff".to_vec()],
        );
        assert_eq!(
            shown,
            format!("header h={}..., route=a\\nb\\xff", "x".repeat(64))
        );
    }
}
