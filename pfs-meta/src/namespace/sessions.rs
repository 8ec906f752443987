//! The client sessions of the log: open ones (with the SHA-256 of their key, so a session
//! can be taken over by its holder after a failover and by nobody else) and evicted ones
//! (which storage servers must refuse for ever).
//!
//! A session id's high bits are its epoch: the Raft term of the leader that opened it
//! ([`pfs_common::token::first_session_of`]). Storage servers refuse every session below
//! [`SessionTable::fence_below`] (the oldest epoch of an open session, or the newest epoch
//! seen when none is open), so the evicted ones kept here are only those at or above it:
//! the table stays as small as the sessions that can still matter.
//!
//! Each open session also keeps the last request done in each of its slots (Lustre's
//! last_rcvd table, NFSv4.1's slot table): a namespace change sent again after its answer was
//! lost is answered from here instead of being done twice ([`SessionTable::replay`]). At most
//! [`REQUEST_SLOTS`] entries a session, gone with the session.
//!
//! Tokens and opens are not here: they stay on the leader and are reclaimed after a
//! failover (see [`crate::tokens`], "Recovery").

use pfs_common::token::{first_session_of, session_epoch as epoch_of, SessionId};
use pfs_common::wire::namespace::{RequestId, REQUEST_SLOTS};
use pfs_common::FileId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// An open session as the log knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// SHA-256 of the session's key ([`pfs_common::wire::tokens::SessionGrant::key`]).
    pub key_sha256: [u8; 32],
    /// When it was opened, ns since the Unix epoch.
    pub opened_ns: i64,
    /// The last request done in each slot the session used: its sequence number and the
    /// file it answered with.
    pub done: BTreeMap<u16, (u64, Option<FileId>)>,
}

/// What became of a request before ([`SessionTable::replay`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replay {
    /// Not done yet: do it.
    New,
    /// Done, answering with this file (or nothing).
    Done(Option<FileId>),
    /// A later request of the slot was done (`last`): this one is an old copy.
    Overtaken { last: u64 },
    /// The session is not open (or the slot is not one of [`REQUEST_SLOTS`]).
    NotOpen,
}

/// Open and evicted sessions (see the module documentation).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionTable {
    open: BTreeMap<SessionId, SessionRecord>,
    evicted: BTreeSet<SessionId>,
    /// The newest epoch of any session ever opened.
    newest_epoch: u32,
}

impl SessionTable {
    /// The open session `session`, if it is open.
    pub fn get(&self, session: SessionId) -> Option<&SessionRecord> {
        self.open.get(&session)
    }

    /// True if `session` is open or was evicted (an id that cannot be handed out again).
    pub fn knows(&self, session: SessionId) -> bool {
        self.open.contains_key(&session) || self.evicted.contains(&session)
    }

    /// True if `session` was evicted (storage servers refuse it).
    pub fn is_evicted(&self, session: SessionId) -> bool {
        self.evicted.contains(&session) || session < self.fence_below() && !self.open.contains_key(&session)
    }

    /// Whether `request` was done (see the module documentation).
    pub fn replay(&self, request: &RequestId) -> Replay {
        let Some(record) = self.open.get(&request.session) else { return Replay::NotOpen };
        if request.slot >= REQUEST_SLOTS {
            return Replay::NotOpen;
        }
        match record.done.get(&request.slot) {
            Some(&(seq, file)) if seq == request.seq => Replay::Done(file),
            Some(&(seq, _)) if seq > request.seq => Replay::Overtaken { last: seq },
            _ => Replay::New,
        }
    }

    /// Records `request` as done, answering with `file`; a no-op unless
    /// [`SessionTable::replay`] says New.
    pub(crate) fn record(&mut self, request: &RequestId, file: Option<FileId>) {
        if self.replay(request) == Replay::New {
            if let Some(r) = self.open.get_mut(&request.session) {
                r.done.insert(request.slot, (request.seq, file));
            }
        }
    }

    /// Every open session.
    pub fn open_sessions(&self) -> impl Iterator<Item = SessionId> + '_ {
        self.open.keys().copied()
    }

    /// Open sessions.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// True if no session is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// The evicted sessions at or above [`SessionTable::fence_below`], in id order.
    pub fn evicted(&self) -> Vec<SessionId> {
        self.evicted.iter().copied().collect()
    }

    /// Storage servers refuse every session below this id that is not open: the first id of
    /// the oldest open session's epoch, or of the newest epoch when
    /// no session is open. Never decreases (new sessions come from the newest epoch).
    pub fn fence_below(&self) -> SessionId {
        let oldest_open = self.open.keys().next().map(|s| epoch_of(*s));
        first_session_of(oldest_open.unwrap_or(self.newest_epoch).min(self.newest_epoch))
    }

    /// Records a new open session.
    pub(crate) fn insert(&mut self, session: SessionId, record: SessionRecord) {
        self.newest_epoch = self.newest_epoch.max(epoch_of(session));
        self.open.insert(session, record);
    }

    /// Records the end of `session`, as evicted or cleanly closed; forgets the evicted
    /// sessions that [`SessionTable::fence_below`] now covers.
    pub(crate) fn end(&mut self, session: SessionId, evicted: bool) {
        self.open.remove(&session);
        if evicted {
            self.evicted.insert(session);
        }
        let below = self.fence_below();
        self.evicted = self.evicted.split_off(&below);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_done_once_and_an_overtaken_copy_is_refused() {
        let mut t = SessionTable::default();
        let a = first_session_of(2) | 1;
        t.insert(a, record());
        let r = |slot, seq| RequestId { session: a, slot, seq };
        assert_eq!(t.replay(&r(0, 1)), Replay::New);
        t.record(&r(0, 1), Some(FileId(9)));
        assert_eq!(t.replay(&r(0, 1)), Replay::Done(Some(FileId(9))), "a repeat is answered");
        t.record(&r(0, 1), Some(FileId(10)));
        assert_eq!(t.replay(&r(0, 1)), Replay::Done(Some(FileId(9))), "a repeat records nothing");
        assert_eq!(t.replay(&r(1, 1)), Replay::New, "slots are independent");
        // A prepare-time refusal records nothing, so the slot can skip sequence numbers.
        t.record(&r(0, 3), None);
        assert_eq!(t.replay(&r(0, 1)), Replay::Overtaken { last: 3 });
        assert_eq!(t.replay(&r(0, 3)), Replay::Done(None));
        assert_eq!(t.replay(&r(REQUEST_SLOTS, 1)), Replay::NotOpen, "past the slots");
        assert_eq!(t.replay(&RequestId { session: a + 1, slot: 0, seq: 1 }), Replay::NotOpen);
        t.end(a, false);
        assert_eq!(t.replay(&r(0, 3)), Replay::NotOpen, "gone with the session");
    }

    fn record() -> SessionRecord {
        SessionRecord { key_sha256: [7; 32], opened_ns: 1, done: BTreeMap::new() }
    }

    #[test]
    fn evicted_sessions_are_kept_until_the_fence_covers_them() {
        let mut t = SessionTable::default();
        let (a, b) = (first_session_of(3) | 5, first_session_of(4) | 9);
        t.insert(a, record());
        t.insert(b, record());
        assert_eq!(t.fence_below(), first_session_of(3), "the oldest open session's epoch");
        t.end(b, true);
        assert_eq!(t.evicted(), vec![b]);
        assert!(t.is_evicted(b) && !t.is_evicted(a) && t.knows(b));
        // a closes: nothing of epoch 3 is open any more, the fence moves to epoch 4, and b
        // (epoch 4) is still listed.
        t.end(a, false);
        assert_eq!(t.fence_below(), first_session_of(4));
        assert_eq!(t.evicted(), vec![b]);
        assert!(t.is_evicted(a), "below the fence: refused, though closed cleanly");
        // A session of epoch 6 opens and b's epoch is left behind: b is covered by the fence.
        let c = first_session_of(6) | 1;
        t.insert(c, record());
        t.end(c, true);
        assert_eq!(t.fence_below(), first_session_of(6));
        assert_eq!(t.evicted(), vec![c]);
        assert!(t.is_evicted(b) && t.is_evicted(c) && t.is_empty());
    }
}
