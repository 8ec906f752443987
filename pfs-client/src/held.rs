//! The tokens this client holds on one file, as it believes them to be: non-overlapping byte
//! ranges with a mode, adjacent ranges of one mode merged.
//!
//! The belief may lag the token manager in one direction only: a range can be believed lost
//! while the manager still counts it as held (a revoke re-applied after a racing grant, see
//! `File`), never the other way round. Under-claiming costs a round trip; over-claiming would
//! break coherence.

use pfs_common::token::{ByteRange, Mode};
use std::collections::BTreeMap;

/// Held ranges: start → (end, mode), non-overlapping.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeldTokens {
    ranges: BTreeMap<u64, (u64, Mode)>,
}

impl HeldTokens {
    /// True when every byte of `range` is held in `mode` or a stronger one (Write covers Read).
    pub fn covers(&self, range: ByteRange, mode: Mode) -> bool {
        let mut pos = range.start;
        if range.is_empty() {
            return true;
        }
        // The segment holding `pos` starts at or before it.
        let mut iter = self.ranges.range(..=pos).next_back().into_iter().chain(self.ranges.range(pos + 1..));
        loop {
            let Some((&s, &(e, m))) = iter.next() else { return false };
            if e <= pos {
                continue;
            }
            if s > pos || m < mode {
                return false;
            }
            pos = e;
            if pos >= range.end {
                return true;
            }
        }
    }

    /// Records a grant: Write replaces whatever is held there; Read fills only the bytes not
    /// held at all (a held Write implies Read and is kept).
    pub fn grant(&mut self, range: ByteRange, mode: Mode) {
        match mode {
            Mode::Write => {
                self.carve(range);
                self.ranges.insert(range.start, (range.end, Mode::Write));
            }
            Mode::Read => {
                let mut gaps = Vec::new();
                let mut pos = range.start;
                for (&s, &(e, _)) in self.overlapping(range) {
                    if s > pos {
                        gaps.push(ByteRange::new(pos, s));
                    }
                    pos = pos.max(e);
                }
                if pos < range.end {
                    gaps.push(ByteRange::new(pos, range.end));
                }
                for g in gaps {
                    self.ranges.insert(g.start, (g.end, Mode::Read));
                }
            }
        }
        self.merge();
    }

    /// Drops every token byte in `range`.
    pub fn remove(&mut self, range: ByteRange) {
        self.carve(range);
    }

    /// Turns Write into Read inside `range`.
    pub fn downgrade(&mut self, range: ByteRange) {
        let writes: Vec<ByteRange> = self
            .overlapping(range)
            .filter(|(_, (_, m))| *m == Mode::Write)
            .filter_map(|(&s, &(e, _))| ByteRange::new(s, e).intersect(&range))
            .collect();
        for w in writes {
            self.carve(w);
            self.ranges.insert(w.start, (w.end, Mode::Read));
        }
        self.merge();
    }

    /// The largest contiguous range held in `mode` or stronger that contains byte `pos`.
    /// Walks the map outwards from `pos`; no allocation (it runs on every cache miss).
    pub fn span(&self, pos: u64, mode: Mode) -> Option<ByteRange> {
        let (&s, &(e, m)) = self.ranges.range(..=pos).next_back()?;
        if pos >= e || m < mode {
            return None;
        }
        let (mut start, mut end) = (s, e);
        for (&ps, &(pe, pm)) in self.ranges.range(..s).rev() {
            if pe != start || pm < mode {
                break;
            }
            start = ps;
        }
        for (&ns, &(ne, nm)) in self.ranges.range(e..) {
            if ns != end || nm < mode {
                break;
            }
            end = ne;
        }
        Some(ByteRange::new(start, end))
    }

    /// Every held range with its mode, in order.
    pub fn list(&self) -> Vec<(ByteRange, Mode)> {
        self.ranges.iter().map(|(&s, &(e, m))| (ByteRange::new(s, e), m)).collect()
    }

    fn overlapping(&self, range: ByteRange) -> impl Iterator<Item = (&u64, &(u64, Mode))> {
        let before = self.ranges.range(..range.start).next_back().filter(|(_, (e, _))| *e > range.start);
        before.into_iter().chain(self.ranges.range(range.start..range.end))
    }

    /// Removes `range` from every segment, splitting segments that straddle its ends.
    fn carve(&mut self, range: ByteRange) {
        let hit: Vec<(u64, u64, Mode)> = self.overlapping(range).map(|(&s, &(e, m))| (s, e, m)).collect();
        for (s, e, m) in hit {
            self.ranges.remove(&s);
            if s < range.start {
                self.ranges.insert(s, (range.start, m));
            }
            if e > range.end {
                self.ranges.insert(range.end, (e, m));
            }
        }
    }

    fn merge(&mut self) {
        let mut out: BTreeMap<u64, (u64, Mode)> = BTreeMap::new();
        for (s, (e, m)) in std::mem::take(&mut self.ranges) {
            if let Some((_, last)) = out.iter_mut().next_back() {
                if last.0 == s && last.1 == m {
                    last.0 = e;
                    continue;
                }
            }
            out.insert(s, (e, m));
        }
        self.ranges = out;
    }
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
        let mut h = HeldTokens::default();
        h.grant(r(0, 100), Mode::Write);
        assert!(h.covers(r(10, 20), Mode::Read) && h.covers(r(0, 100), Mode::Write));
        h.remove(r(40, 60));
        assert!(!h.covers(r(30, 50), Mode::Read));
        assert_eq!(h.list(), vec![(r(0, 40), Mode::Write), (r(60, 100), Mode::Write)]);
        h.grant(r(0, 200), Mode::Read);
        assert_eq!(
            h.list(),
            vec![
                (r(0, 40), Mode::Write),
                (r(40, 60), Mode::Read),
                (r(60, 100), Mode::Write),
                (r(100, 200), Mode::Read)
            ]
        );
        h.downgrade(r(70, 150));
        assert_eq!(h.list()[2], (r(60, 70), Mode::Write));
        assert!(h.covers(r(0, 200), Mode::Read));
        assert!(!h.covers(r(0, 200), Mode::Write));
        assert_eq!(h.span(65, Mode::Read), Some(r(0, 200)));
        assert_eq!(h.span(65, Mode::Write), Some(r(60, 70)));
        assert_eq!(h.span(500, Mode::Read), None);
        h.grant(r(20, u64::MAX), Mode::Write);
        assert_eq!(h.list(), vec![(r(0, u64::MAX), Mode::Write)]);
    }

    proptest! {
        /// Against a per-byte model over [0, 64).
        #[test]
        fn matches_a_byte_model(ops in prop::collection::vec((0u8..3, 0u64..64, 1u64..32, any::<bool>()), 0..40)) {
            let mut h = HeldTokens::default();
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
                // Coalesced: no two adjacent segments of one mode.
                let l = h.list();
                prop_assert!(l.windows(2).all(|p| p[0].0.end < p[1].0.start || p[0].1 != p[1].1));
            }
        }
    }
}
