//! Replication chains: the ordered storage servers that hold every copy of the chunks placed
//! on one stripe position, after chain replication (van Renesse and Schneider, OSDI 2004) as
//! CRAQ-style chains are used by DeepSeek 3FS (`docs/design_notes.md`: a chain table of
//! targets with a version bumped on every membership change).
//!
//! A file's layout names one chain per stripe position; chunk `x` lives on every replica of
//! `chains[x mod stripe_count]`. A write goes to the chain's head, each replica forwards it
//! to its successor, and the tail's answer travels back, so an acknowledged write is on every
//! replica in the write path. Reads go to any `Serving` replica.
//!
//! Membership is decided by pfs-meta alone and logged in its WAL; every change bumps the
//! chain's `version`, and a storage server refuses a request carrying another version than the
//! one it was told (Stale), so nobody writes through, or reads from, a chain that has moved on.

use crate::ids::ServerId;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Chain id, unique in the cluster and never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChainId(pub u32);

impl fmt::Display for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "chain-{}", self.0)
    }
}

/// Most replicas of a chunk.
pub const MAX_REPLICAS: u8 = 3;

/// What a replica of a chain is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaState {
    /// Holds every acknowledged write: in the write path, and serves reads.
    Serving,
    /// Being filled from a serving replica: in the write path (at the tail, so it sees every
    /// new write), serves no reads until pfs-meta marks it serving.
    Syncing,
    /// Down or restarted, out of the write path; it must resync before it serves again.
    Offline,
}

impl ReplicaState {
    /// A short lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaState::Serving => "serving",
            ReplicaState::Syncing => "syncing",
            ReplicaState::Offline => "offline",
        }
    }
}

/// One replica of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    pub server: ServerId,
    pub state: ReplicaState,
    /// When pfs-meta took it offline, ms since the Unix epoch (0 otherwise): a replica offline
    /// longer than `timeouts.rereplicate_after_ms` is replaced by another server.
    pub offline_since_ms: u64,
}

/// A chain: its replicas in write order (serving ones first, then syncing ones, then offline
/// ones) and its version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    pub id: ChainId,
    /// Bumped by every membership or state change.
    pub version: u64,
    /// How many replicas the chain should have (1..=[`MAX_REPLICAS`]).
    pub replicas: u8,
    pub members: Vec<Replica>,
}

/// A request's claim about the chain it travels on: id and version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainRef {
    pub id: ChainId,
    pub version: u64,
}

impl Chain {
    /// A new chain of `servers`, all serving, version 1.
    pub fn new(id: ChainId, servers: &[ServerId]) -> Chain {
        let members = servers
            .iter()
            .map(|&server| Replica { server, state: ReplicaState::Serving, offline_since_ms: 0 })
            .collect();
        Chain { id, version: 1, replicas: servers.len() as u8, members }
    }

    /// Whether the chain has the shape pfs-meta gives every chain: 1 to [`MAX_REPLICAS`]
    /// replicas wanted, at most [`MAX_REPLICAS`] members (a replaced replica takes its
    /// predecessor's place), each server once. A chain received from a peer (a Stale answer's)
    /// is used only if it is.
    pub fn well_formed(&self) -> bool {
        let distinct =
            self.members.iter().enumerate().all(|(i, m)| self.members[..i].iter().all(|o| o.server != m.server));
        (1..=MAX_REPLICAS).contains(&self.replicas) && self.members.len() <= MAX_REPLICAS as usize && distinct
    }

    /// This chain's id and version, as a request carries them.
    pub fn at(&self) -> ChainRef {
        ChainRef { id: self.id, version: self.version }
    }

    /// The replicas in the write path, in order: serving, then syncing.
    pub fn writers(&self) -> impl Iterator<Item = ServerId> + '_ {
        let serving = self.members.iter().filter(|r| r.state == ReplicaState::Serving);
        let syncing = self.members.iter().filter(|r| r.state == ReplicaState::Syncing);
        serving.chain(syncing).map(|r| r.server)
    }

    /// The first replica of the write path.
    pub fn head(&self) -> Option<ServerId> {
        self.writers().next()
    }

    /// The replica after `me` in the write path (`None` at the tail or if `me` is not in it).
    pub fn successor(&self, me: ServerId) -> Option<ServerId> {
        let mut w = self.writers().skip_while(|s| *s != me);
        w.next()?;
        w.next()
    }

    /// Replicas that serve reads.
    pub fn readers(&self) -> impl Iterator<Item = ServerId> + '_ {
        self.members.iter().filter(|r| r.state == ReplicaState::Serving).map(|r| r.server)
    }

    /// The state of `server` in this chain, if it is a member.
    pub fn state_of(&self, server: ServerId) -> Option<ReplicaState> {
        self.members.iter().find(|r| r.server == server).map(|r| r.state)
    }

    /// Serving replicas fewer than the chain should have.
    pub fn degraded(&self) -> bool {
        self.readers().count() < self.replicas as usize
    }

    /// Puts the members in write order (serving, syncing, offline), keeping the relative order
    /// within each state.
    pub fn normalize(&mut self) {
        let rank = |s: ReplicaState| match s {
            ReplicaState::Serving => 0,
            ReplicaState::Syncing => 1,
            ReplicaState::Offline => 2,
        };
        self.members.sort_by_key(|r| rank(r.state));
    }

    /// One line for people: `chain-3 v5 [storage-1 serving, storage-2 syncing]`.
    pub fn describe(&self) -> String {
        let members: Vec<String> = self.members.iter().map(|r| format!("{} {}", r.server, r.state.as_str())).collect();
        format!("{} v{} [{}]", self.id, self.version, members.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(states: &[(u32, ReplicaState)]) -> Chain {
        let members =
            states.iter().map(|&(s, state)| Replica { server: ServerId(s), state, offline_since_ms: 0 }).collect();
        Chain { id: ChainId(1), version: 1, replicas: states.len() as u8, members }
    }

    #[test]
    fn write_path_is_serving_then_syncing() {
        use ReplicaState::*;
        let c = chain(&[(1, Offline), (2, Syncing), (3, Serving)]);
        assert_eq!(c.writers().collect::<Vec<_>>(), vec![ServerId(3), ServerId(2)]);
        assert_eq!(c.head(), Some(ServerId(3)));
        assert_eq!(c.successor(ServerId(3)), Some(ServerId(2)));
        assert_eq!(c.successor(ServerId(2)), None);
        assert_eq!(c.successor(ServerId(1)), None);
        assert_eq!(c.readers().collect::<Vec<_>>(), vec![ServerId(3)]);
        assert!(c.degraded());
        let mut n = c.clone();
        n.normalize();
        assert_eq!(n.members.iter().map(|r| r.server.0).collect::<Vec<_>>(), vec![3, 2, 1]);
        assert!(!Chain::new(ChainId(2), &[ServerId(1), ServerId(2)]).degraded());
    }

    #[test]
    fn only_chains_shaped_as_pfs_meta_makes_them_are_well_formed() {
        use ReplicaState::*;
        assert!(chain(&[(1, Serving), (2, Syncing), (3, Offline)]).well_formed());
        assert!(!chain(&[(1, Serving), (2, Serving), (3, Serving), (4, Serving)]).well_formed(), "4 members");
        assert!(!chain(&[(1, Serving), (1, Syncing)]).well_formed(), "a server twice");
        assert!(!chain(&[]).well_formed(), "no replica wanted");
    }
}
