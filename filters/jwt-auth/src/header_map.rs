//! The request's headers as the host serialized them, read in place: the SDK's
//! `get_http_request_headers` copies every name and value into a `String` of its own (two
//! allocations per header, most of this filter's work per request when the token is cached)
//! and traps on a value that is not UTF-8.

/// A header map in the proxy-wasm encoding: the count, the sizes, then each name and value
/// followed by a NUL.
pub struct HeaderMap {
    bytes: Vec<u8>,
}

impl HeaderMap {
    /// The request's headers (pseudo-headers included), or none if the host has none.
    pub fn request() -> HeaderMap {
        HeaderMap {
            bytes: host::request_header_pairs(),
        }
    }

    #[cfg(test)]
    pub fn from_bytes(bytes: Vec<u8>) -> HeaderMap {
        HeaderMap { bytes }
    }

    /// The pairs, in order. A value that is not UTF-8 reads as empty: it holds no token, and
    /// its name still counts (a client's copy of a claim header is removed whatever its
    /// bytes). A name that is not UTF-8 (no host sends one) leaves its pair out, and a
    /// malformed map reads as far as it makes sense.
    pub fn pairs(&self) -> Vec<(&str, &str)> {
        let bytes = self.bytes.as_slice();
        let Some(count) = read_u32(bytes, 0) else {
            return Vec::new();
        };
        let mut pairs = Vec::with_capacity(count.min(64));
        let mut at = count.saturating_mul(8).saturating_add(4);
        for n in 0..count {
            let sizes = (read_u32(bytes, 4 + n * 8), read_u32(bytes, 8 + n * 8));
            let (Some(name_len), Some(value_len)) = sizes else {
                break;
            };
            let Some(name) = take(bytes, &mut at, name_len) else {
                break;
            };
            let Some(value) = take(bytes, &mut at, value_len) else {
                break;
            };
            if let Ok(name) = std::str::from_utf8(name) {
                pairs.push((name, std::str::from_utf8(value).unwrap_or_default()));
            }
        }
        pairs
    }
}

fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let word = bytes.get(at..at.checked_add(4)?)?;
    let word: [u8; 4] = word.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(word)).ok()
}

/// The `len` bytes at `*at`, then past them and their NUL.
fn take<'a>(bytes: &'a [u8], at: &mut usize, len: usize) -> Option<&'a [u8]> {
    let end = at.checked_add(len)?;
    let piece = bytes.get(*at..end)?;
    *at = end.checked_add(1)?;
    Some(piece)
}

mod host {
    use std::ptr::null_mut;

    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_get_header_map_pairs(
            map_type: u32,
            return_map_data: *mut *mut u8,
            return_map_size: *mut usize,
        ) -> u32;
    }

    /// `MapType::HttpRequestHeaders`.
    const REQUEST_HEADERS: u32 = 0;

    /// The serialized request headers; empty if the host has none or answers otherwise.
    pub fn request_header_pairs() -> Vec<u8> {
        let mut data: *mut u8 = null_mut();
        let mut size: usize = 0;
        // SAFETY: both out-pointers point to live locals for the whole call.
        let status = unsafe { proxy_get_header_map_pairs(REQUEST_HEADERS, &mut data, &mut size) };
        if status != 0 || data.is_null() {
            return Vec::new();
        }
        // SAFETY: the host put the map in memory it asked the SDK's `proxy_on_memory_allocate`
        // for, which is a `Vec<u8>` of capacity `size` from the global allocator, forgotten;
        // this takes ownership of it back, as the SDK's own `get_map` does.
        unsafe { Vec::from_raw_parts(data, size, size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pairs` in the proxy-wasm encoding.
    fn encode(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (name, value) in pairs {
            out.extend((name.len() as u32).to_le_bytes());
            out.extend((value.len() as u32).to_le_bytes());
        }
        for (name, value) in pairs {
            out.extend(*name);
            out.push(0);
            out.extend(*value);
            out.push(0);
        }
        out
    }

    #[test]
    fn reads_every_pair_in_order() {
        let map = HeaderMap::from_bytes(encode(&[
            (b":path", b"/a?b=c"),
            (b"authorization", b"Bearer t"),
            (b"cookie", b""),
            (b"authorization", b"Basic x"),
        ]));
        assert_eq!(
            map.pairs(),
            vec![
                (":path", "/a?b=c"),
                ("authorization", "Bearer t"),
                ("cookie", ""),
                ("authorization", "Basic x"),
            ]
        );
        assert!(HeaderMap::from_bytes(Vec::new()).pairs().is_empty());
        assert!(HeaderMap::from_bytes(encode(&[])).pairs().is_empty());
    }

    #[test]
    fn values_that_are_not_utf8_read_as_empty() {
        let map = HeaderMap::from_bytes(encode(&[
            (b"x-user-id", b"caf\xe9"),
            (b"x-\xff", b"1"),
            (b"authorization", b"Bearer t"),
        ]));
        assert_eq!(
            map.pairs(),
            vec![("x-user-id", ""), ("authorization", "Bearer t")]
        );
    }

    #[test]
    fn a_malformed_map_reads_as_far_as_it_makes_sense() {
        let whole = encode(&[(b"a", b"1"), (b"b", b"2")]);
        // Cut anywhere: never a panic, only whole pairs from the start.
        let all = [("a", "1"), ("b", "2")];
        for end in 0..whole.len() {
            let map = HeaderMap::from_bytes(whole[..end].to_vec());
            let pairs = map.pairs();
            assert!(all.starts_with(&pairs), "cut at {end}: {pairs:?}");
        }
        // A count far larger than the map.
        let mut huge = whole.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(HeaderMap::from_bytes(huge).pairs().len() <= 2);
    }
}
