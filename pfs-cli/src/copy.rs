//! Striped parallel copy (the engine of `pfs-cp` and `pfs demo`): local→pfs, pfs→local and
//! pfs→pfs, file by file, directories with `recursive`.
//!
//! A file is moved in segments of `stripe_count × chunk_size` bytes (at least 4 MiB, at most
//! 16 MiB) so that one segment keeps every storage target of the file busy. Up to
//! [`DEPTH`] segment reads and [`DEPTH`] segment writes run at once as separate tasks, so
//! memory stays at `2 × DEPTH` segments whatever the file size (`3 × DEPTH` verifying: a
//! segment being read back).
//!
//! `verify` into pfs compares, chunk by chunk, the SHA-256 of the source's bytes with the
//! SHA-256 pfs-meta's chunk map recorded for the destination's chunk at the final fsync: the
//! storage servers hash the bytes they write anyway (fused with the write, or re-read when
//! writes came out of order), so nothing is read back and every byte crosses the network once.
//! With `read_back`, and for local destinations, every segment is instead read back from the
//! destination once written and its SHA-256 compared with the source's. Either way segments
//! are hashed on tokio's blocking threads while other segments move, so verification overlaps
//! the copy and uses every core; a whole-file digest would have to run on one core in file
//! order.

use crate::error::{Error, Result};
use futures_util::stream::{FuturesOrdered, FuturesUnordered, StreamExt};
use pfs_client::path;
use pfs_client::{Client, CreateOptions, File, FileKind};
use pfs_common::pool::{self, PooledBuf};
use pfs_common::ErrorCode;
use sha2::{Digest, Sha256};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Segment reads (and, separately, writes) in flight per file.
pub const DEPTH: usize = 3;
const SEGMENT_MIN: u64 = 4 << 20;
const SEGMENT_MAX: u64 = 16 << 20;

/// One end of a copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A path on this host.
    Local(PathBuf),
    /// A pfs path (`/dir/file`).
    Pfs(String),
}

impl Endpoint {
    /// `pfs:/a/b` is a pfs path, anything else a local one.
    pub fn parse(arg: &str) -> Endpoint {
        match path::parse_pfs_arg(arg) {
            Some(p) => Endpoint::Pfs(p),
            None => Endpoint::Local(PathBuf::from(arg)),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Local(p) => write!(f, "{}", p.display()),
            Endpoint::Pfs(p) => write!(f, "pfs:{p}"),
        }
    }
}

/// Options of [`copy`].
#[derive(Clone, Default)]
pub struct CopyOptions {
    /// Copy directories and their contents.
    pub recursive: bool,
    /// Layout of new pfs files.
    pub create: CreateOptions,
    /// Check the destination against the source's SHA-256 (see the module documentation).
    pub verify: bool,
    /// With `verify`, read pfs destinations back too, instead of checking them against the
    /// chunk map's SHA-256.
    pub read_back: bool,
    /// Advanced by the bytes copied (hidden when not on a terminal).
    pub progress: Option<indicatif::ProgressBar>,
}

/// What a copy did.
#[derive(Clone, Debug, Default)]
pub struct CopyStats {
    pub files: u64,
    pub bytes: u64,
    pub elapsed: Duration,
}

impl CopyStats {
    /// Throughput in MiB/s.
    pub fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / (1u64 << 20) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Copies `src` to `dst`, as `cp` does: a `dst` that is an existing directory (with or
/// without a trailing slash) receives `src` under its own name; a `dst` with a trailing slash
/// that is not an existing directory is an error for a file (nothing is created), while a
/// directory copied recursively becomes it. Directories need `recursive`.
///
/// Errors name the path involved; a failed file copy removes the partial destination file,
/// so nothing incomplete is left looking like a finished copy.
pub async fn copy(client: &Client, src: &Endpoint, dst: &Endpoint, opts: &CopyOptions) -> Result<CopyStats> {
    let started = Instant::now();
    let mut stats = CopyStats::default();
    let src_is_dir = is_dir(client, src).await?;
    if src_is_dir && !opts.recursive {
        return Err(Error::Usage(format!("{src} is a directory (use -r)")));
    }
    let dst = resolve_destination(client, src, src_is_dir, dst).await?;
    if src_is_dir {
        copy_tree(client, src, &dst, opts, &mut stats).await?;
    } else {
        copy_one(client, src, &dst, opts, &mut stats).await?;
    }
    stats.elapsed = started.elapsed();
    Ok(stats)
}

async fn is_dir(client: &Client, e: &Endpoint) -> Result<bool> {
    match e {
        Endpoint::Local(p) => {
            let m = std::fs::metadata(p).map_err(|err| Error::io(p.display(), err))?;
            Ok(m.is_dir())
        }
        Endpoint::Pfs(p) => {
            Ok(client.stat(p).await.map_err(|err| Error::from(err).context(format!("pfs:{p}")))?.kind == FileKind::Dir)
        }
    }
}

async fn exists_as_dir(client: &Client, e: &Endpoint) -> Result<bool> {
    match e {
        Endpoint::Local(p) => Ok(p.is_dir()),
        Endpoint::Pfs(p) => match client.stat(p).await {
            Ok(a) => Ok(a.kind == FileKind::Dir),
            Err(err) if err.code() == ErrorCode::NotFound => Ok(false),
            Err(err) => Err(err.into()),
        },
    }
}

/// True if `e` ends with a slash, so it must be a directory (`cp x dir/`).
fn has_trailing_slash(e: &Endpoint) -> bool {
    match e {
        Endpoint::Local(p) => {
            use std::os::unix::ffi::OsStrExt;
            let b = p.as_os_str().as_bytes();
            b.ends_with(b"/") && b.iter().any(|c| *c != b'/')
        }
        Endpoint::Pfs(p) => path::has_trailing_slash(p),
    }
}

fn base_name(e: &Endpoint) -> String {
    match e {
        Endpoint::Local(p) => p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        Endpoint::Pfs(p) => path::file_name(p).to_string(),
    }
}

fn child(e: &Endpoint, name: &str) -> Endpoint {
    match e {
        Endpoint::Local(p) => Endpoint::Local(p.join(name)),
        Endpoint::Pfs(p) => Endpoint::Pfs(path::join(p, name)),
    }
}

async fn resolve_destination(client: &Client, src: &Endpoint, src_is_dir: bool, dst: &Endpoint) -> Result<Endpoint> {
    if exists_as_dir(client, dst).await? {
        let name = base_name(src);
        if name.is_empty() {
            return Err(Error::Usage(format!("{src} has no name to copy under {dst}")));
        }
        return Ok(child(dst, &name));
    }
    if has_trailing_slash(dst) && !src_is_dir {
        // `cp x missing/` refuses too: the slash says "into a directory", and there is none.
        return Err(Error::Usage(format!("cannot create regular file {dst}: not a directory")));
    }
    Ok(dst.clone())
}

async fn copy_tree(
    client: &Client,
    src: &Endpoint,
    dst: &Endpoint,
    opts: &CopyOptions,
    stats: &mut CopyStats,
) -> Result<()> {
    // Depth-first with an explicit stack: no recursion through async fns.
    let mut stack = vec![(src.clone(), dst.clone())];
    while let Some((s, d)) = stack.pop() {
        match &d {
            Endpoint::Local(p) => std::fs::create_dir_all(p).map_err(|e| Error::io(p.display(), e))?,
            Endpoint::Pfs(p) => client.mkdir_all(p).await?,
        }
        for (name, dir) in list_dir(client, &s).await? {
            let (cs, cd) = (child(&s, &name), child(&d, &name));
            if dir {
                stack.push((cs, cd));
            } else {
                copy_one(client, &cs, &cd, opts, stats).await?;
            }
        }
    }
    Ok(())
}

async fn list_dir(client: &Client, e: &Endpoint) -> Result<Vec<(String, bool)>> {
    match e {
        Endpoint::Local(p) => {
            let mut out = Vec::new();
            for entry in std::fs::read_dir(p).map_err(|err| Error::io(p.display(), err))? {
                let entry = entry.map_err(|err| Error::io(p.display(), err))?;
                let ft = entry.file_type().map_err(|err| Error::io(entry.path().display(), err))?;
                if ft.is_dir() || ft.is_file() {
                    out.push((entry.file_name().to_string_lossy().into_owned(), ft.is_dir()));
                }
            }
            out.sort();
            Ok(out)
        }
        // As for local trees: directories and regular files; links, pipes and devices are left.
        Endpoint::Pfs(p) => Ok(client
            .readdir(p)
            .await?
            .into_iter()
            .filter(|e| matches!(e.kind, FileKind::Dir | FileKind::File))
            .map(|e| (e.name, e.kind == FileKind::Dir))
            .collect()),
    }
}

/// A source being read.
#[derive(Clone)]
enum Source {
    Local(Arc<std::fs::File>, PathBuf),
    Pfs(File),
}

/// A destination being written.
#[derive(Clone)]
enum Sink {
    Local(Arc<std::fs::File>, PathBuf),
    Pfs(File),
}

impl Source {
    async fn read(self, offset: u64, len: usize) -> Result<PooledBuf> {
        let mut buf = pool::global().get(len);
        match self {
            Source::Local(f, path) => tokio::task::spawn_blocking(move || {
                f.read_exact_at(&mut buf, offset)
                    .map_err(|e| Error::io(format!("reading {} at {offset}", path.display()), e))?;
                Ok(buf)
            })
            .await
            .map_err(|e| Error::Task(format!("a read task failed: {e}")))?,
            Source::Pfs(f) => {
                let n = f.read_at(offset, &mut buf).await?;
                if n != len {
                    return Err(Error::Mismatch(format!(
                        "pfs:{} shrank while being copied (short read at {offset})",
                        f.path()
                    )));
                }
                Ok(buf)
            }
        }
    }
}

impl Sink {
    async fn write(self, offset: u64, buf: PooledBuf) -> Result<usize> {
        match self {
            Sink::Local(f, path) => tokio::task::spawn_blocking(move || {
                f.write_all_at(&buf, offset)
                    .map_err(|e| Error::io(format!("writing {} at {offset}", path.display()), e))?;
                Ok(buf.len())
            })
            .await
            .map_err(|e| Error::Task(format!("a write task failed: {e}")))?,
            Sink::Pfs(f) => Ok(f.write_at(offset, &buf).await?),
        }
    }

    /// Writes `buf` at `offset`, reads the bytes back from the destination and compares their
    /// SHA-256 with `buf`'s. Errors: Mismatch naming the destination and byte range.
    async fn write_verified(self, offset: u64, buf: PooledBuf) -> Result<usize> {
        let (buf, want) = hash(buf).await?;
        let len = buf.len();
        self.clone().write(offset, buf).await?;
        let back = self.read_back(offset, len).await?;
        let (_, got) = hash(back).await?;
        if got != want {
            return Err(Error::Mismatch(format!(
                "verify failed: bytes {offset}..{} of {} read back with sha256 {}, the source's have {}",
                offset + len as u64,
                self.name(),
                hex::encode(got),
                hex::encode(want)
            )));
        }
        Ok(len)
    }

    /// `len` bytes at `offset`, read back from the destination (pfs: from the storage servers,
    /// a segment being at least a chunk, which the client's cache never holds).
    async fn read_back(&self, offset: u64, len: usize) -> Result<PooledBuf> {
        let mut buf = pool::global().get(len);
        let n = match self {
            Sink::Local(f, path) => {
                let (f, path) = (f.clone(), path.clone());
                return tokio::task::spawn_blocking(move || {
                    f.read_exact_at(&mut buf, offset)
                        .map_err(|e| Error::io(format!("reading {} back at {offset}", path.display()), e))?;
                    Ok(buf)
                })
                .await
                .map_err(|e| Error::Task(format!("a read-back task failed: {e}")))?;
            }
            Sink::Pfs(f) => f.read_at(offset, &mut buf).await?,
        };
        if n != len {
            return Err(Error::Mismatch(format!(
                "verify failed: {} read back {n} of {len} bytes at {offset}",
                self.name()
            )));
        }
        Ok(buf)
    }

    fn name(&self) -> String {
        match self {
            Sink::Local(_, p) => p.display().to_string(),
            Sink::Pfs(f) => format!("pfs:{}", f.path()),
        }
    }
}

/// (chunk index, SHA-256 of the chunk's bytes).
type ChunkDigests = Vec<(u64, [u8; 32])>;

/// Writes `buf` at `offset` of the pfs file `f` of `chunk_size`-byte chunks (`offset` a
/// multiple of it) while hashing each chunk's part of it on a blocking thread. Returns the
/// bytes written and (chunk index, SHA-256 of its bytes here) per chunk touched.
async fn write_hashed(f: File, offset: u64, buf: PooledBuf, chunk_size: u64) -> Result<(usize, ChunkDigests)> {
    let buf = Arc::new(buf);
    let hashing = {
        let buf = buf.clone();
        tokio::task::spawn_blocking(move || {
            buf.chunks(chunk_size as usize)
                .enumerate()
                .map(|(i, piece)| (offset / chunk_size + i as u64, Sha256::digest(piece).into()))
                .collect::<ChunkDigests>()
        })
    };
    let n = f.write_at(offset, &buf).await?;
    let digests = hashing.await.map_err(|e| Error::Task(format!("a hash task failed: {e}")))?;
    Ok((n, digests))
}

/// Bytes per segment: a stripe (every storage target busy), within [4 MiB, 16 MiB], and a
/// whole number of chunks (so each chunk is hashed from one segment).
fn segment_size(layout: Option<&pfs_common::layout::Layout>) -> u64 {
    let Some(l) = layout else { return SEGMENT_MIN };
    let seg = (l.chunk_size() * l.stripe_count() as u64).clamp(SEGMENT_MIN, SEGMENT_MAX);
    (seg / l.chunk_size()).max(1) * l.chunk_size()
}

/// Checks every chunk of the pfs file `f` (`size` bytes, just synced) against `digests`, the
/// source's SHA-256 per chunk: pfs-meta's chunk map must hold each chunk committed at the
/// source's length and SHA-256. Errors: Mismatch naming the chunk, its byte range and both
/// digests (or what is missing).
pub async fn verify_chunks(
    client: &Client,
    f: &File,
    size: u64,
    digests: &std::collections::BTreeMap<u64, [u8; 32]>,
) -> Result<()> {
    let layout = f.layout();
    let count = layout.chunk_count(size);
    let infos = client.chunks(f.id(), count).await?;
    let committed: std::collections::BTreeMap<u64, _> = infos.into_iter().map(|i| (i.chunk, i.committed)).collect();
    for chunk in 0..count {
        let start = layout.file_offset(chunk, 0);
        let len = layout.chunk_len(chunk, size);
        let at = format!("chunk {chunk} (bytes {start}..{}) of pfs:{}", start + len, f.path());
        let want =
            digests.get(&chunk).ok_or_else(|| Error::Mismatch(format!("verify failed: {at} was never hashed")))?;
        let problem = match committed.get(&chunk).and_then(|c| c.as_ref()) {
            None => "is not committed in pfs-meta's chunk map".to_string(),
            Some(c) if c.len != len => format!("is committed with {} bytes, the source has {len}", c.len),
            Some(c) => match c.sha256 {
                None => "is committed without a SHA-256".to_string(),
                Some(got) if got.0 != *want => format!(
                    "is committed with sha256 {} (by {}), the source's bytes have {}",
                    hex::encode(got.0),
                    c.holders.iter().map(|(s, _)| s.to_string()).collect::<Vec<_>>().join(", "),
                    hex::encode(want)
                ),
                Some(_) => continue,
            },
        };
        return Err(Error::Mismatch(format!("verify failed: {at} {problem}")));
    }
    Ok(())
}

async fn copy_one(
    client: &Client,
    src: &Endpoint,
    dst: &Endpoint,
    opts: &CopyOptions,
    stats: &mut CopyStats,
) -> Result<()> {
    let (source, size, src_layout) = match src {
        Endpoint::Local(p) => {
            let f = std::fs::File::open(p).map_err(|e| Error::io(p.display(), e))?;
            let m = f.metadata().map_err(|e| Error::io(p.display(), e))?;
            if m.is_dir() {
                return Err(Error::Usage(format!("{} is a directory (use -r)", p.display())));
            }
            (Source::Local(Arc::new(f), p.clone()), m.len(), None)
        }
        Endpoint::Pfs(p) => {
            let f = client.open(p).await.map_err(|e| Error::from(e).context(format!("pfs:{p}")))?;
            let (size, layout) = (f.size(), f.layout().clone());
            (Source::Pfs(f), size, Some(layout))
        }
    };
    let sink = match dst {
        Endpoint::Local(p) => {
            // Readable too: `verify` reads the bytes back.
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(p)
                .map_err(|e| Error::io(p.display(), e))?;
            Sink::Local(Arc::new(f), p.clone())
        }
        Endpoint::Pfs(p) => {
            Sink::Pfs(client.create(p, &opts.create).await.map_err(|e| Error::from(e).context(format!("pfs:{p}")))?)
        }
    };
    let seg = match &sink {
        Sink::Pfs(f) => segment_size(Some(f.layout())),
        Sink::Local(..) => segment_size(src_layout.as_ref()),
    };
    // Into pfs, verify against the chunk map (the storage servers hash what they write).
    let chunk_map = match &sink {
        Sink::Pfs(f) if opts.verify && !opts.read_back => Some(f.layout().chunk_size()),
        _ => None,
    };
    let pumped = async {
        let digests = pump(source, sink.clone(), size, seg, opts, chunk_map).await?;
        if let Sink::Pfs(f) = &sink {
            f.fsync().await.map_err(|e| Error::from(e).context(format!("{dst} (the copy is incomplete)")))?;
            if chunk_map.is_some() {
                verify_chunks(client, f, size, &digests).await?;
            }
        }
        Ok::<_, Error>(())
    };
    match pumped.await {
        Ok(()) => {
            stats.files += 1;
            stats.bytes += size;
            Ok(())
        }
        Err(e) => {
            let removed = match dst {
                // Only a regular file is ours to remove: a copy to /dev/null or a pipe that
                // failed must never delete the device or the pipe.
                Endpoint::Local(p) => {
                    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_file())
                        && std::fs::remove_file(p).is_ok()
                }
                Endpoint::Pfs(p) => client.unlink(p).await.is_ok(),
            };
            let note = if removed { "partial destination removed" } else { "partial destination left behind" };
            Err(e.context(format!("copying {src} to {dst} failed ({note})")))
        }
    }
}

/// Moves `size` bytes from `source` to `sink`. With `chunk_map` (the destination's chunk
/// size) every chunk is hashed and the digests returned; otherwise, with `opts.verify`, every
/// segment is read back and checked.
async fn pump(
    source: Source,
    sink: Sink,
    size: u64,
    seg: u64,
    opts: &CopyOptions,
    chunk_map: Option<u64>,
) -> Result<std::collections::BTreeMap<u64, [u8; 32]>> {
    let mut reads = FuturesOrdered::new();
    let mut writes = FuturesUnordered::new();
    let mut digests = std::collections::BTreeMap::new();
    let mut next = 0u64;
    loop {
        while reads.len() < DEPTH && next < size {
            let len = seg.min(size - next) as usize;
            let (s, off) = (source.clone(), next);
            reads.push_back(tokio::spawn(async move { s.read(off, len).await.map(|b| (off, b)) }));
            next += len as u64;
        }
        let Some(joined) = reads.next().await else { break };
        let (off, buf) = joined.map_err(|e| Error::Task(format!("a read task failed: {e}")))??;
        let s = sink.clone();
        let with_none = |n: Result<usize>| n.map(|n| (n, ChunkDigests::new()));
        match (chunk_map, s, opts.verify) {
            (Some(cs), Sink::Pfs(f), _) => writes.push(tokio::spawn(write_hashed(f, off, buf, cs))),
            (_, s, true) => writes.push(tokio::spawn(async move { with_none(s.write_verified(off, buf).await) })),
            (_, s, false) => writes.push(tokio::spawn(async move { with_none(s.write(off, buf).await) })),
        }
        while writes.len() >= DEPTH {
            digests.extend(finish_write(writes.next().await, opts)?);
        }
    }
    while let Some(w) = writes.next().await {
        digests.extend(finish_write(Some(w), opts)?);
    }
    Ok(digests)
}

/// SHA-256 of `buf` on a blocking thread (hashing is CPU work: it must not hold up the
/// runtime's I/O); gives the buffer back.
async fn hash(buf: PooledBuf) -> Result<(PooledBuf, [u8; 32])> {
    tokio::task::spawn_blocking(move || {
        let digest: [u8; 32] = Sha256::digest(&buf[..]).into();
        (buf, digest)
    })
    .await
    .map_err(|e| Error::Task(format!("a hash task failed: {e}")))
}

/// The digests of a finished segment write (none unless hashed), after counting its bytes.
fn finish_write(
    w: Option<std::result::Result<Result<(usize, ChunkDigests)>, tokio::task::JoinError>>,
    opts: &CopyOptions,
) -> Result<ChunkDigests> {
    let Some(w) = w else { return Ok(ChunkDigests::new()) };
    let (n, digests) = w.map_err(|e| Error::Task(format!("a write task failed: {e}")))??;
    if let Some(p) = &opts.progress {
        p.inc(n as u64);
    }
    Ok(digests)
}

/// SHA-256 (hex) of a local or pfs file, read in segments.
pub async fn sha256_of(client: &Client, e: &Endpoint) -> Result<String> {
    let mut h = Sha256::new();
    match e {
        Endpoint::Local(p) => {
            let p = p.clone();
            return tokio::task::spawn_blocking(move || {
                let mut f = std::fs::File::open(&p).map_err(|e| Error::io(p.display(), e))?;
                std::io::copy(&mut f, &mut h).map_err(|e| Error::io(p.display(), e))?;
                Ok(hex::encode(h.finalize()))
            })
            .await
            .map_err(|e| Error::Task(format!("a hash task failed: {e}")))?;
        }
        Endpoint::Pfs(p) => {
            let f = client.open(p).await?;
            let seg = segment_size(Some(f.layout())) as usize;
            let mut buf = pool::global().get(seg);
            let mut off = 0u64;
            loop {
                let n = f.read_at(off, &mut buf).await?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                off += n as u64;
            }
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// Total bytes of regular files under `e` (for a progress bar's length).
pub async fn total_bytes(client: &Client, e: &Endpoint) -> Result<u64> {
    let mut total = 0;
    let mut stack = vec![e.clone()];
    while let Some(cur) = stack.pop() {
        if is_dir(client, &cur).await? {
            for (name, _) in list_dir(client, &cur).await? {
                stack.push(child(&cur, &name));
            }
        } else {
            total += match &cur {
                Endpoint::Local(p) => std::fs::metadata(p).map_err(|err| Error::io(p.display(), err))?.len(),
                Endpoint::Pfs(p) => client.stat(p).await?.size,
            };
        }
    }
    Ok(total)
}

/// Whether `p` is a local path (for callers that build endpoints from `Path`s).
pub fn local(p: &Path) -> Endpoint {
    Endpoint::Local(p.to_path_buf())
}
