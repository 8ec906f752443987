//! A Stale answer carries the current chain, against the real daemons: a storage server that
//! refuses a request naming an old chain version says which version it has and who serves
//! it, and a client whose cached chain is old goes on with that chain at once, without
//! asking pfs-meta.

use pfs_client::CreateOptions;
use pfs_common::chain::{Chain, ChainRef};
use pfs_common::config::Config;
use pfs_common::rpc::RpcClient;
use pfs_common::wire::storage::{ReadChunk, StorageRequest};
use pfs_common::wire::PeerRole;
use pfs_common::ErrorCode;
use pfs_testkit::{random_bytes, raw, DaemonKind, LocalCluster};
use std::time::{Duration, Instant};

/// Two replicas and quick failure detection.
fn replicated(c: &mut Config) {
    c.layout.replicas = 2;
    c.timeouts.heartbeat_ms = 100;
    c.timeouts.server_down_ms = 1_000;
}

/// What `server` answers a read of chunk 0 of `file` on chain version `at`: `None` if it
/// serves it (the version is its own), else the chain its Stale answer carries.
async fn told(server: &RpcClient<StorageRequest>, file: pfs_common::FileId, at: ChainRef) -> Option<Chain> {
    let read = ReadChunk {
        file,
        chunk: 0,
        offset: 0,
        len: 10,
        chain: at,
        chunk_size: 1 << 20,
        session: 0,
        capabilities: Vec::new(),
    };
    match server.call(read, &[]).await {
        Ok(_) => None,
        Err(e) => {
            assert_eq!(e.code(), ErrorCode::Stale, "{e}");
            Some(e.current_chain().expect("a Stale answer about a known chain carries it").clone())
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_write_is_told_the_current_chain_and_goes_on_with_it() {
    let mut cluster = LocalCluster::start_with(3, replicated).await.unwrap();
    let client = cluster.client().await.unwrap();
    let opts = CreateOptions { stripe_count: Some(1), chunk_size: Some(1 << 20), ..CreateOptions::default() };
    let f = client.create("/f", &opts).await.unwrap();
    let first = random_bytes(1 << 20, 5);
    f.write_at(0, &first).await.unwrap();
    f.fsync().await.unwrap();
    let chain_id = f.layout().chain(0);
    let old = client.all_chains().await.unwrap().into_iter().find(|c| c.id == chain_id).unwrap();
    let (head, tail) = (old.head().unwrap(), old.successor(old.head().unwrap()).unwrap());

    // The tail dies; pfs-meta takes it out of the chain and tells the head. The head's Stale
    // answers to a request on the old version carry the chain it has now.
    cluster.kill(DaemonKind::Storage(tail));
    let opts = raw::cluster_options(cluster.config(), PeerRole::Storage, "stale-chain test");
    let head_addr = cluster.config().storage(head).unwrap().address;
    let at_head: RpcClient<StorageRequest> = RpcClient::connect(head_addr, "head", &opts, None).await.unwrap();
    let end = Instant::now() + Duration::from_secs(60);
    let current = loop {
        if let Some(c) = told(&at_head, f.id(), old.at()).await {
            break c;
        }
        assert!(Instant::now() < end, "{head} never heard of a new version of {chain_id}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(current.id, chain_id);
    assert!(current.version > old.version, "{}", current.describe());
    assert!(current.writers().all(|s| s != tail), "the dead tail is out of the write path: {}", current.describe());
    assert!(current.well_formed());
    // The same chain pfs-meta has (or an older one, if pfs-meta moved on again meanwhile).
    let at_meta = cluster.client().await.unwrap();
    let meta_chain = at_meta.refresh_chain(chain_id).await.unwrap();
    assert!(meta_chain.version >= current.version);
    at_meta.close().await.unwrap();

    // The writer's cached chain is the old one: its write meets Stale at the head and goes on
    // with the chain the answer carried, without asking pfs-meta for it.
    let before = client.stats();
    let second = random_bytes(1 << 20, 6);
    f.write_at(0, &second).await.unwrap();
    let after = client.stats();
    assert!(after.chains_told > before.chains_told, "{before:?} -> {after:?}");
    assert_eq!(after.chain_fetches, before.chain_fetches, "pfs-meta was asked for the chain: {after:?}");
    f.fsync().await.unwrap();
    let mut back = vec![0u8; 1 << 20];
    assert_eq!(f.read_at(0, &mut back).await.unwrap(), back.len());
    assert!(back == second, "the write landed");
    f.close().await.unwrap();
    client.close().await.unwrap();
}
