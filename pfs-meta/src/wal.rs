//! The write-ahead log of namespace mutations, with group commit and checkpoints.
//!
//! On disk, in the metadata directory:
//! - `wal-<first lsn, 16 hex digits>.log`: log segments. Each record is a `u32` LE payload
//!   length, a `u32` LE crc32c of the payload, then the payload: postcard of [`Record`].
//! - `checkpoint-<lsn, 16 hex digits>.snap`: the namespace after record `lsn`: a `u64` LE
//!   payload length, a `u32` LE crc32c, then postcard of [`Snapshot`]. Written as a temporary
//!   file, fsynced, renamed, and the directory fsynced, so it is either whole or absent.
//!
//! One writer thread (plain blocking file I/O) drains a bounded channel: it writes every
//! queued record, makes the batch durable with one `fdatasync`, then publishes the durable
//! LSN on a `watch` channel that request handlers wait on. Nothing is acknowledged before its
//! record is durable.

use crate::error::{MetaError, Result};
use crate::namespace::{Mutation, Namespace};
use pfs_common::layout::LayoutPolicy;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

/// Records (and checkpoints) queued for the writer thread at most; senders wait beyond that.
pub const WAL_QUEUE_MAX: usize = 4096;
/// Largest record payload accepted on replay, bytes (a record is one small mutation).
pub const RECORD_MAX_BYTES: u32 = 1 << 20;
const RECORD_HEADER: usize = 8;
const SNAPSHOT_HEADER: usize = 12;

/// One logged mutation with its log sequence number (LSNs start at 1 and have no gaps).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub lsn: u64,
    pub mutation: Mutation,
}

/// A checkpoint: the namespace after applying every record up to `lsn`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub lsn: u64,
    pub namespace: Namespace,
}

/// What the writer thread is asked to do, in LSN order.
#[derive(Debug)]
pub enum WalMsg {
    /// Append an encoded [`Record`] (already framed by [`frame_record`]).
    Record { lsn: u64, framed: Vec<u8> },
    /// After the records up to `lsn` are durable, write this encoded [`Snapshot`] as a
    /// checkpoint, start a new segment and delete what it made obsolete.
    Checkpoint { lsn: u64, snapshot: Vec<u8> },
}

/// The writer thread's progress.
#[derive(Clone, Debug)]
pub struct Durable {
    /// Every record up to this LSN is on disk.
    pub lsn: u64,
    /// Set when a write or fsync failed; the log accepts nothing more (the state in memory
    /// may then be ahead of the disk, so the process must stop).
    pub failed: Option<MetaError>,
}

/// The state recovered at start-up.
#[derive(Debug)]
pub struct Recovered {
    pub namespace: Namespace,
    /// LSN of the last record replayed (or of the checkpoint), 0 for a new log.
    pub last_lsn: u64,
    /// LSN of the checkpoint loaded, 0 if none.
    pub checkpoint_lsn: u64,
}

/// Frames a record: length, crc32c, postcard payload.
pub fn frame_record(record: &Record) -> Vec<u8> {
    let payload = postcard::to_allocvec(record).expect("postcard encodes records");
    let mut out = Vec::with_capacity(RECORD_HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Encodes the checkpoint of `namespace` after record `lsn` with its header (length, crc32c).
/// The payload decodes as a [`Snapshot`].
pub fn encode_snapshot(lsn: u64, namespace: &Namespace) -> Vec<u8> {
    #[derive(Serialize)]
    struct SnapshotRef<'a> {
        lsn: u64,
        namespace: &'a Namespace,
    }
    let payload = postcard::to_allocvec(&SnapshotRef { lsn, namespace }).expect("postcard encodes snapshots");
    let mut out = Vec::with_capacity(SNAPSHOT_HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

fn segment_name(first_lsn: u64) -> String {
    format!("wal-{first_lsn:016x}.log")
}

fn checkpoint_name(lsn: u64) -> String {
    format!("checkpoint-{lsn:016x}.snap")
}

fn parse_name(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let hex = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Files named after an LSN, sorted by it.
type Listing = Vec<(u64, PathBuf)>;

/// Segments and checkpoints in `dir`, each sorted by LSN.
fn list_dir(dir: &Path) -> Result<(Listing, Listing)> {
    let mut segments = Vec::new();
    let mut checkpoints = Vec::new();
    let rd = std::fs::read_dir(dir).map_err(|e| MetaError::io(format!("listing {}", dir.display()), e))?;
    for entry in rd {
        let entry = entry.map_err(|e| MetaError::io(format!("listing {}", dir.display()), e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(lsn) = parse_name(name, "wal-", ".log") {
            segments.push((lsn, entry.path()));
        } else if let Some(lsn) = parse_name(name, "checkpoint-", ".snap") {
            checkpoints.push((lsn, entry.path()));
        } else if name.starts_with("checkpoint-") && name.ends_with(".tmp") {
            // A checkpoint that never got renamed into place: useless.
            let _ = std::fs::remove_file(entry.path());
        }
    }
    segments.sort();
    checkpoints.sort();
    Ok((segments, checkpoints))
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| MetaError::io(format!("fsync of directory {}", dir.display()), e))
}

fn read_snapshot(path: &Path) -> Result<Snapshot> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| MetaError::io(format!("reading checkpoint {}", path.display()), e))?;
    let bad = |why: &str| MetaError::Corrupt {
        what: "checkpoint",
        file: path.to_path_buf(),
        offset: None,
        reason: why.to_string(),
    };
    if bytes.len() < SNAPSHOT_HEADER {
        return Err(bad("shorter than its header"));
    }
    let len = u64::from_le_bytes(bytes[0..8].try_into().unwrap());
    let crc = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
    let payload = &bytes[SNAPSHOT_HEADER..];
    if payload.len() as u64 != len {
        return Err(bad(&format!("header says {len} bytes, file has {}", payload.len())));
    }
    if crc32c::crc32c(payload) != crc {
        return Err(bad("crc32c mismatch"));
    }
    postcard::from_bytes(payload).map_err(|e| bad(&format!("undecodable: {e}")))
}

/// How a segment's scan ended.
enum Scan {
    Clean,
    Torn { offset: u64, why: String },
}

/// Reads the records of one segment. `last` says this is the newest segment, where a torn
/// final record is expected after a crash and is reported as `Scan::Torn` instead of an error.
fn scan_segment(path: &Path, last: bool) -> Result<(Vec<(u64, Record)>, Scan)> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| MetaError::io(format!("reading WAL segment {}", path.display()), e))?;
    let mut records = Vec::new();
    let mut off = 0usize;
    let corrupt = |off: usize, why: String| corrupt_at(path, off as u64, why);
    while off < bytes.len() {
        let rest = &bytes[off..];
        if rest.len() < RECORD_HEADER {
            if last {
                let why = format!("{} bytes, shorter than a record header", rest.len());
                return Ok((records, Scan::Torn { offset: off as u64, why }));
            }
            return Err(corrupt(off, "truncated record header".into()));
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().unwrap());
        let crc = u32::from_le_bytes(rest[4..8].try_into().unwrap());
        let end = RECORD_HEADER as u64 + len as u64;
        if len == 0 && rest.iter().all(|&b| b == 0) && last {
            // Zeros after the last record: the file grew but the data never reached disk.
            return Ok((records, Scan::Torn { offset: off as u64, why: "zero-filled tail".into() }));
        }
        if len == 0 || len > RECORD_MAX_BYTES {
            return Err(corrupt(off, format!("bad record length {len}")));
        }
        if end > rest.len() as u64 {
            if last {
                return Ok((
                    records,
                    Scan::Torn {
                        offset: off as u64,
                        why: format!("record of {len} bytes runs past the end of the file"),
                    },
                ));
            }
            return Err(corrupt(off, format!("record of {len} bytes runs past the end of the file")));
        }
        let payload = &rest[RECORD_HEADER..end as usize];
        if crc32c::crc32c(payload) != crc {
            if last && off + end as usize == bytes.len() {
                return Ok((
                    records,
                    Scan::Torn { offset: off as u64, why: "crc32c mismatch in the final record".into() },
                ));
            }
            return Err(corrupt(off, "crc32c mismatch".into()));
        }
        let record: Record =
            postcard::from_bytes(payload).map_err(|e| corrupt(off, format!("undecodable record: {e}")))?;
        records.push((off as u64, record));
        off += end as usize;
    }
    Ok((records, Scan::Clean))
}

fn corrupt_at(path: &Path, offset: u64, reason: String) -> MetaError {
    MetaError::Corrupt { what: "WAL segment", file: path.to_path_buf(), offset: Some(offset), reason }
}

/// The on-disk format this pfs-meta writes and reads, kept in the file [`FORMAT_FILE`] of the
/// metadata directory. Format 2: POSIX inodes (mode, owner, nanosecond times, link counts,
/// symbolic links and device nodes).
pub const FORMAT: &str = "pfs-meta format 2";
/// The file in the metadata directory naming its [`FORMAT`].
pub const FORMAT_FILE: &str = "FORMAT";

/// Refuses a metadata directory written in another format (an old log decoded as this one
/// would be garbage); writes the format file into an empty directory (`fresh`), durably.
fn check_format(dir: &Path, fresh: bool) -> Result<()> {
    let path = dir.join(FORMAT_FILE);
    match std::fs::read_to_string(&path) {
        Ok(found) if found.trim_end() == FORMAT => Ok(()),
        Ok(found) => Err(MetaError::Corrupt {
            what: "metadata directory",
            file: path,
            offset: None,
            reason: format!("it says {:?}; this pfs-meta reads {FORMAT:?} only", found.trim_end()),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !fresh => Err(MetaError::Corrupt {
            what: "metadata directory",
            file: path,
            offset: None,
            reason: format!(
                "missing: the log was written by a pfs-meta older than {FORMAT:?}, which this one cannot read"
            ),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut f = File::create(&path).map_err(|e| MetaError::io(format!("creating {}", path.display()), e))?;
            f.write_all(format!("{FORMAT}\n").as_bytes())
                .and_then(|_| f.sync_all())
                .map_err(|e| MetaError::io(format!("writing {}", path.display()), e))?;
            fsync_dir(dir)
        }
        Err(e) => Err(MetaError::io(format!("reading {}", path.display()), e)),
    }
}

/// Loads the newest valid checkpoint in `dir` (created if missing) and replays the later
/// records. A torn final record of the newest segment is cut off (logged); any other damage
/// is an error naming the file and byte offset.
pub fn recover(dir: &Path, root_policy: LayoutPolicy) -> Result<Recovered> {
    if !dir.is_dir() {
        std::fs::create_dir_all(dir).map_err(|e| MetaError::io(format!("creating {}", dir.display()), e))?;
        // Make the new directory's own entry durable, or a crash could lose the whole log.
        if let Some(parent) = dir.parent() {
            fsync_dir(parent)?;
        }
    }
    let (segments, checkpoints) = list_dir(dir)?;
    check_format(dir, segments.is_empty() && checkpoints.is_empty())?;
    let mut namespace = Namespace::new(root_policy);
    let mut checkpoint_lsn = 0;
    for (lsn, path) in checkpoints.iter().rev() {
        match read_snapshot(path) {
            Ok(s) if s.lsn == *lsn => {
                namespace = s.namespace;
                checkpoint_lsn = s.lsn;
                break;
            }
            Ok(s) => warn!("checkpoint {} holds LSN {}, not {lsn}; skipping it", path.display(), s.lsn),
            Err(e) => warn!("{e}; trying an older checkpoint"),
        }
    }
    let mut last_lsn = checkpoint_lsn;
    for (i, (first, path)) in segments.iter().enumerate() {
        let is_last = i + 1 == segments.len();
        let (records, scan) = scan_segment(path, is_last)?;
        if let Scan::Torn { offset, why } = scan {
            warn!("WAL segment {}: cutting off a torn record at byte offset {offset} ({why})", path.display());
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| MetaError::io(format!("opening {} to cut its torn tail", path.display()), e))?;
            f.set_len(offset)
                .and_then(|_| f.sync_all())
                .map_err(|e| MetaError::io(format!("cutting {} at byte offset {offset}", path.display()), e))?;
        }
        if let Some((offset, r)) = records.first() {
            if r.lsn != *first {
                return Err(corrupt_at(
                    path,
                    *offset,
                    format!("the first record has LSN {} instead of {first}", r.lsn),
                ));
            }
        }
        for (offset, r) in records {
            if r.lsn <= last_lsn {
                continue; // already in the checkpoint
            }
            if r.lsn != last_lsn + 1 {
                return Err(corrupt_at(path, offset, format!("LSN {} follows {last_lsn}; records are missing", r.lsn)));
            }
            namespace
                .apply(&r.mutation)
                .map_err(|e| corrupt_at(path, offset, format!("record LSN {} does not apply: {e}", r.lsn)))?;
            last_lsn = r.lsn;
        }
    }
    info!(
        "recovered {} from checkpoint LSN {checkpoint_lsn} and log up to LSN {last_lsn} ({} inodes)",
        dir.display(),
        namespace.len()
    );
    Ok(Recovered { namespace, last_lsn, checkpoint_lsn })
}

/// The open log: a queue to the writer thread and the durable LSN it publishes.
pub struct Wal {
    tx: mpsc::Sender<WalMsg>,
    durable: watch::Receiver<Durable>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Wal {
    /// Recovers the state in `dir` and starts the writer thread appending after it.
    ///
    /// Errors: Io naming the file (and byte offset) for unreadable or corrupt logs.
    pub fn open(dir: &Path, root_policy: LayoutPolicy) -> Result<(Wal, Recovered)> {
        let recovered = recover(dir, root_policy)?;
        let (segments, _) = list_dir(dir)?;
        let segment = match segments.last() {
            Some((_, path)) => OpenOptions::new()
                .append(true)
                .open(path)
                .map_err(|e| MetaError::io(format!("opening WAL segment {}", path.display()), e))?,
            None => new_segment(dir, recovered.last_lsn + 1)?,
        };
        let (tx, rx) = mpsc::channel(WAL_QUEUE_MAX);
        let (dtx, drx) = watch::channel(Durable { lsn: recovered.last_lsn, failed: None });
        let writer = Writer { dir: dir.to_path_buf(), segment, durable: dtx, durable_lsn: recovered.last_lsn };
        let thread = std::thread::Builder::new()
            .name("pfs-meta-wal".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| MetaError::io("starting the WAL writer thread", e))?;
        Ok((Wal { tx, durable: drx, thread: Some(thread) }, recovered))
    }

    /// Waits for room in the queue; the permit then sends one message without waiting, so a
    /// caller can send under its state lock and keep LSN order.
    pub async fn reserve(&self) -> Result<mpsc::OwnedPermit<WalMsg>> {
        self.tx.clone().reserve_owned().await.map_err(|_| self.stopped())
    }

    /// Queues `msg` if there is room without waiting; false if the queue is full or closed.
    pub fn try_send(&self, msg: WalMsg) -> bool {
        self.tx.try_send(msg).is_ok()
    }

    fn stopped(&self) -> MetaError {
        let failed = self.durable.borrow().failed.clone();
        MetaError::WalFailed(Box::new(
            failed.unwrap_or_else(|| MetaError::io("the WAL writer", std::io::Error::other("stopped"))),
        ))
    }

    /// Waits until every record up to `lsn` is durable.
    ///
    /// Errors: Io if the writer failed (a write or fsync error), naming the file.
    pub async fn wait_durable(&self, lsn: u64) -> Result<()> {
        let mut rx = self.durable.clone();
        let state = rx.wait_for(|d| d.lsn >= lsn || d.failed.is_some()).await.map_err(|_| self.stopped())?;
        match &state.failed {
            Some(e) if state.lsn < lsn => Err(MetaError::WalFailed(Box::new(e.clone()))),
            _ => Ok(()),
        }
    }

    /// The durable LSN and failure, as a watch receiver (for a supervisor).
    pub fn durable(&self) -> watch::Receiver<Durable> {
        self.durable.clone()
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        // Closing the channel makes the writer finish the queue and exit.
        let (tx, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn new_segment(dir: &Path, first_lsn: u64) -> Result<File> {
    let path = dir.join(segment_name(first_lsn));
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| MetaError::io(format!("creating WAL segment {}", path.display()), e))?;
    fsync_dir(dir)?;
    Ok(f)
}

struct Writer {
    dir: PathBuf,
    segment: File,
    durable: watch::Sender<Durable>,
    durable_lsn: u64,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<WalMsg>) {
        let mut batch = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < WAL_QUEUE_MAX {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            if let Err(e) = self.write_batch(&mut batch) {
                tracing::error!("WAL writer failed, no more mutations are accepted: {e}");
                self.durable.send_modify(|d| d.failed = Some(e));
                return;
            }
        }
    }

    /// Writes the batch in order: records are buffered and made durable with one fdatasync;
    /// a checkpoint first makes the records before it durable.
    fn write_batch(&mut self, batch: &mut Vec<WalMsg>) -> Result<()> {
        let mut buf = Vec::new();
        let mut pending_lsn = self.durable_lsn;
        for msg in batch.drain(..) {
            match msg {
                WalMsg::Record { lsn, framed } => {
                    buf.extend_from_slice(&framed);
                    pending_lsn = lsn;
                }
                WalMsg::Checkpoint { lsn, snapshot } => {
                    self.sync(&mut buf, pending_lsn)?;
                    self.checkpoint(lsn, &snapshot)?;
                }
            }
        }
        self.sync(&mut buf, pending_lsn)
    }

    fn sync(&mut self, buf: &mut Vec<u8>, lsn: u64) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        self.segment
            .write_all(buf)
            .and_then(|_| self.segment.sync_data())
            .map_err(|e| MetaError::io(format!("writing WAL in {}", self.dir.display()), e))?;
        buf.clear();
        self.durable_lsn = lsn;
        self.durable.send_modify(|d| d.lsn = lsn);
        Ok(())
    }

    fn checkpoint(&mut self, lsn: u64, snapshot: &[u8]) -> Result<()> {
        let path = self.dir.join(checkpoint_name(lsn));
        let tmp = self.dir.join(format!("{}.tmp", checkpoint_name(lsn)));
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(snapshot)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| MetaError::io(format!("writing checkpoint {}", path.display()), e))?;
        fsync_dir(&self.dir)?;
        self.segment = new_segment(&self.dir, lsn + 1)?;
        // Everything up to `lsn` is in the checkpoint now: older segments and checkpoints go.
        let (segments, checkpoints) = list_dir(&self.dir)?;
        for (first, p) in segments {
            if first <= lsn {
                if let Err(e) = std::fs::remove_file(&p) {
                    warn!("removing obsolete WAL segment {}: {e}", p.display());
                }
            }
        }
        for (c, p) in checkpoints {
            if c < lsn {
                if let Err(e) = std::fs::remove_file(&p) {
                    warn!("removing obsolete checkpoint {}: {e}", p.display());
                }
            }
        }
        info!("checkpoint {} written", path.display());
        Ok(())
    }
}
