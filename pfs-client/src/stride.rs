//! Stride detection: which records a file's writer will want next, so that its token request
//! names them ahead of need ([`Stride`], granted where free; see pfs-meta's token manager,
//! "Strided records").
//!
//! A pattern is three writes of one length whose starts are one constant step apart, the step
//! longer than the length (holes between the records: an interleaved writer such as an IOR
//! rank of a segmented shared file). Contiguous writes (step = length) are a sequential stream,
//! which asks to the end of the file instead. [`Advice::Strided`] sets a pattern without
//! waiting for three writes.

use pfs_common::token::{Stride, STRIDE_RECORDS_MAX};

/// What a caller tells the client about its coming I/O on a file ([`crate::File::advise`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Advice {
    /// No pattern known: the client detects strides by itself (the default).
    Normal,
    /// Every write is `len` bytes and starts `step` bytes after the previous one (`step >
    /// len`): each token request also asks for the next records.
    Strided {
        /// Record length, bytes.
        len: u64,
        /// Distance between record starts, bytes.
        step: u64,
    },
}

/// Records asked for ahead of each acquire once a pattern is known.
pub(crate) const AHEAD_RECORDS: u8 = STRIDE_RECORDS_MAX;

/// The write pattern of one open file, as far as seen.
#[derive(Debug, Default)]
pub(crate) struct StrideDetector {
    /// The last write: (offset, length), bytes.
    last: Option<(u64, u64)>,
    /// The step between the last two writes, if they had the same length.
    step: Option<u64>,
    /// The pattern confirmed by three writes: (length, step).
    detected: Option<(u64, u64)>,
    /// The pattern the application advised: (length, step); wins over the detected one.
    advised: Option<(u64, u64)>,
}

impl StrideDetector {
    /// Sets (Strided) or clears (Normal) the advised pattern. A Strided advice with `step <=
    /// len` or `len == 0` is ignored (not a pattern with holes).
    pub(crate) fn advise(&mut self, advice: Advice) {
        self.advised = match advice {
            Advice::Strided { len, step } if len > 0 && step > len => Some((len, step)),
            _ => None,
        };
    }

    /// Notes a write of `len` bytes at `offset`. True if it confirmed a pattern that was not
    /// known before (the caller then gives back what it holds past this write).
    pub(crate) fn observe(&mut self, offset: u64, len: u64) -> bool {
        let step = match self.last {
            Some((o, l)) if l == len && offset > o => Some(offset - o),
            _ => None,
        };
        let confirmed = match (step, self.step) {
            (Some(s), Some(prev)) if s == prev && s > len => Some((len, s)),
            _ => None,
        };
        let new = confirmed.is_some() && self.detected != confirmed;
        // A write that continues the pattern confirms it again; any other forgets it.
        self.detected = confirmed;
        self.step = step;
        self.last = Some((offset, len));
        new
    }

    /// The known pattern: (length, step), bytes.
    pub(crate) fn pattern(&self) -> Option<(u64, u64)> {
        self.advised.or(self.detected)
    }

    /// The records to ask for ahead of a write of `len` bytes at `offset`: the next
    /// [`AHEAD_RECORDS`] of the pattern, if the write fits it (`None` otherwise, or if they
    /// would run past the largest offset).
    pub(crate) fn ahead(&self, offset: u64, len: u64) -> Option<Stride> {
        let (plen, step) = self.pattern()?;
        if plen != len {
            return None;
        }
        let start = offset.checked_add(step)?;
        let stride = Stride { start, step, len, count: AHEAD_RECORDS };
        stride.check().ok().map(|_| stride)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_equal_steps_make_a_pattern_and_a_break_forgets_it() {
        let mut d = StrideDetector::default();
        assert!(!d.observe(0, 10));
        assert!(!d.observe(40, 10));
        assert_eq!(d.ahead(40, 10), None);
        assert!(d.observe(80, 10), "the third write confirms");
        assert_eq!(d.pattern(), Some((10, 40)));
        assert_eq!(d.ahead(120, 10), Some(Stride { start: 160, step: 40, len: 10, count: AHEAD_RECORDS }));
        assert!(!d.observe(120, 10), "known already");
        assert_eq!(d.ahead(160, 9), None, "another length is off the pattern");
        assert!(!d.observe(500, 10));
        assert_eq!(d.pattern(), None, "a write off the pattern forgets it");
        assert!(!d.observe(540, 10));
        assert!(d.observe(580, 10), "found again");
    }

    #[test]
    fn sequential_and_backward_writes_are_not_strides() {
        let mut d = StrideDetector::default();
        for i in 0..5 {
            assert!(!d.observe(i * 10, 10));
        }
        assert_eq!(d.pattern(), None);
        for i in (0..5).rev() {
            assert!(!d.observe(i * 40, 10));
        }
        assert_eq!(d.pattern(), None);
    }

    #[test]
    fn advice_wins_and_bad_advice_is_ignored() {
        let mut d = StrideDetector::default();
        d.advise(Advice::Strided { len: 8, step: 32 });
        assert_eq!(d.ahead(0, 8).map(|s| (s.start, s.step)), Some((32, 32)));
        d.advise(Advice::Strided { len: 8, step: 8 });
        assert_eq!(d.pattern(), None);
        assert_eq!(d.ahead(u64::MAX - 8, 8), None);
        d.advise(Advice::Strided { len: 8, step: 32 });
        assert_eq!(d.ahead(u64::MAX - 100, 8), None, "records past the largest offset");
        d.advise(Advice::Normal);
        assert_eq!(d.pattern(), None);
    }
}
