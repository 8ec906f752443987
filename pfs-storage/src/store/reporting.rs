//! Chunk reports to pfs-meta: the full listing a new session starts with, and the states
//! queued since (per file, see [`crate::reports`]), sent over the session's connection.
//!
//! Batches of queued states go out concurrently (an `Fsync` need not wait behind the
//! hasher's backlog of other files); a chunk is in at most one batch in flight. A full
//! listing supersedes everything queued and waits for the batches in flight to be answered
//! first, so no state from before it can land after it.

use super::ChunkStore;
use crate::error::{Result, StorageError};
use crate::reports::Batch;
use pfs_common::rpc::RpcClient;
use pfs_common::wire::registry::{ChunkReport, ChunkState, CHUNK_REPORT_PAGE};
use pfs_common::wire::MetaRequest;
use pfs_common::FileId;
use std::sync::Arc;
use tracing::{info, warn};

/// A batch of reports in flight; if its sender is cancelled before the answer, the batch goes
/// back to the queue (as a failed one), so no chunk stays marked in flight for ever.
struct InFlight<'a> {
    store: &'a ChunkStore,
    batch: Option<Batch>,
}

impl InFlight<'_> {
    fn settle(mut self, acked: bool) {
        let batch = self.batch.take().expect("settled once");
        let mut st = self.store.state.lock();
        if acked {
            st.reports.acked(&batch);
        } else {
            st.reports.failed(batch);
        }
        drop(st);
        self.store.reports_settled.notify_waiters();
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(batch) = self.batch.take() {
            self.store.state.lock().reports.failed(batch);
            self.store.reports_settled.notify_waiters();
        }
    }
}

impl ChunkStore {
    /// True when chunk states wait to be sent.
    pub(crate) fn has_reports(&self) -> bool {
        !self.state.lock().reports.is_empty()
    }

    /// Queued chunk states of `file` (for tests and logs).
    pub fn reports_queued(&self, file: FileId) -> usize {
        self.state.lock().reports.queued(file)
    }

    /// Sends the queued chunk states of `file` (or, with `None`, of every file) to pfs-meta
    /// and waits for the acknowledgements. With a file, also waits for its states that other
    /// senders have in flight, so every state of it queued before the call is acknowledged
    /// when it returns Ok. States not acknowledged stay queued.
    ///
    /// Errors: Unavailable (Closed) when no session with pfs-meta is up; the RPC error when a
    /// report fails.
    pub async fn flush_reports(self: &Arc<Self>, file: Option<FileId>) -> Result<()> {
        let _sending = self.sending.read().await;
        let client = self
            .meta
            .get()
            .ok_or_else(|| StorageError::Common(pfs_common::Error::Closed { peer: "pfs-meta (no session)".into() }))?;
        loop {
            let settled = self.reports_settled.notified();
            tokio::pin!(settled);
            // Registered before looking, so a batch settling in between is not missed.
            settled.as_mut().enable();
            let batch = self.state.lock().reports.take(file, CHUNK_REPORT_PAGE);
            let Some(batch) = batch else {
                match file {
                    Some(f) if self.state.lock().reports.in_flight_for(f) => {
                        settled.await;
                        continue;
                    }
                    _ => return Ok(()),
                }
            };
            let chunks = batch.states.clone();
            let flight = InFlight { store: self, batch: Some(batch) };
            let req = ChunkReport { id: self.id, chunks, listing: false, full: false };
            match client.ask(req).await {
                Ok(answer) => {
                    // A deposed leader's answer: its orphans may be files its successor has.
                    if let Err(e) = self.fence().check_term(answer.term) {
                        flight.settle(false);
                        return Err(e);
                    }
                    flight.settle(true);
                    self.remove_orphans(answer.orphans);
                }
                Err(e) => {
                    flight.settle(false);
                    return Err(e.into());
                }
            }
        }
    }

    /// Sends the complete listing on `client` (paged; the last page has `full: true`), which
    /// supersedes everything queued, and takes pfs-meta's answer: orphans are removed, the
    /// lost chunks noted and reads served from then on. Returns the chunks listed.
    ///
    /// Errors: the RPC error of a page.
    pub(crate) async fn full_report(self: &Arc<Self>, client: &RpcClient<MetaRequest>) -> Result<usize> {
        let _alone = self.sending.write().await;
        let all = self.snapshot_for_full_report();
        let pages: Vec<&[ChunkState]> =
            if all.is_empty() { vec![&[][..]] } else { all.chunks(CHUNK_REPORT_PAGE).collect() };
        let last = pages.len() - 1;
        for (i, page) in pages.into_iter().enumerate() {
            let req = ChunkReport { id: self.id, chunks: page.to_vec(), listing: true, full: i == last };
            let answer = client.ask(req).await?;
            self.fence().check_term(answer.term)?;
            self.remove_orphans(answer.orphans);
            if let Some(lost) = answer.lost {
                self.reconciled(lost);
            }
        }
        Ok(all.len())
    }

    /// Every chunk with its length and (if current) hash, for a full report; empties the
    /// report queues in the same critical section, since the full listing supersedes them (a
    /// hash finished just after is queued afresh, never lost).
    fn snapshot_for_full_report(&self) -> Vec<ChunkState> {
        let mut st = self.state.lock();
        st.reports.clear();
        let st = &*st;
        let mut out: Vec<ChunkState> = st
            .index
            .iter()
            .flat_map(|(file, m)| m.iter().map(|(chunk, e)| st.chunk_state((*file, *chunk), e)))
            .collect();
        out.sort_by_key(|c| (c.file, c.chunk));
        out
    }

    /// Removes the chunks of files pfs-meta named as orphans (or removed), in the background.
    pub(crate) fn remove_orphans(self: &Arc<Self>, ids: Vec<FileId>) {
        if ids.is_empty() {
            return;
        }
        info!("{}: removing the chunks of {} files pfs-meta named", self.id, ids.len());
        let store = self.clone();
        tokio::spawn(async move {
            for id in ids {
                if let Err(e) = store.remove(id).await {
                    warn!("{}: removing chunks of file {id}: {e}", store.id);
                }
            }
        });
    }
}
