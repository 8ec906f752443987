//! Conformance tests: one suite, run against every engine.

use super::*;
use pfs_common::pool;

fn buf(data: &[u8]) -> PooledBuf {
    let mut b = pool::global().get(data.len());
    b.copy_from_slice(data);
    b
}

async fn read(e: &dyn Engine, key: ChunkKey, offset: u64, len: usize) -> Option<Vec<u8>> {
    e.read(key, offset, pool::global().get(len)).await.unwrap().map(|b| b.to_vec())
}

/// The shared conformance suite.
async fn conformance(e: Arc<dyn Engine>) {
    let dir = e.files().dir().to_path_buf();
    let a: ChunkKey = (FileId(0xa1), 0);
    let b: ChunkKey = (FileId(0xa1), 7);

    // Missing chunk: a hole, not an error.
    assert_eq!(read(&*e, a, 0, 16).await, None);
    e.sync(a).await.unwrap();

    // Write and read at offsets.
    e.write(a, 0, buf(b"hello")).await.unwrap();
    e.write(a, 10, buf(b"world")).await.unwrap();
    assert_eq!(read(&*e, a, 0, 15).await.unwrap(), b"hello\0\0\0\0\0world");
    assert_eq!(read(&*e, a, 3, 4).await.unwrap(), b"lo\0\0");
    // Short read at the end, empty read past it.
    assert_eq!(read(&*e, a, 12, 100).await.unwrap(), b"rld");
    assert_eq!(read(&*e, a, 100, 10).await.unwrap(), b"");
    assert_eq!(std::fs::read(dir.join("00000000000000a1_chunk_0")).unwrap(), b"hello\0\0\0\0\0world");
    e.sync(a).await.unwrap();

    // A write of several MiB in one operation.
    let big: Vec<u8> = (0..(5 << 20) + 123).map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    e.write(b, 4096, buf(&big)).await.unwrap();
    let back = read(&*e, b, 4096, big.len() + 1000).await.unwrap();
    assert!(back == big, "big write reads back");
    e.sync(b).await.unwrap();

    // List.
    let listed = e.list().await.unwrap();
    assert_eq!(listed, vec![(a, 15), (b, 4096 + big.len() as u64)]);

    // Truncate (shrink, and a missing chunk stays missing).
    e.truncate(a, 4).await.unwrap();
    assert_eq!(read(&*e, a, 0, 100).await.unwrap(), b"hell");
    e.truncate((FileId(0xa1), 99), 10).await.unwrap();
    assert_eq!(read(&*e, (FileId(0xa1), 99), 0, 1).await, None);

    // Remove (twice is fine), then the chunk is a hole and can be recreated.
    e.remove(b).await.unwrap();
    e.remove(b).await.unwrap();
    assert_eq!(read(&*e, b, 0, 10).await, None);
    e.sync_dir().await.unwrap();
    assert_eq!(e.list().await.unwrap(), vec![(a, 4)]);
    e.write(b, 0, buf(b"again")).await.unwrap();
    assert_eq!(read(&*e, b, 0, 10).await.unwrap(), b"again");

    // Concurrent operations on many chunks and on one chunk.
    let mut tasks = Vec::new();
    for i in 0..64u64 {
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            let key = (FileId(0xc0), i % 8);
            let data = vec![i as u8; 1000];
            e.write(key, (i / 8) * 1000, buf(&data)).await.unwrap();
            let got = read(&*e, key, (i / 8) * 1000, 1000).await.unwrap();
            assert_eq!(got, data);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for c in 0..8u64 {
        let all = read(&*e, (FileId(0xc0), c), 0, 10_000).await.unwrap();
        assert_eq!(all.len(), 8000);
        for (j, piece) in all.chunks(1000).enumerate() {
            assert!(piece.iter().all(|&x| x as u64 == j as u64 * 8 + c));
        }
    }
    // Stray files are not chunks.
    std::fs::write(dir.join("notes.txt"), b"x").unwrap();
    assert_eq!(e.list().await.unwrap().len(), 2 + 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pread_engine_conforms() {
    let dir = tempfile::tempdir().unwrap();
    conformance(open(EngineChoice::Pread, dir.path()).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uring_engine_conforms() {
    let dir = tempfile::tempdir().unwrap();
    match uring::UringEngine::new(ChunkFiles::new(dir.path())) {
        Ok(e) => conformance(Arc::new(e)).await,
        // The suite cannot run where the kernel refuses io_uring; say so loudly.
        Err(e) => eprintln!("SKIPPED: io_uring unavailable here: {e}"),
    }
}

#[tokio::test]
async fn auto_picks_an_engine_and_fd_cache_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(EngineChoice::Auto, dir.path()).unwrap();
    assert!(["io_uring", "pread"].contains(&e.name()));
    for i in 0..(FD_CACHE_MAX as u64 + 10) {
        e.write((FileId(1), i), 0, buf(b"x")).await.unwrap();
    }
    assert!(e.files().cached() <= FD_CACHE_MAX);
    assert_eq!(e.list().await.unwrap().len(), FD_CACHE_MAX + 10);
}
