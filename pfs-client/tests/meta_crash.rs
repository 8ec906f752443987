//! SIGKILL pfs-meta after acknowledged writes and restart it: the tree, sizes and contents are
//! intact.

use pfs_client::{CreateOptions, FileKind};
use pfs_testkit::random_bytes;
use pfs_testkit::{DaemonKind, LocalCluster};

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_state_survives_a_killed_metadata_server() {
    let mut cluster = LocalCluster::start(4).await.unwrap();
    let client = cluster.client().await.unwrap();
    client.mkdir_all("/proj/run1").await.unwrap();
    let mut expect = Vec::new();
    for i in 0..5u64 {
        let path = format!("/proj/run1/f{i}");
        let data = random_bytes(1_500_000 * i as usize + 7, i);
        let f = client.create(&path, &CreateOptions::default()).await.unwrap();
        f.write_at(0, &data).await.unwrap();
        f.close().await.unwrap();
        expect.push((path, data));
    }
    client.rename("/proj/run1/f4", "/proj/last").await.unwrap();
    expect[4].0 = "/proj/last".to_string();
    client.unlink("/proj/run1/f0").await.unwrap();
    expect.remove(0);
    let before = client.stat("/proj/last").await.unwrap();

    let client = cluster.restart(DaemonKind::Meta(1)).await.unwrap();

    let names: Vec<String> = client.readdir("/proj/run1").await.unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["f1", "f2", "f3"]);
    assert_eq!(client.stat("/proj").await.unwrap().kind, FileKind::Dir);
    let after = client.stat("/proj/last").await.unwrap();
    assert_eq!((after.id, after.size, after.generation), (before.id, before.size, before.generation));
    for (path, data) in &expect {
        let f = client.open(path).await.unwrap();
        assert_eq!(f.size(), data.len() as u64, "{path}");
        let mut buf = vec![0u8; data.len()];
        assert_eq!(f.read_at(0, &mut buf).await.unwrap(), data.len());
        assert!(&buf == data, "{path} differs after the restart");
    }
    assert_eq!(client.stat("/proj/run1/f0").await.unwrap_err().code(), pfs_common::ErrorCode::NotFound);

    // Chunk holders are rebuilt from the storage servers' full reports, which follow their
    // registration: wait for them with a deadline.
    let f = client.open("/proj/last").await.unwrap();
    let count = f.layout().chunk_count(f.size());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let chunks = client.chunks(f.id(), count).await.unwrap();
        if chunks.len() as u64 == count && chunks.iter().all(|c| !c.holders.is_empty()) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "holders not rebuilt: {chunks:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
