//! The chunk-holder map: for every (file, chunk), which storage servers hold a copy, with the
//! length and SHA-256 each reported.
//!
//! Not logged: like GFS's chunk locations, it is rebuilt from the storage servers' full
//! reports after a restart. Each (re-)registration starts a new listing epoch for that server;
//! chunks reported since are stamped with it, and the last page of a full listing drops the
//! server's chunks left from an older epoch (deleted while nobody was watching).

use pfs_common::ids::Sha256Digest;
use pfs_common::wire::registry::{ChunkHolder, ChunkInfo, ChunkState, GET_CHUNKS_MAX};
use pfs_common::{ChunkIndex, FileId, ServerId};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// One server's copy of a chunk, as last reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// Length, bytes.
    pub len: u64,
    pub sha256: Option<Sha256Digest>,
    /// The server's commit version of the chunk.
    pub version: u64,
    /// The server's listing epoch when this was last reported.
    epoch: u64,
}

/// Chunk holders of every file.
#[derive(Debug, Default)]
pub struct Holders {
    chunks: BTreeMap<(FileId, ChunkIndex), BTreeMap<ServerId, Held>>,
    by_server: HashMap<ServerId, BTreeSet<(FileId, ChunkIndex)>>,
    epochs: HashMap<ServerId, u64>,
}

impl Holders {
    /// An empty map.
    pub fn new() -> Holders {
        Holders::default()
    }

    /// Server `id` (re-)registered: a new full listing begins.
    pub fn begin_listing(&mut self, id: ServerId) {
        *self.epochs.entry(id).or_insert(0) += 1;
    }

    /// Applies a report page from `server`. `exists(file)` says whether the file is still in
    /// the namespace; chunks of files that are not are left out and their ids returned (sorted,
    /// without repeats) so the server deletes them. With `full`, the server's chunks not
    /// reported since its registration are dropped.
    pub fn report(
        &mut self,
        server: ServerId,
        chunks: &[ChunkState],
        full: bool,
        exists: impl Fn(FileId) -> bool,
    ) -> Vec<FileId> {
        let epoch = *self.epochs.entry(server).or_insert(1);
        let mut orphans = BTreeSet::new();
        for c in chunks {
            let key = (c.file, c.chunk);
            if c.removed {
                self.remove(server, key);
                continue;
            }
            if !exists(c.file) {
                orphans.insert(c.file);
                self.remove(server, key);
                continue;
            }
            let held = Held { len: c.len, sha256: c.sha256, version: c.version, epoch };
            self.chunks.entry(key).or_default().insert(server, held);
            self.by_server.entry(server).or_default().insert(key);
        }
        if full {
            let stale: Vec<_> = self
                .by_server
                .get(&server)
                .map(|keys| {
                    keys.iter()
                        .filter(|k| self.chunks.get(k).and_then(|h| h.get(&server)).is_none_or(|h| h.epoch != epoch))
                        .copied()
                        .collect()
                })
                .unwrap_or_default();
            for key in stale {
                self.remove(server, key);
            }
        }
        orphans.into_iter().collect()
    }

    fn remove(&mut self, server: ServerId, key: (FileId, ChunkIndex)) {
        if let Some(h) = self.chunks.get_mut(&key) {
            h.remove(&server);
            if h.is_empty() {
                self.chunks.remove(&key);
            }
        }
        if let Some(keys) = self.by_server.get_mut(&server) {
            keys.remove(&key);
        }
    }

    /// Forgets every chunk of `file` (it was removed from the namespace).
    pub fn remove_file(&mut self, file: FileId) {
        let keys: Vec<_> = self.chunks.range((file, 0)..=(file, ChunkIndex::MAX)).map(|(k, _)| *k).collect();
        for key in keys {
            if let Some(h) = self.chunks.remove(&key) {
                for server in h.keys() {
                    if let Some(keys) = self.by_server.get_mut(server) {
                        keys.remove(&key);
                    }
                }
            }
        }
    }

    /// Chunks `first .. first + count` of `file` that have at least one holder, in chunk
    /// order; `count` is capped at [`GET_CHUNKS_MAX`]. Chunks nobody reported are left out.
    pub fn get(&self, file: FileId, first: ChunkIndex, count: u32) -> Vec<ChunkInfo> {
        let count = count.min(GET_CHUNKS_MAX) as u64;
        if count == 0 {
            return Vec::new();
        }
        let last = first.saturating_add(count - 1);
        self.chunks
            .range((file, first)..=(file, last))
            .map(|((_, chunk), h)| ChunkInfo {
                chunk: *chunk,
                holders: h
                    .iter()
                    .map(|(server, held)| ChunkHolder { server: *server, len: held.len, sha256: held.sha256 })
                    .collect(),
                committed: None,
            })
            .collect()
    }

    /// `server`'s copy of a chunk, if it reported one.
    pub fn held_on(&self, server: ServerId, file: FileId, chunk: ChunkIndex) -> Option<&Held> {
        self.chunks.get(&(file, chunk))?.get(&server)
    }

    /// Number of chunks `server` holds.
    pub fn count(&self, server: ServerId) -> u64 {
        self.by_server.get(&server).map_or(0, |k| k.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(file: u64, chunk: u64, len: u64) -> ChunkState {
        ChunkState {
            file: FileId(file),
            chunk,
            len,
            sha256: Some(Sha256Digest::of(&[len as u8])),
            removed: false,
            durable: true,
            version: 1,
        }
    }

    #[test]
    fn reports_orphans_and_full_listings() {
        let mut h = Holders::new();
        let s1 = ServerId(1);
        let s2 = ServerId(2);
        h.begin_listing(s1);
        h.begin_listing(s2);
        let exists = |f: FileId| f.0 != 99;
        let orphans = h.report(s1, &[state(5, 0, 10), state(5, 1, 4), state(99, 0, 1), state(99, 3, 1)], false, exists);
        assert_eq!(orphans, vec![FileId(99)]);
        h.report(s2, &[state(5, 0, 10)], true, exists);
        let got = h.get(FileId(5), 0, 10);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].holders.iter().map(|x| x.server).collect::<Vec<_>>(), vec![s1, s2]);
        assert_eq!(got[1].holders[0].len, 4);
        assert_eq!(h.get(FileId(5), 1, 1).len(), 1);
        assert_eq!(h.count(s1), 2);
        // s1 restarts and lists only chunk 0: chunk 1 is dropped at the end of the listing.
        h.begin_listing(s1);
        h.report(s1, &[state(5, 0, 10)], false, exists);
        assert_eq!(h.count(s1), 2, "nothing dropped before the listing is complete");
        h.report(s1, &[], true, exists);
        assert_eq!(h.count(s1), 1);
        assert!(h.get(FileId(5), 1, 1).is_empty());
        // A removal report and a file removal.
        h.report(s2, &[ChunkState { removed: true, ..state(5, 0, 0) }], false, exists);
        assert_eq!(h.get(FileId(5), 0, 1)[0].holders.len(), 1);
        h.remove_file(FileId(5));
        assert!(h.get(FileId(5), 0, 100).is_empty());
        assert_eq!(h.count(s1), 0);
    }
}
