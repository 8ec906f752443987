//! The client's data path on a real cluster: chunk boundaries, holes, short reads at end of
//! file, truncate, and a storage server that dies.

use pfs_client::CreateOptions;
use pfs_common::{ErrorCode, ServerId};
use pfs_testkit::random_bytes;
use pfs_testkit::{DaemonKind, LocalCluster};

fn small_chunks() -> CreateOptions {
    // 4 KiB blocks x 2 = 8 KiB chunks: many boundaries in little data.
    CreateOptions {
        block_size: Some(4096),
        chunk_size: Some(8192),
        stripe_count: Some(3),
        replicas: None,
        exclusive: true,
        attrs: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unaligned_writes_holes_and_end_of_file() {
    let cluster = LocalCluster::start(4).await.unwrap();
    let client = cluster.client().await.unwrap();
    let f = client.create("/f", &small_chunks()).await.unwrap();
    assert_eq!(f.layout().stripe_count(), 3);
    let mut model = vec![0u8; 0];
    // Writes that straddle chunk boundaries at odd offsets, and one far out (leaving a hole).
    for (i, (off, len)) in [(0u64, 5000usize), (8190, 10), (3, 20_000), (70_001, 9000)].into_iter().enumerate() {
        let data = random_bytes(len, i as u64);
        f.write_at(off, &data).await.unwrap();
        let end = off as usize + len;
        if model.len() < end {
            model.resize(end, 0);
        }
        model[off as usize..end].copy_from_slice(&data);
    }
    f.fsync().await.unwrap();
    let g = client.open("/f").await.unwrap();
    assert_eq!(g.size(), model.len() as u64);
    let mut buf = vec![0xAAu8; model.len() + 100];
    let n = g.read_at(0, &mut buf).await.unwrap();
    assert_eq!(n, model.len(), "a read past the end returns a short count");
    assert!(buf[..n] == model[..], "contents differ (holes must read as zeros)");
    let mut tail = [0u8; 10];
    assert_eq!(g.read_at(model.len() as u64, &mut tail).await.unwrap(), 0);
    assert_eq!(g.read_at(model.len() as u64 + 5000, &mut tail).await.unwrap(), 0);

    // Truncate down and up: the cut bytes read back as zeros, not as old data.
    g.truncate(9000).await.unwrap();
    g.truncate(20_000).await.unwrap();
    let h = client.open("/f").await.unwrap();
    assert_eq!(h.size(), 20_000);
    let mut buf = vec![0xAAu8; 20_000];
    assert_eq!(h.read_at(0, &mut buf).await.unwrap(), 20_000);
    assert!(buf[..9000] == model[..9000]);
    assert!(buf[9000..].iter().all(|&b| b == 0), "bytes past a truncate must read as zeros");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_storage_server_is_named_promptly() {
    let mut cluster = LocalCluster::start(4).await.unwrap();
    let client = cluster.client().await.unwrap();
    let f = client.create("/g", &CreateOptions::default()).await.unwrap();
    let data = random_bytes(6 << 20, 5);
    f.write_at(0, &data).await.unwrap();
    f.close().await.unwrap();

    cluster.kill(DaemonKind::Storage(ServerId(3)));
    let g = client.open("/g").await.unwrap();
    let mut buf = vec![0u8; data.len()];
    let err = g.read_at(0, &mut buf).await.unwrap_err();
    assert!(matches!(err.code(), ErrorCode::Unavailable | ErrorCode::TimedOut), "{err}");
    // The error names the file, the chunk and the server.
    match &err {
        pfs_client::Error::Chunk { op: "reading", path, server, .. } => {
            assert_eq!((path.as_str(), *server), ("/g", ServerId(3)), "{err}")
        }
        other => panic!("not a chunk error: {other}"),
    }

    // Chunks on the other servers still read.
    let l = g.layout().clone();
    let mut healthy = None;
    for c in 0..l.chunk_count(g.size()) {
        if g.chain(c).await.unwrap().head() != Some(ServerId(3)) {
            healthy = Some(c);
            break;
        }
    }
    let healthy = healthy.unwrap();
    let mut one = vec![0u8; l.chunk_size() as usize];
    let off = l.file_offset(healthy, 0);
    g.read_at(off, &mut one).await.unwrap();
    assert!(one[..] == data[off as usize..off as usize + one.len()]);
}
