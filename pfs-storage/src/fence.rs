//! Fencing of evicted client sessions: writes carrying a fenced session are refused, so a
//! late write of a dead or partitioned client cannot land over data written by the next
//! holder of its token.
//!
//! pfs-meta tells us whom to fence (`StorageNotify::Fence`) and waits for our confirmation
//! before it grants the evicted session's tokens to anyone else. A write admitted before the
//! fence holds a read guard of `gate` until it is on its way to disk; fencing takes the write
//! guard, so the confirmation is only sent once every admitted write of the session is done.
//! Sessions of older pfs-meta boots are fenced wholesale by `below` (session ids carry the
//! boot epoch in their high 32 bits).

use parking_lot::Mutex;
use pfs_common::token::SessionId;
use pfs_common::{ErrorCode, PfsError, Result};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{RwLock, RwLockReadGuard};

/// The fencing state of one storage server.
#[derive(Default)]
pub struct Fence {
    below: AtomicU64,
    fenced: Mutex<HashSet<SessionId>>,
    gate: RwLock<()>,
}

impl Fence {
    /// Admits a write of `session`; hold the guard until the write is done.
    ///
    /// Errors: Evicted, naming the session, when it is fenced.
    pub async fn admit(&self, session: SessionId) -> Result<RwLockReadGuard<'_, ()>> {
        let guard = self.gate.read().await;
        if session < self.below.load(Ordering::Acquire) || self.fenced.lock().contains(&session) {
            return Err(PfsError::new(
                ErrorCode::Evicted,
                format!("session {session:x} was evicted; its writes are fenced"),
            ));
        }
        Ok(guard)
    }

    /// Fences `sessions`, waiting until their admitted writes are done.
    pub async fn fence(&self, sessions: &[SessionId]) {
        let _all_quiet = self.gate.write().await;
        self.fenced.lock().extend(sessions.iter().copied());
    }

    /// Takes pfs-meta's state at (re-)registration: every session below `below` and the
    /// listed ones are fenced.
    pub async fn reset(&self, below: SessionId, fenced: &[SessionId]) {
        let _all_quiet = self.gate.write().await;
        self.below.fetch_max(below, Ordering::AcqRel);
        let mut f = self.fenced.lock();
        f.retain(|s| *s >= below);
        f.extend(fenced.iter().copied());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fenced_and_older_sessions_are_refused() {
        let f = Fence::default();
        assert!(f.admit(5).await.is_ok());
        f.fence(&[5]).await;
        assert_eq!(f.admit(5).await.unwrap_err().code, ErrorCode::Evicted);
        f.reset(2 << 32, &[(2 << 32) | 7]).await;
        assert!(f.admit((1 << 32) | 9).await.is_err(), "an older boot's session");
        assert!(f.admit((2 << 32) | 7).await.is_err());
        assert!(f.admit((2 << 32) | 8).await.is_ok());
    }

    #[tokio::test]
    async fn fencing_waits_for_admitted_writes() {
        let f = std::sync::Arc::new(Fence::default());
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
}
