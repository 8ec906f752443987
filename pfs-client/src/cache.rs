//! The client block cache: a sans-IO, byte-exact, write-back cache of file blocks.
//!
//! A client holds byte-range tokens from the token manager. Under a write (W) token it caches
//! writes (write-back); under a read (R) token it caches reads. When a token is revoked the
//! caller takes the dirty bytes of the revoked range out of the cache ([`BlockCache::take_dirty`]),
//! writes them back, and drops the cached bytes ([`BlockCache::invalidate`]).
//!
//! Ranges are byte-exact, never rounded to blocks: two clients may write disjoint byte ranges
//! of the same block, so each cached block tracks which of its bytes are *valid* (cached) and
//! which are *dirty* (written by this client and not yet written back). Write-back hands out
//! exactly the dirty bytes — a partially written block is written back as just its dirty
//! extents, never read-modify-written as a whole block.
//!
//! The cache does no I/O. The caller does the network reads and writes around it and guards it
//! with its own lock; one cache is shared by all files of a client (key = file id + block
//! index).
//!
//! # Memory
//!
//! The cache holds at most `capacity_blocks` blocks (a hard bound). Per cached block:
//!
//! * one `block_size`-byte buffer, allocated the first time a slot is used and then reused
//!   for every later block that lands in that slot (evicted and invalidated blocks give their
//!   slot back to a free list), so a cache in steady state allocates no block buffers;
//! * an 88-byte slot header on 64-bit targets (key, buffer handle, two extent sets, LRU
//!   links);
//! * 8 bytes per valid or dirty extent on the heap (a sorted `Vec` of `(start, end)` `u32`
//!   pairs, usually one or two entries; its capacity is kept when the slot is reused);
//! * one `BTreeMap` entry in the key index (20 bytes of payload plus node overhead, roughly
//!   40 bytes amortised).
//!
//! So a block costs about `block_size + 150` bytes, e.g. ≈ 64.15 KiB for 64 KiB blocks.
//!
//! Eviction is LRU over blocks with an intrusive doubly-linked list over the slots (O(1) per
//! touch); lookups go through a `BTreeMap` ordered by (file, block), which also makes the
//! per-file range scans of [`BlockCache::take_dirty`] and [`BlockCache::invalidate`]
//! O(log n + blocks in range).

use pfs_common::FileId;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

/// Counters like the course PFS's `pfs_execstat`. All counts are in blocks (one block touched
/// by one call counts once), not bytes and not calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Blocks of a [`BlockCache::read`] whose requested bytes were all cached.
    pub read_hits: u64,
    /// Blocks of a [`BlockCache::read`] with at least one requested byte not cached.
    pub read_misses: u64,
    /// Blocks of a [`BlockCache::write`] that were already cached.
    pub write_hits: u64,
    /// Blocks evicted to make room (LRU).
    pub evictions: u64,
    /// Blocks whose dirty bytes were handed out for write-back: by eviction or by a
    /// [`BlockCache::take_dirty`] that is not `closing`.
    pub writebacks: u64,
    /// Blocks touched by a [`BlockCache::invalidate`] that is not `closing`.
    pub invalidations: u64,
    /// Blocks whose dirty bytes were handed out by a `closing` [`BlockCache::take_dirty`].
    pub close_writebacks: u64,
    /// Blocks touched by a `closing` [`BlockCache::invalidate`].
    pub close_evictions: u64,
}

/// Dirty bytes to write back: `data` belongs at byte offset `offset` of `file`.
///
/// The bytes are copied out of the cache. Runs returned by one call are in (file, offset)
/// order within each source (evictions come in eviction order); adjacent dirty extents are
/// coalesced into one run, also across block boundaries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    /// The file the bytes belong to.
    pub file: FileId,
    /// Byte offset in the file of `data[0]`.
    pub offset: u64,
    /// The dirty bytes (never empty).
    pub data: Vec<u8>,
}

impl Run {
    /// The file byte range `[offset, offset + data.len())` the run covers.
    pub fn range(&self) -> Range<u64> {
        self.offset..self.offset + self.data.len() as u64
    }
}

/// A set of byte ranges within one block: sorted, disjoint, non-adjacent `[start, end)` pairs
/// (byte offsets within the block).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Extents(Vec<(u32, u32)>);

impl Extents {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn clear(&mut self) {
        self.0.clear();
    }

    /// Number of bytes in the set.
    fn bytes(&self) -> u64 {
        self.0.iter().map(|&(a, b)| u64::from(b - a)).sum()
    }

    /// Adds `[s, e)`, merging with overlapping and adjacent extents.
    fn insert(&mut self, s: u32, e: u32) {
        if s >= e {
            return;
        }
        let v = &mut self.0;
        // First extent that ends at or after `s` (touching counts) ...
        let i = v.partition_point(|&(_, b)| b < s);
        // ... and first extent that starts after `e`: [i, j) overlap or touch [s, e).
        let j = v.partition_point(|&(a, _)| a <= e);
        if i == j {
            v.insert(i, (s, e));
            return;
        }
        v[i] = (s.min(v[i].0), e.max(v[j - 1].1));
        v.drain(i + 1..j);
    }

    /// Removes `[s, e)`, splitting an extent that contains it.
    fn remove(&mut self, s: u32, e: u32) {
        if s >= e {
            return;
        }
        let v = &mut self.0;
        // [i, j) are the extents that overlap [s, e).
        let i = v.partition_point(|&(_, b)| b <= s);
        let j = v.partition_point(|&(a, _)| a < e);
        if i >= j {
            return;
        }
        let left = (v[i].0 < s).then_some((v[i].0, s));
        let right = (v[j - 1].1 > e).then_some((e, v[j - 1].1));
        v.splice(i..j, left.into_iter().chain(right));
    }

    /// Calls `f(a, b)` for each part `[a, b)` of the set inside `[s, e)`, in order.
    fn for_each_overlap(&self, s: u32, e: u32, mut f: impl FnMut(u32, u32)) {
        let i = self.0.partition_point(|&(_, b)| b <= s);
        for &(a, b) in &self.0[i..] {
            if a >= e {
                break;
            }
            f(a.max(s), b.min(e));
        }
    }

    /// Calls `f(a, b)` for each part `[a, b)` of `[s, e)` NOT in the set, in order.
    fn for_each_gap(&self, s: u32, e: u32, mut f: impl FnMut(u32, u32)) {
        let mut pos = s;
        self.for_each_overlap(s, e, |a, b| {
            if a > pos {
                f(pos, a);
            }
            pos = b;
        });
        if pos < e {
            f(pos, e);
        }
    }
}

/// Marks an empty LRU link.
const NIL: u32 = u32::MAX;

/// One cached block (or a free slot waiting for reuse).
struct Slot {
    /// (file, block index) of the block held.
    key: (FileId, u64),
    /// `block_size` bytes; only the `valid` bytes mean anything.
    buf: Box<[u8]>,
    /// Bytes of the block that are cached.
    valid: Extents,
    /// Bytes written by this client and not yet handed out for write-back; always ⊆ `valid`.
    dirty: Extents,
    /// Neighbour towards the most recently used end of the LRU list.
    prev: u32,
    /// Neighbour towards the least recently used end of the LRU list.
    next: u32,
}

/// One block's share of a byte range: block index, `[s, e)` within the block (bytes), and the
/// position of byte `s` within the caller's buffer.
#[derive(Clone, Copy, Debug)]
struct BlockPart {
    block: u64,
    s: u32,
    e: u32,
    pos: usize,
}

impl BlockPart {
    fn len(&self) -> usize {
        (self.e - self.s) as usize
    }
}

/// Cuts the byte range `[offset, offset + len)` into per-block pieces.
fn pieces(offset: u64, len: usize, shift: u32) -> impl Iterator<Item = BlockPart> {
    let end = offset.checked_add(len as u64).expect("pfs cache: byte range overflows u64");
    let bs = 1u64 << shift;
    let mut pos = offset;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let block = pos >> shift;
        let base = block << shift;
        let s = pos - base;
        let e = (end - base).min(bs);
        let piece = BlockPart { block, s: s as u32, e: e as u32, pos: (pos - offset) as usize };
        pos = base + e;
        Some(piece)
    })
}

/// `[s, e)` within block `block` of the file byte range `range`; requires that the block
/// overlaps the range.
fn clip(block: u64, range: &Range<u64>, shift: u32) -> (u32, u32) {
    let base = block << shift;
    let bs = 1u64 << shift;
    let s = range.start.saturating_sub(base).min(bs);
    let e = (range.end - base).min(bs);
    (s as u32, e as u32)
}

/// Appends a byte range, merging it into the last one when adjacent.
fn push_range(ranges: &mut Vec<Range<u64>>, r: Range<u64>) {
    match ranges.last_mut() {
        Some(last) if last.end == r.start => last.end = r.end,
        _ => ranges.push(r),
    }
}

/// Appends a run of dirty bytes, merging it into the last run when adjacent in the same file.
fn push_run(runs: &mut Vec<Run>, file: FileId, offset: u64, bytes: &[u8]) {
    match runs.last_mut() {
        Some(last) if last.file == file && last.offset + last.data.len() as u64 == offset => {
            last.data.extend_from_slice(bytes)
        }
        _ => runs.push(Run { file, offset, data: bytes.to_vec() }),
    }
}

/// The client block cache: at most `capacity_blocks` blocks of `block_size` bytes, keyed by
/// (file, block index), with byte-exact valid and dirty extents per block and LRU eviction.
///
/// Sans-IO: methods return what the caller must fetch (byte ranges) or write back ([`Run`]s).
/// Not synchronised; the caller wraps it in its lock.
pub struct BlockCache {
    /// Block size in bytes (a power of two ≥ 512).
    block_size: usize,
    /// log2(block_size).
    shift: u32,
    /// Maximum number of blocks held.
    capacity: usize,
    /// (file, block index) → slot.
    index: BTreeMap<(FileId, u64), u32>,
    /// Slots ever created (≤ capacity); in use or on `free`.
    slots: Vec<Slot>,
    /// Slots not holding a block; their buffers are reused.
    free: Vec<u32>,
    /// Most recently used slot.
    head: u32,
    /// Least recently used slot (next victim).
    tail: u32,
    stats: CacheStats,
    /// Reused scratch list of slots for `invalidate`.
    scratch: Vec<u32>,
}

impl fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockCache")
            .field("block_size", &self.block_size)
            .field("capacity_blocks", &self.capacity)
            .field("len_blocks", &self.index.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl BlockCache {
    /// A cache of at most `capacity_blocks` blocks of `block_size` bytes each.
    ///
    /// # Panics
    /// If `block_size` is not a power of two in 512 B ..= 2 GiB, or `capacity_blocks` is 0 or
    /// does not fit in `u32`.
    pub fn new(block_size: usize, capacity_blocks: usize) -> Self {
        assert!(
            block_size.is_power_of_two() && (512..=1 << 31).contains(&block_size),
            "pfs cache: block size {block_size} is not a power of two in 512..=2^31 bytes"
        );
        assert!(
            capacity_blocks >= 1 && capacity_blocks < NIL as usize,
            "pfs cache: capacity {capacity_blocks} blocks out of range"
        );
        BlockCache {
            block_size,
            shift: block_size.trailing_zeros(),
            capacity: capacity_blocks,
            index: BTreeMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            stats: CacheStats::default(),
            scratch: Vec::new(),
        }
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Maximum number of blocks held.
    pub fn capacity_blocks(&self) -> usize {
        self.capacity
    }

    /// Copies the cached bytes of file byte range `[offset, offset + buf.len())` into `buf`
    /// (bytes of `buf` that are not cached are left untouched).
    ///
    /// Returns the byte ranges (file offsets, `[start, end)`) NOT in the cache that the caller
    /// must fetch: sorted, disjoint, adjacent ranges merged (also across blocks). Together
    /// with the cached bytes they tile the request exactly. Counts one read hit or miss per
    /// block touched and makes cached blocks most recently used.
    pub fn read(&mut self, file: FileId, offset: u64, buf: &mut [u8]) -> Vec<Range<u64>> {
        let mut missing = Vec::new();
        for p in pieces(offset, buf.len(), self.shift) {
            let base = p.block << self.shift;
            let Some(&i) = self.index.get(&(file, p.block)) else {
                self.stats.read_misses += 1;
                push_range(&mut missing, base + u64::from(p.s)..base + u64::from(p.e));
                continue;
            };
            self.touch(i);
            let slot = &self.slots[i as usize];
            let out = &mut buf[p.pos..p.pos + p.len()];
            slot.valid.for_each_overlap(p.s, p.e, |a, b| {
                out[(a - p.s) as usize..(b - p.s) as usize].copy_from_slice(&slot.buf[a as usize..b as usize]);
            });
            let mut gap = false;
            slot.valid.for_each_gap(p.s, p.e, |a, b| {
                gap = true;
                push_range(&mut missing, base + u64::from(a)..base + u64::from(b));
            });
            if gap {
                self.stats.read_misses += 1;
            } else {
                self.stats.read_hits += 1;
            }
        }
        missing
    }

    /// Inserts clean bytes fetched from storage at file byte offset `offset` (typically whole
    /// blocks, clipped to the file size). Dirty bytes in the range are kept (they are newer).
    ///
    /// Blocks touched become most recently used. Making room may evict other blocks (never
    /// one of this range); the dirty runs of evicted blocks are returned and must be written
    /// back by the caller. If the range spans more blocks than the capacity, only its last
    /// `capacity_blocks` blocks are filled.
    pub fn fill(&mut self, file: FileId, offset: u64, data: &[u8]) -> Vec<Run> {
        let mut runs = Vec::new();
        // Only the last `capacity` blocks are kept; the rest would be evicted right away.
        let skip = self.overflow(offset, data.len());
        let (offset, data) = (offset + skip as u64, &data[skip..]);
        self.protect(file, offset, data.len());
        for p in pieces(offset, data.len(), self.shift) {
            let (i, _) = self.get_or_insert(file, p.block, &mut runs);
            let Slot { buf, valid, dirty, .. } = &mut self.slots[i as usize];
            let src = &data[p.pos..p.pos + p.len()];
            dirty.for_each_gap(p.s, p.e, |a, b| {
                buf[a as usize..b as usize].copy_from_slice(&src[(a - p.s) as usize..(b - p.s) as usize]);
            });
            valid.insert(p.s, p.e);
        }
        runs
    }

    /// Write-back caching: stores `data` at file byte offset `offset` as dirty (and valid).
    ///
    /// Counts a write hit per block that was already cached; blocks touched become most
    /// recently used. Making room may evict other blocks (LRU, never one of this range);
    /// their dirty runs are returned and must be written back by the caller.
    ///
    /// If the range spans more blocks than the capacity, only its last `capacity_blocks`
    /// blocks are cached: the bytes before them are returned as a run straight away
    /// (write-through, counted as one write-back per block) and dropped from the cache.
    ///
    /// All runs returned by one call cover disjoint bytes, so their order does not matter.
    pub fn write(&mut self, file: FileId, offset: u64, data: &[u8]) -> Vec<Run> {
        let mut runs = Vec::new();
        // A write spanning more blocks than the capacity: its first bytes go straight back
        // to the caller (write-through) and only the last `capacity` blocks are cached.
        let skip = self.overflow(offset, data.len());
        if skip > 0 {
            // Cached bytes there are stale now; drop them (dirty ones are overwritten).
            self.discard(file, offset..offset + skip as u64);
            let first = offset >> self.shift;
            let last = (offset + skip as u64 - 1) >> self.shift;
            self.stats.writebacks += last - first + 1;
            push_run(&mut runs, file, offset, &data[..skip]);
        }
        let (offset, data) = (offset + skip as u64, &data[skip..]);
        self.protect(file, offset, data.len());
        for p in pieces(offset, data.len(), self.shift) {
            let (i, existed) = self.get_or_insert(file, p.block, &mut runs);
            if existed {
                self.stats.write_hits += 1;
            }
            let slot = &mut self.slots[i as usize];
            slot.buf[p.s as usize..p.e as usize].copy_from_slice(&data[p.pos..p.pos + p.len()]);
            slot.valid.insert(p.s, p.e);
            slot.dirty.insert(p.s, p.e);
        }
        runs
    }

    /// The dirty bytes of `file` within the file byte range `range` (`range.end == u64::MAX`
    /// reaches to the end of any file), copied out and marked clean; they stay cached.
    ///
    /// The caller writes the runs back; if that fails it calls [`BlockCache::write`] with the
    /// data to re-dirty it. Counts one write-back (or close write-back when `closing`) per
    /// block that had dirty bytes in the range. Does not change the LRU order.
    pub fn take_dirty(&mut self, file: FileId, range: Range<u64>, closing: bool) -> Vec<Run> {
        let mut runs = Vec::new();
        if range.start >= range.end {
            return runs;
        }
        let first = range.start >> self.shift;
        let last = (range.end - 1) >> self.shift;
        for (&(_, block), &i) in self.index.range((file, first)..=(file, last)) {
            let (s, e) = clip(block, &range, self.shift);
            let base = block << self.shift;
            let slot = &mut self.slots[i as usize];
            let mut any = false;
            slot.dirty.for_each_overlap(s, e, |a, b| {
                any = true;
                push_run(&mut runs, file, base + u64::from(a), &slot.buf[a as usize..b as usize]);
            });
            if any {
                slot.dirty.remove(s, e);
                if closing {
                    self.stats.close_writebacks += 1;
                } else {
                    self.stats.writebacks += 1;
                }
            }
        }
        runs
    }

    /// Drops the cached bytes of `file` within the file byte range `range` (`range.end ==
    /// u64::MAX` reaches to the end of any file). Call it after [`BlockCache::take_dirty`] for
    /// the same range: dirty bytes in the range are dropped too (lost), which is what
    /// truncate or unlink want.
    ///
    /// Partially covered blocks keep their bytes outside the range; blocks left with no bytes
    /// are freed. Counts one invalidation (or close eviction when `closing`) per cached block
    /// touched.
    pub fn invalidate(&mut self, file: FileId, range: Range<u64>, closing: bool) {
        let blocks = self.discard(file, range);
        if closing {
            self.stats.close_evictions += blocks;
        } else {
            self.stats.invalidations += blocks;
        }
    }

    /// Number of dirty bytes of `file` in the cache.
    pub fn dirty_bytes(&self, file: FileId) -> u64 {
        self.index.range((file, 0)..=(file, u64::MAX)).map(|(_, &i)| self.slots[i as usize].dirty.bytes()).sum()
    }

    /// Number of cached (valid) bytes of `file`.
    pub fn cached_bytes(&self, file: FileId) -> u64 {
        self.index.range((file, 0)..=(file, u64::MAX)).map(|(_, &i)| self.slots[i as usize].valid.bytes()).sum()
    }

    /// The counters so far.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Number of blocks held (≤ the capacity).
    pub fn len_blocks(&self) -> usize {
        self.index.len()
    }

    /// Removes the bytes of `file` in `range` (valid and dirty) from the cache, freeing
    /// blocks left empty. Returns the number of cached blocks touched.
    fn discard(&mut self, file: FileId, range: Range<u64>) -> u64 {
        if range.start >= range.end {
            return 0;
        }
        let first = range.start >> self.shift;
        let last = (range.end - 1) >> self.shift;
        let mut hit = std::mem::take(&mut self.scratch);
        hit.clear();
        hit.extend(self.index.range((file, first)..=(file, last)).map(|(_, &i)| i));
        for &i in &hit {
            let slot = &mut self.slots[i as usize];
            let (s, e) = clip(slot.key.1, &range, self.shift);
            slot.valid.remove(s, e);
            slot.dirty.remove(s, e);
            if slot.valid.is_empty() {
                self.release(i);
            }
        }
        let n = hit.len() as u64;
        self.scratch = hit;
        n
    }

    /// How many leading bytes of `[offset, offset + len)` fall in blocks before the last
    /// `capacity` blocks of the range (0 when the range spans at most `capacity` blocks).
    fn overflow(&self, offset: u64, len: usize) -> usize {
        if len == 0 {
            return 0;
        }
        let first = offset >> self.shift;
        let last = (offset + len as u64 - 1) >> self.shift;
        if last - first < self.capacity as u64 {
            return 0;
        }
        let keep = last - self.capacity as u64 + 1;
        ((keep << self.shift) - offset) as usize
    }

    /// Makes the cached blocks of `[offset, offset + len)` the most recently used, so that
    /// making room for the range's other blocks never evicts one of them (the range spans at
    /// most `capacity` blocks). Without this, a fill could evict a dirty block of its own
    /// range and then refill it with the stale bytes the caller fetched before the write-back.
    fn protect(&mut self, file: FileId, offset: u64, len: usize) {
        if len == 0 {
            return;
        }
        let first = offset >> self.shift;
        let last = (offset + len as u64 - 1) >> self.shift;
        let mut hit = std::mem::take(&mut self.scratch);
        hit.clear();
        hit.extend(self.index.range((file, first)..=(file, last)).map(|(_, &i)| i));
        for &i in &hit {
            self.touch(i);
        }
        self.scratch = hit;
    }

    /// The slot holding (file, block), made most recently used; creates it (evicting the
    /// least recently used block if the cache is full, its dirty runs go to `runs`) when not
    /// cached. Returns the slot and whether the block was already cached.
    fn get_or_insert(&mut self, file: FileId, block: u64, runs: &mut Vec<Run>) -> (u32, bool) {
        let key = (file, block);
        if let Some(&i) = self.index.get(&key) {
            self.touch(i);
            return (i, true);
        }
        if self.index.len() >= self.capacity {
            self.evict_lru(runs);
        }
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize].key = key;
                i
            }
            None => {
                self.slots.push(Slot {
                    key,
                    buf: vec![0; self.block_size].into_boxed_slice(),
                    valid: Extents::default(),
                    dirty: Extents::default(),
                    prev: NIL,
                    next: NIL,
                });
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(key, i);
        self.push_front(i);
        (i, false)
    }

    /// Evicts the least recently used block, appending its dirty runs to `runs`.
    fn evict_lru(&mut self, runs: &mut Vec<Run>) {
        let i = self.tail;
        debug_assert_ne!(i, NIL, "evicting from an empty cache");
        let slot = &self.slots[i as usize];
        let (file, block) = slot.key;
        let base = block << self.shift;
        if !slot.dirty.is_empty() {
            for &(a, b) in &slot.dirty.0 {
                push_run(runs, file, base + u64::from(a), &slot.buf[a as usize..b as usize]);
            }
            self.stats.writebacks += 1;
        }
        self.stats.evictions += 1;
        self.release(i);
    }

    /// Removes slot `i`'s block from the cache and puts the slot on the free list.
    fn release(&mut self, i: u32) {
        let key = self.slots[i as usize].key;
        self.index.remove(&key);
        self.unlink(i);
        let slot = &mut self.slots[i as usize];
        slot.valid.clear();
        slot.dirty.clear();
        self.free.push(i);
    }

    /// Makes slot `i` the most recently used.
    fn touch(&mut self, i: u32) {
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let s = &self.slots[i as usize];
            (s.prev, s.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.slots[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.slots[next as usize].prev = prev;
        }
        let s = &mut self.slots[i as usize];
        s.prev = NIL;
        s.next = NIL;
    }

    fn push_front(&mut self, i: u32) {
        let old = self.head;
        {
            let s = &mut self.slots[i as usize];
            s.prev = NIL;
            s.next = old;
        }
        if old == NIL {
            self.tail = i;
        } else {
            self.slots[old as usize].prev = i;
        }
        self.head = i;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const F: FileId = FileId(7);
    const G: FileId = FileId(8);
    const BS: usize = 512;

    fn ext(v: &[(u32, u32)]) -> Extents {
        Extents(v.to_vec())
    }

    #[test]
    fn extents_insert_merges_overlapping_and_adjacent() {
        let mut e = Extents::default();
        e.insert(10, 20);
        e.insert(30, 40);
        assert_eq!(e, ext(&[(10, 20), (30, 40)]));
        e.insert(20, 25); // adjacent on the left
        assert_eq!(e, ext(&[(10, 25), (30, 40)]));
        e.insert(5, 5); // empty
        assert_eq!(e, ext(&[(10, 25), (30, 40)]));
        e.insert(0, 2);
        e.insert(50, 60);
        assert_eq!(e, ext(&[(0, 2), (10, 25), (30, 40), (50, 60)]));
        e.insert(24, 50); // bridges three
        assert_eq!(e, ext(&[(0, 2), (10, 60)]));
        e.insert(0, 100);
        assert_eq!(e, ext(&[(0, 100)]));
        assert_eq!(e.bytes(), 100);
    }

    #[test]
    fn extents_remove_splits_and_trims() {
        let mut e = ext(&[(0, 100)]);
        e.remove(40, 60);
        assert_eq!(e, ext(&[(0, 40), (60, 100)]));
        e.remove(30, 70);
        assert_eq!(e, ext(&[(0, 30), (70, 100)]));
        e.remove(30, 70); // nothing there
        assert_eq!(e, ext(&[(0, 30), (70, 100)]));
        e.remove(0, 10);
        assert_eq!(e, ext(&[(10, 30), (70, 100)]));
        e.remove(0, 1000);
        assert!(e.is_empty());
    }

    #[test]
    fn extents_overlap_and_gaps() {
        let e = ext(&[(10, 20), (30, 40)]);
        let mut got = vec![];
        e.for_each_overlap(15, 35, |a, b| got.push((a, b)));
        assert_eq!(got, vec![(15, 20), (30, 35)]);
        let mut gaps = vec![];
        e.for_each_gap(0, 50, |a, b| gaps.push((a, b)));
        assert_eq!(gaps, vec![(0, 10), (20, 30), (40, 50)]);
        gaps.clear();
        e.for_each_gap(12, 18, |a, b| gaps.push((a, b)));
        assert!(gaps.is_empty());
    }

    proptest! {
        /// Extents behave like a set of bytes.
        #[test]
        fn extents_match_bitset(ops in proptest::collection::vec((any::<bool>(), 0u32..64, 0u32..64), 0..40)) {
            let mut e = Extents::default();
            let mut model = [false; 64];
            for (ins, a, b) in ops {
                let (s, t) = (a.min(b), a.max(b));
                if ins { e.insert(s, t) } else { e.remove(s, t) }
                for m in &mut model[s as usize..t as usize] { *m = ins; }
                // Sorted, disjoint, non-adjacent, non-empty.
                for w in e.0.windows(2) { prop_assert!(w[0].1 < w[1].0); }
                for &(a, b) in &e.0 { prop_assert!(a < b); }
                let mut bits = [false; 64];
                for &(a, b) in &e.0 { for x in &mut bits[a as usize..b as usize] { *x = true; } }
                prop_assert_eq!(bits, model);
            }
        }
    }

    #[test]
    fn slot_header_is_small() {
        assert!(std::mem::size_of::<Slot>() <= 96, "{}", std::mem::size_of::<Slot>());
    }

    #[test]
    #[should_panic]
    fn rejects_odd_block_size() {
        BlockCache::new(1000, 4);
    }

    #[test]
    #[should_panic]
    fn rejects_zero_capacity() {
        BlockCache::new(512, 0);
    }

    #[test]
    fn read_of_empty_cache_misses_everything() {
        let mut c = BlockCache::new(BS, 4);
        let mut buf = vec![0u8; 1000];
        let missing = c.read(F, 100, &mut buf);
        assert_eq!(missing, vec![100..1100]); // merged across the 3 blocks
        assert_eq!(c.stats().read_misses, 3);
        assert_eq!(c.stats().read_hits, 0);
        assert_eq!(c.len_blocks(), 0); // reads do not allocate blocks
        assert!(c.read(F, 5, &mut []).is_empty());
    }

    #[test]
    fn read_after_partial_fill_reports_exactly_the_missing_ranges() {
        let mut c = BlockCache::new(BS, 8);
        let data: Vec<u8> = (0..200u32).map(|x| x as u8).collect();
        assert!(c.fill(F, 100, &data).is_empty()); // bytes 100..300 of block 0
        assert!(c.fill(F, 600, &data[..50]).is_empty()); // bytes 600..650 of block 1
        let mut buf = vec![0xEEu8; 1024];
        let missing = c.read(F, 0, &mut buf);
        assert_eq!(missing, vec![0..100, 300..600, 650..1024]);
        assert_eq!(&buf[100..300], &data[..]);
        assert_eq!(&buf[600..650], &data[..50]);
        assert!(buf[..100].iter().all(|&b| b == 0xEE)); // untouched
        assert_eq!(c.stats().read_misses, 2);

        // Entirely within the filled part: a hit, nothing missing.
        let mut small = [0u8; 50];
        assert!(c.read(F, 150, &mut small).is_empty());
        assert_eq!(&small[..], &data[50..100]);
        assert_eq!(c.stats().read_hits, 1);
        // Another file is not confused with F.
        assert_eq!(c.read(G, 150, &mut small), vec![150..200]);
    }

    #[test]
    fn partial_block_writes_write_back_exactly_the_written_bytes() {
        let mut c = BlockCache::new(BS, 8);
        // A clean fill of the whole block first: the neighbours are valid but not dirty.
        c.fill(F, 0, &[1u8; BS]);
        c.write(F, 10, &[2u8; 5]);
        c.write(F, 100, &[3u8; 7]);
        c.write(F, 15, &[4u8; 3]); // adjacent to the first write: coalesced
        assert_eq!(c.dirty_bytes(F), 15);
        assert_eq!(c.stats().write_hits, 3);
        let runs = c.take_dirty(F, 0..u64::MAX, false);
        assert_eq!(
            runs,
            vec![
                Run { file: F, offset: 10, data: vec![2, 2, 2, 2, 2, 4, 4, 4] },
                Run { file: F, offset: 100, data: vec![3; 7] },
            ]
        );
        assert_eq!(c.dirty_bytes(F), 0);
        assert_eq!(c.stats().writebacks, 1); // one block
                                             // Clean now; the bytes stay cached.
        assert!(c.take_dirty(F, 0..u64::MAX, false).is_empty());
        let mut buf = [0u8; 20];
        assert!(c.read(F, 0, &mut buf).is_empty());
        assert_eq!(&buf[10..18], &[2, 2, 2, 2, 2, 4, 4, 4]);
    }

    #[test]
    fn dirty_runs_coalesce_across_blocks_but_not_across_gaps_or_files() {
        let mut c = BlockCache::new(BS, 8);
        c.write(F, 500, &[9u8; 30]); // crosses 512
        c.write(F, 1024 + 3, &[8u8; 2]);
        c.write(G, 530, &[7u8; 1]);
        let runs = c.take_dirty(F, 0..u64::MAX, true);
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].range(), 500..530);
        assert_eq!(runs[1].range(), 1027..1029);
        assert_eq!(c.stats().close_writebacks, 3);
        assert_eq!(c.stats().writebacks, 0);
        assert_eq!(c.dirty_bytes(G), 1);
    }

    #[test]
    fn take_dirty_clips_to_the_range() {
        let mut c = BlockCache::new(BS, 8);
        c.write(F, 0, &(0..=255u8).cycle().take(2000).collect::<Vec<_>>());
        let runs = c.take_dirty(F, 300..700, false);
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].range(), 300..700);
        assert_eq!(runs[0].data[0], (300 % 256) as u8);
        assert_eq!(c.dirty_bytes(F), 2000 - 400);
        assert!(c.take_dirty(F, 300..700, false).is_empty());
        assert!(c.take_dirty(F, 5..5, false).is_empty());
        let rest = c.take_dirty(F, 0..u64::MAX, false);
        assert_eq!(rest.iter().map(Run::range).collect::<Vec<_>>(), vec![0..300, 700..2000]);
    }

    #[test]
    fn fill_does_not_overwrite_dirty_bytes() {
        let mut c = BlockCache::new(BS, 8);
        c.write(F, 100, &[5u8; 10]);
        // Stale data from storage for the whole block.
        c.fill(F, 0, &[1u8; BS]);
        let mut buf = vec![0u8; BS];
        assert!(c.read(F, 0, &mut buf).is_empty());
        assert!(buf[..100].iter().all(|&b| b == 1));
        assert!(buf[100..110].iter().all(|&b| b == 5));
        assert!(buf[110..].iter().all(|&b| b == 1));
        // Still exactly the written bytes are dirty.
        let runs = c.take_dirty(F, 0..u64::MAX, false);
        assert_eq!(runs, vec![Run { file: F, offset: 100, data: vec![5; 10] }]);
        // Once clean, a fill does overwrite (the caller fetched newer data).
        c.fill(F, 100, &[6u8; 10]);
        let mut b = [0u8; 10];
        c.read(F, 100, &mut b);
        assert_eq!(b, [6u8; 10]);
    }

    #[test]
    fn invalidate_keeps_bytes_outside_the_range() {
        let mut c = BlockCache::new(BS, 8);
        c.fill(F, 0, &[1u8; 1536]);
        c.invalidate(F, 200..800, false);
        assert_eq!(c.stats().invalidations, 2);
        assert_eq!(c.len_blocks(), 3);
        let mut buf = vec![0u8; 1536];
        assert_eq!(c.read(F, 0, &mut buf), vec![200..800]);
        assert!(buf[..200].iter().all(|&b| b == 1));
        assert!(buf[800..].iter().all(|&b| b == 1));
        // A whole block invalidated is freed; the count is per block touched.
        c.invalidate(F, 1024..u64::MAX, true);
        assert_eq!(c.len_blocks(), 2);
        assert_eq!(c.stats().close_evictions, 1);
        // Invalidating uncached ranges/files counts nothing.
        c.invalidate(G, 0..u64::MAX, false);
        c.invalidate(F, 5000..6000, false);
        assert_eq!(c.stats().invalidations, 2);
        assert_eq!(c.cached_bytes(F), 1024 - 600);
    }

    #[test]
    fn invalidate_drops_dirty_bytes_in_range_only() {
        let mut c = BlockCache::new(BS, 8);
        c.write(F, 0, &[3u8; 100]);
        c.invalidate(F, 50..60, false);
        assert_eq!(c.dirty_bytes(F), 90);
        let runs = c.take_dirty(F, 0..u64::MAX, false);
        assert_eq!(runs.iter().map(Run::range).collect::<Vec<_>>(), vec![0..50, 60..100]);
    }

    #[test]
    fn eviction_is_lru_returns_dirty_data_and_respects_capacity() {
        let mut c = BlockCache::new(BS, 3);
        c.write(F, 10, &[1u8; 4]); // block 0 dirty
        c.fill(F, 512, &[2u8; BS]); // block 1 clean
        c.fill(G, 0, &[3u8; BS]); // G block 0 clean
        assert_eq!(c.len_blocks(), 3);
        // Touch F block 0 so F block 1 is the LRU.
        let mut b = [0u8; 4];
        assert!(c.read(F, 10, &mut b).is_empty());
        assert!(c.fill(F, 1024, &[4u8; BS]).is_empty()); // evicts clean F block 1
        assert_eq!(c.len_blocks(), 3);
        assert_eq!(c.stats().evictions, 1);
        assert_eq!(c.stats().writebacks, 0);
        assert_eq!(c.read(F, 512, &mut b), vec![512..516]);
        // Now LRU order (old → new): G0, F0, F2. Two more blocks evict G0 and then F0 (dirty).
        assert!(c.write(F, 2048, &[5u8; 1]).is_empty());
        let runs = c.write(F, 2560, &[6u8; 1]);
        assert_eq!(runs, vec![Run { file: F, offset: 10, data: vec![1; 4] }]);
        assert_eq!(c.len_blocks(), 3);
        assert_eq!(c.stats().evictions, 3);
        assert_eq!(c.stats().writebacks, 1);
        assert_eq!(c.dirty_bytes(F), 2);
        // Buffers were reused: no more slots than the capacity.
        assert_eq!(c.slots.len(), 3);
    }

    #[test]
    fn a_write_larger_than_the_cache_writes_its_head_through() {
        let mut c = BlockCache::new(BS, 1);
        c.write(F, 0, &[7u8; 50]); // dirty block 0, partly overwritten below
        let data: Vec<u8> = (0..1500u32).map(|x| (x % 251) as u8).collect();
        let runs = c.write(F, 20, &data); // blocks 0..=2; only block 2 is cached
        assert_eq!(c.len_blocks(), 1);
        // The head of the write comes straight back; block 0's own dirty bytes (0..20) were
        // written back by the eviction. All disjoint.
        let mut got: Vec<_> = runs.iter().map(Run::range).collect();
        got.sort_by_key(|r| r.start);
        assert_eq!(got, vec![0..20, 20..1024]);
        let head = runs.iter().find(|r| r.offset == 20).unwrap();
        assert_eq!(&head.data[..], &data[..1004]);
        let rest = c.take_dirty(F, 0..u64::MAX, false);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].range(), 1024..1520);
        assert_eq!(&rest[0].data[..], &data[1004..]);
    }

    #[test]
    fn a_fill_keeps_dirty_blocks_of_its_range_and_its_tail_when_too_large() {
        let mut c = BlockCache::new(BS, 2);
        c.write(F, 512, &[9u8; 10]); // dirty block 1
        c.fill(G, 0, &[1u8; 10]); // G block 0 is now the MRU, F block 1 the LRU
                                  // Filling F blocks 0 and 1 must evict G block 0, not the dirty F block 1 (which
                                  // would then be refilled with the stale fetched bytes).
        let runs = c.fill(F, 0, &[0u8; 1024]);
        assert!(runs.is_empty());
        let mut b = [0u8; 10];
        assert!(c.read(F, 512, &mut b).is_empty());
        assert_eq!(b, [9u8; 10]);
        // Three blocks into a cache of two: only the last two are filled.
        let mut c = BlockCache::new(BS, 2);
        c.fill(F, 0, &[1u8; 1536]);
        let mut buf = [0u8; 1536];
        assert_eq!(c.read(F, 0, &mut buf), vec![0..512]);
    }

    #[test]
    fn write_hits_and_read_counters() {
        let mut c = BlockCache::new(BS, 4);
        c.write(F, 0, &[1u8; 600]); // 2 new blocks
        assert_eq!(c.stats().write_hits, 0);
        c.write(F, 500, &[1u8; 100]); // both cached
        assert_eq!(c.stats().write_hits, 2);
        let mut buf = [0u8; 700];
        assert_eq!(c.read(F, 0, &mut buf), vec![600..700]);
        assert_eq!(c.stats(), CacheStats { read_hits: 1, read_misses: 1, write_hits: 2, ..Default::default() });
    }

    #[test]
    fn re_dirtying_after_a_failed_write_back() {
        let mut c = BlockCache::new(BS, 4);
        c.write(F, 5, b"hello");
        let runs = c.take_dirty(F, 0..u64::MAX, false);
        assert_eq!(c.dirty_bytes(F), 0);
        for r in &runs {
            c.write(r.file, r.offset, &r.data);
        }
        assert_eq!(c.dirty_bytes(F), 5);
        assert_eq!(c.take_dirty(F, 0..u64::MAX, false), runs);
    }

    #[test]
    fn large_offsets_do_not_overflow() {
        let mut c = BlockCache::new(BS, 2);
        let off = u64::MAX - 100;
        c.write(F, off, &[1u8; 100]);
        assert_eq!(c.dirty_bytes(F), 100);
        let runs = c.take_dirty(F, off..u64::MAX, false);
        assert_eq!(runs[0].range(), off..u64::MAX);
        c.invalidate(F, 0..u64::MAX, false);
        assert_eq!(c.len_blocks(), 0);
    }

    // ---- Model test -------------------------------------------------------------------------

    /// Bytes of each modelled file.
    const SPAN: usize = 8192;

    #[derive(Clone, Debug)]
    enum Op {
        Write {
            f: usize,
            off: u64,
            len: usize,
            seed: u8,
        },
        /// Fetch `[off, off + len)` from storage (holes read as 0) and fill it.
        Fill {
            f: usize,
            off: u64,
            len: usize,
        },
        Read {
            f: usize,
            off: u64,
            len: usize,
        },
        TakeDirty {
            f: usize,
            start: u64,
            end: u64,
            closing: bool,
        },
        /// take_dirty + invalidate of the same range, as on a token revoke.
        Revoke {
            f: usize,
            start: u64,
            end: u64,
            closing: bool,
        },
        /// Another client gets the range (our token is revoked) and writes it to storage.
        Foreign {
            f: usize,
            off: u64,
            len: usize,
            seed: u8,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        let f = 0usize..2;
        let off = 0u64..4096;
        let len = 0usize..1300;
        let end = prop_oneof![3 => 0u64..5600, 1 => Just(u64::MAX)];
        prop_oneof![
            4 => (f.clone(), off.clone(), len.clone(), any::<u8>())
                .prop_map(|(f, off, len, seed)| Op::Write { f, off, len, seed }),
            3 => (f.clone(), off.clone(), len.clone()).prop_map(|(f, off, len)| Op::Fill { f, off, len }),
            4 => (f.clone(), off.clone(), len).prop_map(|(f, off, len)| Op::Read { f, off, len }),
            1 => (f.clone(), off.clone(), end.clone(), any::<bool>())
                .prop_map(|(f, start, end, closing)| Op::TakeDirty { f, start, end, closing }),
            1 => (f.clone(), off.clone(), end, any::<bool>())
                .prop_map(|(f, start, end, closing)| Op::Revoke { f, start, end, closing }),
            1 => (f, off, 0usize..700, any::<u8>())
                .prop_map(|(f, off, len, seed)| Op::Foreign { f, off, len, seed }),
        ]
    }

    #[derive(Default)]
    struct Model {
        /// What has been written back, per file and byte.
        storage: Vec<Vec<Option<u8>>>,
        /// What the client last wrote or fetched: the value a cached byte must have.
        view: Vec<Vec<Option<u8>>>,
        /// What the client last wrote (never fetched values).
        written: Vec<Vec<Option<u8>>>,
        /// Bytes written and not yet handed back in a run.
        dirty: Vec<Vec<bool>>,
        /// The last value written to each byte by anyone (this client or another).
        truth: Vec<Vec<Option<u8>>>,
    }

    impl Model {
        fn new() -> Self {
            Model {
                storage: vec![vec![None; SPAN]; 2],
                view: vec![vec![None; SPAN]; 2],
                written: vec![vec![None; SPAN]; 2],
                dirty: vec![vec![false; SPAN]; 2],
                truth: vec![vec![None; SPAN]; 2],
            }
        }

        /// Applies runs handed out by the cache to storage, checking that each byte is one
        /// the client wrote, is still dirty (no duplicates) and has the written value.
        fn apply(&mut self, files: &[FileId; 2], runs: &[Run]) -> Result<(), TestCaseError> {
            for r in runs {
                prop_assert!(!r.data.is_empty());
                let f = files.iter().position(|&x| x == r.file).unwrap();
                for (k, &b) in r.data.iter().enumerate() {
                    let at = r.offset as usize + k;
                    prop_assert!(self.dirty[f][at], "run writes back non-dirty byte {} of file {}", at, f);
                    prop_assert_eq!(self.written[f][at], Some(b), "byte {} of file {}", at, f);
                    self.dirty[f][at] = false;
                    self.storage[f][at] = Some(b);
                }
            }
            Ok(())
        }
    }

    fn run_model(cap: usize, ops: Vec<Op>) -> Result<(), TestCaseError> {
        let files = [F, G];
        let mut c = BlockCache::new(BS, cap);
        let mut m = Model::new();
        for op in ops {
            match op {
                Op::Write { f, off, len, seed } => {
                    let data: Vec<u8> = (0..len).map(|k| seed.wrapping_add((k * 7 % 251) as u8)).collect();
                    let runs = c.write(files[f], off, &data);
                    // Runs of one call are disjoint: evicted blocks outside the write, or
                    // the write's own head (written through), which must carry the new bytes.
                    for (k, &b) in data.iter().enumerate() {
                        let at = off as usize + k;
                        m.view[f][at] = Some(b);
                        m.written[f][at] = Some(b);
                        m.truth[f][at] = Some(b);
                        m.dirty[f][at] = true;
                    }
                    m.apply(&files, &runs)?;
                }
                Op::Fill { f, off, len } => {
                    let data: Vec<u8> = (0..len).map(|k| m.storage[f][off as usize + k].unwrap_or(0)).collect();
                    let runs = c.fill(files[f], off, &data);
                    for (k, &b) in data.iter().enumerate() {
                        let at = off as usize + k;
                        if !m.dirty[f][at] {
                            m.view[f][at] = Some(b);
                        }
                    }
                    m.apply(&files, &runs)?;
                }
                Op::Read { f, off, len } => {
                    let mut buf = vec![0u8; len];
                    let missing = c.read(files[f], off, &mut buf);
                    let end = off + len as u64;
                    let mut present = vec![true; len];
                    let mut prev_end = None;
                    for r in &missing {
                        prop_assert!(r.start < r.end && off <= r.start && r.end <= end);
                        if let Some(p) = prev_end {
                            prop_assert!(p < r.start, "missing ranges unsorted or unmerged");
                        }
                        prev_end = Some(r.end);
                        for x in &mut present[(r.start - off) as usize..(r.end - off) as usize] {
                            *x = false;
                        }
                    }
                    for k in 0..len {
                        let at = off as usize + k;
                        if present[k] {
                            prop_assert_eq!(Some(buf[k]), m.view[f][at], "byte {} of file {}", at, f);
                        } else {
                            prop_assert!(!m.dirty[f][at], "dirty byte {} reported missing", at);
                        }
                    }
                }
                Op::TakeDirty { f, start, end, closing } => {
                    let runs = c.take_dirty(files[f], start..end, closing);
                    for r in &runs {
                        prop_assert!(r.offset >= start && r.offset + r.data.len() as u64 <= end);
                    }
                    m.apply(&files, &runs)?;
                    let hi = end.min(SPAN as u64) as usize;
                    for at in (start as usize)..hi.max(start as usize) {
                        prop_assert!(!m.dirty[f][at]);
                    }
                }
                Op::Revoke { f, start, end, closing } => {
                    let runs = c.take_dirty(files[f], start..end, closing);
                    m.apply(&files, &runs)?;
                    c.invalidate(files[f], start..end, closing);
                    // Nothing in the range may be cached any more.
                    if start < end {
                        let len = (end.min(SPAN as u64) - start) as usize;
                        check_gone(&mut c, files[f], start, len)?;
                    }
                }
                Op::Foreign { f, off, len, seed } => {
                    let end = off + len as u64;
                    let runs = c.take_dirty(files[f], off..end, false);
                    m.apply(&files, &runs)?;
                    c.invalidate(files[f], off..end, false);
                    check_gone(&mut c, files[f], off, len)?;
                    for k in 0..len {
                        let at = off as usize + k;
                        let b = seed.wrapping_mul(3).wrapping_add(k as u8);
                        m.storage[f][at] = Some(b);
                        m.truth[f][at] = Some(b);
                        // Our old bytes are neither cached nor to be written back any more.
                        m.written[f][at] = None;
                        m.view[f][at] = None;
                    }
                }
            }
            prop_assert!(c.len_blocks() <= cap);
            prop_assert!(c.slots.len() <= cap);
            for (f, &file) in files.iter().enumerate() {
                let d = m.dirty[f].iter().filter(|&&x| x).count() as u64;
                prop_assert_eq!(c.dirty_bytes(file), d);
            }
        }
        // Write back everything: storage must now hold exactly the last bytes written.
        for file in files {
            let runs = c.take_dirty(file, 0..u64::MAX, true);
            m.apply(&files, &runs)?;
            prop_assert_eq!(c.dirty_bytes(file), 0);
        }
        for (f, (storage, truth)) in m.storage.iter().zip(&m.truth).enumerate() {
            let bad = storage.iter().zip(truth).position(|(s, t)| s != t);
            prop_assert_eq!(bad, None, "file {}: storage {:?}", f, bad.map(|at| (storage[at], truth[at])));
        }
        Ok(())
    }

    /// Nothing of `[start, start + len)` may be cached.
    fn check_gone(c: &mut BlockCache, file: FileId, start: u64, len: usize) -> Result<(), TestCaseError> {
        let mut buf = vec![0u8; len];
        let missing = c.read(file, start, &mut buf);
        if len > 0 {
            prop_assert_eq!(missing, vec![start..start + len as u64]);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]
        #[test]
        fn cache_matches_model(cap in 3usize..=6, ops in proptest::collection::vec(op(), 1..60)) {
            run_model(cap, ops)?;
        }

        /// Capacity 1 and 2 exercise writes and fills spanning more blocks than the cache.
        #[test]
        fn cache_matches_model_tiny(cap in 1usize..=2, ops in proptest::collection::vec(op(), 1..40)) {
            run_model(cap, ops)?;
        }
    }
}
