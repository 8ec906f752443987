//! Raft traffic between meta nodes (role Meta only): openraft's append-entries, vote and
//! install-snapshot messages. pfs-common does not know openraft's types: the request travels
//! postcard-encoded in the frame's payload (an append or a snapshot chunk can be megabytes,
//! past the body limit), and the answer, small, postcard-encoded in the reply body.

use super::{service, MetaRequest};
use serde::{Deserialize, Serialize};

/// Which openraft message the payload holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RaftRpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

/// One Raft message from meta node `from` to meta node `to` (the receiver refuses one meant
/// for another node: a config that gives two nodes the same address must not mix their logs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftMessage {
    pub from: u64,
    pub to: u64,
    pub rpc: RaftRpc,
}

/// What a meta node reports of itself to `pfs meta status` (and to a node started with an
/// empty directory, which asks its peers whether a group exists before it founds one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: u64,
    /// "leader", "follower", "candidate" or "learner".
    pub state: String,
    pub term: u64,
    /// Index of the last entry applied to the committed namespace (0: none).
    pub applied: u64,
    /// Index of the last entry in its log (0: none).
    pub last_log: u64,
    /// The leader it knows, if any.
    pub leader: Option<u64>,
    /// The voters and learners of the membership it applied: (id, address, voter).
    pub members: Vec<(u64, String, bool)>,
}

/// Asks a meta node for its [`NodeStatus`] (any role).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetStatus;

/// Adds meta node `id` at `address` to the group (administrators only, to the leader): first
/// as a learner, which catches up from the log or a snapshot, then as a voter (openraft's
/// joint consensus). Answers once the new membership is committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddMember {
    pub id: u64,
    pub address: String,
}

/// Removes meta node `id` from the group (administrators only, to the leader). Refused if
/// it would leave no voter. Answers once the new membership is committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveMember {
    pub id: u64,
}

service! {
    /// Meta-node-to-meta-node traffic and status.
    pub enum RaftRequest in MetaRequest::Raft {
        /// The answer is postcard of openraft's `Result<Response, RaftError>`.
        Message(RaftMessage) -> Vec<u8>,
        Status(GetStatus) -> NodeStatus,
        AddMember(AddMember) -> NodeStatus,
        RemoveMember(RemoveMember) -> NodeStatus,
    }
}
