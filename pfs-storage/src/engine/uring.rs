//! The io_uring engine: one dedicated thread owns the ring, takes operations from a bounded
//! channel, submits them in batches and completes each back to its async caller through a
//! oneshot.
//!
//! Buffers and files are owned by the operation (`PooledBuf`, `Arc<File>`) and stay in the
//! thread's slot table until the kernel has completed the operation, so nothing the kernel
//! writes into can dangle, even if the caller gave up waiting.
//!
//! Aligned transfers go through the chunk's `O_DIRECT` file (see [`super`]'s "Direct I/O").

use super::{blocking, direct_eligible, ChunkFd, ChunkFiles, ChunkKey, Engine, IoFuture, DIRECT_ALIGN};
use crate::error::{Result, StorageError};
use io_uring::{opcode, types, IoUring};
use pfs_common::pool::PooledBuf;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tracing::error;

/// Submission queue entries (and most operations in the kernel at once).
pub const RING_ENTRIES: u32 = 256;
/// Operations waiting for the ring thread; senders wait when it is full (bounded memory).
pub const QUEUE_DEPTH: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    Fsync,
}

/// One operation in flight. `done` counts bytes transferred so far, so a short read or write
/// is resubmitted for the rest.
struct Op {
    kind: Kind,
    file: Arc<File>,
    /// `file` was opened with `O_DIRECT`: a read that stops at an unaligned length has hit the
    /// end of file and is complete (a resubmission at an unaligned offset would fail).
    direct: bool,
    offset: u64,
    buf: PooledBuf,
    done: usize,
    reply: oneshot::Sender<io::Result<(PooledBuf, usize)>>,
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

    async fn submit(
        &self,
        kind: Kind,
        key: ChunkKey,
        fd: ChunkFd,
        offset: u64,
        buf: PooledBuf,
    ) -> Result<(PooledBuf, usize)> {
        if kind != Kind::Fsync {
            self.files.count_op(&fd);
        }
        let (tx, rx) = oneshot::channel();
        let op = Op { kind, file: fd.file, direct: fd.direct, offset, buf, done: 0, reply: tx };
        let gone = || StorageError::Stopped { what: "the io_uring thread has stopped".into() };
        self.ops.send(op).await.map_err(|_| gone())?;
        let what = match kind {
            Kind::Read => format!("reading {} at {offset}", ChunkFiles::describe(key)),
            Kind::Write => format!("writing {} at {offset}", ChunkFiles::describe(key)),
            Kind::Fsync => format!("syncing {}", ChunkFiles::describe(key)),
        };
        rx.await.map_err(|_| gone())?.map_err(|e| StorageError::io(what, e))
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
            let (mut buf, n) = self.submit(Kind::Read, key, fd, offset, buf).await?;
            buf.truncate(n);
            Ok(Some(buf))
        })
    }

    fn write(&self, key: ChunkKey, offset: u64, buf: PooledBuf) -> IoFuture<'_, PooledBuf> {
        Box::pin(async move {
            let direct = direct_eligible(buf.as_ptr(), offset, buf.len());
            let fd = self.file(key, true, direct).await?.expect("open with create returns a file");
            if buf.is_empty() {
                return Ok(buf);
            }
            Ok(self.submit(Kind::Write, key, fd, offset, buf).await?.0)
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
            let fd = ChunkFd { file, direct: false };
            self.submit(Kind::Fsync, key, fd, 0, PooledBuf::empty()).await.map(|_| ())
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

/// Pushes the submission entry for the rest of `op` (slot `slot`).
fn push(ring: &mut IoUring, slot: usize, op: &mut Op) {
    let fd = types::Fd(op.file.as_raw_fd());
    let rest = (op.buf.len() - op.done) as u32;
    let offset = op.offset + op.done as u64;
    let entry = match op.kind {
        // SAFETY (both): the pointer is into `op.buf`, which the slot table owns until the
        // completion arrives; a Vec's heap storage does not move when the Op is moved.
        Kind::Read => opcode::Read::new(fd, unsafe { op.buf.as_mut_ptr().add(op.done) }, rest).offset(offset).build(),
        Kind::Write => opcode::Write::new(fd, unsafe { op.buf.as_ptr().add(op.done) }, rest).offset(offset).build(),
        Kind::Fsync => opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build(),
    };
    // SAFETY: see above; the fd stays open because the Op holds its Arc<File>.
    let pushed = unsafe { ring.submission().push(&entry.user_data(slot as u64)) };
    // At most one entry per in-flight op and at most RING_ENTRIES ops: the queue has room.
    assert!(pushed.is_ok(), "io_uring submission queue overflow");
}

fn ring_loop(mut ring: IoUring, mut rx: mpsc::Receiver<Op>) {
    let cap = RING_ENTRIES as usize;
    let mut slots: Vec<Option<Op>> = (0..cap).map(|_| None).collect();
    let mut free: Vec<usize> = (0..cap).rev().collect();
    let mut open = true;
    let mut completions = Vec::with_capacity(cap);
    loop {
        let inflight = cap - free.len();
        if inflight == 0 {
            if !open {
                return;
            }
            // Idle: sleep until work arrives (or every engine handle is gone).
            match rx.blocking_recv() {
                Some(mut op) => {
                    let slot = free.pop().expect("a free slot when idle");
                    push(&mut ring, slot, &mut op);
                    slots[slot] = Some(op);
                }
                None => return,
            }
        }
        // Batch whatever else is waiting, up to the ring's capacity.
        while open && !free.is_empty() {
            match rx.try_recv() {
                Ok(mut op) => {
                    let slot = free.pop().expect("checked non-empty");
                    push(&mut ring, slot, &mut op);
                    slots[slot] = Some(op);
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted || e.kind() == io::ErrorKind::ResourceBusy => {}
            Err(e) => {
                error!("io_uring submit failed, stopping the ring thread: {e}");
                for op in slots.iter_mut().filter_map(Option::take) {
                    let _ = op.reply.send(Err(io::Error::new(e.kind(), e.to_string())));
                }
                return;
            }
        }
        completions.clear();
        completions.extend(ring.completion().map(|c| (c.user_data() as usize, c.result())));
        for &(slot, res) in &completions {
            let Some(op) = slots.get_mut(slot).and_then(Option::as_mut) else { continue };
            let outcome = if res < 0 {
                let err = io::Error::from_raw_os_error(-res);
                if matches!(-res, libc::EINTR | libc::EAGAIN) {
                    None
                } else {
                    Some(Err(err))
                }
            } else {
                let n = res as usize;
                match op.kind {
                    Kind::Fsync => Some(Ok(())),
                    Kind::Read if n == 0 => Some(Ok(())), // end of file: a short read
                    Kind::Write if n == 0 => Some(Err(io::Error::from(io::ErrorKind::WriteZero))),
                    _ => {
                        op.done += n;
                        let eof = op.kind == Kind::Read && op.direct && !op.done.is_multiple_of(DIRECT_ALIGN);
                        (op.done >= op.buf.len() || eof).then_some(Ok(()))
                    }
                }
            };
            match outcome {
                // Short transfer or EINTR/EAGAIN: submit the rest.
                None => push(&mut ring, slot, op),
                Some(result) => {
                    let op = slots[slot].take().expect("slot checked above");
                    free.push(slot);
                    let _ = op.reply.send(result.map(|()| (op.buf, op.done)));
                }
            }
        }
    }
}
