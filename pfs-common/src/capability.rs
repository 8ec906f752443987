//! Data-access capabilities: what lets a client read or write chunks on a storage server.
//!
//! Storage servers know nothing of tokens, so pfs-meta hands a client, with each token it
//! grants, a [`Capability`]: "session S may read (or write) bytes R of file F, whose chunks
//! are C bytes, until T", MAC'd with the capability key that pfs-meta and the storage servers
//! derive from the cluster secret ([`crate::auth`]) and clients never hold. A storage server
//! accepts a client's read, write or truncate only with capabilities that check, have not
//! expired, name the request's file, session and chunk size, grant its access, and together
//! cover the file bytes it touches. This is the block access token of HDFS (and the
//! capability of NASD/Ceph): checking it needs no round trip to pfs-meta.
//!
//! A capability stays valid until it expires even if its token is revoked sooner (the
//! holder still needs it to write back under the revoke); the lifetime
//! (`tokens.capability_ms`, 10 minutes by default) bounds how long a misbehaving client can
//! go on using it. Expiry is pfs-meta's wall clock: clocks must agree to well within it.

use crate::auth::{Key, TAG_LEN};
use crate::ids::FileId;
use crate::layout::MAX_FILE_SIZE;
use crate::token::{ByteRange, Mode, SessionId};
use hmac::Mac;
use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

/// Most capabilities one request may carry (a write spanning several grants).
pub const MAX_CAPABILITIES: usize = 8;

/// A client uses a capability it kept only while it stays valid this much longer, ms (a
/// request may wait in queues, and clocks differ a little); after that it asks pfs-meta for a
/// fresh one. `tokens.capability_ms` must exceed it.
pub const RENEW_MARGIN_MS: u64 = 10_000;

/// pfs-meta's MAC'd statement of what a session may do to a file's chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capability {
    pub file: FileId,
    /// File bytes it covers.
    pub range: ByteRange,
    /// Read, or Write (which implies read).
    pub mode: Mode,
    pub session: SessionId,
    /// The file's chunk size, bytes: fixes which file bytes a chunk offset is.
    pub chunk_size: u64,
    /// Unix time in ms (pfs-meta's clock) after which it is refused.
    pub expires_ms: u64,
    /// HMAC-SHA256 of the fields above, truncated to 16 bytes.
    pub tag: [u8; TAG_LEN],
}

/// Unix time now, ms.
pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn tag_of(key: &Key, c: &Capability) -> hmac::Hmac<sha2::Sha256> {
    let mut m = key.hmac();
    m.update(b"pfs v1 capability");
    m.update(&c.file.0.to_le_bytes());
    m.update(&c.range.start.to_le_bytes());
    m.update(&c.range.end.to_le_bytes());
    m.update(&[c.mode as u8]);
    m.update(&c.session.to_le_bytes());
    m.update(&c.chunk_size.to_le_bytes());
    m.update(&c.expires_ms.to_le_bytes());
    m
}

/// Issues capabilities (pfs-meta).
#[derive(Clone, Debug)]
pub struct CapabilityIssuer {
    key: Key,
    lifetime_ms: u64,
}

impl CapabilityIssuer {
    /// Issues with `key` capabilities valid for `lifetime_ms`.
    pub fn new(key: Key, lifetime_ms: u64) -> CapabilityIssuer {
        CapabilityIssuer { key, lifetime_ms }
    }

    /// A capability for `session` over `range` of `file` in `mode`, valid from now on.
    pub fn issue(&self, file: FileId, range: ByteRange, mode: Mode, session: SessionId, chunk_size: u64) -> Capability {
        let expires_ms = unix_ms().saturating_add(self.lifetime_ms);
        sign(&self.key, Capability { file, range, mode, session, chunk_size, expires_ms, tag: [0; TAG_LEN] })
    }
}

/// `c` with its tag computed with `key`.
pub fn sign(key: &Key, mut c: Capability) -> Capability {
    let full = tag_of(key, &c).finalize().into_bytes();
    c.tag.copy_from_slice(&full[..TAG_LEN]);
    c
}

/// What a storage request needs a capability for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub file: FileId,
    pub session: SessionId,
    pub chunk_size: u64,
    /// File bytes touched.
    pub range: ByteRange,
    pub mode: Mode,
}

impl Access {
    /// The file bytes `[chunk × chunk_size + offset, + len)`; `None` when that overflows or
    /// `chunk_size` is 0.
    pub fn chunk_bytes(chunk: u64, chunk_size: u64, offset: u64, len: u64) -> Option<ByteRange> {
        if chunk_size == 0 {
            return None;
        }
        let start = chunk.checked_mul(chunk_size)?.checked_add(offset)?;
        Some(ByteRange::new(start, start.checked_add(len.max(1))?))
    }

    /// Everything from `size` on (a truncate to `size`).
    pub fn from_size(size: u64) -> ByteRange {
        ByteRange::new(size.min(MAX_FILE_SIZE), u64::MAX)
    }
}

/// Why a storage server refuses a request's capabilities (answered as Denied). Each variant
/// names the file, session, sizes or bytes involved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CapabilityError {
    /// The request carries no capability at all.
    #[error("no capability: ask pfs-meta for a token first")]
    Missing,
    /// More than [`MAX_CAPABILITIES`] capabilities.
    #[error("{count} capabilities (at most {MAX_CAPABILITIES})")]
    TooMany { count: usize },
    /// A capability's tag does not check with the capability key.
    #[error("a capability for {file} that pfs-meta did not issue (forged or altered)")]
    Forged { file: FileId },
    /// A capability expired `ago_ms` before the check.
    #[error("a capability for {file} that expired {ago_ms} ms ago")]
    Expired { file: FileId, ago_ms: u64 },
    /// A capability names another file or session than the request.
    #[error("a capability for {held_file} of session {held_session:x}, not {file} of session {session:x}")]
    OtherHolder { held_file: FileId, held_session: SessionId, file: FileId, session: SessionId },
    /// A capability names another chunk size than the request.
    #[error("a capability for chunks of {held} bytes, not {asked}")]
    ChunkSize { held: u64, asked: u64 },
    /// A read capability offered for a write.
    #[error("a read capability for a write of {file}")]
    ReadOnly { file: FileId },
    /// The capabilities' union does not cover file bytes `range` of the request; the bytes
    /// from `uncovered` on (within `range`) are the first ones no capability grants.
    #[error("capabilities of {file} do not cover bytes {range} (none from byte {uncovered})")]
    NotCovered { file: FileId, range: ByteRange, uncovered: u64 },
}

/// Checks that `caps` allow `access` at Unix time `now_ms` (storage servers). Errors with
/// the reason, for the Denied answer.
pub fn check(key: &Key, caps: &[Capability], access: &Access, now_ms: u64) -> Result<(), CapabilityError> {
    check_each(key, caps, access, [access.range], now_ms)
}

/// Like [`check`] for a request touching several ranges of the file (a vectored write):
/// `caps` must allow `access` over each of `ranges`, which stand in for `access.range`. Each
/// capability's tag is verified once, whatever the number of ranges.
pub fn check_each(
    key: &Key,
    caps: &[Capability],
    access: &Access,
    ranges: impl IntoIterator<Item = ByteRange>,
    now_ms: u64,
) -> Result<(), CapabilityError> {
    if caps.is_empty() {
        return Err(CapabilityError::Missing);
    }
    if caps.len() > MAX_CAPABILITIES {
        return Err(CapabilityError::TooMany { count: caps.len() });
    }
    let mut held = Vec::with_capacity(caps.len());
    for c in caps {
        if tag_of(key, c).verify_truncated_left(&c.tag).is_err() {
            return Err(CapabilityError::Forged { file: c.file });
        }
        if c.expires_ms <= now_ms {
            return Err(CapabilityError::Expired { file: c.file, ago_ms: now_ms - c.expires_ms });
        }
        if c.file != access.file || c.session != access.session {
            return Err(CapabilityError::OtherHolder {
                held_file: c.file,
                held_session: c.session,
                file: access.file,
                session: access.session,
            });
        }
        if c.chunk_size != access.chunk_size {
            return Err(CapabilityError::ChunkSize { held: c.chunk_size, asked: access.chunk_size });
        }
        if access.mode == Mode::Write && c.mode != Mode::Write {
            return Err(CapabilityError::ReadOnly { file: access.file });
        }
        held.push(c.range);
    }
    held.sort_by_key(|r| r.start);
    for range in ranges {
        // The union must cover the bytes touched.
        let mut covered = range.start;
        for r in &held {
            if r.start > covered || covered >= range.end {
                break;
            }
            covered = covered.max(r.end);
        }
        if covered < range.end {
            return Err(CapabilityError::NotCovered { file: access.file, range, uncovered: covered });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(range: ByteRange, mode: Mode) -> Access {
        Access { file: FileId(7), session: 9, chunk_size: 1 << 20, range, mode }
    }

    /// A key and capabilities it issued for `[start, end)` of file 7, session 9, in `mode`.
    fn issued(caps: &[(u64, u64, Mode)]) -> (Key, Vec<Capability>) {
        let key = Key::random();
        let issuer = CapabilityIssuer::new(key.clone(), 60_000);
        let caps = caps.iter().map(|&(s, e, m)| issuer.issue(FileId(7), ByteRange::new(s, e), m, 9, 1 << 20)).collect();
        (key, caps)
    }

    #[test]
    fn only_issued_unexpired_covering_capabilities_pass() {
        let (key, caps) = issued(&[(0, 100, Mode::Write), (100, 300, Mode::Read)]);
        let (w, r) = (caps[0], caps[1]);
        let now = unix_ms();
        check(&key, &[w], &access(ByteRange::new(10, 90), Mode::Write), now).unwrap();
        check(&key, &[r, w], &access(ByteRange::new(50, 250), Mode::Read), now).unwrap();
        let e = check(&key, &[w, r], &access(ByteRange::new(50, 250), Mode::Write), now);
        assert_eq!(e, Err(CapabilityError::ReadOnly { file: FileId(7) }));
        let e = check(&key, &[w], &access(ByteRange::new(50, 101), Mode::Write), now);
        let range = ByteRange::new(50, 101);
        assert_eq!(e, Err(CapabilityError::NotCovered { file: FileId(7), range, uncovered: 100 }));
        // Forged: widened range, another key, another session, expired.
        let mut wide = w;
        wide.range.end = u64::MAX;
        let e = check(&key, &[wide], &access(ByteRange::new(0, 200), Mode::Write), now);
        assert_eq!(e, Err(CapabilityError::Forged { file: FileId(7) }));
        let other = sign(&Key::random(), wide);
        let e = check(&key, &[other], &access(ByteRange::new(0, 200), Mode::Write), now);
        assert_eq!(e, Err(CapabilityError::Forged { file: FileId(7) }));
        let e = check(&key, &[w], &Access { session: 10, ..access(ByteRange::new(0, 1), Mode::Read) }, now);
        assert!(matches!(e, Err(CapabilityError::OtherHolder { held_session: 9, session: 10, .. })), "{e:?}");
        let old = sign(&key, Capability { expires_ms: now - 1, ..w });
        let e = check(&key, &[old], &access(ByteRange::new(0, 1), Mode::Read), now);
        assert_eq!(e, Err(CapabilityError::Expired { file: FileId(7), ago_ms: 1 }));
        assert_eq!(check(&key, &[], &access(ByteRange::new(0, 1), Mode::Read), now), Err(CapabilityError::Missing));
        let e = check(&key, &[w], &Access { chunk_size: 512, ..access(ByteRange::new(0, 1), Mode::Read) }, now);
        assert_eq!(e, Err(CapabilityError::ChunkSize { held: 1 << 20, asked: 512 }));
        let e = check(&key, &[w; 9], &access(ByteRange::new(0, 1), Mode::Read), now);
        assert_eq!(e, Err(CapabilityError::TooMany { count: 9 }));
    }

    #[test]
    fn every_range_of_a_vectored_write_must_be_covered() {
        let (key, caps) = issued(&[(0, 100, Mode::Write), (200, 300, Mode::Write)]);
        let (a, b) = (caps[0], caps[1]);
        let (now, base) = (unix_ms(), access(ByteRange::new(0, 1), Mode::Write));
        let ranges = [ByteRange::new(10, 90), ByteRange::new(210, 300)];
        check_each(&key, &[b, a], &base, ranges, now).unwrap();
        // The gap between the capabilities is not covered, even though both ends are.
        let ranges = [ByteRange::new(10, 90), ByteRange::new(150, 160), ByteRange::new(210, 220)];
        let e = check_each(&key, &[a, b], &base, ranges, now);
        let range = ByteRange::new(150, 160);
        assert_eq!(e, Err(CapabilityError::NotCovered { file: FileId(7), range, uncovered: 150 }));
        let e = check_each(&key, &[a, b], &base, [ByteRange::new(90, 210)], now);
        let range = ByteRange::new(90, 210);
        assert_eq!(e, Err(CapabilityError::NotCovered { file: FileId(7), range, uncovered: 100 }));
    }
}
