//! The Raft log of a meta node, on disk.
//!
//! Segments `log-<first index>.log` hold the entries in order, each framed as a `u32` LE
//! payload length, a `u32` LE crc32c of the payload, then the payload (postcard of an
//! openraft [`Entry`]). `raft-state` (a blob, see [`super::files`]) holds the vote and the
//! last purged log id.
//!
//! One writer thread (plain blocking file I/O) drains a bounded queue: it writes every queued
//! append, makes the batch durable with one `fdatasync` (group commit), and only then tells
//! openraft the entries are flushed ([`LogFlushed::log_io_completed`]): a leader counts its
//! own copy, and a follower acknowledges, only entries on disk. Truncations, purges and votes
//! go through the same queue, in order with the appends, and are durable before they return.
//!
//! Entries not yet purged are also kept in memory, so replication and the state machine read
//! them without touching the disk (and can read an entry before its fdatasync returns, as
//! openraft allows). The log is purged after each snapshot, which bounds that memory.

use super::files::{self, decode_blob, encode_blob, ensure_dir, fsync_dir, list_numbered, write_atomic};
use super::{Entry, LogId, StorageError, TypeConfig, Vote};
use crate::error::{MetaError, Result};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogId, RaftLogReader, StorageIOError};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

/// Jobs queued for the writer thread at most; openraft waits beyond that.
pub const LOG_QUEUE_MAX: usize = 1024;
/// Largest entry payload accepted on replay, bytes (an entry is one small mutation, or a
/// membership).
pub const ENTRY_MAX_BYTES: u32 = 1 << 20;
/// A new segment is started once the current one has reached this size, bytes.
pub const SEGMENT_BYTES: u64 = 64 << 20;
const RECORD_HEADER: usize = 8;
const STATE_FILE: &str = "raft-state";

/// The small state beside the entries, kept in `raft-state`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct HardState {
    vote: Option<Vote>,
    purged: Option<LogId>,
}

/// What openraft reads back: the entries not purged, and the hard state.
#[derive(Default)]
struct Mem {
    entries: BTreeMap<u64, Entry>,
    state: HardState,
    committed: Option<LogId>,
}

enum Job {
    /// Framed entries `first..=last` to append; `flushed` is called after their fdatasync.
    Append { records: Vec<Vec<u8>>, first: u64, flushed: LogFlushed<TypeConfig> },
    /// Remove the entries from index `from` on.
    Truncate { from: u64, done: oneshot::Sender<Result<()>> },
    /// Record `state` (a new vote, or a purge point), then drop the segments it makes useless.
    SaveState { state: HardState, done: oneshot::Sender<Result<()>> },
}

struct Shared {
    dir: PathBuf,
    mem: Mutex<Mem>,
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Closing the queue makes the writer finish it and exit.
        self.tx.lock().take();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

/// The log of one meta node: [`RaftLogStorage`] for openraft. Clones share the log (a clone
/// is the log reader openraft's replication tasks use).
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

fn storage_error(e: MetaError) -> StorageError {
    StorageError::from(StorageIOError::write_logs(openraft::AnyError::new(&e)))
}

impl LogStore {
    /// Opens the log in `dir` (made if missing): reads the hard state and every segment, cuts
    /// a torn final record of the newest segment (logged), and starts the writer thread.
    ///
    /// Errors: Corrupt naming the file and byte offset of damage anywhere else (a bad crc,
    /// an impossible length, an entry out of order); Io.
    pub fn open(dir: &Path) -> Result<LogStore> {
        ensure_dir(dir)?;
        let fresh = files::is_fresh(dir)?;
        files::check_format(dir, fresh)?;
        let state_path = dir.join(STATE_FILE);
        let state: HardState = if state_path.exists() {
            let bytes = files::read_file(&state_path)?;
            let payload = decode_blob(&bytes, "Raft log state", &state_path)?;
            postcard::from_bytes(payload).map_err(|e| MetaError::Corrupt {
                what: "Raft log state",
                file: state_path.clone(),
                offset: None,
                reason: format!("undecodable: {e}"),
            })?
        } else {
            HardState::default()
        };
        let (segments, entries) = recover_segments(dir, state.purged.map(|p| p.index))?;
        info!(
            "Raft log in {}: {} entries after {:?}, vote {:?}",
            dir.display(),
            entries.len(),
            state.purged,
            state.vote
        );
        let writer = Writer { dir: dir.to_path_buf(), segments, current: None, buf: Vec::new() };
        let (tx, rx) = mpsc::channel(LOG_QUEUE_MAX);
        let thread = std::thread::Builder::new()
            .name("pfs-meta-log".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| MetaError::io("starting the Raft log writer thread", e))?;
        Ok(LogStore {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                mem: Mutex::new(Mem { entries, state, committed: None }),
                tx: Mutex::new(Some(tx)),
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    async fn send(&self, job: Job) -> std::result::Result<(), StorageError> {
        let tx = self.shared.tx.lock().clone();
        let stopped = || storage_error(MetaError::io("the Raft log writer", std::io::Error::other("stopped")));
        tx.ok_or_else(stopped)?.send(job).await.map_err(|_| stopped())
    }

    async fn run_job(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<()>>) -> Job,
    ) -> std::result::Result<(), StorageError> {
        let (done, rx) = oneshot::channel();
        self.send(make(done)).await?;
        match rx.await {
            Ok(r) => r.map_err(storage_error),
            Err(_) => Err(storage_error(MetaError::io("the Raft log writer", std::io::Error::other("stopped")))),
        }
    }
}

/// Frames one entry as the log stores it: length, crc32c, postcard payload.
pub fn frame_entry(entry: &Entry) -> Vec<u8> {
    let payload = postcard::to_allocvec(entry).expect("postcard encodes log entries");
    let mut out = Vec::with_capacity(RECORD_HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> std::result::Result<Vec<Entry>, StorageError> {
        let mem = self.shared.mem.lock();
        Ok(mem.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> std::result::Result<LogState<TypeConfig>, StorageError> {
        let mem = self.shared.mem.lock();
        let last_purged_log_id = mem.state.purged;
        let last_log_id = mem.entries.values().next_back().map(|e| *e.get_log_id()).or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> std::result::Result<(), StorageError> {
        let state = {
            let mut mem = self.shared.mem.lock();
            mem.state.vote = Some(*vote);
            mem.state.clone()
        };
        self.run_job(|done| Job::SaveState { state, done }).await
    }

    async fn read_vote(&mut self) -> std::result::Result<Option<Vote>, StorageError> {
        Ok(self.shared.mem.lock().state.vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> std::result::Result<(), StorageError> {
        // Kept in memory only: after a restart the leader tells it again (a node that does
        // not know it applies nothing until then, which is safe).
        self.shared.mem.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> std::result::Result<Option<LogId>, StorageError> {
        Ok(self.shared.mem.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> std::result::Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut records = Vec::new();
        let mut first = None;
        {
            let mut mem = self.shared.mem.lock();
            for entry in entries {
                let index = entry.get_log_id().index;
                first.get_or_insert(index);
                records.push(frame_entry(&entry));
                mem.entries.insert(index, entry);
            }
        }
        let Some(first) = first else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        self.send(Job::Append { records, first, flushed: callback }).await
    }

    async fn truncate(&mut self, log_id: LogId) -> std::result::Result<(), StorageError> {
        self.shared.mem.lock().entries.split_off(&log_id.index);
        self.run_job(|done| Job::Truncate { from: log_id.index, done }).await
    }

    async fn purge(&mut self, log_id: LogId) -> std::result::Result<(), StorageError> {
        let state = {
            let mut mem = self.shared.mem.lock();
            let keep = mem.entries.split_off(&(log_id.index + 1));
            mem.entries = keep;
            mem.state.purged = Some(log_id);
            mem.state.clone()
        };
        self.run_job(|done| Job::SaveState { state, done }).await
    }
}

/// One segment file: the index of its first entry and the byte offset of each entry in it.
struct Segment {
    first: u64,
    path: PathBuf,
    offsets: Vec<u64>,
    len: u64,
}

impl Segment {
    /// Index just past its last entry.
    fn end(&self) -> u64 {
        self.first + self.offsets.len() as u64
    }
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("log-{first:016x}.log"))
}

fn corrupt_at(path: &Path, offset: u64, reason: String) -> MetaError {
    MetaError::Corrupt { what: "Raft log segment", file: path.to_path_buf(), offset: Some(offset), reason }
}

/// Reads every segment: the entries after `purged` (consecutive), and each segment's offsets.
/// A torn final record of the newest segment is cut off; a segment whose entries are all
/// purged is removed.
fn recover_segments(dir: &Path, purged: Option<u64>) -> Result<(Vec<Segment>, BTreeMap<u64, Entry>)> {
    let listed = list_numbered(dir, "log-", ".log")?;
    let mut segments: Vec<Segment> = Vec::new();
    let mut entries = BTreeMap::new();
    let mut next: Option<u64> = None;
    for (i, (first, path)) in listed.iter().enumerate() {
        let last = i + 1 == listed.len();
        let bytes = files::read_file(path)?;
        let mut off = 0usize;
        let mut offsets = Vec::new();
        while off < bytes.len() {
            match read_record(&bytes[off..], last) {
                Ok(Some((entry, n))) => {
                    let index = entry.get_log_id().index;
                    let expect = *first + offsets.len() as u64;
                    if index != expect {
                        return Err(corrupt_at(
                            path,
                            off as u64,
                            format!("entry {index} where entry {expect} belongs"),
                        ));
                    }
                    offsets.push(off as u64);
                    if purged.is_none_or(|p| index > p) {
                        entries.insert(index, entry);
                    }
                    off += n;
                }
                Ok(None) => {
                    warn!("Raft log segment {}: cutting off a torn record at byte offset {off}", path.display());
                    let f = OpenOptions::new()
                        .write(true)
                        .open(path)
                        .map_err(|e| MetaError::io(format!("opening {} to cut its torn tail", path.display()), e))?;
                    f.set_len(off as u64)
                        .and_then(|_| f.sync_all())
                        .map_err(|e| MetaError::io(format!("cutting {} at byte offset {off}", path.display()), e))?;
                    break;
                }
                Err(why) => return Err(corrupt_at(path, off as u64, why)),
            }
        }
        let seg = Segment { first: *first, path: path.clone(), len: off as u64, offsets };
        if !last && purged.is_some_and(|p| seg.end() <= p + 1) {
            // Every entry in it is purged: a crash came between the purge and the removal.
            std::fs::remove_file(path).map_err(|e| MetaError::io(format!("removing purged {}", path.display()), e))?;
            continue;
        }
        if let Some(n) = next {
            if seg.first != n && !seg.offsets.is_empty() {
                return Err(corrupt_at(
                    path,
                    0,
                    format!("segment starts at entry {}, the one before ends at {n}", seg.first),
                ));
            }
        }
        next = Some(seg.end());
        segments.push(seg);
    }
    if let (Some(p), Some((first, _))) = (purged, entries.first_key_value()) {
        if *first != p + 1 {
            return Err(MetaError::Corrupt {
                what: "Raft log",
                file: dir.to_path_buf(),
                offset: None,
                reason: format!("entries resume at {first} after the purge point {p}"),
            });
        }
    }
    Ok((segments, entries))
}

/// Decodes the record at the start of `rest`: the entry and the record's length. `Ok(None)`
/// is a torn record (only possible at the end of the newest segment, `last`); `Err` says why
/// the bytes are corrupt.
fn read_record(rest: &[u8], last: bool) -> std::result::Result<Option<(Entry, usize)>, String> {
    if rest.len() < RECORD_HEADER {
        return if last { Ok(None) } else { Err("truncated record header".into()) };
    }
    let len = u32::from_le_bytes(rest[0..4].try_into().unwrap());
    let crc = u32::from_le_bytes(rest[4..8].try_into().unwrap());
    if len == 0 && last && rest.iter().all(|&b| b == 0) {
        // Zeros after the last record: the file grew but the data never reached disk.
        return Ok(None);
    }
    if len == 0 || len > ENTRY_MAX_BYTES {
        return Err(format!("bad record length {len}"));
    }
    let end = RECORD_HEADER + len as usize;
    if end > rest.len() {
        return if last { Ok(None) } else { Err(format!("record of {len} bytes runs past the end of the file")) };
    }
    let payload = &rest[RECORD_HEADER..end];
    if crc32c::crc32c(payload) != crc {
        return if last && end == rest.len() { Ok(None) } else { Err("crc32c mismatch".into()) };
    }
    let entry: Entry = postcard::from_bytes(payload).map_err(|e| format!("undecodable entry: {e}"))?;
    Ok(Some((entry, end)))
}

struct Writer {
    dir: PathBuf,
    segments: Vec<Segment>,
    /// The newest segment, open for appending (opened on the first append).
    current: Option<File>,
    buf: Vec<u8>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut batch = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < LOG_QUEUE_MAX {
                match rx.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            if let Err(e) = self.run_batch(&mut batch) {
                tracing::error!("Raft log writer failed, this meta node stops: {e}");
                // Whatever was queued fails with it (openraft then stops this node).
                for job in batch.drain(..) {
                    fail(job, &e);
                }
                rx.close();
                while let Ok(job) = rx.try_recv() {
                    fail(job, &e);
                }
                return;
            }
        }
    }

    /// Runs the batch in order: consecutive appends share one write and one fdatasync.
    fn run_batch(&mut self, batch: &mut Vec<Job>) -> Result<()> {
        let mut flushed = Vec::new();
        // Taken whole and walked in order (not removed from the front, which is quadratic);
        // on a failure the jobs not run go back, for `run` to fail them.
        let mut jobs = std::mem::take(batch).into_iter();
        while let Some(job) = jobs.next() {
            match job {
                Job::Append { records, first, flushed: cb } => {
                    if let Err(e) = self.write_entries(records, first) {
                        cb.log_io_completed(Err(std::io::Error::other(e.to_string())));
                        batch.extend(jobs);
                        return Err(e);
                    }
                    flushed.push(cb);
                }
                job => {
                    if let Err(e) = self.sync(&mut flushed) {
                        batch.push(job);
                        batch.extend(jobs);
                        return Err(e);
                    }
                    self.run_job(job);
                }
            }
        }
        self.sync(&mut flushed)
    }

    /// Buffers records for the current segment (starting a new one when it is full).
    fn write_entries(&mut self, records: Vec<Vec<u8>>, first: u64) -> Result<()> {
        let need_new = match self.segments.last() {
            None => true,
            Some(s) => s.len >= SEGMENT_BYTES || s.end() != first,
        };
        if need_new {
            self.flush_buf()?;
            if let Some(s) = self.segments.last() {
                if s.end() != first && !s.offsets.is_empty() && first < s.end() {
                    return Err(MetaError::io(
                        format!("appending entry {first} to {}", s.path.display()),
                        std::io::Error::other(format!("the log ends at entry {}", s.end())),
                    ));
                }
            }
            let path = segment_path(&self.dir, first);
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| MetaError::io(format!("creating Raft log segment {}", path.display()), e))?;
            fsync_dir(&self.dir)?;
            self.current = Some(f);
            self.segments.push(Segment { first, path, offsets: Vec::new(), len: 0 });
        } else if self.current.is_none() {
            let path = &self.segments.last().expect("checked above").path;
            let f = OpenOptions::new()
                .append(true)
                .open(path)
                .map_err(|e| MetaError::io(format!("opening Raft log segment {}", path.display()), e))?;
            self.current = Some(f);
        }
        let seg = self.segments.last_mut().expect("a segment is open");
        for r in records {
            seg.offsets.push(seg.len + self.buf.len() as u64);
            self.buf.extend_from_slice(&r);
        }
        Ok(())
    }

    fn flush_buf(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let seg = self.segments.last_mut().expect("buffered records have a segment");
        let f = self.current.as_mut().expect("buffered records have an open segment");
        f.write_all(&self.buf)
            .map_err(|e| MetaError::io(format!("writing Raft log segment {}", seg.path.display()), e))?;
        seg.len += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Writes what is buffered, fdatasyncs, then reports the appends flushed.
    fn sync(&mut self, flushed: &mut Vec<LogFlushed<TypeConfig>>) -> Result<()> {
        if flushed.is_empty() {
            return Ok(());
        }
        let r = self.flush_buf().and_then(|_| {
            let seg = self.segments.last().expect("appends have a segment");
            self.current
                .as_ref()
                .expect("appends have an open segment")
                .sync_data()
                .map_err(|e| MetaError::io(format!("fdatasync of Raft log segment {}", seg.path.display()), e))
        });
        for cb in flushed.drain(..) {
            cb.log_io_completed(r.as_ref().map(|_| ()).map_err(|e| std::io::Error::other(e.to_string())));
        }
        r
    }

    fn run_job(&mut self, job: Job) {
        match job {
            Job::Append { .. } => unreachable!("appends are batched by run_batch"),
            Job::Truncate { from, done } => {
                let _ = done.send(self.truncate(from));
            }
            Job::SaveState { state, done } => {
                let _ = done.send(self.save_state(&state));
            }
        }
    }

    /// Removes the entries from `from` on: later segments go first (newest first), then the
    /// segment holding `from` is cut, so a crash in between leaves a prefix of the log.
    fn truncate(&mut self, from: u64) -> Result<()> {
        let mut removed = false;
        while let Some(seg) = self.segments.last() {
            if seg.first < from {
                break;
            }
            std::fs::remove_file(&seg.path)
                .map_err(|e| MetaError::io(format!("removing Raft log segment {}", seg.path.display()), e))?;
            self.segments.pop();
            self.current = None;
            removed = true;
        }
        if removed {
            fsync_dir(&self.dir)?;
        }
        if let Some(seg) = self.segments.last_mut() {
            if from < seg.end() {
                let keep = (from - seg.first) as usize;
                let cut = seg.offsets[keep];
                let f = OpenOptions::new()
                    .write(true)
                    .open(&seg.path)
                    .map_err(|e| MetaError::io(format!("opening {} to truncate it", seg.path.display()), e))?;
                f.set_len(cut)
                    .and_then(|_| f.sync_all())
                    .map_err(|e| MetaError::io(format!("truncating {} at byte offset {cut}", seg.path.display()), e))?;
                seg.offsets.truncate(keep);
                seg.len = cut;
                self.current = None;
            }
        }
        Ok(())
    }

    /// Writes the hard state, then removes the segments whose entries are all purged.
    fn save_state(&mut self, state: &HardState) -> Result<()> {
        let payload = postcard::to_allocvec(state).expect("postcard encodes the log state");
        write_atomic(&self.dir.join(STATE_FILE), &encode_blob(&payload))?;
        let Some(purged) = state.purged else { return Ok(()) };
        let mut removed = 0;
        while let Some(seg) = self.segments.first() {
            // A segment goes once every entry in it is purged (an empty newest segment stays).
            if seg.end() > purged.index + 1 || (self.segments.len() == 1 && seg.offsets.is_empty()) {
                break;
            }
            if let Err(e) = std::fs::remove_file(&seg.path) {
                warn!("removing purged Raft log segment {}: {e}", seg.path.display());
            }
            if self.segments.len() == 1 {
                self.current = None;
            }
            self.segments.remove(0);
            removed += 1;
        }
        if removed > 0 {
            fsync_dir(&self.dir)?;
        }
        Ok(())
    }
}

fn fail(job: Job, e: &MetaError) {
    match job {
        Job::Append { flushed, .. } => flushed.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        Job::Truncate { done, .. } | Job::SaveState { done, .. } => {
            let _ = done.send(Err(e.clone()));
        }
    }
}
