//! The durable namespace: the [`Namespace`] state machine behind a lock, with every mutation
//! logged through the [`Wal`] before it is acknowledged.

use crate::error::Result;
use crate::namespace::{Applied, Context, Decision, Inode, Namespace, Op};
use crate::wal::{encode_snapshot, frame_record, Durable, Record, Wal, WalMsg};
use parking_lot::Mutex;
use pfs_common::layout::LayoutPolicy;
use pfs_common::{FileId, ServerId};
use std::collections::HashMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

struct Inner {
    namespace: Namespace,
    /// LSN of the last mutation applied in memory (it may not be durable yet).
    applied_lsn: u64,
    /// LSN of the last checkpoint asked for.
    checkpoint_lsn: u64,
    /// LSN of the last mutation that touched each inode ([`Applied::touched`]), so a read of
    /// inodes waits for the changes it could reveal, not for every change in flight. An
    /// inode missing here has no change that is not durable. Entries at or below the durable
    /// LSN mean nothing more and are pruned now and then.
    touched: HashMap<FileId, u64>,
    /// `touched` is pruned when it grows to this many entries.
    prune_at: usize,
}

/// `touched` is pruned at no fewer entries than this (pruning is a scan of the table).
const PRUNE_MIN: usize = 4096;

/// The namespace plus its write-ahead log.
pub struct NamespaceStore {
    inner: Mutex<Inner>,
    wal: Wal,
    checkpoint_records: u64,
}

/// Wall-clock time, ns since the Unix epoch (0 before it: a clock that far off is wrong).
pub fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

impl NamespaceStore {
    /// Opens (recovering) the log in `dir`; a checkpoint is taken every `checkpoint_records`
    /// records (at least 1). A new namespace's root gets `root_policy`.
    ///
    /// Errors: Io naming the file and byte offset of a corrupt log.
    pub fn open(dir: &Path, checkpoint_records: u64, root_policy: LayoutPolicy) -> Result<NamespaceStore> {
        let (wal, recovered) = Wal::open(dir, root_policy)?;
        Ok(NamespaceStore {
            inner: Mutex::new(Inner {
                namespace: recovered.namespace,
                applied_lsn: recovered.last_lsn,
                checkpoint_lsn: recovered.checkpoint_lsn,
                touched: HashMap::new(),
                prune_at: PRUNE_MIN,
            }),
            wal,
            checkpoint_records: checkpoint_records.max(1),
        })
    }

    /// Runs a namespace operation: decides it, logs and applies a mutation, and answers once
    /// the answer is durable. An operation that changes nothing, or is refused, answers only
    /// after the state it saw is durable, so no one sees a change that a crash could still
    /// undo.
    /// `up_servers` are the storage servers new files may be striped over; `is_open` says
    /// whether a session has a file open (it is called under the store's lock, so whatever
    /// lock it takes must never be held while calling into the store).
    ///
    /// Errors: the namespace's errors (see [`Namespace::prepare`]), or WalFailed / Io if the
    /// log failed.
    pub async fn execute(
        &self,
        op: &Op,
        up_servers: &[ServerId],
        is_open: &(dyn Fn(FileId) -> bool + Sync),
    ) -> Result<Applied> {
        self.execute_with(|_| Ok(op.clone()), up_servers, is_open).await
    }

    /// [`NamespaceStore::execute`] of the operation `make` builds from the namespace under
    /// the store's lock (for an operation naming a directory by id: its path cannot change
    /// between the lookup and the change).
    pub async fn execute_with(
        &self,
        make: impl FnOnce(&Namespace) -> Result<Op>,
        up_servers: &[ServerId],
        is_open: &(dyn Fn(FileId) -> bool + Sync),
    ) -> Result<Applied> {
        self.execute_then(make, up_servers, is_open, |_| ()).await
    }

    /// [`NamespaceStore::execute_with`], calling `then` with the inode the operation answers
    /// (if it succeeds) still under the store's lock, in the same step as the change: no
    /// other change comes between them (a create that also opens the file). The same lock
    /// rule as for `is_open` holds for `then`.
    pub async fn execute_then(
        &self,
        make: impl FnOnce(&Namespace) -> Result<Op>,
        up_servers: &[ServerId],
        is_open: &(dyn Fn(FileId) -> bool + Sync),
        then: impl FnOnce(Option<&Inode>),
    ) -> Result<Applied> {
        let permit = self.wal.reserve().await?;
        let (decided, wait_lsn) = {
            let mut inner = self.inner.lock();
            let ctx = Context { now_ns: now_ns(), up_servers, is_open };
            let decision = make(&inner.namespace).and_then(|op| inner.namespace.prepare(&op, &ctx));
            match decision {
                // The refusal reveals the state it was judged on (an entry that exists, or
                // not): it waits for that state like an unchanged answer (below) does.
                Err(e) => (Err(e), inner.applied_lsn),
                Ok(Decision::Unchanged(inode)) => {
                    drop(permit);
                    then(inode.as_ref());
                    (Ok(Applied { inode, ..Applied::default() }), inner.applied_lsn)
                }
                Ok(Decision::Mutate(mutation)) => {
                    let lsn = inner.applied_lsn + 1;
                    let record = Record { lsn, mutation };
                    // Applied before it is logged (the lock orders both): a record that does
                    // not apply is never logged.
                    let applied = inner.namespace.apply(&record.mutation)?;
                    let framed = frame_record(&record);
                    inner.applied_lsn = lsn;
                    permit.send(WalMsg::Record { lsn, framed });
                    self.note_touched(&mut inner, &applied.touched, lsn);
                    then(applied.inode.as_ref());
                    if lsn - inner.checkpoint_lsn >= self.checkpoint_records {
                        let snapshot = encode_snapshot(lsn, &inner.namespace);
                        // Sent right after its record (still under the lock, so in order). If
                        // the queue is full it is skipped; the next mutation tries again.
                        if self.wal.try_send(WalMsg::Checkpoint { lsn, snapshot }) {
                            inner.checkpoint_lsn = lsn;
                        }
                    }
                    (Ok(applied), lsn)
                }
            }
        };
        self.wal.wait_durable(wait_lsn).await?;
        decided
    }

    /// Records that mutation `lsn` touched `ids`; now and then forgets the entries that are
    /// durable (amortised: the table is scanned when it has doubled since the last scan).
    fn note_touched(&self, inner: &mut Inner, ids: &[FileId], lsn: u64) {
        for id in ids {
            inner.touched.insert(*id, lsn);
        }
        if inner.touched.len() >= inner.prune_at {
            let durable = self.wal.durable().borrow().lsn;
            inner.touched.retain(|_, l| *l > durable);
            inner.prune_at = (inner.touched.len() * 2).max(PRUNE_MIN);
        }
    }

    /// Runs `f` on the current namespace and returns its result with the LSN it saw; pass the
    /// LSN to [`NamespaceStore::wait_durable`] before acting on the result outside this process.
    pub fn read<R>(&self, f: impl FnOnce(&Namespace) -> R) -> (R, u64) {
        let inner = self.inner.lock();
        (f(&inner.namespace), inner.applied_lsn)
    }

    /// Runs `f` on the current namespace; `f` adds to the list the ids of the inodes its
    /// result depends on (see [`Namespace::lookup_traced`]). Returns the result with the
    /// LSN of the last change of those inodes: pass it to [`NamespaceStore::wait_durable`]
    /// before acting on the result outside this process. Unlike [`NamespaceStore::read`],
    /// this does not wait for changes of other inodes still being made durable. Only for
    /// results that depend on inodes alone (not the chunk map, chains or orphan set).
    pub fn read_inodes<R>(&self, f: impl FnOnce(&Namespace, &mut Vec<FileId>) -> R) -> (R, u64) {
        let inner = self.inner.lock();
        let mut read = Vec::new();
        let r = f(&inner.namespace, &mut read);
        let lsn = read.iter().filter_map(|id| inner.touched.get(id)).copied().max().unwrap_or(0);
        (r, lsn)
    }

    /// Waits until the log is durable up to `lsn`. Errors: Io if the log failed.
    pub async fn wait_durable(&self, lsn: u64) -> Result<()> {
        self.wal.wait_durable(lsn).await
    }

    /// The log's durable LSN and failure state.
    pub fn durable(&self) -> watch::Receiver<Durable> {
        self.wal.durable()
    }

    /// A copy of the namespace (for tests and checkpoints).
    pub fn snapshot(&self) -> Namespace {
        self.inner.lock().namespace.clone()
    }
}
