//! The chain table: every replication chain (see [`pfs_common::chain`]) with its members and
//! version. Part of the namespace state machine, so every change is logged in the WAL
//! (`Mutation::Create` carries the chains a new file needed, `Mutation::SetChains` every
//! membership change) and checkpointed with the tree.
//!
//! Placement. A file with `r` replicas striped over `k` positions takes `k` chains of `r`
//! servers with distinct heads. A chain exists once per (replica count, head): chains are
//! shared by every file placed on them, so a server failure changes a handful of chains, not
//! every file (the chain table of 3FS). New chains take the head's successors in server-id
//! order among the servers that are up, so the copies of one server's chunks spread over the
//! others.
//!
//! Membership ([`ChainTable::plan`]) is a pure function of the registry's view, run by
//! pfs-meta's chain keeper whenever a server comes or goes:
//! * a replica whose server is gone (down, with its lease surely over) goes offline, unless
//!   it is the chain's last serving replica (then the chain waits for it);
//! * a serving replica whose server restarted (a new boot id) is resynced, unless it is the
//!   last serving one (its lost unsynced writes are reported by fsync);
//! * an offline replica whose server is up again is resynced;
//! * a replica offline longer than `rereplicate_after_ms` is replaced by the up server
//!   holding the fewest replicas, which syncs.
//!
//! Resync ends with the server's `SyncDone`: [`ChainTable::sync_done`] marks it serving.

use pfs_common::chain::{Chain, ChainId, Replica, ReplicaState};
use pfs_common::ServerId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Why a chain change is refused ([`ChainTable::check_update`]): it is not a change of the
/// current table.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainUpdateError {
    /// `chain` is at version `current`; a change to version `proposed` needs `proposed - 1`.
    #[error("{chain} is at version {current}, the change is to version {proposed}")]
    Version { chain: ChainId, current: u64, proposed: u64 },
    /// `chain` does not exist.
    #[error("{chain} does not exist")]
    Unknown { chain: ChainId },
}

/// Every chain, by id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainTable {
    chains: BTreeMap<ChainId, Chain>,
    next_id: u32,
}

/// What the chain keeper knows of the storage servers when it plans.
#[derive(Clone, Debug, Default)]
pub struct ServerView {
    /// Up: registered, listed, heard from within the down timeout.
    pub up: BTreeSet<ServerId>,
    /// Down long enough that their lease is surely over (they accept no write any more).
    pub gone: BTreeSet<ServerId>,
    /// Registered with a new boot id since the last plan (unsynced writes may be lost).
    pub restarted: BTreeSet<ServerId>,
    /// Wall-clock time, ms since the Unix epoch.
    pub now_ms: u64,
    /// Replace a replica offline this long (ms).
    pub rereplicate_after_ms: u64,
}

impl ChainTable {
    /// Chain `id`.
    pub fn get(&self, id: ChainId) -> Option<&Chain> {
        self.chains.get(&id)
    }

    /// Every chain, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Chain> {
        self.chains.values()
    }

    /// Number of chains.
    pub fn len(&self) -> usize {
        self.chains.len()
    }

    /// True without chains.
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty()
    }

    /// Every member (any state) of the chains `ids`, sorted, without repeats.
    pub fn members_of(&self, ids: &[ChainId]) -> Vec<ServerId> {
        let set: BTreeSet<ServerId> =
            ids.iter().filter_map(|c| self.chains.get(c)).flat_map(|c| c.members.iter().map(|r| r.server)).collect();
        set.into_iter().collect()
    }

    /// Chains for a new file: `count` chains of `replicas` servers with distinct heads,
    /// starting at the `first`-th up server (round robin). Existing chains are reused when all
    /// their replicas serve on up servers; the chains to create are returned too (with ids
    /// from this table's counter; [`ChainTable::insert`] adds them).
    ///
    /// Errors: a message when fewer than `replicas` servers are up.
    pub fn place(
        &self,
        replicas: u8,
        up: &[ServerId],
        count: usize,
        first: u64,
    ) -> Result<(Vec<ChainId>, Vec<Chain>), String> {
        let r = replicas as usize;
        if up.len() < r {
            return Err(format!("{replicas} replicas need {replicas} storage servers up, and {} are", up.len()));
        }
        let n = up.len();
        let count = count.clamp(1, n);
        let start = (first % n as u64) as usize;
        let mut ids = Vec::with_capacity(count);
        let mut created = Vec::new();
        let mut next_id = self.next_id;
        for i in 0..count {
            let head = up[(start + i) % n];
            let healthy = self.chains.values().find(|c| {
                c.replicas == replicas
                    && c.head() == Some(head)
                    && c.members.len() == r
                    && c.members.iter().all(|m| m.state == ReplicaState::Serving && up.contains(&m.server))
            });
            match healthy {
                Some(c) => ids.push(c.id),
                None => {
                    let servers: Vec<ServerId> = (0..r).map(|j| up[(start + i + j) % n]).collect();
                    let chain = Chain::new(ChainId(next_id), &servers);
                    next_id += 1;
                    ids.push(chain.id);
                    created.push(chain);
                }
            }
        }
        Ok((ids, created))
    }

    /// Adds (or replaces) chains, advancing the id counter past them.
    pub fn insert(&mut self, chains: &[Chain]) {
        for c in chains {
            self.next_id = self.next_id.max(c.id.0 + 1);
            self.chains.insert(c.id, c.clone());
        }
    }

    /// Why `chains` cannot replace the current ones, if they cannot: each must exist with the
    /// version just below its own (a change of the current state, not of an older one).
    pub fn check_update(&self, chains: &[Chain]) -> Result<(), ChainUpdateError> {
        for c in chains {
            match self.chains.get(&c.id) {
                Some(old) if old.version.checked_add(1) == Some(c.version) => {}
                Some(old) => {
                    return Err(ChainUpdateError::Version { chain: c.id, current: old.version, proposed: c.version })
                }
                None => return Err(ChainUpdateError::Unknown { chain: c.id }),
            }
        }
        Ok(())
    }

    /// The membership changes `view` calls for (see the module documentation), each chain
    /// at its next version.
    pub fn plan(&self, view: &ServerView) -> Vec<Chain> {
        // Replicas per server, to pick the least loaded replacement.
        let mut load: BTreeMap<ServerId, usize> = view.up.iter().map(|s| (*s, 0)).collect();
        for c in self.chains.values() {
            for m in &c.members {
                *load.entry(m.server).or_default() += 1;
            }
        }
        let mut changed = Vec::new();
        for c in self.chains.values() {
            let mut next = c.clone();
            let serving = |ch: &Chain| ch.members.iter().filter(|m| m.state == ReplicaState::Serving).count();
            for i in 0..next.members.len() {
                let m = next.members[i];
                let others_serving = serving(&next) - usize::from(m.state == ReplicaState::Serving);
                match m.state {
                    // (The last serving replica stays: the chain waits for it.)
                    ReplicaState::Serving | ReplicaState::Syncing
                        if view.gone.contains(&m.server)
                            && (m.state == ReplicaState::Syncing || others_serving > 0) =>
                    {
                        next.members[i] =
                            Replica { server: m.server, state: ReplicaState::Offline, offline_since_ms: view.now_ms };
                    }
                    ReplicaState::Serving if view.restarted.contains(&m.server) && others_serving > 0 => {
                        next.members[i].state = ReplicaState::Syncing;
                    }
                    ReplicaState::Offline if view.up.contains(&m.server) => {
                        next.members[i] =
                            Replica { server: m.server, state: ReplicaState::Syncing, offline_since_ms: 0 };
                    }
                    ReplicaState::Offline
                        if view.now_ms.saturating_sub(m.offline_since_ms) >= view.rereplicate_after_ms =>
                    {
                        let taken: BTreeSet<ServerId> = next.members.iter().map(|r| r.server).collect();
                        let spare = load
                            .iter()
                            .filter(|(s, _)| view.up.contains(s) && !taken.contains(s))
                            .min_by_key(|(s, n)| (**n, **s))
                            .map(|(s, _)| *s);
                        if let Some(s) = spare {
                            *load.entry(s).or_default() += 1;
                            next.members[i] = Replica { server: s, state: ReplicaState::Syncing, offline_since_ms: 0 };
                        }
                    }
                    _ => {}
                }
            }
            // A restarted syncing replica starts its copy again (the new version tells it).
            let restarted_syncing =
                c.members.iter().any(|m| m.state == ReplicaState::Syncing && view.restarted.contains(&m.server));
            next.normalize();
            if next.members != c.members || restarted_syncing {
                next.version = c.version + 1;
                changed.push(next);
            }
        }
        changed
    }

    /// `server` finished copying `chain` at `version`: the new state of the chain (it serves
    /// reads now), or `None` when the chain moved on or `server` is not syncing in it.
    pub fn sync_done(&self, server: ServerId, chain: ChainId, version: u64) -> Option<Chain> {
        let c = self.chains.get(&chain)?;
        if c.version != version || c.state_of(server) != Some(ReplicaState::Syncing) {
            return None;
        }
        let mut next = c.clone();
        for m in &mut next.members {
            if m.server == server {
                m.state = ReplicaState::Serving;
            }
        }
        next.normalize();
        next.version += 1;
        Some(next)
    }

    /// Serving replicas missing from chains, summed over chains (for `pfs df`).
    pub fn missing_replicas(&self) -> u64 {
        self.chains.values().map(|c| (c.replicas as usize).saturating_sub(c.readers().count()) as u64).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(ids: &[u32]) -> Vec<ServerId> {
        ids.iter().map(|i| ServerId(*i)).collect()
    }

    fn view(up: &[u32], gone: &[u32], now_ms: u64) -> ServerView {
        ServerView {
            up: s(up).into_iter().collect(),
            gone: s(gone).into_iter().collect(),
            restarted: BTreeSet::new(),
            now_ms,
            rereplicate_after_ms: 1000,
        }
    }

    fn apply(t: &mut ChainTable, v: &ServerView) -> Vec<Chain> {
        let changed = t.plan(v);
        t.check_update(&changed).unwrap();
        t.insert(&changed);
        changed
    }

    #[test]
    fn updates_must_be_the_next_version_of_an_existing_chain() {
        let t = ChainTable::default();
        let (_, created) = t.place(2, &s(&[1, 2, 3]), 1, 0).unwrap();
        let mut t = t;
        t.insert(&created);
        let c = created[0].clone();
        let next = Chain { version: c.version + 1, ..c.clone() };
        assert_eq!(t.check_update(std::slice::from_ref(&next)), Ok(()));
        let same = ChainUpdateError::Version { chain: c.id, current: c.version, proposed: c.version };
        assert_eq!(t.check_update(std::slice::from_ref(&c)), Err(same));
        let skip = Chain { version: c.version + 2, ..c.clone() };
        let skipped = ChainUpdateError::Version { chain: c.id, current: c.version, proposed: c.version + 2 };
        assert_eq!(t.check_update(&[next.clone(), skip]), Err(skipped));
        let other = Chain { id: ChainId(77), ..next };
        assert_eq!(t.check_update(&[other]), Err(ChainUpdateError::Unknown { chain: ChainId(77) }));
    }

    #[test]
    fn placement_spreads_heads_and_never_repeats_a_server() {
        let t = ChainTable::default();
        let (ids, created) = t.place(2, &s(&[1, 2, 3, 4]), 4, 1).unwrap();
        assert_eq!(ids.len(), 4);
        let heads: BTreeSet<_> = created.iter().map(|c| c.head().unwrap()).collect();
        assert_eq!(heads.len(), 4);
        for c in &created {
            let members: BTreeSet<_> = c.members.iter().map(|m| m.server).collect();
            assert_eq!(members.len(), 2, "{}", c.describe());
        }
        assert!(t.place(3, &s(&[1, 2]), 2, 0).is_err());
        // Reused once they exist.
        let mut t = t;
        t.insert(&created);
        let (again, new) = t.place(2, &s(&[1, 2, 3, 4]), 2, 0).unwrap();
        assert!(new.is_empty());
        assert_eq!(again.len(), 2);
    }

    #[test]
    fn failure_resync_and_replacement() {
        let mut t = ChainTable::default();
        let (_, created) = t.place(2, &s(&[1, 2, 3]), 3, 0).unwrap();
        t.insert(&created);
        // Server 2 is gone: out of every chain it served, which keep their other replica.
        let changed = apply(&mut t, &view(&[1, 3], &[2], 100));
        assert_eq!(changed.len(), 2);
        for c in t.iter() {
            assert_eq!(c.readers().count(), if c.state_of(ServerId(2)).is_some() { 1 } else { 2 });
            assert_ne!(c.head(), Some(ServerId(2)));
        }
        // Nothing changes while it stays away (before the re-replication deadline).
        assert!(t.plan(&view(&[1, 3], &[2], 500)).is_empty());
        // It comes back: syncing, at the tail; serving once it says it is done.
        let changed = apply(&mut t, &view(&[1, 2, 3], &[], 600));
        assert_eq!(changed.len(), 2);
        for c in &changed {
            assert_eq!(c.writers().last(), Some(ServerId(2)));
            assert_eq!(c.readers().count(), 1);
            let done = t.sync_done(ServerId(2), c.id, c.version).unwrap();
            assert_eq!(done.readers().count(), 2);
            assert!(t.sync_done(ServerId(2), c.id, c.version - 1).is_none(), "an old version is ignored");
            t.insert(&[done]);
        }
        // Gone for good: replaced, after the deadline, by a server not in the chain.
        apply(&mut t, &view(&[1, 3], &[2], 700));
        let changed = apply(&mut t, &view(&[1, 3], &[2], 1800));
        assert!(!changed.is_empty());
        for c in t.iter() {
            assert!(c.state_of(ServerId(2)).is_none(), "{}", c.describe());
            let members: BTreeSet<_> = c.members.iter().map(|m| m.server).collect();
            assert_eq!(members.len(), 2, "{}", c.describe());
        }
    }

    #[test]
    fn the_last_serving_replica_stays() {
        let mut t = ChainTable::default();
        let (_, created) = t.place(1, &s(&[1, 2]), 2, 0).unwrap();
        t.insert(&created);
        assert!(t.plan(&view(&[2], &[1], 10)).is_empty());
        let mut v = view(&[1, 2], &[], 10);
        v.restarted.insert(ServerId(1));
        assert!(t.plan(&v).is_empty(), "a single replica cannot resync from anyone");
    }

    /// A model of one chain under failures: servers hold sets of write ids; the chain keeper
    /// ([`ChainTable::plan`]) and resync ([`ChainTable::sync_done`], the syncing replica taking
    /// a copy of a serving one) drive membership, as pfs-meta and the storage servers do.
    mod model {
        use super::*;
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        enum Step {
            /// A client writes through the chain; acknowledged only if every replica in the
            /// write path is alive (the tail answers after all wrote).
            Write,
            /// SIGKILL, with the disk wiped or not. Only while another serving replica stays
            /// alive: at most replicas - 1 of the chain's servers fail at once.
            Crash { server: u32, wipe: bool },
            /// The process starts again (registering with a new boot id).
            Restart { server: u32 },
            /// The chain keeper runs after `ms` of wall-clock time.
            Keep { ms: u64 },
            /// A syncing replica finishes copying from a serving one.
            SyncDone { server: u32 },
        }

        fn step(servers: u32) -> impl Strategy<Value = Step> {
            prop_oneof![
                3 => Just(Step::Write),
                1 => (1..=servers, any::<bool>()).prop_map(|(server, wipe)| Step::Crash { server, wipe }),
                1 => (1..=servers).prop_map(|server| Step::Restart { server }),
                2 => (0u64..1500).prop_map(|ms| Step::Keep { ms }),
                2 => (1..=servers).prop_map(|server| Step::SyncDone { server }),
            ]
        }

        struct World {
            table: ChainTable,
            id: ChainId,
            alive: BTreeMap<ServerId, bool>,
            data: BTreeMap<ServerId, BTreeSet<u64>>,
            acked: BTreeSet<u64>,
            next_write: u64,
            now_ms: u64,
        }

        impl World {
            fn chain(&self) -> &Chain {
                self.table.get(self.id).unwrap()
            }

            fn keep(&mut self, restarted: BTreeSet<ServerId>) {
                let view = ServerView {
                    up: self.alive.iter().filter(|(_, a)| **a).map(|(s, _)| *s).collect(),
                    gone: self.alive.iter().filter(|(_, a)| !**a).map(|(s, _)| *s).collect(),
                    restarted,
                    now_ms: self.now_ms,
                    rereplicate_after_ms: 1000,
                };
                let changed = self.table.plan(&view);
                self.table.check_update(&changed).unwrap();
                self.table.insert(&changed);
            }

            fn alive_serving(&self) -> Vec<ServerId> {
                self.chain().readers().filter(|s| self.alive[s]).collect()
            }

            /// Every acknowledged write is on every replica that serves reads and is alive,
            /// and at least one such replica exists.
            fn check(&self) -> Result<(), String> {
                let serving = self.alive_serving();
                if serving.is_empty() {
                    return Err(format!("no live serving replica: {}", self.chain().describe()));
                }
                for s in serving {
                    if let Some(w) = self.acked.iter().find(|w| !self.data[&s].contains(w)) {
                        return Err(format!(
                            "{s} serves reads without acknowledged write {w}: {}",
                            self.chain().describe()
                        ));
                    }
                }
                Ok(())
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]
            #[test]
            fn acknowledged_writes_survive_membership_changes(
                servers in 2u32..=5,
                replicas in 2u8..=3,
                steps in proptest::collection::vec(step(5), 1..80),
            ) {
                let replicas = replicas.min(servers as u8);
                let all: Vec<ServerId> = (1..=servers).map(ServerId).collect();
                let mut table = ChainTable::default();
                let (ids, created) = table.place(replicas, &all, 1, 0).unwrap();
                table.insert(&created);
                let mut w = World {
                    table,
                    id: ids[0],
                    alive: all.iter().map(|s| (*s, true)).collect(),
                    data: all.iter().map(|s| (*s, BTreeSet::new())).collect(),
                    acked: BTreeSet::new(),
                    next_write: 0,
                    now_ms: 0,
                };
                for st in steps {
                    match st {
                        Step::Write => {
                            let id = w.next_write;
                            w.next_write += 1;
                            let writers: Vec<ServerId> = w.chain().writers().collect();
                            // Forwarded down the chain until a dead replica stops it.
                            let mut all_wrote = !writers.is_empty();
                            for s in &writers {
                                if !w.alive[s] {
                                    all_wrote = false;
                                    break;
                                }
                                w.data.get_mut(s).unwrap().insert(id);
                            }
                            if all_wrote {
                                w.acked.insert(id);
                            }
                        }
                        Step::Crash { server, wipe } => {
                            let s = ServerId(server);
                            if s.0 > servers || !w.alive[&s] {
                                continue;
                            }
                            if w.alive_serving().iter().all(|x| *x == s) {
                                continue; // the last live serving replica: beyond the fault budget
                            }
                            w.alive.insert(s, false);
                            if wipe {
                                w.data.get_mut(&s).unwrap().clear();
                            }
                        }
                        Step::Restart { server } => {
                            let s = ServerId(server);
                            if s.0 > servers || w.alive[&s] {
                                continue;
                            }
                            w.alive.insert(s, true);
                            // pfs-meta re-plans while answering the registration, before the
                            // server can serve a read.
                            w.keep([s].into_iter().collect());
                        }
                        Step::Keep { ms } => {
                            w.now_ms += ms;
                            w.keep(BTreeSet::new());
                        }
                        Step::SyncDone { server } => {
                            let s = ServerId(server);
                            let c = w.chain().clone();
                            if s.0 > servers || !w.alive[&s] || c.state_of(s) != Some(ReplicaState::Syncing) {
                                continue;
                            }
                            let Some(source) = w.alive_serving().into_iter().find(|x| *x != s) else { continue };
                            // The copy, then the writes it received meanwhile (a subset).
                            let copy = w.data[&source].clone();
                            w.data.get_mut(&s).unwrap().extend(copy);
                            let done = w.table.sync_done(s, c.id, c.version).unwrap();
                            w.table.insert(&[done]);
                        }
                    }
                    prop_assert_eq!(w.check(), Ok(()));
                    let c = w.chain();
                    let members: BTreeSet<ServerId> = c.members.iter().map(|m| m.server).collect();
                    prop_assert_eq!(members.len(), c.members.len(), "a server twice in {}", c.describe());
                }
            }
        }
    }
}
