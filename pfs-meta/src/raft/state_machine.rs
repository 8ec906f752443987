//! The committed namespace of a meta node: openraft's state machine.
//!
//! Every node applies the committed entries in log order to its [`Committed`] namespace. A
//! snapshot is the committed namespace after one entry, written as the blob
//! `snapshot-<index>.snap` (see [`super::files`]) whose payload is postcard of the
//! [`openraft::SnapshotMeta`] followed by postcard of the [`Namespace`]: the same bytes go to
//! a follower that is too far behind (it checks the crc32c before installing them).
//!
//! The leader's working namespace ([`crate::store`]) watches the applies through an
//! [`ApplyObserver`], under the committed state's lock, so it sees them in order.

use super::files::{self, decode_blob, encode_blob, list_numbered, write_atomic};
use super::{Command, Entry, LogId, NodeId, Proposal, StorageError, StoredMembership, TypeConfig};
use crate::error::{MetaError, Result};
use crate::namespace::Namespace;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder, SnapshotMeta, StorageIOError};
use parking_lot::Mutex;
use pfs_common::layout::LayoutPolicy;
use serde::Serialize;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tracing::{info, warn};

/// The state every node agrees on: the namespace after the entries applied.
#[derive(Clone, Debug)]
pub struct Committed {
    pub namespace: Namespace,
    /// The last entry applied (`None` before the first).
    pub last_applied: Option<LogId>,
    /// The membership of the last membership entry applied.
    pub membership: StoredMembership,
}

/// Told of every entry applied and snapshot installed, under the committed state's lock.
pub trait ApplyObserver: Send + Sync + 'static {
    /// `entry` (at `log_id`, proposed as `proposal` if it is a namespace mutation) has just
    /// been applied to `committed`.
    fn applied(&self, committed: &Committed, log_id: &LogId, proposal: Option<Proposal>);
    /// `committed` was just replaced by a snapshot from the leader.
    fn installed(&self, committed: &Committed);
}

type SnapshotMetaT = SnapshotMeta<NodeId, openraft::BasicNode>;

/// The state machine of one meta node. Clones share it (a clone is its snapshot builder).
#[derive(Clone)]
pub struct StateMachine {
    dir: PathBuf,
    committed: Arc<Mutex<Committed>>,
    observer: Option<Arc<dyn ApplyObserver>>,
    /// Counts snapshots built by this process, for unique snapshot ids.
    built: Arc<std::sync::atomic::AtomicU64>,
}

fn snapshot_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("snapshot-{index:016x}.snap"))
}

fn sm_error(e: &MetaError) -> StorageError {
    StorageError::from(StorageIOError::write_state_machine(openraft::AnyError::new(e)))
}

fn snap_error(e: &MetaError) -> StorageError {
    StorageError::from(StorageIOError::write_snapshot(None, openraft::AnyError::new(e)))
}

/// A snapshot's payload: its meta, then the namespace.
fn encode_snapshot(meta: &SnapshotMetaT, namespace: &Namespace) -> Vec<u8> {
    let mut payload = postcard::to_allocvec(meta).expect("postcard encodes snapshot metas");
    #[derive(Serialize)]
    struct Ns<'a>(&'a Namespace);
    payload.extend_from_slice(&postcard::to_allocvec(&Ns(namespace)).expect("postcard encodes namespaces"));
    encode_blob(&payload)
}

/// Decodes a snapshot blob. Errors: Corrupt naming `file` (the file it came from, or the
/// peer).
fn decode_snapshot(bytes: &[u8], file: &Path) -> Result<(SnapshotMetaT, Namespace)> {
    let payload = decode_blob(bytes, "snapshot", file)?;
    let bad =
        |why: String| MetaError::Corrupt { what: "snapshot", file: file.to_path_buf(), offset: None, reason: why };
    let (meta, rest): (SnapshotMetaT, _) =
        postcard::take_from_bytes(payload).map_err(|e| bad(format!("undecodable meta: {e}")))?;
    let namespace: Namespace = postcard::from_bytes(rest).map_err(|e| bad(format!("undecodable namespace: {e}")))?;
    Ok((meta, namespace))
}

impl StateMachine {
    /// Loads the newest snapshot in `dir` (a new namespace whose root gets `root_policy` if
    /// there is none). `observer`, if any, is told of every apply.
    ///
    /// Errors: Corrupt naming the snapshot file if the newest one is damaged (an older one
    /// would silently forget committed changes the log no longer holds); Io.
    pub fn open(
        dir: &Path,
        root_policy: LayoutPolicy,
        observer: Option<Arc<dyn ApplyObserver>>,
    ) -> Result<StateMachine> {
        files::ensure_dir(dir)?;
        let snapshots = list_numbered(dir, "snapshot-", ".snap")?;
        let committed = match snapshots.last() {
            Some((index, path)) => {
                let (meta, namespace) = decode_snapshot(&files::read_file(path)?, path)?;
                if meta.last_log_id.map(|l| l.index) != Some(*index) {
                    return Err(MetaError::Corrupt {
                        what: "snapshot",
                        file: path.clone(),
                        offset: None,
                        reason: format!("it holds the state after {:?}, its name says entry {index}", meta.last_log_id),
                    });
                }
                info!("snapshot {} loaded ({} inodes)", path.display(), namespace.len());
                Committed { namespace, last_applied: meta.last_log_id, membership: meta.last_membership }
            }
            None => Committed {
                namespace: Namespace::new(root_policy),
                last_applied: None,
                membership: StoredMembership::default(),
            },
        };
        Ok(StateMachine {
            dir: dir.to_path_buf(),
            committed: Arc::new(Mutex::new(committed)),
            observer,
            built: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        })
    }

    /// The committed state, shared (for status and tests).
    pub fn committed(&self) -> Arc<Mutex<Committed>> {
        self.committed.clone()
    }

    /// Writes `bytes` as the snapshot after entry `index` and removes the older ones.
    async fn store_snapshot(&self, index: u64, bytes: Vec<u8>) -> Result<()> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let path = snapshot_path(&dir, index);
            write_atomic(&path, &bytes)?;
            for (i, old) in list_numbered(&dir, "snapshot-", ".snap")? {
                if i < index {
                    if let Err(e) = std::fs::remove_file(&old) {
                        warn!("removing old snapshot {}: {e}", old.display());
                    }
                }
            }
            info!("snapshot {} written ({} bytes)", path.display(), bytes.len());
            Ok(())
        })
        .await
        .map_err(|e| MetaError::io("writing a snapshot", std::io::Error::other(e.to_string())))?
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> std::result::Result<Snapshot<TypeConfig>, StorageError> {
        let n = self.built.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (meta, bytes) = {
            let c = self.committed.lock();
            let id = match c.last_applied {
                Some(l) => format!("{}-{}-{n}", l.leader_id.term, l.index),
                None => format!("0-0-{n}"),
            };
            let meta =
                SnapshotMeta { last_log_id: c.last_applied, last_membership: c.membership.clone(), snapshot_id: id };
            let bytes = encode_snapshot(&meta, &c.namespace);
            (meta, bytes)
        };
        let index = meta.last_log_id.map(|l| l.index).unwrap_or(0);
        self.store_snapshot(index, bytes.clone()).await.map_err(|e| snap_error(&e))?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> std::result::Result<(Option<LogId>, StoredMembership), StorageError> {
        let c = self.committed.lock();
        Ok((c.last_applied, c.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> std::result::Result<Vec<()>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut replies = Vec::new();
        let mut c = self.committed.lock();
        for entry in entries {
            let mut proposal = None;
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(Command::Namespace { proposal: p, mutation }) => {
                    // The leader applied it to its working namespace already: failing here
                    // means this node's state differs from the leader's, so stop.
                    c.namespace.apply(&mutation).map_err(|e| {
                        sm_error(&MetaError::Corrupt {
                            what: "Raft log of",
                            file: self.dir.clone(),
                            offset: None,
                            reason: format!("entry {} does not apply to the committed namespace: {e}", entry.log_id),
                        })
                    })?;
                    proposal = Some(p);
                }
                EntryPayload::Membership(m) => c.membership = StoredMembership::new(Some(entry.log_id), m),
            }
            c.last_applied = Some(entry.log_id);
            if let Some(o) = &self.observer {
                o.applied(&c, &entry.log_id, proposal);
            }
            replies.push(());
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> std::result::Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaT,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> std::result::Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        let from = Path::new("the snapshot sent by the leader");
        let (inside, namespace) = decode_snapshot(&bytes, from).map_err(|e| snap_error(&e))?;
        if inside.last_log_id != meta.last_log_id {
            let e = MetaError::Corrupt {
                what: "snapshot",
                file: from.to_path_buf(),
                offset: None,
                reason: format!("it holds the state after {:?}, not {:?}", inside.last_log_id, meta.last_log_id),
            };
            return Err(snap_error(&e));
        }
        let index = meta.last_log_id.map(|l| l.index).unwrap_or(0);
        // On disk first: once the log is purged up to it, this file is the only copy.
        self.store_snapshot(index, bytes).await.map_err(|e| snap_error(&e))?;
        let mut c = self.committed.lock();
        *c = Committed { namespace, last_applied: meta.last_log_id, membership: meta.last_membership.clone() };
        info!("snapshot {} installed ({} inodes)", meta.snapshot_id, c.namespace.len());
        if let Some(o) = &self.observer {
            o.installed(&c);
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> std::result::Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let dir = self.dir.clone();
        let found = tokio::task::spawn_blocking(move || -> Result<Option<(SnapshotMetaT, Vec<u8>)>> {
            let Some((_, path)) = list_numbered(&dir, "snapshot-", ".snap")?.pop() else { return Ok(None) };
            let bytes = files::read_file(&path)?;
            let payload = decode_blob(&bytes, "snapshot", &path)?;
            let (meta, _): (SnapshotMetaT, _) = postcard::take_from_bytes(payload).map_err(|e| MetaError::Corrupt {
                what: "snapshot",
                file: path.clone(),
                offset: None,
                reason: format!("undecodable meta: {e}"),
            })?;
            Ok(Some((meta, bytes)))
        })
        .await
        .map_err(|e| snap_error(&MetaError::io("reading a snapshot", std::io::Error::other(e.to_string()))))?
        .map_err(|e| snap_error(&e))?;
        Ok(found.map(|(meta, bytes)| Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) }))
    }
}
