//! The chunk locks of one storage server: one lock per chunk in use, taken once per
//! operation, and the count of finished chain writes per chunk that the resync copy rule
//! reads.
//!
//! A chunk's lock has two parts, taken together in one acquisition:
//!
//! * the **data** part orders a chunk's bytes with their block checksums: a write holds it
//!   exclusively while it writes here and updates the checksums, a read holds it shared while
//!   it reads and verifies, so a read never pairs a block's new bytes with its old checksum;
//! * the **chain** part orders writes with copies for other replicas: a chain write holds it
//!   shared from its admission until its successor answered, a copy holds it exclusively, so
//!   a copy never runs across a write that is on one replica and not yet on the next.
//!
//! | mode | chain | data | for |
//! | --- | --- | --- | --- |
//! | [`LockMode::Read`] | - | shared | reads, verification |
//! | [`LockMode::Update`] | - | exclusive | truncate, removal, marking checksums clean |
//! | [`LockMode::Write`] | shared | exclusive until [`ChunkGuard::written`] | a chain write, here and forwarded |
//! | [`LockMode::CopyOut`] | exclusive | shared | reading a chunk for another replica |
//! | [`LockMode::CopyIn`] | exclusive | exclusive | installing a copy from another replica |
//!
//! A request is granted when it fits the holders and conflicts with no request queued before
//! it (first come, first served among conflicting requests: a copy waiting for the writes in
//! flight is not starved by new writes, nor a write by a stream of reads). No task ever holds
//! two locks of one chunk, so queued requests cannot deadlock.
//!
//! **The copy rule** (see [`crate::resync`]). A syncing replica starts a [`Watch`] of a chunk
//! before it fetches the chunk from a serving replica, and installs the copy only under a
//! [`LockMode::CopyIn`] lock taken with [`ChunkLocks::lock_unchanged`], which refuses when a
//! chain write of the chunk finished here since the watch began (its bytes may be missing from
//! the copy). A watch keeps the chunk's entry, and so its count, alive; without watchers and
//! holders an entry is dropped, so memory follows the chunks in use, not all chunks.

use crate::engine::ChunkKey;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::oneshot;

/// What a lock holds of its chunk (see the module table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    /// The data, shared.
    Read,
    /// The data, exclusive.
    Update,
    /// The chain part shared, and the data exclusive until [`ChunkGuard::written`].
    Write,
    /// The chain part exclusive, the data shared.
    CopyOut,
    /// Both parts exclusive.
    CopyIn,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    None,
    Shared,
    Exclusive,
}

impl LockMode {
    /// What the mode needs of the (chain, data) parts.
    fn needs(self) -> (Need, Need) {
        match self {
            LockMode::Read => (Need::None, Need::Shared),
            LockMode::Update => (Need::None, Need::Exclusive),
            LockMode::Write => (Need::Shared, Need::Exclusive),
            LockMode::CopyOut => (Need::Exclusive, Need::Shared),
            LockMode::CopyIn => (Need::Exclusive, Need::Exclusive),
        }
    }

    fn conflicts(self, other: LockMode) -> bool {
        let clash =
            |a: Need, b: Need| a != Need::None && b != Need::None && (a == Need::Exclusive || b == Need::Exclusive);
        let ((ca, da), (cb, db)) = (self.needs(), other.needs());
        clash(ca, cb) || clash(da, db)
    }
}

/// Holders of one part of a chunk's lock.
#[derive(Default)]
struct Part {
    shared: u32,
    exclusive: bool,
}

impl Part {
    fn fits(&self, need: Need) -> bool {
        match need {
            Need::None => true,
            Need::Shared => !self.exclusive,
            Need::Exclusive => !self.exclusive && self.shared == 0,
        }
    }

    fn take(&mut self, need: Need) {
        match need {
            Need::None => {}
            Need::Shared => self.shared += 1,
            Need::Exclusive => self.exclusive = true,
        }
    }

    fn give(&mut self, need: Need) {
        match need {
            Need::None => {}
            Need::Shared => self.shared -= 1,
            Need::Exclusive => self.exclusive = false,
        }
    }

    fn free(&self) -> bool {
        self.shared == 0 && !self.exclusive
    }
}

struct Waiter {
    id: u64,
    mode: LockMode,
    granted: oneshot::Sender<()>,
}

/// One chunk's lock.
#[derive(Default)]
struct Entry {
    chain: Part,
    data: Part,
    queue: VecDeque<Waiter>,
    /// Chain writes of the chunk finished while this entry lived.
    finished: u64,
    watchers: u32,
}

impl Entry {
    fn fits(&self, mode: LockMode) -> bool {
        let (c, d) = mode.needs();
        self.chain.fits(c) && self.data.fits(d)
    }

    fn take(&mut self, mode: LockMode) {
        let (c, d) = mode.needs();
        self.chain.take(c);
        self.data.take(d);
    }

    fn idle(&self) -> bool {
        self.chain.free() && self.data.free() && self.queue.is_empty() && self.watchers == 0
    }

    /// Grants every queued request that fits the holders and conflicts with no request
    /// still queued before it.
    fn grant(&mut self) {
        let mut i = 0;
        while i < self.queue.len() {
            let mode = self.queue[i].mode;
            let blocked = self.queue.iter().take(i).any(|w| w.mode.conflicts(mode));
            if !blocked && self.fits(mode) {
                self.take(mode);
                let w = self.queue.remove(i).expect("index within the queue");
                // A waiter that went away meanwhile gives its grant back in `Waiting::drop`.
                let _ = w.granted.send(());
            } else {
                i += 1;
            }
        }
    }
}

/// The chunk locks of one store.
#[derive(Default)]
pub struct ChunkLocks {
    table: Mutex<HashMap<ChunkKey, Entry>>,
    next_waiter: AtomicU64,
    acquisitions: AtomicU64,
}

impl ChunkLocks {
    /// Waits for, and takes, chunk `key`'s lock in `mode`.
    pub async fn lock(&self, key: ChunkKey, mode: LockMode) -> ChunkGuard<'_> {
        self.acquisitions.fetch_add(1, Ordering::Relaxed);
        let (id, granted) = {
            let mut t = self.table.lock();
            let e = t.entry(key).or_default();
            if e.fits(mode) && !e.queue.iter().any(|w| w.mode.conflicts(mode)) {
                e.take(mode);
                return ChunkGuard::new(self, key, mode);
            }
            let id = self.next_waiter.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            e.queue.push_back(Waiter { id, mode, granted: tx });
            (id, rx)
        };
        let mut waiting = Waiting { locks: self, key, id, mode, done: false };
        // The sender is dropped unsent only by `Waiting::drop`, which cannot have run yet.
        let _ = granted.await;
        waiting.done = true;
        ChunkGuard::new(self, key, mode)
    }

    /// Starts watching chunk `key` for finished chain writes (see the copy rule).
    pub fn watch(&self, key: ChunkKey) -> Watch<'_> {
        let mut t = self.table.lock();
        let e = t.entry(key).or_default();
        e.watchers += 1;
        Watch { locks: self, key, seen: e.finished }
    }

    /// Takes `watch`'s chunk in [`LockMode::CopyIn`], unless a chain write of it finished since
    /// the watch began: then `None` (the copy fetched meanwhile may lack that write).
    pub async fn lock_unchanged(&self, watch: &Watch<'_>) -> Option<ChunkGuard<'_>> {
        let guard = self.lock(watch.key, LockMode::CopyIn).await;
        let finished = self.table.lock().get(&watch.key).map_or(0, |e| e.finished);
        (finished == watch.seen).then_some(guard)
    }

    /// Lock acquisitions since start (every [`ChunkLocks::lock`], waited for or not).
    pub fn acquisitions(&self) -> u64 {
        self.acquisitions.load(Ordering::Relaxed)
    }

    /// Chunks with a lock entry now (held, waited for or watched).
    pub fn entries(&self) -> usize {
        self.table.lock().len()
    }

    /// Gives back `parts` of `key`'s lock held in `mode`, counting a finished chain write if
    /// `finished`, and grants what that lets in.
    fn give(&self, key: ChunkKey, (chain, data): (Need, Need), finished: bool) {
        let mut t = self.table.lock();
        let Some(e) = t.get_mut(&key) else { return };
        e.chain.give(chain);
        e.data.give(data);
        if finished {
            e.finished += 1;
        }
        e.grant();
        if e.idle() {
            t.remove(&key);
        }
    }
}

/// A request waiting for its grant; if it is dropped (the waiting task was cancelled), the
/// request leaves the queue, or gives back the grant it got meanwhile.
struct Waiting<'a> {
    locks: &'a ChunkLocks,
    key: ChunkKey,
    id: u64,
    mode: LockMode,
    done: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut t = self.locks.table.lock();
        let Some(e) = t.get_mut(&self.key) else { return };
        match e.queue.iter().position(|w| w.id == self.id) {
            Some(i) => {
                e.queue.remove(i);
                e.grant();
                if e.idle() {
                    t.remove(&self.key);
                }
            }
            None => {
                drop(t);
                // Granted just before the cancellation: not a write that happened.
                self.locks.give(self.key, self.mode.needs(), false);
            }
        }
    }
}

/// A held chunk lock; given back when dropped (a [`LockMode::Write`] lock then counts as a
/// finished chain write of its chunk).
pub struct ChunkGuard<'a> {
    locks: &'a ChunkLocks,
    key: ChunkKey,
    mode: LockMode,
    /// The parts still held.
    held: (Need, Need),
}

impl<'a> ChunkGuard<'a> {
    fn new(locks: &'a ChunkLocks, key: ChunkKey, mode: LockMode) -> ChunkGuard<'a> {
        ChunkGuard { locks, key, mode, held: mode.needs() }
    }

    /// The chunk this lock is of.
    pub fn key(&self) -> ChunkKey {
        self.key
    }

    /// The mode it was taken in.
    pub fn mode(&self) -> LockMode {
        self.mode
    }

    /// True while the data part is held exclusively (an update or copy-in, or a write not yet
    /// [`ChunkGuard::written`]).
    pub fn holds_data_exclusively(&self) -> bool {
        self.held.1 == Need::Exclusive
    }

    /// True while the data part is held at all.
    pub fn holds_data(&self) -> bool {
        self.held.1 != Need::None
    }

    /// A write is done here: gives back the data part (reads of the chunk go on), keeping the
    /// chain part until the guard is dropped, once its successor answered.
    pub fn written(&mut self) {
        if self.held.1 != Need::None {
            self.locks.give(self.key, (Need::None, self.held.1), false);
            self.held.1 = Need::None;
        }
    }
}

impl Drop for ChunkGuard<'_> {
    fn drop(&mut self) {
        self.locks.give(self.key, self.held, self.mode == LockMode::Write);
    }
}

/// Watches one chunk for finished chain writes; see [`ChunkLocks::watch`].
pub struct Watch<'a> {
    locks: &'a ChunkLocks,
    key: ChunkKey,
    seen: u64,
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        let mut t = self.locks.table.lock();
        if let Some(e) = t.get_mut(&self.key) {
            e.watchers -= 1;
            if e.idle() {
                t.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pfs_common::FileId;
    use std::sync::Arc;

    const K: ChunkKey = (FileId(1), 0);

    /// True if `mode` can be taken on `K` right now (the attempt is withdrawn either way).
    async fn free(locks: &ChunkLocks, mode: LockMode) -> bool {
        let attempt = locks.lock(K, mode);
        tokio::pin!(attempt);
        poll_once(attempt.as_mut()).await
    }

    /// Polls a future once; true if it completed (its output dropped).
    async fn poll_once<F: std::future::Future>(mut f: std::pin::Pin<&mut F>) -> bool {
        std::future::poll_fn(|cx| std::task::Poll::Ready(f.as_mut().poll(cx).is_ready())).await
    }

    #[tokio::test]
    async fn modes_exclude_as_the_table_says() {
        use LockMode::*;
        let l = ChunkLocks::default();
        let all = [Read, Update, Write, CopyOut, CopyIn];
        for held in all {
            let g = l.lock(K, held).await;
            for asked in all {
                assert_eq!(free(&l, asked).await, !held.conflicts(asked), "{asked:?} while {held:?} is held");
            }
            drop(g);
        }
        // Unrelated chunks never wait for each other.
        let _g = l.lock(K, CopyIn).await;
        let _h = l.lock((FileId(1), 1), CopyIn).await;
        let _i = l.lock((FileId(2), 0), CopyIn).await;
    }

    #[tokio::test]
    async fn a_written_write_lets_reads_in_and_still_keeps_copies_out() {
        let l = ChunkLocks::default();
        let mut w = l.lock(K, LockMode::Write).await;
        assert!(!free(&l, LockMode::Read).await);
        w.written();
        assert!(free(&l, LockMode::Read).await, "the data part is given back");
        assert!(free(&l, LockMode::Write).await, "the next write may write here while this one is forwarded");
        assert!(!free(&l, LockMode::CopyOut).await, "a copy waits until the successor answered");
        drop(w);
        assert!(free(&l, LockMode::CopyOut).await);
        assert_eq!(l.entries(), 0, "idle entries are dropped");
    }

    #[tokio::test]
    async fn a_waiting_copy_is_not_overtaken_by_new_writes_but_reads_go_on() {
        let l = Arc::new(ChunkLocks::default());
        let mut w = l.lock(K, LockMode::Write).await;
        w.written();
        let l2 = l.clone();
        let copy = tokio::spawn(async move {
            let _c = l2.lock(K, LockMode::CopyOut).await;
        });
        while l.table.lock().get(&K).is_none_or(|e| e.queue.is_empty()) {
            tokio::task::yield_now().await;
        }
        assert!(!free(&l, LockMode::Write).await, "a new write queues behind the waiting copy");
        assert!(free(&l, LockMode::Read).await, "a read does not conflict with the copy");
        drop(w);
        copy.await.unwrap();
        assert!(free(&l, LockMode::Write).await);
    }

    #[tokio::test]
    async fn a_cancelled_waiter_leaves_nothing_held() {
        let l = Arc::new(ChunkLocks::default());
        let g = l.lock(K, LockMode::Update).await;
        let l2 = l.clone();
        let waiter = tokio::spawn(async move {
            let _g = l2.lock(K, LockMode::Update).await;
            std::future::pending::<()>().await;
        });
        while l.table.lock().get(&K).is_none_or(|e| e.queue.is_empty()) {
            tokio::task::yield_now().await;
        }
        waiter.abort();
        let _ = waiter.await;
        drop(g);
        assert!(free(&l, LockMode::CopyIn).await);
        assert_eq!(l.entries(), 0);
    }

    #[tokio::test]
    async fn a_watch_sees_every_write_finished_since_it_began() {
        let l = ChunkLocks::default();
        // A write finished before the watch does not count.
        drop(l.lock(K, LockMode::Write).await);
        let watch = l.watch(K);
        assert!(l.lock_unchanged(&watch).await.is_some());
        // Nor do updates and copies; a chain write does, even after its entry would be idle.
        drop(l.lock(K, LockMode::Update).await);
        drop(l.lock(K, LockMode::CopyIn).await);
        assert!(l.lock_unchanged(&watch).await.is_some());
        drop(l.lock(K, LockMode::Write).await);
        assert!(l.lock_unchanged(&watch).await.is_none(), "a write finished during the watch");
        drop(watch);
        assert_eq!(l.entries(), 0);
        // A write in flight when the watch begins is waited for, and counted.
        let w = l.lock(K, LockMode::Write).await;
        let watch = l.watch(K);
        let install = l.lock_unchanged(&watch);
        tokio::pin!(install);
        assert!(!poll_once(install.as_mut()).await);
        drop(w);
        assert!(install.await.is_none());
    }

    #[tokio::test]
    async fn acquisitions_are_counted() {
        let l = ChunkLocks::default();
        let before = l.acquisitions();
        let mut w = l.lock(K, LockMode::Write).await;
        w.written();
        drop(w);
        assert_eq!(l.acquisitions() - before, 1, "a chain write is one acquisition");
    }
}
