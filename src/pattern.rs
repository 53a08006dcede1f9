//! The incompressible fill pattern used when the reserve is written rather than allocated.
//!
//! Zeros are the worst possible filler: btrfs with `compress-force=zstd` stored 64 MiB of
//! zeros in about 2 MiB, and deduplicating filesystems fold identical blocks into one. The
//! pattern here is a cheap pseudo-random stream (SplitMix64 over the absolute file offset
//! and a per-reserve seed), so no two blocks of a file are equal, no block is all zeros,
//! and compression finds nothing to shrink. Generating it costs about 0.2 ns a byte
//! (64 MiB in 10–13 ms on the machine of `BENCHMARKS.md`): a third of what writing the
//! bytes to tmpfs costs, about a tenth of writing them to a disk and syncing.

/// Fills `buf` with the pattern bytes that belong at absolute file offset `offset`, for
/// the stream identified by `seed`.
///
/// The output depends only on `(seed, offset + i)` for each byte `i`, so filling a range
/// in one call or in several gives the same bytes.
///
/// ```
/// let mut a = [0u8; 8192];
/// disk_reserve::pattern::fill(&mut a, 7, 0);
/// assert_ne!(a[..4096], a[4096..], "two 4 KiB blocks are never equal");
/// assert!(a.iter().any(|&b| b != 0));
/// ```
pub fn fill(buf: &mut [u8], seed: u64, offset: u64) {
    let mut pos = 0usize;
    let mut abs = offset;
    // Unaligned head: bytes from the word that `offset` falls in.
    while pos < buf.len() && abs % 8 != 0 {
        let word = word_at(seed, abs / 8).to_le_bytes();
        buf[pos] = word[(abs % 8) as usize];
        pos += 1;
        abs += 1;
    }
    // Aligned body, one 64-bit word at a time. The SplitMix64 state of word `i` is
    // `seed + (i + 1) * GAMMA`; stepping it by `GAMMA` gives the same (wrapping) value
    // as multiplying afresh, for one multiplication less per word (a third of the cost).
    let mut chunks = buf[pos..].chunks_exact_mut(8);
    let mut state = state_at(seed, abs / 8);
    for chunk in &mut chunks {
        chunk.copy_from_slice(&mix(state).to_le_bytes());
        state = state.wrapping_add(GAMMA);
    }
    // Tail shorter than a word.
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let word = mix(state).to_le_bytes();
        tail.copy_from_slice(&word[..tail.len()]);
    }
}

/// A seed that differs between processes and calls, so two reserves on one filesystem do
/// not hold identical blocks a deduplicating filesystem could share.
pub fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    hasher.finish()
}

/// SplitMix64's increment (the golden ratio in 64-bit fixed point).
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64 of word number `index` in stream `seed`.
fn word_at(seed: u64, index: u64) -> u64 {
    mix(state_at(seed, index))
}

/// The SplitMix64 state that gives word number `index` of stream `seed`.
fn state_at(seed: u64, index: u64) -> u64 {
    seed.wrapping_add(index.wrapping_add(1).wrapping_mul(GAMMA))
}

/// SplitMix64's output function.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Rule 3: no two 4 KiB blocks of a 64 MiB fill are equal, and none is all zeros.
    #[test]
    fn rule3_fill_blocks_are_distinct_and_nonzero() {
        let mut buf = vec![0u8; 64 << 20];
        fill(&mut buf, 42, 0);
        let mut seen = HashSet::new();
        for block in buf.chunks(4096) {
            assert!(
                block.iter().any(|&b| b != 0),
                "rule 3: a block is all zeros"
            );
            assert!(
                seen.insert(block.to_vec()),
                "rule 3: two 4 KiB blocks are equal"
            );
        }
    }

    /// The bytes at an offset do not depend on how the range was split into calls.
    #[test]
    fn fill_is_position_addressed() {
        let mut whole = vec![0u8; 10_000];
        fill(&mut whole, 9, 13);
        let mut parts = vec![0u8; 10_000];
        let (a, b) = parts.split_at_mut(4_099);
        fill(a, 9, 13);
        fill(b, 9, 13 + 4_099);
        assert_eq!(whole, parts);
    }

    /// Every byte is the byte of its word, as `word_at` computes it from scratch: the
    /// stepped state of `fill` gives exactly the stream the per-word formula defines,
    /// for any alignment, length and seed (including states that wrap around).
    #[test]
    fn fill_matches_the_per_word_formula() {
        for seed in [0, 7, u64::MAX, 0x9E37_79B9_7F4A_7C15] {
            for offset in [0u64, 1, 7, 8, 13, 4096, (1 << 40) + 3, u64::MAX - 1 - 100] {
                for len in [0usize, 1, 5, 8, 9, 64, 100] {
                    let mut buf = vec![0u8; len];
                    fill(&mut buf, seed, offset);
                    for (i, &byte) in buf.iter().enumerate() {
                        let abs = offset + i as u64;
                        let expected = word_at(seed, abs / 8).to_le_bytes()[(abs % 8) as usize];
                        assert_eq!(byte, expected, "seed {seed} offset {offset} byte {i}");
                    }
                }
            }
        }
    }

    /// Different seeds give different streams (no cross-file dedup).
    #[test]
    fn seeds_give_different_streams() {
        let (mut a, mut b) = ([0u8; 4096], [0u8; 4096]);
        fill(&mut a, 1, 0);
        fill(&mut b, 2, 0);
        assert_ne!(a, b);
    }
}
