//! [`File`]: coherent reads and writes of one striped file, carrying out what its
//! [`FileState`] decides.
//!
//! Every read or write first makes sure this client's session holds a token covering the
//! bytes (Read for reads, Write for writes), asking pfs-meta when it does not, then works on
//! the file's block cache and the storage servers.
//!
//! * Small I/O goes through the file's [`BlockCache`]: writes are cached as dirty byte extents
//!   (write-back), reads fill it block by block.
//! * Large I/O (at least one chunk) bypasses it: a write goes straight to the storage servers
//!   (dropping cached bytes it supersedes), a read first writes back our own dirty bytes in
//!   its range and then reads the storage servers. A striped copy then moves data once.
//! * A revoke takes the file's I/O lock exclusively, so it waits for I/O in flight, writes
//!   back the dirty bytes of the revoked range, records the new size on pfs-meta, drops (Write
//!   wanted) or keeps (Read wanted) the cached bytes, and then the revoke is acknowledged.
//!
//! What is held, what may be written under which capability, what an fsync must ask and when
//! it may say Ok are [`FileState`]'s decisions (sans-IO, model-checked); this module only
//! sends the requests they call for and feeds the answers back. The state lives behind one
//! mutex that is never held across an await.
//!
//! A handle dropped without [`File::close`] is closed in the background (written back, made
//! durable, its tokens given back), as a process's files are at exit.

use crate::cache::{BlockCache, CacheStats, Run};
use crate::error::{Error, Result};
use crate::failover::Failover;
use crate::file_state::{CapabilityPlan, FileState, Grant, Need, SizeReport};
use crate::session::{OpenTarget, Session};
use crate::stride::{Advice, StrideDetector};
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use pfs_common::capability::{unix_ms, Access, Capability, MAX_CAPABILITIES};
use pfs_common::ids::{FileId, ServerId};
use pfs_common::layout::{Layout, Piece, MAX_FILE_SIZE};
use pfs_common::pool;
use pfs_common::token::{ByteRange, Mode, Stride};
use pfs_common::wire::namespace::{self as ns, Attr, FileKind};
use pfs_common::wire::storage::{Extent, FsyncFile, ReadChunk, TruncateFile, WriteChunk, WRITE_EXTENTS_MAX};
use pfs_common::wire::tokens as tok;
use pfs_common::ErrorCode;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Bytes bound for one chunk: their offset in the chunk and the bytes.
type ChunkPart<'a> = (u64, &'a [u8]);

/// Dirty runs written back at once (their payload bytes are bounded by the client's
/// in-flight limit as well).
const WRITE_BACK_RUNS: usize = 64;

/// Records of a strided reader fetched into the cache ahead of its reads.
const READ_AHEAD_RECORDS: u64 = 32;

/// An open pfs file. Cheap to clone; clones are the same handle (closing one closes it).
/// Every handle of the same file in one client shares its tokens, cache and size. The access
/// pattern that decides which records are asked for or read ahead is the handle's own:
/// handles of one client may be different processes (a mount's), whose interleaved I/O is no
/// pattern.
#[derive(Clone)]
pub struct File {
    handle: Arc<Handle>,
}

/// One open of a file: its access pattern, and whether it was closed.
struct Handle {
    file: Arc<OpenFile>,
    /// The pattern of its writes, for asking for records ahead of need.
    stride: parking_lot::Mutex<StrideDetector>,
    /// The pattern of its cached reads, for fetching records ahead of them.
    read_ahead: parking_lot::Mutex<ReadAhead>,
    closed: AtomicBool,
}

impl Drop for Handle {
    /// Closes a handle dropped without [`File::close`], in the background on the runtime it
    /// is dropped on: its dirty bytes are written back and made durable, its tokens go back
    /// (others may be waiting for them). Outside a runtime nothing can be sent: that is
    /// logged, and the tokens go when the session ends.
    fn drop(&mut self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let file = self.file.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if let Err(e) = file.close_handle().await {
                        tracing::warn!("closing {} (dropped without close): {e}", file.path);
                    }
                });
            }
            Err(_) => tracing::warn!(
                "{} was dropped without close outside a runtime: its writes may not be durable, and its tokens \
                 stay until the session ends",
                file.path
            ),
        }
    }
}

/// Per-file state shared by every handle of a file within one client.
pub(crate) struct OpenFile {
    session: Arc<Session>,
    pub(crate) path: String,
    pub(crate) id: FileId,
    pub(crate) layout: Layout,
    /// Shared by reads and writes, exclusive for revokes, fsync, truncate and close.
    lock: tokio::sync::RwLock<()>,
    state: parking_lot::Mutex<FileState>,
    cache: Option<parking_lot::Mutex<BlockCache>>,
}

/// Read-ahead of a strided reader (IOR's segmented shared file read back): once its small
/// reads show a constant stride, the next [`READ_AHEAD_RECORDS`] records are fetched into the
/// cache in the background, so the reads find them there instead of waiting a round trip each.
#[derive(Default)]
struct ReadAhead {
    pattern: StrideDetector,
    /// Start of the last record fetched ahead, bytes.
    last: u64,
}

impl ReadAhead {
    /// Notes a read of `len` bytes at `offset` of a file of `size` bytes; returns the records
    /// to fetch ahead now (not fetched ahead before, within the file).
    fn next(&mut self, offset: u64, len: u64, size: u64) -> Vec<ByteRange> {
        self.pattern.observe(offset, len);
        let Some((_, step)) = self.pattern.pattern().filter(|(plen, _)| *plen == len) else {
            return Vec::new();
        };
        let horizon = READ_AHEAD_RECORDS.saturating_mul(step);
        if self.last <= offset || self.last > offset.saturating_add(horizon) {
            // Behind the reader, or a new pass over the file: start again from here.
            self.last = offset;
        }
        let mut out = Vec::new();
        for k in 1..=READ_AHEAD_RECORDS {
            let Some(start) = k.checked_mul(step).and_then(|o| o.checked_add(offset)) else { break };
            if start >= size {
                break;
            }
            if start > self.last {
                out.push(ByteRange::new(start, start.saturating_add(len).min(size)));
                self.last = start;
            }
        }
        out
    }
}

impl OpenTarget for OpenFile {
    fn revoke(self: Arc<Self>, range: ByteRange, wanted: Mode) -> BoxFuture<'static, ()> {
        Box::pin(async move { OpenFile::revoke(&self, range, wanted).await })
    }

    fn cache_stats(&self) -> CacheStats {
        self.cache.as_ref().map(|c| c.lock().stats()).unwrap_or_default()
    }

    fn reclaim_tokens(&self) -> Vec<(ByteRange, Mode)> {
        self.state.lock().reclaim_tokens()
    }
}

impl OpenFile {
    /// The open state of file `attr` (named `path`) in `session`.
    ///
    /// Errors: IsDir; Protocol for a file without a valid layout.
    pub(crate) fn new(session: Arc<Session>, path: String, attr: Attr) -> Result<OpenFile> {
        if attr.kind == FileKind::Dir {
            return Err(Error::IsDir { path });
        }
        let bad_layout = |message: String| Error::Protocol { peer: "pfs-meta".into(), message };
        let layout = attr.layout.ok_or_else(|| bad_layout(format!("{path} has no layout")))?;
        layout.validate().map_err(|e| bad_layout(format!("the layout of {path}: {e}")))?;
        let blocks = session.options.cache_blocks;
        let cache = (blocks > 0).then(|| parking_lot::Mutex::new(BlockCache::new(layout.block_size as usize, blocks)));
        let authenticated = session.options.auth.enabled();
        Ok(OpenFile {
            session,
            path,
            id: attr.id,
            layout,
            lock: tokio::sync::RwLock::new(()),
            state: parking_lot::Mutex::new(FileState::new(attr.size, authenticated)),
            cache,
        })
    }

    fn size(&self) -> u64 {
        self.state.lock().size()
    }

    fn holds(&self, range: ByteRange, mode: Mode) -> bool {
        self.state.lock().holds(range, mode)
    }

    /// Makes sure the session holds `mode` over `required`, asking for `desired` and the
    /// records of `ahead` (waiting first for any release of ours over them: see
    /// [`crate::releases`]).
    async fn ensure(&self, mode: Mode, required: ByteRange, desired: ByteRange, ahead: Option<Stride>) -> Result<()> {
        loop {
            let need =
                self.state.lock().need(mode, required, desired, ahead, |span| self.session.releasing(self.id, span));
            let ticket = match need {
                Need::Held => return Ok(()),
                Need::AwaitRelease { span } => {
                    self.session.wait_released(self.id, span).await;
                    continue;
                }
                Need::Acquire(ticket) => ticket,
            };
            let answer = match self.session.id() {
                Ok(session) => {
                    self.session.meta(tok::Acquire { session, file: self.id, mode, required, desired, ahead }).await
                }
                Err(e) => Err(e),
            };
            match answer {
                Ok(g) => {
                    let records = ahead.iter().flat_map(|a| a.records(g.ahead)).collect();
                    let grant = Grant { mode: g.mode, range: g.range, records, size: g.size, capability: g.capability };
                    self.state.lock().granted(ticket, grant, unix_ms());
                    self.session.counters.acquires.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.state.lock().acquire_failed(ticket);
                    if e.code() == ErrorCode::Evicted {
                        self.session.mark_evicted(e.clone());
                    }
                    return Err(e.on_file(format!("token for {} {required} of", mode_name(mode)), &self.path));
                }
            }
        }
    }

    /// Capabilities that together allow `mode` over each of `ranges`, each one once (see
    /// [`FileState::capabilities`]): kept ones, and fresh ones from pfs-meta where those do not
    /// cover. May be more than one request can carry ([`MAX_CAPABILITIES`]), which the caller
    /// checks.
    ///
    /// Errors: Denied (NotHeld) for a write over bytes we hold no Write token over; pfs-meta's.
    async fn capabilities_for_each(&self, ranges: &[ByteRange], mode: Mode) -> Result<Vec<Capability>> {
        let plan = self.state.lock().capabilities(ranges, mode, unix_ms());
        let (mut have, ask) = match plan {
            CapabilityPlan::NotNeeded => return Ok(Vec::new()),
            CapabilityPlan::NotHeld { range } => return Err(Error::NotHeld { path: self.path.clone(), range }),
            CapabilityPlan::Use { have, ask } => (have, ask),
        };
        for range in ask {
            let session = self.session.id()?;
            let cap = self
                .session
                .meta(tok::GetCapability { session, file: self.id, mode, range })
                .await
                .map_err(|e| e.on_file(format!("capability for {} {range} of", mode_name(mode)), &self.path))?;
            self.state.lock().keep_capability(cap, unix_ms());
            if !have.contains(&cap) {
                have.push(cap);
            }
        }
        Ok(have)
    }

    /// [`OpenFile::capabilities_for_each`] for one range.
    async fn capabilities_for(&self, range: ByteRange, mode: Mode) -> Result<Vec<Capability>> {
        self.capabilities_for_each(&[range], mode).await
    }

    /// The file bytes a part of chunk `chunk` covers.
    fn part_range(&self, chunk: u64, &(offset, bytes): &ChunkPart<'_>) -> ByteRange {
        let start = self.layout.file_offset(chunk, offset);
        ByteRange::new(start, start + bytes.len() as u64)
    }

    /// The file bytes a piece covers.
    fn piece_range(&self, p: &Piece) -> ByteRange {
        let start = self.layout.file_offset(p.chunk, p.chunk_offset);
        ByteRange::new(start, start + p.len as u64)
    }

    /// Handles a revoke of `range` (see the module doc). Errors are kept for the next fsync.
    pub(crate) async fn revoke(&self, range: ByteRange, wanted: Mode) {
        let _excl = self.lock.write().await;
        let ticket = self.state.lock().revoke(range, wanted);
        let result = async {
            self.write_back(range, false).await?;
            // The next holder needs the size; the mtime waits for our fsync or close.
            self.record_size(false).await
        }
        .await;
        let failed = result.is_err();
        if let Err(e) = result {
            // The token goes back whatever happened (the revoker must not wait on a server we
            // cannot reach), so bytes still dirty in the range can never be sent: writing them
            // later, under a token granted after another client's writes, would put older bytes
            // over newer ones. They are dropped and the next fsync or close reports them lost.
            tracing::warn!("write-back of {} {range} for a revoke failed, its dirty bytes are lost: {e}", self.path);
            let what = format!("write-back for a revoke lost the dirty bytes in {range} of");
            self.state.lock().writeback_failed(e.on_file(what, &self.path));
        }
        self.state.lock().revoke_done(ticket);
        if wanted == Mode::Write || failed {
            if let Some(c) = &self.cache {
                c.lock().invalidate(self.id, range.start..range.end, false);
            }
        }
    }

    /// Gives back our tokens within `range` as a revoke would take them (dirty bytes written
    /// back first), so that other clients' requests find them free. A failed write-back is
    /// kept for the next fsync, as in a revoke.
    async fn give_back(&self, range: ByteRange) {
        if !self.state.lock().holds_any(range) {
            return;
        }
        // Listed before we stop believing we hold it, so no acquire of ours overlapping it
        // goes out until pfs-meta has applied the release.
        let ticket = self.session.begin_release(self.id, range);
        self.revoke(range, Mode::Write).await;
        self.session.finish_release(ticket).await;
    }

    /// Fetches `range` into the cache if we hold a Read token over it (read-ahead: nothing is
    /// acquired for it, and a failure only costs the read that comes for it later).
    async fn prefetch(&self, range: ByteRange) {
        let _shared = self.lock.read().await;
        if !self.holds(range, Mode::Read) || self.session.id().is_err() {
            return;
        }
        let mut scratch = pool::global().get(range.len() as usize);
        if let Err(e) = self.read_locked(range.start, &mut scratch, true).await {
            tracing::debug!("read-ahead of {} {range}: {e}", self.path);
        }
    }

    /// Writes back our dirty cached bytes within `range`.
    async fn write_back(&self, range: ByteRange, closing: bool) -> Result<()> {
        let runs = match &self.cache {
            Some(c) => c.lock().take_dirty(self.id, range.start..range.end, closing),
            None => return Ok(()),
        };
        self.write_runs(runs).await
    }

    /// Writes `runs` (disjoint dirty extents) to the storage servers: one request per chunk
    /// carrying every run (or part of one) that falls in it, as extents of a vectored write
    /// (a strided writer's records in a chunk cost one request, not one each), up to
    /// [`WRITE_BACK_RUNS`] requests at a time. Every request is tried; the bytes of the ones
    /// that fail are dirtied again for a later fsync, and the first error is returned.
    async fn write_runs(&self, runs: Vec<Run>) -> Result<()> {
        if runs.is_empty() {
            return Ok(());
        }
        let mut by_chunk: BTreeMap<u64, Vec<ChunkPart<'_>>> = BTreeMap::new();
        for run in &runs {
            for p in self.layout.pieces(run.offset, run.data.len()) {
                let bytes = &run.data[p.buf_offset..p.buf_offset + p.len];
                by_chunk.entry(p.chunk).or_default().push((p.chunk_offset, bytes));
            }
        }
        let mut requests = Vec::with_capacity(by_chunk.len());
        for (chunk, mut parts) in by_chunk {
            parts.sort_unstable_by_key(|p| p.0);
            while parts.len() > WRITE_EXTENTS_MAX {
                let rest = parts.split_off(WRITE_EXTENTS_MAX);
                requests.push((chunk, std::mem::replace(&mut parts, rest)));
            }
            requests.push((chunk, parts));
        }
        let mut requests = requests.into_iter();
        let mut inflight = FuturesUnordered::new();
        let mut first = None;
        loop {
            while inflight.len() < WRITE_BACK_RUNS {
                let Some((chunk, parts)) = requests.next() else { break };
                inflight.push(async move {
                    let r = self.write_chunk(chunk, &parts).await;
                    (chunk, parts, r)
                });
            }
            let Some((chunk, parts, r)) = inflight.next().await else { break };
            let Err(e) = r else { continue };
            // Keep the bytes: re-dirty them so a later fsync retries.
            if let Some(c) = &self.cache {
                let mut cache = c.lock();
                for (offset, bytes) in parts {
                    if !cache.write(self.id, self.layout.file_offset(chunk, offset), bytes).is_empty() {
                        // Re-dirtying pushed other dirty bytes out that cannot be written either.
                        let lost = e.clone().on_file("dirty cached data lost writing back", &self.path);
                        self.state.lock().writeback_failed(lost);
                    }
                }
            }
            first.get_or_insert(e);
        }
        first.map_or(Ok(()), Err)
    }

    /// Tells pfs-meta the size our writes reached, if it grew, and with `mtime` that they
    /// changed the data (its mtime moves), if we wrote at all.
    async fn record_size(&self, mtime: bool) -> Result<()> {
        let Some(report) = self.state.lock().size_report(mtime) else { return Ok(()) };
        self.send_size(report).await
    }

    async fn send_size(&self, report: SizeReport) -> Result<()> {
        if let Err(e) = self.session.meta(ns::SetSize { file: self.id, size: report.size }).await {
            self.state.lock().size_report_failed(report);
            return Err(e.on_file("recording the size of", &self.path));
        }
        Ok(())
    }

    /// Writes `buf` at `offset` straight to the storage servers, all pieces in parallel.
    async fn write_through(&self, offset: u64, buf: &[u8]) -> Result<()> {
        let mut pending: FuturesUnordered<_> = self
            .layout
            .pieces(offset, buf.len())
            .map(|p| async move {
                let part = [(p.chunk_offset, &buf[p.buf_offset..p.buf_offset + p.len])];
                self.write_chunk(p.chunk, &part).await
            })
            .collect();
        while let Some(r) = pending.next().await {
            r?;
        }
        Ok(())
    }

    /// Writes `parts` (ascending, disjoint, at most [`WRITE_EXTENTS_MAX`]) of chunk `chunk`
    /// in one request, or in two halves when their capabilities would be more than one request
    /// may carry.
    async fn write_chunk(&self, chunk: u64, parts: &[ChunkPart<'_>]) -> Result<()> {
        let ranges: Vec<ByteRange> = parts.iter().map(|p| self.part_range(chunk, p)).collect();
        let capabilities = self.capabilities_for_each(&ranges, Mode::Write).await?;
        if capabilities.len() > MAX_CAPABILITIES && parts.len() > 1 {
            let (a, b) = parts.split_at(parts.len() / 2);
            let (ra, rb) = tokio::join!(Box::pin(self.write_chunk(chunk, a)), Box::pin(self.write_chunk(chunk, b)));
            return ra.and(rb);
        }
        self.write_extents(chunk, parts, &ranges, capabilities).await
    }

    /// Writes `parts` of chunk `chunk` through its chain in one request: to the head, which
    /// forwards it down the chain and answers once every replica in the write path has it. A
    /// failed replica or a chain that moved on sends it again on the chain as pfs-meta has it
    /// now ([`Failover`]). `ranges` are the parts' file bytes and `capabilities` cover them
    /// (renewed for each further attempt).
    async fn write_extents(
        &self,
        chunk: u64,
        parts: &[ChunkPart<'_>],
        ranges: &[ByteRange],
        capabilities: Vec<Capability>,
    ) -> Result<()> {
        let session = self.session.id()?;
        let total: usize = parts.iter().map(|p| p.1.len()).sum();
        let extents: Vec<Extent> = parts.iter().map(|&(offset, b)| Extent { offset, len: b.len() as u32 }).collect();
        let payload: Vec<&[u8]> = parts.iter().map(|p| p.1).collect();
        let mut first = Some(capabilities);
        let chain_id = self.layout.chain(chunk);
        let _permit = self.session.inflight(total).await;
        let mut failover = Failover::new(&self.session);
        let mut chain = self.session.chain(chain_id).await.map_err(|e| self.chain_error("writing", chunk, e))?;
        loop {
            let Some(head) = chain.head() else {
                let e = Error::Unavailable(format!("{} has no replica that takes writes", chain.describe()));
                match failover.again(&self.session, chain_id, chain.version).await? {
                    Some(c) => {
                        chain = c;
                        continue;
                    }
                    None => return Err(self.chain_error("writing", chunk, e)),
                }
            };
            let req = WriteChunk {
                file: self.id,
                chunk,
                extents: extents.clone(),
                chunk_size: self.layout.chunk_size(),
                block_size: self.layout.block_size,
                session,
                chain: chain.at(),
                capabilities: match first.take() {
                    Some(caps) => caps,
                    None => self.capabilities_for_each(ranges, Mode::Write).await?,
                },
            };
            let on_chunk = |e| self.chunk_error("writing", chunk, head, e);
            let written = match self.bounded(head, &chain, self.session.storage(head, req, &payload)).await {
                Ok((written, _)) => written,
                Err(e) if e.code() == ErrorCode::Evicted => {
                    // Fenced: the session is gone, whatever we have heard from pfs-meta so far.
                    self.session.mark_evicted(e.clone());
                    return Err(on_chunk(e));
                }
                Err(e) if Failover::retryable(&e, &chain) => {
                    match failover.again_with(&self.session, chain_id, chain.version, e.current_chain()).await? {
                        Some(c) => {
                            tracing::debug!("writing chunk {chunk} of {}: {e}; again on {}", self.path, c.describe());
                            chain = c;
                            continue;
                        }
                        None => return Err(on_chunk(e)),
                    }
                }
                Err(e) => return Err(on_chunk(e)),
            };
            if written.len as usize != total {
                let message = format!("wrote {} of {total} bytes", written.len);
                return Err(on_chunk(Error::Protocol { peer: head.to_string(), message }));
            }
            self.state.lock().written(&written.boots);
            return Ok(());
        }
    }

    /// Reads `buf.len()` bytes at `offset` from the storage servers (holes read as zeros).
    async fn read_direct(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let mut pending = FuturesUnordered::new();
        let mut rest: &mut [u8] = buf;
        for p in self.layout.pieces(offset, rest.len()) {
            let (mine, tail) = rest.split_at_mut(p.len);
            rest = tail;
            pending.push(self.read_piece(p, mine));
        }
        while let Some(r) = pending.next().await {
            r?;
        }
        Ok(())
    }

    /// Reads one piece from a serving replica of its chunk's chain, spreading chunks over the
    /// replicas; a replica that fails (down, timed out, a block failing its checksum, a lost
    /// chunk) passes the read to the next one, and when every one failed for a reason that a
    /// newer chain may cure, the chain is fetched again ([`Failover`]).
    async fn read_piece(&self, p: Piece, out: &mut [u8]) -> Result<()> {
        let chain_id = self.layout.chain(p.chunk);
        let _permit = self.session.inflight(p.len).await;
        let mut failover = Failover::new(&self.session);
        let mut chain = self.session.chain(chain_id).await.map_err(|e| self.chain_error("reading", p.chunk, e))?;
        loop {
            let readers: Vec<ServerId> = chain.readers().collect();
            let mut last = None;
            let mut told = Vec::new();
            let mut cure = readers.is_empty();
            for i in 0..readers.len() {
                let server = readers[(p.chunk as usize + i) % readers.len()];
                let req = ReadChunk {
                    file: self.id,
                    chunk: p.chunk,
                    offset: p.chunk_offset,
                    len: p.len as u32,
                    chain: chain.at(),
                    chunk_size: self.layout.chunk_size(),
                    session: self.session.id()?,
                    capabilities: self.capabilities_for(self.piece_range(&p), Mode::Read).await?,
                };
                match self.bounded(server, &chain, self.session.storage(server, req, &[])).await {
                    Ok((_, data)) => {
                        self.fill(out, &data, p.chunk, server)?;
                        if last.is_some() {
                            self.session.counters.failovers.fetch_add(1, Ordering::Relaxed);
                        }
                        return Ok(());
                    }
                    Err(e) => {
                        // Counted in `ClientStats::failovers`; a down server would log every chunk.
                        tracing::debug!(
                            "reading chunk {} of {} from {server}: {e}; trying another replica",
                            p.chunk,
                            self.path
                        );
                        cure |= Failover::retryable(&e, &chain);
                        told.extend(e.current_chain().cloned());
                        last = Some(self.chunk_error("reading", p.chunk, server, e));
                    }
                }
            }
            let failed = last.unwrap_or_else(|| {
                let e = Error::Unavailable(format!("{} has no replica that serves reads", chain.describe()));
                self.chain_error("reading", p.chunk, e)
            });
            if !cure {
                return Err(failed);
            }
            let newest = Failover::newest(chain_id, &told);
            match failover.again_with(&self.session, chain_id, chain.version, newest).await? {
                Some(c) => chain = c,
                None => return Err(failed),
            }
        }
    }

    /// `call` to `server`, a replica of `chain`: with other replicas to go to, one that hangs
    /// is given up on (TimedOut) after `failover_ms` instead of the whole request timeout, so
    /// the request goes on elsewhere or on the chain pfs-meta makes without it.
    async fn bounded<T>(
        &self,
        server: ServerId,
        chain: &pfs_common::chain::Chain,
        call: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        self.bounded_if(chain.members.len() > 1, server, call).await
    }

    /// [`OpenFile::bounded`] when `replicated`, else `call` as it is.
    async fn bounded_if<T>(
        &self,
        replicated: bool,
        server: ServerId,
        call: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        if !replicated {
            return call.await;
        }
        let bound = std::time::Duration::from_millis(self.session.options.failover_ms);
        tokio::time::timeout(bound, call).await.unwrap_or_else(|_| {
            let ms = bound.as_millis() as u64;
            Err(Error::Rpc(pfs_common::Error::TimedOut { peer: server.to_string(), what: "chunk answer", ms }))
        })
    }

    /// Puts `server`'s answer to a read of `out.len()` bytes of chunk `chunk` into `out`; bytes
    /// past the chunk file's end, below the file size, are a hole (zeros). Errors (Protocol,
    /// naming the chunk and server) for an answer longer than asked.
    fn fill(&self, out: &mut [u8], data: &[u8], chunk: u64, server: ServerId) -> Result<()> {
        if data.len() > out.len() {
            let message = format!("answered {} bytes to a read of {}", data.len(), out.len());
            let e = Error::Protocol { peer: server.to_string(), message };
            return Err(self.chunk_error("reading", chunk, server, e));
        }
        out[..data.len()].copy_from_slice(data);
        out[data.len()..].fill(0);
        Ok(())
    }

    /// `e`, met looking up or using the chain of chunk `chunk` of this file.
    fn chain_error(&self, op: &'static str, chunk: u64, e: Error) -> Error {
        e.on_file(format!("{op} chunk {chunk} ({})", self.layout.chain(chunk)), &self.path)
    }

    /// `e`, as the cause of `op` ("reading", "writing") chunk `chunk` of this file on `server`.
    fn chunk_error(&self, op: &'static str, chunk: u64, server: ServerId, e: Error) -> Error {
        Error::Chunk { op, path: self.path.clone(), chunk, server, source: Box::new(e) }
    }

    /// I/O of at least this many bytes bypasses the cache.
    fn bypass(&self, len: usize) -> bool {
        self.cache.is_none() || len as u64 >= self.layout.chunk_size()
    }

    /// Reads under a held Read token, with the shared lock held. Bytes missing from the cache
    /// are fetched in whole blocks, so that neighbours are cached too, unless `exact` (a
    /// strided reader: its neighbours are other readers' records, and its own next ones are
    /// fetched ahead exactly).
    async fn read_locked(&self, offset: u64, buf: &mut [u8], exact: bool) -> Result<()> {
        let end = offset + buf.len() as u64;
        if self.bypass(buf.len()) {
            // Our own dirty bytes must be visible to our reads.
            self.write_back(ByteRange::new(offset, end), false).await?;
            return self.read_direct(offset, buf).await;
        }
        let cache = self.cache.as_ref().expect("not bypassing, so cached");
        let missing = cache.lock().read(self.id, offset, buf);
        let bs = if exact { 1 } else { self.layout.block_size as u64 };
        let size = self.size();
        for m in missing {
            let fs = m.start / bs * bs;
            let fe = (m.end.div_ceil(bs) * bs).min(size.max(m.end));
            let seq = self.state.lock().write_seq();
            let mut tmp = pool::global().get((fe - fs) as usize);
            self.read_direct(fs, &mut tmp).await?;
            let (a, b) = ((m.start - fs) as usize, (m.end - fs) as usize);
            buf[(m.start - offset) as usize..(m.end - offset) as usize].copy_from_slice(&tmp[a..b]);
            // Cache only bytes under our token: the rest of the block may be changing in
            // another client's cache right now, and caching it would serve it stale later.
            let span = {
                let st = self.state.lock();
                st.held_span(m.start, Mode::Read).filter(|_| st.write_seq() == seq)
            };
            if let Some(span) = span {
                let (cs, ce) = (span.start.max(fs), span.end.min(fe));
                if cs < ce {
                    let evicted = cache.lock().fill(self.id, cs, &tmp[(cs - fs) as usize..(ce - fs) as usize]);
                    self.write_runs(evicted).await?;
                }
            }
        }
        Ok(())
    }

    /// Writes under a held Write token, with the shared lock held.
    async fn write_locked(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.state.lock().writing();
        let end = offset + buf.len() as u64;
        if self.bypass(buf.len()) {
            if let Some(c) = &self.cache {
                // These bytes are superseded by the write (dirty ones included).
                c.lock().invalidate(self.id, offset..end, false);
            }
            self.write_through(offset, buf).await?;
        } else {
            let evicted = self.cache.as_ref().expect("not bypassing, so cached").lock().write(self.id, offset, buf);
            self.write_runs(evicted).await?;
        }
        self.state.lock().wrote(end);
        Ok(())
    }

    /// Write-back of everything dirty, an fsync round over every replica written (see
    /// [`FileState::begin_sync`]), then the size on pfs-meta. Takes the lock exclusively for
    /// the write-back and the size, not while it waits for the storage servers' answers or
    /// for pfs-meta to take a failed replica out of its chains (up to `failover_ms` each):
    /// a revoke waiting that long for the lock would be answered too late, and the session
    /// evicted.
    async fn sync(&self, closing: bool) -> Result<()> {
        let excl = self.lock.write().await;
        if let Err(e) = self.session.id() {
            // The last close of a file with nothing of ours unwritten, unsynced or unrecorded
            // loses nothing when the session is gone (a client closed before a file it only
            // read was dropped): that close succeeds, as close(2) of a read-only fd does.
            let dirty = self.cache.as_ref().is_some_and(|c| c.lock().dirty_bytes(self.id) > 0);
            if closing && !dirty && self.state.lock().nothing_to_flush() {
                return Ok(());
            }
            return Err(e);
        }
        self.write_back(ByteRange::ALL, closing).await?;
        let replicated = self.layout.replicas > 1;
        let mut round = self
            .state
            .lock()
            .begin_sync(replicated)
            .map_err(|e| e.on_file("an earlier write-back failed for", &self.path))?;
        // The round settles only the writes it lists; a revoke may write back more meanwhile.
        drop(excl);
        let mut pending: FuturesUnordered<_> = round
            .servers()
            .into_iter()
            .map(|(t, boot)| async move {
                let call = self.session.storage(t, FsyncFile { file: self.id, boot }, &[]);
                let r = self.bounded_if(replicated, t, call).await;
                (t, r.map(drop).map_err(|e| e.on_file(format!("fsync on {t} of"), &self.path)))
            })
            .collect();
        while let Some((t, r)) = pending.next().await {
            round.answered(t, r);
        }
        drop(pending);
        // A replica that failed (down, restarted) while another serving one of every chain
        // holds the writes is taken out of its chains by pfs-meta and resynced from them: the
        // writes stay durable. All failed ones are checked at once.
        let checks: Vec<_> =
            round.to_check().into_iter().map(|t| async move { (t, self.left_chains(t, false).await) }).collect();
        for (t, left) in futures_util::future::join_all(checks).await {
            // Not known to have left (pfs-meta unreachable): not forgiven.
            round.checked(t, left.unwrap_or(false));
            if round.forgiven(t) {
                if let Some(e) = round.error_of(t) {
                    tracing::warn!("{e}; {t} left the chains of {}, whose other replicas hold the writes", self.path);
                }
            }
        }
        self.state.lock().end_sync(round)?;
        let _excl = self.lock.write().await;
        self.record_size(true).await
    }

    /// Waits until pfs-meta has taken `server` out of the read path (`writes` false) or the
    /// write path (`writes` true) of every chain of this file, each of which still has a serving
    /// replica; false if that does not happen within `failover_ms`.
    async fn left_chains(&self, server: ServerId, writes: bool) -> Result<bool> {
        let mut failover = Failover::new(&self.session);
        failover
            .until(&self.session, &self.layout.chains, |chains| {
                chains.iter().all(|c| {
                    let still =
                        if writes { c.writers().any(|s| s == server) } else { c.readers().any(|s| s == server) };
                    !still && c.readers().next().is_some()
                })
            })
            .await
    }

    /// Closes one handle: flushes like fsync; at the client's last handle of the file, also
    /// drops its cached blocks, gives its tokens back and tells pfs-meta of the close.
    async fn close_handle(&self) -> Result<()> {
        let last = self.session.close_handle(self.id);
        let synced = self.sync(last).await;
        if !last {
            return synced;
        }
        if let Some(c) = &self.cache {
            c.lock().invalidate(self.id, 0..u64::MAX, true);
        }
        let asked = self.state.lock().asked_tokens();
        // None: another handle opened the file meanwhile, and its close closes it.
        let Some((opens, release)) = self.session.forget_file(self.id, asked, OpenTarget::cache_stats(self)) else {
            return synced;
        };
        let closed = ns::Closed { file: self.id, opens };
        match (self.session.id(), release) {
            // Tokens given back at once (others may wait for them), with the close and any
            // pending ones alongside: one round trip.
            (Ok(_), Some(release)) => {
                tokio::join!(self.session.finish_release(release), self.session.send_closes(vec![closed]));
            }
            // Never asked for a token, so none to give back: the close goes with the next
            // request (see `Session::close_later`).
            (Ok(_), None) => self.session.close_later(closed).await,
            // The session is gone, and with it everything it had open.
            (Err(_), release) => {
                if let Some(r) = release {
                    self.session.finish_release(r).await;
                }
            }
        }
        synced
    }
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Read => "read",
        Mode::Write => "write",
    }
}

impl File {
    /// A new handle of `file`.
    pub(crate) fn new(file: Arc<OpenFile>) -> File {
        File {
            handle: Arc::new(Handle {
                file,
                stride: parking_lot::Mutex::default(),
                read_ahead: parking_lot::Mutex::default(),
                closed: AtomicBool::new(false),
            }),
        }
    }

    fn state(&self) -> &Arc<OpenFile> {
        &self.handle.file
    }

    /// The file's id.
    pub fn id(&self) -> FileId {
        self.state().id
    }

    /// The path it was opened by.
    pub fn path(&self) -> &str {
        &self.state().path
    }

    /// Its stripe layout.
    pub fn layout(&self) -> &Layout {
        &self.state().layout
    }

    /// Reads chunk `chunk` from its replica on `server` only (no failover), under a Read
    /// token over the chunk's bytes below the file size, into `buf` (at most the chunk's
    /// length); returns the bytes read. For checks that look at every replica (`pfs getstripe
    /// --verify`).
    ///
    /// Errors: Stale when `server` does not serve reads of the chunk's chain (resyncing or
    /// offline); the replica's error (Io naming a corrupt block or a lost chunk, Unavailable).
    pub async fn read_replica(&self, chunk: u64, server: ServerId, buf: &mut [u8]) -> Result<usize> {
        let s = self.state();
        let start = s.layout.file_offset(chunk, 0);
        let want = s.layout.chunk_len(chunk, self.size()).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let range = ByteRange::new(start, start + want as u64);
        loop {
            s.ensure(Mode::Read, range, range, None).await?;
            let _shared = s.lock.read().await;
            if !s.holds(range, Mode::Read) {
                continue;
            }
            // Our own dirty bytes first, so the replica has what a read would see.
            s.write_back(range, false).await?;
            let chain = s.session.refresh_chain(s.layout.chain(chunk)).await?;
            let req = ReadChunk {
                file: s.id,
                chunk,
                offset: 0,
                len: want as u32,
                chain: chain.at(),
                chunk_size: s.layout.chunk_size(),
                session: s.session.id()?,
                capabilities: s.capabilities_for(range, Mode::Read).await?,
            };
            let (_, data) =
                s.session.storage(server, req, &[]).await.map_err(|e| s.chunk_error("reading", chunk, server, e))?;
            s.fill(&mut buf[..want], &data, chunk, server)?;
            return Ok(want);
        }
    }

    /// The replication chain holding chunk `chunk`, as this client last heard of it.
    ///
    /// Errors: Unavailable, TimedOut (pfs-meta); Protocol when pfs-meta does not know it.
    pub async fn chain(&self, chunk: u64) -> Result<Arc<pfs_common::chain::Chain>> {
        self.state().session.chain(self.state().layout.chain(chunk)).await
    }

    /// Size in bytes as this client knows it: from pfs-meta at open and at every token grant,
    /// grown by our own writes.
    pub fn size(&self) -> u64 {
        self.state().size()
    }

    /// Tokens this client holds on the file (for diagnostics and tests).
    pub fn tokens(&self) -> Vec<(ByteRange, Mode)> {
        self.state().state.lock().tokens()
    }

    /// Writes `buf` at byte `offset` under a Write token. Returns `buf.len()`: a write either
    /// completes whole or fails. Small writes are cached (write-back) until fsync, close, a
    /// revoke or eviction from the cache; large ones go to the storage servers at once.
    ///
    /// Errors: Invalid, naming the path, for a write ending past [`MAX_FILE_SIZE`] (nothing is
    /// sent); Evicted (the session lost its lease), or the first failing piece's error naming
    /// the path, chunk and storage server (Unavailable, TimedOut, NoSpace, Io).
    pub async fn write_at(&self, offset: u64, buf: &[u8]) -> Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let s = self.state();
        let end = offset.checked_add(buf.len() as u64).filter(|e| *e <= MAX_FILE_SIZE).ok_or_else(|| {
            Error::Invalid(format!(
                "{}: a write of {} bytes at offset {offset} ends past the largest file size, {MAX_FILE_SIZE} bytes",
                s.path,
                buf.len()
            ))
        })?;
        let required = ByteRange::new(offset, end);
        // A strided writer asks for exactly its record and the next ones of its pattern; a
        // sequential one (or one without a pattern yet) to the end of the file.
        let (ahead, new_pattern) = {
            let mut d = self.handle.stride.lock();
            let new = d.observe(offset, buf.len() as u64);
            (d.ahead(offset, buf.len() as u64), new)
        };
        let desired = if ahead.is_some() { required } else { ByteRange::from(offset) };
        loop {
            s.ensure(Mode::Write, required, desired, ahead).await?;
            let _shared = s.lock.read().await;
            if !s.holds(required, Mode::Write) {
                continue; // revoked between the grant and the lock: ask again
            }
            s.session.id()?;
            s.write_locked(offset, buf).await?;
            break;
        }
        if new_pattern && s.session.handles_of(s.id) == 1 {
            // What we hold past this record (a token to the end of the file, from before the
            // pattern showed) covers the other writers' records: give it back so their
            // requests ahead find those free, and ask for our own records from now on. Not
            // while other handles of this client have the file open: the tokens are theirs
            // too (a mount's processes share one session), and they may be writing there.
            s.give_back(ByteRange::from(end)).await;
        }
        Ok(buf.len())
    }

    /// Tells the client what pattern the coming writes of this file follow (see [`Advice`]):
    /// with [`Advice::Strided`], every token request also asks for the next records of the
    /// pattern, from the first write on, instead of after three writes have shown it.
    /// Applies to this handle and its clones.
    pub fn advise(&self, advice: Advice) {
        self.handle.stride.lock().advise(advice);
    }

    /// Reads into `buf` from byte `offset` under a Read token. Returns the bytes read: fewer
    /// than `buf.len()` only at end of file (0 at or past it). Holes read as zeros. Sees every
    /// write any client completed before this client's token was granted.
    ///
    /// Errors: Evicted, or the first failing piece's error naming the path, chunk and server.
    pub async fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let s = self.state();
        let end = offset.saturating_add(buf.len() as u64).min(u64::MAX - 1);
        let required = ByteRange::new(offset, end);
        loop {
            s.ensure(Mode::Read, required, ByteRange::ALL, None).await?;
            let _shared = s.lock.read().await;
            if !s.holds(required, Mode::Read) {
                continue;
            }
            s.session.id()?;
            let size = self.size();
            if offset >= size {
                return Ok(0);
            }
            let n = (size - offset).min(buf.len() as u64) as usize;
            if !s.bypass(n) {
                let ahead = self.handle.read_ahead.lock().next(offset, n as u64, size);
                for record in ahead {
                    let file = s.clone();
                    tokio::spawn(async move { file.prefetch(record).await });
                }
            }
            let exact = self.handle.read_ahead.lock().pattern.pattern().is_some();
            s.read_locked(offset, &mut buf[..n], exact).await?;
            return Ok(n);
        }
    }

    /// Writes back this client's dirty bytes of the file, makes every write durable on every
    /// replica that took it, then the size durable on pfs-meta. A replica that fails is
    /// forgiven only once pfs-meta has taken it out of every chain of the file, each of which
    /// still has a serving replica (it resyncs from them). Errors name the server that failed,
    /// or an earlier write-back (during a revoke) that failed.
    pub async fn fsync(&self) -> Result<()> {
        self.state().sync(false).await
    }

    /// Sets the file size to `size` bytes under a Write token over everything from the new (or
    /// old) end on: chunks past it are cut on every replica in the write path of every chain of
    /// the file (durably; an offline replica is resynced before it serves again), then the size
    /// is recorded on pfs-meta. Growing leaves a hole (zeros).
    ///
    /// Errors: Invalid, naming the path, for a size past [`MAX_FILE_SIZE`] (nothing is sent);
    /// otherwise the failing server's error naming the path (and the storage server).
    pub async fn truncate(&self, size: u64) -> Result<()> {
        let s = self.state();
        if size > MAX_FILE_SIZE {
            return Err(Error::Invalid(format!(
                "{}: cannot truncate to {size} bytes, past the largest file size, {MAX_FILE_SIZE} bytes",
                s.path
            )));
        }
        let _excl = loop {
            let from = ByteRange::from(size.min(self.size()));
            s.ensure(Mode::Write, from, from, None).await?;
            let excl = s.lock.write().await;
            // A revoke may have landed between the grant and the lock (it waited for the
            // lock before us): then we no longer hold what the truncate needs.
            if s.holds(ByteRange::from(size.min(self.size())), Mode::Write) {
                break excl;
            }
        };
        if let Some(c) = &s.cache {
            c.lock().invalidate(s.id, size..u64::MAX, false);
        }
        // Every replica in a write path cuts its copy; one out of them (offline) is resynced
        // before it serves again.
        let chunk_size = s.layout.chunk_size();
        let mut servers = std::collections::BTreeSet::new();
        for id in &s.layout.chains {
            servers.extend(s.session.refresh_chain(*id).await?.writers());
        }
        let session = s.session.id()?;
        let capabilities = s.capabilities_for(Access::from_size(size), Mode::Write).await?;
        let capabilities = &capabilities;
        let mut pending: FuturesUnordered<_> = servers
            .iter()
            .map(|&t| async move {
                let req = TruncateFile { file: s.id, size, chunk_size, session, capabilities: capabilities.clone() };
                let call = s.session.storage(t, req, &[]);
                let r = s.bounded_if(s.layout.replicas > 1, t, call).await;
                (t, r.map_err(|e| e.on_file(format!("truncating on {t}"), &s.path)))
            })
            .collect();
        let mut failed = Vec::new();
        while let Some((t, r)) = pending.next().await {
            if let Err(e) = r {
                failed.push((t, e));
            }
        }
        drop(pending);
        for (t, e) in failed {
            if s.layout.replicas == 1 || !matches!(e.code(), ErrorCode::Unavailable | ErrorCode::TimedOut) {
                return Err(e);
            }
            if !s.left_chains(t, true).await? {
                return Err(e);
            }
        }
        s.session.meta(ns::Truncate { file: s.id, size, expected_generation: None }).await?;
        s.state.lock().truncated(size);
        Ok(())
    }

    /// Fresh attributes from pfs-meta; also raises the size this client reads against.
    pub async fn stat(&self) -> Result<Attr> {
        let attr = self.state().session.meta(ns::Stat { file: self.state().id }).await?;
        self.state().state.lock().raise_size(attr.size);
        Ok(attr)
    }

    /// Cache counters of this file in this client.
    pub fn cache_stats(&self) -> CacheStats {
        OpenTarget::cache_stats(&**self.state())
    }

    /// Flushes like [`File::fsync`]; when this is the client's last handle of the file, also
    /// drops its cached blocks and gives its tokens back. On error the data may not be durable.
    /// Closing a handle twice (through a clone) does nothing the second time.
    pub async fn close(self) -> Result<()> {
        if self.handle.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.state().close_handle().await
    }
}
