//! The durable namespace: the [`Namespace`] state machine behind a lock, with every mutation
//! logged through the [`Wal`] before it is acknowledged.

use crate::error::Result;
use crate::namespace::{Applied, Context, Decision, Namespace, Op};
use crate::wal::{encode_snapshot, frame_record, Durable, Record, Wal, WalMsg};
use parking_lot::Mutex;
use pfs_common::layout::LayoutPolicy;
use pfs_common::{FileId, ServerId};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

struct Inner {
    namespace: Namespace,
    /// LSN of the last mutation applied in memory (it may not be durable yet).
    applied_lsn: u64,
    /// LSN of the last checkpoint asked for.
    checkpoint_lsn: u64,
}

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
            }),
            wal,
            checkpoint_records: checkpoint_records.max(1),
        })
    }

    /// Runs a namespace operation: decides it, logs and applies a mutation, and answers once
    /// the answer is durable. An operation that changes nothing answers only after the state
    /// it saw is durable, so no one sees a change that a crash could still undo.
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
        let permit = self.wal.reserve().await?;
        let (applied, wait_lsn) = {
            let mut inner = self.inner.lock();
            let ctx = Context { now_ns: now_ns(), up_servers, is_open };
            let op = make(&inner.namespace)?;
            match inner.namespace.prepare(&op, &ctx)? {
                Decision::Unchanged(inode) => {
                    drop(permit);
                    (Applied { inode, ..Applied::default() }, inner.applied_lsn)
                }
                Decision::Mutate(mutation) => {
                    let lsn = inner.applied_lsn + 1;
                    let record = Record { lsn, mutation };
                    // Applied before it is logged (the lock orders both): a record that does
                    // not apply is never logged.
                    let applied = inner.namespace.apply(&record.mutation)?;
                    let framed = frame_record(&record);
                    inner.applied_lsn = lsn;
                    permit.send(WalMsg::Record { lsn, framed });
                    if lsn - inner.checkpoint_lsn >= self.checkpoint_records {
                        let snapshot = encode_snapshot(lsn, &inner.namespace);
                        // Sent right after its record (still under the lock, so in order). If
                        // the queue is full it is skipped; the next mutation tries again.
                        if self.wal.try_send(WalMsg::Checkpoint { lsn, snapshot }) {
                            inner.checkpoint_lsn = lsn;
                        }
                    }
                    (applied, lsn)
                }
            }
        };
        self.wal.wait_durable(wait_lsn).await?;
        Ok(applied)
    }

    /// Runs `f` on the current namespace and returns its result with the LSN it saw; pass the
    /// LSN to [`NamespaceStore::wait_durable`] before acting on the result outside this process.
    pub fn read<R>(&self, f: impl FnOnce(&Namespace) -> R) -> (R, u64) {
        let inner = self.inner.lock();
        (f(&inner.namespace), inner.applied_lsn)
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
