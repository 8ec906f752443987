//! pfs-meta's replicated log: the namespace's mutations go through a Raft group (openraft 0.9,
//! storage-v2) of 1, 3 or 5 meta nodes before anyone is told of them.
//!
//! * [`log_store`]: the Raft log on disk (segments of crc32c-framed entries, group commit: an
//!   append is reported flushed only after its `fdatasync`), the vote and the purge point.
//! * [`state_machine`]: the committed namespace; snapshots are its checkpoints.
//!
//! The leader decides every mutation on its *working* namespace (the committed one plus the
//! mutations it proposed and that are not committed yet), so concurrent operations are
//! decided against each other without waiting for a round of the log; followers apply the
//! decided mutations as they are committed. See docs/ARCHITECTURE.md, "The metadata log".

pub mod files;
pub mod log_store;
pub mod network;
pub mod state_machine;

use crate::namespace::Mutation;
use serde::{Deserialize, Serialize};
use std::io::Cursor;

/// A meta node's id in the Raft group (`[[meta]] id`).
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The types of pfs-meta's Raft group.
    pub TypeConfig:
        D = Command,
        R = (),
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        Responder = openraft::impls::OneshotResponder<TypeConfig>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A log entry as openraft keeps it.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log position: (leader term and node, index).
pub type LogId = openraft::LogId<NodeId>;
/// A persisted vote: (term, node, committed).
pub type Vote = openraft::Vote<NodeId>;
/// The membership as stored with the log position that set it.
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
/// An error of a storage call, as openraft takes it.
pub type StorageError = openraft::StorageError<NodeId>;
/// The Raft handle of a meta node.
pub type Raft = openraft::Raft<TypeConfig>;

/// Which proposal of its leader an entry is: the leader's term, the leader process's run (a
/// random number drawn at start: a node that restarts may lead the same term again), and a
/// sequence number the run counts from 1 in that term. Lets the leader match a committed
/// entry to the mutation it decided on its working namespace (the entry's own log id is
/// only known once appended).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Proposal {
    pub term: u64,
    pub run: u64,
    pub seq: u64,
}

/// What a pfs-meta log entry carries (besides openraft's blank and membership entries).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A namespace mutation, fully decided by the leader that proposed it.
    Namespace { proposal: Proposal, mutation: Mutation },
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Namespace { proposal, .. } => write!(f, "namespace mutation {}.{}", proposal.term, proposal.seq),
        }
    }
}
