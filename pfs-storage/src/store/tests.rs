//! ChunkStore tests on temporary directories, plus the pfs-meta session against a fake pfs-meta.

use super::*;
use crate::engine;
use pfs_common::config::{Config, EngineChoice};
use pfs_common::rpc::{self, Handler, Peer, Reply, ServeOptions};
use pfs_common::wire::frame::DEFAULT_LIMITS;
use pfs_common::wire::registry::{
    self as reg, LostChunk, Registered, RegistryRequest, ReportAnswer, StorageNotify, StoragePush,
};
use pfs_common::wire::{MetaRequest, PeerRole};
use pfs_common::ErrorCode;
use std::sync::atomic::AtomicBool;

fn buf(data: &[u8]) -> PooledBuf {
    let mut b = pool::global().get(data.len());
    b.copy_from_slice(data);
    b
}

/// A store on `dir`, reconciled with an empty chunk map (nothing lost), so it serves reads.
async fn open_store(dir: &Path, quiet: Duration) -> Arc<ChunkStore> {
    let s = open_unreconciled(dir, quiet).await;
    s.reconciled(Vec::new());
    s
}

async fn open_unreconciled(dir: &Path, quiet: Duration) -> Arc<ChunkStore> {
    let engine = engine::open(EngineChoice::Auto, dir).unwrap();
    ChunkStore::open(ServerId(3), engine, StoreOptions { hash_quiet: quiet }).await.unwrap()
}

const CS: u64 = 1 << 20;

#[tokio::test]
async fn chunk_files_are_named_by_id_and_index() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_store(dir.path(), Duration::from_secs(3600)).await;
    s.write(FileId(0xabc), 17, 5, CS, 4096, buf(b"data")).await.unwrap();
    let names = entries(dir.path());
    assert_eq!(names, ["0000000000000abc_chunk_17"]);
    let path = dir.path().join(&names[0]);
    assert_eq!(std::fs::read(&path).unwrap(), b"\0\0\0\0\0data");
    // Its checksums: header (magic, block size, flags: dirty, commit version 0, no SHA-256)
    // and one crc32c of the only block.
    let sums = xattr(&path);
    assert_eq!(&sums[..4], b"PFSC");
    assert_eq!(sums[4..8], 4096u32.to_le_bytes());
    assert_eq!(sums[8..12], 0u32.to_le_bytes());
    assert_eq!(sums[12..20], 0u64.to_le_bytes());
    assert_eq!(sums[52..], crc32c::crc32c(b"\0\0\0\0\0data").to_le_bytes());
    s.make_durable(FileId(0xabc)).await.unwrap();
    let sums = xattr(&path);
    assert_eq!(sums[8..12], 3u32.to_le_bytes(), "clean, with the SHA-256, once synced");
    assert_eq!(sums[12..20], 1u64.to_le_bytes(), "the first commit");
    assert_eq!(sums[20..52], Sha256Digest::of(b"\0\0\0\0\0data").0);
    let (data, len) = s.read(FileId(0xabc), 17, 3, 100).await.unwrap();
    assert_eq!((&data[..], len), (&b"\0\0data"[..], 9));
    // A hole: empty payload, length 0.
    let (data, len) = s.read(FileId(0xabc), 18, 0, 100).await.unwrap();
    assert_eq!((data.len(), len), (0, 0));
}

#[tokio::test]
async fn writes_beyond_the_chunk_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_store(dir.path(), Duration::from_secs(3600)).await;
    let e = s.write(FileId(7), 2, CS - 2, CS, 4096, buf(b"abc")).await.unwrap_err();
    assert!(matches!(e, StorageError::Invalid { server: ServerId(3), .. }), "{e}");
    let e = s.write(FileId(7), 0, u64::MAX, CS, 4096, buf(b"abc")).await.unwrap_err();
    assert!(matches!(e, StorageError::Invalid { .. }), "{e}");
    let e = s.write(FileId(7), 0, 0, MAX_CHUNK_SIZE * 2, 4096, buf(b"abc")).await.unwrap_err();
    assert!(matches!(e, StorageError::Invalid { .. }), "{e}");
    assert!(matches!(s.read(FileId(7), 0, MAX_CHUNK_SIZE, 1).await, Err(StorageError::Invalid { .. })));
    let e = s.write(FileId(7), 0, 0, CS, 1000, buf(b"abc")).await.unwrap_err();
    assert!(matches!(e, StorageError::Invalid { .. }), "a block size that is no power of two: {e}");
    s.write(FileId(7), 2, CS - 3, CS, 4096, buf(b"abc")).await.unwrap();
    assert_eq!(entries(dir.path()).len(), 1, "one chunk file, its checksums inside");
    // Past the largest file (chunk index x chunk size from the network, overflow included).
    let last = MAX_FILE_SIZE / CS;
    let e = s.write(FileId(7), last, MAX_FILE_SIZE % CS - 1, CS, 4096, buf(b"ab")).await.unwrap_err();
    assert!(matches!(&e, StorageError::Invalid { what, .. } if what.contains("largest file")), "{e}");
    let e = s.write(FileId(7), u64::MAX, 0, CS, 4096, buf(b"ab")).await.unwrap_err();
    assert!(matches!(e, StorageError::Invalid { .. }), "{e}");
    let e = s.truncate(FileId(7), MAX_FILE_SIZE + 1, CS).await.unwrap_err();
    assert!(matches!(&e, StorageError::Invalid { what, .. } if what.contains("largest file")), "{e}");
    assert_eq!(entries(dir.path()).len(), 1, "nothing written");
}

/// The checksum attribute of a chunk file.
fn xattr(path: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = std::ffi::CString::new(checksums::XATTR).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid NUL-terminated strings and a buffer of the length passed.
    let n = unsafe { libc::getxattr(p.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(n >= 0, "getxattr {}: {}", path.display(), std::io::Error::last_os_error());
    buf.truncate(n as usize);
    buf
}

fn set_xattr(path: &Path, value: &[u8]) {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = std::ffi::CString::new(checksums::XATTR).unwrap();
    // SAFETY: valid NUL-terminated strings and a value of the length passed.
    let r = unsafe { libc::setxattr(p.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(r, 0, "setxattr {}: {}", path.display(), std::io::Error::last_os_error());
}

/// Flips one bit of byte `at` of a chunk file on disk.
fn flip(path: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x10], at).unwrap();
}

#[tokio::test]
async fn a_flipped_bit_fails_the_read_naming_the_block() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_store(dir.path(), Duration::from_secs(3600)).await;
    let f = FileId(0x51);
    let data: Vec<u8> = (0..5 * 4096 + 100).map(|i| (i % 251) as u8).collect();
    // Written in odd pieces: partial blocks are summed from the bytes read back.
    for piece in data.chunks(3000).enumerate() {
        s.write(f, 0, piece.0 as u64 * 3000, CS, 4096, buf(piece.1)).await.unwrap();
    }
    // A gap: the blocks in it are zeros, with checksums.
    s.write(f, 1, 3 * 4096 + 7, CS, 4096, buf(b"after a gap")).await.unwrap();
    assert_eq!(&s.read(f, 1, 0, 4096).await.unwrap().0[..], &[0u8; 4096][..]);
    assert_eq!(&s.read(f, 1, 3 * 4096 + 7, 11).await.unwrap().0[..], b"after a gap");
    assert_eq!(&s.read(f, 0, 0, data.len() as u32).await.unwrap().0[..], &data[..]);
    s.make_durable(f).await.unwrap();
    flip(&s.chunk_path(f, 0), 2 * 4096 + 17);
    let e = s.read(f, 0, 4096, 3 * 4096).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Corrupt);
    assert!(matches!(e, StorageError::Corrupt { chunk: 0, .. }), "{e}");
    let text = e.to_string();
    assert!(text.contains("block 2") && text.contains("chunk 0") && text.contains("storage-3"), "{text}");
    // Blocks before and after it still read.
    assert_eq!(&s.read(f, 0, 0, 4096).await.unwrap().0[..], &data[..4096]);
    assert_eq!(&s.read(f, 0, 3 * 4096, 100).await.unwrap().0[..], &data[3 * 4096..3 * 4096 + 100]);
    // Also after a restart: the checksums are clean, so they are trusted.
    drop(s);
    let s = open_store(dir.path(), Duration::from_secs(3600)).await;
    assert!(matches!(s.read(f, 0, 2 * 4096, 10).await, Err(StorageError::Corrupt { .. })));
    // Truncating below the damage cuts it away (and re-sums the cut block).
    s.truncate(f, 4096 + 10, CS).await.unwrap();
    assert_eq!(&s.read(f, 0, 0, 8192).await.unwrap().0[..], &data[..4096 + 10]);
}

#[tokio::test]
async fn checksums_of_chunks_changed_since_their_commit_are_rebuilt_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_store(dir.path(), Duration::from_secs(3600)).await;
    let f = FileId(0x52);
    s.write(f, 0, 0, CS, 4096, buf(&[1; 8192])).await.unwrap();
    s.make_durable(f).await.unwrap();
    // Written again without a commit, then the checksums lag the data (as a crash between
    // the data write and the checksum update leaves them): simulated by damaging them.
    s.write(f, 0, 0, CS, 4096, buf(&[2; 100])).await.unwrap();
    drop(s);
    let path = dir.path().join(pfs_common::ids::chunk_file_name(f, 0));
    let mut bytes = xattr(&path);
    assert_eq!(bytes[8..12], 0u32.to_le_bytes(), "dirty: written since the last commit");
    assert_eq!(bytes[12..20], 1u64.to_le_bytes(), "the last commit's version stays");
    bytes[52] ^= 0xff;
    set_xattr(&path, &bytes);
    let s = open_store(dir.path(), Duration::from_secs(3600)).await;
    let mut want = vec![2u8; 100];
    want.extend_from_slice(&[1; 8092]);
    assert_eq!(&s.read(f, 0, 0, 8192).await.unwrap().0[..], &want[..], "rebuilt from the data");
}

#[tokio::test]
async fn index_is_rebuilt_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open_store(dir.path(), Duration::from_secs(3600)).await;
        s.write(FileId(1), 0, 0, CS, 4096, buf(&[1; 100])).await.unwrap();
        s.write(FileId(1), 4, 10, CS, 4096, buf(&[2; 100])).await.unwrap();
        s.write(FileId(2), 1, 0, CS, 4096, buf(&[3; 7])).await.unwrap();
        s.make_durable(FileId(1)).await.unwrap();
    }
    std::fs::write(dir.path().join("stray.txt"), b"not a chunk").unwrap();
    let s = open_store(dir.path(), Duration::from_secs(3600)).await;
    assert_eq!(s.chunks_of(FileId(1)), vec![(0, 100), (4, 110)]);
    assert_eq!(s.chunks_of(FileId(2)), vec![(1, 7)]);
    assert_eq!(s.status().unwrap().chunks, 3);
    // Chunks committed clean keep the SHA-256 recorded at the commit; the one never synced is
    // queued for syncing and hashing.
    assert_eq!(s.state.lock().dirty.keys().copied().collect::<Vec<_>>(), vec![(FileId(2), 1)]);
    let mut want = vec![0u8; 10];
    want.extend_from_slice(&[2; 100]);
    assert_eq!(s.chunk_hash(FileId(1), 4), Some(Sha256Digest::of(&want)));
}

#[tokio::test]
async fn hash_is_coalesced_and_matches_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_store(dir.path(), Duration::from_secs(3600)).await;
    tokio::spawn(crate::hasher::run(s.clone()));
    for i in 0..10u64 {
        s.write(FileId(5), 1, i * 1000, CS, 4096, buf(&[i as u8 + 1; 1000])).await.unwrap();
    }
    assert_eq!(s.chunk_hash(FileId(5), 1), None);
    s.make_durable(FileId(5)).await.unwrap();
    assert_eq!(s.hashes_done(), 1, "ten writes, one hash");
    let bytes = std::fs::read(s.chunk_path(FileId(5), 1)).unwrap();
    assert_eq!(s.chunk_hash(FileId(5), 1), Some(Sha256Digest::of(&bytes)));
    // A chunk larger than one hashing piece.
    let big = vec![9u8; super::hashing::HASH_PIECE * 2 + 5];
    s.write(FileId(5), 2, 0, 4 << 20, 4096, buf(&big)).await.unwrap();
    s.make_durable(FileId(5)).await.unwrap();
    assert_eq!(s.chunk_hash(FileId(5), 2), Some(Sha256Digest::of(&big)));
}

#[tokio::test]
async fn background_hasher_hashes_quiet_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_store(dir.path(), Duration::from_millis(1)).await;
    tokio::spawn(crate::hasher::run(s.clone()));
    s.write(FileId(6), 0, 0, CS, 4096, buf(b"quiet")).await.unwrap();
    let want = Sha256Digest::of(b"quiet");
    assert!(
        wait_for(Duration::from_secs(10), || s.chunk_hash(FileId(6), 0) == Some(want)).await,
        "condition not met in time"
    );
}

/// The file's bytes on disk and the store's hash of them after an fsync.
async fn fsynced_hash(s: &Arc<ChunkStore>, file: FileId, chunk: ChunkIndex) -> (Option<Sha256Digest>, Sha256Digest) {
    s.make_durable(file).await.unwrap();
    let bytes = std::fs::read(s.chunk_path(file, chunk)).unwrap();
    (s.chunk_hash(file, chunk), Sha256Digest::of(&bytes))
}

#[tokio::test]
async fn sequential_appends_are_hashed_as_they_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_store(dir.path(), Duration::from_secs(3600)).await;
    let f = FileId(0x51);
    // Aligned appends (direct I/O where supported) then an unaligned tail (buffered).
    let mut all = Vec::new();
    for i in 0..4u8 {
        let piece = vec![i + 1; 256 << 10];
        s.write(f, 0, all.len() as u64, 4 << 20, 4096, buf(&piece)).await.unwrap();
        all.extend_from_slice(&piece);
    }
    let tail: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
    s.write(f, 0, all.len() as u64, 4 << 20, 4096, buf(&tail)).await.unwrap();
    all.extend_from_slice(&tail);
    let (got, on_disk) = fsynced_hash(&s, f, 0).await;
    assert_eq!(on_disk, Sha256Digest::of(&all));
    assert_eq!(got, Some(on_disk));
    assert_eq!((s.hashes_done(), s.hash_rereads()), (1, 0), "hashed from the running state, no re-read");
    let files = s.engine.files();
    if files.direct_supported() {
        assert_eq!((files.direct_ops(), files.buffered_ops()), (4, 1));
    }
    // Appending after an fsync continues the same running hash.
    s.write(f, 0, all.len() as u64, 4 << 20, 4096, buf(b"more")).await.unwrap();
    all.extend_from_slice(b"more");
    let (got, on_disk) = fsynced_hash(&s, f, 0).await;
    assert_eq!((got, on_disk), (Some(Sha256Digest::of(&all)), Sha256Digest::of(&all)));
    assert_eq!((s.hashes_done(), s.hash_rereads()), (2, 0));
    // The report queued for pfs-meta carries it.
    assert_eq!(s.state.lock().reports.get((f, 0)).and_then(|c| c.sha256), Some(Sha256Digest::of(&all)));
}

#[tokio::test]
async fn out_of_order_writes_fall_back_to_rereading() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_store(dir.path(), Duration::from_secs(3600)).await;
    let f = FileId(0x52);
    // Second half first: no running hash for this chunk.
    s.write(f, 0, 8192, CS, 4096, buf(&[2; 8192])).await.unwrap();
    s.write(f, 0, 0, CS, 4096, buf(&[1; 8192])).await.unwrap();
    let (got, on_disk) = fsynced_hash(&s, f, 0).await;
    assert_eq!(got, Some(on_disk));
    assert_eq!(s.hash_rereads(), 1);
    // Later appends to it cannot use a running hash either.
    s.write(f, 0, 16384, CS, 4096, buf(&[3; 100])).await.unwrap();
    let (got, on_disk) = fsynced_hash(&s, f, 0).await;
    assert_eq!(got, Some(on_disk));
    assert_eq!(s.hash_rereads(), 2);

    // Sequential, then an overwrite: falls back too.
    s.write(f, 1, 0, CS, 4096, buf(&[4; 4096])).await.unwrap();
    s.write(f, 1, 4096, CS, 4096, buf(&[5; 4096])).await.unwrap();
    let (got, on_disk) = fsynced_hash(&s, f, 1).await;
    assert_eq!((got, s.hash_rereads()), (Some(on_disk), 2));
    s.write(f, 1, 100, CS, 4096, buf(&[6; 10])).await.unwrap();
    let (got, on_disk) = fsynced_hash(&s, f, 1).await;
    assert_eq!((got, s.hash_rereads()), (Some(on_disk), 3));

    // Sequential, then a truncate: falls back.
    s.write(f, 2, 0, CS, 4096, buf(&[7; 5000])).await.unwrap();
    s.truncate(f, 2 * CS + 3000, CS).await.unwrap();
    let (got, on_disk) = fsynced_hash(&s, f, 2).await;
    assert_eq!(on_disk, Sha256Digest::of(&[7; 3000]));
    assert_eq!((got, s.hash_rereads()), (Some(on_disk), 4));

    // Removed and rewritten from 0: a fresh running hash again.
    s.remove(f).await.unwrap();
    s.write(f, 0, 0, CS, 4096, buf(&[8; 4096])).await.unwrap();
    let (got, on_disk) = fsynced_hash(&s, f, 0).await;
    assert_eq!((got, on_disk, s.hash_rereads()), (Some(on_disk), Sha256Digest::of(&[8; 4096]), 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_to_one_chunk_end_with_the_right_hash() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_store(dir.path(), Duration::from_secs(3600)).await;
    let f = FileId(0x53);
    for round in 0..20u64 {
        let chunk = round;
        // Sixteen appends in order but in flight at once: whichever overlap invalidate the
        // running hash, the others feed it; the result must be right either way.
        let tasks: Vec<_> = (0..16u64)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(
                    async move { s.write(f, chunk, i * 4096, CS, 4096, buf(&[i as u8 + 1; 4096])).await.unwrap() },
                )
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let (got, on_disk) = fsynced_hash(&s, f, chunk).await;
        assert_eq!(got, Some(on_disk), "round {round}");
        let want: Vec<u8> = (0..16u8).flat_map(|i| [i + 1; 4096]).collect();
        assert_eq!(on_disk, Sha256Digest::of(&want));
    }
}

#[tokio::test]
async fn truncate_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_store(dir.path(), Duration::from_secs(3600)).await;
    let cs = 100u64;
    for c in 0..4 {
        s.write(FileId(9), c, 0, cs, 4096, buf(&[c as u8; 100])).await.unwrap();
    }
    s.truncate(FileId(9), 150, cs).await.unwrap();
    assert_eq!(s.chunks_of(FileId(9)), vec![(0, 100), (1, 50)]);
    assert_eq!(std::fs::metadata(s.chunk_path(FileId(9), 1)).unwrap().len(), 50);
    assert!(!s.chunk_path(FileId(9), 2).exists());
    s.remove(FileId(9)).await.unwrap();
    assert!(s.chunks_of(FileId(9)).is_empty());
    assert_eq!(entries(dir.path()).len(), 0, "chunk files and their checksums are gone");
    let st = s.state.lock();
    assert!(st.reports.iter().filter(|c| c.removed).count() == 4);
}

#[tokio::test]
async fn lost_chunks_fail_reads_and_writes_until_truncated_away() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_unreconciled(dir.path(), Duration::from_secs(3600)).await;
    let f = FileId(0x31);
    // Not yet checked against pfs-meta's chunk map: a missing chunk could be a lost one.
    assert!(matches!(s.read(f, 0, 0, 10).await, Err(StorageError::NotReconciled { .. })));
    let lost = |chunk| LostChunk { file: f, chunk, len: 100, found: "missing".into() };
    s.reconciled(vec![lost(0), lost(2)]);
    let e = s.read(f, 2, 0, 10).await.unwrap_err();
    assert!(matches!(e, StorageError::Lost { chunk: 2, len: 100, .. }), "{e}");
    assert_eq!(e.code(), ErrorCode::Lost);
    let text = e.to_string();
    assert!(text.contains("chunk 2") && text.contains(&f.to_string()) && text.contains("storage-3"), "{text}");
    assert!(matches!(s.write(f, 0, 0, 100, 4096, buf(b"x")).await, Err(StorageError::Lost { chunk: 0, .. })));
    // A chunk never committed is a hole.
    assert_eq!(s.read(f, 1, 0, 10).await.unwrap().0.len(), 0);
    // Truncating below a lost chunk ends its loss; the chunk below stays lost.
    s.truncate(f, 150, 100).await.unwrap();
    assert!(matches!(s.read(f, 0, 0, 10).await, Err(StorageError::Lost { .. })));
    assert_eq!(s.read(f, 2, 0, 10).await.unwrap().0.len(), 0);
    s.remove(f).await.unwrap();
    assert_eq!(s.read(f, 0, 0, 10).await.unwrap().0.len(), 0, "removing the file ends every loss");
}

#[tokio::test]
async fn fsync_without_pfs_meta_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_store(dir.path(), Duration::from_secs(3600)).await;
    s.write(FileId(4), 0, 0, CS, 4096, buf(b"durable but not committed")).await.unwrap();
    let e = s.fsync(FileId(4)).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
    assert!(s.state.lock().unsynced.is_empty(), "the data itself was synced");
}

/// A fake pfs-meta that records chunk reports, can push notifications, and can refuse
/// heartbeats (as the real one does for a server it declared down).
#[derive(Default)]
struct FakeMeta {
    reports: Mutex<Vec<(Vec<ChunkState>, bool)>>,
    registered: AtomicU64,
    peers: Mutex<Vec<Peer>>,
    refuse_heartbeats: AtomicBool,
    /// The leadership term its answers name.
    term: AtomicU64,
    /// While it names a file, reports with a state of that file are recorded but not answered.
    held: Mutex<Option<FileId>>,
    released: tokio::sync::Notify,
}

impl Handler for FakeMeta {
    type Request = MetaRequest;
    async fn handle(self: Arc<Self>, peer: Peer, req: MetaRequest, _payload: PooledBuf) -> Reply {
        let MetaRequest::Registry(req) = req else {
            let e = pfs_common::Error::Protocol { peer: "fake".into(), message: "not a registry call".into() };
            return Reply::error(&e);
        };
        match req {
            RegistryRequest::Register(_) => {
                self.registered.fetch_add(1, Ordering::SeqCst);
                self.peers.lock().push(peer);
                let r = Registered {
                    term: self.term.load(Ordering::SeqCst),
                    fence_below: 0,
                    fenced: vec![],
                    lease_ms: 60_000,
                    orphans: vec![FileId(0xdead)],
                    chains: vec![],
                };
                Reply::to::<reg::Register, StorageError>(Ok(r))
            }
            RegistryRequest::ChunkReport(c) => {
                let holds = |f: Option<FileId>| f.is_some_and(|f| c.chunks.iter().any(|s| s.file == f));
                self.reports.lock().push((c.chunks.clone(), c.full));
                loop {
                    let released = self.released.notified();
                    if !holds(*self.held.lock()) {
                        break;
                    }
                    released.await;
                }
                let term = self.term.load(Ordering::SeqCst);
                let answer = ReportAnswer { term, orphans: vec![], lost: c.full.then(Vec::new) };
                Reply::to::<reg::ChunkReport, StorageError>(Ok(answer))
            }
            RegistryRequest::Heartbeat(c) if self.refuse_heartbeats.load(Ordering::SeqCst) => {
                Reply::error(&StorageError::NoLease { server: c.id, why: "declared down by the fake".into() })
            }
            RegistryRequest::Heartbeat(_) => {
                Reply::to::<reg::Heartbeat, StorageError>(Ok(reg::Renewed { term: self.term.load(Ordering::SeqCst) }))
            }
            RegistryRequest::Fenced(_) => Reply::to::<reg::Fenced, StorageError>(Ok(())),
            RegistryRequest::ListServers(_) => Reply::to::<reg::ListServers, StorageError>(Ok(vec![])),
            RegistryRequest::GetChunks(_) => Reply::to::<reg::GetChunks, StorageError>(Ok(vec![])),
            RegistryRequest::GetChains(_) => Reply::to::<reg::GetChains, StorageError>(Ok(vec![])),
            RegistryRequest::GetLayouts(c) => {
                Reply::to::<reg::GetLayouts, StorageError>(Ok(c.files.iter().map(|_| None).collect()))
            }
            RegistryRequest::SyncDone(_) => Reply::to::<reg::SyncDone, StorageError>(Ok(())),
            RegistryRequest::GetHealth(_) => Reply::to::<reg::GetHealth, StorageError>(Ok(Default::default())),
            RegistryRequest::RemoveOrphan(_) => Reply::to::<reg::RemoveOrphan, StorageError>(Ok(())),
        }
    }
}

impl FakeMeta {
    /// Answers the reports it holds (and holds no more).
    fn release(&self) {
        *self.held.lock() = None;
        self.released.notify_waiters();
    }

    /// The chunks of `file` in each report it received, in the order received.
    fn reports_of(&self, file: FileId) -> Vec<Vec<ChunkIndex>> {
        let r = self.reports.lock();
        r.iter()
            .map(|(c, _)| c.iter().filter(|s| s.file == file).map(|s| s.chunk).collect::<Vec<_>>())
            .filter(|c| !c.is_empty())
            .collect()
    }

    fn reported(&self, file: FileId, chunk: ChunkIndex) -> Option<ChunkState> {
        let r = self.reports.lock();
        r.iter().flat_map(|(c, _)| c.iter()).rfind(|c| c.file == file && c.chunk == chunk).cloned()
    }
}

/// Serves a [`FakeMeta`] on a loopback port.
async fn start_fake_meta() -> (Arc<FakeMeta>, std::net::SocketAddr) {
    let listener = rpc::bind("127.0.0.1:0".parse().unwrap(), "fake pfs-meta").await.unwrap();
    let meta_addr = listener.local_addr().unwrap();
    let fake = Arc::new(FakeMeta::default());
    let opts = ServeOptions {
        name: "pfs-meta".into(),
        roles: vec![PeerRole::Storage],
        limits: DEFAULT_LIMITS,
        idle_timeout: None,
        handshake_timeout: Duration::from_secs(10),
        auth: pfs_common::auth::Auth::none(),
    };
    tokio::spawn(rpc::serve(listener, fake.clone(), opts));
    (fake, meta_addr)
}

/// Hangs up a test that would otherwise wait for ever (a bound on a hang, not a timing).
async fn or_hang<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f).await.unwrap_or_else(|_| panic!("{what} never finished"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_fsync_sends_only_its_own_files_reports() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, meta_addr) = start_fake_meta().await;
    let s = open_store(dir.path(), Duration::from_secs(3600)).await;
    let opts = pfs_common::rpc::ConnectOptions {
        role: PeerRole::Storage,
        name: "storage-3".into(),
        connect_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(120),
        auth: pfs_common::auth::Auth::none(),
    };
    s.meta.set(Some(rpc::RpcClient::connect(meta_addr, "pfs-meta", &opts, None).await.unwrap()));
    let (a, b) = (FileId(0xa), FileId(0xb));
    // File B's reports: one batch in flight that pfs-meta does not answer (a slow pfs-meta, a
    // large backlog), and more queued behind it.
    *fake.held.lock() = Some(b);
    for chunk in 0..3 {
        s.write(b, chunk, 0, CS, 4096, buf(b"backlog")).await.unwrap();
    }
    s.make_durable(b).await.unwrap();
    let background = tokio::spawn({
        let s = s.clone();
        async move { s.flush_reports(None).await }
    });
    assert!(wait_for(Duration::from_secs(20), || !fake.reports_of(b).is_empty()).await, "B's batch was not sent");
    for chunk in 3..6 {
        s.write(b, chunk, 0, CS, 4096, buf(b"more backlog")).await.unwrap();
    }
    s.make_durable(b).await.unwrap();
    assert_eq!(s.reports_queued(b), 3);

    // File A's fsync commits A's chunk, sends nothing of B's, and does not wait for B's batch.
    s.write(a, 0, 0, CS, 4096, buf(b"mine")).await.unwrap();
    or_hang("A's fsync", s.fsync(a)).await.unwrap();
    assert_eq!(fake.reports_of(a), [vec![0]], "A's one state, in a report of its own");
    assert_eq!(fake.reports_of(b), [vec![0, 1, 2]], "only the batch in flight");
    assert_eq!(s.reports_queued(b), 3, "B's backlog is still queued");
    assert!(!background.is_finished(), "B's batch is still unanswered");
    {
        let r = fake.reports.lock();
        let a_report = r.iter().find(|(c, _)| c.iter().any(|s| s.file == a)).unwrap();
        assert!(a_report.0.iter().all(|s| s.file == a), "{:?}", a_report.0);
    }

    // Once pfs-meta answers, B's fsync sends the rest of B.
    fake.release();
    or_hang("B's batch", background).await.unwrap().unwrap();
    or_hang("B's fsync", s.fsync(b)).await.unwrap();
    assert_eq!(fake.reports_of(b), [vec![0, 1, 2], vec![3, 4, 5]]);
    assert_eq!(s.reports_queued(b), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_reports_hashes_before_fsync_returns_and_removes_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, meta_addr) = start_fake_meta().await;

    let mut config = Config::local(dir.path(), 1, 1);
    config.meta[0].address = meta_addr;
    config.timeouts.heartbeat_ms = 50;
    let config = Arc::new(config);
    let sdir = config.storage_dir(&config.storage[0]);
    std::fs::create_dir_all(&sdir).unwrap();
    // An orphan on disk before start, and a live chunk.
    std::fs::write(sdir.join(pfs_common::ids::chunk_file_name(FileId(0xdead), 0)), b"old").unwrap();
    std::fs::write(sdir.join(pfs_common::ids::chunk_file_name(FileId(0x11), 0)), b"live").unwrap();
    let s = open_store(&sdir, Duration::from_secs(3600)).await;
    let id = s.id;
    let mut config2 = (*config).clone();
    config2.storage[0].id = id;
    tokio::spawn(crate::hasher::run(s.clone()));
    let config2 = Arc::new(config2);
    let repl = Arc::new(crate::replication::Replication::new(id, config2.clone(), pfs_common::auth::Auth::none()));
    tokio::spawn(crate::meta_link::run(config2, id, s.clone(), repl));

    let deadline = Duration::from_secs(20);
    assert!(wait_for(deadline, || s.meta.connected()).await, "condition not met in time");
    assert!(s.fence.has_lease(), "registered: writes are admitted");
    // The full report listed the live chunk; the orphan gets removed.
    assert!(fake.reports.lock().iter().any(|(c, full)| *full && c.iter().any(|c| c.file == FileId(0x11))));
    assert!(wait_for(deadline, || s.chunks_of(FileId(0xdead)).is_empty()).await, "condition not met in time");

    // After fsync returns, pfs-meta has the current hash.
    s.write(FileId(0x22), 3, 0, CS, 4096, buf(b"first")).await.unwrap();
    s.write(FileId(0x22), 3, 5, CS, 4096, buf(b"second")).await.unwrap();
    s.fsync(FileId(0x22)).await.unwrap();
    let got = fake.reported(FileId(0x22), 3).unwrap();
    assert_eq!((got.len, got.sha256, got.removed), (11, Some(Sha256Digest::of(b"firstsecond")), false));

    // A RemoveFiles notification removes the file's chunks and reports the removal.
    let peer = fake.peers.lock()[0].clone();
    peer.notifier
        .notify(&StoragePush { term: 0, notify: StorageNotify::RemoveFiles(vec![FileId(0x22)]) })
        .await
        .unwrap();
    assert!(wait_for(deadline, || s.chunks_of(FileId(0x22)).is_empty()).await, "condition not met in time");
    assert!(
        wait_for(deadline, || fake.reported(FileId(0x22), 3).is_some_and(|c| c.removed)).await,
        "condition not met in time"
    );

    // A new leader (term 7) answers; then a push of term 6 (a deposed leader that does not
    // know it yet) is refused: nothing is removed, and the session ends and registers again.
    s.write(FileId(0x33), 0, 0, CS, 4096, buf(b"kept")).await.unwrap();
    s.fsync(FileId(0x33)).await.unwrap();
    fake.term.store(7, Ordering::SeqCst);
    assert!(wait_for(deadline, || s.fence.term() == 7).await, "a heartbeat answer of term 7 was never taken");
    let before = fake.registered.load(Ordering::SeqCst);
    let peer = fake.peers.lock().last().unwrap().clone();
    let stale = StoragePush { term: 6, notify: StorageNotify::RemoveFiles(vec![FileId(0x33)]) };
    peer.notifier.notify(&stale).await.unwrap();
    assert!(wait_for(deadline, || fake.registered.load(Ordering::SeqCst) > before).await, "the session went on");
    assert_eq!(s.chunks_of(FileId(0x33)).len(), 1, "a deposed leader's removal was done");
    assert!(s.fence.check_term(6).is_err() && s.fence.check_term(7).is_ok());

    // pfs-meta refuses its heartbeats (it declared the server down): the server stops
    // admitting writes at once, and registers again.
    let before = fake.registered.load(Ordering::SeqCst);
    fake.refuse_heartbeats.store(true, Ordering::SeqCst);
    assert!(wait_for(deadline, || !s.fence.has_lease()).await, "the lease was not dropped");
    assert!(matches!(s.fence.admit(1).await, Err(StorageError::NoLease { .. })));
    assert!(wait_for(deadline, || fake.registered.load(Ordering::SeqCst) > before).await, "it did not register again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_tries_every_metadata_node_in_turn() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, meta_addr) = start_fake_meta().await;
    // Node 1 refuses connections; node 2 (the fake) answers.
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut config = Config::local(dir.path(), 1, 1);
    config.meta[0].address = refused;
    config.meta.push(pfs_common::config::MetaNodeConfig {
        id: 2,
        address: meta_addr,
        data_dir: "meta-2".into(),
        checkpoint_records: 1000,
    });
    config.timeouts.heartbeat_ms = 50;
    let sdir = config.storage_dir(&config.storage[0]);
    std::fs::create_dir_all(&sdir).unwrap();
    let s = open_store(&sdir, Duration::from_secs(3600)).await;
    config.storage[0].id = s.id;
    let config = Arc::new(config);
    tokio::spawn(crate::hasher::run(s.clone()));
    let repl = Arc::new(crate::replication::Replication::new(s.id, config.clone(), pfs_common::auth::Auth::none()));
    tokio::spawn(crate::meta_link::run(config, s.id, s.clone(), repl));
    assert!(wait_for(Duration::from_secs(20), || s.meta.connected()).await, "it never registered");
    assert_eq!(fake.registered.load(Ordering::SeqCst), 1, "registered with node 2");
}

/// Waits until `cond` holds, polling, or `deadline` passes; true if it holds.
async fn wait_for(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while !cond() {
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// Names in a data directory, without the pool of precreated files.
fn entries(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != crate::precreate::POOL_DIR)
        .collect()
}
