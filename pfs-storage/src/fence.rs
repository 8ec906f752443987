//! Which writes this storage server admits: none without a lease from pfs-meta, and none of
//! a fenced (evicted) session. So a late write of a dead or partitioned client cannot land
//! over data written by the next holder of its token, and a server cut off from pfs-meta
//! (which may be fencing sessions it cannot tell us about) stops accepting writes by itself.
//!
//! * **Fenced sessions.** pfs-meta tells us whom to fence (`StorageNotify::Fence`) and waits
//!   for our confirmation before it grants the evicted session's tokens to anyone else. A
//!   write admitted before the fence holds a read guard of `gate` until it is on its way to
//!   disk; fencing takes the write guard, so the confirmation is only sent once every admitted
//!   write of the session is done. Sessions of older pfs-meta boots are fenced wholesale by
//!   `below` (session ids carry their epoch, the Raft term that opened them, in their high
//!   24 bits).
//! * **The lease.** Registration grants a lease of `lease_ms`; every heartbeat pfs-meta
//!   accepts renews it. We refuse writes once half the lease has passed since we *sent* the
//!   last accepted heartbeat (pfs-meta counts the whole lease from when it *received* it), so
//!   when pfs-meta stops counting on us (it declared us down, or lost us) we have stopped
//!   admitting writes well before, even with clocks running at somewhat different rates. We
//!   admit writes again after registering, which teaches us every fence we missed, or after a
//!   late heartbeat pfs-meta still accepts: then it has not counted our lease out, so every
//!   fence it decided is one it still waits for us to confirm (the notification is on our
//!   connection), and no evicted session's token has moved yet. (3FS's storage services stop
//!   serving when they lose their manager's lease in the same way.)
//!
//! * **Terms.** Every message of pfs-meta names the Raft term of the leader that sent it; we
//!   keep the highest seen and refuse anything older ([`Fence::check_term`]): a leader that
//!   was paused or cut off and then deposed cannot renew our lease, fence, remove files or
//!   change chains once we have heard from its successor. Kept in memory: a restarted server
//!   learns the current term when it registers, before it admits any write.
//!
//! * **Stopped writes.** A background worker whose loss makes writes unsafe (the hasher, the
//!   pfs-meta session) died: no write is admitted again in this process, and the refusal names
//!   the worker (see [`crate::supervisor`]).
//!
//! What remains: a write admitted just before the lease ran out and then held up (the process
//! stopped between admission and the disk write) lands when the process continues. GPFS
//! closes that window with disk fencing (SCSI persistent reservations), which local files
//! cannot offer.

use crate::error::{Result, StorageError};
use parking_lot::Mutex;
use pfs_common::token::SessionId;
use pfs_common::ServerId;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{RwLock, RwLockReadGuard};

/// The fencing state and lease of one storage server.
pub struct Fence {
    server: ServerId,
    below: AtomicU64,
    fenced: Mutex<HashSet<SessionId>>,
    lease: Mutex<Lease>,
    gate: RwLock<()>,
    /// Why writes are refused for good, once a worker they need died.
    stopped: Mutex<Option<String>>,
    /// The highest leadership term of pfs-meta seen.
    term: AtomicU64,
}

#[derive(Clone, Copy, Debug)]
struct Lease {
    /// Writes are admitted before this instant; `None` until the first registration.
    until: Option<Instant>,
    /// Half of the lease pfs-meta granted.
    half: Duration,
}

impl Fence {
    /// The fence of storage server `server`: no lease yet, so no write is admitted until it
    /// registers with pfs-meta.
    pub fn new(server: ServerId) -> Fence {
        Fence {
            server,
            below: AtomicU64::new(0),
            fenced: Mutex::new(HashSet::new()),
            lease: Mutex::new(Lease { until: None, half: Duration::ZERO }),
            gate: RwLock::new(()),
            stopped: Mutex::new(None),
            term: AtomicU64::new(0),
        }
    }

    /// Takes `term`, the leadership term a message of pfs-meta was sent in; the highest seen
    /// stays. Errors: StaleTerm when a newer term was seen (refuse the message).
    pub fn check_term(&self, term: u64) -> Result<()> {
        let seen = self.term.fetch_max(term, Ordering::AcqRel);
        if term < seen {
            return Err(StorageError::StaleTerm { server: self.server, term, seen });
        }
        Ok(())
    }

    /// The highest leadership term of pfs-meta seen (0 before the first registration).
    pub fn term(&self) -> u64 {
        self.term.load(Ordering::Acquire)
    }

    /// Admits a write of `session`; hold the guard until the write is done.
    ///
    /// Errors: WritesStopped naming the dead worker; NoLease when the server holds no lease
    /// from pfs-meta; Evicted, naming the session, when it is fenced.
    pub async fn admit(&self, session: SessionId) -> Result<RwLockReadGuard<'_, ()>> {
        let guard = self.gate.read().await;
        self.check_running()?;
        let lease = *self.lease.lock();
        match lease.until {
            None => {
                return Err(StorageError::NoLease { server: self.server, why: "not registered yet".into() });
            }
            Some(until) if Instant::now() >= until => {
                let why = format!("no heartbeat accepted for {} ms", lease.half.as_millis());
                return Err(StorageError::NoLease { server: self.server, why });
            }
            Some(_) => {}
        }
        if session < self.below.load(Ordering::Acquire) || self.fenced.lock().contains(&session) {
            return Err(StorageError::Evicted { server: self.server, session });
        }
        Ok(guard)
    }

    /// Fences `sessions`, waiting until their admitted writes are done.
    pub async fn fence(&self, sessions: &[SessionId]) {
        let _all_quiet = self.gate.write().await;
        self.fenced.lock().extend(sessions.iter().copied());
    }

    /// Takes pfs-meta's state at (re-)registration: every session below `below` and the
    /// listed ones are fenced; then the lease of `lease_ms` starts, counted from `sent`, when
    /// the registration was sent.
    pub async fn registered(&self, below: SessionId, fenced: &[SessionId], lease_ms: u64, sent: Instant) {
        let _all_quiet = self.gate.write().await;
        self.below.fetch_max(below, Ordering::AcqRel);
        {
            let mut f = self.fenced.lock();
            f.retain(|s| *s >= below);
            f.extend(fenced.iter().copied());
        }
        let half = Duration::from_millis(lease_ms / 2);
        *self.lease.lock() = Lease { until: Some(sent + half), half };
    }

    /// pfs-meta accepted a heartbeat sent at `sent`: the lease runs on.
    pub fn renewed(&self, sent: Instant) {
        let mut l = self.lease.lock();
        if let Some(until) = l.until {
            l.until = Some(until.max(sent + l.half));
        }
    }

    /// The session with pfs-meta ended: no writes until it registers again (a new pfs-meta may
    /// have fenced sessions we have not heard of; an old one counts our lease down anyway).
    pub fn lost(&self) {
        self.lease.lock().until = None;
    }

    /// Refuses every write from now on, for `why` (names the worker that died). Waits until
    /// the writes already admitted are done.
    pub async fn stop(&self, why: String) {
        *self.stopped.lock() = Some(why);
        let _all_quiet = self.gate.write().await;
    }

    /// Errors (WritesStopped, naming why) once [`Fence::stop`] was called.
    pub fn check_running(&self) -> Result<()> {
        match &*self.stopped.lock() {
            Some(why) => Err(StorageError::WritesStopped { server: self.server, why: why.clone() }),
            None => Ok(()),
        }
    }

    /// True while writes are admitted (a lease runs).
    pub fn has_lease(&self) -> bool {
        self.lease.lock().until.is_some_and(|u| Instant::now() < u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: ServerId = ServerId(7);

    #[tokio::test]
    async fn fenced_and_older_sessions_are_refused() {
        let f = Fence::new(S);
        f.registered(0, &[], 60_000, Instant::now()).await;
        assert!(f.admit(5).await.is_ok());
        f.fence(&[5]).await;
        assert!(matches!(f.admit(5).await, Err(StorageError::Evicted { server: S, session: 5 })));
        f.registered(2 << 32, &[(2 << 32) | 7], 60_000, Instant::now()).await;
        assert!(f.admit((1 << 32) | 9).await.is_err(), "an older boot's session");
        assert!(f.admit((2 << 32) | 7).await.is_err());
        assert!(f.admit((2 << 32) | 8).await.is_ok());
    }

    #[tokio::test]
    async fn fencing_waits_for_admitted_writes() {
        let f = std::sync::Arc::new(Fence::new(S));
        f.registered(0, &[], 60_000, Instant::now()).await;
        let guard = f.admit(3).await.unwrap();
        let f2 = f.clone();
        let fencing = tokio::spawn(async move { f2.fence(&[3]).await });
        // The fence cannot complete while the admitted write holds its guard.
        tokio::task::yield_now().await;
        assert!(!fencing.is_finished());
        drop(guard);
        fencing.await.unwrap();
        assert!(f.admit(3).await.is_err());
    }

    #[tokio::test]
    async fn no_writes_without_a_lease() {
        let f = Fence::new(S);
        assert!(matches!(f.admit(1).await, Err(StorageError::NoLease { .. })), "before registration");
        // A lease of 0 ms, or one sent long ago, has run out: refused.
        f.registered(0, &[], 0, Instant::now()).await;
        assert!(matches!(f.admit(1).await, Err(StorageError::NoLease { .. })));
        let long_ago = Instant::now() - Duration::from_secs(60);
        f.registered(0, &[], 10_000, long_ago).await;
        assert!(!f.has_lease());
        // A heartbeat accepted now renews it; losing pfs-meta ends it.
        f.renewed(Instant::now());
        assert!(f.has_lease() && f.admit(1).await.is_ok());
        f.lost();
        assert!(matches!(f.admit(1).await, Err(StorageError::NoLease { .. })));
        assert_eq!(f.admit(1).await.unwrap_err().code(), pfs_common::ErrorCode::NoLease);
    }
}
