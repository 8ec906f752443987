//! Failover: how I/O on a replicated chunk carries on when a replica fails.
//!
//! A request that meets a replica that is down, times out, or answers Stale (the chain moved
//! on: pfs-meta took a server out, or put one back) is tried again on the chain as pfs-meta
//! has it now: at once when that is a new version, otherwise backing off up to
//! [`BACKOFF_MAX_MS`], until `failover_ms` has passed without a new version. A chain of one
//! replica has nowhere else to go, so only Stale is retried there, and NoLease (the server
//! waits for its lease from a new metadata leader).
//!
//! A Stale answer carries the chain as the answering server has it
//! ([`crate::Error::current_chain`]); when that is newer than the one the request was sent
//! on, the request goes on with it at once, without asking pfs-meta. An older one (the server
//! has not heard of the change yet) is ignored.

use crate::error::{Error, Result};
use crate::session::Session;
use pfs_common::chain::{Chain, ChainId};
use pfs_common::ErrorCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest pause between two attempts, ms.
pub const BACKOFF_MAX_MS: u64 = 200;

/// The retry state of one request.
pub(crate) struct Failover {
    deadline: Instant,
    backoff: Duration,
}

impl Failover {
    pub(crate) fn new(session: &Session) -> Failover {
        let deadline = Instant::now() + Duration::from_millis(session.options.failover_ms);
        Failover { deadline, backoff: Duration::ZERO }
    }

    /// Whether `e`, from a replica of `chain`, may go away on another replica or a newer
    /// chain.
    pub(crate) fn retryable(e: &Error, chain: &Chain) -> bool {
        match e.code() {
            // The server is registering again with pfs-meta (a new leader): it will take
            // writes within the failover time.
            ErrorCode::Stale | ErrorCode::NoLease => true,
            ErrorCode::Unavailable | ErrorCode::TimedOut => chain.members.len() > 1,
            _ => false,
        }
    }

    /// [`Failover::again`], unless `told` (the chain a Stale answer carried) is chain `id`,
    /// well formed and newer than version `seen`: then that chain, at once, remembered as the
    /// session's, and pfs-meta is not asked.
    pub(crate) async fn again_with(
        &mut self,
        session: &Session,
        id: ChainId,
        seen: u64,
        told: Option<&Chain>,
    ) -> Result<Option<Arc<Chain>>> {
        if let Some(c) = told.filter(|c| c.id == id && c.version > seen && c.well_formed()) {
            session.counters.chains_told.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(session.learn_chain(c.clone())));
        }
        self.again(session, id, seen).await
    }

    /// The newest chain `id` among what Stale answers carried (`errors`), for
    /// [`Failover::again_with`].
    pub(crate) fn newest<'a>(id: ChainId, told: impl IntoIterator<Item = &'a Chain>) -> Option<&'a Chain> {
        told.into_iter().filter(|c| c.id == id).max_by_key(|c| c.version)
    }

    /// Chain `id` to try again on: at once if pfs-meta's chain moved on from version `seen` (a
    /// new chain is progress, whatever the time); otherwise after a pause (a storage server may
    /// not have heard of a change yet, or pfs-meta not acted on a failure yet), as pfs-meta has
    /// it then. `None` once the deadline passed with the chain still at `seen`.
    pub(crate) async fn again(&mut self, session: &Session, id: ChainId, seen: u64) -> Result<Option<Arc<Chain>>> {
        let chain = session.refresh_chain(id).await?;
        if chain.version != seen {
            return Ok(Some(chain));
        }
        if Instant::now() >= self.deadline {
            return Ok(None);
        }
        self.backoff = (self.backoff * 2).clamp(Duration::from_millis(10), Duration::from_millis(BACKOFF_MAX_MS));
        tokio::time::sleep(self.backoff).await;
        Ok(Some(session.refresh_chain(id).await?))
    }

    /// Waits (backing off) until `done` holds for the chains `ids` as pfs-meta has them;
    /// false once the deadline passed first.
    pub(crate) async fn until(
        &mut self,
        session: &Session,
        ids: &[ChainId],
        done: impl Fn(&[Arc<Chain>]) -> bool,
    ) -> Result<bool> {
        loop {
            let mut chains = Vec::with_capacity(ids.len());
            for id in ids {
                chains.push(session.refresh_chain(*id).await?);
            }
            if done(&chains) {
                return Ok(true);
            }
            if Instant::now() >= self.deadline {
                return Ok(false);
            }
            tokio::time::sleep(self.backoff).await;
            self.backoff = (self.backoff * 2).clamp(Duration::from_millis(10), Duration::from_millis(BACKOFF_MAX_MS));
        }
    }
}
