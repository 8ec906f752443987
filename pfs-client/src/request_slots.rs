//! A session's request slots: each namespace change a client sends carries a
//! [`RequestId`] (session, slot, sequence number), so that sending it again after a lost
//! answer or a leader change is answered from pfs-meta's log instead of being done twice (the
//! slot table of NFSv4.1 sessions; Lustre's last_rcvd). A slot carries one request at a time,
//! and each new request of a slot a higher sequence number; at most [`REQUEST_SLOTS`] are in
//! flight, the next waits for a slot.

use pfs_common::token::SessionId;
use pfs_common::wire::namespace::{RequestId, REQUEST_SLOTS};
use tokio::sync::Semaphore;

/// The free slots of a session, with the last sequence number each used.
pub(crate) struct RequestSlots {
    free: parking_lot::Mutex<Vec<(u16, u64)>>,
    available: Semaphore,
}

impl RequestSlots {
    pub(crate) fn new() -> RequestSlots {
        RequestSlots {
            free: parking_lot::Mutex::new((0..REQUEST_SLOTS).rev().map(|s| (s, 0)).collect()),
            available: Semaphore::new(REQUEST_SLOTS as usize),
        }
    }

    /// A slot for one request of `session` (waiting while all are in use); it is free again
    /// when the returned slot is dropped, so hold it until the request is answered or given up.
    pub(crate) async fn take(&self, session: SessionId) -> Slot<'_> {
        let permit = self.available.acquire().await.expect("the semaphore is never closed");
        permit.forget();
        let (slot, seq) = self.free.lock().pop().expect("a permit stands for a free slot");
        Slot { slots: self, id: RequestId { session, slot, seq: seq + 1 } }
    }
}

/// One slot in use, for the request [`Slot::id`] names.
pub(crate) struct Slot<'a> {
    slots: &'a RequestSlots,
    id: RequestId,
}

impl Slot<'_> {
    pub(crate) fn id(&self) -> RequestId {
        self.id
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.slots.free.lock().push((self.id.slot, self.id.seq));
        self.slots.available.add_permits(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[tokio::test]
    async fn a_slot_is_reused_with_a_higher_sequence_number_and_never_shared() {
        let slots = RequestSlots::new();
        let a = slots.take(7).await.id();
        let b = slots.take(7).await.id();
        assert_eq!((a.slot, a.seq), (b.slot, b.seq - 1), "the same slot, one request later");
        let held: Vec<_> = futures_util::future::join_all((0..REQUEST_SLOTS).map(|_| slots.take(7))).await;
        let mut used: Vec<u16> = held.iter().map(|s| s.id().slot).collect();
        used.sort();
        used.dedup();
        assert_eq!(used.len(), REQUEST_SLOTS as usize, "no slot twice at a time");
        let next = slots.take(7);
        tokio::pin!(next);
        assert!(next.as_mut().now_or_never().is_none(), "all in use: the next waits");
        drop(held);
        assert!(next.await.id().seq >= 1);
    }
}
