//! [`Releases`]: the releases of this session's tokens that pfs-meta may not have applied yet,
//! by file. Sans-IO; [`crate::session::Session`] wraps it with the wake-ups and the sending.
//!
//! pfs-meta serves a session's requests concurrently, and a client gives tokens back in two
//! steps: first it stops believing it holds them (and writes back what they cover), then it
//! sends the `Release`. An `Acquire` of an overlapping range sent between the two, or while the
//! `Release` is on its way, could be answered from the tokens the `Release` then takes away,
//! and the client would believe it holds a token pfs-meta has given up (the writes under it are
//! refused, or worse, another client is granted the same bytes). So an acquire that overlaps a
//! release listed here waits until that release is answered: a session's token requests over
//! the same bytes reach pfs-meta in the order the client made them. The list outlives the
//! file's open state, so an open right after a last close waits for the close's release too.

use pfs_common::ids::FileId;
use pfs_common::token::ByteRange;
use std::collections::HashMap;

/// Unanswered releases, by file (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct Releases {
    next: u64,
    pending: HashMap<FileId, Vec<(u64, ByteRange)>>,
}

/// A listed release, to send and then end with [`Releases::end`].
#[derive(Debug)]
#[must_use = "a listed release blocks acquires of its range until it is ended"]
pub(crate) struct ReleaseTicket {
    id: u64,
    pub file: FileId,
    pub range: ByteRange,
}

impl Releases {
    /// Lists a release of our tokens on `file` within `range`, before anything of it is done.
    pub(crate) fn begin(&mut self, file: FileId, range: ByteRange) -> ReleaseTicket {
        self.next += 1;
        let id = self.next;
        self.pending.entry(file).or_default().push((id, range));
        ReleaseTicket { id, file, range }
    }

    /// Whether a listed release on `file` overlaps `range`.
    pub(crate) fn overlaps(&self, file: FileId, range: ByteRange) -> bool {
        self.pending.get(&file).is_some_and(|v| v.iter().any(|(_, p)| p.overlaps(&range)))
    }

    /// Releases not answered yet.
    pub(crate) fn len(&self) -> usize {
        self.pending.values().map(Vec::len).sum()
    }

    /// The release of `ticket` was answered (or the session is gone): unlisted.
    pub(crate) fn end(&mut self, ticket: ReleaseTicket) {
        if let Some(v) = self.pending.get_mut(&ticket.file) {
            v.retain(|(i, _)| *i != ticket.id);
            if v.is_empty() {
                self.pending.remove(&ticket.file);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_release_blocks_overlapping_ranges_of_its_file_until_ended() {
        let mut r = Releases::default();
        let (f, g) = (FileId(1), FileId(2));
        let a = r.begin(f, ByteRange::new(100, 200));
        let b = r.begin(f, ByteRange::from(150));
        assert!(r.overlaps(f, ByteRange::new(0, 101)));
        assert!(!r.overlaps(f, ByteRange::new(0, 100)), "ranges are half-open");
        assert!(!r.overlaps(g, ByteRange::ALL), "another file");
        r.end(a);
        assert!(!r.overlaps(f, ByteRange::new(100, 150)));
        assert!(r.overlaps(f, ByteRange::new(100, 151)), "the other release stays");
        r.end(b);
        assert!(!r.overlaps(f, ByteRange::ALL));
        assert!(r.pending.is_empty(), "nothing kept for a file with no release");
    }
}
