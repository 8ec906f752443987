//! A storage server as pfs-storage behaves, for the token manager's property tests and model
//! check: it refuses the writes of the sessions it fenced, and every write once half its lease
//! has passed since it sent its last accepted heartbeat (until it registers again).

use super::SessionId;
use std::collections::BTreeSet;

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(super) struct StorageModel {
    /// Sessions whose writes it refuses.
    pub fenced: BTreeSet<SessionId>,
    /// It accepts writes before this time (its own view of its lease), ms.
    pub writes_until: u64,
    /// Fences asked of it and not applied yet.
    pub inbox: BTreeSet<SessionId>,
    /// SIGSTOPped: it neither heartbeats nor applies fences.
    pub stopped: bool,
}

impl StorageModel {
    /// True if a write of `session` arriving now (or once it continues) could land.
    pub fn accepts(&self, session: SessionId, now: u64) -> bool {
        !self.fenced.contains(&session) && now < self.writes_until
    }

    /// It registered at `now`: it learned every evicted session, and its lease starts.
    pub fn registered(&mut self, evicted: Vec<SessionId>, now: u64, lease_ms: u64) {
        self.fenced.extend(evicted);
        self.inbox.clear();
        self.writes_until = now + lease_ms / 2;
    }

    /// pfs-meta accepted the heartbeat it sent at `now`.
    pub fn renewed(&mut self, now: u64, lease_ms: u64) {
        self.writes_until = now + lease_ms / 2;
    }

    /// Applies the fence of `session` it was asked for.
    pub fn fence(&mut self, session: SessionId) {
        self.inbox.remove(&session);
        self.fenced.insert(session);
    }
}
