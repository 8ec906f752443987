//! [`RangeMap`]: byte ranges of one file with a token [`Mode`] each. The token manager keeps
//! one per holder and file (what the holder holds); a client keeps one per open file (what
//! it believes it holds).
//!
//! Ranges are disjoint, sorted and coalesced: two entries that touch never have the same
//! mode, so a holder of a file's bytes in one mode costs one entry however many grants built
//! it. An entry is a 24-byte `BTreeMap` item (start key, end, mode). Lookups walk the map
//! from the position asked about and allocate nothing; changes allocate only to collect the
//! few entries they split.

use crate::token::{ByteRange, Mode};
use std::collections::BTreeMap;

/// The end and mode of one entry; the start is the map key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Extent {
    pub end: u64,
    pub mode: Mode,
}

/// Disjoint, coalesced byte ranges with a mode each. See the module documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RangeMap {
    map: BTreeMap<u64, Extent>,
}

impl RangeMap {
    /// An empty map.
    pub const fn new() -> RangeMap {
        RangeMap { map: BTreeMap::new() }
    }

    /// Every entry with its mode, in byte order.
    pub fn iter(&self) -> impl Iterator<Item = (ByteRange, Mode)> + '_ {
        self.map.iter().map(|(&start, e)| (ByteRange { start, end: e.end }, e.mode))
    }

    /// Every entry, as a vector (diagnostics and tests).
    pub fn to_vec(&self) -> Vec<(ByteRange, Mode)> {
        self.iter().collect()
    }

    /// The entries sharing a byte with `r` (not clipped to it), in byte order.
    pub fn overlapping(&self, r: ByteRange) -> impl Iterator<Item = (ByteRange, Mode)> + '_ {
        // Entries are disjoint: at most one starts before `r` and reaches into it.
        let empty = r.is_empty();
        let before = self.map.range(..r.start).next_back().filter(move |(_, e)| !empty && e.end > r.start);
        let inside = self.map.range(r.start..r.end.max(r.start)).filter(move |_| !empty);
        before.into_iter().chain(inside).map(|(&start, e)| (ByteRange { start, end: e.end }, e.mode))
    }

    /// True when every byte of `range` is held in `mode` or a stronger one (Write covers
    /// Read). An empty range is covered.
    pub fn covers(&self, range: ByteRange, mode: Mode) -> bool {
        let mut pos = range.start;
        for (r, m) in self.overlapping(range) {
            if r.start > pos || m < mode {
                return false;
            }
            pos = r.end;
            if pos >= range.end {
                return true;
            }
        }
        range.is_empty()
    }

    /// The largest contiguous range held in `mode` or stronger that contains byte `pos`.
    pub fn span(&self, pos: u64, mode: Mode) -> Option<ByteRange> {
        let (&s, e) = self.map.range(..=pos).next_back()?;
        if pos >= e.end || e.mode < mode {
            return None;
        }
        let (mut start, mut end) = (s, e.end);
        for (&ps, pe) in self.map.range(..s).rev() {
            if pe.end != start || pe.mode < mode {
                break;
            }
            start = ps;
        }
        for (&ns, ne) in self.map.range(e.end..) {
            if ns != end || ne.mode < mode {
                break;
            }
            end = ne.end;
        }
        Some(ByteRange::new(start, end))
    }

    /// The Write bytes within `r`, clipped to it.
    pub fn writes_within(&self, r: ByteRange) -> Vec<ByteRange> {
        self.overlapping(r).filter(|(_, m)| *m == Mode::Write).filter_map(|(t, _)| t.intersect(&r)).collect()
    }

    /// Drops every byte of `r`, splitting entries that stick out.
    pub fn remove(&mut self, r: ByteRange) {
        let hit: Vec<(ByteRange, Mode)> = self.overlapping(r).collect();
        for (t, mode) in hit {
            self.map.remove(&t.start);
            if t.start < r.start {
                self.map.insert(t.start, Extent { end: r.start, mode });
            }
            if t.end > r.end {
                self.map.insert(r.end, Extent { end: t.end, mode });
            }
        }
    }

    /// Sets every byte of `r` to `mode`, coalescing with neighbours.
    pub fn set(&mut self, r: ByteRange, mode: Mode) {
        if r.is_empty() {
            return;
        }
        self.remove(r);
        let mut start = r.start;
        let mut end = r.end;
        if let Some((&ps, pe)) = self.map.range(..start).next_back() {
            if pe.end == start && pe.mode == mode {
                start = ps;
                self.map.remove(&ps);
            }
        }
        if let Some(ne) = self.map.get(&end).copied() {
            if ne.mode == mode {
                self.map.remove(&end);
                end = ne.end;
            }
        }
        self.map.insert(start, Extent { end, mode });
    }

    /// Records a grant: Write replaces whatever is held over `r`; Read fills the bytes of `r`
    /// not held, and bytes held Write stay Write (Write implies Read).
    pub fn grant(&mut self, r: ByteRange, mode: Mode) {
        match mode {
            Mode::Write => self.set(r, Mode::Write),
            Mode::Read => {
                let writes = self.writes_within(r);
                self.set(r, Mode::Read);
                for w in writes {
                    self.set(w, Mode::Write);
                }
            }
        }
    }

    /// Write bytes within `r` become Read.
    pub fn downgrade(&mut self, r: ByteRange) {
        for w in self.writes_within(r) {
            self.set(w, Mode::Read);
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Checks the entries are non-empty, disjoint, sorted and coalesced; the error names the
    /// first offending entry or pair.
    pub fn check(&self) -> Result<(), RangeMapError> {
        let mut prev: Option<(ByteRange, Mode)> = None;
        for (r, m) in self.iter() {
            if r.is_empty() {
                return Err(RangeMapError::Empty { range: r });
            }
            if let Some((p, pm)) = prev {
                if p.end > r.start {
                    return Err(RangeMapError::Overlap { first: p, second: r });
                }
                if p.end == r.start && pm == m {
                    return Err(RangeMapError::NotCoalesced { first: p, second: r, mode: m });
                }
            }
            prev = Some((r, m));
        }
        Ok(())
    }
}

/// How a [`RangeMap`] breaks its invariant (a bug, found by [`RangeMap::check`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RangeMapError {
    /// An entry holds no bytes.
    #[error("empty token {range}")]
    Empty { range: ByteRange },
    /// Two entries share bytes, or are out of order.
    #[error("tokens {first} and {second} overlap")]
    Overlap { first: ByteRange, second: ByteRange },
    /// Two adjacent entries of the same mode are not merged.
    #[error("tokens {first} and {second} of mode {mode:?} are not coalesced")]
    NotCoalesced { first: ByteRange, second: ByteRange, mode: Mode },
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(s: u64, e: u64) -> ByteRange {
        ByteRange::new(s, e)
    }

    #[test]
    fn grants_split_downgrade_and_cover() {
        let mut h = RangeMap::new();
        h.grant(r(0, 100), Mode::Write);
        assert!(h.covers(r(10, 20), Mode::Read) && h.covers(r(0, 100), Mode::Write));
        h.remove(r(40, 60));
        assert!(!h.covers(r(30, 50), Mode::Read));
        assert_eq!(h.to_vec(), vec![(r(0, 40), Mode::Write), (r(60, 100), Mode::Write)]);
        h.grant(r(0, 200), Mode::Read);
        assert_eq!(
            h.to_vec(),
            vec![
                (r(0, 40), Mode::Write),
                (r(40, 60), Mode::Read),
                (r(60, 100), Mode::Write),
                (r(100, 200), Mode::Read)
            ]
        );
        h.downgrade(r(70, 150));
        assert_eq!(h.to_vec()[2], (r(60, 70), Mode::Write));
        assert!(h.covers(r(0, 200), Mode::Read));
        assert!(!h.covers(r(0, 200), Mode::Write));
        assert!(h.covers(r(5, 5), Mode::Write), "an empty range is covered");
        assert_eq!(h.span(65, Mode::Read), Some(r(0, 200)));
        assert_eq!(h.span(65, Mode::Write), Some(r(60, 70)));
        assert_eq!(h.span(500, Mode::Read), None);
        assert_eq!(h.overlapping(r(50, 65)).count(), 2);
        assert_eq!(h.overlapping(r(50, 50)).count(), 0);
        h.grant(r(20, u64::MAX), Mode::Write);
        assert_eq!(h.to_vec(), vec![(r(0, u64::MAX), Mode::Write)]);
        assert_eq!(h.check(), Ok(()));
    }

    proptest! {
        /// Against a per-byte model over [0, 64): grants, removals and downgrades in any
        /// order; every query answers as the model does and the map stays coalesced.
        #[test]
        fn matches_a_byte_model(ops in prop::collection::vec((0u8..3, 0u64..64, 1u64..32, any::<bool>()), 0..40)) {
            let mut h = RangeMap::new();
            let mut model = [None::<Mode>; 64];
            for (op, s, len, w) in ops {
                let range = r(s, (s + len).min(64));
                let mode = if w { Mode::Write } else { Mode::Read };
                for b in range.start..range.end {
                    let b = b as usize;
                    match op {
                        0 => model[b] = if mode == Mode::Write { Some(Mode::Write) } else { model[b].or(Some(Mode::Read)) },
                        1 => model[b] = None,
                        _ => if model[b] == Some(Mode::Write) { model[b] = Some(Mode::Read) },
                    }
                }
                match op { 0 => h.grant(range, mode), 1 => h.remove(range), _ => h.downgrade(range) }
                for a in 0..64u64 {
                    for b in a + 1..=64 {
                        let want_r = (a..b).all(|i| model[i as usize].is_some());
                        let want_w = (a..b).all(|i| model[i as usize] == Some(Mode::Write));
                        prop_assert_eq!(h.covers(r(a, b), Mode::Read), want_r);
                        prop_assert_eq!(h.covers(r(a, b), Mode::Write), want_w);
                        let touching = h.overlapping(r(a, b)).count();
                        let want_touching = h.iter().filter(|(t, _)| t.overlaps(&r(a, b))).count();
                        prop_assert_eq!(touching, want_touching);
                    }
                }
                // span: the maximal run of bytes held at least in `m` around each byte.
                for pos in 0..64u64 {
                    for m in [Mode::Read, Mode::Write] {
                        let ok = |i: u64| model[i as usize].is_some_and(|h| h >= m);
                        let want = ok(pos).then(|| {
                            let s = (0..=pos).rev().take_while(|&i| ok(i)).last().unwrap();
                            let e = (pos..64).take_while(|&i| ok(i)).last().unwrap() + 1;
                            r(s, e)
                        });
                        prop_assert_eq!(h.span(pos, m), want);
                    }
                }
                prop_assert_eq!(h.check(), Ok(()));
            }
        }
    }
}
