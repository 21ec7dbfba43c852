//! The proxy-wasm map encoding: `N`, then N × (key length, value length), then N × (key, NUL,
//! value, NUL); all integers u32 little-endian, lengths without the NULs.

/// Most pairs one map may hold (as cpp-host).
const MAX_PAIRS: usize = 1024;

/// Encodes pairs; an empty map is empty bytes (the 1-byte form crashes the Rust SDK).
pub(crate) fn encode<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone) -> Vec<u8> {
    let count = pairs.clone().count();
    if count == 0 {
        return Vec::new();
    }
    let data: usize = pairs.clone().map(|(k, v)| k.len() + v.len() + 2).sum();
    let mut out = Vec::with_capacity(4 + count * 8 + data);
    out.extend_from_slice(&(count as u32).to_le_bytes());
    for (k, v) in pairs.clone() {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// Decodes a map sent by the guest; `None` when it is malformed in any way. Empty input and
/// a zero count (4 bytes) are the empty map.
pub(crate) fn decode(bytes: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let u32_at = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = u32_at(0)?;
    if count > MAX_PAIRS {
        return None;
    }
    let mut pos = 4usize.checked_add(count.checked_mul(8)?)?;
    let mut pairs = Vec::with_capacity(count);
    for i in 0..count {
        let key_len = u32_at(4 + i * 8)?;
        let value_len = u32_at(8 + i * 8)?;
        let key = bytes.get(pos..pos.checked_add(key_len)?)?;
        pos += key_len;
        if *bytes.get(pos)? != 0 {
            return None;
        }
        pos += 1;
        let value = bytes.get(pos..pos.checked_add(value_len)?)?;
        pos += value_len;
        if *bytes.get(pos)? != 0 {
            return None;
        }
        pos += 1;
        pairs.push((key, value));
    }
    (pos == bytes.len()).then_some(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_spec_example() {
        let encoded = encode([(&b":method"[..], &b"GET"[..])].into_iter());
        assert_eq!(
            encoded,
            b"\x01\x00\x00\x00\x07\x00\x00\x00\x03\x00\x00\x00:method\x00GET\x00".to_vec()
        );
        assert_eq!(decode(&encoded), Some(vec![(&b":method"[..], &b"GET"[..])]));
    }

    #[test]
    fn empty_maps() {
        assert!(encode(std::iter::empty()).is_empty());
        assert_eq!(decode(b""), Some(vec![]));
        assert_eq!(decode(&[0, 0, 0, 0]), Some(vec![]));
    }

    #[test]
    fn malformed_maps_are_rejected() {
        let good = encode([(&b"a"[..], &b"b"[..]), (&b"c"[..], &b""[..])].into_iter());
        assert!(decode(&good).is_some());
        assert!(decode(&good[..good.len() - 1]).is_none(), "truncated");
        let mut extra = good.clone();
        extra.push(7);
        assert!(decode(&extra).is_none(), "trailing bytes");
        let mut no_nul = good.clone();
        let last = no_nul.len() - 1;
        no_nul[last] = b'x';
        assert!(decode(&no_nul).is_none(), "missing NUL");
        assert!(decode(&[0xff, 0xff, 0xff, 0xff]).is_none(), "absurd count");
        assert!(
            decode(&[1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]).is_none(),
            "absurd length"
        );
        assert!(decode(&[1, 0]).is_none(), "short count");
    }
}
