//! The deterministic pseudo-random byte sequence shared by the origin's `/bytes/{n}` and
//! [`crate::client::generated_body`], so either end can check the other's bytes by hash alone.

use bytes::Bytes;

/// Bodies are produced in chunks of this size, so even 100 MiB bodies use constant memory.
const CHUNK: usize = 64 * 1024;

/// The first `len` bytes of the sequence, yielded in [`CHUNK`]-sized pieces.
///
/// The sequence is xorshift64 from a fixed seed, each state written as 8 little-endian bytes.
/// Chunks are whole multiples of 8 bytes (except the last), so the output is one unbroken
/// sequence whatever the chunking.
pub(crate) struct Pattern {
    state: u64,
    remaining: u64,
}

impl Pattern {
    pub(crate) fn new(len: u64) -> Self {
        Pattern {
            state: 0x9E37_79B9_7F4A_7C15,
            remaining: len,
        }
    }
}

impl Iterator for Pattern {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        if self.remaining == 0 {
            return None;
        }
        let len = usize::try_from(self.remaining).map_or(CHUNK, |r| r.min(CHUNK));
        let mut chunk = vec![0u8; len];
        for word in chunk.chunks_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            word.copy_from_slice(&self.state.to_le_bytes()[..word.len()]);
        }
        self.remaining -= len as u64;
        Some(chunk.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_exact_and_sequences_are_prefixes() {
        for len in [0, 1, 7, 8, 65_535, 65_536, 65_537, 200_003] {
            let bytes: Vec<u8> = Pattern::new(len).flatten().collect();
            assert_eq!(bytes.len() as u64, len);
            let longer: Vec<u8> = Pattern::new(len + 13).flatten().collect();
            assert_eq!(&longer[..bytes.len()], &bytes[..]);
        }
    }
}
