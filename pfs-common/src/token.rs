//! Token vocabulary shared by the token manager (pfs-meta), clients and storage servers:
//! modes, byte ranges, session and revoke ids.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A client session: the holder of tokens. Unique in the cluster's life: the high 24 bits are
/// its epoch, the Raft term of the pfs-meta leader that opened it (and logged it), the low
/// [`SESSION_RANDOM_BITS`] random (unguessable). Storage servers fence by it: writes carrying
/// an evicted session, or one from an epoch older than every open session's, are refused.
pub type SessionId = u64;

/// Random low bits of a [`SessionId`].
pub const SESSION_RANDOM_BITS: u32 = 40;

/// The first session id of epoch `epoch` (every session of older epochs is below it).
pub fn first_session_of(epoch: u32) -> SessionId {
    (epoch as u64) << SESSION_RANDOM_BITS
}

/// The id of one revoke, echoed by the holder's acknowledgement.
pub type RevokeId = u64;

/// The epoch a session id belongs to.
pub fn session_epoch(session: SessionId) -> u32 {
    (session >> SESSION_RANDOM_BITS) as u32
}

/// Token mode: shared read or exclusive write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Mode {
    /// Shared: any number of sessions may hold overlapping read tokens.
    Read,
    /// Exclusive: overlaps no token of another session. Implies read.
    Write,
}

impl Mode {
    /// True if tokens of modes `self` and `other`, held by different sessions over
    /// overlapping bytes, conflict: unless both are Read.
    pub fn conflicts_with(self, other: Mode) -> bool {
        self == Mode::Write || other == Mode::Write
    }
}

/// A byte range `[start, end)` of a file; `end == u64::MAX` means "to infinity" (past any
/// end of file, as a sequential writer's desired range is).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    /// `[start, end)`.
    pub const fn new(start: u64, end: u64) -> ByteRange {
        ByteRange { start, end }
    }

    /// `[start, ∞)`.
    pub const fn from(start: u64) -> ByteRange {
        ByteRange { start, end: u64::MAX }
    }

    /// The whole file.
    pub const ALL: ByteRange = ByteRange { start: 0, end: u64::MAX };

    /// Length in bytes (saturating for open-ended ranges).
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// True when it holds no byte.
    pub fn is_empty(&self) -> bool {
        self.start >= self.end
    }

    /// True when the two share at least one byte.
    pub fn overlaps(&self, other: &ByteRange) -> bool {
        self.start < other.end && other.start < self.end && !self.is_empty() && !other.is_empty()
    }

    /// The smallest range holding both.
    pub fn hull(&self, other: &ByteRange) -> ByteRange {
        ByteRange { start: self.start.min(other.start), end: self.end.max(other.end) }
    }

    /// True when every byte of `other` is in `self`.
    pub fn contains(&self, other: &ByteRange) -> bool {
        self.start <= other.start && other.end <= self.end
    }

    /// The bytes in both, if any.
    pub fn intersect(&self, other: &ByteRange) -> Option<ByteRange> {
        let r = ByteRange { start: self.start.max(other.start), end: self.end.min(other.end) };
        (!r.is_empty()).then_some(r)
    }
}

/// Most records a [`Stride`] names (a grant answers which of them it covers in one `u64`).
pub const STRIDE_RECORDS_MAX: u8 = 64;

/// Records a strided reader or writer will want next, asked for ahead of need: record `k`
/// (`0 ≤ k < count`) is `[start + k × step, start + k × step + len)`, bytes. IOR's segmented
/// shared file (rank `r` writes `blockSize` bytes at `(s × ranks + r) × blockSize`) is one
/// stride per rank. The token manager grants each record whole where it conflicts with no one
/// and never revokes for one, as Lustre's lockahead asks for locks ahead of I/O (Lustre asks
/// the application; pfs clients detect the pattern themselves or take `File::advise`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Stride {
    /// First byte of record 0.
    pub start: u64,
    /// Distance between the starts of consecutive records, bytes (at least `len`).
    pub step: u64,
    /// Length of every record, bytes (at least 1).
    pub len: u64,
    /// Records, 1 to [`STRIDE_RECORDS_MAX`].
    pub count: u8,
}

/// Why a [`Stride`] is malformed (an acquire naming it is refused as Invalid).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StrideError {
    /// Records of `len` bytes every `step` bytes: empty (`len` 0) or overlapping (`step < len`).
    #[error("stride records of {len} bytes every {step} bytes overlap or are empty")]
    Overlap { len: u64, step: u64 },
    /// A record count outside 1..=[`STRIDE_RECORDS_MAX`].
    #[error("stride of {count} records (1 to {STRIDE_RECORDS_MAX})")]
    Count { count: u8 },
    /// The last record would not end before `u64::MAX`.
    #[error("stride from {start} every {step} bytes runs past the largest offset")]
    PastEnd { start: u64, step: u64 },
}

impl Stride {
    /// Why the stride is malformed, if it is: an empty record, records that overlap
    /// (`step < len`), a count outside 1..=[`STRIDE_RECORDS_MAX`], or a last record that
    /// does not end before `u64::MAX`.
    pub fn check(&self) -> Result<(), StrideError> {
        if self.len == 0 || self.step < self.len {
            return Err(StrideError::Overlap { len: self.len, step: self.step });
        }
        if self.count == 0 || self.count > STRIDE_RECORDS_MAX {
            return Err(StrideError::Count { count: self.count });
        }
        (self.count as u64 - 1)
            .checked_mul(self.step)
            .and_then(|o| o.checked_add(self.start))
            .and_then(|s| s.checked_add(self.len))
            .filter(|end| *end < u64::MAX) // u64::MAX as an end means "to infinity"
            .map(|_| ())
            .ok_or(StrideError::PastEnd { start: self.start, step: self.step })
    }

    /// Record `k` (the stride must have passed [`Stride::check`] and `k < count`).
    pub fn record(&self, k: u8) -> ByteRange {
        let start = self.start + k as u64 * self.step;
        ByteRange { start, end: start + self.len }
    }

    /// The records whose bit is set in `mask` (bit `k` for record `k`).
    pub fn records(&self, mask: u64) -> impl Iterator<Item = ByteRange> + '_ {
        (0..self.count).filter(move |k| mask >> k & 1 == 1).map(|k| self.record(k))
    }
}

impl fmt::Debug for ByteRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.end == u64::MAX {
            write!(f, "[{}, ∞)", self.start)
        } else {
            write!(f, "[{}, {})", self.start, self.end)
        }
    }
}

impl fmt::Display for ByteRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_relations() {
        let a = ByteRange::new(10, 20);
        assert!(a.overlaps(&ByteRange::new(19, 30)));
        assert!(!a.overlaps(&ByteRange::new(20, 30)));
        assert!(ByteRange::from(5).contains(&a));
        assert_eq!(a.intersect(&ByteRange::new(15, 99)), Some(ByteRange::new(15, 20)));
        assert_eq!(a.intersect(&ByteRange::new(20, 99)), None);
        assert_eq!(format!("{:?}", ByteRange::from(3)), "[3, ∞)");
        assert_eq!(session_epoch(first_session_of(7) | 9), 7);
    }

    #[test]
    fn stride_records_and_checks() {
        let s = Stride { start: 100, step: 40, len: 10, count: 3 };
        assert_eq!(s.check(), Ok(()));
        assert_eq!(s.record(2), ByteRange::new(180, 190));
        assert_eq!(s.records(0b101).collect::<Vec<_>>(), vec![ByteRange::new(100, 110), ByteRange::new(180, 190)]);
        assert!(matches!(Stride { len: 0, ..s }.check(), Err(StrideError::Overlap { len: 0, .. })));
        assert!(matches!(Stride { step: 9, ..s }.check(), Err(StrideError::Overlap { step: 9, .. })));
        assert_eq!(Stride { count: 0, ..s }.check(), Err(StrideError::Count { count: 0 }));
        assert_eq!(Stride { count: 65, ..s }.check(), Err(StrideError::Count { count: 65 }));
        assert!(matches!(Stride { start: u64::MAX - 50, ..s }.check(), Err(StrideError::PastEnd { .. })));
        let e = Stride { start: u64::MAX - 90, ..s }.check();
        assert!(matches!(e, Err(StrideError::PastEnd { .. })), "ends at u64::MAX, which means ∞");
        assert_eq!(Stride { start: u64::MAX - 91, ..s }.check(), Ok(()));
        assert_eq!(Stride { step: 10, count: 64, ..s }.check(), Ok(()));
    }
}
