//! A metadata service of several nodes in the config: each node runs as its own process, and
//! clients and storage servers, which know every node's address, move on to the next node when
//! one does not answer. (The nodes do not replicate yet: each serves a namespace of its own,
//! which is how the test tells which node answered.)

use pfs_common::ServerId;
use pfs_testkit::{DaemonKind, LocalCluster};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn clients_and_storage_servers_move_on_to_the_next_metadata_node() {
    let mut cluster = LocalCluster::start_group(3, 1, |_| {}).await.unwrap();
    let config = cluster.config().clone();
    assert_eq!(config.meta_nodes().len(), 3);
    for m in config.meta_nodes() {
        assert!(cluster.pid(DaemonKind::Meta(m.id)).is_some(), "node {} runs", m.id);
        assert!(config.meta_dir(m.id).unwrap().is_dir(), "node {} has its own data directory", m.id);
    }

    // Everyone uses node 1, the first address.
    let first = cluster.client().await.unwrap();
    first.mkdir_all("/made-on-node-1").await.unwrap();
    first.close().await.unwrap();

    // Node 1 gone: a new client connects to node 2, and the storage server registers there.
    cluster.kill(DaemonKind::Meta(1));
    let second = cluster.client().await.unwrap();
    assert!(second.readdir("/").await.unwrap().is_empty(), "node 2's namespace, not node 1's");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let servers = second.servers().await.unwrap();
        if servers.iter().any(|s| s.id == ServerId(1) && s.up) {
            break;
        }
        assert!(Instant::now() < deadline, "storage-1 never registered with node 2: {servers:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    second.close().await.unwrap();
}
