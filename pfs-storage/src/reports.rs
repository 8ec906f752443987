//! Chunk reports to pfs-meta: the queue of chunk states not yet acknowledged, one queue per
//! file, and the connection of the current session they go out on.
//!
//! The queue keeps the latest state per chunk. States are sent in batches, and a chunk whose
//! state is in flight is not sent again until that batch is answered, so an older state of a
//! chunk never overtakes a newer one even with several batches in flight (pfs-meta runs a
//! connection's requests concurrently). A batch that failed goes back to its file's queue,
//! except for chunks a newer state replaced meanwhile, or a full listing superseded.
//!
//! The queue is plain data; the store keeps it behind its own mutex with the chunk index, so
//! a state is queued in the same critical section that made it (see `store`).

use crate::engine::ChunkKey;
use parking_lot::Mutex;
use pfs_common::rpc::RpcClient;
use pfs_common::wire::registry::ChunkState;
use pfs_common::wire::MetaRequest;
use pfs_common::{ChunkIndex, FileId};
use std::collections::{BTreeMap, HashMap};

/// Chunk states waiting for pfs-meta, per file, and those in flight.
#[derive(Default)]
pub(crate) struct ReportQueue {
    files: BTreeMap<FileId, BTreeMap<ChunkIndex, ChunkState>>,
    /// Chunks whose state is in flight, with the ticket of its batch.
    in_flight: HashMap<ChunkKey, u64>,
    next_ticket: u64,
}

/// States taken from the queue to be sent together.
pub(crate) struct Batch {
    pub ticket: u64,
    pub states: Vec<ChunkState>,
}

impl ReportQueue {
    /// Queues `state`, replacing an older queued state of its chunk.
    pub fn queue(&mut self, state: ChunkState) {
        self.files.entry(state.file).or_default().insert(state.chunk, state);
    }

    /// Up to `max` queued states (of `file` only, or of every file in file order), none of a
    /// chunk that has a state in flight; marked in flight. `None` when there is none to send.
    pub fn take(&mut self, file: Option<FileId>, max: usize) -> Option<Batch> {
        let ticket = self.next_ticket;
        let mut states = Vec::new();
        let files: Vec<FileId> = match file {
            Some(f) => vec![f],
            None => self.files.keys().copied().collect(),
        };
        for f in files {
            let Some(q) = self.files.get_mut(&f) else { continue };
            let ready: Vec<ChunkIndex> =
                q.keys().copied().filter(|c| !self.in_flight.contains_key(&(f, *c))).take(max - states.len()).collect();
            for c in ready {
                let s = q.remove(&c).expect("listed above");
                self.in_flight.insert((f, c), ticket);
                states.push(s);
            }
            if q.is_empty() {
                self.files.remove(&f);
            }
            if states.len() == max {
                break;
            }
        }
        if states.is_empty() {
            return None;
        }
        self.next_ticket += 1;
        Some(Batch { ticket, states })
    }

    /// True while a state of `file` is in flight.
    pub fn in_flight_for(&self, file: FileId) -> bool {
        self.in_flight.keys().any(|k| k.0 == file)
    }

    /// Queued states of `file` (not in flight).
    pub fn queued(&self, file: FileId) -> usize {
        self.files.get(&file).map_or(0, |q| q.len())
    }

    /// True when nothing is queued (states may be in flight).
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The queued state of chunk `key`, if any.
    #[cfg(test)]
    pub fn get(&self, key: ChunkKey) -> Option<&ChunkState> {
        self.files.get(&key.0)?.get(&key.1)
    }

    /// Every queued state (not those in flight), in (file, chunk) order.
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = &ChunkState> {
        self.files.values().flat_map(|q| q.values())
    }

    /// pfs-meta acknowledged `batch`.
    pub fn acked(&mut self, batch: &Batch) {
        for s in &batch.states {
            self.settle(batch.ticket, (s.file, s.chunk));
        }
    }

    /// `batch` was not acknowledged: its states go back to their queues unless a newer state
    /// of the chunk was queued meanwhile, or a full listing superseded the batch.
    pub fn failed(&mut self, batch: Batch) {
        for s in batch.states {
            if self.settle(batch.ticket, (s.file, s.chunk)) {
                self.files.entry(s.file).or_default().entry(s.chunk).or_insert(s);
            }
        }
    }

    /// Ends `key`'s flight under `ticket`; false if it was not (any more) in flight under it.
    fn settle(&mut self, ticket: u64, key: ChunkKey) -> bool {
        if self.in_flight.get(&key) == Some(&ticket) {
            self.in_flight.remove(&key);
            true
        } else {
            false
        }
    }

    /// A full listing supersedes everything queued and in flight.
    pub fn clear(&mut self) {
        self.files.clear();
        self.in_flight.clear();
    }
}

/// The connection of the registered session with pfs-meta, while there is one.
#[derive(Default)]
pub struct MetaConn {
    client: Mutex<Option<RpcClient<MetaRequest>>>,
}

impl MetaConn {
    /// The session's connection, if one is up and open.
    pub fn get(&self) -> Option<RpcClient<MetaRequest>> {
        self.client.lock().clone().filter(|c| !c.is_closed())
    }

    /// True while a registered session is up.
    pub fn connected(&self) -> bool {
        self.get().is_some()
    }

    /// Sets (or with `None` forgets) the session's connection.
    pub fn set(&self, client: Option<RpcClient<MetaRequest>>) {
        *self.client.lock() = client;
    }

    /// Closes the session's connection (pfs-meta counts this server down) and forgets it.
    pub fn close(&self) {
        if let Some(c) = self.client.lock().take() {
            c.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(file: u64, chunk: u64, len: u64) -> ChunkState {
        ChunkState { file: FileId(file), chunk, len, sha256: None, removed: false, durable: true, version: 1 }
    }

    #[test]
    fn a_file_is_taken_alone_and_a_chunk_in_flight_is_not_sent_again() {
        let mut q = ReportQueue::default();
        q.queue(state(1, 0, 10));
        q.queue(state(2, 0, 10));
        q.queue(state(2, 1, 10));
        let b = q.take(Some(FileId(2)), 100).unwrap();
        assert_eq!(b.states.iter().map(|s| (s.file.0, s.chunk)).collect::<Vec<_>>(), [(2, 0), (2, 1)]);
        assert_eq!(q.queued(FileId(1)), 1, "other files stay queued");
        // A newer state of a chunk in flight waits for the batch's answer.
        q.queue(state(2, 0, 20));
        assert!(q.take(Some(FileId(2)), 100).is_none());
        assert!(q.in_flight_for(FileId(2)));
        q.acked(&b);
        let next = q.take(Some(FileId(2)), 100).unwrap();
        assert_eq!(next.states[0].len, 20);
        // Everything else in file order, at most `max` at a time.
        q.queue(state(3, 0, 1));
        let all = q.take(None, 1).unwrap();
        assert_eq!(all.states[0].file, FileId(1));
        assert_eq!(q.take(None, 10).unwrap().states[0].file, FileId(3));
    }

    #[test]
    fn a_failed_batch_goes_back_unless_replaced_or_superseded() {
        let mut q = ReportQueue::default();
        q.queue(state(1, 0, 10));
        q.queue(state(1, 1, 10));
        let b = q.take(None, 10).unwrap();
        q.queue(state(1, 1, 30)); // newer than the one in flight
        q.failed(b);
        assert_eq!(q.get((FileId(1), 0)).unwrap().len, 10, "put back");
        assert_eq!(q.get((FileId(1), 1)).unwrap().len, 30, "the newer state stays");
        let b = q.take(None, 10).unwrap();
        q.clear();
        q.failed(b);
        assert!(q.is_empty() && !q.in_flight_for(FileId(1)), "a full listing superseded the batch");
    }
}
