//! The data pattern written by `pfs-ior`: every byte is a function of the rank that owns it and
//! its offset in the file, so a check finds bytes that are stale, zero, or another rank's or
//! another offset's. The pattern does not depend on time, so a later `-r -R` run can check what
//! an earlier `-w -k` run wrote.

/// The 8-byte word at word index `word_index` (= offset / 8) of `owner`'s data.
#[inline]
pub fn word(owner: usize, word_index: u64) -> u64 {
    // murmur3's 64-bit finaliser: a bijection (distinct (owner, offset) words differ) that
    // spreads every input bit over every byte, so another rank's bytes differ almost everywhere.
    let mut z = word_index ^ ((owner as u64 + 1) << 48);
    z = (z ^ (z >> 33)).wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    z = (z ^ (z >> 33)).wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    z ^ (z >> 33)
}

/// The byte at file offset `offset` of `owner`'s data.
#[inline]
pub fn byte(owner: usize, offset: u64) -> u8 {
    word(owner, offset / 8).to_le_bytes()[(offset % 8) as usize]
}

/// Fills `buf` with `owner`'s data for file offsets `offset ..`.
pub fn fill(buf: &mut [u8], owner: usize, offset: u64) {
    let head = (((8 - offset % 8) % 8) as usize).min(buf.len());
    for (i, b) in buf[..head].iter_mut().enumerate() {
        *b = byte(owner, offset + i as u64);
    }
    let first_word = (offset + head as u64) / 8;
    let len = buf.len();
    let mut chunks = buf[head..].chunks_exact_mut(8);
    for (k, c) in (&mut chunks).enumerate() {
        c.copy_from_slice(&word(owner, first_word + k as u64).to_le_bytes());
    }
    let tail = chunks.into_remainder();
    let tail_off = offset + (len - tail.len()) as u64;
    for (i, b) in tail.iter_mut().enumerate() {
        *b = byte(owner, tail_off + i as u64);
    }
}

/// How many bytes of `buf` differ from `owner`'s data at file offsets `offset ..`.
pub fn mismatches(buf: &[u8], owner: usize, offset: u64) -> u64 {
    let head = (((8 - offset % 8) % 8) as usize).min(buf.len());
    let mut bad = 0u64;
    for (i, b) in buf[..head].iter().enumerate() {
        bad += (*b != byte(owner, offset + i as u64)) as u64;
    }
    let first_word = (offset + head as u64) / 8;
    let chunks = buf[head..].chunks_exact(8);
    let tail = chunks.remainder();
    for (k, c) in chunks.enumerate() {
        let want = word(owner, first_word + k as u64).to_le_bytes();
        if c != want {
            bad += c.iter().zip(want.iter()).filter(|(a, b)| a != b).count() as u64;
        }
    }
    let tail_off = offset + (buf.len() - tail.len()) as u64;
    for (i, b) in tail.iter().enumerate() {
        bad += (*b != byte(owner, tail_off + i as u64)) as u64;
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_matches_bytes_at_any_alignment() {
        for off in [0u64, 1, 7, 8, 13, 47008 * 3] {
            for len in [0usize, 1, 5, 8, 9, 100] {
                let mut b = vec![0u8; len];
                fill(&mut b, 3, off);
                for (i, x) in b.iter().enumerate() {
                    assert_eq!(*x, byte(3, off + i as u64));
                }
                assert_eq!(mismatches(&b, 3, off), 0);
                if len > 0 {
                    b[len / 2] ^= 0x40;
                    assert_eq!(mismatches(&b, 3, off), 1);
                }
            }
        }
    }

    #[test]
    fn other_ranks_and_offsets_differ() {
        let mut a = vec![0u8; 4096];
        fill(&mut a, 0, 0);
        assert!(mismatches(&a, 1, 0) > 4000);
        assert!(mismatches(&a, 0, 4096) > 4000);
        assert!(mismatches(&[0u8; 4096], 0, 0) > 4000);
    }
}
