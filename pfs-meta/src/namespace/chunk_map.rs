//! The committed chunk map: for every chunk a writer made durable, its length, SHA-256 and the
//! storage servers holding that state. Part of the namespace state machine, so it is logged in
//! the WAL (as `Mutation::CommitChunks`) and checkpointed with the tree.
//!
//! It answers "which chunks must exist": a chunk in this map that its holder no longer has
//! (a wiped disk, a deleted chunk file) is lost, and reads of it fail instead of returning
//! zeros; a chunk not in it was never committed and a missing copy is a hole. The live view of
//! who holds what right now is [`crate::holders::Holders`], rebuilt from the servers' reports.

use pfs_common::ids::Sha256Digest;
use pfs_common::{ChunkIndex, FileId, ServerId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A chunk's committed state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRecord {
    /// Chunk length, bytes.
    pub len: u64,
    /// SHA-256 of the chunk's bytes; `None` once a truncate cut the chunk, until its holder
    /// commits the new state.
    pub sha256: Option<Sha256Digest>,
    /// Servers that committed this state, sorted, each with its own commit version of the
    /// chunk (see `ChunkState::version`; every replica counts its own commits).
    pub holders: Vec<(ServerId, u64)>,
}

impl ChunkRecord {
    /// `server`'s commit version of this state, if it holds it.
    pub fn version_on(&self, server: ServerId) -> Option<u64> {
        self.holders.binary_search_by_key(&server, |h| h.0).ok().map(|i| self.holders[i].1)
    }
}

/// A chunk state a storage server made durable, as committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    pub chunk: ChunkIndex,
    /// Chunk length, bytes.
    pub len: u64,
    pub sha256: Sha256Digest,
    /// The server's commit version of the chunk.
    pub version: u64,
}

/// Committed chunks of every file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkMap {
    chunks: BTreeMap<(FileId, ChunkIndex), ChunkRecord>,
}

impl ChunkMap {
    /// The committed state of one chunk.
    pub fn get(&self, file: FileId, chunk: ChunkIndex) -> Option<&ChunkRecord> {
        self.chunks.get(&(file, chunk))
    }

    /// Committed chunks `first ..= last` of `file`, in chunk order.
    pub fn range(
        &self,
        file: FileId,
        first: ChunkIndex,
        last: ChunkIndex,
    ) -> impl Iterator<Item = (ChunkIndex, &ChunkRecord)> {
        self.chunks.range((file, first)..=(file, last)).map(|((_, c), r)| (*c, r))
    }

    /// Every committed chunk `server` holds (a scan: used once per server registration).
    pub fn held_by(&self, server: ServerId) -> impl Iterator<Item = ((FileId, ChunkIndex), &ChunkRecord)> {
        self.chunks.iter().filter(move |(_, r)| r.version_on(server).is_some()).map(|(k, r)| (*k, r))
    }

    /// Every committed chunk, in (file, chunk) order.
    pub fn iter(&self) -> impl Iterator<Item = ((FileId, ChunkIndex), &ChunkRecord)> {
        self.chunks.iter().map(|(k, r)| (*k, r))
    }

    /// Number of committed chunks.
    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    /// True when nothing is committed.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// True if committing `c` from `server` would change nothing.
    pub fn is_committed(&self, file: FileId, server: ServerId, c: &Commit) -> bool {
        self.get(file, c.chunk)
            .is_some_and(|r| r.len == c.len && r.sha256 == Some(c.sha256) && r.version_on(server) == Some(c.version))
    }

    /// `server` made state `c` durable. The same bytes from another server (a replica) add a
    /// holder; other bytes replace the record (the old holders' copies are outdated).
    pub fn commit(&mut self, file: FileId, server: ServerId, c: &Commit) {
        let fresh = || ChunkRecord { len: c.len, sha256: Some(c.sha256), holders: Vec::new() };
        let rec = self.chunks.entry((file, c.chunk)).or_insert_with(fresh);
        if rec.len != c.len || rec.sha256 != Some(c.sha256) {
            *rec = fresh();
        }
        match rec.holders.binary_search_by_key(&server, |h| h.0) {
            Ok(i) => rec.holders[i].1 = c.version,
            Err(at) => rec.holders.insert(at, (server, c.version)),
        }
    }

    /// `file` was cut to `size` bytes: chunks wholly past it are gone; the one it falls in is
    /// at most `size - start` bytes long, with its hash unknown until recommitted.
    pub fn truncate(&mut self, file: FileId, size: u64, chunk_size: u64) {
        let first_gone = size.div_ceil(chunk_size.max(1));
        let gone: Vec<_> = self.chunks.range((file, first_gone)..=(file, ChunkIndex::MAX)).map(|(k, _)| *k).collect();
        for key in gone {
            self.chunks.remove(&key);
        }
        if let Some(last) = first_gone.checked_sub(1) {
            let keep = size - last * chunk_size;
            if let Some(r) = self.chunks.get_mut(&(file, last)) {
                if r.len > keep {
                    r.len = keep;
                    r.sha256 = None;
                }
            }
        }
    }

    /// Forgets every chunk of `file` (its inode is gone).
    pub fn remove_file(&mut self, file: FileId) {
        let keys: Vec<_> = self.chunks.range((file, 0)..=(file, ChunkIndex::MAX)).map(|(k, _)| *k).collect();
        for key in keys {
            self.chunks.remove(&key);
        }
    }

    /// Every file with committed chunks (for invariant checks).
    pub(crate) fn files(&self) -> impl Iterator<Item = FileId> + '_ {
        let mut last = None;
        self.chunks.keys().filter_map(move |(f, _)| (last.replace(*f) != Some(*f)).then_some(*f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(chunk: u64, len: u64, b: u8) -> Commit {
        Commit { chunk, len, sha256: Sha256Digest([b; 32]), version: 1 }
    }

    #[test]
    fn commits_replace_and_add_holders() {
        let mut m = ChunkMap::default();
        let f = FileId(7);
        m.commit(f, ServerId(2), &commit(0, 10, 1));
        m.commit(f, ServerId(1), &commit(0, 10, 1));
        assert_eq!(m.get(f, 0).unwrap().holders, vec![(ServerId(1), 1), (ServerId(2), 1)]);
        assert!(m.is_committed(f, ServerId(1), &commit(0, 10, 1)));
        m.commit(f, ServerId(2), &commit(0, 12, 3));
        assert_eq!(m.get(f, 0).unwrap().holders, vec![(ServerId(2), 1)], "a new state outdates the other copy");
        assert!(!m.is_committed(f, ServerId(1), &commit(0, 12, 3)));
        assert_eq!(m.held_by(ServerId(1)).count(), 0);
        assert_eq!(m.held_by(ServerId(2)).count(), 1);
        // Each replica counts its own commits.
        m.commit(f, ServerId(1), &Commit { version: 7, ..commit(0, 12, 3) });
        assert_eq!(m.get(f, 0).unwrap().version_on(ServerId(1)), Some(7));
        assert_eq!(m.get(f, 0).unwrap().version_on(ServerId(2)), Some(1));
        assert_eq!(m.held_by(ServerId(1)).count(), 1);
    }

    #[test]
    fn truncate_cuts_and_drops() {
        let mut m = ChunkMap::default();
        let f = FileId(3);
        for c in 0..4 {
            m.commit(f, ServerId(1), &commit(c, 100, c as u8));
        }
        m.commit(FileId(4), ServerId(1), &commit(0, 100, 9));
        m.truncate(f, 150, 100);
        assert_eq!(m.range(f, 0, u64::MAX).map(|(c, r)| (c, r.len)).collect::<Vec<_>>(), vec![(0, 100), (1, 50)]);
        assert_eq!(m.get(f, 1).unwrap().sha256, None);
        assert!(m.get(f, 0).unwrap().sha256.is_some());
        m.truncate(f, 200, 100);
        assert_eq!(m.get(f, 1).unwrap().len, 50, "growing does not lengthen a record");
        m.truncate(f, 0, 100);
        assert!(m.range(f, 0, u64::MAX).next().is_none());
        assert_eq!(m.files().collect::<Vec<_>>(), vec![FileId(4)]);
        m.remove_file(FileId(4));
        assert!(m.is_empty());
    }
}
