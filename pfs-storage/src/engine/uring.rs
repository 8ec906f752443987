//! The io_uring engine: one dedicated thread owns the ring, takes operations from a bounded
//! channel, submits them in batches and completes each back to its async caller through a
//! oneshot.
//!
//! Buffers and files are owned by the operation (`PooledBuf`, `Arc<File>`) and stay in the
//! thread's slot table until the kernel has completed the operation, so nothing the kernel
//! writes into can dangle, even if the caller gave up waiting.
//!
//! A vectored write is one operation of several parts (one submission entry each, submitted
//! together, the buffer shared): one hand-off to the ring thread and one answer for all of a
//! request's extents.
//!
//! Aligned transfers go through the chunk's `O_DIRECT` file (see [`super`]'s "Direct I/O").

use super::{
    blocking, check_extents, direct_eligible, ChunkFd, ChunkFiles, ChunkKey, Engine, Extents, IoFuture, DIRECT_ALIGN,
};
use crate::error::{Result, StorageError};
use io_uring::{opcode, types, IoUring};
use pfs_common::pool::PooledBuf;
use smallvec::{smallvec, SmallVec};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tracing::error;

/// Submission queue entries (and most entries in the kernel at once, so the completion
/// queue, twice as large, never overflows). At least
/// [`pfs_common::wire::storage::WRITE_EXTENTS_MAX`]: a vectored write's parts go in together.
pub const RING_ENTRIES: u32 = 256;
const _: () = assert!(RING_ENTRIES as usize >= pfs_common::wire::storage::WRITE_EXTENTS_MAX);

/// Bits of a submission's user data that name the part of its operation (the rest name the
/// operation's slot).
const PART_BITS: u32 = 16;
/// Operations waiting for the ring thread; senders wait when it is full (bounded memory).
pub const QUEUE_DEPTH: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    Fsync,
}

/// One operation in flight: one part, or a vectored write's several, on one buffer.
struct Op {
    kind: Kind,
    buf: PooledBuf,
    parts: SmallVec<[Part; 1]>,
    /// Parts not yet complete.
    left: usize,
    /// The first part that failed.
    error: Option<io::Error>,
    /// The buffer back and the bytes transferred (all parts together).
    reply: oneshot::Sender<io::Result<(PooledBuf, usize)>>,
}

/// `len` bytes of the operation's buffer from `start`, to or from `file` at `offset`. `done`
/// counts bytes transferred so far, so a short read or write is resubmitted for the rest.
struct Part {
    file: Arc<File>,
    /// `file` was opened with `O_DIRECT`: a read that stops at an unaligned length has hit the
    /// end of file and is complete (a resubmission at an unaligned offset would fail).
    direct: bool,
    offset: u64,
    start: usize,
    len: usize,
    done: usize,
}

/// io_uring engine.
pub struct UringEngine {
    files: Arc<ChunkFiles>,
    ops: mpsc::Sender<Op>,
}

impl UringEngine {
    /// Creates the ring, probes it with a no-op and starts the ring thread.
    ///
    /// Errors: the kernel's refusal (ENOSYS, EPERM under seccomp, ENOMEM for locked memory).
    pub fn new(files: Arc<ChunkFiles>) -> io::Result<Self> {
        let mut ring = IoUring::new(RING_ENTRIES)?;
        probe(&mut ring)?;
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        std::thread::Builder::new().name("pfs-uring".into()).spawn(move || ring_loop(ring, rx))?;
        Ok(UringEngine { files, ops: tx })
    }

    /// The chunk file of the wanted kind (see [`ChunkFiles::open_as`]).
    async fn file(&self, key: ChunkKey, create: bool, direct: bool) -> Result<Option<ChunkFd>> {
        // Fast path without a thread hop; an actual open() goes to the blocking pool.
        if let Some(fd) = self.files.cached_as(key, direct) {
            return Ok(Some(fd));
        }
        let files = self.files.clone();
        blocking(move || files.open_as(key, create, direct)).await
    }

    /// Hands `parts` of `buf` to the ring thread as one operation and waits for all of them.
    async fn submit(
        &self,
        kind: Kind,
        key: ChunkKey,
        parts: SmallVec<[Part; 1]>,
        buf: PooledBuf,
    ) -> Result<(PooledBuf, usize)> {
        let offset = parts.first().map_or(0, |p| p.offset);
        let (tx, rx) = oneshot::channel();
        let op = Op { kind, buf, left: parts.len(), parts, error: None, reply: tx };
        let gone = || StorageError::Stopped { what: "the io_uring thread has stopped".into() };
        self.ops.send(op).await.map_err(|_| gone())?;
        let what = match kind {
            Kind::Read => format!("reading {} at {offset}", ChunkFiles::describe(key)),
            Kind::Write => format!("writing {} at {offset}", ChunkFiles::describe(key)),
            Kind::Fsync => format!("syncing {}", ChunkFiles::describe(key)),
        };
        rx.await.map_err(|_| gone())?.map_err(|e| StorageError::io(what, e))
    }

    /// The one part of a read or fsync: all of `len` bytes at `offset` through `fd`.
    fn whole(&self, kind: Kind, fd: ChunkFd, offset: u64, len: usize) -> SmallVec<[Part; 1]> {
        if kind != Kind::Fsync {
            self.files.count_op(&fd);
        }
        smallvec![Part { file: fd.file, direct: fd.direct, offset, start: 0, len, done: 0 }]
    }
}

impl Engine for UringEngine {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    fn files(&self) -> &Arc<ChunkFiles> {
        &self.files
    }

    fn read(&self, key: ChunkKey, offset: u64, buf: PooledBuf) -> IoFuture<'_, Option<PooledBuf>> {
        Box::pin(async move {
            let direct = direct_eligible(buf.as_ptr(), offset, buf.len());
            let Some(fd) = self.file(key, false, direct).await? else { return Ok(None) };
            if buf.is_empty() {
                return Ok(Some(buf));
            }
            let parts = self.whole(Kind::Read, fd, offset, buf.len());
            let (mut buf, n) = self.submit(Kind::Read, key, parts, buf).await?;
            buf.truncate(n);
            Ok(Some(buf))
        })
    }

    fn write_extents(&self, key: ChunkKey, extents: Extents, buf: PooledBuf) -> IoFuture<'_, PooledBuf> {
        Box::pin(async move {
            if extents.len() > RING_ENTRIES as usize {
                return Err(StorageError::io(
                    format!("writing {}", ChunkFiles::describe(key)),
                    io::Error::new(io::ErrorKind::InvalidInput, format!("{} extents in one write", extents.len())),
                ));
            }
            // The kernel reads the parts from the buffer: they must lie inside it.
            check_extents(key, &extents, buf.len())?;
            let mut parts = SmallVec::new();
            let mut start = 0;
            for e in &extents {
                let len = e.len as usize;
                let direct = direct_eligible(buf[start..].as_ptr(), e.offset, len);
                let fd = self.file(key, true, direct).await?.expect("open with create returns a file");
                if len > 0 {
                    self.files.count_op(&fd);
                    parts.push(Part { file: fd.file, direct: fd.direct, offset: e.offset, start, len, done: 0 });
                }
                start += len;
            }
            if parts.is_empty() {
                return Ok(buf);
            }
            Ok(self.submit(Kind::Write, key, parts, buf).await?.0)
        })
    }

    fn sync(&self, key: ChunkKey) -> IoFuture<'_, ()> {
        Box::pin(async move {
            // Either kind of file: fdatasync flushes the inode's data written through both.
            let file = match self.files.cached_any(key) {
                Some(f) => Some(f),
                None => {
                    let files = self.files.clone();
                    blocking(move || files.open(key, false)).await?
                }
            };
            let Some(file) = file else { return Ok(()) };
            let parts = self.whole(Kind::Fsync, ChunkFd { file, direct: false }, 0, 0);
            self.submit(Kind::Fsync, key, parts, PooledBuf::empty()).await.map(|_| ())
        })
    }
}

/// A trivial operation through the ring proves the kernel really runs io_uring (seccomp
/// filters sometimes allow setup but fail every operation).
fn probe(ring: &mut IoUring) -> io::Result<()> {
    let nop = opcode::Nop::new().build().user_data(u64::MAX);
    // SAFETY: a no-op references no memory.
    unsafe { ring.submission().push(&nop) }.map_err(|_| io::Error::other("submission queue full"))?;
    ring.submit_and_wait(1)?;
    let cqe = ring.completion().next().ok_or_else(|| io::Error::other("no completion for the probe"))?;
    if cqe.result() < 0 {
        return Err(io::Error::from_raw_os_error(-cqe.result()));
    }
    Ok(())
}

/// Pushes the submission entry for the rest of part `part` of `op` (slot `slot`).
fn push(ring: &mut IoUring, slot: usize, part: usize, op: &mut Op) {
    let p = &op.parts[part];
    let fd = types::Fd(p.file.as_raw_fd());
    let rest = (p.len - p.done) as u32;
    let offset = p.offset + p.done as u64;
    let at = p.start + p.done;
    let entry = match op.kind {
        // SAFETY (both): the pointer is into `op.buf`, which the slot table owns until the
        // completion arrives; a Vec's heap storage does not move when the Op is moved.
        Kind::Read => opcode::Read::new(fd, unsafe { op.buf.as_mut_ptr().add(at) }, rest).offset(offset).build(),
        Kind::Write => opcode::Write::new(fd, unsafe { op.buf.as_ptr().add(at) }, rest).offset(offset).build(),
        Kind::Fsync => opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build(),
    };
    let user_data = (slot as u64) << PART_BITS | part as u64;
    // SAFETY: see above; the fd stays open because the Part holds its Arc<File>.
    let pushed = unsafe { ring.submission().push(&entry.user_data(user_data)) };
    // At most RING_ENTRIES entries in the kernel at once (see `ring_loop`): the queue has room.
    assert!(pushed.is_ok(), "io_uring submission queue overflow");
}

/// What a completion `res` of part `part` of `op` means: None to submit the rest, or the
/// part's outcome.
fn part_outcome(op: &mut Op, part: usize, res: i32) -> Option<io::Result<()>> {
    if res < 0 {
        return (!matches!(-res, libc::EINTR | libc::EAGAIN)).then(|| Err(io::Error::from_raw_os_error(-res)));
    }
    let n = res as usize;
    let p = &mut op.parts[part];
    match op.kind {
        Kind::Fsync => Some(Ok(())),
        Kind::Read if n == 0 => Some(Ok(())), // end of file: a short read
        Kind::Write if n == 0 => Some(Err(io::Error::from(io::ErrorKind::WriteZero))),
        _ => {
            p.done += n;
            let eof = op.kind == Kind::Read && p.direct && !p.done.is_multiple_of(DIRECT_ALIGN);
            (p.done >= p.len || eof).then_some(Ok(()))
        }
    }
}

/// The ring thread: admits operations while their parts fit in the ring, submits them in
/// batches, and answers each operation once all its parts are complete.
fn ring_loop(mut ring: IoUring, mut rx: mpsc::Receiver<Op>) {
    let cap = RING_ENTRIES as usize;
    let mut slots: Vec<Option<Op>> = (0..cap).map(|_| None).collect();
    let mut free: Vec<usize> = (0..cap).rev().collect();
    // Entries in the kernel (one per incomplete part), and an operation received that did
    // not fit yet.
    let mut in_kernel = 0usize;
    let mut held: Option<Op> = None;
    let mut open = true;
    let mut completions = Vec::with_capacity(2 * cap);
    loop {
        if in_kernel == 0 && held.is_none() {
            if !open {
                return;
            }
            // Idle: sleep until work arrives (or every engine handle is gone).
            match rx.blocking_recv() {
                Some(op) => held = Some(op),
                None => return,
            }
        }
        // Admit whatever else is waiting, while its parts fit.
        loop {
            let mut op = match held.take() {
                Some(op) => op,
                None if !open => break,
                None => match rx.try_recv() {
                    Ok(op) => op,
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                },
            };
            if free.is_empty() || in_kernel + op.parts.len() > cap {
                held = Some(op);
                break;
            }
            let slot = free.pop().expect("checked non-empty");
            for part in 0..op.parts.len() {
                push(&mut ring, slot, part, &mut op);
            }
            in_kernel += op.parts.len();
            slots[slot] = Some(op);
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted || e.kind() == io::ErrorKind::ResourceBusy => {}
            Err(e) => {
                error!("io_uring submit failed, stopping the ring thread: {e}");
                for op in slots.iter_mut().filter_map(Option::take).chain(held.take()) {
                    let _ = op.reply.send(Err(io::Error::new(e.kind(), e.to_string())));
                }
                return;
            }
        }
        completions.clear();
        completions.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        for &(user_data, res) in &completions {
            let (slot, part) = ((user_data >> PART_BITS) as usize, (user_data & ((1 << PART_BITS) - 1)) as usize);
            let Some(op) = slots.get_mut(slot).and_then(Option::as_mut) else { continue };
            match part_outcome(op, part, res) {
                // Short transfer or EINTR/EAGAIN: submit the rest.
                None => push(&mut ring, slot, part, op),
                Some(result) => {
                    in_kernel -= 1;
                    op.left -= 1;
                    if let Err(e) = result {
                        op.error.get_or_insert(e);
                    }
                    if op.left == 0 {
                        let op = slots[slot].take().expect("slot checked above");
                        free.push(slot);
                        let done = op.parts.iter().map(|p| p.done).sum();
                        let _ = op.reply.send(match op.error {
                            Some(e) => Err(e),
                            None => Ok((op.buf, done)),
                        });
                    }
                }
            }
        }
    }
}
